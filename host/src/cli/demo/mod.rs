//! `weft demo`: the seed scenario end to end, on real processes. It starts the control plane,
//! payments v1 (two pods) and v2 and an orders app, each behind its own sidecar (STRICT mTLS),
//! applies the seed's VirtualService and DestinationRule verbatim, drives orders → payments
//! traffic, and walks through the story: the 95/5 canary, a flaky pod hidden by retries, a
//! broken pod ejected, the weight changed to 50 through the control plane, a plugin swapped
//! under load — showing split, success, retries, ejections and latency for each.
//!
//! Where the machine allows it (root, or unprivileged user namespaces) every app runs in a
//! pod made by `weft run`, captured, orders calling `http://payments/charge` by name, all in a
//! namespace of the demo's own ([`isolate`], [`pods`]); elsewhere, and with `--explicit`, the
//! apps run in this process and orders calls its sidecar's outbound port with `Host: payments`.

pub mod apps;
mod isolate;
mod mesh;
mod pods;
mod view;

use anyhow::Context as _;
use apps::{Health, Pod, VERSION_HEADER};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use mesh::{ControlPlane, SidecarProc};
use parking_lot::Mutex;
use std::io::IsTerminal as _;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use view::{Baseline, Counters, PhaseReport, Tally};

/// The seed's Istio YAML: the demo's embedded default.
const SEED: &str = include_str!("../../../../examples/payments/payments.yaml");

/// The header the swapped retry build adds (its `attemptCountHeader`).
const NEW_BUILD_HEADER: &str = "x-weft-attempts";

/// Arguments of `weft demo`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Total run time in seconds, shared by the story's five phases (each at least 3 s).
    #[arg(long, default_value_t = 60)]
    duration: u64,
    /// Calls per second from orders to payments.
    #[arg(long, default_value_t = 200)]
    rate: u32,
    /// `text` (a live table on a terminal, a summary per phase elsewhere) or `json` (one
    /// report at the end; the narration goes to stderr).
    #[arg(short = 'o', long, default_value = "text")]
    output: String,
    /// Keep the work directory (logs, bootstraps, the control plane's data) afterwards.
    #[arg(long)]
    keep: bool,
    /// More Istio YAML to apply after the seed, e.g. a WasmPlugin loading your own filter
    /// (`examples/plugins/*/wasmplugin.yaml`); repeatable.
    #[arg(long = "apply", value_name = "FILE")]
    extra: Vec<std::path::PathBuf>,
    /// The explicit mode even where pods can be made: the apps run in this process and call
    /// their sidecars' ports, no capture, no namespaces.
    #[arg(long)]
    explicit: bool,
    /// Set by the demo itself when it runs again inside its namespaces.
    #[arg(long, hide = true)]
    inside_namespace: bool,
    /// The work directory, chosen by the demo outside its namespaces.
    #[arg(long, hide = true)]
    work_dir: Option<std::path::PathBuf>,
}

impl Args {
    /// The arguments of the same demo run again inside its namespaces.
    fn inside(&self, work: &Path) -> anyhow::Result<Vec<String>> {
        let mut out: Vec<String> = ["demo", "--inside-namespace", "--work-dir"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        out.push(work.to_str().context("work directory is not UTF-8")?.into());
        out.extend([
            "--duration".into(),
            self.duration.to_string(),
            "--rate".into(),
            self.rate.to_string(),
            "-o".into(),
            self.output.clone(),
        ]);
        if self.keep {
            out.push("--keep".into());
        }
        for f in &self.extra {
            let abs =
                std::fs::canonicalize(f).with_context(|| format!("--apply {}", f.display()))?;
            out.push("--apply".into());
            out.push(abs.to_str().context("--apply path is not UTF-8")?.into());
        }
        Ok(out)
    }
}

/// One step of the story.
struct Phase {
    name: &'static str,
    story: &'static str,
}

const PHASES: [Phase; 5] = [
    Phase {
        name: "canary",
        story: "The seed applied: 95% of payments calls go to v1, 5% to the v2 canary; every hop is mTLS.",
    },
    Phase {
        name: "flaky",
        story: "Pod payments-v1-a fails 30% of calls with 503: `attempts: 3` on 5xx retries them, callers see no error.",
    },
    Phase {
        name: "broken",
        story: "Pod payments-v1-b answers every call with 503: after 5 consecutive 5xx it is ejected for 30 s.",
    },
    Phase {
        name: "weight-50",
        story: "The pods recover, and `weight: 5` becomes `50` through the control plane: every sidecar follows.",
    },
    Phase {
        name: "plugin-swap",
        story: "A new build of the retry plugin is pushed and applied as a WasmPlugin, under load: no call fails.",
    },
];

/// Where the story's output goes.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Live,
    Summary,
    Json,
}

/// Runs `weft demo`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mode = match args.output.as_str() {
        "json" => Mode::Json,
        "text" if std::io::stdout().is_terminal() => Mode::Live,
        "text" => Mode::Summary,
        other => anyhow::bail!("-o {other:?}: choose text or json"),
    };
    let work = args
        .work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join(format!("weft-demo-{}", std::process::id())));
    let captured = if args.inside_namespace {
        isolate::prepare_inside().context("preparing the demo's namespace")?;
        true
    } else if args.explicit {
        false
    } else {
        match isolate::probe() {
            Ok(()) => {
                let code = isolate::run_inside(&args.inside(&work)?)?;
                std::process::exit(code);
            }
            Err(why) => {
                say(
                    mode,
                    &format!(
                        "weft demo: pods with captured traffic cannot be made here ({why}); running the explicit mode: each app calls its sidecar's port with `Host: payments`."
                    ),
                );
                false
            }
        }
    };
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let outcome = runtime.block_on(async {
        tokio::select! {
            r = story(&args, mode, &work, captured) => r.map(Some),
            _ = super::wait_for_signal() => Ok(None),
        }
    });
    // The story's processes were dropped (and killed) with its future, finished or not.
    runtime.shutdown_timeout(Duration::from_secs(2));
    if args.keep {
        eprintln!("work directory kept: {}", work.display());
    } else {
        let _ = std::fs::remove_dir_all(&work);
    }
    match outcome {
        Ok(Some((direct, reports))) => {
            if mode == Mode::Json {
                let out = serde_json::json!({
                    "workDir": work,
                    "baseline": direct,
                    "phases": reports,
                });
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
            Ok(())
        }
        Ok(None) => {
            eprintln!("weft demo: interrupted; every process stopped");
            Ok(())
        }
        Err(e) => Err(e.context(format!(
            "weft demo failed (rerun with --keep to read the logs in {})",
            work.display()
        ))),
    }
}

/// Prints narration where it belongs for `mode`.
fn say(mode: Mode, text: &str) {
    match mode {
        Mode::Json => eprintln!("{text}"),
        _ => println!("{text}"),
    }
}

/// The mesh the story runs on; dropping it stops every process.
struct Mesh {
    cp: ControlPlane,
    orders: SidecarProc,
    pods: Vec<Pod>,
    _sidecars: Vec<SidecarProc>,
    _orders_app: Pod,
}

/// The captured mode's mesh: pods made by `weft run`; dropping it stops them all (each
/// removing its pod) before the control plane goes.
struct Captured {
    pods: Vec<pods::PodProc>,
    orders: Option<pods::PodProc>,
    stats: SocketAddr,
    /// The same app with no sidecar, for the baseline.
    direct: Pod,
    cp: ControlPlane,
}

impl Drop for Captured {
    fn drop(&mut self) {
        let mut all: Vec<pods::PodProc> = self.orders.take().into_iter().collect();
        all.append(&mut self.pods);
        pods::stop_all(&mut all);
    }
}

/// The mesh of either mode, as the story uses it.
enum DemoMesh {
    Explicit(Mesh),
    Captured(Captured),
}

impl DemoMesh {
    fn cp(&self) -> &ControlPlane {
        match self {
            DemoMesh::Explicit(m) => &m.cp,
            DemoMesh::Captured(c) => &c.cp,
        }
    }

    /// Where orders' sidecar serves its metrics.
    fn stats(&self) -> SocketAddr {
        match self {
            DemoMesh::Explicit(m) => m.orders.admin,
            DemoMesh::Captured(c) => c.stats,
        }
    }

    /// Sets payments pod `i`'s health.
    fn set(&self, i: usize, health: Health) {
        match self {
            DemoMesh::Explicit(m) => m.pods[i].set(health),
            DemoMesh::Captured(c) => c.pods[i].set(health),
        }
    }

    /// A payments app reached with no sidecar, and its name.
    fn direct(&self) -> (SocketAddr, String) {
        match self {
            DemoMesh::Explicit(m) => (m.pods[0].addr, format!("pod {}", m.pods[0].name)),
            DemoMesh::Captured(c) => (c.direct.addr, "the payments app, no sidecar".into()),
        }
    }

    /// Starts orders' calls into `tally` (the captured mode's driver runs in its pod from the
    /// start, already recording).
    fn start_load(
        &self,
        rate: u32,
        tally: &Arc<Mutex<Tally>>,
        stop: &Arc<AtomicBool>,
    ) -> Vec<tokio::task::JoinHandle<()>> {
        match self {
            DemoMesh::Explicit(m) => drive(
                Target::Sidecar(m.orders.outbound),
                rate,
                into_tally(tally.clone()),
                stop.clone(),
            ),
            DemoMesh::Captured(_) => Vec::new(),
        }
    }
}

async fn start_captured(
    mode: Mode,
    work: &Path,
    rate: u32,
    tally: &Arc<Mutex<Tally>>,
) -> anyhow::Result<Captured> {
    let bridge = weft::pod::Bridge {
        name: pods::BRIDGE.into(),
        gateway: pods::GATEWAY,
        prefix: 16,
    };
    bridge.ensure().context("making the pods' bridge")?;
    let cp = start_control(mode, work, format!("{}:0", pods::GATEWAY)).await?;
    let direct = Pod::start("payments-direct", "v1").await?;
    let mut captured = Captured {
        pods: Vec::new(),
        orders: None,
        stats: SocketAddr::from(([127, 0, 0, 1], 0)),
        direct,
        cp,
    };
    // Pods start one at a time: each `weft run` blocks until its sidecar is ready.
    for (name, version) in [
        ("payments-v1-a", "v1"),
        ("payments-v1-b", "v1"),
        ("payments-v2", "v2"),
    ] {
        let (w, cp) = (work.to_path_buf(), &captured.cp);
        let pod = tokio::task::block_in_place(|| pods::start_payments(&w, cp, name, version))?;
        captured.pods.push(pod);
    }
    let record = into_tally(tally.clone());
    let orders =
        tokio::task::block_in_place(|| pods::start_orders(work, &captured.cp, rate, record))?;
    captured.stats = pods::stats_of(&orders);
    say(
        mode,
        &format!(
            "pods up, each app in a network namespace of its own with its traffic captured by its sidecar: {}; orders calls http://payments/charge by name",
            captured
                .pods
                .iter()
                .chain([&orders])
                .map(|p| format!("{} {}", p.name, p.ip))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    captured.orders = Some(orders);
    Ok(captured)
}

/// Starts the control plane on `listen` and says where.
async fn start_control(mode: Mode, work: &Path, listen: String) -> anyhow::Result<ControlPlane> {
    let w = work.to_path_buf();
    let cp = tokio::task::spawn_blocking(move || ControlPlane::start(&w, &listen)).await??;
    say(
        mode,
        &format!(
            "control plane on {} (mesh CA, API over TLS); work directory {}",
            cp.endpoint.addr,
            work.display()
        ),
    );
    Ok(cp)
}

async fn start_mesh(mode: Mode, work: &Path) -> anyhow::Result<Mesh> {
    let cp = start_control(mode, work, "127.0.0.1:0".into()).await?;
    let pods = vec![
        Pod::start("payments-v1-a", "v1").await?,
        Pod::start("payments-v1-b", "v1").await?,
        Pod::start("payments-v2", "v2").await?,
    ];
    let orders_app = Pod::start("orders", "v1").await?;
    let mut sidecars = Vec::new();
    for pod in &pods {
        sidecars
            .push(mesh::sidecar(work, &cp, &pod.name, "payments", &pod.version, pod.addr).await?);
    }
    let orders = mesh::sidecar(work, &cp, "orders", "orders", "v1", orders_app.addr).await?;
    say(
        mode,
        &format!(
            "sidecars up (pids {}), each with a certificate from the mesh CA",
            sidecars
                .iter()
                .chain([&orders])
                .map(|s| s.proc.pid().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    );
    Ok(Mesh {
        cp,
        orders,
        pods,
        _sidecars: sidecars,
        _orders_app: orders_app,
    })
}

/// Applies YAML through the control plane and waits until all four sidecars run the result.
async fn apply(cp: &ControlPlane, source: &str, yaml: String) -> anyhow::Result<Duration> {
    let before = cp.sent().await?;
    let started = Instant::now();
    cp.api(
        Method::POST,
        &format!("/v1/apply?source={source}"),
        Bytes::from(yaml),
    )
    .await?;
    // Generous: a plugin in another language is a 12–18 MB component, compiled by every
    // sidecar (a debug build takes seconds per sidecar).
    cp.followed(4, &before, Duration::from_secs(120)).await?;
    Ok(started.elapsed())
}

/// The seed with the canary at `v2` percent.
fn reweighted(v2: u32) -> String {
    // v2's line first: "weight: 5\n" is not a substring of "weight: 95\n", but would be of
    // the "weight: 50" that replacing 95 first could produce.
    SEED.replacen("weight: 5\n", &format!("weight: {v2}\n"), 1)
        .replacen("weight: 95\n", &format!("weight: {}\n", 100 - v2), 1)
}

async fn counters(admin: SocketAddr) -> Counters {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let Ok(uri) = format!("http://{admin}/metrics").parse::<http::Uri>() else {
        return Counters::default();
    };
    match client.get(uri).await {
        Ok(resp) => match resp.into_body().collect().await {
            Ok(b) => Counters::parse(&String::from_utf8_lossy(&b.to_bytes())),
            Err(_) => Counters::default(),
        },
        Err(_) => Counters::default(),
    }
}

/// Where calls go: a sidecar's outbound listener (with `Host: payments`), or a URL named as
/// an app inside a pod names it.
#[derive(Clone)]
pub enum Target {
    /// The explicit mode: the app knows its sidecar.
    Sidecar(SocketAddr),
    /// The captured mode: `http://payments/charge`, resolved and captured in the pod.
    Url(String),
}

/// What is done with each call's outcome: the version that answered, success, time taken,
/// and whether the swapped retry build marked it.
pub type Record = Arc<dyn Fn(&str, bool, Duration, bool) + Send + Sync>;

/// A [`Record`] into `tally`.
fn into_tally(tally: Arc<Mutex<Tally>>) -> Record {
    Arc::new(move |version, ok, took, marked| tally.lock().record(version, ok, took, marked))
}

/// Calls payments at `rate` per second until stopped.
fn drive(
    target: Target,
    rate: u32,
    record: Record,
    stop: Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    const WORKERS: u32 = 8;
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let period = Duration::from_secs_f64(f64::from(WORKERS) / f64::from(rate.max(1)));
    (0..WORKERS)
        .map(|_| {
            let (client, record, stop) = (client.clone(), record.clone(), stop.clone());
            let target = target.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                while !stop.load(Ordering::Relaxed) {
                    tick.tick().await;
                    let builder = match &target {
                        Target::Sidecar(outbound) => {
                            Request::get(format!("http://{outbound}/charge"))
                                .header(http::header::HOST, "payments")
                        }
                        Target::Url(url) => Request::get(url.as_str()),
                    };
                    // A tenant the header-gate example lets through, should it be applied.
                    let Ok(req) = builder
                        .header("x-tenant", "acme")
                        .body(Full::new(Bytes::new()))
                    else {
                        return;
                    };
                    let started = Instant::now();
                    let answer =
                        tokio::time::timeout(Duration::from_secs(7), client.request(req)).await;
                    let (version, ok, marked) = match answer {
                        Ok(Ok(resp)) => {
                            let ok = resp.status() == StatusCode::OK;
                            let h = resp.headers();
                            let version = h
                                .get(VERSION_HEADER)
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("none")
                                .to_string();
                            let marked = h.contains_key(NEW_BUILD_HEADER);
                            let _ = resp.into_body().collect().await;
                            (version, ok, marked)
                        }
                        _ => ("none".to_string(), false, false),
                    };
                    record(&version, ok, started.elapsed(), marked);
                }
            })
        })
        .collect()
}

/// What a phase changes before it is measured; how long the sidecars took to follow, if the
/// change went through the control plane.
async fn change(
    phase: &Phase,
    mesh: &DemoMesh,
    extra: &[(String, String)],
) -> anyhow::Result<Option<Duration>> {
    Ok(match phase.name {
        "canary" => {
            let mut took = apply(mesh.cp(), "seed", SEED.to_string()).await?;
            for (name, yaml) in extra {
                took += apply(mesh.cp(), name, yaml.clone()).await?;
            }
            Some(took)
        }
        "flaky" => {
            mesh.set(0, Health::Flaky);
            None
        }
        "broken" => {
            mesh.set(0, Health::Healthy);
            mesh.set(1, Health::Broken);
            None
        }
        "weight-50" => {
            mesh.set(1, Health::Healthy);
            Some(apply(mesh.cp(), "weight-50", reweighted(50)).await?)
        }
        _ => {
            let pushed = mesh
                .cp()
                .api(
                    Method::POST,
                    "/v1/artifacts",
                    Bytes::from_static(weft_artifacts::RETRY),
                )
                .await?;
            let digest = pushed["sha256"]
                .as_str()
                .context("no sha256 in the answer")?;
            let url = if digest.starts_with("sha256:") {
                digest.to_string()
            } else {
                format!("sha256:{digest}")
            };
            let yaml = format!(
                "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n\
                 metadata: {{ name: retry }}\nspec:\n  url: {url}\n\
                 \x20 pluginConfig: {{ attemptCountHeader: {NEW_BUILD_HEADER} }}\n"
            );
            Some(apply(mesh.cp(), "retry-build", yaml).await?)
        }
    })
}

/// How long the baseline (calls straight to a pod) is measured.
const BASELINE_TIME: Duration = Duration::from_secs(2);

/// Calls pod `to`'s app directly, at the demo's rate, for [`BASELINE_TIME`].
async fn baseline(to: SocketAddr, rate: u32) -> Baseline {
    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let workers = drive(
        Target::Sidecar(to),
        rate,
        into_tally(tally.clone()),
        stop.clone(),
    );
    tokio::time::sleep(BASELINE_TIME).await;
    stop.store(true, Ordering::Relaxed);
    for task in workers {
        let _ = task.await;
    }
    tally.lock().baseline()
}

async fn story(
    args: &Args,
    mode: Mode,
    work: &Path,
    captured: bool,
) -> anyhow::Result<(Baseline, Vec<PhaseReport>)> {
    // Read first: a wrong path fails before any process starts.
    let mut extra = Vec::new();
    for path in &args.extra {
        let yaml =
            std::fs::read_to_string(path).with_context(|| format!("--apply {}", path.display()))?;
        let name = path
            .file_name()
            .map_or_else(|| "extra".into(), |n| n.to_string_lossy().into_owned());
        extra.push((name, yaml));
    }
    let tally = Arc::new(Mutex::new(Tally::default()));
    let mesh = if captured {
        DemoMesh::Captured(start_captured(mode, work, args.rate, &tally).await?)
    } else {
        DemoMesh::Explicit(start_mesh(mode, work).await?)
    };
    // What the mesh adds is only visible beside what the app takes on its own.
    let (direct_addr, direct_name) = mesh.direct();
    let direct = baseline(direct_addr, args.rate).await;
    say(
        mode,
        &format!(
            "baseline, no mesh: {} calls straight to {direct_name}: p50 {:.2} ms, p99 {:.2} ms. Every phase below goes through two sidecars (mTLS, the policy chain); the difference is what the mesh adds.",
            direct.calls, direct.p50_ms, direct.p99_ms
        ),
    );
    let phase_time = Duration::from_secs((args.duration / PHASES.len() as u64).max(3));
    let stop = Arc::new(AtomicBool::new(false));
    let mut driver = None;
    let mut reports = Vec::new();
    for (i, phase) in PHASES.iter().enumerate() {
        let followed = change(phase, &mesh, &extra).await?;
        let start = counters(mesh.stats()).await;
        *tally.lock() = Tally::default();
        let began = Instant::now();
        if driver.is_none() {
            driver = Some(mesh.start_load(args.rate, &tally, &stop));
        }
        if mode != Mode::Live {
            say(mode, &format!("\n== {}: {}", phase.name, phase.story));
        }
        let mut last = None;
        while began.elapsed() < phase_time {
            tokio::time::sleep(
                Duration::from_secs(1).min(phase_time.saturating_sub(began.elapsed())),
            )
            .await;
            let now = counters(mesh.stats()).await;
            let snapshot = tally.lock().clone();
            let r = view::report(
                phase.name,
                phase.story,
                &snapshot,
                began.elapsed(),
                start,
                now,
                followed,
            );
            if mode == Mode::Live {
                let past: String = reports
                    .iter()
                    .map(|p: &PhaseReport| {
                        format!(
                            "  ✓ {:<12} {} calls, success {:.2}%, retries {}, ejections {}\n",
                            p.name, p.calls, p.success_rate, p.retries, p.ejections
                        )
                    })
                    .collect();
                print!(
                    "\x1b[H\x1b[2Jweft demo — orders → payments, the seed scenario (Ctrl-C stops)\n\
                     baseline, no mesh (straight to a pod): p50 {:.2} ms, p99 {:.2} ms\n\n{past}\n{}",
                    direct.p50_ms,
                    direct.p99_ms,
                    view::table(i + 1, PHASES.len(), &r)
                );
                use std::io::Write as _;
                let _ = std::io::stdout().flush();
            }
            last = Some(r);
        }
        let Some(r) = last else { continue };
        if mode == Mode::Summary {
            println!("{}", view::table(i + 1, PHASES.len(), &r));
        } else if mode == Mode::Json {
            eprintln!("{}", view::table(i + 1, PHASES.len(), &r));
        }
        reports.push(r);
    }
    stop.store(true, Ordering::Relaxed);
    for task in driver.into_iter().flatten() {
        let _ = task.await;
    }
    if mode == Mode::Live {
        println!("\ndone: every process stops now.");
    }
    Ok((direct, reports))
}

#[cfg(test)]
mod tests {
    #[test]
    fn reweighting_changes_only_the_two_weights() {
        let half = super::reweighted(50);
        assert_eq!(half.matches("weight: 50\n").count(), 2, "{half}");
        assert_eq!(half.len(), super::SEED.len() + 1);
        let tenth = super::reweighted(10);
        assert!(tenth.contains("weight: 90\n") && tenth.contains("weight: 10\n"));
    }
}
