//! `weft simulate`: the seed scenario through the real built-in plugin chain — canary split,
//! retries, outlier ejection, telemetry, each a Wasm component in the sandbox — against
//! simulated payments pods, with the canary weight hot-swapped halfway through.
//!
//! Only the network is simulated: every routing, retry and ejection decision is the plugins'.

use anyhow::Context as _;
use prometheus::Registry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use weft::endpoints::EndpointTable;
use weft::plugin::{
    Artifact, Attempt, AttemptVerdict, CallSummary, Chain, ChainSlot, Destination, Outcome, Plugin,
    PluginRuntime, PluginSpec, Protocol, RequestHead, RequestVerdict, ResponseFlags, RuntimeConfig,
};

/// Arguments of `weft simulate`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Requests in each phase.
    #[arg(long, default_value_t = 10_000)]
    requests: u32,
    /// The canary (v2) weight in the first phase.
    #[arg(long, default_value_t = 5)]
    weight: u32,
    /// The canary weight the second phase swaps in, as `weight: 5` → `50` in the seed.
    #[arg(long, default_value_t = 50)]
    then_weight: u32,
    /// Seed for the simulated pods' failures.
    #[arg(long, default_value_t = 7)]
    seed: u64,
}

/// How a simulated pod answers.
#[derive(Debug, Clone, Copy)]
enum Behaviour {
    Healthy,
    /// Fails this share of calls with 503.
    Flaky(f64),
    /// Always 503: a bad deploy.
    Broken,
}

struct Pod {
    name: &'static str,
    subset: &'static str,
    behaviour: Behaviour,
}

const PODS: [Pod; 4] = [
    Pod {
        name: "payments-v1-a",
        subset: "v1",
        behaviour: Behaviour::Healthy,
    },
    Pod {
        name: "payments-v1-b",
        subset: "v1",
        behaviour: Behaviour::Flaky(0.10),
    },
    Pod {
        name: "payments-v1-c",
        subset: "v1",
        behaviour: Behaviour::Broken,
    },
    Pod {
        name: "payments-v2-a",
        subset: "v2",
        behaviour: Behaviour::Healthy,
    },
];

const RETRY: &str = r#"{"attempts":3,"perTryTimeout":"2s","retryOn":"5xx,reset"}"#;
const OUTLIER: &str = r#"{"consecutive5xxErrors":5,"baseEjectionTime":"30s"}"#;
const TIMEOUT_MS: u64 = 6_000;

fn canary_config(v2_weight: u32) -> String {
    format!(
        r#"{{"host":"payments","route":[{{"destination":{{"host":"payments","subset":"v1"}},"weight":{}}},
                      {{"destination":{{"host":"payments","subset":"v2"}},"weight":{}}}]}}"#,
        100u32.saturating_sub(v2_weight),
        v2_weight
    )
}

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[derive(Default)]
struct Tally {
    per_subset: BTreeMap<String, (u64, u64)>,
    ok: u64,
    failed: u64,
    tries: u64,
    retries: u64,
    ejections: Vec<(u32, String)>,
}

/// Names interned once, as a sidecar does when it builds a route.
struct Names {
    payments: u32,
    v1: u32,
    v2: u32,
    orders: u32,
}

struct World {
    names: Names,
    table: Arc<EndpointTable>,
    ids: Vec<u64>,
    rng: Rng,
}

impl World {
    fn pick(&mut self, subset: &str, avoid: Option<u64>) -> Option<usize> {
        let now = Instant::now();
        let candidates: Vec<usize> = (0..PODS.len())
            .filter(|&i| PODS[i].subset == subset)
            .filter(|&i| {
                !self
                    .table
                    .get(self.ids[i])
                    .is_some_and(|e| e.is_ejected(now))
            })
            .collect();
        let preferred: Vec<usize> = candidates
            .iter()
            .copied()
            .filter(|&i| Some(self.ids[i]) != avoid)
            .collect();
        let from = if preferred.is_empty() {
            &candidates
        } else {
            &preferred
        };
        if from.is_empty() {
            return None;
        }
        Some(from[(self.rng.next() % from.len() as u64) as usize])
    }

    fn answer(&mut self, pod: usize) -> u16 {
        match PODS[pod].behaviour {
            Behaviour::Healthy => 200,
            Behaviour::Flaky(p) if self.rng.unit() < p => 503,
            Behaviour::Flaky(_) => 200,
            Behaviour::Broken => 503,
        }
    }
}

fn call(chain: &Chain, world: &mut World, call_id: u64, tally: &mut Tally) {
    let mut head = RequestHead {
        path: "/charge".into(),
        authority: "payments".into(),
        source: "spiffe://weft.local/ns/default/sa/orders".into(),
        destination: Destination {
            service: "payments".into(),
            subset: None,
        },
        ..RequestHead::default()
    };
    if let RequestVerdict::Respond(_) = chain.on_request(call_id, &mut head).action {
        return;
    }
    let subset = head
        .destination
        .subset
        .clone()
        .unwrap_or_else(|| "v1".into());
    let (mut number, mut last) = (0u32, None::<u64>);
    let mut status: u16;
    let mut flags = ResponseFlags::empty();
    loop {
        number += 1;
        let picked = world.pick(&subset, last);
        let outcome = match picked {
            Some(pod) => Outcome::Response(world.answer(pod)),
            None => Outcome::NoEndpoint,
        };
        let endpoint = picked.map_or(0, |p| world.ids[p]);
        tally.tries += u64::from(picked.is_some());
        let attempt = Attempt {
            call_id,
            number,
            endpoint,
            outcome,
            elapsed_us: 800,
            remaining_ms: TIMEOUT_MS.saturating_sub(u64::from(number)) as u32,
            replayable: true,
            grpc_status: None,
        };
        status = match outcome {
            Outcome::Response(s) => s,
            _ => 503,
        };
        if matches!(outcome, Outcome::NoEndpoint) {
            flags = ResponseFlags::NO_HEALTHY_UPSTREAM;
        }
        last = Some(endpoint);
        match chain.on_attempt_end(&attempt, head.route).action {
            AttemptVerdict::Retry(_) => tally.retries += 1,
            AttemptVerdict::Done => break,
        }
    }
    let entry = tally.per_subset.entry(subset.clone()).or_default();
    entry.0 += 1;
    if status < 500 {
        entry.1 += 1;
        tally.ok += 1;
    } else {
        tally.failed += 1;
    }
    chain.on_done(
        &CallSummary {
            call_id,
            status,
            attempts: number,
            duration_us: 800 * u64::from(number),
            request_bytes: 64,
            response_bytes: 128,
            endpoint: last.unwrap_or(0),
            service: world.names.payments,
            subset: if subset == "v2" {
                world.names.v2
            } else {
                world.names.v1
            },
            source: world.names.orders,
            destination_identity: 0,
            source_workload: 0,
            destination_workload: 0,
            protocol: Protocol::Http1,
            response_flags: flags,
            grpc_status: None,
        },
        head.route,
    );
}

fn plugin(
    rt: &PluginRuntime,
    name: &str,
    bytes: &[u8],
    config: &str,
) -> anyhow::Result<Arc<Plugin>> {
    rt.plugin(Artifact::Bytes(bytes), None, PluginSpec::new(name, config))
        .with_context(|| format!("loading the built-in {name} plugin"))
}

fn chain(rt: &PluginRuntime, weight: u32) -> anyhow::Result<Chain> {
    Ok(Chain::new(vec![
        plugin(rt, "canary", weft_artifacts::CANARY, &canary_config(weight))?,
        plugin(rt, "retry", weft_artifacts::RETRY, RETRY)?,
        plugin(rt, "outlier", weft_artifacts::OUTLIER, OUTLIER)?,
        plugin(rt, "telemetry", weft_artifacts::TELEMETRY, "{}")?,
    ]))
}

fn report(phase: &str, t: &Tally, took: Duration) {
    let total = t.ok + t.failed;
    println!(
        "\n== {phase}: {total} calls from orders to payments in {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    for (subset, (calls, ok)) in &t.per_subset {
        println!(
            "   {subset}: {calls:>6} calls ({:>5.1}%), {:>6.2}% succeeded",
            100.0 * *calls as f64 / total.max(1) as f64,
            100.0 * *ok as f64 / (*calls).max(1) as f64
        );
    }
    println!(
        "   caller saw {:.2}% success; {} upstream tries, {} retries",
        100.0 * t.ok as f64 / total.max(1) as f64,
        t.tries,
        t.retries
    );
    for (at, pod) in &t.ejections {
        println!("   outlier detection ejected {pod} at call {at}");
    }
}

/// Runs `weft simulate`.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.weight <= 100 && args.then_weight <= 100,
        "weights are out of 100"
    );
    let registry = Registry::new();
    let table = Arc::new(EndpointTable::new());
    let ids = PODS
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let labels = BTreeMap::from([("version".to_string(), p.subset.to_string())]);
            table
                .upsert("payments", &format!("10.0.1.{}:8080", i + 1), labels)
                .id
        })
        .collect();
    let runtime = PluginRuntime::new(RuntimeConfig::default(), &registry, table.clone())?;
    println!(
        "weft simulate: orders -> payments, policies as Wasm plugins (canary, retry, outlier, telemetry)"
    );
    println!(
        "pods: payments-v1-a healthy, payments-v1-b fails 10% with 503, payments-v1-c broken (always 503), payments-v2-a healthy"
    );
    let slot = ChainSlot::new(chain(&runtime, args.weight)?);
    let names = Names {
        payments: runtime.intern("payments"),
        v1: runtime.intern("v1"),
        v2: runtime.intern("v2"),
        orders: runtime.intern("spiffe://weft.local/ns/default/sa/orders"),
    };
    let mut world = World {
        names,
        table: table.clone(),
        ids,
        rng: Rng(args.seed | 1),
    };
    let mut call_id = 0u64;
    for (phase, weight) in [("phase 1", args.weight), ("phase 2", args.then_weight)] {
        if phase == "phase 2" {
            let swap = Instant::now();
            slot.replace(chain(&runtime, weight)?);
            println!(
                "\n-- canary weight {} -> {}: new canary plugin configured and swapped in {:.1} ms, no restart",
                args.weight,
                weight,
                swap.elapsed().as_secs_f64() * 1e3
            );
        }
        let mut tally = Tally::default();
        let start = Instant::now();
        for n in 0..args.requests {
            call_id += 1;
            let chain = slot.current();
            let before: Vec<bool> = world
                .ids
                .iter()
                .map(|&id| table.get(id).is_some_and(|e| e.is_ejected(Instant::now())))
                .collect();
            call(&chain, &mut world, call_id, &mut tally);
            for (i, &id) in world.ids.iter().enumerate() {
                if !before[i] && table.get(id).is_some_and(|e| e.is_ejected(Instant::now())) {
                    tally.ejections.push((n + 1, PODS[i].name.to_string()));
                }
            }
        }
        report(
            &format!("{phase}, v2 weight {weight}"),
            &tally,
            start.elapsed(),
        );
    }
    let rendered = prometheus::TextEncoder::new().encode_to_string(&registry.gather())?;
    println!("\n== telemetry plugin (istio_requests_total, as /metrics will serve it):");
    for line in rendered
        .lines()
        .filter(|l| l.starts_with("istio_requests_total"))
    {
        println!("   {line}");
    }
    Ok(())
}
