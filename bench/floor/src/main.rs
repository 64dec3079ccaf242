//! The floor: one proxy hop on the stack Weft is built on, and nothing else, so `bench/run.sh`
//! can say how close Weft comes to what hyper and rustls can do.
//!
//! `weft-floor LISTEN UPSTREAM [--tls-in CERT KEY CA] [--tls-out CERT KEY CA SERVER_NAME]`
//!
//! One current-thread Tokio runtime. Downstream: hyper's `server::conn::http1`, optionally
//! behind TLS 1.3 that requires a client certificate from `CA`. Upstream: hyper's low-level
//! `client::conn::http1` over a LIFO pool of idle keep-alive connections (the most recently
//! used first, so few connections stay warm), optionally TLS 1.3 presenting `CERT` and
//! verifying the server against `CA` as `SERVER_NAME`. TCP_NODELAY both ways. Bodies stream;
//! a connection goes back to the pool when its response body has ended. No routing, no
//! policy, no metrics: what a sidecar pair costs before it does anything of its own.

use hyper::body::{Body, Frame, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use std::cell::RefCell;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Idle upstream connections, most recently used last.
type Pool = Rc<RefCell<Vec<SendRequest<Incoming>>>>;

struct Upstream {
    addr: String,
    tls: Option<(tokio_rustls::TlsConnector, rustls::pki_types::ServerName<'static>)>,
    pool: Pool,
}

trait Io: AsyncRead + AsyncWrite + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + 'static> Io for T {}

impl Upstream {
    async fn connect(&self) -> Result<SendRequest<Incoming>, BoxError> {
        let tcp = TcpStream::connect(&self.addr).await?;
        tcp.set_nodelay(true)?;
        let io: Box<dyn Io> = match &self.tls {
            None => Box::new(tcp),
            Some((connector, name)) => Box::new(connector.connect(name.clone(), tcp).await?),
        };
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
        tokio::task::spawn_local(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    /// A ready connection: the most recently returned idle one, else a new one.
    async fn checkout(&self) -> Result<SendRequest<Incoming>, BoxError> {
        loop {
            let idle = self.pool.borrow_mut().pop();
            match idle {
                // Its connection task may not have seen the last response end yet: wait for it.
                Some(mut s) if !s.is_closed() => {
                    if s.ready().await.is_ok() {
                        return Ok(s);
                    }
                }
                Some(_) => {} // closed by the peer
                None => return self.connect().await,
            }
        }
    }
}

/// The upstream response body; gives its connection back to the pool once the body has
/// ended (hyper stops polling at `is_end_stream`, so that is checked after every frame, and
/// when the body is dropped). A body dropped before its end takes its connection with it.
struct Returning {
    inner: Incoming,
    sender: Option<SendRequest<Incoming>>,
    pool: Pool,
}

impl Returning {
    fn give_back_if_done(&mut self) {
        if self.inner.is_end_stream()
            && let Some(s) = self.sender.take()
        {
            self.pool.borrow_mut().push(s);
        }
    }
}

impl Drop for Returning {
    fn drop(&mut self) {
        self.give_back_if_done();
    }
}

impl Body for Returning {
    type Data = hyper::body::Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(None) => {
                if let Some(s) = self.sender.take() {
                    self.pool.borrow_mut().push(s);
                }
            }
            Poll::Ready(Some(Ok(_))) => self.give_back_if_done(),
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

async fn forward(upstream: Rc<Upstream>, req: Request<Incoming>) -> Result<Response<Returning>, BoxError> {
    let mut sender = upstream.checkout().await?;
    let (mut parts, body) = req.into_parts();
    // Origin-form upstream, as a sidecar sends it; the Host header stays.
    parts.uri = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/").parse()?;
    let resp = sender.send_request(Request::from_parts(parts, body)).await?;
    let (parts, body) = resp.into_parts();
    let body = Returning {
        inner: body,
        sender: Some(sender),
        pool: upstream.pool.clone(),
    };
    Ok(Response::from_parts(parts, body))
}

fn tls_files(cert: &str, key: &str, ca: &str) -> (Vec<rustls::pki_types::CertificateDer<'static>>, rustls::pki_types::PrivateKeyDer<'static>, rustls::RootCertStore) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer> = CertificateDer::pem_file_iter(cert)
        .expect("certificate file")
        .collect::<Result<_, _>>()
        .expect("certificates");
    let key = PrivateKeyDer::from_pem_file(key).expect("private key");
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(c.expect("CA certificate")).expect("CA");
    }
    (chain, key, roots)
}

/// TLS 1.3 with AES-128-GCM, as the bench's other mTLS pairs negotiate.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    // The same provider as Weft's (`weft::identity::tls::provider`).
    #[allow(deprecated)]
    let mut p = rustls::crypto::ring::default_provider();
    p.cipher_suites
        .retain(|s| s.suite() == rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 3 {
        eprintln!("usage: weft-floor LISTEN UPSTREAM [--tls-in CERT KEY CA] [--tls-out CERT KEY CA SERVER_NAME]");
        std::process::exit(2);
    }
    let (listen, upstream_addr) = (args[1].clone(), args[2].clone());
    let mut tls_in = None;
    let mut tls_out = None;
    let mut i = 3;
    while i < args.len() {
        match args[i].as_str() {
            "--tls-in" if i + 3 < args.len() => {
                let (chain, key, roots) = tls_files(&args[i + 1], &args[i + 2], &args[i + 3]);
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider(),
                )
                .build()
                .expect("client verifier");
                let config = rustls::ServerConfig::builder_with_provider(provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .expect("TLS 1.3")
                    .with_client_cert_verifier(verifier)
                    .with_single_cert(chain, key)
                    .expect("server certificate");
                tls_in = Some(tokio_rustls::TlsAcceptor::from(Arc::new(config)));
                i += 4;
            }
            "--tls-out" if i + 4 < args.len() => {
                let (chain, key, roots) = tls_files(&args[i + 1], &args[i + 2], &args[i + 3]);
                let config = rustls::ClientConfig::builder_with_provider(provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .expect("TLS 1.3")
                    .with_root_certificates(roots)
                    .with_client_auth_cert(chain, key)
                    .expect("client certificate");
                let name = rustls::pki_types::ServerName::try_from(args[i + 4].clone())
                    .expect("server name");
                tls_out = Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name));
                i += 5;
            }
            other => {
                eprintln!("weft-floor: unexpected argument {other:?}");
                std::process::exit(2);
            }
        }
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&runtime, async move {
        let listener = TcpListener::bind(&listen).await.expect("bind");
        let upstream = Rc::new(Upstream {
            addr: upstream_addr,
            tls: tls_out,
            pool: Rc::new(RefCell::new(Vec::new())),
        });
        let tls_in = tls_in.map(Rc::new);
        loop {
            let Ok((tcp, _)) = listener.accept().await else { continue };
            let _ = tcp.set_nodelay(true);
            let upstream = upstream.clone();
            let tls_in = tls_in.clone();
            tokio::task::spawn_local(async move {
                let io: Box<dyn Io> = match tls_in {
                    None => Box::new(tcp),
                    Some(acceptor) => match acceptor.accept(tcp).await {
                        Ok(s) => Box::new(s),
                        Err(_) => return,
                    },
                };
                let svc = hyper::service::service_fn(move |req| forward(upstream.clone(), req));
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(io), svc)
                    .await;
            });
        }
    });
}
