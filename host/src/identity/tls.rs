//! rustls configurations for mTLS between sidecars: TLS 1.3 only, ALPN `h2` or `http/1.1` (the
//! app's protocol), the `ring` provider passed to every builder (no process-wide default is
//! assumed or installed).
//!
//! Certificates are read per handshake from the [`Workload`]'s `ArcSwap` and roots from the
//! [`TrustBundle`]'s, so a rotated certificate or bundle takes effect on the next handshake
//! without rebuilding configs. Session resumption is off on both sides: a resumed session
//! skips certificate verification, which would let a connection outlive a retired root or an
//! expired certificate; pooled HTTP/2 connections amortise full handshakes instead.

use super::spiffe::SpiffeId;
use super::workload::Workload;
use arc_swap::ArcSwap;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, CommonState, DigitallySignedStruct, DistinguishedName,
    OtherError, RootCertStore, ServerConfig, SignatureScheme,
};
use std::sync::{Arc, OnceLock};

/// The ALPN protocol sidecars speak to each other for calls an app makes over HTTP/2.
pub const ALPN_H2: &[u8] = b"h2";

/// The ALPN protocol sidecars speak to each other for calls an app makes over HTTP/1.1.
pub const ALPN_HTTP1: &[u8] = b"http/1.1";

/// Why a TLS config or bundle could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The trust bundle is not PEM certificates, is empty, or holds an unusable root.
    #[error("trust bundle: {0}")]
    Bundle(String),
    /// rustls refused the configuration.
    #[error("TLS config: {0}")]
    Config(#[from] rustls::Error),
}

/// Inbound peer authentication, as Istio's `PeerAuthentication` modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PeerAuthMode {
    /// Callers must present a certificate chaining to the bundle.
    Strict,
    /// Callers may present one; without one they have no identity (and plaintext is accepted
    /// by the listener, see [`looks_like_tls`]).
    Permissive,
}

/// The ring provider with TLS 1.3 suites only, shared by every config.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut p = rustls::crypto::ring::default_provider();
            p.cipher_suites
                .retain(|s| s.version() == &rustls::version::TLS13);
            Arc::new(p)
        })
        .clone()
}

/// Whether a connection's first byte starts a TLS handshake (a handshake record, 0x16), for a
/// PERMISSIVE listener deciding between TLS and plaintext.
pub fn looks_like_tls(first: u8) -> bool {
    first == 0x16
}

/// The roots a workload trusts, replaceable while configs built on it are in use.
#[derive(Debug)]
pub struct TrustBundle {
    state: ArcSwap<BundleState>,
}

#[derive(Debug)]
struct BundleState {
    roots: Arc<RootCertStore>,
    // Built once per bundle, not per handshake.
    clients: Arc<dyn ClientCertVerifier>,
    /// The trust domain the roots name (all must agree), if any does.
    trust_domain: Option<String>,
}

impl TrustBundle {
    /// A bundle from PEM roots (the CA's `bundle()`).
    pub fn from_pem(pem: &str) -> Result<TrustBundle, TlsError> {
        Ok(TrustBundle {
            state: ArcSwap::from_pointee(bundle_state(pem)?),
        })
    }

    /// Replaces the roots; handshakes from now on use the new ones. Roots for another trust
    /// domain than the current ones are refused: a bundle vouches for one mesh.
    pub fn update(&self, pem: &str) -> Result<(), TlsError> {
        let next = bundle_state(pem)?;
        if let (Some(now), Some(new)) = (&self.state.load().trust_domain, &next.trust_domain)
            && now != new
        {
            return Err(TlsError::Bundle(format!(
                "the new roots are for trust domain {new}, the current ones for {now}"
            )));
        }
        self.state.store(Arc::new(next));
        Ok(())
    }

    /// The trust domain its roots vouch for: the one they name, or the default for roots that
    /// name none.
    pub fn trust_domain(&self) -> String {
        self.state
            .load()
            .trust_domain
            .clone()
            .unwrap_or_else(|| super::spiffe::DEFAULT_TRUST_DOMAIN.to_owned())
    }

    /// How many roots it holds (two during a rotation).
    pub fn root_count(&self) -> usize {
        self.state.load().roots.len()
    }

    /// Whether `chain` (leaf first) chains to one of these roots now.
    pub fn verify_chain(&self, chain: &[CertificateDer<'_>]) -> Result<(), rustls::Error> {
        let (leaf, intermediates) = chain
            .split_first()
            .ok_or(rustls::Error::NoCertificatesPresented)?;
        let cert = ParsedCertificate::try_from(leaf)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.state.load().roots,
            intermediates,
            UnixTime::now(),
            provider().signature_verification_algorithms.all,
        )
    }
}

fn bundle_state(pem: &str) -> Result<BundleState, TlsError> {
    let mut roots = RootCertStore::empty();
    let mut trust_domain: Option<String> = None;
    for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        let cert = cert.map_err(|e| TlsError::Bundle(e.to_string()))?;
        if let Some(named) = super::spiffe::trust_domain_of_root(&cert) {
            match &trust_domain {
                Some(td) if *td != named => {
                    return Err(TlsError::Bundle(format!(
                        "its roots name two trust domains, {td} and {named}"
                    )));
                }
                _ => trust_domain = Some(named),
            }
        }
        roots
            .add(cert)
            .map_err(|e| TlsError::Bundle(e.to_string()))?;
    }
    if roots.is_empty() {
        return Err(TlsError::Bundle("no certificate in the PEM".into()));
    }
    let roots = Arc::new(roots);
    // Whether a certificate is required is decided by the wrapper (per mode), not here.
    let clients = WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Bundle(e.to_string()))?;
    Ok(BundleState {
        roots,
        clients,
        trust_domain,
    })
}

/// The inbound listener's config: presents the workload's current certificate, verifies a
/// caller's against the bundle (required in `Strict`, optional in `Permissive`).
pub fn server_config(
    workload: Arc<Workload>,
    bundle: Arc<TrustBundle>,
    mode: PeerAuthMode,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = MeshClientVerifier {
        bundle,
        mandatory: mode == PeerAuthMode::Strict,
        trust_domain: workload.id().trust_domain().to_owned(),
    };
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(Arc::new(CurrentCert(workload)));
    // The inbound listener reads the protocol from the first bytes either way.
    config.alpn_protocols = vec![ALPN_H2.to_vec(), ALPN_HTTP1.to_vec()];
    config.session_storage = Arc::new(rustls::server::NoServerSessionStorage {});
    config.send_tls13_tickets = 0;
    Ok(Arc::new(config))
}

/// The outbound config for calls to `expected_server`: presents the workload's current
/// certificate and accepts only a server chaining to the bundle whose SPIFFE ID is
/// `expected_server` (DNS names are ignored: mesh identities are URI SANs).
pub fn client_config(
    workload: Arc<Workload>,
    bundle: Arc<TrustBundle>,
    expected_server: SpiffeId,
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = MeshServerVerifier {
        bundle,
        expected: Expected::Exactly(expected_server),
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(CurrentCert(workload)));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.resumption = Resumption::disabled();
    // The server name means nothing to the mesh; don't announce it in clear text.
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// The control plane's own identity's namespace and service: `spiffe://<td>/ns/weft-system/sa/weft-control`.
/// Workload identities live in other namespaces, so no sidecar can be issued it.
pub const CONTROL_NAMESPACE: &str = "weft-system";
/// See [`CONTROL_NAMESPACE`].
pub const CONTROL_SERVICE: &str = "weft-control";

/// The ALPN protocols the control plane's API speaks (the CLI and sidecars use HTTP/1.1).
const CONTROL_ALPN: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// The control plane's API listener: presents its certificate (signed by the mesh CA for the
/// control identity); callers authenticate with bearer tokens, not certificates.
pub fn control_server_config(control: Arc<Workload>) -> Result<Arc<ServerConfig>, TlsError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(Arc::new(CurrentCert(control)));
    config.alpn_protocols = CONTROL_ALPN.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client of the control plane's API: accepts only a server chaining to `bundle` whose
/// SPIFFE ID is the control identity in the trust domain the bundle's roots name.
/// A sidecar's certificate chains to the same roots, so the identity check is what keeps a
/// workload from posing as the control plane.
pub fn control_client_config(bundle: Arc<TrustBundle>) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = MeshServerVerifier {
        bundle,
        expected: Expected::ControlPlane,
    };
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.enable_sni = false;
    Ok(Arc::new(config))
}

/// The name to pass to `TlsConnector::connect`: the API wants one, but verification ignores
/// it (identities are SPIFFE IDs) and SNI is off, so any fixed name does.
pub fn server_name() -> ServerName<'static> {
    ServerName::IpAddress(std::net::Ipv4Addr::UNSPECIFIED.into())
}

/// The peer's SPIFFE ID on an established connection (either side); `None` if it presented no
/// certificate (PERMISSIVE) or, which the verifiers prevent, one without a SPIFFE ID.
pub fn peer_identity(conn: &CommonState) -> Option<SpiffeId> {
    let leaf = conn.peer_certificates()?.first()?;
    SpiffeId::from_cert_der(leaf).ok()
}

/// The caller's SPIFFE ID on an accepted inbound stream.
pub fn caller_identity<IO>(stream: &tokio_rustls::server::TlsStream<IO>) -> Option<SpiffeId> {
    peer_identity(stream.get_ref().1)
}

/// Presents the workload's current certificate, read at each handshake.
#[derive(Debug)]
struct CurrentCert(Arc<Workload>);

impl ResolvesServerCert for CurrentCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| c.key.clone())
    }
}

impl ResolvesClientCert for CurrentCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        self.0.current().map(|c| c.key.clone())
    }

    fn has_certs(&self) -> bool {
        self.0.current().is_some()
    }
}

fn invalid(e: impl std::error::Error + Send + Sync + 'static) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(e))))
}

/// The server's identity is not the destination's.
#[derive(Debug, thiserror::Error)]
#[error("server is {presented}, expected {expected}")]
struct WrongServer {
    expected: String,
    presented: String,
}

/// The peer's identity is in another trust domain.
#[derive(Debug, thiserror::Error)]
#[error("{presented} is not in trust domain {ours}")]
struct ForeignDomain {
    ours: String,
    presented: String,
}

/// Whom a client expects the server to be.
#[derive(Debug)]
enum Expected {
    /// A destination service's identity.
    Exactly(SpiffeId),
    /// The control plane (see [`control_client_config`]).
    ControlPlane,
}

impl Expected {
    /// Whether `presented` is who is expected; the control plane must be in the trust domain
    /// `bundle` vouches for.
    fn admits(&self, presented: &SpiffeId, bundle: &TrustBundle) -> bool {
        match self {
            Expected::Exactly(id) => id == presented,
            Expected::ControlPlane => {
                presented.namespace() == CONTROL_NAMESPACE
                    && presented.service() == CONTROL_SERVICE
                    && presented.trust_domain() == bundle.trust_domain()
            }
        }
    }

    fn describe(&self, bundle: &TrustBundle) -> String {
        match self {
            Expected::Exactly(id) => id.to_string(),
            Expected::ControlPlane => format!(
                "spiffe://{}/ns/{CONTROL_NAMESPACE}/sa/{CONTROL_SERVICE}",
                bundle.trust_domain()
            ),
        }
    }
}

/// Verifies callers against the current bundle and requires their certificate to carry a
/// SPIFFE ID in this workload's trust domain: a certificate for another domain is refused even
/// when it chains to a trusted root.
#[derive(Debug)]
struct MeshClientVerifier {
    bundle: Arc<TrustBundle>,
    mandatory: bool,
    trust_domain: String,
}

impl ClientCertVerifier for MeshClientVerifier {
    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Sidecars hold one certificate each; hints would only advertise the roots.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.bundle
            .state
            .load()
            .clients
            .verify_client_cert(end_entity, intermediates, now)?;
        let presented = SpiffeId::from_cert_der(end_entity).map_err(invalid)?;
        if presented.trust_domain() != self.trust_domain {
            return Err(invalid(ForeignDomain {
                ours: self.trust_domain.clone(),
                presented: presented.to_string(),
            }));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures::tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures::tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signatures::schemes()
    }
}

/// Verifies the server's chain against the current bundle (webpki, no name check) and that
/// its SPIFFE ID is the one expected.
#[derive(Debug)]
struct MeshServerVerifier {
    bundle: Arc<TrustBundle>,
    expected: Expected,
}

impl ServerCertVerifier for MeshServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let cert = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &cert,
            &self.bundle.state.load().roots,
            intermediates,
            now,
            provider().signature_verification_algorithms.all,
        )?;
        let presented = SpiffeId::from_cert_der(end_entity).map_err(invalid)?;
        if !self.expected.admits(&presented, &self.bundle) {
            return Err(invalid(WrongServer {
                expected: self.expected.describe(&self.bundle),
                presented: presented.to_string(),
            }));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures::tls12(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        signatures::tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        signatures::schemes()
    }
}

/// Handshake signature checks with our provider's algorithms, shared by both verifiers.
/// Handshake signature checks with the ring provider's algorithms, for every verifier of ours
/// (the mesh's, and those of TLS a sidecar originates).
pub(crate) mod signatures {
    use super::provider;
    use rustls::DigitallySignedStruct;
    use rustls::SignatureScheme;
    use rustls::client::danger::HandshakeSignatureValid;
    use rustls::pki_types::CertificateDer;

    pub(crate) fn tls12(
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    pub(crate) fn tls13(
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &provider().signature_verification_algorithms,
        )
    }

    pub(crate) fn schemes() -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
