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
    let more: Vec<String> = orders
        .lines
        .try_iter()
        .filter(|l| !l.starts_with("weft "))
        .collect();
    assert!(more.is_empty(), "orders logged a successful call: {more:?}");
}
