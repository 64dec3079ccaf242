//! `weft control`: the HTTP API for resources, artifacts and status, and the watch stream that
//! carries versioned snapshots to sidecars (each ACKed or NACKed, as xDS does).
//!
//! One lock guards the mesh state; every change is validated whole against the state it would
//! produce, persisted, and only then made current and pushed, so nothing is half-applied and a
//! restart resumes exactly where the last change left off. A sidecar is pushed a snapshot only
//! when its own snapshot's version (a content hash) differs from what it last got.
//!
//! It is also the mesh CA: a sidecar sends a CSR with its service token and gets a certificate
//! for exactly its service's SPIFFE ID, plus the trust bundle (see [`crate::identity`]).
//!
//! Everything is served over TLS 1.3 with the control plane's own certificate from that CA
//! (see [`super::serving`]); clients verify it before sending a token.

use super::api::{self, Body, error, json};
use super::artifacts;
use super::auth::{Auth, Caller};
use super::changes;
use super::channel::Endpoint;
use super::checker;
use super::issuer::{self, CaStep};
use super::istio::Resource;
use super::registry::{self, Conn};
use super::serving::{ServingError, ServingIdentity, write_bundle};
use super::store::{Backend, FileStore, PgStore, SealKey, State, Store, StoreError, Versions};
use super::wire::{SidecarStatus, StreamMessage};
use crate::conn::Ended;
use crate::identity::{Ca, CaError, SpiffeError, SpiffeId, system_clock};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// How the control plane is set up.
#[derive(Debug, Clone)]
pub struct ControlConfig {
    /// The data directory (state, history, artifacts, secrets).
    pub data_dir: PathBuf,
    /// Where the API listens.
    pub listen: SocketAddr,
    /// How long a sidecar stays registered after its stream drops.
    pub lease: Duration,
    /// How often the stream carries a heartbeat.
    pub heartbeat: Duration,
    /// The SPIFFE trust domain of the workload certificates it issues.
    pub trust_domain: String,
    /// How long a workload certificate is valid.
    pub cert_lifetime: Duration,
    /// Bounds on the API's connections.
    pub limits: ApiLimits,
    /// How pushed artifacts are compiled to check them (the `weft` binary uses a child).
    pub compiler: crate::plugin::Compiler,
    /// Istio's mesh configuration: the providers Telemetry resources name.
    pub mesh_config: super::mesh_config::MeshConfig,
    /// Registries (`host:port`) pulled from over plain HTTP rather than HTTPS.
    pub plain_http_registries: Vec<String>,
    /// Which WasmPlugins must be signed, and the keys that may sign them.
    pub signing: super::signing::SigningPolicy,
    /// Where the state is kept: the data directory, or a PostgreSQL database replicas share.
    pub store: StoreConfig,
}

/// Where the control plane keeps its state.
#[derive(Debug, Clone, Default)]
pub enum StoreConfig {
    /// Files in the data directory (one control plane).
    #[default]
    Files,
    /// A PostgreSQL database (`postgres://user[:password]@host[:port]/db`) that any number of
    /// replicas share; secrets and the CA's keys are sealed there with `key`.
    Postgres {
        /// The connection URL.
        url: String,
        /// The operator's store key, the same on every replica.
        key: SealKey,
        /// PEM roots the database's TLS certificate is verified with (else the system's).
        ca: Option<Vec<u8>>,
    },
}

pub use crate::identity::DEFAULT_TRUST_DOMAIN;

impl ControlConfig {
    /// Defaults for a data directory: loopback port 15010, 10 s lease, 2 s heartbeat, trust
    /// domain `weft.local`, 24 h certificates.
    pub fn new(data_dir: PathBuf) -> Self {
        ControlConfig {
            data_dir,
            listen: SocketAddr::from(([127, 0, 0, 1], 15010)),
            lease: Duration::from_secs(10),
            heartbeat: Duration::from_secs(2),
            trust_domain: DEFAULT_TRUST_DOMAIN.to_string(),
            cert_lifetime: crate::identity::DEFAULT_LIFETIME,
            limits: ApiLimits::default(),
            compiler: crate::plugin::Compiler::InProcess,
            mesh_config: super::mesh_config::MeshConfig::default(),
            plain_http_registries: Vec::new(),
            signing: super::signing::SigningPolicy::default(),
            store: StoreConfig::Files,
        }
    }
}

/// Why the control plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// The data directory.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The listener.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// Stored resources that no longer parse (written by another version).
    #[error("stored resources do not load:\n  - {}", .0.join("\n  - "))]
    Resources(Vec<String>),
    /// The CA directory (`<data>/ca`) cannot be opened or its root is unusable.
    #[error("mesh CA: {0}")]
    Ca(#[from] CaError),
    /// The trust domain is not a valid SPIFFE trust domain.
    #[error("trust domain {domain:?}: {source}")]
    TrustDomain {
        /// The configured domain.
        domain: String,
        /// Why it is refused.
        source: SpiffeError,
    },
    /// A zero certificate lifetime.
    #[error("certificate lifetime must be above zero")]
    CertLifetime,
    /// Another replica changed the same thing at the same time.
    #[error("{0}")]
    Conflict(String),
    /// The control plane's own certificate or bundle file.
    #[error(transparent)]
    Serving(#[from] ServingError),
}

/// The mesh as the control plane holds it, under one lock.
pub(super) struct Mesh {
    /// What is in force (and saved).
    pub(super) state: State,
    /// `state`'s resources, parsed.
    pub(super) resources: Vec<Resource>,
    /// Sidecars by id.
    pub(super) sidecars: HashMap<String, Conn>,
    /// The mesh configuration snapshots are compiled under.
    pub(super) config: Arc<super::mesh_config::MeshConfig>,
}

/// What every request handler shares.
pub(super) struct Shared {
    pub(super) store: Store,
    pub(super) auth: Auth,
    pub(super) operator_token: String,
    pub(super) mesh: Mutex<Mesh>,
    pub(super) lease: Duration,
    pub(super) heartbeat: Duration,
    /// A mutex so a root rotation never races a signing.
    pub(super) ca: Mutex<Ca>,
    /// The API's own certificate.
    pub(super) serving: ServingIdentity,
    pub(super) data_dir: PathBuf,
    pub(super) trust_domain: String,
    pub(super) cert_lifetime: Duration,
    /// Checks pushed artifacts; made on the first push.
    pub(super) checker: checker::PluginChecker,
    /// Fetches WasmPlugin URLs.
    pub(super) fetcher: super::fetch::Fetcher,
    /// Which WasmPlugins must be signed, by which keys.
    pub(super) signing: super::signing::SigningPolicy,
    /// This replica's name in a shared store (empty with the file store).
    pub(super) replica: String,
    /// The store's versions this replica holds the state of.
    pub(super) seen: Mutex<Versions>,
    /// The control plane's own metrics (`GET /metrics`).
    pub(super) registry: prometheus::Registry,
    /// A registration could not be kept: the follower reconciles with the store even if
    /// its versions did not move.
    pub(super) unsaved: std::sync::atomic::AtomicBool,
}

/// A running control plane.
pub struct ControlPlane {
    /// Where the API listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Milliseconds since the Unix epoch.
pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl ControlPlane {
    /// Opens the data directory, loads the state and starts serving.
    pub async fn start(config: ControlConfig) -> Result<ControlPlane, ControlError> {
        let registry = prometheus::Registry::new();
        let backend = match &config.store {
            StoreConfig::Files => Backend::Files(FileStore::open(&config.data_dir)?),
            StoreConfig::Postgres { url, key, ca } => {
                let tls = super::store::tls::StoreTls::new(ca.as_deref()).map_err(|e| {
                    StoreError::Database(format!("TLS roots for the database: {e}"))
                })?;
                Backend::Postgres(PgStore::open(url, key.clone(), tls, &config.data_dir)?)
            }
        };
        let store = Store::new(backend, &registry)?;
        let replica = if store.shared() {
            super::replicas::replica_name(config.listen)
        } else {
            String::new()
        };
        let seen = match store.postgres() {
            Some(pg) => pg.versions()?,
            None => Versions::default(),
        };
        let mut state = store.load()?;
        let resources = changes::parse_stored(&state).map_err(ControlError::Resources)?;
        // Sidecars that were connected when the control plane stopped get a fresh lease to
        // come back in, rather than being dropped (and their endpoints pushed away) at once.
        let until = now_ms() + config.lease.as_millis() as u64;
        for w in state.workloads.values_mut() {
            if w.lease_until_ms == 0 {
                w.lease_until_ms = until;
            }
        }
        // Checked now, so a bad flag stops the start rather than every certificate request.
        SpiffeId::new(
            &config.trust_domain,
            crate::names::DEFAULT_NAMESPACE,
            "probe",
        )
        .map_err(|source| ControlError::TrustDomain {
            domain: config.trust_domain.clone(),
            source,
        })?;
        if config.cert_lifetime.is_zero() {
            return Err(ControlError::CertLifetime);
        }
        let ca = match store.postgres() {
            None => Ca::open(
                &config.data_dir.join("ca"),
                &config.trust_domain,
                system_clock(),
            )?,
            Some(pg) => super::replicas::shared_ca(pg, &config.trust_domain)?,
        };
        let serving = ServingIdentity::issue(&ca, &config.trust_domain, config.cert_lifetime)?;
        let acceptor = serving.acceptor()?;
        write_bundle(&config.data_dir, &ca.bundle())?;
        let operator_token = store.secret("operator.token")?;
        if store.shared() {
            // The CLI on this machine finds the token where it always does.
            FileStore::open(&config.data_dir)?.keep_copy("operator.token", &operator_token)?;
        }
        let auth = Auth::new(operator_token.clone(), &store.secret("secret")?);
        let listener =
            TcpListener::bind(config.listen)
                .await
                .map_err(|source| ControlError::Bind {
                    addr: config.listen,
                    source,
                })?;
        let addr = listener.local_addr().map_err(|source| ControlError::Bind {
            addr: config.listen,
            source,
        })?;
        let shared = Arc::new(Shared {
            store,
            auth,
            operator_token,
            mesh: Mutex::new(Mesh {
                state,
                resources,
                sidecars: HashMap::new(),
                config: Arc::new(config.mesh_config.clone()),
            }),
            lease: config.lease,
            heartbeat: config.heartbeat,
            ca: Mutex::new(ca),
            serving,
            data_dir: config.data_dir.clone(),
            trust_domain: config.trust_domain.clone(),
            cert_lifetime: config.cert_lifetime,
            checker: checker::PluginChecker::new(
                config.compiler.clone(),
                Some(config.data_dir.join("compiled")),
            ),
            fetcher: super::fetch::Fetcher::new(config.plain_http_registries.clone()),
            signing: config.signing.clone(),
            replica,
            seen: Mutex::new(seen),
            registry,
            unsaved: std::sync::atomic::AtomicBool::new(false),
        });
        let (shutdown, rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(serve(
                listener,
                acceptor,
                shared.clone(),
                config.limits,
                rx.clone(),
            )),
            tokio::spawn(housekeeping(shared.clone(), rx.clone())),
        ];
        let mut tasks = tasks;
        if shared.store.shared() {
            super::replicas::warm(&shared);
            tasks.push(tokio::spawn(super::replicas::follow(shared.clone(), rx)));
        }
        tracing::info!(%addr, data = %config.data_dir.display(), "control plane listening");
        Ok(ControlPlane {
            addr,
            shared,
            shutdown,
            tasks,
        })
    }

    /// The operator's token.
    pub fn operator_token(&self) -> &str {
        &self.shared.operator_token
    }

    /// The bootstrap token for a service's sidecars.
    pub fn service_token(&self, service: &str) -> String {
        self.shared.auth.service_token(service)
    }

    /// The trust bundle sidecars get now (PEM).
    pub fn bundle(&self) -> String {
        self.shared.ca.lock().bundle()
    }

    /// Rotation step one: a new root joins the bundle (sidecars pick it up at their next
    /// renewal); the current root keeps signing.
    pub fn stage_ca_root(&self) -> Result<(), ControlError> {
        issuer::ca_step(&self.shared, CaStep::Stage)
    }

    /// Rotation step two: the staged root signs; the old one stays trusted.
    pub fn activate_ca_root(&self) -> Result<(), ControlError> {
        issuer::ca_step(&self.shared, CaStep::Activate)
    }

    /// Rotation step three: the old roots leave the bundle.
    pub fn retire_ca_roots(&self) -> Result<(), ControlError> {
        issuer::ca_step(&self.shared, CaStep::Retire)
    }

    /// A client endpoint for this control plane, trusting its current bundle.
    pub fn endpoint(&self) -> Endpoint {
        let bundle = crate::identity::TrustBundle::from_pem(&self.bundle())
            .expect("the CA's own bundle parses");
        Endpoint::new(self.addr, Arc::new(bundle)).expect("the TLS 1.3 client config builds")
    }

    /// The sidecars known now.
    pub fn status(&self) -> Vec<SidecarStatus> {
        registry::status(&self.shared)
    }

    /// Stops serving (streams close; sidecars keep their last snapshot).
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Bounds on the API's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ApiLimits {
    /// Per connection. A sidecar's watch stream is a response in flight, never idle; its
    /// heartbeats keep it moving.
    pub connection: crate::conn::Limits,
    /// Connections open at once; more are closed as they arrive.
    pub max_connections: usize,
}

impl Default for ApiLimits {
    /// 10 s for request headers, 2 min idle, 4,096 connections.
    fn default() -> Self {
        ApiLimits {
            connection: crate::conn::Limits {
                request_headers: Duration::from_secs(10),
                idle: Duration::from_secs(120),
                max_duration: None,
            },
            max_connections: 4096,
        }
    }
}

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    limits: ApiLimits,
    shutdown: watch::Receiver<bool>,
) {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    let mut stop = shutdown.clone();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                // Past the cap a connection is closed at once: a flood of idle connections
                // cannot grow the control plane without bound.
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, max = limits.max_connections, "control API connection refused: at the connection limit");
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let acceptor = acceptor.clone();
                let drain = shutdown.clone();
                tokio::spawn(async move {
                    let _slot = slot;
                    let tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => tls,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "control API TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "control API TLS handshake timed out");
                            return;
                        }
                    };
                    let handler = move |req| handle(shared.clone(), req, peer);
                    match crate::conn::serve(tls, limits.connection, drain, handler).await {
                        Ended::Closed => {}
                        Ended::TimedOut(t) => {
                            tracing::debug!(%peer, timeout = t.as_str(), "control connection closed by a bound");
                        }
                        Ended::Failed(e) => tracing::debug!(%peer, "control connection ended: {e}"),
                    }
                });
            }
            _ = stop.changed() => return,
        }
    }
}

/// Heartbeats on every stream, and expiry of leases.
async fn housekeeping(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(shared.heartbeat);
    let heartbeat = api::line(&StreamMessage::Heartbeat);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        {
            let mut mesh = shared.mesh.lock();
            for conn in mesh.sidecars.values_mut() {
                if let Some(tx) = &conn.stream
                    && tx.try_send(heartbeat.clone()).is_err()
                {
                    // A full or closed stream: the sidecar will reconnect.
                    conn.stream = None;
                }
            }
            // With a shared store, leases end there, swept by one replica (below), and every
            // replica learns of it from the store.
            if !shared.store.shared() {
                expire_leases(&shared, &mut mesh);
            }
        }
        if shared.store.shared() {
            let sweeping = shared.clone();
            let _ =
                tokio::task::spawn_blocking(move || super::replicas::keep_alive(&sweeping)).await;
        }
        if shared.serving.due(SystemTime::now())
            && let Err(e) = shared.serving.reissue(&shared.ca.lock())
        {
            tracing::warn!("renewing the control plane's certificate failed, retrying: {e}");
        }
    }
}

/// Removes the registrations whose lease ended, and pushes the endpoints that leaves.
fn expire_leases(shared: &Shared, mesh: &mut Mesh) {
    let now = now_ms();
    let gone: Vec<String> = mesh
        .state
        .workloads
        .iter()
        .filter(|(_, w)| w.lease_until_ms != 0 && w.lease_until_ms < now)
        .map(|(id, _)| id.clone())
        .collect();
    for id in &gone {
        mesh.state.workloads.remove(id);
        mesh.sidecars.remove(id);
        tracing::info!(sidecar = %id, "lease expired; endpoint removed");
    }
    if !gone.is_empty() {
        registry::persist_and_push(shared, mesh, &gone);
    }
}

fn caller(shared: &Shared, req: &Request<Incoming>) -> Option<Caller> {
    let token = req
        .headers()
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")?;
    shared.auth.check(token.trim())
}

/// The largest body of an ACK or a CSR.
const MAX_SMALL_BODY: usize = 64 << 10;

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
    peer: SocketAddr,
) -> Result<Response<Body>, std::convert::Infallible> {
    // Probes carry no credential: liveness is this answer; readiness is whether the store
    // can keep a change (the reason is logged, not told to an unauthenticated caller).
    match (req.method(), req.uri().path()) {
        // Scraped as istiod's monitoring port is, without a credential: counts and states,
        // no names of anything in the mesh.
        (&Method::GET, "/metrics") => {
            if let Some(pg) = shared.store.postgres() {
                // Read now: the lease thread flips it between housekeeping ticks.
                let leader = pg.is_leader();
                shared.store.metrics().singleton.set(i64::from(leader));
            }
            let text = prometheus::TextEncoder::new()
                .encode_to_string(&shared.registry.gather())
                .unwrap_or_default();
            let mut r = Response::new(Full::new(Bytes::from(text)).boxed_unsync());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4"),
            );
            return Ok(r);
        }
        (&Method::GET, "/healthz") => {
            return Ok(json(StatusCode::OK, &serde_json::json!({"live": true})));
        }
        (&Method::GET, "/readyz") => {
            let probing = shared.clone();
            let ready = tokio::task::spawn_blocking(move || probing.store.check_ready())
                .await
                .map_err(|e| e.to_string())
                .and_then(|r| r.map_err(|e| e.to_string()));
            return Ok(match ready {
                Ok(()) => json(StatusCode::OK, &serde_json::json!({"ready": true})),
                Err(e) => {
                    tracing::warn!("not ready: the store cannot keep a change: {e}");
                    json(
                        StatusCode::SERVICE_UNAVAILABLE,
                        &serde_json::json!({"ready": false, "reason": "the store cannot keep a change"}),
                    )
                }
            });
        }
        _ => {}
    }
    let Some(who) = caller(&shared, &req) else {
        return Ok(error(
            StatusCode::UNAUTHORIZED,
            "missing or unknown credential: send 'Authorization: Bearer <token>' (the operator \
             token is in the data directory's operator.token; sidecars use their service's token)",
        ));
    };
    let path = req.uri().path().to_string();
    let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
    let operator = who == Caller::Operator;
    let forbidden = || error(StatusCode::FORBIDDEN, "this credential may not do that");
    let resp = match (req.method().clone(), segments.as_slice()) {
        (Method::GET, ["v1", "watch"]) => registry::watch_stream(&shared, &who, &req, peer),
        (Method::POST, ["v1", "ack"]) => match api::body_bytes(req, MAX_SMALL_BODY).await {
            Ok(b) => registry::ack(&shared, &who, &b),
            Err(r) => r,
        },
        (Method::GET, ["v1", "identity"]) => issuer::identity(&shared, &who),
        (Method::GET, ["v1", "bundle"]) => {
            let mut r =
                Response::new(Full::new(Bytes::from(shared.ca.lock().bundle())).boxed_unsync());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/x-pem-file"),
            );
            r
        }
        (Method::POST, ["v1", "certificates"]) => {
            match api::body_bytes(req, MAX_SMALL_BODY).await {
                Ok(b) => issuer::certificate(&shared, &who, &b),
                Err(r) => r,
            }
        }
        (Method::GET, ["v1", "artifacts", digest]) => match shared.store.artifact(digest) {
            Some(bytes) => Response::new(Full::new(Bytes::from(bytes)).boxed_unsync()),
            None => error(
                StatusCode::NOT_FOUND,
                format!("no artifact {digest} in the store"),
            ),
        },
        (Method::GET, ["v1", "artifacts", digest, "compiled", fingerprint]) => {
            let (digest, fingerprint) = (digest.to_string(), fingerprint.to_string());
            let checking = shared.clone();
            let code = tokio::task::spawn_blocking(move || {
                checking.checker.compiled(&digest, &fingerprint)
            })
            .await
            .ok()
            .flatten();
            match code {
                Some(code) => Response::new(Full::new(Bytes::from_owner(code)).boxed_unsync()),
                None => error(
                    StatusCode::NOT_FOUND,
                    "no code compiled for that artifact and engine",
                ),
            }
        }
        _ if !operator => forbidden(),
        (Method::POST, ["v1", "apply"]) => {
            let source = api::query(&req)
                .remove("source")
                .unwrap_or_else(|| "request".into());
            match api::body_bytes(req, api::MAX_APPLY).await {
                Ok(b) => changes::apply(&shared, &source, &b).await,
                Err(r) => r,
            }
        }
        (Method::PUT, ["v1", "pull-secrets", name]) => {
            let ns = api::query(&req)
                .remove("namespace")
                .unwrap_or_else(|| "default".into());
            match api::body_bytes(req, MAX_SMALL_BODY).await {
                Ok(b) => super::pull_secrets::put(&shared, &ns, name, &b),
                Err(r) => r,
            }
        }
        (Method::GET, ["v1", "pull-secrets"]) => super::pull_secrets::list(&shared),
        (Method::GET, ["v1", "resources"]) => changes::list(&shared, None, None),
        (Method::GET, ["v1", "resources", kind]) => changes::list(&shared, Some(kind), None),
        (Method::GET, ["v1", "resources", kind, name]) => {
            changes::list(&shared, Some(kind), Some(name))
        }
        (Method::DELETE, ["v1", "resources", kind, name]) => {
            let ns = api::query(&req)
                .remove("namespace")
                .unwrap_or_else(|| "default".into());
            changes::delete(&shared, kind, &ns, name).await
        }
        (Method::POST, ["v1", "artifacts"]) => {
            let signature = api::query(&req).remove("signature");
            match api::body_bytes(req, api::MAX_ARTIFACT).await {
                Ok(b) => artifacts::push(&shared, b, signature).await,
                Err(r) => r,
            }
        }
        (Method::GET, ["v1", "status"]) => {
            let revision = shared.mesh.lock().state.revision;
            let store = match shared.store.postgres() {
                None => serde_json::json!({"kind": "files"}),
                Some(pg) => serde_json::json!({"kind": "postgres", "database": pg.shown(),
                    "replica": shared.replica, "singleton": pg.is_leader()}),
            };
            // Which root signs, so replicas can be seen to agree.
            let signer = crate::plugin::sha256_hex(shared.ca.lock().signer_pem().as_bytes());
            json(
                StatusCode::OK,
                &serde_json::json!({"revision": revision, "store": store,
                                    "ca": {"signer": signer},
                                    "sidecars": registry::status(&shared)}),
            )
        }
        (Method::POST, ["v1", "ca", "rotate"]) => issuer::ca_change(&shared, CaStep::Stage),
        (Method::POST, ["v1", "ca", "activate"]) => issuer::ca_change(&shared, CaStep::Activate),
        (Method::POST, ["v1", "ca", "retire"]) => issuer::ca_change(&shared, CaStep::Retire),
        (Method::GET, ["v1", "stats"]) => registry::stats(&shared).await,
        (Method::GET, ["v1", "history"]) => match shared.store.history() {
            Ok(h) => json(StatusCode::OK, &h),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        (Method::GET, ["v1", "tokens", service]) => {
            let namespace = api::query(&req)
                .remove("namespace")
                .unwrap_or_else(|| crate::names::DEFAULT_NAMESPACE.into());
            if !crate::names::is_dns_label(service) || !crate::names::is_dns_label(&namespace) {
                error(
                    StatusCode::BAD_REQUEST,
                    "a service and a namespace are each 1 to 63 of a-z, 0-9 and '-', starting and ending with a letter or digit",
                )
            } else if namespace == crate::identity::CONTROL_NAMESPACE {
                error(
                    StatusCode::BAD_REQUEST,
                    format!(
                        "namespace {namespace} is the control plane's: no workload lives in it"
                    ),
                )
            } else {
                let key = crate::names::service_key(service, &namespace);
                json(
                    StatusCode::OK,
                    &serde_json::json!({"service": key, "token": shared.auth.service_token(&key)}),
                )
            }
        }
        _ => error(StatusCode::NOT_FOUND, format!("no API at {path}")),
    };
    Ok(resp)
}
