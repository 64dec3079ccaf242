//! Traces on real sidecar processes, exported over OTLP/HTTP to a real receiver built from the
//! official OpenTelemetry protobuf definitions (PyPI's `opentelemetry-proto`, started by the
//! test): one call orders → payments is one trace with orders' client span and payments'
//! server span as its child, the app's own span their parent when it sent one, and the app
//! behind payments gets the server span as its parent. A dead collector changes nothing for
//! callers.

mod support;

use http::Request;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;
use support::mesh::{NO_APP, Proc, TestMesh, converged, text, weft, write};
use support::{App, full, h1_client, read};

/// Where the receiver's Python packages are installed, once for every test binary.
const PY_DIR: &str = "/tmp/weft-tests-otlp-py";

/// The receiver, printing one JSON line per span; killed on drop.
struct Receiver {
    child: Child,
    port: u16,
    spans: mpsc::Receiver<serde_json::Value>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn receiver() -> Receiver {
    let script = format!("import sys; sys.path.insert(0, '{PY_DIR}'); import opentelemetry.proto");
    let installed = Command::new("python3")
        .args(["-c", &script])
        .output()
        .is_ok_and(|o| o.status.success());
    if !installed {
        let out = Command::new("flock")
            .args([
                "/tmp/weft-tests-pip.lock",
                "python3",
                "-m",
                "pip",
                "install",
                "-q",
                "--disable-pip-version-check",
                "--target",
                PY_DIR,
                "opentelemetry-proto==1.*",
            ])
            .output()
            .expect("run pip");
        assert!(
            out.status.success(),
            "installing opentelemetry-proto failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/otlp_receiver.py");
    let mut child = Command::new("python3")
        .args([path, "--seconds", "120"])
        .env("PYTHONPATH", PY_DIR)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start the receiver");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    let port = first
        .strip_prefix("listening ")
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("the receiver did not start: {first:?}"));
    let (tx, spans) = mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if let Ok(v) = serde_json::from_str(&line)
                && tx.send(v).is_err()
            {
                return;
            }
        }
    });
    Receiver { child, port, spans }
}

/// The next `n` spans the receiver gets, waiting up to 30 s.
fn spans(r: &Receiver, n: usize) -> Vec<serde_json::Value> {
    (0..n)
        .map(|i| {
            r.spans
                .recv_timeout(Duration::from_secs(30))
                .unwrap_or_else(|_| panic!("only {i} of {n} spans arrived"))
        })
        .collect()
}

async fn strict(
    m: &TestMesh,
    service: &str,
    labels: &[(&str, &str)],
    app: std::net::SocketAddr,
) -> Proc {
    let mtls = serde_json::json!({"mtls": "STRICT"});
    m.pod_in("default", service, labels, app, mtls).await
}

const TRACING: &str = "
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: mesh-default, namespace: istio-system }
spec:
  tracing:
  - providers: [{ name: otel }]
    randomSamplingPercentage: 100
";

async fn get(out: std::net::SocketAddr, path: &str, traceparent: Option<&str>) -> u16 {
    let mut req = Request::get(format!("http://{out}{path}")).header("host", "payments");
    if let Some(tp) = traceparent {
        req = req.header("traceparent", tp);
    }
    let req = req.body(full("")).expect("request");
    let (status, _, _) = read(h1_client().request(req).await.expect("call")).await;
    status.as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_call_is_one_trace_with_a_client_and_a_server_span() {
    let r = receiver();
    let dir = tempfile::tempdir().expect("dir");
    let mesh_config = write(
        dir.path(),
        "mesh.yaml",
        &format!(
            "extensionProviders:\n- name: otel\n  opentelemetry:\n    service: 127.0.0.1\n    port: {}\n    http: {{ path: /v1/traces, timeout: 2s }}\n",
            r.port
        ),
    );
    let m = TestMesh::start_with(&["--mesh-config", mesh_config.to_str().expect("utf-8")]);
    let app = App::start("payments").await;
    let _payments = strict(&m, "payments", &[("version", "v1")], app.addr).await;
    let orders = strict(&m, "orders", &[("version", "v1")], NO_APP).await;

    // A provider the mesh configuration does not define is refused, naming it.
    let bad = write(
        dir.path(),
        "bad.yaml",
        &TRACING.replace("name: otel", "name: jaeger"),
    );
    let refused = weft(
        m.cp,
        &m.data,
        &["apply", "-f", bad.to_str().expect("utf-8")],
    );
    assert!(!refused.status.success());
    assert!(
        text(&refused).contains("provider \"jaeger\" is not defined in the mesh configuration"),
        "{}",
        text(&refused)
    );

    m.apply("tracing.yaml", TRACING).await;
    converged(m.cp, &m.op, 2, Duration::from_secs(30)).await;

    // The app starts no trace: orders' sidecar does, sampled at 100%.
    assert_eq!(get(orders.addr("outbound"), "/echo", None).await, 200);
    let got = spans(&r, 2);
    let client = got
        .iter()
        .find(|s| s["kind"] == "client")
        .expect("a client span");
    let server = got
        .iter()
        .find(|s| s["kind"] == "server")
        .expect("a server span");
    assert_eq!(client["trace_id"], server["trace_id"], "one trace");
    assert_eq!(client["parent_span_id"], "", "the client span is the root");
    assert_eq!(
        server["parent_span_id"], client["span_id"],
        "the server span is its child"
    );
    assert_eq!(client["service"], "orders.default");
    assert_eq!(server["service"], "payments.default");
    assert_eq!(client["name"], "payments.default.svc.cluster.local:80/*");
    for s in [client, server] {
        let a = &s["attributes"];
        assert_eq!(a["http.method"], "GET", "{s}");
        assert_eq!(a["http.status_code"], 200, "{s}");
        assert_eq!(a["response_flags"], "-", "{s}");
        assert_eq!(a["component"], "proxy", "{s}");
        assert!(
            a["guid:x-request-id"]
                .as_str()
                .is_some_and(|id| id.len() == 36),
            "{s}"
        );
        assert!(s["end"].as_u64() >= s["start"].as_u64(), "{s}");
    }
    assert_eq!(
        client["attributes"]["guid:x-request-id"],
        server["attributes"]["guid:x-request-id"]
    );
    assert_eq!(
        client["attributes"]["upstream_cluster"],
        "outbound|80||payments.default.svc.cluster.local"
    );
    // The app behind payments is handed the server span as its parent.
    let seen = app.seen();
    let tp = seen.last().expect("the app saw it").headers["traceparent"]
        .to_str()
        .expect("ascii")
        .to_string();
    let trace_id = client["trace_id"].as_str().expect("hex");
    let server_span = server["span_id"].as_str().expect("hex");
    assert_eq!(tp, format!("00-{trace_id}-{server_span}-01"));

    // An app that traces: its span is the client span's parent, its trace is kept.
    let mine = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    assert_eq!(get(orders.addr("outbound"), "/echo", Some(mine)).await, 200);
    let got = spans(&r, 2);
    let client = got
        .iter()
        .find(|s| s["kind"] == "client")
        .expect("a client span");
    let server = got
        .iter()
        .find(|s| s["kind"] == "server")
        .expect("a server span");
    assert_eq!(client["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(client["parent_span_id"], "00f067aa0ba902b7");
    assert_eq!(server["parent_span_id"], client["span_id"]);

    // An app's unsampled trace stays unsampled: no spans, and the flag reaches the app.
    let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
    assert_eq!(
        get(orders.addr("outbound"), "/echo", Some(unsampled)).await,
        200
    );
    let seen = app.seen();
    let tp = seen.last().expect("the app saw it").headers["traceparent"]
        .to_str()
        .expect("ascii")
        .to_string();
    assert!(tp.ends_with("-00"), "{tp}");
    // The next spans to arrive are a later sampled call's: none were sent for that one.
    assert_eq!(get(orders.addr("outbound"), "/echo", None).await, 200);
    for s in spans(&r, 2) {
        assert_ne!(s["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736", "{s}");
    }

    // A dead collector: every call still answers, and the sidecars count failed exports.
    drop(r);
    for _ in 0..50 {
        assert_eq!(get(orders.addr("outbound"), "/echo", None).await, 200);
    }
    let admin = orders.addr("admin");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let req = Request::get(format!("http://{admin}/metrics"))
            .body(full(""))
            .expect("request");
        let (_, _, body) = read(h1_client().request(req).await.expect("scrape")).await;
        let body = String::from_utf8_lossy(&body).into_owned();
        if body
            .lines()
            .any(|l| l.starts_with("weft_span_exports_total{outcome=\"failed\"}"))
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no failed export counted:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
