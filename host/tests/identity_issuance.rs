//! The control plane as the mesh CA: certificates for exactly the caller's service, the trust
//! bundle, refusals, and a sidecar-side renewal loop rotating short-lived certificates.

use bytes::Bytes;
use http::{Method, StatusCode};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, UnixTime};
use rustls::server::WebPkiClientVerifier;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use weft::control::channel::Endpoint;
use weft::control::client::{self, ClientError, IdentityError, call};
use weft::control::server::{ControlConfig, ControlPlane};
use weft::control::wire::CertificateAnswer;
use weft::identity::{PeerAuthMode, PendingKey, SpiffeId, TrustBundle, Workload, tls};

async fn control_plane(dir: &tempfile::TempDir, lifetime: Duration) -> ControlPlane {
    let mut config = ControlConfig::new(dir.path().to_path_buf());
    config.listen = "127.0.0.1:0".parse().expect("addr");
    config.cert_lifetime = lifetime;
    ControlPlane::start(config).await.expect("control plane")
}

/// A sidecar's first certificate, as `weft sidecar` gets it: the endpoint trusts the bundle
/// the control plane published, which `obtain` then refreshes.
async fn obtain(cp: &ControlPlane, token: &str) -> (Arc<Workload>, Arc<TrustBundle>, Endpoint) {
    let bundle = Arc::new(TrustBundle::from_pem(&cp.bundle()).expect("bundle"));
    let endpoint = Endpoint::new(cp.addr, bundle.clone()).expect("endpoint");
    let workload = client::obtain(&endpoint, &bundle, token, Duration::from_secs(5))
        .await
        .expect("obtain");
    (workload, bundle, endpoint)
}

fn id(service: &str) -> SpiffeId {
    SpiffeId::new("weft.local", "default", service).expect("id")
}

fn certs(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .expect("PEM certificates")
}

/// Whether `chain` (leaf first) verifies against the roots in `bundle` now.
fn chains_to(chain: &[CertificateDer<'static>], bundle: &str) -> Result<(), rustls::Error> {
    let mut roots = rustls::RootCertStore::empty();
    for root in certs(bundle) {
        roots.add(root).expect("root");
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        weft::identity::tls::provider(),
    )
    .build()
    .expect("verifier");
    verifier
        .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
        .map(|_| ())
}

fn pem_of(cert: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", cert.as_ref()))
}

/// A STRICT mTLS handshake over a pipe: `server` (with its bundle) accepts `client`; the
/// caller's SPIFFE ID as the server sees it.
async fn handshake(
    server: Arc<Workload>,
    server_bundle: Arc<TrustBundle>,
    client: Arc<Workload>,
    client_bundle: Arc<TrustBundle>,
) -> Result<SpiffeId, String> {
    let expected = server.id().clone();
    let acceptor = tokio_rustls::TlsAcceptor::from(
        tls::server_config(server, server_bundle, PeerAuthMode::Strict)
            .map_err(|e| e.to_string())?,
    );
    let connector = tokio_rustls::TlsConnector::from(
        tls::client_config(client, client_bundle, expected).map_err(|e| e.to_string())?,
    );
    let (a, b) = tokio::io::duplex(64 << 10);
    let (accepted, connected) =
        tokio::join!(acceptor.accept(a), connector.connect(tls::server_name(), b));
    // A refused client certificate surfaces on the client's side only after its first read.
    let _conn = connected.map_err(|e| format!("client: {e}"))?;
    let stream = accepted.map_err(|e| format!("server: {e}"))?;
    tls::caller_identity(&stream).ok_or_else(|| "no caller identity".to_string())
}

async fn post_csr(cp: &ControlPlane, token: &str, key: &PendingKey) -> Result<Bytes, ClientError> {
    call(
        &cp.endpoint(),
        token,
        Method::POST,
        "/v1/certificates",
        Bytes::from(key.csr_pem().to_owned()),
    )
    .await
}

#[tokio::test]
async fn a_service_token_gets_a_certificate_for_its_own_service() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = control_plane(&dir, Duration::from_secs(3600)).await;
    let token = cp.service_token("payments");

    let told = client::identity(&cp.endpoint(), &token)
        .await
        .expect("identity");
    assert_eq!(
        told,
        id("payments"),
        "the control plane decides the identity"
    );

    let key = PendingKey::generate(&told).expect("key");
    let body = post_csr(&cp, &token, &key).await.expect("certificate");
    let answer: CertificateAnswer = serde_json::from_slice(&body).expect("answer JSON");
    assert_eq!(
        answer.spiffe_id,
        "spiffe://weft.local/ns/default/sa/payments"
    );
    assert_eq!(answer.trust_domain, "weft.local");
    let chain = certs(&answer.chain);
    assert_eq!(
        SpiffeId::from_cert_der(&chain[0]).expect("SAN"),
        id("payments")
    );
    chains_to(&chain, &answer.bundle).expect("the leaf chains to the bundle");
    let ms = |t: SystemTime| {
        t.duration_since(SystemTime::UNIX_EPOCH)
            .expect("after epoch")
            .as_millis() as u64
    };
    let now = ms(SystemTime::now());
    assert!(
        answer.not_after > now + 3_500_000 && answer.not_after <= now + 3_600_000,
        "notAfter follows the configured lifetime: {} vs now {now}",
        answer.not_after
    );
    assert!(
        dir.path().join("ca/root.pem").is_file(),
        "the CA lives in <data>/ca"
    );

    // The library's own path: the same as the sidecar takes at start.
    let (workload, _, _) = obtain(&cp, &token).await;
    assert_eq!(workload.id(), &id("payments"));
    assert!(workload.current().is_some());
    cp.stop().await;
}

#[tokio::test]
async fn a_csr_for_another_service_is_forbidden() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = control_plane(&dir, Duration::from_secs(3600)).await;
    let token = cp.service_token("payments");
    let key = PendingKey::generate(&id("orders")).expect("key");
    match post_csr(&cp, &token, &key).await {
        Err(ClientError::Refused { status, body }) => {
            assert_eq!(status, StatusCode::FORBIDDEN);
            assert!(
                body.contains("cannot obtain a certificate for another service's identity")
                    && body.contains("sa/orders")
                    && body.contains("sa/payments"),
                "{body}"
            );
        }
        other => panic!("expected 403, got {other:?}"),
    }
    // Another trust domain is another identity too.
    let foreign = SpiffeId::new("evil.example", "default", "payments").expect("id");
    let key = PendingKey::generate(&foreign).expect("key");
    match post_csr(&cp, &token, &key).await {
        Err(ClientError::Refused { status, .. }) => assert_eq!(status, StatusCode::FORBIDDEN),
        other => panic!("expected 403, got {other:?}"),
    }
    // Garbage is a bad request, not a certificate.
    match call(
        &cp.endpoint(),
        &token,
        Method::POST,
        "/v1/certificates",
        Bytes::from_static(b"not a CSR"),
    )
    .await
    {
        Err(ClientError::Refused { status, body }) => {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        }
        other => panic!("expected 400, got {other:?}"),
    }
    cp.stop().await;
}

#[tokio::test]
async fn the_bundle_needs_a_valid_token() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = control_plane(&dir, Duration::from_secs(3600)).await;
    let op = cp.operator_token().to_string();
    let bundle = call(&cp.endpoint(), &op, Method::GET, "/v1/bundle", Bytes::new())
        .await
        .expect("operator gets the bundle");
    let text = String::from_utf8(bundle.to_vec()).expect("PEM text");
    assert_eq!(text, cp.bundle());
    assert_eq!(certs(&text).len(), 1, "one root");

    let svc = cp.service_token("orders");
    call(
        &cp.endpoint(),
        &svc,
        Method::GET,
        "/v1/bundle",
        Bytes::new(),
    )
    .await
    .expect("a service token gets the bundle");

    for token in ["", "orders.00", "nonsense"] {
        match call(
            &cp.endpoint(),
            token,
            Method::GET,
            "/v1/bundle",
            Bytes::new(),
        )
        .await
        {
            Err(ClientError::Refused { status, .. }) => {
                assert_eq!(status, StatusCode::UNAUTHORIZED, "token {token:?}")
            }
            other => panic!("expected 401 for {token:?}, got {other:?}"),
        }
    }
    let key = PendingKey::generate(&id("orders")).expect("key");
    match post_csr(&cp, "", &key).await {
        Err(ClientError::Refused { status, .. }) => assert_eq!(status, StatusCode::UNAUTHORIZED),
        other => panic!("expected 401, got {other:?}"),
    }
    // The operator may issue for any service of the trust domain (tooling, debugging).
    let body = post_csr(&cp, &op, &key).await.expect("operator issues");
    let answer: CertificateAnswer = serde_json::from_slice(&body).expect("JSON");
    assert_eq!(answer.spiffe_id, id("orders").to_string());
    cp.stop().await;
}

#[tokio::test]
async fn the_sidecar_renews_before_expiry_and_picks_up_a_rotated_root() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = control_plane(&dir, Duration::from_secs(2)).await;
    let token = cp.service_token("orders");
    let (workload, bundle, endpoint) = obtain(&cp, &token).await;
    let first = workload.current().expect("installed").not_after;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let task = tokio::spawn(client::renew_loop(
        endpoint,
        token.clone(),
        workload.clone(),
        bundle.clone(),
        stopped,
    ));

    // Certificates carry whole seconds: count distinct leaves, not distinct not_after.
    let serial = || {
        let c = workload.current().expect("a certificate");
        c.key.cert[0].as_ref().to_vec()
    };
    let mut seen = vec![serial()];
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline && seen.len() < 3 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = serial();
        if seen.last() != Some(&now) {
            seen.push(now);
        }
    }
    assert!(
        seen.len() >= 3,
        "at least two renewals within 4 s, saw {} certificates",
        seen.len() - 1
    );
    let latest = workload.current().expect("a certificate").not_after;
    assert!(
        latest > first,
        "not_after moves forward: {first:?} → {latest:?}"
    );

    // A root rotation reaches the sidecar at its renewals: a staged root joins its bundle
    // while the old root still signs; once activated, its own certificate chains to the new
    // root, and its bundle trusts a peer certified by the new root.
    cp.stage_ca_root().expect("stage");
    assert_eq!(
        certs(&cp.bundle()).len(),
        2,
        "old and staged roots during the overlap"
    );
    let deadline = Instant::now() + Duration::from_secs(4);
    while bundle.root_count() < 2 {
        assert!(
            Instant::now() < deadline,
            "the staged root never reached the sidecar"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        chains_to(
            &workload.current().expect("cert").key.cert,
            &pem_of(&certs(&cp.bundle())[0])
        )
        .is_ok(),
        "still signed by the old root while the new one is only staged"
    );
    cp.activate_ca_root().expect("activate");
    let deadline = Instant::now() + Duration::from_secs(4);
    while certs(&cp.bundle())[..1]
        .iter()
        .any(|old| chains_to(&workload.current().expect("cert").key.cert, &pem_of(old)).is_ok())
    {
        assert!(
            Instant::now() < deadline,
            "no certificate from the new root within 4 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let peer_token = cp.service_token("payments");
    let (peer, peer_bundle, _) = obtain(&cp, &peer_token).await;
    let caller = handshake(
        workload.clone(),
        bundle.clone(),
        peer.clone(),
        peer_bundle.clone(),
    )
    .await
    .expect("the sidecar's bundle trusts the new root");
    assert_eq!(caller, id("payments"));

    let _ = stop.send(true);
    tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("the loop stops on shutdown")
        .expect("no panic");
    cp.stop().await;
}

#[tokio::test]
async fn obtain_waits_for_the_control_plane_then_gives_up_clearly() {
    // A port nobody listens on: unreachable, retried, then a clear error.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    drop(listener);
    let started = Instant::now();
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = control_plane(&dir, Duration::from_secs(3600)).await;
    let bundle = Arc::new(TrustBundle::from_pem(&cp.bundle()).expect("bundle"));
    let nowhere = Endpoint::new(addr, bundle.clone()).expect("endpoint");
    let err = client::obtain(&nowhere, &bundle, "orders.00", Duration::from_secs(1))
        .await
        .expect_err("nobody is there");
    assert!(
        matches!(err, IdentityError::GaveUp { .. }),
        "gave up after retrying: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(3));
    assert!(err.to_string().contains("unreachable"), "{err}");

    // A refusal is final at once: a wrong token does not wait out the patience.
    let started = Instant::now();
    let err = client::obtain(
        &cp.endpoint(),
        &bundle,
        "orders.00",
        Duration::from_secs(30),
    )
    .await
    .expect_err("bad token");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(err.to_string().contains("401"), "{err}");
    cp.stop().await;
}

#[tokio::test]
async fn the_control_api_speaks_only_tls_and_clients_check_whom_they_reach() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = control_plane(&dir, Duration::from_secs(3600)).await;
    let op = cp.operator_token().to_string();
    call(&cp.endpoint(), &op, Method::GET, "/v1/status", Bytes::new())
        .await
        .expect("a client trusting the mesh's bundle gets through");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("bundle.pem")).expect("bundle.pem"),
        cp.bundle(),
        "the public bundle is published in the data directory"
    );

    // Plaintext HTTP gets no answer, and a token sent that way reaches no handler.
    let mut plain = tokio::net::TcpStream::connect(cp.addr)
        .await
        .expect("connect");
    plain
        .write_all(
            format!("GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {op}\r\n\r\n")
                .as_bytes(),
        )
        .await
        .expect("write");
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), plain.read_to_end(&mut got)).await;
    assert!(
        !got.starts_with(b"HTTP/"),
        "plaintext answered: {:?}",
        String::from_utf8_lossy(&got)
    );

    // A client trusting another mesh's roots refuses this control plane.
    let other_dir = tempfile::tempdir().expect("tempdir");
    let other = control_plane(&other_dir, Duration::from_secs(3600)).await;
    let foreign_roots = Arc::new(TrustBundle::from_pem(&other.bundle()).expect("bundle"));
    let foreign = Endpoint::new(cp.addr, foreign_roots).expect("endpoint");
    match call(&foreign, &op, Method::GET, "/v1/status", Bytes::new()).await {
        Err(ClientError::Unreachable(e)) => assert!(e.contains("UnknownIssuer"), "{e}"),
        other => panic!("expected a refused handshake, got {other:?}"),
    }
    other.stop().await;

    // A workload's certificate chains to the same roots but cannot pose as the control plane.
    let (payments, bundle, _) = obtain(&cp, &cp.service_token("payments")).await;
    let impostor = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let impostor_addr = impostor.local_addr().expect("addr");
    let acceptor = tokio_rustls::TlsAcceptor::from(
        tls::control_server_config(payments).expect("server config"),
    );
    tokio::spawn(async move {
        if let Ok((tcp, _)) = impostor.accept().await {
            let _ = acceptor.accept(tcp).await;
        }
    });
    let fooled = Endpoint::new(impostor_addr, bundle).expect("endpoint");
    match call(&fooled, &op, Method::GET, "/v1/status", Bytes::new()).await {
        Err(ClientError::Unreachable(e)) => {
            assert!(e.contains("ns/weft-system/sa/weft-control"), "{e}");
            assert!(e.contains("sa/payments"), "{e}");
        }
        other => panic!("expected the impostor refused, got {other:?}"),
    }
    cp.stop().await;
}

#[tokio::test]
async fn identities_name_their_namespace_and_never_the_control_planes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cp = control_plane(&dir, Duration::from_secs(3600)).await;
    // A service token for a key in namespace shop gets shop's identity.
    let token = cp.service_token("payments.shop");
    let told = client::identity(&cp.endpoint(), &token)
        .await
        .expect("identity");
    assert_eq!(told.to_string(), "spiffe://weft.local/ns/shop/sa/payments");
    let key = PendingKey::generate(&told).expect("key");
    let answer: CertificateAnswer =
        serde_json::from_slice(&post_csr(&cp, &token, &key).await.expect("certificate"))
            .expect("answer JSON");
    assert_eq!(answer.spiffe_id, "spiffe://weft.local/ns/shop/sa/payments");
    // The operator gets the namespace its CSR names, but never the control plane's own.
    let op = cp.operator_token().to_string();
    let other = SpiffeId::new("weft.local", "billing", "ledger").expect("id");
    let key = PendingKey::generate(&other).expect("key");
    let answer: CertificateAnswer =
        serde_json::from_slice(&post_csr(&cp, &op, &key).await.expect("certificate"))
            .expect("answer JSON");
    assert_eq!(answer.spiffe_id, "spiffe://weft.local/ns/billing/sa/ledger");
    let control = SpiffeId::new("weft.local", "weft-system", "weft-control").expect("id");
    let key = PendingKey::generate(&control).expect("key");
    match post_csr(&cp, &op, &key).await {
        Err(ClientError::Refused { status, body }) => {
            assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
            assert!(body.contains("weft-system"), "{body}");
        }
        other => panic!("signed the control plane's identity: {other:?}"),
    }
    cp.stop().await;
}
