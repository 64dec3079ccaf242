//! gRPC across the mesh with a real gRPC stack (Debian's python3-grpcio, client and server):
//! unary and streaming calls through two sidecars with their trailers; `retryOn: unavailable`
//! judged from the `grpc-status` of a trailers-only answer; Istio's `request_protocol` and
//! `grpc_response_status` labels from both reporters; the caller's `grpc-timeout` honoured by
//! the sidecar; a VirtualService fault `abort.grpcStatus` answered in gRPC; a Gateway API
//! GRPCRoute routing by method in its own precedence and splitting by weight.

mod support;

use http::Request;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use support::mesh::{NO_APP, TestMesh, converged};
use support::netns::{DEBIAN_PYTHON, ensure_python_modules};
use support::{full, read};

const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/grpc_peer.py");

/// The gRPC server, killed on drop.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(name: &str) -> (Server, std::net::SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = Command::new(DEBIAN_PYTHON)
        .args([PEER, "serve", &port.to_string(), name])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the gRPC server");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read");
    assert_eq!(line.trim(), "ready");
    (
        Server(child),
        std::net::SocketAddr::from(([127, 0, 0, 1], port)),
    )
}

/// One call through `via` (orders' outbound listener) to payments.
async fn call(
    via: std::net::SocketAddr,
    method: &str,
    payload: &str,
    timeout_s: f64,
) -> serde_json::Value {
    calls(via, method, payload, timeout_s, 1).await
}

/// `count` calls on one channel through `via` to payments.
async fn calls(
    via: std::net::SocketAddr,
    method: &str,
    payload: &str,
    timeout_s: f64,
    count: usize,
) -> serde_json::Value {
    let args = [
        PEER.to_string(),
        "call".into(),
        via.to_string(),
        "payments".into(),
        method.into(),
        payload.into(),
        timeout_s.to_string(),
        count.to_string(),
    ];
    let out = tokio::task::spawn_blocking(move || {
        Command::new(DEBIAN_PYTHON)
            .args(&args)
            .output()
            .expect("run the gRPC client")
    })
    .await
    .expect("join");
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "client said {text:?} ({e}); stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The sum of `name`'s series at `admin` whose labels include all of `labels`, once it is at
/// least `want` (plugins record in batches), or what it is after 10 s.
async fn metric(admin: std::net::SocketAddr, name: &str, labels: &[&str], want: f64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = support::metric_sum(admin, name, labels).await;
        if v >= want || Instant::now() > deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_through_two_sidecars_with_retries_telemetry_deadlines_and_faults() {
    ensure_python_modules(&[("grpc", "python3-grpcio")]);
    let (_server, app) = serve("p1");
    let m = TestMesh::start();
    let payments = m.pod("payments", &[("version", "v1")], app).await;
    let orders = m.pod("orders", &[], NO_APP).await;
    m.apply(
        "payments.yaml",
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: payments }
spec:
  hosts: [payments]
  http:
  - match: [{ uri: { prefix: /weft.Test/Aborted } }]
    fault: { abort: { grpcStatus: UNAVAILABLE, percentage: { value: 100 } } }
    route: [{ destination: { host: payments } }]
  - route: [{ destination: { host: payments } }]
    retries: { attempts: 2, retryOn: unavailable }
",
    )
    .await;
    converged(m.cp, &m.op, 2, Duration::from_secs(30)).await;
    let via = orders.addr("outbound");

    let echo = call(via, "/weft.Test/Echo", "hi", 10.0).await;
    assert_eq!(echo["code"], "OK", "{echo}");
    assert_eq!(echo["replies"], serde_json::json!(["hi|p1"]));
    // A stream and its trailers cross both sidecars.
    let stream = call(via, "/weft.Test/Stream", "", 10.0).await;
    assert_eq!(stream["code"], "OK", "{stream}");
    assert_eq!(
        stream["replies"],
        serde_json::json!(["0|p1", "1|p1", "2|p1"])
    );
    assert_eq!(stream["trailers"]["x-done"], "yes", "{stream}");
    // A bidirectional stream whose client waits for each answer before it sends more: the
    // sidecars pass each message on as it comes rather than waiting for the request's end.
    let chat = call(via, "/weft.Test/Chat", "a,b,c", 5.0).await;
    assert_eq!(chat["code"], "OK", "{chat}");
    assert_eq!(chat["replies"], serde_json::json!(["a|p1", "b|p1", "c|p1"]));
    // The first try fails UNAVAILABLE (HTTP 200, grpc-status 14): retried, it succeeds.
    let flaky = call(via, "/weft.Test/Flaky", "k1", 10.0).await;
    assert_eq!(flaky["code"], "OK", "{flaky}");
    // INTERNAL is not among the retry conditions.
    let internal = call(via, "/weft.Test/Internal", "", 10.0).await;
    assert_eq!(internal["code"], "INTERNAL", "{internal}");
    assert_eq!(internal["details"], "broken");

    // Istio's labels: gRPC, and the status as a number, from both sidecars.
    for (sidecar, reporter) in [(&orders, "source"), (&payments, "destination")] {
        let labels = [
            &format!("reporter=\"{reporter}\"")[..],
            "request_protocol=\"grpc\"",
            "grpc_response_status=\"13\"",
            "response_code=\"200\"",
        ];
        assert_eq!(
            metric(sidecar.addr("admin"), "istio_requests_total", &labels, 1.0).await,
            1.0,
            "{reporter}"
        );
    }
    // Echo, Stream, Chat and Flaky (its retry inside one call).
    let ok = ["reporter=\"source\"", "grpc_response_status=\"0\""];
    assert_eq!(
        metric(orders.addr("admin"), "istio_requests_total", &ok, 4.0).await,
        4.0
    );

    // The caller's deadline (`grpc-timeout: 300m`, sent by hand so that the caller itself
    // waits longer) bounds the call in the sidecar: it answers the timeout itself (504, UT)
    // rather than wait for the app's 3 s.
    let mut message = vec![0u8, 0, 0, 0, 4];
    message.extend_from_slice(b"3000");
    let req = Request::post("http://payments/weft.Test/Slow")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", "300m")
        .body(full(message))
        .expect("request");
    let started = Instant::now();
    // An HTTP/2 connection of our own, so `:authority` names payments.
    let tcp = tokio::net::TcpStream::connect(via).await.expect("connect");
    let (mut sender, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .expect("h2 handshake");
    tokio::spawn(conn);
    let (status, _, body) = read(sender.send_request(req).await.expect("call")).await;
    assert_eq!(
        status.as_u16(),
        504,
        "{body:?} after {:?}",
        started.elapsed()
    );
    assert!(started.elapsed() < Duration::from_millis(2500));
    let timed_out = [
        "reporter=\"source\"",
        "response_code=\"504\"",
        "response_flags=\"UT\"",
    ];
    assert_eq!(
        metric(
            orders.addr("admin"),
            "istio_requests_total",
            &timed_out,
            1.0
        )
        .await,
        1.0
    );

    // A fault's grpcStatus reaches a gRPC caller as gRPC.
    let aborted = call(via, "/weft.Test/Aborted", "", 10.0).await;
    assert_eq!(aborted["code"], "UNAVAILABLE", "{aborted}");
    assert_eq!(aborted["details"], "fault filter abort");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_route_routes_by_method_and_splits_by_weight() {
    ensure_python_modules(&[("grpc", "python3-grpcio")]);
    let (_v1, v1_app) = serve("v1");
    let (_v2, v2_app) = serve("v2");
    let m = TestMesh::start();
    let _p1 = m.pod("payments", &[], v1_app).await;
    let _p2 = m.pod("payments-v2", &[], v2_app).await;
    let orders = m.pod("orders", &[], NO_APP).await;
    m.apply(
        "payments.yaml",
        "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: { name: payments }
spec:
  parentRefs: [{ group: \"\", kind: Service, name: payments, port: 80 }]
  rules:
  - backendRefs:
    - { name: payments, port: 80, weight: 50 }
    - { name: payments-v2, port: 80, weight: 50 }
  - matches: [{ method: { service: weft.Test, method: Stream } }]
    backendRefs: [{ name: payments-v2, port: 80 }]
",
    )
    .await;
    converged(m.cp, &m.op, 3, Duration::from_secs(30)).await;
    let via = orders.addr("outbound");
    // The method match goes first, whatever the rule order: every stream goes to v2 (were the
    // catch-all first, 8 of 8 on v2 would have a chance of 1 in 256).
    for _ in 0..8 {
        let stream = call(via, "/weft.Test/Stream", "", 10.0).await;
        assert_eq!(stream["code"], "OK", "{stream}");
        assert_eq!(
            stream["replies"],
            serde_json::json!(["0|v2", "1|v2", "2|v2"])
        );
    }
    // Every other call is split by weight.
    let echo = calls(via, "/weft.Test/Echo", "hi", 10.0, 60).await;
    assert_eq!(echo["code"], "OK", "{echo}");
    let replies = echo["replies"].as_array().expect("replies");
    assert_eq!(replies.len(), 60);
    let to_v2 = replies.iter().filter(|r| *r == "hi|v2").count();
    let to_v1 = replies.iter().filter(|r| *r == "hi|v1").count();
    assert_eq!(to_v1 + to_v2, 60, "{replies:?}");
    // 60 draws at 50%: fewer than 12 on a side has a probability under 1e-6.
    assert!((12..=48).contains(&to_v2), "{to_v2} of 60 to v2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_stream_and_its_trailers_pass_a_proxy_wasm_filter() {
    ensure_python_modules(&[("grpc", "python3-grpcio")]);
    let (_server, app) = serve("p1");
    let m = TestMesh::start();
    let _payments = m.pod("payments", &[("version", "v1")], app).await;
    let orders = m.pod("orders", &[], NO_APP).await;
    // A proxy-wasm filter with body and trailers callbacks on orders' calls: the response's
    // frames pass it one by one, and its trailers after them, where it adds one.
    m.apply(
        "body.yaml",
        &format!(
            "apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {{ name: pw-body }}
spec:
  selector: {{ matchLabels: {{ app: orders }} }}
  url: file://{}
  match: [{{ mode: CLIENT }}]
",
            weft_artifacts::PW_BODY_PATH
        ),
    )
    .await;
    converged(m.cp, &m.op, 2, Duration::from_secs(30)).await;
    let via = orders.addr("outbound");
    let stream = call(via, "/weft.Test/Stream", "", 10.0).await;
    assert_eq!(stream["code"], "OK", "{stream}");
    assert_eq!(
        stream["replies"],
        serde_json::json!(["0|p1", "1|p1", "2|p1"])
    );
    assert_eq!(stream["trailers"]["x-done"], "yes", "{stream}");
    assert_eq!(
        stream["trailers"]["x-pw-trailer"], "saw grpc-status 0",
        "{stream}"
    );
    let echo = call(via, "/weft.Test/Echo", "hi", 10.0).await;
    assert_eq!(echo["replies"], serde_json::json!(["hi|p1"]), "{echo}");
    // A bidirectional stream whose client waits for each answer: each message passes the
    // filter's request-body callback as it comes (the filter passes each piece on).
    let chat = call(via, "/weft.Test/Chat", "a,b,c", 5.0).await;
    assert_eq!(chat["code"], "OK", "{chat}");
    assert_eq!(chat["replies"], serde_json::json!(["a|p1", "b|p1", "c|p1"]));
}
