//! The soak: steady traffic from `orders` to `payments` through STRICT mTLS sidecar processes
//! while, in turn, a plugin is swapped, a weight changes, certificates renew (they live 4 s),
//! the root rotates, the control plane is killed and restarted, and a payments sidecar is
//! restarted. No call may fail, and every response is accounted for: each names the app that
//! answered, and the apps saw every call the client was answered for. Bounded: about a minute.

mod support;

use http::StatusCode;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::mesh::*;
use support::{App, h1_client, read};

/// What the load saw.
#[derive(Default, Debug)]
struct Tally {
    calls: usize,
    /// Answered 200, by the `x-app` that answered.
    by_app: BTreeMap<String, usize>,
    /// Answered 200 with the swapped-in plugin's header.
    marked: usize,
    /// Everything else, the first few in words.
    failed: usize,
    failures: Vec<String>,
}

/// Calls through `orders` from 4 workers until `stop`; every call lands in the tally.
fn load(
    orders: SocketAddr,
    stop: Arc<AtomicBool>,
    tally: Arc<Mutex<Tally>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let client = h1_client();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (client, stop, tally) = (client.clone(), stop.clone(), tally.clone());
            set.spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let outcome = match client.request(charge(orders)).await {
                        Ok(r) => {
                            let app = r
                                .headers()
                                .get("x-app")
                                .and_then(|v| v.to_str().ok())
                                .unwrap_or("")
                                .to_string();
                            let marked = r.headers().contains_key("x-retry-build");
                            let status = r.status();
                            let (_, _, body) = read(r).await;
                            if status == StatusCode::OK && !app.is_empty() {
                                Ok((app, marked))
                            } else {
                                Err(format!("{status}: {}", String::from_utf8_lossy(&body)))
                            }
                        }
                        Err(e) => Err(format!("no answer: {e}")),
                    };
                    let mut t = tally.lock();
                    t.calls += 1;
                    match outcome {
                        Ok((app, marked)) => {
                            *t.by_app.entry(app).or_default() += 1;
                            t.marked += usize::from(marked);
                        }
                        Err(e) => {
                            t.failed += 1;
                            if t.failures.len() < 10 {
                                t.failures.push(e);
                            }
                        }
                    }
                }
            });
        }
        while set.join_next().await.is_some() {}
    })
}

/// Waits until `what` holds of the tally, checking every 20 ms.
async fn until(tally: &Mutex<Tally>, within: Duration, what: &str, ok: impl Fn(&Tally) -> bool) {
    let deadline = Instant::now() + within;
    while !ok(&tally.lock()) {
        assert!(Instant::now() < deadline, "{what}: {:?}", tally.lock());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A loopback port free right now, for a control plane that must come back on the same one.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_a_strict_mesh_through_every_change_fails_no_call() {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let data_arg = data.to_str().expect("utf-8").to_string();
    let listen = format!("127.0.0.1:{}", free_port());
    let cp_log = dir.path().join("control.log");
    let start_control = |log: &std::path::Path| {
        // Certificates live 4 s, so each sidecar renews every 2-2.8 s throughout.
        spawn_logged(
            &[
                "control",
                "--data",
                &data_arg,
                "--listen",
                &listen,
                "--lease",
                "3s",
                "--cert-lifetime",
                "4s",
            ],
            Some(log),
        )
    };
    let mut control_proc = start_control(&cp_log);
    let cp = control_proc.addr("api");
    remember(cp, &data);
    let op = token(&data);
    let (pay, ord) = (
        service_token(cp, &op, "payments").await,
        service_token(cp, &op, "orders").await,
    );
    let apps = [
        App::start("payments-v1-a").await,
        App::start("payments-v1-b").await,
        App::start("payments-v2").await,
    ];
    let strict = serde_json::json!({"mtls": "STRICT"});
    let pod = |app: &App, version: &str| {
        sidecar_with(
            dir.path(),
            cp,
            &pay,
            "payments",
            &[("version", version)],
            app.addr,
            strict.clone(),
            None,
        )
    };
    let mut v1a = pod(&apps[0], "v1");
    let _v1b = pod(&apps[1], "v1");
    let _v2 = pod(&apps[2], "v2");
    let orders = sidecar_with(
        dir.path(),
        cp,
        &ord,
        "orders",
        &[("version", "v1")],
        SocketAddr::from(([127, 0, 0, 1], 9)),
        strict.clone(),
        None,
    );
    let seed = write(dir.path(), "payments.yaml", SEED);
    let out = weft(cp, &data, &["apply", "-f", seed.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    converged(cp, &op, 4, Duration::from_secs(10)).await;

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let running = load(orders.addr("outbound"), stop.clone(), tally.clone());
    let calls = |t: &Tally| t.calls;
    let after = |n: usize| move |t: &Tally| t.calls >= n + 200;
    until(&tally, Duration::from_secs(10), "load started", |t| {
        calls(t) >= 200
    })
    .await;
    let renewal = Duration::from_millis(3_000);
    let mut phases = Vec::new();
    let mut mark = |phase: &str| phases.push((phase.to_string(), tally.lock().calls));

    // A plugin swapped: a new build of the retry policy, pushed and applied.
    let out = weft(cp, &data, &["plugin", "push", weft_artifacts::RETRY_PATH]);
    assert!(out.status.success(), "{}", text(&out));
    let digest = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let swap = write(
        dir.path(),
        "retry-build.yaml",
        &format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{ name: retry }}\n\
             spec:\n  url: {digest}\n  pluginConfig: {{ attemptCountHeader: x-retry-build }}\n"
        ),
    );
    let out = weft(cp, &data, &["apply", "-f", swap.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    until(
        &tally,
        Duration::from_secs(10),
        "the new build answers",
        |t| t.marked >= 200,
    )
    .await;
    mark("plugin swapped");

    // A weight changed: 5 to 50, and v2 takes about half.
    let reweight = write(dir.path(), "weight-50.yaml", &reweighted(50, 50));
    let out = weft(
        cp,
        &data,
        &["apply", "-f", reweight.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "{}", text(&out));
    converged(cp, &op, 4, Duration::from_secs(10)).await;
    let v2_before = tally.lock().by_app.get("payments-v2").copied().unwrap_or(0);
    let n = tally.lock().calls;
    until(&tally, Duration::from_secs(10), "v2 takes its half", |t| {
        t.by_app.get("payments-v2").copied().unwrap_or(0) >= v2_before + 300 && t.calls >= n + 400
    })
    .await;
    mark("weight changed");

    // The root rotates, a renewal apart at each step, with every sidecar renewing meanwhile.
    let ca = |verb: &str| {
        let out = weft(cp, &data, &["ca", verb]);
        assert!(out.status.success(), "ca {verb}: {}", text(&out));
    };
    ca("rotate");
    tokio::time::sleep(renewal).await;
    ca("activate");
    tokio::time::sleep(renewal).await;
    ca("retire");
    tokio::time::sleep(renewal).await;
    let n = tally.lock().calls;
    until(
        &tally,
        Duration::from_secs(10),
        "calls after the rotation",
        after(n),
    )
    .await;
    mark("root rotated");

    // The control plane is killed and restarted on its address and data.
    control_proc.kill();
    let n = tally.lock().calls;
    until(
        &tally,
        Duration::from_secs(10),
        "calls with no control plane",
        after(n),
    )
    .await;
    control_proc = start_control(&dir.path().join("control-2.log"));
    assert_eq!(control_proc.addr("api"), cp);
    converged(cp, &op, 4, Duration::from_secs(15)).await;
    // Certificates keep renewing from the new process (they would expire within 4 s).
    tokio::time::sleep(renewal).await;
    let n = tally.lock().calls;
    until(
        &tally,
        Duration::from_secs(10),
        "calls after the restart",
        after(n),
    )
    .await;
    mark("control plane restarted");

    // A payments sidecar is restarted: stopped as a pod would be, then started again.
    let status = std::process::Command::new("kill")
        .args(["-TERM", &v1a.child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let _ = v1a.child.wait();
    v1a = pod(&apps[0], "v1");
    converged(cp, &op, 4, Duration::from_secs(15)).await;
    let a_before = tally
        .lock()
        .by_app
        .get("payments-v1-a")
        .copied()
        .unwrap_or(0);
    until(
        &tally,
        Duration::from_secs(10),
        "the restarted pod serves",
        |t| t.by_app.get("payments-v1-a").copied().unwrap_or(0) >= a_before + 50,
    )
    .await;
    mark("payments sidecar restarted");

    stop.store(true, Ordering::SeqCst);
    running.await.expect("load");
    drop(v1a);
    let t = tally.lock();
    let issued: usize = ["control.log", "control-2.log"]
        .iter()
        .map(|f| {
            std::fs::read_to_string(dir.path().join(f))
                .unwrap_or_default()
                .matches("issued a workload certificate")
                .count()
        })
        .sum();
    println!(
        "soak: {} calls, {} failed, by app {:?}; {issued} certificates issued; calls at each \
         phase's end {phases:?}",
        t.calls, t.failed, t.by_app
    );
    assert_eq!(t.failed, 0, "of {} calls: {:?}", t.calls, t.failures);
    // Every call was answered by one of the apps, and the apps saw at least that many.
    let answered: usize = t.by_app.values().sum();
    assert_eq!(answered, t.calls);
    let seen: usize = apps.iter().map(|a| a.seen().len()).sum();
    assert!(seen >= answered, "apps saw {seen}, callers got {answered}");
    assert!(issued >= 20, "certificates renewed throughout: {issued}");
}
