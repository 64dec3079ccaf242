//! The sidecar data plane: an outbound listener (app → mesh), an inbound listener (mesh → app)
//! and an admin listener, all on one multi-threaded Tokio runtime, with the plugin chain run at
//! the points of a call and the routing state swapped atomically when a snapshot arrives.
//!
//! Between sidecars calls travel as HTTP/2 over pooled, multiplexed connections: h2c, or with
//! [`Mtls`] configured, mutual TLS (the `peers` client's [`pool::PeerConnector`] and the inbound
//! listener's handshake in [`listener`]). Every downstream connection and stream is bounded in
//! time ([`Timeouts`]).

pub mod admin;
pub mod authz;
pub mod balance;
pub mod body;
pub mod breaker;
pub mod call_spans;
mod callouts;
pub mod consistent_hash;
pub mod deadline;
pub mod explain;
pub mod grpc;
pub mod h1_pool;
pub mod headers;
pub mod inbound;
pub mod listener;
pub mod logging;
pub mod metrics;
mod mirror;
pub mod origination;
pub mod outbound;
pub mod passthrough;
pub mod path;
pub mod pool;
pub mod routes;
mod server_side;
pub mod tap;
pub mod tcp;
pub mod tee;
pub mod upgrade;
pub mod workload;

use crate::endpoints::EndpointTable;
use crate::plugin::{PluginRuntime, RuntimeConfig};
use crate::snapshot::{Rejected, Snapshot};
use arc_swap::ArcSwap;
use body::ProxyBody;
use http::{Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use listener::{InboundTls, serve};
use metrics::ProxyMetrics;
use pool::{CountingConnector, PeerConnector};
use prometheus::Registry;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::watch;

pub use listener::Peer;

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

/// How long a downstream connection and its requests may take, as Envoy bounds them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Per connection: request headers, idle, maximum duration (see [`crate::conn`]).
    pub connection: crate::conn::Limits,
    /// Longest wait for the next piece of a request or response body, either way.
    pub stream_idle: Duration,
    /// Longest time, from the request's head reaching the proxy, for the rest of its body to
    /// arrive; none for no bound, as in Envoy, because streaming calls may last as long as
    /// they like. (The head itself is bounded by the connection's request-headers timeout.)
    pub request: Option<Duration>,
}

impl Default for Timeouts {
    /// Envoy's defaults: 5 min stream idle, no request timeout; connections as
    /// [`crate::conn::Limits::default`].
    fn default() -> Self {
        Timeouts {
            connection: crate::conn::Limits::default(),
            stream_idle: Duration::from_secs(300),
            request: None,
        }
    }
}

/// How a sidecar is set up.
#[derive(Debug, Clone)]
pub struct SidecarConfig {
    /// The service this sidecar stands beside.
    pub service: String,
    /// Its namespace: a caller's short host (`payments`) names a service in it.
    pub namespace: String,
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
    /// Bounds on downstream connections and streams.
    pub timeouts: Timeouts,
    /// How request paths are normalized before authorization and routing.
    pub path_normalization: path::Normalization,
    /// Under capture, the firewall mark every socket the sidecar opens carries, so the
    /// capture rules let its own traffic pass (`weft capture --proxy-mark`).
    pub proxy_mark: Option<u32>,
    /// The pod's DNS proxy; none: the sidecar answers no DNS.
    pub dns: Option<DnsConfig>,
    /// A stats listener (`/metrics`, `/ready`) for scrapers on the pod's address; none: the
    /// admin endpoint alone.
    pub stats: Option<SocketAddr>,
    /// The pod's own address: calls and tunnels for ports other than the app's go to it, not
    /// to loopback, so a service the app binds to loopback only stays local (as Istio sends
    /// inbound traffic to the pod's IP). None: the app's host.
    pub pod_ip: Option<std::net::IpAddr>,
    /// The workload's `version` label, for the TCP metrics it reports as destination.
    pub version: Option<String>,
    /// The workload's `app` label; none: its service's name.
    pub app_label: Option<String>,
    /// Destination ports of captured connections carried as TCP without detection.
    pub opaque_ports: Vec<u16>,
    /// How long a captured connection may stay silent before it is taken for a server-first
    /// protocol and carried as TCP.
    pub protocol_detection_timeout: Duration,
}

/// Where the pod's DNS proxy listens (UDP) and whom it asks for names outside the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsConfig {
    /// Its address (`127.0.0.1:15053` in a pod, where the capture rules send port 53).
    pub listen: SocketAddr,
    /// The upstream resolvers; none: the nameservers of `/etc/resolv.conf` at start.
    pub upstreams: Option<Vec<SocketAddr>>,
}

/// The mesh's names as the DNS proxy reads them: the routes in force.
struct MeshNames(Arc<Inputs>);

impl crate::dns::Names for MeshNames {
    fn lookup(&self, name: &str) -> crate::dns::Lookup {
        let routes = self.0.routes.load();
        if let Some(key) = crate::names::service_key_of(name, &self.0.settings.namespace)
            && let Some(vip) = routes
                .snapshot
                .services
                .get(key.as_ref())
                .and_then(|s| s.vip)
        {
            return crate::dns::Lookup::Service(vip);
        }
        let domain = crate::names::cluster_domain();
        let under_domain = name
            .strip_suffix(domain)
            .is_some_and(|rest| rest.is_empty() || rest.ends_with('.'));
        if under_domain {
            crate::dns::Lookup::NoSuchName
        } else {
            crate::dns::Lookup::Elsewhere
        }
    }
}

impl SidecarConfig {
    /// Loopback listeners on free ports for `service`, whose app is at `app`.
    pub fn local(service: &str, app: SocketAddr) -> Self {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        SidecarConfig {
            service: service.to_string(),
            namespace: crate::names::DEFAULT_NAMESPACE.to_string(),
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
            timeouts: Timeouts::default(),
            path_normalization: path::Normalization::default(),
            proxy_mark: None,
            dns: None,
            stats: None,
            pod_ip: None,
            version: None,
            app_label: None,
            opaque_ports: tcp::sniff::DEFAULT_OPAQUE_PORTS.to_vec(),
            protocol_detection_timeout: tcp::sniff::DEFAULT_DETECTION_TIMEOUT,
        }
    }
}

/// Settings every request reads.
pub struct Settings {
    /// The local service.
    pub service: String,
    /// Its namespace, where a caller's short host is read.
    pub namespace: String,
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
    /// Stream bounds (body idle, whole request).
    pub timeouts: Timeouts,
    /// How request paths are normalized.
    pub path_normalization: path::Normalization,
    /// The local service's key (`payments`, `payments.shop`).
    pub service_key: String,
    /// The workload's `version` label, or `unknown`.
    pub version: String,
    /// The workload's name form (see [`workload::encode`]), interned.
    pub workload_id: u32,
    /// What this sidecar tells the peers it calls of its workload ([`workload::PEER_METADATA`]).
    pub peer_metadata: Option<http::HeaderValue>,
    /// Whether calls between sidecars use mutual TLS.
    pub mtls: bool,
    /// The mark the sidecar's sockets carry under capture.
    pub proxy_mark: Option<u32>,
    /// Destination ports carried as TCP without detection.
    pub opaque_ports: Vec<u16>,
    /// How long detection waits for a captured connection's first bytes.
    pub detection_timeout: Duration,
    /// The sidecar's own listener ports, which no caller may reach as an app port.
    pub own_ports: Vec<u16>,
    /// Where other ports of the pod are reached (see [`SidecarConfig::pod_ip`]).
    pub pod_ip: std::net::IpAddr,
}

impl Settings {
    /// Where the app takes a call sent to `port` of its service: port 80 (or none) is the
    /// app's own port, as a Kubernetes Service's port 80 maps to its `targetPort`; any other
    /// port is the same port of the pod's address. None for the sidecar's own ports.
    pub fn app_at(&self, port: Option<u16>) -> Option<SocketAddr> {
        match port {
            None | Some(80) => Some(self.app),
            Some(p) if p == self.app.port() => Some(self.app),
            Some(p) if self.own_ports.contains(&p) => None,
            Some(p) => Some(SocketAddr::new(self.pod_ip, p)),
        }
    }
}

/// Clients to peer sidecars, over one kind of connection (the mesh's mTLS, or plaintext).
pub struct PeerClients {
    /// HTTP/2 (one multiplexed connection per endpoint), for calls the app makes over
    /// HTTP/2.
    pub h2: Client<CountingConnector<PeerConnector>, ProxyBody>,
    /// HTTP/1.1 (pooled keep-alive connections), for calls the app makes over HTTP/1.1.
    pub h1: h1_pool::H1Pool<CountingConnector<PeerConnector>>,
    /// Opens one connection per TCP tunnel or upgrade (HTTP/1.1 ALPN).
    pub tunnels: CountingConnector<PeerConnector>,
}

impl PeerClients {
    /// Clients connecting through `h2` and `h1` (the same connector but for its ALPN),
    /// counted in `stats`.
    fn new(h2: PeerConnector, h1: PeerConnector, stats: &metrics::ProxyMetrics) -> Self {
        PeerClients {
            h2: Client::builder(TokioExecutor::new())
                .http2_only(true)
                .timer(TokioTimer::new())
                .pool_idle_timeout(Duration::from_secs(90))
                .build(CountingConnector::new(h2, stats.pool("peers"))),
            tunnels: CountingConnector::new(h1.clone(), stats.pool("peers")),
            h1: h1_pool::H1Pool::new(CountingConnector::new(h1, stats.pool("peers"))),
        }
    }
}

/// What every handler shares: the test seams and the state in force.
pub struct Inputs {
    /// Routing state; swapped whole.
    pub routes: ArcSwap<routes::Routes>,
    /// Endpoints and their health.
    pub table: Arc<EndpointTable>,
    /// The plugin runtime.
    pub runtime: Arc<PluginRuntime>,
    /// Clients to peer sidecars: mTLS when the mesh has it, else plaintext (h2c).
    pub peers: PeerClients,
    /// Client to the local app (HTTP/1.1, pooled).
    pub app: h1_pool::H1Pool<CountingConnector>,
    /// Client to the local app over HTTP/2 (h2c), for gRPC calls.
    pub app_h2: Client<CountingConnector, ProxyBody>,
    /// Client to services outside the mesh (ServiceEntries): plain HTTP/1.1, keep-alive.
    pub external: h1_pool::H1Pool<CountingConnector>,
    /// TLS originated to services outside the mesh, per DestinationRule setting.
    pub origins: origination::Origins,
    /// Plaintext clients to peer sidecars, for services whose DestinationRule says
    /// `tls.mode: DISABLE`; none when the mesh has no mTLS (`peers` are plaintext).
    pub plaintext: Option<PeerClients>,
    /// Istio's TCP metrics.
    pub tcp: tcp::metrics::TcpMetrics,
    /// Where access-log lines go.
    pub access_log: crate::access_log::Writer,
    /// Live calls for `/tap` watchers.
    pub tap: tap::Tap,
    /// Span exporters by collector endpoint, kept across snapshots naming the same one.
    pub exporters: parking_lot::Mutex<HashMap<String, Arc<crate::spans::Exporter>>>,
    /// Span export counters.
    pub span_metrics: crate::spans::ExportMetrics,
    /// Circuit breakers by destination, kept across snapshots.
    pub breakers: breaker::Breakers,
    /// The token an operator's request carries to get its explanation (`x-weft-debug`).
    pub debug_token: String,
    /// The secret that marks a proxy-wasm filter's own HTTP call to the outbound listener.
    pub callout_token: String,
    /// The outbound listener's address, where admin's `/describe` sends its call.
    pub outbound_addr: SocketAddr,
    /// Metrics.
    pub metrics: ProxyMetrics,
    /// The metric handles of passthrough calls, resolved at the first one.
    pub passthrough_metrics: std::sync::OnceLock<metrics::RouteMetrics>,
    /// The inbound side's metric handles, resolved once.
    pub inbound_metrics: metrics::RouteMetrics,
    /// Stream timeout counters of the outbound and inbound listeners.
    pub stream_timeouts: [Arc<metrics::DownstreamTimeouts>; 2],
    /// The registry `/metrics` serves.
    pub registry: Registry,
    /// Fixed settings.
    pub settings: Settings,
    /// Whether the sidecar is draining.
    pub draining: AtomicBool,
    call_ids: AtomicU64,
}

impl Inputs {
    /// The clients a destination's sidecars are called with: plaintext ones for a
    /// `plaintext` destination (`tls.mode: DISABLE`) when the mesh has mTLS, else `peers`.
    pub fn peers_for(&self, plaintext: bool) -> &PeerClients {
        match &self.plaintext {
            Some(plain) if plaintext => plain,
            _ => &self.peers,
        }
    }

    /// Bounds a downstream request body: the stream idle timeout, and the request timeout
    /// from `start`; the bound that ends it is counted on `listener` (0 outbound, 1 inbound)
    /// and noted in the returned flag, when the body is not already over.
    fn bound_request(
        &self,
        body: hyper::body::Incoming,
        start: std::time::Instant,
        listener: usize,
    ) -> (body::Downstream, Option<Arc<deadline::Tripped>>) {
        use http_body::Body as _;
        let t = &self.settings.timeouts;
        let tripped = (!body.is_end_stream()).then(|| Arc::new(deadline::Tripped::default()));
        let bounded = deadline::Bounded::new(
            body,
            t.stream_idle,
            t.request.map(|r| tokio::time::Instant::from_std(start) + r),
            self.stream_timeouts[listener].clone(),
            tripped.clone(),
        );
        (bounded, tripped)
    }

    /// Bounds an upstream response body by the stream idle timeout, counted on `listener`.
    fn bound_response(
        &self,
        body: hyper::body::Incoming,
        listener: usize,
    ) -> deadline::Bounded<hyper::body::Incoming> {
        deadline::Bounded::new(
            body,
            self.settings.timeouts.stream_idle,
            None,
            self.stream_timeouts[listener].clone(),
            None,
        )
    }

    fn next_call_id(&self) -> u64 {
        self.call_ids.fetch_add(1, Ordering::Relaxed)
    }

    fn random(&self) -> u64 {
        crate::random::fast_u64()
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
    /// The access-log writer could not start.
    #[error("access log: {0}")]
    AccessLog(std::io::Error),
    /// No randomness for the debug token.
    #[error("randomness: {0}")]
    Random(std::io::Error),
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
    /// The DNS proxy's address, when it runs one.
    pub dns: Option<SocketAddr>,
    /// The stats listener's address, when it has one.
    pub stats: Option<SocketAddr>,
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
        let identity = match &config.mtls {
            Some(m) => m.workload.id().to_string(),
            None => format!(
                "spiffe://weft.local/ns/{}/sa/{}",
                config.namespace, config.service
            ),
        };
        let mut runtime_config = config.runtime.clone();
        runtime_config.node = crate::plugin::NodeInfo {
            id: format!("sidecar~{}~{}", config.namespace, config.service),
            name: config.service.clone(),
            namespace: config.namespace.clone(),
            identity: identity.clone(),
        };
        let runtime = Arc::new(PluginRuntime::new(
            runtime_config,
            &registry,
            table.clone(),
        )?);
        let metrics = ProxyMetrics::register(&registry)?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        connector.set_mark(config.proxy_mark);
        // Two pools to peers: HTTP/1.1 keep-alive for the calls apps make over HTTP/1.1 (what
        // nginx, HAProxy and Envoy default to upstream, and cheaper per call than an HTTP/2
        // stream), HTTP/2 for the calls apps make over HTTP/2 (gRPC), so streams and trailers
        // pass through intact.
        let (peer_connectors, inbound_tls) = match &config.mtls {
            None => {
                let plain = PeerConnector::plain(connector.clone());
                ([plain.clone(), plain], None)
            }
            Some(m) => {
                use crate::identity::tls::{ALPN_H2, ALPN_HTTP1};
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
                let peers = |alpn| {
                    PeerConnector::mtls(
                        connector.clone(),
                        alpn,
                        m.workload.clone(),
                        m.bundle.clone(),
                        table.clone(),
                    )
                };
                ([peers(ALPN_H2), peers(ALPN_HTTP1)], Some(tls))
            }
        };
        let [h2_connector, h1_connector] = peer_connectors;
        let plaintext = config.mtls.is_some().then(|| {
            let plain = PeerConnector::plain(connector.clone());
            PeerClients::new(plain.clone(), plain, &metrics)
        });
        let peers = PeerClients::new(h2_connector, h1_connector, &metrics);
        let tcp_metrics = tcp::metrics::TcpMetrics::register(&registry)?;
        let span_metrics = crate::spans::ExportMetrics::register(&registry)?;
        registry.register(Box::new(crate::endpoints::EjectionCollector::new(
            table.clone(),
        )?))?;
        let access_log =
            crate::access_log::Writer::start(&registry).map_err(SidecarError::AccessLog)?;
        // gRPC needs HTTP/2 (trailers) all the way: to the app too, over h2c.
        let app_h2 = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .build(CountingConnector::new(
                connector.clone(),
                metrics.pool("app"),
            ));
        let external = h1_pool::H1Pool::new(CountingConnector::new(
            connector.clone(),
            metrics.pool("external"),
        ));
        let origins = origination::Origins::new(connector.clone(), metrics.pool("external"));
        let app = h1_pool::H1Pool::new(CountingConnector::new(connector, metrics.pool("app")));
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
        let stats = match config.stats {
            Some(addr) => Some(bind("stats", addr).await?),
            None => None,
        };
        let stats_addr = match (&stats, config.stats) {
            (Some(l), Some(addr)) => Some(local(l, "stats", addr)?),
            _ => None,
        };
        let mut labels = std::collections::BTreeMap::new();
        labels.extend(config.app_label.clone().map(|a| ("app".to_string(), a)));
        labels.extend(config.version.clone().map(|v| ("version".to_string(), v)));
        let me = workload::encode(&config.service, &config.namespace, &labels);
        let inputs = Arc::new(Inputs {
            routes: ArcSwap::from_pointee(routes::Routes::empty()),
            table,
            settings: Settings {
                identity_id: runtime.intern(&identity),
                identity: identity.into(),
                service: config.service.clone(),
                namespace: config.namespace.clone(),
                app: config.app,
                app_authority: authority_of(config.app),
                replay_limit: config.replay_limit,
                timeouts: config.timeouts,
                path_normalization: config.path_normalization,
                service_key: crate::names::service_key(&config.service, &config.namespace),
                version: config.version.clone().unwrap_or_else(|| "unknown".into()),
                workload_id: runtime.intern(&me),
                peer_metadata: workload::metadata(&labels, &config.service),
                mtls: config.mtls.is_some(),
                proxy_mark: config.proxy_mark,
                opaque_ports: config.opaque_ports.clone(),
                detection_timeout: config.protocol_detection_timeout,
                pod_ip: config.pod_ip.unwrap_or(config.app.ip()),
                own_ports: [Some(out_addr), Some(in_addr), Some(admin_addr), stats_addr]
                    .iter()
                    .flatten()
                    .map(SocketAddr::port)
                    .chain(config.dns.as_ref().map(|d| d.listen.port()))
                    .collect(),
            },
            runtime,
            peers,
            app,
            app_h2,
            external,
            origins,
            plaintext,
            tcp: tcp_metrics,
            access_log,
            tap: tap::Tap::default(),
            exporters: parking_lot::Mutex::new(HashMap::new()),
            span_metrics,
            breakers: breaker::Breakers::new(metrics.overflow.clone()),
            debug_token: crate::random::secure_bytes()
                .map(hex::encode)
                .map_err(SidecarError::Random)?,
            callout_token: crate::random::secure_bytes()
                .map(hex::encode)
                .map_err(SidecarError::Random)?,
            outbound_addr: out_addr,
            inbound_metrics: metrics.handles("inbound", &config.service),
            passthrough_metrics: std::sync::OnceLock::new(),
            stream_timeouts: [
                Arc::new(metrics.downstream_timeouts("outbound")),
                Arc::new(metrics.downstream_timeouts("inbound")),
            ],
            metrics,
            registry,
            draining: AtomicBool::new(false),
            call_ids: AtomicU64::new(1),
        });
        let (shutdown, watch_rx) = watch::channel(false);
        let drain = config.drain_timeout;
        let limits = config.timeouts.connection;
        let mut dns_addr = None;
        let mut dns_task = None;
        if let Some(dns) = &config.dns {
            let socket =
                crate::capture::socket::udp_marked(dns.listen, None).map_err(|source| {
                    SidecarError::Bind {
                        what: "dns",
                        addr: dns.listen,
                        source,
                    }
                })?;
            dns_addr = socket.local_addr().ok();
            let servers = dns.upstreams.clone().unwrap_or_else(|| {
                std::fs::read_to_string("/etc/resolv.conf")
                    .map(|t| crate::dns::server::nameservers(&t))
                    .unwrap_or_default()
            });
            let upstreams = crate::dns::Upstreams {
                servers,
                mark: config.proxy_mark,
            };
            let names = Arc::new(MeshNames(inputs.clone()));
            let registry = inputs.registry.clone();
            let stop = watch_rx.clone();
            dns_task = Some(tokio::spawn(async move {
                crate::dns::serve(socket, names, upstreams, &registry, stop).await;
            }));
        }
        // proxy-wasm filters' root contexts make HTTP calls through this sidecar too.
        inputs
            .runtime
            .set_callout_sender(Arc::new(callouts::Sender {
                outbound: inputs.outbound_addr,
                token: inputs.callout_token.clone(),
                handle: tokio::runtime::Handle::current(),
            }));
        let mut tasks = vec![
            tokio::spawn(serve(
                outbound,
                "outbound",
                None,
                inputs.clone(),
                watch_rx.clone(),
                drain,
                limits,
                outbound::handle,
            )),
            tokio::spawn(serve(
                inbound,
                "inbound",
                inbound_tls,
                inputs.clone(),
                watch_rx.clone(),
                drain,
                limits,
                inbound::handle,
            )),
            tokio::spawn(serve(
                admin,
                "admin",
                None,
                inputs.clone(),
                watch_rx,
                drain,
                limits,
                admin::handle,
            )),
        ];
        tasks.extend(dns_task);
        if let Some(stats) = stats {
            tasks.push(tokio::spawn(serve(
                stats,
                "stats",
                None,
                inputs.clone(),
                shutdown.subscribe(),
                drain,
                limits,
                admin::handle_stats,
            )));
        }
        tracing::info!(service = %config.service, outbound = %out_addr, inbound = %in_addr, admin = %admin_addr, dns = ?dns_addr, "sidecar listening");
        Ok(Sidecar {
            inputs,
            outbound: out_addr,
            inbound: in_addr,
            admin: admin_addr,
            dns: dns_addr,
            stats: stats_addr,
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
        let tracing = self.tracing_for(&snapshot.tracing)?;
        let mut built = tokio::task::spawn_blocking(move || {
            let identity = crate::identity::SpiffeId::parse(&inputs.settings.identity).ok();
            let sources = routes::PluginSources {
                base_dir: &base,
                artifact_dir: &artifacts,
                limits,
                trust_domain: identity
                    .as_ref()
                    .filter(|_| inputs.settings.mtls)
                    .map(|id| id.trust_domain()),
            };
            routes::build(
                snapshot,
                &inputs.runtime,
                &inputs.table,
                &inputs.metrics,
                &sources,
                &inputs.breakers,
                &inputs.origins,
            )
        })
        .await
        .map_err(|e| Rejected(vec![format!("applying the snapshot panicked: {e}")]))??;
        built.tracing = tracing;
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
        // Spans of the drained calls go out before the process does (bounded by the export
        // timeout).
        let exporters: Vec<_> = self
            .inputs
            .exporters
            .lock()
            .drain()
            .map(|(_, e)| e)
            .collect();
        let _ =
            tokio::task::spawn_blocking(move || exporters.iter().for_each(|e| e.shutdown())).await;
    }

    /// Each side's tracing for a snapshot: an exporter per collector endpoint, the running
    /// one reused; exporters no snapshot names any more are stopped off the request path.
    fn tracing_for(
        &self,
        spec: &crate::snapshot::Tracing,
    ) -> Result<call_spans::Tracing, Rejected> {
        let mut errors = Vec::new();
        let mut exporters = self.inputs.exporters.lock();
        let mut kept: HashMap<String, Arc<crate::spans::Exporter>> = HashMap::new();
        let mut side = |name: &str, t: &Option<crate::snapshot::TraceSide>| {
            let t = t.as_ref()?;
            let exporter = if !t.report {
                None
            } else if let Some(e) = kept.get(&t.endpoint).or_else(|| exporters.get(&t.endpoint)) {
                Some(e.clone())
            } else {
                let timeout = t
                    .timeout
                    .as_deref()
                    .and_then(|d| crate::snapshot::parse_duration(d).ok())
                    .unwrap_or(Duration::from_secs(5));
                let service = format!(
                    "{}.{}",
                    self.inputs.settings.service, self.inputs.settings.namespace
                );
                match crate::spans::Exporter::start(
                    &t.endpoint,
                    timeout,
                    &service,
                    tokio::runtime::Handle::current(),
                    self.inputs.span_metrics.clone(),
                ) {
                    Ok(e) => Some(Arc::new(e)),
                    Err(e) => {
                        errors.push(format!("tracing.{name}: {e}"));
                        None
                    }
                }
            };
            if let Some(e) = &exporter {
                kept.insert(t.endpoint.clone(), e.clone());
            }
            Some(call_spans::SideTracing {
                sampling: t.sampling,
                exporter,
            })
        };
        let tracing = call_spans::Tracing {
            client: side("client", &spec.client),
            server: side("server", &spec.server),
        };
        if !errors.is_empty() {
            return Err(Rejected(errors));
        }
        let retired: Vec<_> = exporters
            .drain()
            .filter(|(endpoint, _)| !kept.contains_key(endpoint))
            .map(|(_, e)| e)
            .collect();
        *exporters = kept;
        if !retired.is_empty() {
            tokio::task::spawn_blocking(move || retired.iter().for_each(|e| e.shutdown()));
        }
        Ok(tracing)
    }
}

impl crate::snapshot::SnapshotTarget for Sidecar {
    fn artifact_dir(&self) -> &std::path::Path {
        Sidecar::artifact_dir(self)
    }

    fn current_version(&self) -> String {
        self.inputs.routes.load().snapshot.version.clone()
    }

    async fn apply_snapshot(&self, snapshot: Snapshot) -> Result<(), String> {
        self.apply(snapshot).await.map_err(|e| e.to_string())
    }

    fn engine_fingerprint(&self) -> Option<String> {
        Some(self.inputs.runtime.fingerprint().to_string())
    }

    fn baseline_fingerprint(&self) -> Option<String> {
        self.inputs
            .runtime
            .baseline_fingerprint()
            .map(str::to_string)
    }

    fn has_compiled(&self, digest: &str) -> bool {
        self.inputs.runtime.has_compiled(digest)
    }

    fn runs_baseline(&self, digest: &str) -> bool {
        self.inputs.runtime.runs_baseline(digest)
    }

    fn holds_compiled(&self, digest: &str) -> bool {
        self.inputs.runtime.held(digest).is_some()
    }

    fn import_compiled(&self, digest: &str, fingerprint: &str, code: &[u8]) -> Result<(), String> {
        self.inputs
            .runtime
            .import_compiled(digest, fingerprint, code)
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn forget_compiled(&self, digest: &str) {
        self.inputs.runtime.forget_compiled(digest);
    }

    async fn reapply(&self) -> Result<(), String> {
        self.apply(self.snapshot()).await.map_err(|e| e.to_string())
    }
}
