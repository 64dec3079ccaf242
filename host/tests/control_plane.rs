//! The control plane end to end: a real `weft control` process, real `weft sidecar` processes
//! watching it, the operator's CLI, and the seed's own YAML — applied verbatim, changed,
//! refused when wrong, survived through a control plane crash and a sidecar restart — plus a
//! plugin swap under load and fifty watchers following one change.

mod support;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use support::mesh::*;
use support::{App, full, h1_client, read};
use weft::control::channel::Endpoint;
use weft::control::client::call;

/// Each test runs a control plane and several sidecar processes: one test at a time, so a
/// 2-core machine is not asked to run a dozen proxies at once.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_yaml_drives_the_mesh_through_changes_errors_and_restarts() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let mut cp_proc = control(&data, "127.0.0.1:0");
    let cp = cp_proc.addr("api");
    let op = token(&data);
    let pay_token = service_token(cp, &op, "payments").await;
    let orders_token = service_token(cp, &op, "orders").await;
    let (v1, v2) = (
        App::start("payments-v1").await,
        App::start("payments-v2").await,
    );
    // A broken v1 pod: the seed's retries must hide it and its outlier detection eject it.
    let broken = App::start_with("payments-v1-broken", support::Behaviour::Always(503)).await;
    let nowhere = SocketAddr::from(([127, 0, 0, 1], 9));
    let _p1 = sidecar(
        dir.path(),
        cp,
        &pay_token,
        "payments",
        &[("version", "v1")],
        v1.addr,
    );
    let _p2 = sidecar(
        dir.path(),
        cp,
        &pay_token,
        "payments",
        &[("version", "v2")],
        v2.addr,
    );
    let _p3 = sidecar(
        dir.path(),
        cp,
        &pay_token,
        "payments",
        &[("version", "v1"), ("pod", "broken")],
        broken.addr,
    );
    let mut orders = sidecar(
        dir.path(),
        cp,
        &orders_token,
        "orders",
        &[("version", "v1")],
        nowhere,
    );

    // The seed's YAML, verbatim.
    let out = weft(
        cp,
        &data,
        &[
            "apply",
            "-f",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../examples/payments/payments.yaml"
            ),
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("VirtualService default/payments configured"),
        "{}",
        text(&out)
    );
    converged(cp, &op, 4, Duration::from_secs(10)).await;
    let (to_v2, failed) = split(orders.addr("outbound"), &v2, 2_000).await;
    // Binomial(2,000, 0.05): mean 100, sd 9.7; 5 sigma either side.
    println!(
        "weight 5: {to_v2} of 2,000 calls reached v2; the broken pod got {} before ejection",
        broken.seen().len()
    );
    assert_eq!(failed, 0, "retries (5xx,reset) hide the broken pod");
    assert!((51..=149).contains(&to_v2), "{to_v2} of 2,000 to v2");
    let hits = broken.seen().len();
    assert!(
        (5..=20).contains(&hits),
        "ejected after 5 consecutive 5xx (a few more may be in flight): {hits}"
    );
    // Which endpoint is out, and for how long, is in the caller's metrics and admin view.
    let admin = orders.addr("admin");
    let client = support::h1_client();
    let broken_at = _p3.addr("inbound").to_string();
    let (_, _, metrics) = support::read(
        client
            .request(support::get(admin, "/metrics", &[]))
            .await
            .expect("metrics"),
    )
    .await;
    let metrics = String::from_utf8_lossy(&metrics).into_owned();
    let ejected: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("weft_endpoint_ejected_seconds{"))
        .collect();
    assert_eq!(ejected.len(), 1, "{ejected:?}");
    assert!(
        ejected[0].contains(&format!("endpoint=\"{broken_at}\""))
            && ejected[0].contains("service=\"payments\""),
        "{ejected:?}"
    );
    let left: f64 = ejected[0]
        .rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(
        left > 0.0 && left <= 30.0,
        "{left} s of a 30 s ejection left"
    );
    let (_, _, listed) = support::read(
        client
            .request(support::get(admin, "/endpoints", &[]))
            .await
            .expect("endpoints"),
    )
    .await;
    let listed: serde_json::Value = serde_json::from_slice(&listed).expect("JSON");
    let out: Vec<&serde_json::Value> = listed
        .as_array()
        .expect("list")
        .iter()
        .filter(|e| e["ejectedForMs"].as_u64().unwrap_or(0) > 0)
        .collect();
    assert_eq!(out.len(), 1, "{listed:#}");
    assert_eq!(out[0]["address"], broken_at.as_str());
    assert_eq!(out[0]["labels"]["pod"], "broken");
    // And `weft status` lists it, with the caller that ejected it.
    let status = weft(cp, &data, &["status"]);
    let shown = text(&status);
    assert!(status.status.success(), "{shown}");
    let row = shown
        .lines()
        .skip_while(|l| !l.starts_with("EJECTED"))
        .find(|l| l.contains(&broken_at))
        .unwrap_or_else(|| panic!("no ejected {broken_at} in:\n{shown}"));
    assert!(
        row.starts_with("payments") && row.contains(" orders "),
        "{row}"
    );

    // weight: 5 -> 50, applied: every sidecar follows.
    let file = write(dir.path(), "payments-50.yaml", &reweighted(50, 50));
    let started = Instant::now();
    let out = weft(cp, &data, &["apply", "-f", file.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    let versions = converged(cp, &op, 4, Duration::from_secs(10)).await;
    println!(
        "apply (CLI process included) to all 4 sidecars ACKed: {:?}",
        started.elapsed()
    );
    let (to_v2, failed) = split(orders.addr("outbound"), &v2, 2_000).await;
    println!("weight 50: {to_v2} of 2,000 calls reached v2");
    assert_eq!(failed, 0);
    assert_eq!(broken.seen().len(), hits, "still ejected (30 s)");
    // Binomial(2,000, 0.5): sd 22.4; 5 sigma.
    assert!((888..=1112).contains(&to_v2), "{to_v2} of 2,000 to v2");

    // Wrong input is refused whole, with the path of the mistake; the mesh keeps its state.
    let revision = api(cp, &op, Method::GET, "/v1/status").await["revision"].clone();
    let bad = write(dir.path(), "bad-weight.yaml", &reweighted(0, 0));
    let out = weft(cp, &data, &["apply", "-f", bad.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("spec.http[0].route: weights sum to 0"),
        "{}",
        text(&out)
    );
    let junk = write(
        dir.path(),
        "junk.yaml",
        "kind: VirtualService\nspec: [unclosed\n",
    );
    let out = weft(cp, &data, &["apply", "-f", junk.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(text(&out).contains("junk.yaml"), "{}", text(&out));
    assert_eq!(
        api(cp, &op, Method::GET, "/v1/status").await["revision"],
        revision
    );
    assert_eq!(
        converged(cp, &op, 4, Duration::from_secs(5)).await,
        versions
    );

    // The control plane dies under load: traffic flows on the last snapshot.
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(orders.addr("outbound"), stop.clone(), "x-none");
    tokio::time::sleep(Duration::from_millis(300)).await;
    cp_proc.kill();
    tokio::time::sleep(Duration::from_millis(700)).await;
    // Restarted on the same address and data: every resource and revision is there, and the
    // sidecars come back without being pushed anything new.
    let cp_proc2 = control(&data, &cp.to_string());
    assert_eq!(cp_proc2.addr("api"), cp);
    assert_eq!(
        api(cp, &op, Method::GET, "/v1/status").await["revision"],
        revision
    );
    assert_eq!(
        converged(cp, &op, 4, Duration::from_secs(15)).await,
        versions
    );
    stop.store(true, Ordering::SeqCst);
    let (calls, failed, _) = load.await.expect("load");
    println!("calls during the control plane's crash and restart: {calls}");
    assert_eq!(failed, 0, "of {calls} calls");
    assert!(calls > 50, "load ran: {calls}");
    let out = weft(cp, &data, &["get", "vs", "payments", "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let vs: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(vs["spec"]["http"][0]["route"][1]["weight"], 50);
    let out = weft(cp, &data, &["get", "dr", "-o", "yaml"]);
    assert!(
        text(&out).contains("consecutive5xxErrors: 5"),
        "{}",
        text(&out)
    );

    // A restarted sidecar gets its snapshot and serves.
    orders.kill();
    let orders2 = sidecar(
        dir.path(),
        cp,
        &orders_token,
        "orders",
        &[("version", "v1")],
        nowhere,
    );
    // The dead sidecar's registration lingers until its lease (3 s) ends; count the live ones.
    // The new orders sidecar keeps its own outlier state: it meets the broken pod afresh and
    // its retries hide it again.
    converged(cp, &op, 4, Duration::from_secs(10)).await;
    let (to_v2, failed) = split(orders2.addr("outbound"), &v2, 400).await;
    assert_eq!(failed, 0);
    assert!((100..=300).contains(&to_v2), "{to_v2} of 400 to v2");
    let out = weft(cp, &data, &["status"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ACK"), "{}", text(&out));
}

/// A watcher that registers like a sidecar and records when each version arrives.
async fn simulated_sidecar(
    cp: Endpoint,
    token: String,
    i: usize,
    arrivals: Arc<parking_lot::Mutex<Vec<(usize, String, Instant)>>>,
) {
    use http_body_util::BodyExt;
    let version = if i.is_multiple_of(2) { "v1" } else { "v2" };
    let req = Request::get(format!(
        "/v1/watch?id=sim-{i}&service=payments&address=127.0.0.{}%3A{}&labels=version%3D{version}",
        1 + i / 200,
        20_000 + i
    ))
    .header("authorization", format!("Bearer {token}"))
    .body(http_body_util::Full::new(Bytes::new()))
    .expect("request");
    let resp = cp.send(req).await.expect("watch");
    assert_eq!(resp.status(), StatusCode::OK);
    let mut body = resp.into_body();
    let mut buf = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let msg: serde_json::Value = serde_json::from_slice(&line).expect("json line");
            if msg["type"] == "snapshot" {
                let v = msg["version"].as_str().unwrap_or("").to_string();
                arrivals.lock().push((i, v, Instant::now()));
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_sidecars_follow_a_weight_change_within_moments() {
    let _serial = SERIAL.lock().await;
    use weft::control::server::{ControlConfig, ControlPlane};
    let dir = tempfile::tempdir().expect("dir");
    let mut config = ControlConfig::new(dir.path().to_path_buf());
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let cp = ControlPlane::start(config).await.expect("control plane");
    let op = cp.operator_token().to_string();
    let applied = call(
        &cp.endpoint(),
        &op,
        Method::POST,
        "/v1/apply?source=seed",
        Bytes::from(SEED),
    )
    .await
    .expect("seed applies");
    assert!(!applied.is_empty());
    let arrivals = Arc::new(parking_lot::Mutex::new(Vec::new()));
    let token = cp.service_token("payments");
    let watchers: Vec<_> = (0..50)
        .map(|i| {
            tokio::spawn(simulated_sidecar(
                cp.endpoint(),
                token.clone(),
                i,
                arrivals.clone(),
            ))
        })
        .collect();
    // Every registration changes every snapshot (one more endpoint); wait until all 50 know
    // all 50 endpoints, i.e. the versions settle.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = cp.status();
        if st.len() == 50 && st.iter().all(|s| s.sent == st[0].sent) {
            break;
        }
        assert!(Instant::now() < deadline, "50 watchers never settled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = cp.status()[0].sent.clone();

    let started = Instant::now();
    call(
        &cp.endpoint(),
        &op,
        Method::POST,
        "/v1/apply?source=weight-50",
        Bytes::from(reweighted(50, 50)),
    )
    .await
    .expect("applies");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut latencies: Vec<Duration> = loop {
        let got: Vec<Duration> = arrivals
            .lock()
            .iter()
            .filter(|(_, v, at)| *v != before && *at >= started)
            .map(|(_, _, at)| *at - started)
            .collect();
        if got.len() >= 50 {
            break got;
        }
        assert!(
            Instant::now() < deadline,
            "only {} of 50 got the change",
            got.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    latencies.sort();
    let p = |q: f64| {
        latencies[((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1]
    };
    println!(
        "apply to snapshot received, 50 sidecars: p50 {:?}, p99 {:?}, max {:?}",
        p(0.5),
        p(0.99),
        latencies[latencies.len() - 1]
    );
    for w in watchers {
        w.abort();
    }
    cp.stop().await;
}

/// Calls through `orders` until told to stop; (calls, failures, responses carrying `header`).
// Says what the first failed call of each caller was, for a failure's report.
#[allow(clippy::print_stdout)]
fn steady_load(
    orders: SocketAddr,
    stop: Arc<AtomicBool>,
    header: &'static str,
) -> tokio::task::JoinHandle<(usize, usize, usize)> {
    tokio::spawn(async move {
        let client = h1_client();
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..4 {
            let (client, stop) = (client.clone(), stop.clone());
            set.spawn(async move {
                let (mut calls, mut failed, mut marked) = (0, 0, 0);
                while !stop.load(Ordering::SeqCst) {
                    calls += 1;
                    match client.request(charge(orders)).await {
                        Ok(r) if r.status() == StatusCode::OK => {
                            if r.headers().contains_key(header) {
                                marked += 1;
                            }
                            let _ = read(r).await;
                        }
                        other => {
                            failed += 1;
                            // The first failure of each caller says what it was.
                            if failed == 1 {
                                match other {
                                    Ok(r) => {
                                        let (status, _, body) = read(r).await;
                                        println!("a failed call: {status} {body:?}");
                                    }
                                    Err(e) => println!("a failed call: {e:?}"),
                                }
                            }
                        }
                    }
                }
                (calls, failed, marked)
            });
        }
        let mut total = (0, 0, 0);
        while let Some(Ok((c, f, m))) = set.join_next().await {
            total = (total.0 + c, total.1 + f, total.2 + m);
        }
        total
    })
}

fn wasm_plugin(name: &str, digest: &str, extra: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{ name: {name} }}\n\
         spec:\n  url: {digest}\n{extra}"
    )
}

/// A control plane with payments v1 and v2 and an orders sidecar, each a process, the seed
/// applied and every sidecar running it.
struct SeedMesh {
    dir: tempfile::TempDir,
    data: PathBuf,
    cp: SocketAddr,
    op: String,
    orders: Proc,
    // Kept alive for the test's length.
    _apps: [App; 2],
    _pods: [Proc; 2],
    _control: Proc,
}

async fn seed_mesh() -> SeedMesh {
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let control_proc = control(&data, "127.0.0.1:0");
    let cp = control_proc.addr("api");
    let op = token(&data);
    let (pay, ord) = (
        service_token(cp, &op, "payments").await,
        service_token(cp, &op, "orders").await,
    );
    let (v1, v2) = (
        App::start("payments-v1").await,
        App::start("payments-v2").await,
    );
    let nowhere = SocketAddr::from(([127, 0, 0, 1], 9));
    let p1 = sidecar(
        dir.path(),
        cp,
        &pay,
        "payments",
        &[("version", "v1")],
        v1.addr,
    );
    let p2 = sidecar(
        dir.path(),
        cp,
        &pay,
        "payments",
        &[("version", "v2")],
        v2.addr,
    );
    let orders = sidecar(
        dir.path(),
        cp,
        &ord,
        "orders",
        &[("version", "v1")],
        nowhere,
    );
    let seed = write(dir.path(), "payments.yaml", SEED);
    let out = weft(cp, &data, &["apply", "-f", seed.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    converged(cp, &op, 3, Duration::from_secs(10)).await;
    SeedMesh {
        dir,
        data,
        cp,
        op,
        orders,
        _apps: [v1, v2],
        _pods: [p1, p2],
        _control: control_proc,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_swap_under_load_fails_nothing_and_bad_plugins_are_refused() {
    let _serial = SERIAL.lock().await;
    let mesh = seed_mesh().await;
    let (dir, data, cp, op) = (
        mesh.dir.path(),
        mesh.data.as_path(),
        mesh.cp,
        mesh.op.as_str(),
    );
    let orders = &mesh.orders;

    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(orders.addr("outbound"), stop.clone(), "x-retry-build");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // A new build of the retry policy, shipped as an artifact and swapped in under load.
    let out = weft(cp, data, &["plugin", "push", weft_artifacts::RETRY_PATH]);
    assert!(out.status.success(), "{}", text(&out));
    let retry = String::from_utf8_lossy(&out.stdout).trim().to_string();
    assert!(retry.starts_with("sha256:") && retry.len() == 71, "{retry}");
    let swap = write(
        dir,
        "retry-build.yaml",
        &wasm_plugin(
            "retry",
            &retry,
            "  pluginConfig: { attemptCountHeader: x-retry-build }\n",
        ),
    );
    let out = weft(cp, data, &["apply", "-f", swap.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    let swapped = converged(cp, op, 3, Duration::from_secs(10)).await;
    let (_, headers, _) = read(
        h1_client()
            .request(charge(orders.addr("outbound")))
            .await
            .expect("answered"),
    )
    .await;
    assert_eq!(
        headers.get("x-retry-build").map(|v| v.as_bytes()),
        Some(&b"1"[..]),
        "the new build answers right after the ACK"
    );

    // A digest that does not match: refused at apply, naming both.
    let out = weft(cp, data, &["plugin", "push", weft_artifacts::CHAOS_PATH]);
    assert!(out.status.success(), "{}", text(&out));
    let chaos = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let wrong = write(
        dir,
        "wrong-sha.yaml",
        &wasm_plugin("gate", &chaos, &format!("  sha256: {}\n", &retry[7..])),
    );
    let out = weft(cp, data, &["apply", "-f", wrong.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains(&chaos[7..]) && text(&out).contains(&retry[7..]),
        "{}",
        text(&out)
    );

    // A stored component that traps in configure: the control plane configures it as a
    // sidecar would, so the apply is refused naming the field, and no sidecar is sent it.
    let trap = write(
        dir,
        "trap.yaml",
        &wasm_plugin(
            "chaos-gate",
            &chaos,
            "  pluginConfig: { tag: t, configure: trap }\n",
        ),
    );
    let out = weft(cp, data, &["apply", "-f", trap.to_str().expect("utf-8")]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("(WasmPlugin chaos-gate): spec.pluginConfig: plugin \"chaos-gate\""),
        "{}",
        text(&out)
    );
    converged(cp, op, 3, Duration::from_secs(5)).await;

    // The same from a file on the sidecars' host, which the control plane cannot read: every
    // sidecar NACKs with the reason and keeps serving what it had.
    let trap = write(
        dir,
        "trap-file.yaml",
        &wasm_plugin(
            "chaos-gate",
            &format!("file://{}", weft_artifacts::CHAOS_PATH),
            "  pluginConfig: { tag: t, configure: trap }\n",
        ),
    );
    let out = weft(cp, data, &["apply", "-f", trap.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let st = api(cp, op, Method::GET, "/v1/status").await;
        let nacks = st["sidecars"]
            .as_array()
            .map(|a| a.iter().filter(|s| s.get("nack").is_some()).count())
            .unwrap_or(0);
        if nacks == 3 {
            let reason = st["sidecars"][0]["nack"].as_str().unwrap_or("").to_string();
            assert!(reason.contains("chaos-gate"), "{reason}");
            for s in st["sidecars"].as_array().into_iter().flatten() {
                assert!(swapped.contains(&s["acked"].as_str().unwrap_or("").to_string()));
            }
            break;
        }
        assert!(Instant::now() < deadline, "no NACKs: {st:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = weft(cp, data, &["status"]);
    assert!(text(&out).contains("NACK"), "{}", text(&out));
    let out = weft(cp, data, &["delete", "WasmPlugin", "chaos-gate"]);
    assert!(out.status.success(), "{}", text(&out));
    converged(cp, op, 3, Duration::from_secs(10)).await;

    stop.store(true, Ordering::SeqCst);
    let (calls, failed, marked) = load.await.expect("load");
    println!(
        "plugin swap under load: {calls} calls, {failed} failed, {marked} answered by the new build"
    );
    assert_eq!(failed, 0, "of {calls} calls");
    assert!(calls >= 1_000, "a steady load of thousands: {calls}");
    assert!(marked > 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_processes_talk_mtls_and_rotate_certificates_under_load() {
    let _serial = SERIAL.lock().await;
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let cp_log = dir.path().join("control.log");
    let data_arg = data.to_str().expect("utf-8").to_string();
    // Certificates live 3 s: renewed every 1.5-2.1 s, several times during the load below.
    let _cp = spawn_logged(
        &[
            "control",
            "--data",
            &data_arg,
            "--listen",
            "127.0.0.1:0",
            "--lease",
            "3s",
            "--cert-lifetime",
            "3s",
        ],
        Some(&cp_log),
    );
    let cp = _cp.addr("api");
    remember(cp, &data);
    let op = token(&data);
    let (pay, ord) = (
        service_token(cp, &op, "payments").await,
        service_token(cp, &op, "orders").await,
    );
    let (v1, v2) = (
        App::start("payments-v1").await,
        App::start("payments-v2").await,
    );
    let nowhere = SocketAddr::from(([127, 0, 0, 1], 9));
    let strict = serde_json::json!({"mtls": "STRICT"});
    let p1 = sidecar_with(
        dir.path(),
        cp,
        &pay,
        "payments",
        &[("version", "v1")],
        v1.addr,
        strict.clone(),
        None,
    );
    let _p2 = sidecar_with(
        dir.path(),
        cp,
        &pay,
        "payments",
        &[("version", "v2")],
        v2.addr,
        strict.clone(),
        None,
    );
    let orders = sidecar_with(
        dir.path(),
        cp,
        &ord,
        "orders",
        &[("version", "v1")],
        nowhere,
        strict,
        None,
    );
    let seed = write(dir.path(), "payments.yaml", SEED);
    let out = weft(cp, &data, &["apply", "-f", seed.to_str().expect("utf-8")]);
    assert!(out.status.success(), "{}", text(&out));
    converged(cp, &op, 3, Duration::from_secs(10)).await;

    let issued_before = std::fs::read_to_string(&cp_log)
        .unwrap_or_default()
        .matches("issued a workload certificate")
        .count();
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(orders.addr("outbound"), stop.clone(), "x-none");
    tokio::time::sleep(Duration::from_secs(7)).await;
    stop.store(true, Ordering::SeqCst);
    let (calls, failed, _) = load.await.expect("load");
    let issued = std::fs::read_to_string(&cp_log)
        .unwrap_or_default()
        .matches("issued a workload certificate")
        .count()
        - issued_before;
    println!(
        "mTLS under rotation: {calls} calls, {failed} failed, {issued} certificates issued meanwhile"
    );
    assert_eq!(failed, 0, "of {calls} calls");
    assert!(calls >= 1_000, "{calls}");
    assert!(
        issued >= 6,
        "three sidecars renewing about every 2 s for 7 s: {issued}"
    );

    // The payments app learns who called, from a certificate the mesh issued.
    let seen = v1.seen();
    let xfcc = seen
        .last()
        .and_then(|s| s.headers.get("x-forwarded-client-cert"))
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    assert!(
        xfcc.contains("URI=spiffe://weft.local/ns/default/sa/orders"),
        "{xfcc:?}"
    );
    // A plaintext client straight to a STRICT inbound listener is refused.
    let plain = support::h2_client()
        .request(
            Request::builder()
                .uri(format!("http://{}/charge", p1.addr("inbound")))
                .body(full(""))
                .expect("request"),
        )
        .await;
    assert!(plain.is_err(), "plaintext to STRICT must fail: {plain:?}");

    // Root rotation under the same load, each step a renewal (≤ 2.1 s here) apart. Fresh orders
    // sidecars join at each step so new handshakes cross the roots: one certified by the new
    // root right after activation (payments still present old-root certificates), one after
    // the old root is retired (it trusts the new root alone, the control plane included).
    let ca = |verb: &str| {
        let out = weft(cp, &data, &["ca", verb]);
        assert!(out.status.success(), "ca {verb}: {}", text(&out));
        text(&out)
    };
    let renewal = Duration::from_millis(3_500);
    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(orders.addr("outbound"), stop.clone(), "x-none");
    assert!(ca("rotate").contains("2 roots"));
    tokio::time::sleep(renewal).await;
    ca("activate");
    let fresh = |version: &str| {
        sidecar_with(
            dir.path(),
            cp,
            &ord,
            "orders",
            &[("version", version)],
            nowhere,
            serde_json::json!({"mtls": "STRICT"}),
            None,
        )
    };
    let crossing = fresh("v2");
    converged(cp, &op, 4, Duration::from_secs(10)).await;
    let (_, crossing_failed) = split(crossing.addr("outbound"), &v2, 200).await;
    tokio::time::sleep(renewal).await;
    assert!(ca("retire").contains("1 root"));
    tokio::time::sleep(renewal).await;
    let bundle = std::fs::read_to_string(bundle_file(cp)).expect("bundle.pem");
    assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 1);
    let late = fresh("v3");
    converged(cp, &op, 5, Duration::from_secs(10)).await;
    let (_, late_failed) = split(late.addr("outbound"), &v2, 200).await;
    stop.store(true, Ordering::SeqCst);
    let (calls, failed, _) = load.await.expect("load");
    println!(
        "root rotation: {calls} calls under load, {failed} failed; fresh sidecars: \
         {crossing_failed} and {late_failed} of 200 failed"
    );
    assert_eq!(failed, 0, "of {calls} calls through the rotation");
    assert!(calls >= 1_000, "{calls}");
    assert_eq!(crossing_failed, 0, "a new-root caller to old-root payments");
    assert_eq!(late_failed, 0, "a caller trusting only the new root");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_stat_reports_each_subset_from_the_sidecars_metrics() {
    let _serial = SERIAL.lock().await;
    let mesh = seed_mesh().await;
    let (cp, op, orders) = (mesh.cp, mesh.op.as_str(), &mesh.orders);
    let data = mesh.data.clone();
    let status = api(cp, op, Method::GET, "/v1/status").await;
    assert!(
        status["sidecars"]
            .as_array()
            .expect("sidecars")
            .iter()
            .all(|s| s["admin"]
                .as_str()
                .is_some_and(|a| a.parse::<SocketAddr>().is_ok())),
        "every sidecar registers its admin endpoint: {status}"
    );

    let stop = Arc::new(AtomicBool::new(false));
    let load = steady_load(orders.addr("outbound"), stop.clone(), "x-none");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = tokio::task::spawn_blocking(move || {
        weft(
            cp,
            &data,
            &["stat", "payments", "-o", "json", "--window", "3s"],
        )
    })
    .await
    .expect("stat");
    stop.store(true, Ordering::SeqCst);
    let (calls, failed, _) = load.await.expect("load");
    assert!(out.status.success(), "{}", text(&out));
    let rows: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", text(&out)));
    let rows = rows.as_array().expect("rows");
    let row = |subset: &str| {
        rows.iter()
            .find(|r| r["service"] == "payments" && r["subset"] == subset)
            .unwrap_or_else(|| panic!("no payments {subset} in {rows:?}"))
    };
    let (r1, r2) = (row("v1"), row("v2"));
    let rps = |r: &serde_json::Value| r["rps"].as_f64().unwrap_or(0.0);
    assert!(rps(r1) > 0.0 && rps(r2) > 0.0, "{rows:?}");
    let v2_share = 100.0 * rps(r2) / (rps(r1) + rps(r2));
    assert!(
        (1.0..=15.0).contains(&v2_share),
        "v2 has {v2_share}% of the rate: {rows:?}"
    );
    assert_eq!(r1["successRate"], 100.0, "{r1}");
    let p50 = r1["p50Ms"].as_f64().expect("p50");
    let p99 = r1["p99Ms"].as_f64().expect("p99");
    assert!(p50 > 0.0 && p99 >= p50, "{r1}");
    assert!(
        rows.iter().all(|r| r["service"] == "payments"),
        "filtered: {rows:?}"
    );
    println!("weft stat under load ({calls} calls, {failed} failed): {rows:?}");
    assert_eq!(failed, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_readiness_answer_probes_and_readiness_follows_the_store() {
    let m = TestMesh::start();
    let cp = endpoint(m.cp);
    let probe = |path: &'static str| {
        let cp = &cp;
        async move {
            // No credential a probe could carry: an unknown token is not looked at.
            match call(cp, "no-token", Method::GET, path, Bytes::new()).await {
                Ok(body) => (StatusCode::OK, String::from_utf8_lossy(&body).into_owned()),
                Err(weft::control::client::ClientError::Refused { status, body }) => (status, body),
                Err(e) => panic!("{path}: {e}"),
            }
        }
    };
    assert_eq!(probe("/healthz").await.0, StatusCode::OK);
    let (status, body) = probe("/readyz").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).expect("json")["ready"],
        true
    );
    // The data directory goes away (a volume unmounted): still live, no longer ready, and the
    // answer names no path; back, and ready again.
    let away = m.data.with_extension("away");
    std::fs::rename(&m.data, &away).expect("move the data directory");
    let (status, body) = probe("/readyz").await;
    std::fs::rename(&away, &m.data).expect("move it back");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    assert!(!body.contains(m.data.to_str().expect("utf-8")), "{body}");
    assert_eq!(probe("/healthz").await.0, StatusCode::OK);
    assert_eq!(probe("/readyz").await.0, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resource_version_applied_back_is_refused_once_the_resource_changed() {
    let m = TestMesh::start();
    let apply = |name: &str, yaml: &str| {
        let file = write(m.dir.path(), name, yaml);
        let out = weft(
            m.cp,
            &m.data,
            &["apply", "--no-wait", "-f", file.to_str().expect("utf-8")],
        );
        (out.status.success(), text(&out))
    };
    let (ok, said) = apply("seed.yaml", SEED);
    assert!(ok, "{said}");
    let listed = text(&weft(m.cp, &m.data, &["get", "vs", "payments"]));
    assert!(listed.contains("resourceVersion: \"1\""), "{listed}");
    let edit = |v2: u32| {
        listed
            .replace("weight: 95", &format!("weight: {}", 100 - v2))
            .replace("weight: 5\n", &format!("weight: {v2}\n"))
    };
    // Applied back as read: taken, and the resource moves to revision 2.
    let (ok, said) = apply("fifty.yaml", &edit(50));
    assert!(ok && said.contains("revision 2"), "{said}");
    // The same read again: the resource changed since.
    let (ok, said) = apply("twenty.yaml", &edit(20));
    assert!(!ok, "{said}");
    assert!(
        said.contains("409")
            && said.contains("metadata.resourceVersion is 1, but it was changed at revision 2"),
        "{said}"
    );
    // A revision no `weft get` showed.
    let (ok, said) = apply("future.yaml", &edit(20).replace("\"1\"", "\"99\""));
    assert!(!ok, "{said}");
    assert!(
        said.contains("metadata.resourceVersion is 99, but the mesh is at revision 2"),
        "{said}"
    );
    let (ok, said) = apply("number.yaml", &edit(20).replace("\"1\"", "1"));
    assert!(!ok && said.contains("400"), "{said}");
}
