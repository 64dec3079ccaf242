//! Access logs as Istio's Telemetry resource configures them, on real sidecar processes: a
//! mesh-wide Telemetry logs every call on both sides in Envoy's text format; a workload-level
//! one for orders replaces it there with JSON lines for failed calls only. The lines carry the
//! fields users grep for, and the two sides of one call share its request id.

mod support;

use http::Request;
use std::time::{Duration, Instant};
use support::mesh::{NO_APP, Proc, TestMesh, converged};
use support::{App, full, h1_client, read};

const TELEMETRY: &str = "
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: mesh-default, namespace: istio-system }
spec:
  accessLogging:
  - providers: [{ name: envoy }]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: orders-errors }
spec:
  selector: { matchLabels: { app: orders } }
  accessLogging:
  - match: { mode: CLIENT }
    providers: [{ name: envoy-json }]
    filter: { expression: 'response.code >= 400' }
";

/// The next `n` access-log lines `p` prints (its own `weft sidecar …` lines left out),
/// waiting up to 20 s for them.
fn lines(p: &Proc, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut out = Vec::new();
    while out.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match p.lines.recv_timeout(left) {
            Ok(l) if l.starts_with("weft ") => {}
            Ok(l) => out.push(l),
            Err(_) => panic!("only {} of {n} lines: {out:#?}", out.len()),
        }
    }
    out
}

/// The text between the `k`-th pair of double quotes of a text line.
fn quoted(line: &str, k: usize) -> &str {
    line.split('"').nth(2 * k + 1).unwrap_or("")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telemetry_turns_on_access_logs_with_envoys_fields_on_each_side() {
    let m = TestMesh::start();
    let app = App::start("payments").await;
    let payments = m.pod("payments", &[("version", "v1")], app.addr).await;
    let orders = m.pod("orders", &[], NO_APP).await;
    m.apply("telemetry.yaml", TELEMETRY).await;
    converged(m.cp, &m.op, 2, Duration::from_secs(30)).await;

    let out = orders.addr("outbound");
    let client = h1_client();
    for path in ["/charge", "/charge", "/status/404"] {
        let req = Request::get(format!("http://{out}{path}"))
            .header("host", "payments")
            .header("user-agent", "access-log-test")
            .body(full(""))
            .expect("request");
        let _ = read(client.request(req).await.expect("call")).await;
    }

    // payments: the mesh-wide Telemetry, server side, Envoy's text format.
    let server = lines(&payments, 3);
    for (line, (path, code)) in server.iter().zip([
        ("/charge", "200"),
        ("/charge", "200"),
        ("/status/404", "404"),
    ]) {
        assert_eq!(quoted(line, 0), format!("GET {path} HTTP/1.1"), "{line}");
        let after = line.split('"').nth(2).unwrap_or("");
        assert!(after.starts_with(&format!(" {code} - ")), "{line}");
        assert_eq!(quoted(line, 3), "access-log-test", "{line}");
        assert_eq!(quoted(line, 5), "payments", "{line}");
        assert_eq!(quoted(line, 6), app.addr.to_string(), "{line}");
        assert!(
            line.contains(&format!("inbound|{}||", app.addr.port())),
            "{line}"
        );
        assert!(line.starts_with('['), "{line}");
    }
    // orders: its own Telemetry replaces the mesh-wide one: JSON, failed calls only.
    let client_side = lines(&orders, 1);
    let failed: serde_json::Value = serde_json::from_str(&client_side[0]).expect("JSON");
    assert_eq!(failed["response_code"], 404, "{failed}");
    assert_eq!(failed["path"], "/status/404");
    assert_eq!(failed["response_flags"], "-");
    assert_eq!(
        failed["upstream_host"],
        payments.addr("inbound").to_string()
    );
    assert_eq!(
        failed["upstream_cluster"],
        "outbound|80||payments.default.svc.cluster.local"
    );
    // One call, one request id on both sides.
    assert_eq!(failed["request_id"].as_str(), Some(quoted(&server[2], 4)));
    // Bytes received are the body's bytes as the app read them, not what a header claimed.
    let req = Request::post(format!("http://{out}/echo"))
        .header("host", "payments")
        .body(full("0123456789"))
        .expect("request");
    let (status, _, echoed) = read(client.request(req).await.expect("call")).await;
    assert_eq!((status.as_u16(), echoed.len()), (200, 10));
    let posted = lines(&payments, 1);
    let counts: Vec<&str> = posted[0]
        .split('"')
        .nth(4)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(counts.get(..2), Some(&["10", "10"][..]), "{}", posted[0]);
    let more: Vec<String> = orders
        .lines
        .try_iter()
        .filter(|l| !l.starts_with("weft "))
        .collect();
    assert!(more.is_empty(), "orders logged a successful call: {more:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weft_tap_shows_live_calls_from_both_sides() {
    let m = TestMesh::start();
    let app = App::start("payments").await;
    // With mTLS, so the payments side knows who called.
    let strict = || serde_json::json!({"mtls": "STRICT"});
    let _payments = m
        .pod_in(
            "default",
            "payments",
            &[("version", "v1")],
            app.addr,
            strict(),
        )
        .await;
    let orders = m.pod_in("default", "orders", &[], NO_APP, strict()).await;
    m.apply(
        "routes.yaml",
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: payments }
spec:
  hosts: [payments]
  http:
  - name: primary
    route: [{ destination: { host: payments, subset: v1 } }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: payments }
spec:
  host: payments
  subsets: [{ name: v1, labels: { version: v1 } }]
",
    )
    .await;
    converged(m.cp, &m.op, 2, Duration::from_secs(30)).await;

    // Watching calls to payments: its callers' outbound side and its own inbound side.
    let mut tap = std::process::Command::new(env!("CARGO_BIN_EXE_weft"))
        .args([
            "tap",
            "payments",
            "--max",
            "4",
            "-o",
            "json",
            "--duration",
            "60s",
        ])
        .args(["--server", &m.cp.to_string(), "--data"])
        .arg(&m.data)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("weft tap");
    let stderr = tap.stderr.take().expect("stderr");
    let watching = tokio::task::spawn_blocking(move || {
        use std::io::BufRead as _;
        let mut line = String::new();
        let _ = std::io::BufReader::new(stderr).read_line(&mut line);
        line
    })
    .await
    .expect("stderr");
    assert!(watching.contains("watching 2 sidecar(s)"), "{watching}");

    let out = orders.addr("outbound");
    let client = h1_client();
    for path in ["/charge", "/status/404"] {
        let req = Request::get(format!("http://{out}{path}"))
            .header("host", "payments")
            .body(full(""))
            .expect("request");
        let _ = read(client.request(req).await.expect("call")).await;
    }
    let done = tokio::task::spawn_blocking(move || tap.wait_with_output())
        .await
        .expect("join")
        .expect("tap output");
    assert!(done.status.success());
    let events: Vec<serde_json::Value> = String::from_utf8_lossy(&done.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(events.len(), 4, "{events:#?}");
    let find = |direction: &str, path: &str| {
        events
            .iter()
            .find(|e| e["direction"] == direction && e["path"] == path)
            .unwrap_or_else(|| panic!("no {direction} {path} in {events:#?}"))
    };
    let failed_out = find("outbound", "/status/404");
    assert_eq!(failed_out["source"], "orders");
    assert_eq!(failed_out["destination"], "payments");
    assert_eq!(failed_out["response_code"], 404);
    // The route the call took (the VirtualService entry's name) and the subset.
    assert_eq!(failed_out["route_name"], "primary", "{failed_out:#}");
    assert_eq!(failed_out["subset"], "v1", "{failed_out:#}");
    let failed_in = find("inbound", "/status/404");
    assert_eq!(
        failed_in["source"], "orders",
        "the caller's verified identity"
    );
    assert_eq!(failed_in["request_id"], failed_out["request_id"]);
    assert_eq!(find("outbound", "/charge")["response_code"], 200);
    assert_eq!(
        find("inbound", "/charge")["upstream_host"],
        app.addr.to_string()
    );
}

/// Waits up to 20 s for `path` to hold `n` lines.
async fn file_lines(path: &std::path::Path, n: usize) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<String> = text.lines().map(str::to_string).collect();
        if lines.len() >= n {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "{} holds {} of {n} lines: {lines:#?}",
            path.display(),
            lines.len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envoy_file_access_log_provider_appends_to_its_file_and_a_broken_one_costs_no_call() {
    let logs = tempfile::tempdir().expect("dir");
    let file = logs.path().join("access.log");
    let broken = logs.path().join("no-such-dir/access.log");
    let mesh = support::mesh::write(
        logs.path(),
        "mesh.yaml",
        &format!(
            "extensionProviders:\n- name: file\n  envoyFileAccessLog: {{ path: {} }}\n- name: broken\n  envoyFileAccessLog: {{ path: {} }}\n",
            file.display(),
            broken.display()
        ),
    );
    let m = TestMesh::start_with(&["--mesh-config", mesh.to_str().expect("utf-8")]);
    let app = App::start("payments").await;
    let payments = m.pod("payments", &[("version", "v1")], app.addr).await;
    let orders = m.pod("orders", &[], NO_APP).await;
    m.apply(
        "telemetry.yaml",
        "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: payments-to-file }
spec:
  selector: { matchLabels: { app: payments } }
  accessLogging: [{ providers: [{ name: file }] }]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: orders-to-nowhere }
spec:
  selector: { matchLabels: { app: orders } }
  accessLogging: [{ providers: [{ name: broken }] }]
",
    )
    .await;
    converged(m.cp, &m.op, 2, Duration::from_secs(30)).await;

    let out = orders.addr("outbound");
    let client = h1_client();
    for path in ["/charge", "/status/503"] {
        let req = Request::get(format!("http://{out}{path}"))
            .header("host", "payments")
            .body(full(""))
            .expect("request");
        let (status, _, _) = read(client.request(req).await.expect("call")).await;
        assert_ne!(status.as_u16(), 0);
    }
    // payments' lines are in the file, in Envoy's text format, not on its stdout.
    let written = file_lines(&file, 2).await;
    assert_eq!(
        quoted(&written[0], 0),
        "GET /charge HTTP/1.1",
        "{written:?}"
    );
    assert!(written[0].contains("inbound|"), "{written:?}");
    assert_eq!(quoted(&written[1], 0), "GET /status/503 HTTP/1.1");
    let on_stdout: Vec<String> = payments
        .lines
        .try_iter()
        .filter(|l| !l.starts_with("weft "))
        .collect();
    assert!(on_stdout.is_empty(), "{on_stdout:?}");
    // orders' file cannot be opened: its calls answered all the same, and the lost lines
    // are counted.
    let admin = orders.addr("admin");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let req = Request::get(format!("http://{admin}/metrics"))
            .body(full(""))
            .expect("request");
        let (_, _, body) = read(client.request(req).await.expect("scrape")).await;
        let body = String::from_utf8_lossy(&body).into_owned();
        if body.lines().any(|l| l == "weft_access_log_dropped_total 2") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no dropped lines counted:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!broken.exists());
}
