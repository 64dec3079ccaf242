//! Both sides of every call, on real sidecar processes: the server-side plugin chain gates
//! calls into a workload with the caller's verified identity, and Istio's standard metrics from
//! both reporters answer the PromQL of Istio's service and workload dashboards, through a real
//! Prometheus (Debian's package, started by the test) scraping the sidecars.

mod support;

use http::Request;
use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::mesh::{NO_APP, Proc, TestMesh, converged};
use support::{App, full, h1_client, read};

const ORDERS_ID: &str = "spiffe://weft.local/ns/default/sa/orders";
const REVIEWS_ID: &str = "spiffe://weft.local/ns/default/sa/reviews";

/// A sidecar of `service` with `labels` in front of `app`, speaking mTLS only.
async fn strict(
    m: &TestMesh,
    service: &str,
    labels: &[(&str, &str)],
    app: std::net::SocketAddr,
) -> Proc {
    let mtls = serde_json::json!({"mtls": "STRICT"});
    m.pod_in("default", service, labels, app, mtls).await
}

/// Calls `path` on `service` through a sidecar's outbound listener: (status, body).
async fn call(out: std::net::SocketAddr, service: &str, path: &str) -> (u16, String) {
    let req = Request::get(format!("http://{out}{path}"))
        .header("host", service)
        .body(full(""))
        .expect("request");
    let (status, _, body) = read(h1_client().request(req).await.expect("call")).await;
    (status.as_u16(), String::from_utf8_lossy(&body).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_side_chain_gates_calls_into_a_workload_by_the_callers_identity() {
    let m = TestMesh::start();
    let app = App::start("payments").await;
    let _payments = strict(&m, "payments", &[("version", "v1")], app.addr).await;
    let orders = strict(&m, "orders", &[("version", "v1")], NO_APP).await;
    let reviews = strict(&m, "reviews", &[], NO_APP).await;
    let gate = format!(
        "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{ name: caller-gate }}
spec:
  selector: {{ matchLabels: {{ app: payments }} }}
  url: file://{}
  phase: AUTHZ
  match: [{{ mode: SERVER }}]
  pluginConfig: {{ deny_from: {REVIEWS_ID}, stamp_source: true, tag: server-side }}
",
        weft_artifacts::CHAOS_PATH
    );
    // Scoped to ports: on orders' calls to a service's port 9999 (client side), and on
    // payments' calls at port 1 (never its app's): each denies orders, so each shows whether
    // it ran.
    let scoped = format!(
        "---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{ name: port-9999 }}
spec:
  selector: {{ matchLabels: {{ app: orders }} }}
  url: file://{chaos}
  match: [{{ mode: CLIENT, ports: [{{ number: 9999 }}] }}]
  pluginConfig: {{ deny_from: {ORDERS_ID} }}
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{ name: port-1 }}
spec:
  selector: {{ matchLabels: {{ app: payments }} }}
  url: file://{chaos}
  match: [{{ mode: SERVER, ports: [{{ number: 1 }}] }}]
  pluginConfig: {{ deny_from: {ORDERS_ID} }}
",
        chaos = weft_artifacts::CHAOS_PATH
    );
    m.apply("gate.yaml", &format!("{gate}{scoped}")).await;
    converged(m.cp, &m.op, 3, Duration::from_secs(30)).await;

    let (status, body) = call(orders.addr("outbound"), "payments", "/echo").await;
    assert_eq!(status, 200, "{body}");
    let seen = app.seen();
    let last = seen.last().expect("the app saw the call");
    // The plugin ran in payments' sidecar, saw orders' verified identity, and its edits
    // reached the app; what orders' sidecar said of its workload did not.
    assert_eq!(last.headers["x-chaos-source"], ORDERS_ID);
    assert_eq!(last.headers["x-chaos-tag"], "server-side");
    assert!(
        last.headers.get("x-weft-peer").is_none(),
        "{:?}",
        last.headers
    );

    let before = app.seen().len();
    let (status, body) = call(reviews.addr("outbound"), "payments", "/echo").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(REVIEWS_ID), "{body}");
    assert_eq!(
        app.seen().len(),
        before,
        "a denied call never reaches the app"
    );

    // The gate is SERVER only: orders' own calls out do not pass it.
    let (status, body) = call(orders.addr("outbound"), "reviews", "/echo").await;
    assert_ne!(status, 403, "{body}");

    // Port scopes: orders' call to payments' port 9999 meets the client-side plugin scoped
    // to it; its calls on port 80 (above) did not, nor did the server-side one scoped to port 1.
    let (status, body) = call(orders.addr("outbound"), "payments:9999", "/echo").await;
    assert_eq!(status, 403, "{body}");
    assert!(body.contains(ORDERS_ID), "{body}");
}

/// A `prometheus` process scraping `targets` every second, with its data in `dir`; killed on
/// drop.
struct Prometheus {
    child: Child,
    url: String,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn prometheus(dir: &std::path::Path, targets: &[std::net::SocketAddr]) -> Prometheus {
    support::netns::ensure_packages(&[("prometheus", "prometheus")]);
    let list: Vec<String> = targets.iter().map(|t| format!("'{t}'")).collect();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global: {{ scrape_interval: 1s, evaluation_interval: 1s }}\n\
             scrape_configs:\n\
             - job_name: sidecars\n  metrics_path: /metrics\n  static_configs:\n  - targets: [{}]\n",
            list.join(", ")
        ),
    )
    .expect("config");
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start prometheus");
    Prometheus {
        child,
        url: format!("http://127.0.0.1:{port}"),
    }
}

/// The instant vector a PromQL query returns, as (labels, value) pairs; empty while
/// Prometheus is not answering yet.
async fn query(p: &Prometheus, promql: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    let url = format!("{}/api/v1/query?query={}", p.url, percent_encode(promql));
    let Ok(req) = Request::get(url).body(full("")) else {
        return Vec::new();
    };
    let Ok(resp) = h1_client().request(req).await else {
        return Vec::new();
    };
    let (_, _, body) = read(resp).await;
    let Ok(doc) = serde_json::from_slice::<serde_json::Value>(&body) else {
        return Vec::new();
    };
    let rows = doc["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    rows.iter()
        .map(|r| {
            let labels = r["metric"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string()))
                        .collect()
                })
                .unwrap_or_default();
            let value = r["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .unwrap_or(f64::NAN);
            (labels, value)
        })
        .collect()
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A query's rows as `label=value,…` → value, for comparing with what the mix should give.
fn by(rows: &[(BTreeMap<String, String>, f64)]) -> BTreeMap<String, f64> {
    rows.iter()
        .map(|(labels, v)| {
            let key: Vec<String> = labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            (key.join(","), *v)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_reporters_answer_istios_dashboard_queries_for_a_known_mix() {
    let m = TestMesh::start();
    let app = App::start("payments").await;
    let payments = strict(&m, "payments", &[("version", "v1")], app.addr).await;
    let orders = strict(&m, "orders", &[("version", "v1")], NO_APP).await;
    let reviews = strict(&m, "reviews", &[("version", "v3")], NO_APP).await;
    // Only orders may call payments: reviews' calls are denied by payments' sidecar.
    m.apply(
        "authz.yaml",
        "apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: { name: payments-from-orders }
spec:
  selector: { matchLabels: { app: payments } }
  action: ALLOW
  rules:
  - from: [{ source: { principals: [weft.local/ns/default/sa/orders] } }]
",
    )
    .await;
    converged(m.cp, &m.op, 3, Duration::from_secs(30)).await;

    // The mix: orders 12 × 200, 3 × 404, 2 × 500; reviews 4 × 403 (denied).
    let mut mix = Vec::new();
    mix.extend([(&orders, "/charge", 200); 12]);
    mix.extend([(&orders, "/status/404", 404); 3]);
    mix.extend([(&orders, "/status/500", 500); 2]);
    mix.extend([(&reviews, "/charge", 403); 4]);
    for (from, path, want) in mix {
        let (status, body) = call(from.addr("outbound"), "payments", path).await;
        assert_eq!(status, want, "{path}: {body}");
    }

    let dir = tempfile::tempdir().expect("dir");
    let targets = [&payments, &orders, &reviews].map(|p| p.addr("admin"));
    let prom = prometheus(dir.path(), &targets);

    // Wait for a scrape of every sidecar after the mix: both reporters' totals complete.
    let total = |reporter: &str| {
        format!(
            "sum(istio_requests_total{{reporter=\"{reporter}\",destination_service_name=\"payments\"}})"
        )
    };
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let source = query(&prom, &total("source")).await;
        let destination = query(&prom, &total("destination")).await;
        if source.first().map(|r| r.1) == Some(21.0)
            && destination.first().map(|r| r.1) == Some(21.0)
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never saw all 21 calls from both reporters: source {source:?}, destination {destination:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // Istio's service dashboard, "Incoming Requests By Source And Response Code" (server
    // side, mTLS), its rate taken over the whole test: the counters themselves.
    let service = "destination_service=~\"payments.default.svc.cluster.local\"";
    let incoming = by(&query(
        &prom,
        &format!(
            "sum(istio_requests_total{{reporter=\"destination\",connection_security_policy=\"mutual_tls\",{service}}}) by (source_workload, source_workload_namespace, response_code)"
        ),
    )
    .await);
    let expected = BTreeMap::from([
        (
            "response_code=200,source_workload=orders,source_workload_namespace=default"
                .to_string(),
            12.0,
        ),
        (
            "response_code=403,source_workload=reviews,source_workload_namespace=default"
                .to_string(),
            4.0,
        ),
        (
            "response_code=404,source_workload=orders,source_workload_namespace=default"
                .to_string(),
            3.0,
        ),
        (
            "response_code=500,source_workload=orders,source_workload_namespace=default"
                .to_string(),
            2.0,
        ),
    ]);
    assert_eq!(incoming, expected, "destination reporter");
    // Istio's workload dashboard, inbound by source, from the callers' side.
    let workload = "destination_workload=~\"payments\",destination_workload_namespace=~\"default\"";
    let outgoing = by(&query(
        &prom,
        &format!(
            "sum(istio_requests_total{{reporter=\"source\",{workload}}}) by (source_workload, source_workload_namespace, response_code)"
        ),
    )
    .await);
    assert_eq!(outgoing, expected, "source reporter");

    // Success rate (non-5xx), the dashboards' headline: 19 of 21.
    let rate = query(
        &prom,
        &format!(
            "sum(istio_requests_total{{reporter=\"destination\",{service},response_code!~\"5.*\"}}) / sum(istio_requests_total{{reporter=\"destination\",{service}}})"
        ),
    )
    .await;
    let got = rate.first().map_or(f64::NAN, |r| r.1);
    assert!((got - 19.0 / 21.0).abs() < 1e-9, "success rate {got}");

    // Versions and principals from both ends, as the workload dashboard groups them.
    let versions = by(&query(
        &prom,
        "sum(istio_requests_total{reporter=\"destination\",destination_workload=\"payments\"}) by (source_version, destination_version, source_principal, destination_principal)",
    )
    .await);
    assert_eq!(
        versions,
        BTreeMap::from([
            (
                format!(
                    "destination_principal=spiffe://weft.local/ns/default/sa/payments,destination_version=v1,source_principal={ORDERS_ID},source_version=v1"
                ),
                17.0
            ),
            (
                format!(
                    "destination_principal=spiffe://weft.local/ns/default/sa/payments,destination_version=v1,source_principal={REVIEWS_ID},source_version=v3"
                ),
                4.0
            ),
        ])
    );

    // Request duration histograms with Istio's buckets: every call observed once per reporter,
    // and the dashboards' P50 is a number.
    let count = query(
        &prom,
        "sum(istio_request_duration_milliseconds_count{destination_workload=\"payments\"}) by (reporter)",
    )
    .await;
    assert_eq!(
        by(&count),
        BTreeMap::from([
            ("reporter=destination".to_string(), 21.0),
            ("reporter=source".to_string(), 21.0)
        ])
    );
    let p50 = query(
        &prom,
        "histogram_quantile(0.50, sum(istio_request_duration_milliseconds_bucket{reporter=\"destination\",destination_workload=\"payments\"}) by (le))",
    )
    .await;
    assert!(
        p50.first().is_some_and(|r| r.1.is_finite() && r.1 > 0.0),
        "{p50:?}"
    );
    let buckets = query(
        &prom,
        "count(istio_request_duration_milliseconds_bucket{reporter=\"source\",source_workload=\"reviews\"})",
    )
    .await;
    // Envoy's 19 default buckets and +Inf, for reviews' one label set.
    assert_eq!(buckets.first().map(|r| r.1), Some(20.0), "{buckets:?}");
}
