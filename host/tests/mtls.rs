//! Mutual TLS between sidecars end to end on loopback: certificates from a test CA, STRICT and
//! PERMISSIVE inbound listeners, the destination's identity checked by the caller, the caller's
//! identity forwarded to the app in `x-forwarded-client-cert`, pooling and rotation.

mod support;

use http::{Request, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use support::{App, full, h1_client, h2_client, read};
use weft::identity::{
    Ca, PeerAuthMode, PendingKey, SpiffeId, TrustBundle, Workload, client_config, server_name,
    system_clock,
};
use weft::proxy::{Mtls, Sidecar};
use weft::snapshot::Snapshot;

const HOUR: Duration = Duration::from_secs(3600);
const XFCC: &str = "x-forwarded-client-cert";

fn id(service: &str) -> SpiffeId {
    SpiffeId::new("weft.local", "default", service).expect("valid id")
}

/// A test CA in a temporary directory, with its trust bundle.
struct Mesh {
    _dir: tempfile::TempDir,
    ca: Ca,
    bundle: Arc<TrustBundle>,
}

impl Mesh {
    fn new() -> Mesh {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = Ca::open(&dir.path().join("ca"), "weft.local", system_clock()).expect("ca");
        let bundle = Arc::new(TrustBundle::from_pem(&ca.bundle()).expect("bundle"));
        Mesh {
            _dir: dir,
            ca,
            bundle,
        }
    }

    /// Issues `workload` a fresh certificate, as a sidecar does at start or renewal.
    fn issue(&self, workload: &Workload) {
        let key = PendingKey::generate(workload.id()).expect("key");
        let issued = self
            .ca
            .sign_csr(key.csr_pem(), workload.id(), HOUR)
            .expect("signed");
        workload.install(key, &issued.chain_pem).expect("installed");
    }

    fn workload(&self, service: &str) -> Arc<Workload> {
        let w = Workload::new(id(service));
        self.issue(&w);
        Arc::new(w)
    }

    fn mtls(&self, workload: Arc<Workload>, mode: PeerAuthMode) -> Mtls {
        Mtls {
            workload,
            bundle: self.bundle.clone(),
            mode,
        }
    }
}

/// An app with its mTLS sidecar.
struct Pod {
    app: App,
    sidecar: Sidecar,
    workload: Arc<Workload>,
}

async fn pod(mesh: &Mesh, service: &str, mode: PeerAuthMode) -> Pod {
    let app = App::start(service).await;
    let workload = mesh.workload(service);
    let mut config = support::sidecar_config(service, app.addr);
    config.mtls = Some(mesh.mtls(workload.clone(), mode));
    let sidecar = Sidecar::start(config).await.expect("sidecar");
    Pod {
        app,
        sidecar,
        workload,
    }
}

/// An `orders` sidecar over mTLS whose `payments` endpoint is `payments_at`.
async fn orders(mesh: &Mesh, payments_at: SocketAddr) -> Sidecar {
    caller(mesh, "orders", payments_at).await
}

/// A sidecar of `service` over mTLS (its own certificate) whose `payments` endpoint is
/// `payments_at`.
async fn caller(mesh: &Mesh, service: &str, payments_at: SocketAddr) -> Sidecar {
    let app = SocketAddr::from(([127, 0, 0, 1], 9)); // the caller's own app is not called here
    let mut config = support::sidecar_config(service, app);
    config.mtls = Some(mesh.mtls(mesh.workload(service), PeerAuthMode::Strict));
    let sidecar = Sidecar::start(config).await.expect("sidecar");
    let snapshot: Snapshot = serde_json::from_value(serde_json::json!({
        "version": "mtls-1",
        "services": {
            "payments": {
                "timeout": "6s",
                "endpoints": [{"address": payments_at.to_string(), "labels": {"version": "v1"}}],
                "plugins": [],
            }
        }
    }))
    .expect("snapshot");
    sidecar.apply(snapshot).await.expect("applies");
    sidecar
}

fn get(to: SocketAddr, path: &str) -> Request<support::Body> {
    Request::builder()
        .uri(format!("http://{to}{path}"))
        .header("host", "payments")
        .body(full(""))
        .expect("request")
}

async fn call(to: SocketAddr, path: &str) -> StatusCode {
    read(h1_client().request(get(to, path)).await.expect("answered"))
        .await
        .0
}

fn xfcc(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(XFCC)
        .iter()
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .collect()
}

const EXPECTED_XFCC: &str =
    "By=spiffe://weft.local/ns/default/sa/payments;URI=spiffe://weft.local/ns/default/sa/orders";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_to_payments_over_mtls_forwards_the_caller_identity() {
    let mesh = Mesh::new();
    let payments = pod(&mesh, "payments", PeerAuthMode::Strict).await;
    let orders = orders(&mesh, payments.sidecar.inbound).await;
    assert_eq!(call(orders.outbound, "/hello").await, StatusCode::OK);
    let seen = payments.app.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(xfcc(&seen[0].headers), vec![EXPECTED_XFCC.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_client_cert_header_is_replaced() {
    let mesh = Mesh::new();
    let payments = pod(&mesh, "payments", PeerAuthMode::Strict).await;
    let orders = orders(&mesh, payments.sidecar.inbound).await;
    let mut req = get(orders.outbound, "/hello");
    req.headers_mut().append(
        XFCC,
        "By=x;URI=spiffe://weft.local/ns/default/sa/admin"
            .parse()
            .expect("value"),
    );
    req.headers_mut()
        .append(XFCC, "URI=spiffe://evil/ns/x/sa/y".parse().expect("value"));
    let resp = h1_client().request(req).await.expect("answered");
    assert_eq!(read(resp).await.0, StatusCode::OK);
    let seen = payments.app.seen();
    assert_eq!(xfcc(&seen[0].headers), vec![EXPECTED_XFCC.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_a_plaintext_client() {
    let mesh = Mesh::new();
    let payments = pod(&mesh, "payments", PeerAuthMode::Strict).await;
    let sent = h2_client()
        .request(get(payments.sidecar.inbound, "/hello"))
        .await;
    assert!(sent.is_err(), "h2c to a STRICT listener must fail");
    assert!(payments.app.seen().is_empty(), "the app saw nothing");
    refusals_counted(&payments.sidecar, "plaintext").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permissive_accepts_plaintext_without_an_identity_and_mtls_with_one() {
    let mesh = Mesh::new();
    let payments = pod(&mesh, "payments", PeerAuthMode::Permissive).await;
    let mut req = get(payments.sidecar.inbound, "/plain");
    req.headers_mut().insert(
        XFCC,
        "URI=spiffe://weft.local/ns/default/sa/orders"
            .parse()
            .expect("value"),
    );
    let resp = h2_client().request(req).await.expect("plaintext accepted");
    assert_eq!(read(resp).await.0, StatusCode::OK);
    let orders = orders(&mesh, payments.sidecar.inbound).await;
    assert_eq!(call(orders.outbound, "/tls").await, StatusCode::OK);
    let seen = payments.app.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].path, "/plain");
    assert!(
        xfcc(&seen[0].headers).is_empty(),
        "no identity without TLS, and a forged one is dropped"
    );
    assert_eq!(seen[1].path, "/tls");
    assert_eq!(xfcc(&seen[1].headers), vec![EXPECTED_XFCC.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_refuses_a_certificate_from_another_ca() {
    let mesh = Mesh::new();
    let other = Mesh::new();
    let payments = pod(&mesh, "payments", PeerAuthMode::Strict).await;
    // The intruder trusts the real server but holds a certificate from another CA.
    let config = client_config(
        other.workload("orders"),
        mesh.bundle.clone(),
        id("payments"),
    )
    .expect("config");
    let attempt = async {
        let tcp = tokio::net::TcpStream::connect(payments.sidecar.inbound)
            .await
            .map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(config)
            .connect(server_name(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        // TLS 1.3: the client may finish before the server rejects its certificate, so the
        // refusal can surface on the first exchange instead.
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
                .await
                .map_err(|e| e.to_string())?;
        tokio::spawn(conn);
        sender
            .send_request(get(payments.sidecar.inbound, "/hello"))
            .await
            .map(|r| r.status())
            .map_err(|e| e.to_string())
    };
    let result = tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .expect("refused promptly");
    assert!(result.is_err(), "got {result:?}");
    assert!(payments.app.seen().is_empty(), "the app saw nothing");
    refusals_counted(&payments.sidecar, "handshake").await;
}

/// Waits briefly for one refusal of `reason` in the sidecar's metrics: the server records
/// its side in the connection's own task, possibly after the client has seen the refusal.
async fn refusals_counted(sidecar: &weft::proxy::Sidecar, reason: &str) {
    let wanted = format!("weft_inbound_tls_refused_total{{reason=\"{reason}\"}} 1");
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    loop {
        let metrics = support::scrape(sidecar).await;
        if metrics.contains(&wanted) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no {wanted}:\n{metrics}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_with_the_wrong_identity_fails_the_call() {
    let mesh = Mesh::new();
    let inventory = pod(&mesh, "inventory", PeerAuthMode::Strict).await;
    // orders believes payments lives where inventory's sidecar listens.
    let orders = orders(&mesh, inventory.sidecar.inbound).await;
    assert_eq!(
        call(orders.outbound, "/hello").await,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert!(inventory.app.seen().is_empty(), "the app saw nothing");
    let metrics = support::scrape(&orders).await;
    assert!(
        metrics.contains(
            "weft_upstream_attempts_total{outcome=\"connect_failure\",service=\"payments\"}"
        ),
        "{metrics}"
    );
    assert!(
        !metrics.contains("weft_upstream_connections_opened_total{pool=\"peers\"} 1"),
        "{metrics}"
    );
}

/// `weft_upstream_connections_opened_total{pool="peers"}` in a scrape.
fn peer_connections_opened(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("weft_upstream_connections_opened_total{pool=\"peers\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

/// 200 calls from 8 concurrent callers, each on its own connection (HTTP/1.1, or HTTP/2 with
/// prior knowledge, `:authority` naming the service); (calls answered 200, peer connections
/// opened).
async fn two_hundred_calls(outbound: SocketAddr, h2: bool, orders: &Sidecar) -> (usize, u64) {
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let mut ok = 0;
                if h2 {
                    let mut sender = support::h2_connection(outbound).await;
                    for _ in 0..25 {
                        let req = Request::builder()
                            .uri("http://payments/")
                            .body(full(""))
                            .expect("request");
                        let resp = sender.send_request(req).await.expect("answered");
                        if read(resp).await.0 == StatusCode::OK {
                            ok += 1;
                        }
                    }
                } else {
                    let client = h1_client();
                    for _ in 0..25 {
                        let resp = client.request(get(outbound, "/")).await.expect("answered");
                        if read(resp).await.0 == StatusCode::OK {
                            ok += 1;
                        }
                    }
                }
                ok
            })
        })
        .collect();
    let mut ok = 0;
    for t in tasks {
        ok += t.await.expect("joined");
    }
    (ok, peer_connections_opened(&support::scrape(orders).await))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_reuse_tls_connections_between_the_sidecars() {
    let mesh = Mesh::new();
    let payments = pod(&mesh, "payments", PeerAuthMode::Strict).await;
    let orders = orders(&mesh, payments.sidecar.inbound).await;
    // HTTP/1.1 from the app: pooled keep-alive connections between the sidecars, so at most
    // one per concurrent call (one handshake each), reused for the other 192 calls.
    let (ok, opened) = two_hundred_calls(orders.outbound, false, &orders).await;
    assert_eq!(ok, 200);
    assert!(
        (1..=8).contains(&opened),
        "{opened} connections for 8 callers"
    );
    // HTTP/2 from the app (gRPC): one multiplexed connection between the sidecars, so
    // streams and trailers pass through; it is the only new one.
    let (ok, after) = two_hundred_calls(orders.outbound, true, &orders).await;
    assert_eq!(ok, 200);
    assert_eq!(after, opened + 1, "HTTP/2 calls share one connection");
    assert_eq!(payments.app.seen().len(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_rotated_mid_stream_loses_no_call() {
    let mesh = Mesh::new();
    let payments = pod(&mesh, "payments", PeerAuthMode::Strict).await;
    let orders = orders(&mesh, payments.sidecar.inbound).await;
    let client = h1_client();
    let before = payments.workload.current().expect("certificate");
    let mut failures = 0;
    for i in 0..300 {
        if i == 150 {
            mesh.issue(&payments.workload);
        }
        let resp = client
            .request(get(orders.outbound, "/"))
            .await
            .expect("answered");
        if read(resp).await.0 != StatusCode::OK {
            failures += 1;
        }
    }
    assert_eq!(failures, 0);
    let after = payments.workload.current().expect("certificate");
    assert!(
        !Arc::ptr_eq(&before, &after),
        "the certificate was replaced"
    );
    // A new connection (a fresh caller) handshakes against the rotated certificate.
    let fresh = self::orders(&mesh, payments.sidecar.inbound).await;
    assert_eq!(call(fresh.outbound, "/").await, StatusCode::OK);
    assert_eq!(payments.app.seen().len(), 301);
}

/// A payments snapshot whose inbound section is what an AuthorizationPolicy compiles to.
fn payments_authz(version: &str, authorization: serde_json::Value) -> Snapshot {
    serde_json::from_value(serde_json::json!({
        "version": version,
        "inbound": { "authorization": authorization },
    }))
    .expect("snapshot")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_policies_are_enforced_on_the_callers_identity() {
    let mesh = Mesh::new();
    let payments = pod(&mesh, "payments", PeerAuthMode::Strict).await;
    let allow_orders = serde_json::json!({
        "name": "default/payments-allow-orders",
        "action": "ALLOW",
        "rules": [{ "from": [{ "principals": ["weft.local/ns/default/sa/orders"] }] }],
    });
    payments
        .sidecar
        .apply(payments_authz("authz-1", serde_json::json!([allow_orders])))
        .await
        .expect("applies");
    let orders = orders(&mesh, payments.sidecar.inbound).await;
    let inventory = caller(&mesh, "inventory", payments.sidecar.inbound).await;

    assert_eq!(call(orders.outbound, "/pay").await, StatusCode::OK);
    let resp = h1_client()
        .request(get(inventory.outbound, "/pay"))
        .await
        .expect("answered");
    let (status, _, body) = read(resp).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(body, "RBAC: access denied");
    let seen = payments.app.seen();
    assert_eq!(seen.len(), 1, "the app saw only orders' call");
    assert_eq!(seen[0].path, "/pay");

    // A DENY on /admin* refuses even orders, whom the ALLOW lets in.
    let no_admin = serde_json::json!({
        "name": "default/payments-no-admin",
        "action": "DENY",
        "rules": [{ "to": [{ "paths": ["/admin*"] }] }],
    });
    payments
        .sidecar
        .apply(payments_authz(
            "authz-2",
            serde_json::json!([allow_orders, no_admin]),
        ))
        .await
        .expect("applies");
    assert_eq!(
        call(orders.outbound, "/admin/users").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(call(orders.outbound, "/pay").await, StatusCode::OK);
    assert_eq!(payments.app.seen().len(), 2);

    let metrics = support::scrape(&payments.sidecar).await;
    for needle in [
        "weft_inbound_denied_total 2\n",
        "weft_inbound_requests_by_source_total{decision=\"allowed\",source_principal=\"weft.local/ns/default/sa/orders\"} 2\n",
        "weft_inbound_requests_by_source_total{decision=\"denied\",source_principal=\"weft.local/ns/default/sa/orders\"} 1\n",
        "weft_inbound_requests_by_source_total{decision=\"denied\",source_principal=\"weft.local/ns/default/sa/inventory\"} 1\n",
        "weft_requests_total{code=\"403\",direction=\"inbound\",service=\"payments\"} 2\n",
        "weft_requests_total{code=\"200\",direction=\"inbound\",service=\"payments\"} 2\n",
    ] {
        assert!(
            metrics.contains(needle),
            "missing {needle:?} in:\n{metrics}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deny_policy_sees_the_normalized_path_and_so_does_the_app() {
    let mesh = Mesh::new();
    // PERMISSIVE, so a hostile caller can reach the inbound side directly, with no sidecar of
    // its own to normalize the path first.
    let payments = pod(&mesh, "payments", PeerAuthMode::Permissive).await;
    let no_admin = serde_json::json!({
        "name": "default/payments-no-admin",
        "action": "DENY",
        "rules": [{ "to": [{ "paths": ["/admin*"] }] }],
    });
    payments
        .sidecar
        .apply(payments_authz("authz-1", serde_json::json!([no_admin])))
        .await
        .expect("applies");
    let direct = |path: &str| {
        let req = get(payments.sidecar.inbound, path);
        async move { read(h2_client().request(req).await.expect("answered")).await }
    };
    for attack in [
        "/admin",
        "/public/../admin",
        "/./admin",
        "/%61dmin/users",
        "/public/%2E%2E/admin",
        "/../admin",
    ] {
        assert_eq!(direct(attack).await.0, StatusCode::FORBIDDEN, "{attack}");
    }
    // What cannot be normalized is refused before any policy reads it.
    for bad in ["/admin%00", "/adm%zzin"] {
        let (status, _, body) = direct(bad).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body:?}");
    }
    assert!(payments.app.seen().is_empty(), "no attack reached the app");

    // The app is sent the path that was authorized.
    assert_eq!(
        direct("/public/./data/x/../items?q=/../admin").await.0,
        StatusCode::OK
    );
    // Through a caller's sidecar the same holds: it normalizes before routing.
    let orders = orders(&mesh, payments.sidecar.inbound).await;
    assert_eq!(
        call(orders.outbound, "/public/../admin").await,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        call(orders.outbound, "/a/%7Euser/./b").await,
        StatusCode::OK
    );
    let seen: Vec<String> = payments.app.seen().into_iter().map(|r| r.path).collect();
    assert_eq!(seen, ["/public/data/items", "/a/~user/b"]);
}

/// A payments snapshot whose inbound section is what a PeerAuthentication compiles to.
fn payments_peer_authn(version: &str, mode: Option<&str>) -> Snapshot {
    let inbound = match mode {
        Some(mode) => serde_json::json!({ "peerAuthentication": mode }),
        None => serde_json::json!({}),
    };
    serde_json::from_value(serde_json::json!({ "version": version, "inbound": inbound }))
        .expect("snapshot")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_authentication_snapshot_switches_new_connections_to_strict() {
    let mesh = Mesh::new();
    let payments = pod(&mesh, "payments", PeerAuthMode::Permissive).await;
    let orders = orders(&mesh, payments.sidecar.inbound).await;
    let plain = || async {
        // A fresh client each time: a new connection, which is where the mode is read.
        h2_client()
            .request(get(payments.sidecar.inbound, "/plain"))
            .await
    };

    let resp = plain().await.expect("PERMISSIVE accepts plaintext");
    assert_eq!(read(resp).await.0, StatusCode::OK);
    assert_eq!(call(orders.outbound, "/tls").await, StatusCode::OK);

    payments
        .sidecar
        .apply(payments_peer_authn("pa-strict", Some("STRICT")))
        .await
        .expect("applies");
    assert!(
        plain().await.is_err(),
        "a new plaintext connection is refused under STRICT"
    );
    // orders' pooled connection keeps going, and a new caller's mTLS handshake passes.
    assert_eq!(call(orders.outbound, "/tls").await, StatusCode::OK);
    let fresh = caller(&mesh, "orders", payments.sidecar.inbound).await;
    assert_eq!(call(fresh.outbound, "/tls").await, StatusCode::OK);
    refusals_counted(&payments.sidecar, "plaintext").await;

    // Without a PeerAuthentication the bootstrap's PERMISSIVE is back in force.
    payments
        .sidecar
        .apply(payments_peer_authn("pa-none", None))
        .await
        .expect("applies");
    let resp = plain().await.expect("plaintext accepted again");
    assert_eq!(read(resp).await.0, StatusCode::OK);

    let paths: Vec<String> = payments.app.seen().into_iter().map(|s| s.path).collect();
    assert_eq!(paths, ["/plain", "/tls", "/tls", "/tls", "/plain"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_permissive_peer_authentication_relaxes_a_strict_bootstrap() {
    let mesh = Mesh::new();
    let payments = pod(&mesh, "payments", PeerAuthMode::Strict).await;
    assert!(
        h2_client()
            .request(get(payments.sidecar.inbound, "/plain"))
            .await
            .is_err(),
        "STRICT bootstrap refuses plaintext"
    );
    payments
        .sidecar
        .apply(payments_peer_authn("pa-permissive", Some("PERMISSIVE")))
        .await
        .expect("applies");
    let resp = h2_client()
        .request(get(payments.sidecar.inbound, "/plain"))
        .await
        .expect("PERMISSIVE accepts plaintext");
    assert_eq!(read(resp).await.0, StatusCode::OK);
    let orders = orders(&mesh, payments.sidecar.inbound).await;
    assert_eq!(call(orders.outbound, "/tls").await, StatusCode::OK);
    let seen = payments.app.seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(xfcc(&seen[1].headers), vec![EXPECTED_XFCC.to_string()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sidecar_without_mtls_keeps_serving_plaintext_under_strict() {
    let app = support::App::start("payments").await;
    let sidecar = Sidecar::start(support::sidecar_config("payments", app.addr))
        .await
        .expect("sidecar");
    // It has no certificate to require TLS with: a warning, and plaintext goes on.
    sidecar
        .apply(payments_peer_authn("pa-strict", Some("STRICT")))
        .await
        .expect("applies");
    let resp = h2_client()
        .request(get(sidecar.inbound, "/plain"))
        .await
        .expect("plaintext still served");
    assert_eq!(read(resp).await.0, StatusCode::OK);
    assert_eq!(app.seen().len(), 1);
}
