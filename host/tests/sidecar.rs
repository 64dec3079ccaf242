//! The sidecar data plane end to end on loopback: app → outbound sidecar → (h2c) → inbound
//! sidecar → app, with real sockets, real HTTP/1.1 and HTTP/2, and real plugin chains.

mod support;

use http::{Method, Request, StatusCode};
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::{App, full, h1_client, read};
use weft::proxy::Sidecar;
use weft::snapshot::Snapshot;

/// One app with its sidecar (inbound side in use).
struct Pod {
    app: App,
    sidecar: Sidecar,
}

async fn pod(service: &str, name: &str) -> Pod {
    let app = App::start(name).await;
    let sidecar = Sidecar::start(support::sidecar_config(service, app.addr))
        .await
        .expect("sidecar");
    Pod { app, sidecar }
}

/// The caller's sidecar, with a snapshot that names `payments` endpoints.
async fn orders(snapshot: serde_json::Value) -> Sidecar {
    let app = SocketAddr::from(([127, 0, 0, 1], 9)); // orders' own app is not called here
    let sidecar = Sidecar::start(support::sidecar_config("orders", app))
        .await
        .expect("sidecar");
    let snapshot: Snapshot = serde_json::from_value(snapshot).expect("snapshot");
    sidecar.apply(snapshot).await.expect("applies");
    sidecar
}

fn payments(
    endpoints: serde_json::Value,
    plugins: serde_json::Value,
    timeout: &str,
) -> serde_json::Value {
    serde_json::json!({
        "version": "test-1",
        "services": {
            "payments": {
                "timeout": timeout,
                "subsets": {"v1": {"version": "v1"}, "v2": {"version": "v2"}},
                "endpoints": endpoints,
                "plugins": plugins,
            }
        }
    })
}

/// `payments` v1 with its sidecar, and an `orders` sidecar routing to it through `plugins`.
async fn one_pod(plugins: serde_json::Value, timeout: &str) -> (Pod, Sidecar) {
    let v1 = pod("payments", "payments-v1").await;
    let endpoints = serde_json::json!([{"address": v1.sidecar.inbound.to_string(), "labels": {"version": "v1"}}]);
    let orders = orders(payments(endpoints, plugins, timeout)).await;
    (v1, orders)
}

/// A GET to `payments` through the sidecar at `to`, read whole.
async fn call(to: SocketAddr, path: &str) -> (StatusCode, http::HeaderMap, bytes::Bytes) {
    read(h1_client().request(get(to, path)).await.expect("answered")).await
}

fn get(to: SocketAddr, path: &str) -> Request<support::Body> {
    Request::builder()
        .uri(format!("http://{to}{path}"))
        .header("host", "payments")
        .body(full(""))
        .expect("request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_through_the_sidecar_pair() {
    let (v1, orders) = one_pod(serde_json::json!([]), "6s").await;
    let mut req = get(orders.outbound, "/hello");
    req.headers_mut().insert(
        "connection",
        "keep-alive, x-private".parse().expect("value"),
    );
    req.headers_mut()
        .insert("x-private", "secret".parse().expect("value"));
    let resp = h1_client().request(req).await.expect("answered");
    let (status, headers, body) = read(resp).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(&body[..], b"hello from payments-v1");
    assert_eq!(
        headers.get("x-app").map(|v| v.as_bytes()),
        Some(&b"payments-v1"[..])
    );
    let seen = v1.app.seen();
    let h = &seen[0].headers;
    assert_eq!(
        h.get("host").map(|v| v.as_bytes()),
        Some(&b"payments"[..]),
        "the app sees the authority the caller used"
    );
    assert!(h.get("traceparent").is_some(), "trace context created");
    assert!(h.get("x-request-id").is_some(), "request id created");
    assert!(
        h.get("x-forwarded-for")
            .is_some_and(|v| v.to_str().is_ok_and(|s| s.contains("127.0.0.1")))
    );
    assert!(
        h.get("x-private").is_none(),
        "headers named in Connection are hop-by-hop"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_with_large_bodies_streamed_both_ways() {
    let (_v1, orders) = one_pod(serde_json::json!([]), "6s").await;
    let payload = vec![7u8; 3 * 1024 * 1024];
    // h2c with prior knowledge to the outbound listener; :authority names the service.
    let mut sender = support::h2_connection(orders.outbound).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("http://payments/echo")
        .body(full(payload.clone()))
        .expect("request");
    let resp = sender.send_request(req).await.expect("answered");
    assert_eq!(resp.version(), http::Version::HTTP_2);
    let (status, _, body) = read(resp).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), payload.len(), "the whole body came back");
    assert!(body.iter().all(|&b| b == 7));
    let (status, _, body) = call(orders.outbound, "/big/5000000").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body.len(), 5_000_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_service_gets_a_clear_502() {
    let orders = orders(payments(serde_json::json!([]), serde_json::json!([]), "6s")).await;
    let mut req = get(orders.outbound, "/");
    req.headers_mut()
        .insert("host", "nowhere:8080".parse().expect("v"));
    let (status, _, body) = read(h1_client().request(req).await.expect("answered")).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    let text = String::from_utf8_lossy(&body);
    assert!(
        text.contains("no route to service \"nowhere\"") && text.contains("payments"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_refuses_connections_is_retried_then_reported() {
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead = closed.local_addr().expect("addr");
    drop(closed);
    let orders = orders(payments(
        serde_json::json!([{"address": dead.to_string(), "labels": {"version": "v1"}}]),
        serde_json::json!([{"name": "retry", "builtin": "retry",
                            "config": {"attempts": 2, "retryOn": "connect-failure"}}]),
        "6s",
    ))
    .await;
    let (status, _, body) = call(orders.outbound, "/").await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(String::from_utf8_lossy(&body).contains("upstream connect error"));
    let metrics = support::scrape(&orders).await;
    assert!(
        metrics.contains(
            "weft_upstream_attempts_total{outcome=\"connect_failure\",service=\"payments\"} 3"
        ),
        "three tries:\n{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_never_answers_meets_the_per_try_and_overall_timeouts() {
    let (v1, orders) = one_pod(serde_json::json!([{"name": "retry", "builtin": "retry",
                            "config": {"attempts": 5, "perTryTimeout": "300ms", "retryOn": "5xx"}}]), "1s").await;
    let start = Instant::now();
    let (status, _, body) = call(orders.outbound, "/hang").await;
    let took = start.elapsed();
    assert_eq!(
        status,
        StatusCode::GATEWAY_TIMEOUT,
        "{}",
        String::from_utf8_lossy(&body)
    );
    // Tries of 300 ms are retried until the 1 s overall timeout stops them.
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    let hangs = v1.app.seen().iter().filter(|s| s.path == "/hang").count();
    assert!((2..=4).contains(&hangs), "{hangs} tries reached the app");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_picks_the_subset_and_another_answers_locally() {
    let v1 = pod("payments", "payments-v1").await;
    let v2 = pod("payments", "payments-v2").await;
    let orders = orders(payments(
        serde_json::json!([
            {"address": v1.sidecar.inbound.to_string(), "labels": {"version": "v1"}},
            {"address": v2.sidecar.inbound.to_string(), "labels": {"version": "v2"}},
        ]),
        serde_json::json!([
            {"name": "chaos", "file": weft_artifacts::CHAOS_PATH, "config": {"tag": "e2e"}},
            {"name": "canary", "builtin": "canary", "config": {"host": "payments", "route": [
                {"destination": {"host": "payments", "subset": "v1"}, "weight": 0},
                {"destination": {"host": "payments", "subset": "v2"}, "weight": 100}]}},
        ]),
        "6s",
    ))
    .await;
    for _ in 0..20 {
        let (status, headers, _) = call(orders.outbound, "/").await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            headers.get("x-app").map(|v| v.as_bytes()),
            Some(&b"payments-v2"[..])
        );
        assert_eq!(
            headers.get("x-chaos-status").map(|v| v.as_bytes()),
            Some(&b"200"[..]),
            "on-response ran"
        );
    }
    assert!(v1.app.seen().is_empty(), "weight 0 sends nothing to v1");
    assert!(
        v2.app
            .seen()
            .iter()
            .all(|s| s.headers.get("x-chaos-tag").is_some_and(|v| v == "e2e"))
    );
    let (status, _, body) = call(orders.outbound, "/teapot").await;
    assert_eq!(status, StatusCode::IM_A_TEAPOT);
    assert_eq!(&body[..], b"short and stout");
    assert_eq!(
        v2.app.seen().iter().filter(|s| s.path == "/teapot").count(),
        0,
        "answered locally"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_hangs_up_mid_request_cancels_the_upstream_call() {
    use tokio::io::AsyncWriteExt;
    let (v1, orders) = one_pod(serde_json::json!([]), "30s").await;
    let mut raw = tokio::net::TcpStream::connect(orders.outbound)
        .await
        .expect("connect");
    let head = "POST /drain HTTP/1.1\r\nhost: payments\r\ncontent-length: 10000000\r\n\r\n";
    raw.write_all(head.as_bytes()).await.expect("write");
    raw.write_all(&vec![b'a'; 200_000]).await.expect("write");
    // Wait until the app has the request, then hang up.
    let deadline = Instant::now() + Duration::from_secs(5);
    while v1.app.seen().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!v1.app.seen().is_empty(), "the request reached the app");
    drop(raw);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(complete) = v1.app.seen()[0].body_complete {
            assert!(!complete, "the app's request was cut off, not completed");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the upstream call was not cancelled"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_snapshot_is_refused_and_the_last_good_one_keeps_serving() {
    let (_v1, orders) = one_pod(serde_json::json!([]), "6s").await;
    let bad: Snapshot = serde_json::from_value(payments(
        serde_json::json!([{"address": "127.0.0.1:1", "labels": {}}]),
        serde_json::json!([{"name": "picky", "file": weft_artifacts::CHAOS_PATH, "config": {"reject": true}}]),
        "6s",
    ))
    .expect("parses");
    let err = orders.apply(bad).await.expect_err("rejected");
    assert!(
        err.to_string().contains("services.payments.plugins[0]")
            && err.to_string().contains("rejected on purpose"),
        "{err}"
    );
    let (status, headers, _) = call(orders.outbound, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers.get("x-app").map(|v| v.as_bytes()),
        Some(&b"payments-v1"[..]),
        "old endpoints kept"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_finishes_calls_in_flight_and_refuses_new_ones() {
    let (_v1, orders) = one_pod(serde_json::json!([]), "6s").await;
    let outbound = orders.outbound;
    let slow = tokio::spawn(async move {
        h1_client()
            .request(get(outbound, "/slow/500"))
            .await
            .map(|r| r.status())
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    orders.shutdown().await;
    assert_eq!(
        slow.await.expect("joined").expect("answered"),
        StatusCode::OK,
        "the call in flight finished"
    );
    assert!(
        tokio::net::TcpStream::connect(outbound).await.is_err(),
        "no new connections after drain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_endpoint_serves_metrics_readiness_and_config() {
    let (v1, orders) = one_pod(
        serde_json::json!([{"name": "telemetry", "builtin": "telemetry"}]),
        "6s",
    )
    .await;
    for _ in 0..3 {
        call(orders.outbound, "/").await;
    }
    let metrics = support::scrape(&orders).await;
    assert!(
        metrics.contains(
            "weft_requests_total{code=\"200\",direction=\"outbound\",service=\"payments\"} 3"
        ),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("istio_requests_total{")
                && l.contains("destination_service=\"payments.default.svc.cluster.local\"")
                && l.contains("reporter=\"source\"")
                && l.ends_with(" 3")),
        "{metrics}"
    );
    // Three calls, one pooled HTTP/2 connection to the peer.
    assert!(
        metrics.contains("weft_upstream_connections_opened_total{pool=\"peers\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("weft_upstream_connections_open{pool=\"peers\"} 1"),
        "{metrics}"
    );
    let get_admin = |path: &str| {
        Request::builder()
            .uri(format!("http://{}{path}", orders.admin))
            .body(full(""))
            .expect("req")
    };
    let (status, _, _) = read(
        h1_client()
            .request(get_admin("/ready"))
            .await
            .expect("ready"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (_, _, config) = read(
        h1_client()
            .request(get_admin("/config"))
            .await
            .expect("config"),
    )
    .await;
    assert!(String::from_utf8_lossy(&config).contains("\"test-1\""));
    let unready = Sidecar::start(support::sidecar_config("x", v1.app.addr))
        .await
        .expect("sidecar");
    let req = Request::builder()
        .uri(format!("http://{}/ready", unready.admin))
        .body(full(""))
        .expect("req");
    assert_eq!(
        read(h1_client().request(req).await.expect("ready")).await.0,
        StatusCode::SERVICE_UNAVAILABLE,
        "no snapshot yet"
    );
}

/// Sends raw HTTP/1.1 bytes and reads the reply until the echoed body arrives (or 5 s pass).
async fn raw_exchange(to: SocketAddr, parts: &[&[u8]], pause_after_head: bool) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(to).await.expect("connect");
    let mut got = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        s.write_all(part).await.expect("write");
        if i == 0 && pause_after_head {
            // Wait for the interim 100 Continue before sending the body, as a client must.
            let mut buf = [0u8; 256];
            let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
                .await
                .expect("100 Continue in time")
                .expect("read");
            got.extend_from_slice(&buf[..n]);
        }
    }
    let mut buf = vec![0u8; 64 * 1024];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let text = String::from_utf8_lossy(&got).into_owned();
        if text.contains("\r\n\r\n") && text.ends_with("hello chunked world") {
            break;
        }
        match tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)).await {
            Ok(Ok(0)) => break,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            _ => {}
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunked_bodies_and_expect_100_continue_cross_the_pair() {
    let (_v1, orders) = one_pod(serde_json::json!([]), "6s").await;
    let chunked = raw_exchange(
        orders.outbound,
        &[
            b"POST /echo HTTP/1.1\r\nhost: payments\r\ntransfer-encoding: chunked\r\n\r\n",
            b"6\r\nhello \r\n8\r\nchunked \r\n5\r\nworld\r\n0\r\n\r\n",
        ],
        false,
    )
    .await;
    assert!(chunked.starts_with("HTTP/1.1 200"), "{chunked}");
    assert!(chunked.ends_with("hello chunked world"), "{chunked}");
    let expect = raw_exchange(
        orders.outbound,
        &[
            b"POST /echo HTTP/1.1\r\nhost: payments\r\nexpect: 100-continue\r\ncontent-length: 19\r\n\r\n",
            b"hello chunked world",
        ],
        true,
    )
    .await;
    assert!(expect.starts_with("HTTP/1.1 100 Continue"), "{expect}");
    assert!(
        expect.contains("HTTP/1.1 200") && expect.ends_with("hello chunked world"),
        "{expect}"
    );
}
