//! The TLS channel to the control plane's API: every client (a sidecar's watch, ACKs and
//! certificate requests, the operator's CLI) verifies the server against the mesh's trust
//! bundle and the control plane's own SPIFFE ID before sending a token.
//!
//! One connection per request (the watch keeps its own open): control traffic is a handful of
//! calls a minute per sidecar, so a pool would only hold idle TLS sessions.

use crate::identity::{TlsError, TrustBundle, control_client_config, server_name};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

/// How long connecting plus the TLS handshake may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the control plane is and how to recognise it: one address, or several replicas'.
#[derive(Clone)]
pub struct Endpoint {
    /// Its API address (the first, when there are several).
    pub addr: SocketAddr,
    /// Every replica's address; a request goes to the one that last answered and moves on
    /// to the next when it cannot connect.
    addrs: Arc<[SocketAddr]>,
    current: Arc<AtomicUsize>,
    tls: TlsConnector,
    /// The firewall mark of its sockets: under capture, a sidecar's own connections pass.
    mark: Option<u32>,
}

impl std::fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Endpoint")
            .field("addrs", &self.addrs)
            .finish_non_exhaustive()
    }
}

/// Why a control plane endpoint could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum EndpointError {
    /// The trust bundle file could not be read.
    #[error("reading the control plane's trust bundle {path}: {source}")]
    Read {
        /// Which file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The bundle or the TLS config is unusable.
    #[error("the control plane's trust bundle {path}: {source}")]
    Tls {
        /// Which file (or where the PEM came from).
        path: String,
        /// Why.
        source: TlsError,
    },
}

impl Endpoint {
    /// An endpoint trusting `bundle`, which may be updated later (a sidecar's bundle is
    /// refreshed at each certificate renewal, so a root rotation reaches this channel too).
    pub fn new(addr: SocketAddr, bundle: Arc<TrustBundle>) -> Result<Endpoint, TlsError> {
        Ok(Endpoint {
            addr,
            addrs: Arc::new([addr]),
            current: Arc::new(AtomicUsize::new(0)),
            tls: TlsConnector::from(control_client_config(bundle)?),
            mark: None,
        })
    }

    /// The same endpoint on several replicas (its own address first, then `others`). It
    /// starts at a random one, so a mesh's sidecars spread across the replicas.
    pub fn with_replicas(mut self, others: &[SocketAddr]) -> Endpoint {
        let mut all = vec![self.addr];
        all.extend(others.iter().filter(|a| **a != self.addr));
        let start = (crate::random::fast_u64() % all.len() as u64) as usize;
        self.addrs = all.into();
        self.current = Arc::new(AtomicUsize::new(start));
        self
    }

    /// The address requests go to now.
    pub fn current(&self) -> SocketAddr {
        self.addrs[self.current.load(Ordering::Relaxed) % self.addrs.len()]
    }

    /// A verified TLS connection to the first replica that takes one, from the current.
    async fn connect(&self) -> Result<(SocketAddr, TlsStream<TcpStream>), String> {
        let start = self.current.load(Ordering::Relaxed);
        let mut failures = Vec::new();
        for i in 0..self.addrs.len() {
            let at = (start + i) % self.addrs.len();
            let addr = self.addrs[at];
            match self.connect_to(addr).await {
                Ok(tls) => {
                    if i > 0 {
                        tracing::info!(%addr, "control plane: moved to another replica");
                    }
                    self.current.store(at, Ordering::Relaxed);
                    return Ok((addr, tls));
                }
                Err(e) => failures.push(e),
            }
        }
        Err(failures.join("; "))
    }

    async fn connect_to(&self, addr: SocketAddr) -> Result<TlsStream<TcpStream>, String> {
        tokio::time::timeout(CONNECT_TIMEOUT, async {
            let tcp = match self.mark {
                None => TcpStream::connect(addr).await,
                Some(mark) => crate::capture::socket::connect_marked(addr, mark).await,
            }
            .map_err(|e| format!("connecting to {addr}: {e}"))?;
            let _ = tcp.set_nodelay(true);
            self.tls
                .connect(server_name(), tcp)
                .await
                .map_err(|e| format!("TLS with the control plane at {addr}: {e}"))
        })
        .await
        .map_err(|_| format!("no TLS connection to {addr} within {CONNECT_TIMEOUT:?}"))?
    }

    /// The same endpoint, reached from sockets carrying `mark` (a captured sidecar's).
    pub fn with_mark(mut self, mark: Option<u32>) -> Endpoint {
        self.mark = mark;
        self
    }

    /// An endpoint trusting the PEM roots in `path` (the control plane writes its bundle to
    /// `<data>/bundle.pem`); returns the bundle too, for the caller to share.
    pub fn from_bundle_file(
        addr: SocketAddr,
        path: &std::path::Path,
    ) -> Result<(Endpoint, Arc<TrustBundle>), EndpointError> {
        let pem = std::fs::read_to_string(path).map_err(|source| EndpointError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let tls = |source| EndpointError::Tls {
            path: path.display().to_string(),
            source,
        };
        let bundle = Arc::new(TrustBundle::from_pem(&pem).map_err(tls)?);
        let endpoint = Endpoint::new(addr, bundle.clone()).map_err(tls)?;
        Ok((endpoint, bundle))
    }

    /// Sends one request (its URI a path) on a fresh verified connection; the response's body
    /// streams from it.
    pub async fn send(&self, mut req: Request<Full<Bytes>>) -> Result<Response<Incoming>, String> {
        let (addr, tls) = self.connect().await?;
        if let Ok(host) = http::HeaderValue::from_str(&addr.to_string()) {
            req.headers_mut().insert(http::header::HOST, host);
        }
        let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP with the control plane: {e}"))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!("control plane connection ended: {e}");
            }
        });
        sender.send_request(req).await.map_err(|e| format!("{e}"))
    }
}
