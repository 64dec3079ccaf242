//! Every downstream connection and stream ends: an idle socket, a silent HTTP/2 connection, a
//! head sent a byte at a time, a body trickled or stalled, a response that stops half way, and
//! the control API's connections — each closed by its bound and counted, while a keep-alive
//! connection that merely waits between requests is left alone.

mod support;

use bytes::Bytes;
use http::StatusCode;
use std::net::SocketAddr;
use std::time::Duration;
use support::{App, full, h1_client, read, scrape};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use weft::proxy::Sidecar;
use weft::snapshot::Snapshot;

/// A sidecar whose bounds are short enough to watch: 300 ms for request heads, 1.5 s idle,
/// 400 ms stream idle, 1 s to receive a request.
async fn bounded(app: SocketAddr) -> Sidecar {
    let mut config = support::sidecar_config("payments", app);
    config.timeouts.connection.request_headers = Duration::from_millis(300);
    config.timeouts.connection.idle = Duration::from_millis(1500);
    config.timeouts.stream_idle = Duration::from_millis(400);
    config.timeouts.request = Some(Duration::from_secs(1));
    Sidecar::start(config).await.expect("sidecar")
}

/// Reads until the peer closes; the bytes read. Fails if it stays open for 10 s.
async fn until_closed(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.read(&mut buf)).await {
            Err(_) => panic!(
                "still open after 10 s; read {:?}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return got,
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// The value of a `weft_downstream_timeouts_total` series, or 0.
fn timeouts(metrics: &str, listener: &str, timeout: &str) -> u64 {
    let series =
        format!("weft_downstream_timeouts_total{{listener=\"{listener}\",timeout=\"{timeout}\"}}");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_and_slow_connections_are_closed_by_their_bounds() {
    let app = App::start("payments-v1").await;
    let sidecar = bounded(app.addr).await;

    // A TCP connection that never says anything: closed at the request headers bound, on the
    // outbound and the inbound listener alike.
    for to in [sidecar.outbound, sidecar.inbound] {
        let mut s = TcpStream::connect(to).await.expect("connect");
        assert!(until_closed(&mut s).await.is_empty());
    }
    // HTTP/2: the preface and settings, then no stream ever.
    let mut s = TcpStream::connect(sidecar.outbound).await.expect("connect");
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0")
        .await
        .expect("preface");
    until_closed(&mut s).await;
    // A head that never ends.
    let mut s = TcpStream::connect(sidecar.inbound).await.expect("connect");
    s.write_all(b"GET / HTTP/1.1\r\nHost: payments\r\n")
        .await
        .expect("half a head");
    until_closed(&mut s).await;
    // The first byte of a head, then one more every 200 ms: timed from the first byte.
    let mut s = TcpStream::connect(sidecar.inbound).await.expect("connect");
    let slow = async {
        for b in b"GET / HTTP/1.1\r\nHost: payments\r\n\r\n" {
            if s.write_all(&[*b]).await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), slow)
        .await
        .expect("the writes stop once the sidecar closes");

    let metrics = scrape(&sidecar).await;
    assert!(
        timeouts(&metrics, "outbound", "request_headers") >= 2,
        "{metrics}"
    );
    assert!(
        timeouts(&metrics, "inbound", "request_headers") >= 3,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keep_alive_connection_may_wait_between_requests_until_the_idle_bound() {
    let app = App::start("payments-v1").await;
    let sidecar = bounded(app.addr).await;
    let mut s = TcpStream::connect(sidecar.inbound).await.expect("connect");
    let request = b"GET /hello HTTP/1.1\r\nHost: payments\r\n\r\n";
    s.write_all(request).await.expect("first");
    let mut buf = [0u8; 4096];
    let n = s.read(&mut buf).await.expect("answer");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Three request-headers bounds of quiet: a waiting keep-alive connection is not a slow head.
    tokio::time::sleep(Duration::from_millis(900)).await;
    s.write_all(request).await.expect("second");
    let n = s.read(&mut buf).await.expect("answer");
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 200"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    // Then the idle bound closes it.
    until_closed(&mut s).await;
    let metrics = scrape(&sidecar).await;
    assert_eq!(timeouts(&metrics, "inbound", "idle"), 1, "{metrics}");
    assert_eq!(
        timeouts(&metrics, "inbound", "request_headers"),
        0,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trickled_and_stalled_bodies_end_with_408_and_a_stalled_response_is_cut() {
    let app = App::start("payments-v1").await;
    let sidecar = bounded(app.addr).await;

    // A body trickled a byte every 300 ms: under the stream idle bound, but the request is not
    // whole within a second.
    let (mut rd, mut wr) = TcpStream::connect(sidecar.inbound)
        .await
        .expect("connect")
        .into_split();
    wr.write_all(b"POST /echo HTTP/1.1\r\nHost: payments\r\nContent-Length: 100\r\n\r\n")
        .await
        .expect("head");
    let trickle = tokio::spawn(async move {
        for _ in 0..100 {
            tokio::time::sleep(Duration::from_millis(300)).await;
            if wr.write_all(b"x").await.is_err() {
                return;
            }
        }
    });
    let got = until_closed(&mut rd).await;
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    trickle.abort();

    // A body that stops: the stream idle bound.
    let mut s = TcpStream::connect(sidecar.inbound).await.expect("connect");
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: payments\r\nContent-Length: 100\r\n\r\nxyz")
        .await
        .expect("head");
    let got = until_closed(&mut s).await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"));

    // The app sends its head and a chunk, then nothing: the caller's response is cut rather
    // than held open.
    let resp = h1_client()
        .request(support::get(sidecar.inbound, "/stall", &[]))
        .await
        .expect("head");
    assert_eq!(resp.status(), StatusCode::OK);
    let body = tokio::time::timeout(
        Duration::from_secs(10),
        http_body_util::BodyExt::collect(resp.into_body()),
    )
    .await
    .expect("ended within 10 s");
    assert!(body.is_err(), "cut, not completed");

    let metrics = scrape(&sidecar).await;
    assert_eq!(timeouts(&metrics, "inbound", "request"), 1, "{metrics}");
    assert!(
        timeouts(&metrics, "inbound", "stream_idle") >= 2,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_through_the_outbound_listener_gets_408_for_a_stalled_body() {
    let app = App::start("payments-v1").await;
    let v1 = bounded(app.addr).await;
    let orders = bounded(SocketAddr::from(([127, 0, 0, 1], 9))).await;
    let snapshot: Snapshot = serde_json::from_value(serde_json::json!({
        "version": "t1",
        "services": {"payments": {"endpoints": [{"address": v1.inbound.to_string()}]}}
    }))
    .expect("snapshot");
    orders.apply(snapshot).await.expect("applies");
    // A whole body passes.
    let req = http::Request::post(format!("http://{}/echo", orders.outbound))
        .header("host", "payments")
        .body(full(Bytes::from_static(b"hello")))
        .expect("request");
    let (status, _, body) = read(h1_client().request(req).await.expect("answered")).await;
    assert_eq!((status, &body[..]), (StatusCode::OK, &b"hello"[..]));
    // One that stops half way gets 408 from the caller's own sidecar.
    let mut s = TcpStream::connect(orders.outbound).await.expect("connect");
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: payments\r\nContent-Length: 10\r\n\r\nabc")
        .await
        .expect("head");
    let got = until_closed(&mut s).await;
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 408"));
    let metrics = scrape(&orders).await;
    assert_eq!(
        timeouts(&metrics, "outbound", "stream_idle"),
        1,
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_control_api_bounds_its_connections() {
    use weft::control::server::{ApiLimits, ControlConfig, ControlPlane};
    let dir = tempfile::tempdir().expect("dir");
    let mut config = ControlConfig::new(dir.path().join("data"));
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.limits = ApiLimits {
        connection: weft::conn::Limits {
            request_headers: Duration::from_millis(300),
            idle: Duration::from_millis(800),
            max_duration: None,
        },
        max_connections: 3,
    };
    let cp = ControlPlane::start(config).await.expect("control plane");
    let bundle =
        std::sync::Arc::new(weft::identity::TrustBundle::from_pem(&cp.bundle()).expect("bundle"));
    let tls = tokio_rustls::TlsConnector::from(
        weft::identity::control_client_config(bundle).expect("client config"),
    );
    let connect = || async {
        let tcp = TcpStream::connect(cp.addr).await.expect("connect");
        tls.connect(weft::identity::server_name(), tcp)
            .await
            .expect("TLS")
    };
    // TLS done, then a header byte a second: closed by the request headers bound.
    let mut slow = connect().await;
    let dribble = async {
        for b in b"GET /v1/status HTTP/1.1\r\n" {
            if slow.write_all(&[*b]).await.is_err() || slow.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(15), dribble)
        .await
        .expect("closed before the head was done");
    // TLS done, then nothing: closed too.
    let mut idle = connect().await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), idle.read(&mut buf))
        .await
        .expect("closed within 10 s");
    assert!(matches!(read, Ok(0) | Err(_)));

    // Three connections held open: a fourth is closed as it arrives.
    let held = [
        TcpStream::connect(cp.addr).await.expect("1"),
        TcpStream::connect(cp.addr).await.expect("2"),
        TcpStream::connect(cp.addr).await.expect("3"),
    ];
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut fourth = TcpStream::connect(cp.addr).await.expect("4");
    let read = tokio::time::timeout(Duration::from_secs(2), fourth.read(&mut buf))
        .await
        .expect("the fourth is closed at once");
    assert!(matches!(read, Ok(0) | Err(_)));
    drop(held);
    cp.stop().await;
}
