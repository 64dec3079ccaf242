//! Upstream connections: a connector that counts connections opened, open now and failed, per
//! pool (`peers`, `app`), around another connector; and the `peers` pool's connector, which
//! speaks plain TCP (h2c) or, with mTLS, TLS that checks the server is the destination service.

use crate::endpoints::EndpointTable;
use crate::identity::{SpiffeId, TrustBundle, Workload, client_config, server_name};
use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::rt::TokioIo;
use parking_lot::RwLock;
use prometheus::{IntCounter, IntGauge};
use rustls::ClientConfig;
use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::net::TcpStream;

/// Connection counts of one pool.
#[derive(Clone)]
pub struct PoolStats {
    /// Connections opened.
    pub opened: IntCounter,
    /// Connections open now.
    pub open: IntGauge,
    /// Connection attempts that failed.
    pub failed: IntCounter,
}

/// A connector (`HttpConnector` by default), counting.
#[derive(Clone)]
pub struct CountingConnector<C = HttpConnector> {
    inner: C,
    stats: PoolStats,
}

impl<C> CountingConnector<C> {
    /// Wraps `inner`.
    pub fn new(inner: C, stats: PoolStats) -> Self {
        CountingConnector { inner, stats }
    }
}

/// A connection that leaves the open count when it closes.
pub struct Counted<T> {
    inner: T,
    open: IntGauge,
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        self.open.dec();
    }
}

impl<C> tower_service::Service<http::Uri> for CountingConnector<C>
where
    C: tower_service::Service<http::Uri>,
    C::Future: Send + 'static,
    C::Response: Send + 'static,
    C::Error: Send + 'static,
{
    type Response = Counted<C::Response>;
    type Error = C::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let stats = self.stats.clone();
        Box::pin(async move {
            match connecting.await {
                Ok(inner) => {
                    stats.opened.inc();
                    stats.open.inc();
                    Ok(Counted {
                        inner,
                        open: stats.open,
                    })
                }
                Err(e) => {
                    stats.failed.inc();
                    Err(e)
                }
            }
        })
    }
}

impl<T: Read + Unpin> Read for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

impl<T: Connection> Connection for Counted<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}

/// How long a TLS handshake with a peer sidecar may take once TCP is connected.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The `peers` pool's connector: TCP (h2c) without mTLS; with it, TLS (ALPN h2) that accepts only
/// a server whose SPIFFE ID is the destination service's.
#[derive(Clone)]
pub struct PeerConnector {
    tcp: HttpConnector,
    tls: Option<Arc<PeerTls>>,
}

/// What TLS to peers needs: our certificate, the roots, where to learn an endpoint's service,
/// and the protocol (ALPN) its pool speaks.
pub struct PeerTls {
    alpn: &'static [u8],
    workload: Arc<Workload>,
    bundle: Arc<TrustBundle>,
    table: Arc<EndpointTable>,
    // One config per destination service, built on first use: configs read the certificate
    // and roots per handshake, so a rotation needs no rebuild.
    configs: RwLock<HashMap<Arc<str>, Arc<ClientConfig>>>,
}

impl PeerConnector {
    /// Plain TCP to peers (h2c).
    pub fn plain(tcp: HttpConnector) -> Self {
        PeerConnector { tcp, tls: None }
    }

    /// mTLS to peers speaking `alpn` (`ALPN_H2` or `ALPN_HTTP1`); an endpoint's service is
    /// found in `table` by its address.
    pub fn mtls(
        tcp: HttpConnector,
        alpn: &'static [u8],
        workload: Arc<Workload>,
        bundle: Arc<TrustBundle>,
        table: Arc<EndpointTable>,
    ) -> Self {
        let tls = PeerTls {
            alpn,
            workload,
            bundle,
            table,
            configs: RwLock::new(HashMap::new()),
        };
        PeerConnector {
            tcp,
            tls: Some(Arc::new(tls)),
        }
    }
}

impl PeerTls {
    /// The client config for the service whose endpoint is at `uri`'s authority.
    fn config_for(&self, uri: &http::Uri) -> Result<Arc<ClientConfig>, BoxError> {
        // hyper's client hands the connector only the URI; the endpoint table maps the address
        // back to the service (the pool is keyed by address, so one service per address).
        let address = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let service = self
            .table
            .service_at(address)
            .ok_or_else(|| format!("no service known for endpoint {address}"))?;
        if let Some(config) = self.configs.read().get(&service) {
            return Ok(config.clone());
        }
        // Every service of the mesh lives in our trust domain; its key names its namespace.
        let own = self.workload.id();
        let (name, namespace) = crate::names::key_parts(&service);
        let expected = SpiffeId::new(own.trust_domain(), namespace, name)
            .map_err(|e| format!("service {service} has no valid SPIFFE ID: {e}"))?;
        let mut config = client_config(self.workload.clone(), self.bundle.clone(), expected)?;
        if self.alpn != crate::identity::tls::ALPN_H2 {
            let mut other = (*config).clone();
            other.alpn_protocols = vec![self.alpn.to_vec()];
            config = Arc::new(other);
        }
        self.configs.write().insert(service, config.clone());
        Ok(config)
    }
}

impl tower_service::Service<http::Uri> for PeerConnector {
    type Response = PeerStream;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<PeerStream, BoxError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.tcp.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        // Resolved before connecting, so an unknown or invalid destination costs no socket.
        let config = match &self.tls {
            None => None,
            Some(tls) => match tls.config_for(&uri) {
                Ok(c) => Some(c),
                Err(e) => return Box::pin(async move { Err(e) }),
            },
        };
        let connecting = self.tcp.call(uri);
        Box::pin(async move {
            let io = connecting.await?;
            let Some(config) = config else {
                return Ok(PeerStream::Plain(io));
            };
            let handshake =
                tokio_rustls::TlsConnector::from(config).connect(server_name(), io.into_inner());
            let tls = tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, handshake)
                .await
                .map_err(|_| "TLS handshake with the peer timed out")??;
            Ok(PeerStream::Tls(Box::new(TokioIo::new(tls))))
        })
    }
}

/// A connection to a peer sidecar: plain TCP or TLS.
pub enum PeerStream {
    /// h2c.
    Plain(TokioIo<TcpStream>),
    /// mTLS.
    Tls(Box<TokioIo<tokio_rustls::client::TlsStream<TcpStream>>>),
}

impl Read for PeerStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl Write for PeerStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_flush(cx),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            PeerStream::Plain(s) => s.is_write_vectored(),
            PeerStream::Tls(s) => s.is_write_vectored(),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            PeerStream::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            PeerStream::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
}

impl Connection for PeerStream {
    fn connected(&self) -> Connected {
        match self {
            PeerStream::Plain(s) => s.connected(),
            PeerStream::Tls(s) => {
                let (tcp, session) = s.inner().get_ref();
                let connected = tcp.connected();
                if session.alpn_protocol() == Some(crate::identity::tls::ALPN_H2) {
                    connected.negotiated_h2()
                } else {
                    connected
                }
            }
        }
    }
}
