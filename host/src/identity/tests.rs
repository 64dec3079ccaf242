//! Real handshakes over loopback TCP between workloads the CA issued certificates to.

use super::*;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::client::TlsStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

const HOUR: Duration = Duration::from_secs(3600);

fn id(service: &str) -> SpiffeId {
    SpiffeId::new("weft.local", "default", service).expect("valid id")
}

fn new_ca() -> (tempfile::TempDir, Ca) {
    new_ca_at(system_clock())
}

fn new_ca_at(clock: Clock) -> (tempfile::TempDir, Ca) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::open(&dir.path().join("ca"), "weft.local", clock).expect("ca");
    (dir, ca)
}

/// Issues `workload` a fresh certificate from `ca`, as a sidecar would at start or renewal.
fn issue(ca: &Ca, workload: &Workload, lifetime: Duration) {
    let pending = PendingKey::generate(workload.id()).expect("key");
    let issued = ca
        .sign_csr(pending.csr_pem(), workload.id(), lifetime)
        .expect("signed");
    workload
        .install(pending, &issued.chain_pem)
        .expect("installed");
}

fn workload(ca: &Ca, service: &str) -> Arc<Workload> {
    let w = Workload::new(id(service));
    issue(ca, &w, HOUR);
    Arc::new(w)
}

fn bundle(ca: &Ca) -> Arc<TrustBundle> {
    Arc::new(TrustBundle::from_pem(&ca.bundle()).expect("bundle"))
}

/// What the server saw of one connection: the caller's identity, or the handshake error.
type Accepted = Result<Option<SpiffeId>, String>;

/// An echo server; reports each connection's outcome on the channel.
async fn serve(
    config: Arc<rustls::ServerConfig>,
) -> (SocketAddr, mpsc::UnboundedReceiver<Accepted>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = mpsc::unbounded_channel();
    let acceptor = TlsAcceptor::from(config);
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                let _ = tx.send(Ok(caller_identity(&tls)));
                let mut buf = [0u8; 4];
                while tls.read_exact(&mut buf).await.is_ok() {
                    if tls.write_all(&buf).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    (addr, rx)
}

async fn ping(tls: &mut TlsStream<TcpStream>) -> Result<(), String> {
    tls.write_all(b"ping").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 4];
    tls.read_exact(&mut buf).await.map_err(|e| e.to_string())?;
    if &buf == b"ping" {
        Ok(())
    } else {
        Err(format!("echo {buf:?}"))
    }
}

/// Connects and round-trips once: in TLS 1.3 the client finishes its handshake before the
/// server has checked its certificate, so a refusal shows on the first read.
async fn connect(
    config: Arc<rustls::ClientConfig>,
    addr: SocketAddr,
) -> Result<TlsStream<TcpStream>, String> {
    let attempt = async {
        let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
        let mut tls = TlsConnector::from(config)
            .connect(server_name(), tcp)
            .await
            .map_err(|e| e.to_string())?;
        ping(&mut tls).await?;
        Ok(tls)
    };
    tokio::time::timeout(Duration::from_secs(10), attempt)
        .await
        .map_err(|_| "timed out".to_owned())?
}

async fn accepted(rx: &mut mpsc::UnboundedReceiver<Accepted>) -> Accepted {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("server reported")
        .expect("server running")
}

fn leaf(tls: &TlsStream<TcpStream>) -> Vec<u8> {
    tls.get_ref().1.peer_certificates().expect("certs")[0].to_vec()
}

#[tokio::test]
async fn a_good_pair_handshakes_and_each_side_sees_the_other() {
    let (_dir, ca) = new_ca();
    let (orders, payments, roots) = (
        workload(&ca, "orders"),
        workload(&ca, "payments"),
        bundle(&ca),
    );
    let server = server_config(payments, roots.clone(), PeerAuthMode::Strict).expect("server");
    let (addr, mut rx) = serve(server).await;
    let client = client_config(orders, roots, id("payments")).expect("client");
    let tls = connect(client, addr).await.expect("connected");
    assert_eq!(peer_identity(tls.get_ref().1), Some(id("payments")));
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    assert_eq!(
        tls.get_ref().1.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(accepted(&mut rx).await, Ok(Some(id("orders"))));
}

#[tokio::test]
async fn a_client_certificate_from_another_ca_is_refused() {
    let (_d1, ca) = new_ca();
    let (_d2, other) = new_ca();
    let server = server_config(workload(&ca, "payments"), bundle(&ca), PeerAuthMode::Strict)
        .expect("server");
    let (addr, mut rx) = serve(server).await;
    // The intruder trusts the real CA (so it would accept the server) but has a foreign cert.
    let client =
        client_config(workload(&other, "orders"), bundle(&ca), id("payments")).expect("client");
    assert!(connect(client, addr).await.is_err());
    let err = accepted(&mut rx).await.expect_err("refused");
    assert!(err.contains("UnknownIssuer"), "{err}");
}

#[tokio::test]
async fn expired_certificates_are_refused_both_ways() {
    let (dir, ca) = new_ca();
    // The same root, with a clock two days back: what it issues for an hour has expired.
    let root = std::fs::read_to_string(dir.path().join("ca/root.pem")).expect("root.pem");
    let two_days_ago = SystemTime::now() - 48 * HOUR;
    let past =
        Ca::from_pem(&root, &root, "weft.local", Arc::new(move || two_days_ago)).expect("ca");
    let expired_client = Arc::new(Workload::new(id("orders")));
    issue(&past, &expired_client, HOUR);
    let server = server_config(workload(&ca, "payments"), bundle(&ca), PeerAuthMode::Strict)
        .expect("server");
    let (addr, mut rx) = serve(server).await;
    let client = client_config(expired_client, bundle(&ca), id("payments")).expect("client");
    assert!(connect(client, addr).await.is_err());
    let err = accepted(&mut rx).await.expect_err("refused");
    assert!(err.contains("certificate expired"), "{err}");

    let expired_server = Arc::new(Workload::new(id("payments")));
    issue(&past, &expired_server, HOUR);
    let server = server_config(expired_server, bundle(&ca), PeerAuthMode::Strict).expect("server");
    let (addr, _rx) = serve(server).await;
    let client =
        client_config(workload(&ca, "orders"), bundle(&ca), id("payments")).expect("client");
    let err = connect(client, addr).await.expect_err("refused");
    assert!(err.contains("certificate expired"), "{err}");
}

#[tokio::test]
async fn a_server_that_is_not_the_destination_is_refused() {
    let (_dir, ca) = new_ca();
    let roots = bundle(&ca);
    let server = server_config(
        workload(&ca, "inventory"),
        roots.clone(),
        PeerAuthMode::Strict,
    )
    .expect("server");
    let (addr, _rx) = serve(server).await;
    let client = client_config(workload(&ca, "orders"), roots, id("payments")).expect("client");
    let err = connect(client, addr).await.expect_err("refused");
    assert!(
        err.contains("WrongServer") && err.contains("/sa/inventory"),
        "{err}"
    );
}

#[tokio::test]
async fn strict_refuses_a_client_without_a_certificate() {
    let (_dir, ca) = new_ca();
    let roots = bundle(&ca);
    let server = server_config(
        workload(&ca, "payments"),
        roots.clone(),
        PeerAuthMode::Strict,
    )
    .expect("server");
    let (addr, mut rx) = serve(server).await;
    let anonymous = Arc::new(Workload::new(id("orders")));
    let client = client_config(anonymous, roots, id("payments")).expect("client");
    assert!(connect(client, addr).await.is_err());
    let err = accepted(&mut rx).await.expect_err("refused");
    assert!(err.contains("peer sent no certificates"), "{err}");
}

#[tokio::test]
async fn permissive_accepts_a_client_without_a_certificate_and_reports_no_identity() {
    let (_dir, ca) = new_ca();
    let roots = bundle(&ca);
    let server = server_config(
        workload(&ca, "payments"),
        roots.clone(),
        PeerAuthMode::Permissive,
    )
    .expect("server");
    let (addr, mut rx) = serve(server).await;
    let anonymous = Arc::new(Workload::new(id("orders")));
    let client = client_config(anonymous, roots.clone(), id("payments")).expect("client");
    connect(client, addr).await.expect("accepted");
    assert_eq!(accepted(&mut rx).await, Ok(None));
    // A caller with a certificate is still identified, and one from another CA still refused.
    let client =
        client_config(workload(&ca, "orders"), roots.clone(), id("payments")).expect("client");
    connect(client, addr).await.expect("accepted");
    assert_eq!(accepted(&mut rx).await, Ok(Some(id("orders"))));
    let (_d2, other) = new_ca();
    let client = client_config(workload(&other, "orders"), roots, id("payments")).expect("client");
    assert!(connect(client, addr).await.is_err());
    assert!(accepted(&mut rx).await.is_err());

    assert!(looks_like_tls(0x16));
    assert!(!looks_like_tls(b'G'));
}

#[test]
fn the_ca_signs_only_the_proven_identity() {
    let (_dir, ca) = new_ca();
    let pending = PendingKey::generate(&id("payments")).expect("key");
    // The caller proved it is `orders` but asks for `payments`.
    let err = ca
        .sign_csr(pending.csr_pem(), &id("orders"), HOUR)
        .expect_err("refused");
    assert!(
        matches!(&err, CaError::WrongIdentity { requested, .. } if requested.ends_with("/sa/payments")),
        "{err}"
    );

    // A CSR naming a DNS name besides the identity.
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec!["payments.example".to_owned()]).expect("params");
    params.subject_alt_names.push(rcgen::SanType::URI(
        id("orders").to_string().try_into().expect("ia5"),
    ));
    let csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    let err = ca.sign_csr(&csr, &id("orders"), HOUR).expect_err("refused");
    assert!(
        err.to_string().contains("DNS name \"payments.example\""),
        "{err}"
    );

    // No identity, garbage, zero lifetime.
    let mut params = rcgen::CertificateParams::default();
    params.subject_alt_names.clear();
    let csr = params
        .serialize_request(&key)
        .expect("csr")
        .pem()
        .expect("pem");
    assert!(matches!(
        ca.sign_csr(&csr, &id("orders"), HOUR),
        Err(CaError::NoIdentity)
    ));
    assert!(matches!(
        ca.sign_csr("not a csr", &id("orders"), HOUR),
        Err(CaError::Csr(_))
    ));
    let pending = PendingKey::generate(&id("orders")).expect("key");
    assert!(matches!(
        ca.sign_csr(pending.csr_pem(), &id("orders"), Duration::ZERO),
        Err(CaError::Validity(_))
    ));
    // And the right one is signed for the requested lifetime.
    let issued = ca
        .sign_csr(pending.csr_pem(), &id("orders"), HOUR)
        .expect("signed");
    let life = issued
        .not_after
        .duration_since(issued.not_before)
        .expect("ordered");
    assert!(
        life > HOUR && life <= HOUR + Duration::from_secs(6 * 60),
        "{life:?}"
    );
}

#[test]
fn a_workload_refuses_a_certificate_for_someone_else_or_another_key() {
    let (_dir, ca) = new_ca();
    let orders = Workload::new(id("orders"));
    let pending = PendingKey::generate(&id("payments")).expect("key");
    let issued = ca
        .sign_csr(pending.csr_pem(), &id("payments"), HOUR)
        .expect("signed");
    assert!(matches!(
        orders.install(pending, &issued.chain_pem),
        Err(WorkloadError::WrongIdentity { .. })
    ));
    let first = PendingKey::generate(&id("orders")).expect("key");
    let second = PendingKey::generate(&id("orders")).expect("key");
    let issued = ca
        .sign_csr(first.csr_pem(), &id("orders"), HOUR)
        .expect("signed");
    assert!(matches!(
        orders.install(second, &issued.chain_pem),
        Err(WorkloadError::KeyMismatch(_))
    ));
    assert!(orders.current().is_none());
    orders.install(first, &issued.chain_pem).expect("installed");
    let renew = orders.renew_at().expect("has a cert");
    let current = orders.current().expect("cert");
    assert!(renew > current.not_before && renew < current.not_after);
}

#[tokio::test]
async fn a_rotated_certificate_serves_new_handshakes_while_old_connections_keep_working() {
    let (_dir, ca) = new_ca();
    let roots = bundle(&ca);
    let payments = workload(&ca, "payments");
    let server =
        server_config(payments.clone(), roots.clone(), PeerAuthMode::Strict).expect("server");
    let (addr, mut rx) = serve(server).await;
    let client = client_config(workload(&ca, "orders"), roots, id("payments")).expect("client");

    let mut before = connect(client.clone(), addr).await.expect("connected");
    accepted(&mut rx).await.expect("accepted");
    let old_leaf = leaf(&before);

    issue(&ca, &payments, HOUR);
    let new_leaf = payments.current().expect("cert").key.cert[0].to_vec();
    assert_ne!(old_leaf, new_leaf);

    let after = connect(client, addr).await.expect("connected");
    accepted(&mut rx).await.expect("accepted");
    assert_eq!(leaf(&after), new_leaf);
    ping(&mut before)
        .await
        .expect("the old connection still works");
    assert_eq!(leaf(&before), old_leaf);
}

#[tokio::test]
async fn root_rotation_overlaps_then_retires_the_old_root() {
    let (_dir, mut ca) = new_ca();
    let orders = workload(&ca, "orders"); // signed by the old root
    ca.rotate_root().expect("rotated");
    let payments = workload(&ca, "payments"); // signed by the new root
    assert_eq!(ca.bundle().matches("BEGIN CERTIFICATE").count(), 2);

    // Each side holds the overlap bundle; each trusts the other's root.
    let (orders_roots, payments_roots) = (bundle(&ca), bundle(&ca));
    let server = server_config(
        payments.clone(),
        payments_roots.clone(),
        PeerAuthMode::Strict,
    )
    .expect("server");
    let (addr, mut rx) = serve(server).await;
    let client =
        client_config(orders.clone(), orders_roots.clone(), id("payments")).expect("client");
    connect(client.clone(), addr).await.expect("old → new");
    assert_eq!(accepted(&mut rx).await, Ok(Some(id("orders"))));
    let reverse =
        server_config(orders.clone(), orders_roots.clone(), PeerAuthMode::Strict).expect("server");
    let (reverse_addr, _rx) = serve(reverse).await;
    let reverse_client =
        client_config(payments, payments_roots.clone(), id("orders")).expect("client");
    connect(reverse_client, reverse_addr)
        .await
        .expect("new → old");

    // Retiring the old root: the bundle update reaches configs already built.
    ca.retire_old_roots().expect("retired");
    assert_eq!(ca.bundle().matches("BEGIN CERTIFICATE").count(), 1);
    payments_roots.update(&ca.bundle()).expect("updated");
    assert!(connect(client.clone(), addr).await.is_err());
    let err = accepted(&mut rx).await.expect_err("refused");
    assert!(err.contains("UnknownIssuer"), "{err}");

    // Re-issued from the new root, orders is welcome again.
    issue(&ca, &orders, HOUR);
    orders_roots.update(&ca.bundle()).expect("updated");
    connect(client, addr).await.expect("re-issued");
    assert_eq!(accepted(&mut rx).await, Ok(Some(id("orders"))));
}

#[test]
fn the_ca_persists_its_root_privately_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("ca");
    let mut ca = Ca::open(&ca_dir, "weft.local", system_clock()).expect("ca");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| {
            std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
        };
        assert_eq!(mode(&ca_dir), 0o700);
        assert_eq!(mode(&ca_dir.join("root.pem")), 0o600);
    }
    let first = ca.bundle();
    assert_eq!(
        Ca::open(&ca_dir, "weft.local", system_clock())
            .expect("reopen")
            .bundle(),
        first
    );

    ca.rotate_root().expect("rotated");
    let reopened = Ca::open(&ca_dir, "weft.local", system_clock()).expect("reopen");
    assert_eq!(reopened.bundle(), ca.bundle());
    assert!(reopened.bundle().starts_with(&first));
    // The reopened CA signs with the new root: its certificate verifies under the new root alone.
    let new_root_only = ca.bundle().replacen(&first, "", 1);
    let payments = workload(&reopened, "payments");
    let server = server_config(
        payments,
        Arc::new(TrustBundle::from_pem(&new_root_only).expect("bundle")),
        PeerAuthMode::Permissive,
    )
    .expect("server");
    let client = client_config(
        Arc::new(Workload::new(id("orders"))),
        Arc::new(TrustBundle::from_pem(&new_root_only).expect("bundle")),
        id("payments"),
    )
    .expect("client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (addr, _rx) = serve(server).await;
        connect(client, addr).await.expect("signed by the new root");
    });

    ca.retire_old_roots().expect("retired");
    let reopened = Ca::open(&ca_dir, "weft.local", system_clock()).expect("reopen");
    assert_eq!(reopened.bundle(), new_root_only);
}

#[test]
fn a_staged_root_is_trusted_before_it_signs_and_survives_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_dir = dir.path().join("ca");
    let mut ca = Ca::open(&ca_dir, "weft.local", system_clock()).expect("ca");
    let old = ca.bundle();
    let err = ca.activate_root().expect_err("nothing staged");
    assert!(err.to_string().contains("no staged root"), "{err}");

    ca.stage_root().expect("staged");
    assert!(ca.rotating());
    let staged = ca.bundle();
    assert!(staged.starts_with(&old));
    assert_eq!(staged.matches("BEGIN CERTIFICATE").count(), 2);
    let new_root_only = staged.replacen(&old, "", 1);
    // Still signed by the old root: a peer trusting only the old root accepts it.
    let only_old = TrustBundle::from_pem(&old).expect("bundle");
    let only_new = TrustBundle::from_pem(&new_root_only).expect("bundle");
    let chain = |ca: &Ca| {
        workload(ca, "payments")
            .current()
            .expect("cert")
            .key
            .cert
            .clone()
    };
    let verify = |roots: &TrustBundle, chain: &[rustls::pki_types::CertificateDer<'static>]| {
        roots.verify_chain(chain)
    };
    assert!(verify(&only_old, &chain(&ca)).is_ok());
    assert!(verify(&only_new, &chain(&ca)).is_err());

    let mut reopened = Ca::open(&ca_dir, "weft.local", system_clock()).expect("reopen");
    assert_eq!(
        reopened.bundle(),
        staged,
        "the staged root is kept across a restart"
    );
    reopened.activate_root().expect("activated");
    assert_eq!(reopened.bundle().matches("BEGIN CERTIFICATE").count(), 2);
    assert!(verify(&only_new, &chain(&reopened)).is_ok());
    assert!(verify(&only_old, &chain(&reopened)).is_err());
    reopened.retire_old_roots().expect("retired");
    assert!(!reopened.rotating());
    assert_eq!(
        Ca::open(&ca_dir, "weft.local", system_clock())
            .expect("reopen")
            .bundle(),
        new_root_only
    );
}

#[test]
fn an_operator_root_must_be_a_ca_and_match_its_key() {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params = rcgen::CertificateParams::default();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let root = params.self_signed(&key).expect("root");
    let ca = Ca::from_pem(
        &root.pem(),
        &key.serialize_pem(),
        "weft.local",
        system_clock(),
    )
    .expect("operator root");
    let w = Workload::new(id("orders"));
    issue(&ca, &w, HOUR);

    let other_key = rcgen::KeyPair::generate().expect("key");
    let err = Ca::from_pem(
        &root.pem(),
        &other_key.serialize_pem(),
        "weft.local",
        system_clock(),
    )
    .expect_err("mismatch");
    assert!(err.to_string().contains("does not belong"), "{err}");
    let leaf = rcgen::CertificateParams::default()
        .self_signed(&key)
        .expect("leaf");
    let err = Ca::from_pem(
        &leaf.pem(),
        &key.serialize_pem(),
        "weft.local",
        system_clock(),
    )
    .expect_err("not a CA");
    assert!(err.to_string().contains("not a CA"), "{err}");
}

/// A workload certificate for `forged`, signed with the key of the root in `ca_dir` (as
/// someone holding the CA's key, or a CA bug, could make): the trust-domain checks must hold
/// even against a chain that verifies.
fn forged(ca_dir: &std::path::Path, forged: &SpiffeId) -> Arc<Workload> {
    use rcgen::{CertificateParams, CertificateSigningRequestParams, Issuer, KeyPair, SanType};
    use rustls::pki_types::pem::PemObject;
    let root_pem = std::fs::read_to_string(ca_dir.join("root.pem")).expect("root");
    let root =
        rustls::pki_types::CertificateDer::from_pem_slice(root_pem.as_bytes()).expect("cert");
    let key_der =
        rustls::pki_types::PrivateKeyDer::from_pem_slice(root_pem.as_bytes()).expect("key");
    let key = KeyPair::try_from(&key_der).expect("key pair");
    let issuer = Issuer::from_ca_cert_der(&root, key).expect("issuer");
    let w = Workload::new(forged.clone());
    let pending = PendingKey::generate(forged).expect("key");
    let mut csr = CertificateSigningRequestParams::from_pem(pending.csr_pem()).expect("csr");
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(forged.to_string().try_into().expect("uri"))];
    csr.params = params;
    let cert = csr.signed_by(&issuer).expect("signed");
    w.install(pending, &cert.pem()).expect("installed");
    Arc::new(w)
}

#[tokio::test]
async fn an_identity_from_another_trust_domain_is_refused_though_the_mesh_root_signed_it() {
    let (dir, ca) = new_ca();
    let ca_dir = dir.path().join("ca");
    let roots = bundle(&ca);
    assert_eq!(
        roots.trust_domain(),
        "weft.local",
        "the root names its domain"
    );
    let server = server_config(
        workload(&ca, "payments"),
        roots.clone(),
        PeerAuthMode::Strict,
    )
    .expect("server");
    let (addr, mut rx) = serve(server).await;
    let evil = SpiffeId::new("evil.example", "default", "orders").expect("id");
    let client =
        client_config(forged(&ca_dir, &evil), roots.clone(), id("payments")).expect("client");
    assert!(connect(client, addr).await.is_err());
    let err = accepted(&mut rx).await.expect_err("refused");
    assert!(
        err.contains("ForeignDomain") && err.contains("evil.example"),
        "{err}"
    );

    // A control plane posing from another domain, with a chain that verifies: refused.
    let fake = SpiffeId::new("evil.example", CONTROL_NAMESPACE, CONTROL_SERVICE).expect("id");
    let (addr, _rx) = serve(control_server_config(forged(&ca_dir, &fake)).expect("server")).await;
    let client = control_client_config(roots.clone()).expect("client");
    let err = connect(client, addr).await.expect_err("refused");
    assert!(
        err.contains("spiffe://weft.local/ns/weft-system/sa/weft-control"),
        "{err}"
    );
    // The real one, from this domain, is accepted.
    let real = SpiffeId::new("weft.local", CONTROL_NAMESPACE, CONTROL_SERVICE).expect("id");
    let (addr, _rx) = serve(control_server_config(forged(&ca_dir, &real)).expect("server")).await;
    connect(control_client_config(roots).expect("client"), addr)
        .await
        .expect("accepted");
}

#[test]
fn a_ca_signs_and_trusts_only_its_own_trust_domain() {
    let (dir, ca) = new_ca();
    let evil = SpiffeId::new("evil.example", "default", "orders").expect("id");
    let pending = PendingKey::generate(&evil).expect("key");
    let err = ca
        .sign_csr(pending.csr_pem(), &evil, HOUR)
        .expect_err("foreign domain");
    assert!(matches!(err, CaError::ForeignTrustDomain { .. }), "{err}");
    // The same root opened for another domain: refused, naming both.
    let err = Ca::open(&dir.path().join("ca"), "other.example", system_clock())
        .expect_err("other domain");
    assert!(err.to_string().contains("weft.local"), "{err}");
    // A bundle never switches domains on update.
    let (_d2, other) = new_ca_for("other.example");
    let roots = bundle(&ca);
    let err = roots.update(&other.bundle()).expect_err("refused");
    assert!(err.to_string().contains("other.example"), "{err}");
    assert_eq!(roots.trust_domain(), "weft.local");
    let mixed = format!("{}{}", ca.bundle(), other.bundle());
    assert!(
        TrustBundle::from_pem(&mixed).is_err(),
        "two domains in one bundle"
    );
}

fn new_ca_for(trust_domain: &str) -> (tempfile::TempDir, Ca) {
    let dir = tempfile::tempdir().expect("tempdir");
    let ca = Ca::open(&dir.path().join("ca"), trust_domain, system_clock()).expect("ca");
    (dir, ca)
}
