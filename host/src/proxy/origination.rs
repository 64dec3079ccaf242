//! Calls to services outside the mesh (ServiceEntries): plain HTTP/1.1 to the endpoint, or TLS
//! the sidecar originates (a DestinationRule's `tls` mode `SIMPLE` or `MUTUAL`), as Envoy does
//! for Istio: the app speaks plain HTTP to `api.example.com`, its sidecar speaks HTTPS.
//!
//! An [`Origin`] is one TLS setting made ready: the client config built from the files it
//! names (read when a snapshot is applied, so a renewed certificate is taken at the next
//! snapshot), and keep-alive pools per server name. Origins are kept across snapshots while
//! their settings and files are unchanged, so a new snapshot keeps connections warm.
//!
//! Names are Istio's: the server name sent (SNI) is `sni`, else the host the call names (its
//! `Host`, without the port), as Istio's automatic SNI sets it; the server's certificate must
//! carry one of `subjectAltNames`, else that server name, and chain to `caCertificates`, else
//! to the operating system's trust store (`SSL_CERT_FILE`, else Debian's bundle);
//! `insecureSkipVerify` accepts any certificate.

use super::Inputs;
use super::body::ProxyBody;
use super::breaker::Breaker;
use super::h1_pool::{H1Pool, PeerError};
use super::pool::{CountingConnector, PeerStream, PoolStats};
use super::routes::Route;
use crate::identity::tls::signatures;
use crate::snapshot::OriginTls;
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;
use parking_lot::Mutex;
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A handshake with an outside server gets this long.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// At most this many server names get pools of their own per setting; a call naming another
/// fails to connect rather than grow the map without bound.
const MAX_SERVER_NAMES: usize = 64;

/// Sends `req` (its URI `http://<endpoint>/path`) to an endpoint of `route`, a service outside
/// the mesh: over the TLS its DestinationRule originates, else plain HTTP/1.1.
pub(super) async fn send(
    inputs: &Inputs,
    route: &Route,
    req: Request<ProxyBody>,
    breaker: Option<&Arc<Breaker>>,
) -> Result<Response<Incoming>, PeerError> {
    let mut req = req;
    *req.version_mut() = http::Version::HTTP_11;
    // The mesh's own headers stay inside it, whichever route led here.
    let h = req.headers_mut();
    h.remove(super::workload::PEER_METADATA);
    h.remove(super::headers::TARGET_PORT);
    match &route.origin {
        Some(origin) => origin.send(req, breaker).await,
        None => inputs.external.request_within(req, breaker).await,
    }
}

/// One TLS setting, ready: its client config and its pools by server name.
pub struct Origin {
    config: Arc<ClientConfig>,
    tcp: HttpConnector,
    stats: PoolStats,
    /// With `sni` given, the one pool every call uses, made with the origin.
    fixed: Option<Arc<OriginPool>>,
    /// Else pools by the call's host, lower-case, made at a host's first call.
    pools: Mutex<HashMap<Box<str>, Arc<OriginPool>>>,
}

type OriginPool = H1Pool<CountingConnector<OriginConnector>>;

impl Origin {
    async fn send(
        &self,
        req: Request<ProxyBody>,
        breaker: Option<&Arc<Breaker>>,
    ) -> Result<Response<Incoming>, PeerError> {
        let pool = self.pool_for(&req).map_err(PeerError::Connect)?;
        pool.request_within(req, breaker).await
    }

    /// A pool whose connections send `name`.
    fn pool(&self, name: ServerName<'static>) -> Arc<OriginPool> {
        let connector = OriginConnector {
            tcp: self.tcp.clone(),
            config: self.config.clone(),
            name,
        };
        Arc::new(H1Pool::new(CountingConnector::new(
            connector,
            self.stats.clone(),
        )))
    }

    /// The pool for the server name the call is sent with: a lookup by the call's host as it
    /// came (lower-cased only if it is not already), no allocation once its pool exists.
    fn pool_for(&self, req: &Request<ProxyBody>) -> Result<Arc<OriginPool>, BoxError> {
        if let Some(p) = &self.fixed {
            return Ok(p.clone());
        }
        let host = req
            .headers()
            .get(http::header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().host())
            .ok_or("the call names no host to send as the server name")?;
        let host = strip_port(host);
        let host: std::borrow::Cow<'_, str> = if host.bytes().any(|b| b.is_ascii_uppercase()) {
            host.to_ascii_lowercase().into()
        } else {
            host.into()
        };
        let mut pools = self.pools.lock();
        if let Some(p) = pools.get(host.as_ref()) {
            return Ok(p.clone());
        }
        if pools.len() >= MAX_SERVER_NAMES {
            return Err(format!(
                "more than {MAX_SERVER_NAMES} server names for one TLS setting; give `sni`"
            )
            .into());
        }
        let name = ServerName::try_from(host.to_string())
            .map_err(|_| format!("{host:?} is not a server name"))?;
        let pool = self.pool(name);
        pools.insert(host.as_ref().into(), pool.clone());
        Ok(pool)
    }
}

/// `host` without a `:port` (an IPv6 literal keeps its brackets off).
fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or(rest, |(ip, _)| ip);
    }
    match host.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) && !h.contains(':') => h,
        _ => host,
    }
}

/// Every setting in force, kept across snapshots while unchanged.
pub struct Origins {
    tcp: HttpConnector,
    stats: PoolStats,
    kept: Mutex<HashMap<Material, Arc<Origin>>>,
}

/// A setting with the bytes of the files it names: the same setting over renewed files is
/// another origin.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Material {
    tls: OriginTls,
    files: [Option<Vec<u8>>; 3],
}

impl Origins {
    /// Origins connecting through `tcp`, counted in `stats`.
    pub fn new(tcp: HttpConnector, stats: PoolStats) -> Self {
        Origins {
            tcp,
            stats,
            kept: Mutex::new(HashMap::new()),
        }
    }

    /// The origin for `tls`, its relative paths read under `base`: the one kept when its
    /// setting and files are unchanged, else a new one. Says which file or field is wrong.
    pub fn get(&self, tls: &OriginTls, base: &Path) -> Result<(Material, Arc<Origin>), String> {
        let read = |field: &str, path: &Option<String>| -> Result<Option<Vec<u8>>, String> {
            let Some(p) = path else { return Ok(None) };
            let full = base.join(p);
            std::fs::read(&full)
                .map(Some)
                .map_err(|e| format!("{field}: {}: {e}", full.display()))
        };
        let material = Material {
            tls: tls.clone(),
            files: [
                read("caCertificates", &tls.ca_certificates)?,
                read("clientCertificate", &tls.client_certificate)?,
                read("privateKey", &tls.private_key)?,
            ],
        };
        if let Some(o) = self.kept.lock().get(&material) {
            return Ok((material, o.clone()));
        }
        let mut origin = Origin {
            config: client_config(&material)?,
            tcp: self.tcp.clone(),
            stats: self.stats.clone(),
            fixed: None,
            pools: Mutex::new(HashMap::new()),
        };
        if let Some(sni) = &tls.sni {
            let name = ServerName::try_from(sni.clone())
                .map_err(|_| "sni: not a server name".to_string())?;
            origin.fixed = Some(origin.pool(name));
        }
        let origin = Arc::new(origin);
        self.kept.lock().insert(material.clone(), origin.clone());
        Ok((material, origin))
    }

    /// Forgets every origin but `keep`'s (their pools close as their last calls end).
    pub fn retain(&self, keep: &HashSet<Material>) {
        self.kept.lock().retain(|m, _| keep.contains(m));
    }
}

/// The client config a setting asks for.
fn client_config(m: &Material) -> Result<Arc<ClientConfig>, String> {
    let [ca, cert, key] = &m.files;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let verifier: Arc<dyn ServerCertVerifier> = if m.tls.insecure_skip_verify {
        Arc::new(AnyCertificate)
    } else {
        use crate::identity::system_roots;
        let roots = match ca {
            Some(bytes) => system_roots::roots_from_pem(bytes),
            None => system_roots::system_roots().map_err(|e| format!("none given, and {e}")),
        }
        .map_err(|e| format!("caCertificates: {e}"))?;
        let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
            .build()
            .map_err(|e| format!("caCertificates: {e}"))?;
        if m.tls.subject_alt_names.is_empty() {
            webpki
        } else {
            let names = m
                .tls
                .subject_alt_names
                .iter()
                .map(|n| ServerName::try_from(n.clone()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| "subjectAltNames: not a server name".to_string())?;
            Arc::new(AnyOfNames {
                inner: webpki,
                names,
            })
        }
    };
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut config = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("clientCertificate: not PEM certificates: {e}"))?;
            if chain.is_empty() {
                return Err("clientCertificate: no certificate in the file".to_string());
            }
            let key = PrivateKeyDer::from_pem_slice(key)
                .map_err(|e| format!("privateKey: not a PEM private key: {e}"))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| format!("clientCertificate and privateKey: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Chains to the roots and names one of `names` (Istio's `subjectAltNames`), whatever name was
/// sent.
#[derive(Debug)]
struct AnyOfNames {
    inner: Arc<WebPkiServerVerifier>,
    names: Vec<ServerName<'static>>,
}

impl ServerCertVerifier for AnyOfNames {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _sent: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut last = rustls::Error::General("no subjectAltNames".into());
        for name in &self.names {
            match self
                .inner
                .verify_server_cert(end_entity, intermediates, name, ocsp, now)
            {
                Ok(v) => return Ok(v),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// `insecureSkipVerify`: any certificate is taken, though the handshake's signatures are still
/// checked against it.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
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

/// TCP to the endpoint, then TLS with one server name.
#[derive(Clone)]
pub struct OriginConnector {
    tcp: HttpConnector,
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl tower_service::Service<http::Uri> for OriginConnector {
    type Response = PeerStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<PeerStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.tcp.call(uri);
        let tls = tokio_rustls::TlsConnector::from(self.config.clone());
        let name = self.name.clone();
        Box::pin(async move {
            let io = connecting.await?;
            let handshake = tls.connect(name, io.into_inner());
            let stream = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake)
                .await
                .map_err(|_| "TLS handshake with the server timed out")??;
            Ok(PeerStream::Tls(Box::new(TokioIo::new(stream))))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_host_header_loses_its_port_only() {
        for (host, name) in [
            ("api.example.com", "api.example.com"),
            ("api.example.com:8443", "api.example.com"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            ("[2001:db8::1]", "2001:db8::1"),
            ("198.18.0.1:80", "198.18.0.1"),
        ] {
            assert_eq!(strip_port(host), name, "{host}");
        }
    }
}
