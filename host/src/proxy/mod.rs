//! The sidecar data plane: an outbound listener (app → mesh), an inbound listener (mesh → app)
//! and an admin listener, all on one multi-threaded Tokio runtime, with the plugin chain run at
//! the points of a call and the routing state swapped atomically when a snapshot arrives.
//!
//! Between sidecars calls travel as HTTP/2 over pooled, multiplexed connections: h2c, or with
//! [`Mtls`] configured, mutual TLS (the `peers` client's [`pool::PeerConnector`] and the inbound
//! listener's handshake in [`serve`]).

pub mod admin;
pub mod authz;
pub mod balance;
pub mod body;
pub mod headers;
pub mod inbound;
pub mod metrics;
pub mod outbound;
pub mod pool;
pub mod routes;

use crate::endpoints::EndpointTable;
use crate::plugin::{PluginRuntime, RuntimeConfig};
use crate::snapshot::{Rejected, Snapshot};
use arc_swap::ArcSwap;
use body::ProxyBody;
use http::{Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use metrics::ProxyMetrics;
use pool::{CountingConnector, PeerConnector};
use prometheus::Registry;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

/// Mutual TLS between sidecars: who this sidecar is, whom it trusts, and whether its inbound
/// listener still accepts plaintext.
#[derive(Clone)]
pub struct Mtls {
    /// This sidecar's identity and its rotating certificate.
    pub workload: Arc<crate::identity::Workload>,
    /// The roots a peer's certificate must chain to.
    pub bundle: Arc<crate::identity::TrustBundle>,
    /// `Strict` refuses plaintext on the inbound listener; `Permissive` accepts both. The
    /// bootstrap's mode: a snapshot's `inbound.peerAuthentication` overrides it per connection.
    pub mode: crate::identity::PeerAuthMode,
}

impl std::fmt::Debug for Mtls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mtls")
            .field("identity", &self.workload.id().to_string())
            .field("mode", &self.mode)
            .finish()
    }
}

/// How a sidecar is set up.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// The service this sidecar stands beside.
    pub service: String,
    /// Where the local app calls out (`127.0.0.1:15001`; port 0 picks one).
    pub outbound: SocketAddr,
    /// Where peers call in.
    pub inbound: SocketAddr,
    /// The admin endpoint.
    pub admin: SocketAddr,
    /// The local app.
    pub app: SocketAddr,
    /// Request bodies up to this size are buffered so they can be retried.
    pub replay_limit: usize,
    /// How long in-flight calls get to finish on shutdown.
    pub drain_timeout: Duration,
    /// Where relative plugin paths in snapshots are found.
    pub base_dir: PathBuf,
    /// Where artifacts fetched from the control plane are kept, as `<sha256>.wasm`.
    pub artifact_dir: PathBuf,
    /// The plugin runtime's settings.
    pub runtime: RuntimeConfig,
    /// Deadline and memory cap of every plugin call.
    pub plugin_limits: crate::plugin::Limits,
    /// Mutual TLS between sidecars; none for plaintext HTTP/2 (h2c).
    pub mtls: Option<Mtls>,
}

impl SidecarConfig {
    /// Loopback listeners on free ports for `service`, whose app is at `app`.
    pub fn local(service: &str, app: SocketAddr) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        SidecarConfig {
            service: service.to_string(),
            outbound: any,
            inbound: any,
            admin: any,
            app,
            replay_limit: 64 * 1024,
            drain_timeout: Duration::from_secs(10),
            base_dir: PathBuf::from("."),
            artifact_dir: PathBuf::from("artifacts"),
            runtime: RuntimeConfig::default(),
            plugin_limits: crate::plugin::Limits::default(),
            mtls: None,
        }
    }
}

/// Settings every request reads.
pub struct Settings {
    /// The local service.
    pub service: String,
    /// Its identity, as a SPIFFE ID.
    pub identity: Arc<str>,
    /// The identity, interned.
    pub identity_id: u32,
    /// The local app.
    pub app: SocketAddr,
    /// The local app as a URI authority, built once.
    pub app_authority: http::uri::Authority,
    /// The replay buffer bound.
    pub replay_limit: usize,
}

/// What every handler shares: the test seams and the state in force.
pub struct Inputs {
    /// Routing state; swapped whole.
    pub routes: ArcSwap<routes::Routes>,
    /// Endpoints and their health.
    pub table: Arc<EndpointTable>,
    /// The plugin runtime.
    pub runtime: Arc<PluginRuntime>,
    /// Client to peer sidecars (HTTP/2, pooled).
    pub peers: Client<CountingConnector<PeerConnector>, ProxyBody>,
    /// Client to the local app (HTTP/1.1, pooled).
    pub app: Client<CountingConnector, ProxyBody>,
    /// Metrics.
    pub metrics: ProxyMetrics,
    /// The inbound side's metric handles, resolved once.
    pub inbound_metrics: metrics::RouteMetrics,
    /// The registry `/metrics` serves.
    pub registry: Registry,
    /// Fixed settings.
    pub settings: Settings,
    /// Whether the sidecar is draining.
    pub draining: AtomicBool,
    call_ids: AtomicU64,
}

impl Inputs {
    fn next_call_id(&self) -> u64 {
        self.call_ids.fetch_add(1, Ordering::Relaxed)
    }

    fn random(&self) -> u64 {
        crate::random::fast_u64()
    }
}

/// The other end of a downstream connection, with what every request on it reuses.
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// Its IP as an `x-forwarded-for` element, formatted once per connection.
    pub forwarded: http::HeaderValue,
    /// Its SPIFFE ID, when it authenticated with a certificate over mTLS.
    pub identity: Option<crate::identity::SpiffeId>,
    /// The `x-forwarded-client-cert` value for its requests (`By=<us>;URI=<it>`), formatted once
    /// per connection; none without an authenticated identity.
    pub xfcc: Option<http::HeaderValue>,
    /// Its Istio principal (`<trust domain>/ns/<ns>/sa/<sa>`), which authorization policies
    /// name; formatted once per connection.
    pub principal: Option<String>,
    /// Its inbound counters (allowed, denied), resolved at its first inbound call: the
    /// outbound listener shares this type and must not create series.
    by_source: std::sync::OnceLock<[prometheus::IntCounter; 2]>,
}

impl Peer {
    fn new(addr: SocketAddr, identity: Option<crate::identity::SpiffeId>, us: &str) -> Peer {
        let xfcc = identity.as_ref().and_then(|id| {
            // SPIFFE IDs are validated to URI-safe characters, so this never fails in practice.
            http::HeaderValue::from_str(&format!("By={us};URI={id}")).ok()
        });
        Peer {
            addr,
            forwarded: headers::forwarded_value(addr.ip()),
            principal: identity.as_ref().map(authz::principal_of),
            identity,
            xfcc,
            by_source: std::sync::OnceLock::new(),
        }
    }

    /// Counts an inbound call from this peer as allowed or denied.
    pub(crate) fn count_inbound(&self, metrics: &ProxyMetrics, allowed: bool) {
        let [yes, no] = self.by_source.get_or_init(|| {
            let who = self.principal.as_deref().unwrap_or("unknown");
            let vec = &metrics.inbound_by_source;
            [
                vec.with_label_values(&[who, "allowed"]),
                vec.with_label_values(&[who, "denied"]),
            ]
        });
        if allowed { yes.inc() } else { no.inc() }
    }
}

/// How long an inbound connection may take to show its first byte and finish the TLS handshake.
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The inbound listener's TLS: an acceptor per mode (the client certificate is mandatory only
/// in the STRICT one), so the mode a snapshot puts in force applies to the next connection
/// without rebuilding anything, and the bootstrap's mode for when no snapshot sets one.
#[derive(Clone)]
struct InboundTls {
    strict: tokio_rustls::TlsAcceptor,
    permissive: tokio_rustls::TlsAcceptor,
    bootstrap: crate::identity::PeerAuthMode,
}

impl InboundTls {
    /// The mode for a connection accepted now: the snapshot's PeerAuthentication, else the
    /// bootstrap's.
    fn mode_in_force(&self, inputs: &Inputs) -> crate::identity::PeerAuthMode {
        inputs
            .routes
            .load()
            .snapshot
            .inbound
            .peer_authentication
            .map_or(self.bootstrap, crate::snapshot::MtlsMode::peer_auth_mode)
    }
}

/// A socket address as a URI authority.
fn authority_of(addr: SocketAddr) -> http::uri::Authority {
    // A SocketAddr always prints as a valid authority (`1.2.3.4:5`, `[::1]:5`).
    addr.to_string()
        .parse()
        .unwrap_or_else(|_| http::uri::Authority::from_static("127.0.0.1"))
}

/// A plain-text local reply.
pub fn local_response(status: StatusCode, text: impl Into<String>) -> Response<ProxyBody> {
    let mut r = Response::new(body::full(text.into().into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

/// Why a sidecar could not start.
#[derive(Debug, thiserror::Error)]
pub enum SidecarError {
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The plugin runtime could not start.
    #[error(transparent)]
    Plugin(#[from] crate::plugin::PluginError),
    /// Metrics could not be registered.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    /// The mTLS configuration could not be built.
    #[error("mTLS: {0}")]
    Tls(#[from] crate::identity::TlsError),
}

/// A running sidecar.
pub struct Sidecar {
    inputs: Arc<Inputs>,
    /// Where the local app calls out.
    pub outbound: SocketAddr,
    /// Where peers call in.
    pub inbound: SocketAddr,
    /// The admin endpoint.
    pub admin: SocketAddr,
    base_dir: PathBuf,
    artifact_dir: PathBuf,
    plugin_limits: crate::plugin::Limits,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    drain_timeout: Duration,
    /// Whether the inbound listener can do TLS at all (the config had `mtls`).
    mtls: bool,
}

impl Sidecar {
    /// Binds the listeners and starts serving with no routes until a snapshot is applied.
    pub async fn start(config: SidecarConfig) -> Result<Sidecar, SidecarError> {
        let registry = Registry::new();
        let table = Arc::new(EndpointTable::new());
        let runtime = Arc::new(PluginRuntime::new(
            config.runtime.clone(),
            &registry,
            table.clone(),
        )?);
        let metrics = ProxyMetrics::register(&registry)?;
        let identity = match &config.mtls {
            Some(m) => m.workload.id().to_string(),
            None => format!("spiffe://weft.local/ns/default/sa/{}", config.service),
        };
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let (peer_connector, inbound_tls) = match &config.mtls {
            None => (PeerConnector::plain(connector.clone()), None),
            Some(m) => {
                use crate::identity::{PeerAuthMode, server_config};
                let acceptor = |mode| {
                    server_config(m.workload.clone(), m.bundle.clone(), mode)
                        .map(tokio_rustls::TlsAcceptor::from)
                };
                let tls = InboundTls {
                    strict: acceptor(PeerAuthMode::Strict)?,
                    permissive: acceptor(PeerAuthMode::Permissive)?,
                    bootstrap: m.mode,
                };
                let peers = PeerConnector::mtls(
                    connector.clone(),
                    m.workload.clone(),
                    m.bundle.clone(),
                    table.clone(),
                );
                (peers, Some(tls))
            }
        };
        let peers = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(CountingConnector::new(
                peer_connector,
                metrics.pool("peers"),
            ));
        let app = Client::builder(TokioExecutor::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(CountingConnector::new(connector, metrics.pool("app")));
        let inputs = Arc::new(Inputs {
            routes: ArcSwap::from_pointee(routes::Routes::empty()),
            table,
            settings: Settings {
                identity_id: runtime.intern(&identity),
                identity: identity.into(),
                service: config.service.clone(),
                app: config.app,
                app_authority: authority_of(config.app),
                replay_limit: config.replay_limit,
            },
            runtime,
            peers,
            app,
            inbound_metrics: metrics.handles("inbound", &config.service),
            metrics,
            registry,
            draining: AtomicBool::new(false),
            call_ids: AtomicU64::new(1),
        });
        let bind = |what: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| SidecarError::Bind { what, addr, source })
        };
        let outbound = bind("outbound", config.outbound).await?;
        let inbound = bind("inbound", config.inbound).await?;
        let admin = bind("admin", config.admin).await?;
        let local = |l: &TcpListener, what, addr| {
            l.local_addr()
                .map_err(|source| SidecarError::Bind { what, addr, source })
        };
        let (out_addr, in_addr, admin_addr) = (
            local(&outbound, "outbound", config.outbound)?,
            local(&inbound, "inbound", config.inbound)?,
            local(&admin, "admin", config.admin)?,
        );
        let (shutdown, watch_rx) = watch::channel(false);
        let drain = config.drain_timeout;
        let tasks = vec![
            tokio::spawn(serve(
                outbound,
                "outbound",
                None,
                inputs.clone(),
                watch_rx.clone(),
                drain,
                outbound::handle,
            )),
            tokio::spawn(serve(
                inbound,
                "inbound",
                inbound_tls,
                inputs.clone(),
                watch_rx.clone(),
                drain,
                inbound::handle,
            )),
            tokio::spawn(serve(
                admin,
                "admin",
                None,
                inputs.clone(),
                watch_rx,
                drain,
                admin::handle,
            )),
        ];
        tracing::info!(service = %config.service, outbound = %out_addr, inbound = %in_addr, admin = %admin_addr, "sidecar listening");
        Ok(Sidecar {
            inputs,
            outbound: out_addr,
            inbound: in_addr,
            admin: admin_addr,
            artifact_dir: config.base_dir.join(&config.artifact_dir),
            plugin_limits: config.plugin_limits,
            base_dir: config.base_dir,
            shutdown,
            tasks,
            drain_timeout: config.drain_timeout,
            mtls: config.mtls.is_some(),
        })
    }

    /// Applies a snapshot: plugins are loaded and checked off the request path, then the
    /// routes switch atomically. A snapshot that cannot be applied leaves the last good one
    /// serving and says why.
    pub async fn apply(&self, snapshot: Snapshot) -> Result<(), Rejected> {
        let inputs = self.inputs.clone();
        let base = self.base_dir.clone();
        let artifacts = self.artifact_dir.clone();
        let limits = self.plugin_limits;
        let built = tokio::task::spawn_blocking(move || {
            let sources = routes::PluginSources {
                base_dir: &base,
                artifact_dir: &artifacts,
                limits,
            };
            routes::build(
                snapshot,
                &inputs.runtime,
                &inputs.table,
                &inputs.metrics,
                &sources,
            )
        })
        .await
        .map_err(|e| Rejected(vec![format!("applying the snapshot panicked: {e}")]))??;
        let version = built.snapshot.version.clone();
        let mode = built.snapshot.inbound.peer_authentication;
        let previous = self.inputs.routes.swap(Arc::new(built));
        tracing::info!(%version, "snapshot applied");
        if mode != previous.snapshot.inbound.peer_authentication {
            if !self.mtls && mode == Some(crate::snapshot::MtlsMode::Strict) {
                // Without a certificate there is no TLS to require: refusing plaintext would
                // cut the workload off, so it keeps serving and says so.
                tracing::warn!(
                    %version,
                    "PeerAuthentication asks for STRICT mTLS but this sidecar has no mTLS configured (no `mtls` in its bootstrap): the inbound listener keeps accepting plaintext"
                );
            } else if self.mtls {
                tracing::info!(
                    %version,
                    mode = ?mode,
                    "inbound mTLS mode for new connections (none: the bootstrap's)"
                );
            }
        }
        Ok(())
    }

    /// Where artifacts fetched from the control plane are kept, as `<sha256>.wasm`.
    pub fn artifact_dir(&self) -> &std::path::Path {
        &self.artifact_dir
    }

    /// The snapshot in force.
    pub fn snapshot(&self) -> Snapshot {
        self.inputs.routes.load().snapshot.clone()
    }

    /// The shared inputs (routes, endpoint table, runtime, metrics).
    pub fn inputs(&self) -> &Arc<Inputs> {
        &self.inputs
    }

    /// Stops accepting, lets in-flight calls finish within the drain timeout, then stops.
    pub async fn shutdown(self) {
        self.inputs.draining.store(true, Ordering::Relaxed);
        let _ = self.shutdown.send(true);
        let bound = self.drain_timeout + Duration::from_secs(1);
        for task in self.tasks {
            let _ = tokio::time::timeout(bound, task).await;
        }
    }
}

/// Accepts connections until shutdown, then drains them within `drain`; each request goes to
/// `handler` with the shared inputs and the peer. With `tls`, each connection first passes the
/// TLS handshake (or, PERMISSIVE, may be plaintext), in its own task so a slow handshake never
/// holds up the accept loop.
async fn serve<F, Fut>(
    listener: TcpListener,
    name: &'static str,
    tls: Option<InboundTls>,
    inputs: Arc<Inputs>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
    handler: F,
) where
    F: Fn(Arc<Inputs>, http::Request<Incoming>, Arc<Peer>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>>
        + Send
        + 'static,
{
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).keep_alive(true);
    builder.http2().timer(TokioTimer::new());
    let gauge = inputs.metrics.connections.with_label_values(&[name]);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!(listener = name, "accept failed: {e}");
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let shared = inputs.clone();
                // Taken before the task starts, so a shutdown meanwhile still reaches it.
                let watcher = graceful.watcher();
                let builder = builder.clone();
                let tls = tls.clone();
                let gauge = gauge.clone();
                gauge.inc();
                tokio::spawn(async move {
                    let us = shared.settings.identity.clone();
                    let result = match tls {
                        None => {
                            let who = Arc::new(Peer::new(peer, None, &us));
                            serve_connection(&builder, watcher, stream, shared, who, handler).await
                        }
                        Some(tls) => match accept_tls(&tls, tls.mode_in_force(&shared), stream).await {
                            Ok(Accepted::Plain(stream)) => {
                                let who = Arc::new(Peer::new(peer, None, &us));
                                serve_connection(&builder, watcher, stream, shared, who, handler).await
                            }
                            Ok(Accepted::Tls(stream)) => {
                                let caller = crate::identity::caller_identity(&stream);
                                let who = Arc::new(Peer::new(peer, caller, &us));
                                serve_connection(&builder, watcher, *stream, shared, who, handler).await
                            }
                            Ok(Accepted::Closed) => Ok(()),
                            Err(refused) => {
                                tracing::debug!(listener = name, %peer, reason = refused.reason, "connection refused: {}", refused.detail);
                                shared.metrics.tls_refused.with_label_values(&[refused.reason]).inc();
                                Ok(())
                            }
                        },
                    };
                    if let Err(e) = result {
                        tracing::debug!(listener = name, %peer, "connection ended: {e}");
                    }
                    gauge.dec();
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => tracing::info!(listener = name, "drained"),
        _ = tokio::time::sleep(drain) => tracing::warn!(listener = name, "drain timeout: closing remaining connections"),
    }
}

/// Serves HTTP (1.1 or 2) on one accepted connection until it ends or the drain closes it.
async fn serve_connection<I, F, Fut>(
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    io: I,
    inputs: Arc<Inputs>,
    who: Arc<Peer>,
    handler: F,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>>
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Arc<Inputs>, http::Request<Incoming>, Arc<Peer>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>>
        + Send
        + 'static,
{
    let svc = service_fn(move |req| handler(inputs.clone(), req, who.clone()));
    let conn = builder.serve_connection(TokioIo::new(io), svc).into_owned();
    watcher.watch(conn).await
}

/// An inbound connection past the TLS gate.
enum Accepted {
    /// Authenticated (or, PERMISSIVE, anonymous) TLS.
    Tls(Box<tokio_rustls::server::TlsStream<tokio::net::TcpStream>>),
    /// Plaintext, which only PERMISSIVE lets through.
    Plain(tokio::net::TcpStream),
    /// The caller left before sending a byte.
    Closed,
}

/// Why an inbound connection was refused, as the metric's `reason` label and a detail to log.
struct Refused {
    reason: &'static str,
    detail: String,
}

/// Sniffs the first byte (without consuming it) and runs the TLS handshake under `mode`, all
/// within [`TLS_HANDSHAKE_TIMEOUT`].
async fn accept_tls(
    tls: &InboundTls,
    mode: crate::identity::PeerAuthMode,
    stream: tokio::net::TcpStream,
) -> Result<Accepted, Refused> {
    let gate = async {
        let mut first = [0u8; 1];
        let n = stream.peek(&mut first).await.map_err(|e| Refused {
            reason: "handshake",
            detail: e.to_string(),
        })?;
        if n == 0 {
            return Ok(Accepted::Closed);
        }
        if !crate::identity::looks_like_tls(first[0]) {
            return match mode {
                crate::identity::PeerAuthMode::Permissive => Ok(Accepted::Plain(stream)),
                // Closed without a TLS alert: the caller is not speaking TLS anyway.
                crate::identity::PeerAuthMode::Strict => Err(Refused {
                    reason: "plaintext",
                    detail: "not a TLS handshake under STRICT mTLS".into(),
                }),
            };
        }
        let acceptor = match mode {
            crate::identity::PeerAuthMode::Strict => &tls.strict,
            crate::identity::PeerAuthMode::Permissive => &tls.permissive,
        };
        acceptor
            .accept(stream)
            .await
            .map(|s| Accepted::Tls(Box::new(s)))
            .map_err(|e| Refused {
                reason: "handshake",
                detail: e.to_string(),
            })
    };
    tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, gate)
        .await
        .unwrap_or_else(|_| {
            Err(Refused {
                reason: "timeout",
                detail: format!("no TLS handshake within {TLS_HANDSHAKE_TIMEOUT:?}"),
            })
        })
}
