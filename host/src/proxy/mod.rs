//! The sidecar data plane: an outbound listener (app → mesh), an inbound listener (mesh → app)
//! and an admin listener, all on one multi-threaded Tokio runtime, with the plugin chain run at
//! the points of a call and the routing state swapped atomically when a snapshot arrives.
//!
//! Between sidecars calls travel as HTTP/2 (h2c for now; the transport is the `peers` client,
//! where TLS slots in) over pooled, multiplexed connections.

pub mod admin;
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
use pool::CountingConnector;
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
    /// `Strict` refuses plaintext on the inbound listener; `Permissive` accepts both.
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
    pub peers: Client<CountingConnector, ProxyBody>,
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
        let identity = format!("spiffe://weft.local/ns/default/sa/{}", config.service);
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let peers = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(CountingConnector::new(
                connector.clone(),
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
                inputs.clone(),
                watch_rx.clone(),
                drain,
                outbound::handle,
            )),
            tokio::spawn(serve(
                inbound,
                "inbound",
                inputs.clone(),
                watch_rx.clone(),
                drain,
                inbound::handle,
            )),
            tokio::spawn(serve(
                admin,
                "admin",
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
        self.inputs.routes.store(Arc::new(built));
        tracing::info!(%version, "snapshot applied");
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
/// `handler` with the shared inputs and the peer.
async fn serve<F, Fut>(
    listener: TcpListener,
    name: &'static str,
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
                let who = Arc::new(Peer { addr: peer, forwarded: headers::forwarded_value(peer.ip()) });
                let svc = service_fn(move |req| handler(shared.clone(), req, who.clone()));
                let conn = builder.serve_connection(TokioIo::new(stream), svc).into_owned();
                let conn = graceful.watch(conn);
                let gauge = gauge.clone();
                gauge.inc();
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
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
