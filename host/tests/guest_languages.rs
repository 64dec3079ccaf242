//! Plugins written in Python, JavaScript and C, built by their examples' own `build.sh`
//! (`examples/plugins/{python,js,c}`) and run the way a user runs them: loaded by a real sidecar
//! from a snapshot, with real HTTP calls through it to a real app on loopback. Then the cost of
//! one hook call of each, measured through the plugin runtime beside the Rust twin of the
//! Python gate (`examples/tenant-gate`); the numbers are printed, never asserted.
//!
//! Each guest is built once and compiled once per run: the builds are shared by every test
//! here, and every runtime (each sidecar's, the measuring one) shares one compile cache.

mod support;

use http::{HeaderMap, HeaderValue, Method, StatusCode};
use prometheus::Registry;
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};
use support::{App, get, h1_client, read};
use weft::plugin::*;
use weft::proxy::{Sidecar, SidecarConfig};
use weft::snapshot::Snapshot;

/// One test at a time: each loads components of 12–18 MB (seconds of compiling on two
/// cores), and the timing test must not share the cores with another test's compile.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Where builds and the compile cache go: under Cargo's scratch directory for tests.
fn work_dir() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("guest_languages")
}

/// The compile cache every runtime here shares, so each component compiles once per run
/// (a sidecar's runtime is its own). Emptied first: the guests' builds are not reproducible,
/// so an earlier run's entries could never be hit again and would only pile up.
static CACHE: LazyLock<PathBuf> = LazyLock::new(|| fresh_dir("compile-cache"));

/// `name` under the work directory, emptied.
fn fresh_dir(name: &str) -> PathBuf {
    let dir = work_dir().join(name);
    match std::fs::remove_dir_all(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => panic!("cannot empty {}: {e}", dir.display()),
    }
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    dir
}

/// A guest built by its example's `build.sh`.
struct Guest {
    wasm: PathBuf,
    digest: String,
    size: usize,
    build_took: Duration,
}

static PYTHON: LazyLock<Result<Guest, String>> =
    LazyLock::new(|| build("python", "header_gate.wasm"));
static JS: LazyLock<Result<Guest, String>> = LazyLock::new(|| build("js", "request_id.wasm"));
static C: LazyLock<Result<Guest, String>> = LazyLock::new(|| build("c", "rate_limit.wasm"));

/// The built guest, or the test fails with why the build did not work (the script's stderr).
fn guest(built: &'static LazyLock<Result<Guest, String>>) -> &'static Guest {
    match &**built {
        Ok(g) => g,
        Err(e) => panic!("{e}"),
    }
}

/// Runs `examples/plugins/<lang>/build.sh` from the repository root, as its README says.
fn build(lang: &str, file: &str) -> Result<Guest, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ sits in the workspace root");
    let script = root.join("examples/plugins").join(lang).join("build.sh");
    if !script.is_file() {
        return Err(format!("{} is missing", script.display()));
    }
    let out = work_dir().join(lang);
    let started = Instant::now();
    let output = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .current_dir(root)
        .output()
        .map_err(|e| format!("cannot run `bash {}`: {e}", script.display()))?;
    if !output.status.success() {
        return Err(format!(
            "`bash {} {}` failed ({}):\n--- stderr ---\n{}\n--- stdout ---\n{}",
            script.display(),
            out.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim_end(),
            String::from_utf8_lossy(&output.stdout).trim_end(),
        ));
    }
    let build_took = started.elapsed();
    let wasm = out.join(file);
    let bytes = std::fs::read(&wasm).map_err(|e| {
        format!(
            "`bash {}` succeeded but its output {} cannot be read: {e}",
            script.display(),
            wasm.display()
        )
    })?;
    Ok(Guest {
        wasm,
        digest: sha256_hex(&bytes),
        size: bytes.len(),
        build_took,
    })
}

/// Roomy sandbox bounds: these guests carry a language runtime (a CPython, a SpiderMonkey),
/// and a wall-clock deadline on a loaded 2-core machine must not decide a behaviour test.
fn limits() -> Limits {
    Limits {
        deadline: Duration::from_secs(1),
        setup_deadline: Duration::from_secs(10),
        memory_bytes: 128 << 20,
        ..Limits::default()
    }
}

/// A loopback sidecar config with the roomy limits and the shared compile cache.
fn guest_sidecar_config(service: &str, app: SocketAddr) -> SidecarConfig {
    let mut c = support::sidecar_config(service, app);
    c.plugin_limits = limits();
    c.runtime.cache_dir = Some(CACHE.clone());
    c
}

/// An app with its sidecar.
struct Pod {
    app: App,
    sidecar: Sidecar,
}

async fn pod(name: &str) -> Pod {
    let app = App::start(name).await;
    let sidecar = Sidecar::start(support::sidecar_config("payments", app.addr))
        .await
        .expect("sidecar");
    Pod { app, sidecar }
}

/// A caller's sidecar (`orders`, whose own app is never called) routing `payments` to `to`
/// through `plugins` (a snapshot's plugin entries); stored artifacts are looked up in
/// `artifact_dir`. Returns it with the time the snapshot took to apply.
async fn caller(to: &Pod, plugins: Value, artifact_dir: Option<&Path>) -> (Sidecar, Duration) {
    let nowhere = SocketAddr::from(([127, 0, 0, 1], 9));
    let mut config = guest_sidecar_config("orders", nowhere);
    if let Some(dir) = artifact_dir {
        config.artifact_dir = dir.to_path_buf();
    }
    let sidecar = Sidecar::start(config).await.expect("sidecar");
    let names: Vec<Value> = plugins
        .as_array()
        .map(|p| p.iter().map(|p| p["name"].clone()).collect())
        .unwrap_or_default();
    let snapshot: Snapshot = serde_json::from_value(json!({
        "version": "guest-languages-1",
        "services": {
            "payments": {
                "timeout": "30s",
                "endpoints": [{"address": to.sidecar.inbound.to_string(),
                               "labels": {"version": "v1"}}],
                "plugins": plugins,
            }
        }
    }))
    .expect("snapshot");
    let started = Instant::now();
    if let Err(e) = sidecar.apply(snapshot).await {
        panic!("the snapshot with plugins {names:?} was refused: {e}");
    }
    (sidecar, started.elapsed())
}

/// One GET through `to`: status, headers and body as text.
async fn call(
    to: SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, HeaderMap, String) {
    let resp = h1_client()
        .request(get(to, path, headers))
        .await
        .expect("answered");
    let (status, headers, body) = read(resp).await;
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// `n` GETs of `/load/<i>` through `to` over `conns` concurrent connections, the i-th with
/// the headers `headers(i)`; each one's path with its answer.
async fn fire(
    to: SocketAddr,
    n: usize,
    conns: usize,
    headers: fn(usize) -> Vec<(&'static str, &'static str)>,
) -> Vec<(String, StatusCode, HeaderMap)> {
    let client = h1_client();
    let mut set = tokio::task::JoinSet::new();
    for w in 0..conns {
        let client = client.clone();
        set.spawn(async move {
            let mut out = Vec::new();
            for i in (w..n).step_by(conns) {
                let path = format!("/load/{i}");
                let resp = client
                    .request(get(to, &path, &headers(i)))
                    .await
                    .expect("answered");
                let (status, headers, _) = read(resp).await;
                out.push((path, status, headers));
            }
            out
        });
    }
    let mut all = Vec::with_capacity(n);
    while let Some(r) = set.join_next().await {
        all.extend(r.expect("worker"));
    }
    all
}

/// The value of the sample `name` whose labels include every one of `labels`.
fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

/// Asserts the plugin never failed in `sidecar` and ran `on-request` `calls` times.
async fn assert_ran_cleanly(sidecar: &Sidecar, plugin: &str, calls: usize) {
    let m = support::scrape(sidecar).await;
    assert_eq!(
        sample(&m, "weft_plugin_failures_total", &[("plugin", plugin)]).unwrap_or(0.0),
        0.0,
        "{plugin} failed:\n{}",
        m.lines()
            .filter(|l| l.contains("weft_plugin_failures_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(
        sample(
            &m,
            "weft_plugin_calls_total",
            &[("plugin", plugin), ("hook", "on-request")]
        ),
        Some(calls as f64),
        "{plugin}'s on-request ran once per call"
    );
}

/// The Python gate's plugin entry as its `wasmplugin.yaml` deploys it: fail-closed, letting
/// `acme` and `globex` through; pinned to the build at hand.
fn header_gate(python: &Guest) -> Value {
    json!({"name": "header-gate", "file": python.wasm, "sha256": python.digest,
           "failStrategy": "fail-closed",
           "config": {"header": "x-tenant", "allow": ["acme", "globex"]}})
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// `orders-` and 32 lower-case hex digits: the id request-id makes with `prefix: orders-`.
fn is_made_id(v: &str) -> bool {
    v.strip_prefix("orders-").is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_header_gate_lets_allowed_tenants_through_and_answers_the_rest_403() {
    let _one = SERIAL.lock().await;
    let python = guest(&PYTHON);
    println!(
        "python: build.sh took {:.1?}, header_gate.wasm is {:.1} MB",
        python.build_took,
        python.size as f64 / 1e6
    );
    let app = pod("payments-v1").await;
    let (py, took) = caller(&app, json!([header_gate(python)]), None).await;
    println!("python: the snapshot with header-gate applied in {took:.1?}");
    // Its Rust twin under the same allow-list: the two must answer every case alike.
    let (rs, _) = caller(
        &app,
        json!([{"name": "tenant-gate", "file": weft_artifacts::TENANT_GATE_PATH,
                "failStrategy": "fail-closed",
                "config": {"allow": ["acme", "globex"]}}]),
        None,
    )
    .await;

    // (path, the x-tenant header sent, let through)
    let cases = [
        ("/acme", Some("acme"), true),
        ("/globex", Some("globex"), true),
        ("/evil", Some("evil"), false),
        ("/missing", None, false),
        // Compared exactly, as bytes.
        ("/upper-case", Some("ACME"), false),
        ("/prefix", Some("acme-corp"), false),
    ];
    for (gate, sidecar) in [("python", &py), ("rust", &rs)] {
        for (path, tenant, allowed) in cases {
            let sent: Vec<(&str, &str)> = tenant.iter().map(|t| ("x-tenant", *t)).collect();
            let (status, headers, body) = call(sidecar.outbound, path, &sent).await;
            if allowed {
                assert_eq!(status, StatusCode::OK, "{gate} {path}: {body}");
                assert_eq!(body, "hello from payments-v1", "{gate} {path}");
                assert_eq!(header(&headers, "x-app"), Some("payments-v1"));
            } else {
                assert_eq!(
                    (status, body.as_str()),
                    (StatusCode::FORBIDDEN, "tenant not allowed\n"),
                    "{gate} {path}"
                );
                assert_eq!(
                    header(&headers, "content-type"),
                    Some("text/plain; charset=utf-8"),
                    "{gate} {path}"
                );
                assert_eq!(
                    header(&headers, "x-app"),
                    None,
                    "{gate} {path}: answered by the sidecar, not the app"
                );
            }
        }
    }
    let seen = app.app.seen();
    let paths: Vec<&str> = seen.iter().map(|s| s.path.as_str()).collect();
    assert_eq!(
        paths,
        ["/acme", "/globex", "/acme", "/globex"],
        "only allowed tenants reached the app"
    );
    assert_eq!(header(&seen[0].headers, "x-tenant"), Some("acme"));
    assert_eq!(header(&seen[1].headers, "x-tenant"), Some("globex"));

    // Concurrent calls: the sidecar's workers take several pooled instances, each configured
    // on its own (the config lives in module globals), and each must gate alike.
    let tenant = |i: usize| {
        vec![(
            "x-tenant",
            if i.is_multiple_of(2) { "acme" } else { "evil" },
        )]
    };
    let answers = fire(py.outbound, 200, 8, tenant).await;
    assert_eq!(answers.len(), 200);
    for (path, status, _) in &answers {
        let i: usize = path
            .trim_start_matches("/load/")
            .parse()
            .expect("a /load/<i> path");
        let want = if i.is_multiple_of(2) {
            StatusCode::OK
        } else {
            StatusCode::FORBIDDEN
        };
        assert_eq!(*status, want, "{path}");
    }
    let reached = app
        .app
        .seen()
        .iter()
        .filter(|s| s.path.starts_with("/load/"))
        .count();
    assert_eq!(reached, 100, "only the acme half reached the app");

    assert_ran_cleanly(&py, "header-gate", cases.len() + 200).await;
    assert_ran_cleanly(&rs, "tenant-gate", cases.len()).await;
    let m = support::scrape(&py).await;
    println!(
        "python: {} header-gate instances served 206 calls",
        sample(
            &m,
            "weft_plugin_instances_created_total",
            &[("plugin", "header-gate")]
        )
        .unwrap_or(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn js_request_id_stamps_calls_without_an_id_and_echoes_the_id_on_the_response() {
    let _one = SERIAL.lock().await;
    let js = guest(&JS);
    println!(
        "js: build.sh took {:.1?}, request_id.wasm is {:.1} MB",
        js.build_took,
        js.size as f64 / 1e6
    );
    let app = pod("payments-v1").await;
    // Loaded as a pushed artifact is: by digest, from the sidecar's artifact directory.
    // (Emptied first: each build has a new digest, so old ones would only pile up.)
    let artifacts = fresh_dir("artifacts");
    std::fs::copy(&js.wasm, artifacts.join(format!("{}.wasm", js.digest)))
        .expect("store request_id.wasm as an artifact");
    let (orders, took) = caller(
        &app,
        json!([{"name": "request-id", "artifact": js.digest,
                "config": {"header": "x-correlation-id", "prefix": "orders-"}}]),
        Some(&artifacts),
    )
    .await;
    println!("js: the snapshot with request-id applied in {took:.1?}");
    let seen_id = |path: &str| {
        let seen: Vec<_> = app
            .app
            .seen()
            .into_iter()
            .filter(|s| s.path == path)
            .collect();
        assert_eq!(seen.len(), 1, "{path} reached the app once");
        let all: Vec<String> = seen[0]
            .headers
            .get_all("x-correlation-id")
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        assert_eq!(all.len(), 1, "{path}: one x-correlation-id, got {all:?}");
        all[0].clone()
    };

    // No id: one is made, the app gets it, and the caller sees the same on the response.
    let (status, headers, body) = call(orders.outbound, "/fresh", &[]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, "hello from payments-v1");
    let made = seen_id("/fresh");
    assert!(is_made_id(&made), "made id {made:?}");
    assert_eq!(header(&headers, "x-correlation-id"), Some(made.as_str()));

    // The caller's own id is kept as it is, and echoed.
    let (status, headers, _) = call(
        orders.outbound,
        "/kept",
        &[("x-correlation-id", "caller-42")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(seen_id("/kept"), "caller-42");
    assert_eq!(header(&headers, "x-correlation-id"), Some("caller-42"));

    // An error from the app carries it too.
    let (status, headers, _) = call(orders.outbound, "/status/404", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let made = seen_id("/status/404");
    assert!(is_made_id(&made), "made id {made:?}");
    assert_eq!(header(&headers, "x-correlation-id"), Some(made.as_str()));

    // Concurrent calls on pooled instances: the id goes from on-request to on-response
    // through the host's shared state keyed by call-id, so each response carries its own
    // call's id, and no two calls share one.
    let answers = fire(orders.outbound, 100, 8, |_| Vec::new()).await;
    let mut ids = std::collections::HashSet::new();
    for (path, status, headers) in &answers {
        assert_eq!(*status, StatusCode::OK, "{path}");
        let sent = seen_id(path);
        assert!(is_made_id(&sent), "{path}: made id {sent:?}");
        assert_eq!(
            header(headers, "x-correlation-id"),
            Some(sent.as_str()),
            "{path}: the response carries its own call's id"
        );
        ids.insert(sent);
    }
    assert_eq!(ids.len(), 100, "every call got an id of its own");

    let calls = 3 + 100;
    assert_ran_cleanly(&orders, "request-id", calls).await;
    let m = support::scrape(&orders).await;
    assert_eq!(
        sample(
            &m,
            "weft_plugin_calls_total",
            &[("plugin", "request-id"), ("hook", "on-response")]
        ),
        Some(calls as f64),
        "on-response ran once per call"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_of_the_js_and_python_plugins_stamps_every_call_and_gates_it() {
    let _one = SERIAL.lock().await;
    let (python, js) = (guest(&PYTHON), guest(&JS));
    let app = pod("payments-v1").await;
    // In the order their `wasmplugin.yaml` phases give: request-id (AUTHN, fail-open) before
    // header-gate (AUTHZ, fail-closed). Two language runtimes in one chain, one sidecar.
    let (orders, took) = caller(
        &app,
        json!([
            {"name": "request-id", "file": js.wasm,
             "config": {"header": "x-correlation-id", "prefix": "orders-"}},
            header_gate(python),
        ]),
        None,
    )
    .await;
    println!("mixed: the snapshot with request-id and header-gate applied in {took:.1?}");

    let (status, headers, body) = call(orders.outbound, "/fresh", &[("x-tenant", "acme")]).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let seen = app.app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(header(&seen[0].headers, "x-tenant"), Some("acme"));
    let made = header(&seen[0].headers, "x-correlation-id")
        .expect("the app got an id")
        .to_string();
    assert!(is_made_id(&made), "made id {made:?}");
    assert_eq!(header(&headers, "x-correlation-id"), Some(made.as_str()));

    let (status, headers, _) = call(
        orders.outbound,
        "/kept",
        &[("x-tenant", "globex"), ("x-correlation-id", "caller-7")],
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        header(&app.app.seen()[1].headers, "x-correlation-id"),
        Some("caller-7")
    );
    assert_eq!(header(&headers, "x-correlation-id"), Some("caller-7"));

    // The gate still answers a stamped call it refuses; the app never sees it, and the 403
    // goes back through request-id's on-response (it saw the request), so it carries the id.
    let (status, headers, body) = call(orders.outbound, "/evil", &[("x-tenant", "evil")]).await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::FORBIDDEN, "tenant not allowed\n")
    );
    assert_eq!(app.app.seen().len(), 2, "a refused call reaches no app");
    let stamped = header(&headers, "x-correlation-id").expect("the 403 carries the id");
    assert!(is_made_id(stamped), "made id {stamped:?}");

    assert_ran_cleanly(&orders, "request-id", 3).await;
    assert_ran_cleanly(&orders, "header-gate", 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn c_rate_limit_answers_429_past_its_burst_and_lets_calls_through_again() {
    let _one = SERIAL.lock().await;
    let c = guest(&C);
    println!(
        "c: rate_limit.wasm is {} bytes, built in {:.1?}",
        c.size, c.build_took
    );
    let app = pod("payments-v1").await;
    // 5 calls per 500 ms window.
    let (orders, _) = caller(
        &app,
        json!([{"name": "rate-limit", "file": c.wasm, "sha256": c.digest,
                "config": {"requestsPerSecond": 10, "burst": 5}}]),
        None,
    )
    .await;
    let (mut ok, mut limited) = (0, 0);
    let started = Instant::now();
    for i in 0..20 {
        let (status, headers, body) = call(orders.outbound, &format!("/burst/{i}"), &[]).await;
        match status.as_u16() {
            200 => ok += 1,
            429 => {
                limited += 1;
                assert_eq!(body, "rate limited\n");
                assert_eq!(header(&headers, "retry-after"), Some("1"));
            }
            other => panic!("call {i}: {other} {body}"),
        }
    }
    let took = started.elapsed();
    // 20 calls in well under a second span at most two or three windows of 5.
    let windows = 1 + (took.as_millis() / 500) as usize + 1;
    assert!(
        (5..=5 * windows).contains(&ok),
        "{ok} let through in {took:?}"
    );
    assert_eq!(ok + limited, 20);
    assert_eq!(app.app.seen().len(), ok, "a limited call reaches no app");
    // A later window lets calls through again.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (status, _, _) = call(orders.outbound, "/later", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_ran_cleanly(&orders, "rate-limit", 21).await;
}

/// A request as an app sends it: ten headers (as `benches/plugin_hooks.rs` has it), the
/// tenant `tenant`.
fn request(tenant: &'static str) -> RequestHead {
    let mut head = RequestHead {
        method: Method::POST,
        path: "/charge?order=8842".into(),
        authority: "payments".into(),
        destination: Destination {
            service: "payments".into(),
            subset: None,
        },
        ..RequestHead::default()
    };
    for (name, value) in [
        ("host", "payments"),
        ("user-agent", "orders/1.4.2"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("content-length", "187"),
        ("x-request-id", "5f8d0c3e-7b1a-4c2e-9d4f-2a6b8e1c0d93"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("x-user", "user-2231"),
        ("x-tenant", tenant),
        ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"),
    ] {
        head.headers.insert(name, HeaderValue::from_static(value));
    }
    head
}

/// Per-call times, in microseconds.
struct Timings(Vec<f64>);

impl Timings {
    fn new() -> Self {
        Timings(Vec::with_capacity(CALLS))
    }

    fn add(&mut self, d: Duration) {
        self.0.push(d.as_secs_f64() * 1e6);
    }

    fn quantile(&self, q: f64) -> f64 {
        let mut v = self.0.clone();
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    }

    fn median(&self) -> f64 {
        self.quantile(0.5)
    }

    fn mean(&self) -> f64 {
        self.0.iter().sum::<f64>() / self.0.len() as f64
    }
}

const WARMUP: usize = 50;
const CALLS: usize = 2_000;

/// Times `on-request` of a tenant gate on `CALLS` copies of `head` (after a warm-up), and
/// checks every verdict: `allowed` goes on, anything else is answered 403.
fn time_gate(chain: &Chain, head: &RequestHead, allowed: bool) -> Timings {
    let mut t = Timings::new();
    for i in 0..WARMUP + CALLS {
        let mut h = head.clone();
        let started = Instant::now();
        let verdict = chain.on_request(i as u64 + 1, &mut h);
        let took = started.elapsed();
        assert!(!verdict.plugin_failed, "call {i} failed");
        match (&verdict.action, allowed) {
            (RequestVerdict::Continue, true) => {}
            (RequestVerdict::Respond(r), false) if r.status == StatusCode::FORBIDDEN => {}
            (other, _) => panic!("call {i}: unexpected verdict {other:?}"),
        }
        if i >= WARMUP {
            t.add(took);
        }
    }
    t
}

/// A plugin of `compiled` prepared with `config`, and the time its first instance takes
/// (instantiate + `configure`): the median of 11 such plugins, as one is noisy.
fn first_instance(
    runtime: &PluginRuntime,
    compiled: &Compiled,
    name: &str,
    config: &str,
) -> (Arc<Plugin>, Duration) {
    let mut times = Vec::new();
    let mut last = None;
    for _ in 0..11 {
        let mut spec = PluginSpec::new(name, config);
        spec.limits = limits();
        let started = Instant::now();
        let plugin = runtime
            .prepare(compiled, spec)
            .unwrap_or_else(|e| panic!("{name} does not prepare: {e}"));
        times.push(started.elapsed());
        last = Some(plugin);
    }
    times.sort();
    (last.expect("prepared"), times[times.len() / 2])
}

#[test]
fn per_call_overhead_of_the_python_js_and_c_guests_against_rust() {
    let _one = SERIAL.blocking_lock();
    let (python, js, c) = (guest(&PYTHON), guest(&JS), guest(&C));
    let runtime = PluginRuntime::new(
        RuntimeConfig {
            cache_dir: Some(CACHE.clone()),
            ..RuntimeConfig::default()
        },
        &Registry::new(),
        Arc::new(NoEndpoints),
    )
    .expect("runtime");
    // Compiled (or loaded from the cache an earlier test filled), then a first instance made
    // and configured.
    let load = |name: &str, path: &Path, config: &str| {
        let compiled = runtime
            .load(name, Artifact::File(path), None)
            .unwrap_or_else(|e| panic!("{name} does not load: {e}"));
        let (plugin, setup) = first_instance(&runtime, &compiled, name, config);
        (Chain::new(vec![plugin]), compiled, setup)
    };
    let gate_config = r#"{"allow":["acme","globex"]}"#;
    let (rust, rust_c, rust_setup) = load(
        "tenant-gate",
        Path::new(weft_artifacts::TENANT_GATE_PATH),
        gate_config,
    );
    let (py, py_c, py_setup) = load(
        "header-gate",
        &python.wasm,
        r#"{"header":"x-tenant","allow":["acme","globex"]}"#,
    );
    let (stamp, js_c, js_setup) = load(
        "request-id",
        &js.wasm,
        r#"{"header":"x-correlation-id","prefix":"orders-"}"#,
    );
    // A limit no run reaches: every call counts and goes on.
    let (limit, c_c, c_setup) = load("rate-limit", &c.wasm, r#"{"requestsPerSecond":1000000000}"#);
    let how = |c: &Compiled| {
        if c.from_cache {
            "from cache"
        } else {
            "compiled"
        }
    };
    println!(
        "load: rust {:.2?} ({}), python {:.2?} ({}), js {:.2?} ({}), c {:.2?} ({})",
        rust_c.took,
        how(&rust_c),
        py_c.took,
        how(&py_c),
        js_c.took,
        how(&js_c),
        c_c.took,
        how(&c_c)
    );
    println!(
        "first instance (instantiate + configure, median of 11): rust {:.2?}, python {:.2?}, \
         js {:.2?}, \
         c {:.2?}",
        rust_setup, py_setup, js_setup, c_setup
    );

    let (acme, evil) = (request("acme"), request("evil"));
    let rust_allow = time_gate(&rust, &acme, true);
    let py_allow = time_gate(&py, &acme, true);
    let c_count = time_gate(&limit, &acme, true);
    let rust_deny = time_gate(&rust, &evil, false);
    let py_deny = time_gate(&py, &evil, false);

    // request-id on a call without an id: on-request makes one and keeps it in shared state;
    // on-response (timed apart) puts it on the response and deletes the key, so state does
    // not grow over the run.
    let (mut js_req, mut js_resp) = (Timings::new(), Timings::new());
    for i in 0..WARMUP + CALLS {
        let call_id = i as u64 + 1;
        let mut head = acme.clone();
        let started = Instant::now();
        let verdict = stamp.on_request(call_id, &mut head);
        let took_req = started.elapsed();
        assert!(
            !verdict.plugin_failed && matches!(verdict.action, RequestVerdict::Continue),
            "call {i}: on-request {verdict:?}"
        );
        let id = head
            .headers
            .get("x-correlation-id")
            .cloned()
            .unwrap_or_else(|| panic!("call {i}: no id was stamped"));
        let mut resp = ResponseHead {
            status: StatusCode::OK,
            ..ResponseHead::default()
        };
        let started = Instant::now();
        let verdict = stamp.on_response(call_id, &mut resp, head.route);
        let took_resp = started.elapsed();
        assert!(
            !verdict.plugin_failed && matches!(verdict.action, ResponseVerdict::Continue),
            "call {i}: on-response {verdict:?}"
        );
        assert_eq!(resp.headers.get("x-correlation-id"), Some(&id), "call {i}");
        if i >= WARMUP {
            js_req.add(took_req);
            js_resp.add(took_resp);
        }
    }

    println!(
        "per-call: rust {:.1} µs, python {:.1} µs, js {:.1} µs, c {:.1} µs \
         (on-request, median of {CALLS}; gates letting `acme` through, js stamping a new id, \
         c counting the call in a host counter)",
        rust_allow.median(),
        py_allow.median(),
        js_req.median(),
        c_count.median()
    );
    println!(
        "per-call, answering 403: rust {:.1} µs, python {:.1} µs; js on-response {:.1} µs",
        rust_deny.median(),
        py_deny.median(),
        js_resp.median()
    );
    for (what, t) in [
        ("rust allow", &rust_allow),
        ("python allow", &py_allow),
        ("rust deny", &rust_deny),
        ("python deny", &py_deny),
        ("js on-request", &js_req),
        ("js on-response", &js_resp),
        ("c on-request", &c_count),
    ] {
        println!(
            "  {what:<15} mean {:>7.1} µs, p99 {:>7.1} µs",
            t.mean(),
            t.quantile(0.99)
        );
    }

    // The same Python gate on baseline code (Winch), which a sidecar runs while the optimized
    // code of a plugin fetched at apply is compiled: its compile, first instance and calls.
    let base = PluginRuntime::new(
        RuntimeConfig::default(),
        &Registry::new(),
        Arc::new(NoEndpoints),
    )
    .expect("runtime");
    let bytes = std::fs::read(&python.wasm).expect("python wasm");
    let started = Instant::now();
    base.check_baseline("header-gate", &bytes)
        .expect("baseline compile");
    let compile = started.elapsed();
    assert!(base.runs_baseline(&python.digest), "baseline code held");
    let compiled = base
        .load("header-gate", Artifact::Bytes(&bytes), None)
        .expect("loads");
    let (plugin, setup) = first_instance(
        &base,
        &compiled,
        "header-gate",
        r#"{"header":"x-tenant","allow":["acme","globex"]}"#,
    );
    let gate = Chain::new(vec![plugin]);
    let allow = time_gate(&gate, &acme, true);
    let deny = time_gate(&gate, &evil, false);
    println!(
        "python on baseline code: compile {compile:.2?}, first instance {setup:.2?}, \
         per-call {:.1} µs letting through, {:.1} µs answering 403 (medians of {CALLS})",
        allow.median(),
        deny.median()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_plugin_fetched_at_apply_serves_on_baseline_code_then_moves_to_optimized() {
    use support::mesh::{NO_APP, TestMesh, converged};
    let _one = SERIAL.lock().await;
    let python = guest(&PYTHON);
    let site = tempfile::tempdir().expect("dir");
    std::fs::copy(&python.wasm, site.path().join("header_gate.wasm")).expect("copy");
    let web = support::WebServer::start(site.path()).await;
    let m = TestMesh::start();
    let app = App::start("payments-v1").await;
    let _payments = m.pod("payments", &[], app.addr).await;
    let orders = m.pod("orders", &[], NO_APP).await;
    let (out, admin) = (orders.addr("outbound"), orders.addr("admin"));

    // Fetched by the control plane during the apply, checked with the baseline compiler;
    // CPython needs more than the sidecars' default memory cap.
    let started = Instant::now();
    m.apply(
        "gate.yaml",
        &format!(
            "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata:
  name: header-gate
  annotations: {{ weft.io/plugin-memory: 128Mi }}
spec:
  url: http://127.0.0.1:{}/header_gate.wasm
  targetRefs: [{{ kind: Service, name: payments }}]
  failStrategy: FAIL_CLOSE
  pluginConfig: {{ header: x-tenant, allow: [acme] }}
",
            web.port
        ),
    )
    .await;
    converged(m.cp, &m.op, 2, Duration::from_secs(120)).await;
    println!(
        "python by URL: apply until both sidecars ACK: {:.2?}",
        started.elapsed()
    );
    let imported = |tier: &'static str| async move {
        let label = format!("tier=\"{tier}\"");
        support::metric_sum(admin, "weft_plugin_compiled_code_imported_total", &[&label]).await
    };
    // Its optimized compile (seconds on two cores) is still running: the sidecar runs the
    // baseline code, and gates calls as the plugin says.
    assert_eq!(imported("baseline").await, 1.0);
    assert_eq!(imported("optimized").await, 0.0);
    let check = |tenant: &'static str, want: StatusCode| async move {
        let (status, _, body) =
            call(out, "/pay", &[("host", "payments"), ("x-tenant", tenant)]).await;
        assert_eq!(status, want, "{tenant}: {body}");
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut calls = 0;
    while imported("optimized").await < 1.0 {
        check("acme", StatusCode::OK).await;
        check("evil", StatusCode::FORBIDDEN).await;
        calls += 2;
        assert!(
            Instant::now() < deadline,
            "no optimized code after {calls} calls"
        );
        // Steady, not flat out: the optimized compile runs at the lowest priority, and calls
        // that kept both cores busy would only hold it back.
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "python by URL: optimized code in effect {:.2?} after the apply, {calls} calls on baseline code",
        started.elapsed()
    );
    for _ in 0..3 {
        check("acme", StatusCode::OK).await;
        check("evil", StatusCode::FORBIDDEN).await;
    }
    assert_eq!(imported("optimized").await, 1.0, "moved once");
}
