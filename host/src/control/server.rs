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

use super::auth::{Auth, Caller};
use super::channel::Endpoint;
use super::compile::{self, Workload};
use super::istio::{self, Kind, Resource};
use super::serving::{ServingError, ServingIdentity, write_bundle};
use super::stats;
use super::store::{Change, Registration, State, Store, StoreError, Stored, key};
use crate::identity::{Ca, CaError, SpiffeError, SpiffeId, system_clock};
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

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
}

/// The namespace of every workload identity: the mesh has no namespaces yet.
pub const NAMESPACE: &str = "default";

/// The default SPIFFE trust domain.
pub const DEFAULT_TRUST_DOMAIN: &str = "weft.local";

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
    /// The control plane's own certificate or bundle file.
    #[error(transparent)]
    Serving(#[from] ServingError),
}

/// The answer to `POST /v1/certificates`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateAnswer {
    /// The certificate chain, leaf first (PEM).
    pub chain: String,
    /// The trust bundle: every root a peer's certificate may chain to (PEM).
    pub bundle: String,
    /// End of the certificate's validity (ms since the Unix epoch).
    pub not_after: u64,
    /// The identity the certificate names.
    pub spiffe_id: String,
    /// The trust domain, so a sidecar learns it from the control plane.
    pub trust_domain: String,
}

/// The answer to `GET /v1/identity`: who the caller's token makes it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityAnswer {
    /// The SPIFFE ID the control plane signs for this token, and no other.
    pub spiffe_id: String,
    /// The trust domain.
    pub trust_domain: String,
}

/// What the control plane knows of one sidecar.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SidecarStatus {
    /// Its id.
    pub id: String,
    /// Its service.
    pub service: String,
    /// Its inbound address.
    pub address: String,
    /// Its admin endpoint (`/metrics`), when it told us.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<String>,
    /// The snapshot version last sent.
    pub sent: String,
    /// The version it last ACKed (the one it runs).
    pub acked: String,
    /// The reason of its last NACK, if the last answer was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nack: Option<String>,
    /// Whether its stream is open.
    pub connected: bool,
    /// When it was last heard from (ms since the Unix epoch).
    pub last_seen_ms: u64,
}

/// One message on the watch stream (a JSON line).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum StreamMessage {
    /// A snapshot to apply.
    Snapshot {
        /// Its version.
        version: String,
        /// The control plane's revision it was compiled from.
        revision: u64,
        /// The snapshot.
        snapshot: crate::snapshot::Snapshot,
    },
    /// Nothing changed; the stream is alive.
    Heartbeat,
}

/// A sidecar's answer to a snapshot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ack {
    /// The sidecar's id.
    pub id: String,
    /// The version answered.
    pub version: String,
    /// Applied, or not.
    pub ok: bool,
    /// Why not.
    #[serde(default)]
    pub reason: Option<String>,
}

struct Conn {
    status: SidecarStatus,
    stream: Option<mpsc::Sender<Bytes>>,
}

struct Mesh {
    state: State,
    resources: Vec<Resource>,
    sidecars: HashMap<String, Conn>,
}

struct Shared {
    store: Store,
    auth: Auth,
    operator_token: String,
    mesh: Mutex<Mesh>,
    lease: Duration,
    heartbeat: Duration,
    /// A mutex so a root rotation never races a signing.
    ca: Mutex<Ca>,
    /// The API's own certificate.
    serving: ServingIdentity,
    data_dir: PathBuf,
    trust_domain: String,
    cert_lifetime: Duration,
}

/// A running control plane.
pub struct ControlPlane {
    /// Where the API listens.
    pub addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Parses stored documents back into resources.
fn parse_stored(state: &State) -> Result<Vec<Resource>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for (k, stored) in &state.resources {
        match istio::from_document(stored.document.clone(), k) {
            Ok(r) => out.push(r),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

impl ControlPlane {
    /// Opens the data directory, loads the state and starts serving.
    pub async fn start(config: ControlConfig) -> Result<ControlPlane, ControlError> {
        let store = Store::open(&config.data_dir)?;
        let mut state = store.load()?;
        let resources = parse_stored(&state).map_err(ControlError::Resources)?;
        // Sidecars that were connected when the control plane stopped get a fresh lease to
        // come back in, rather than being dropped (and their endpoints pushed away) at once.
        let until = now_ms() + config.lease.as_millis() as u64;
        for w in state.workloads.values_mut() {
            if w.lease_until_ms == 0 {
                w.lease_until_ms = until;
            }
        }
        // Checked now, so a bad flag stops the start rather than every certificate request.
        SpiffeId::new(&config.trust_domain, NAMESPACE, "probe").map_err(|source| {
            ControlError::TrustDomain {
                domain: config.trust_domain.clone(),
                source,
            }
        })?;
        if config.cert_lifetime.is_zero() {
            return Err(ControlError::CertLifetime);
        }
        let ca = Ca::open(&config.data_dir.join("ca"), system_clock())?;
        let serving = ServingIdentity::issue(&ca, &config.trust_domain, config.cert_lifetime)?;
        let acceptor = serving.acceptor()?;
        write_bundle(&config.data_dir, &ca.bundle())?;
        let operator_token = store.secret("operator.token")?;
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
            }),
            lease: config.lease,
            heartbeat: config.heartbeat,
            ca: Mutex::new(ca),
            serving,
            data_dir: config.data_dir.clone(),
            trust_domain: config.trust_domain.clone(),
            cert_lifetime: config.cert_lifetime,
        });
        let (shutdown, rx) = watch::channel(false);
        let tasks = vec![
            tokio::spawn(serve(listener, acceptor, shared.clone(), rx.clone())),
            tokio::spawn(housekeeping(shared.clone(), rx)),
        ];
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
        stage_root(&self.shared)
    }

    /// Rotation step two: the staged root signs; the old one stays trusted.
    pub fn activate_ca_root(&self) -> Result<(), ControlError> {
        activate_root(&self.shared)
    }

    /// Rotation step three: the old roots leave the bundle.
    pub fn retire_ca_roots(&self) -> Result<(), ControlError> {
        retire_roots(&self.shared)
    }

    /// A client endpoint for this control plane, trusting its current bundle.
    pub fn endpoint(&self) -> Endpoint {
        let bundle = crate::identity::TrustBundle::from_pem(&self.bundle())
            .expect("the CA's own bundle parses");
        Endpoint::new(self.addr, Arc::new(bundle)).expect("the TLS 1.3 client config builds")
    }

    /// The sidecars known now.
    pub fn status(&self) -> Vec<SidecarStatus> {
        status(&self.shared)
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

fn status(shared: &Shared) -> Vec<SidecarStatus> {
    let mesh = shared.mesh.lock();
    let mut out: Vec<SidecarStatus> = mesh.sidecars.values().map(|c| c.status.clone()).collect();
    out.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
    out
}

/// Stages a new root and publishes the bundle holding both.
fn stage_root(shared: &Shared) -> Result<(), ControlError> {
    let mut ca = shared.ca.lock();
    ca.stage_root()?;
    write_bundle(&shared.data_dir, &ca.bundle())?;
    tracing::info!("CA root staged: trusted from now on, signing after `weft ca activate`");
    Ok(())
}

/// Signs with the staged root from now on, the API's own certificate included.
fn activate_root(shared: &Shared) -> Result<(), ControlError> {
    let mut ca = shared.ca.lock();
    ca.activate_root()?;
    write_bundle(&shared.data_dir, &ca.bundle())?;
    shared.serving.reissue(&ca)?;
    tracing::info!("CA root activated: new certificates come from the new root, both are trusted");
    Ok(())
}

/// Retires the old roots and publishes the bundle without them.
fn retire_roots(shared: &Shared) -> Result<(), ControlError> {
    let mut ca = shared.ca.lock();
    ca.retire_old_roots()?;
    write_bundle(&shared.data_dir, &ca.bundle())?;
    tracing::info!("old CA roots retired: only the current root is trusted");
    Ok(())
}

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

async fn serve(
    listener: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
) {
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, peer)) = accepted else {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let acceptor = acceptor.clone();
                let builder = builder.clone();
                tokio::spawn(async move {
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
                    let svc = service_fn(move |req| handle(shared.clone(), req));
                    if let Err(e) = builder.serve_connection(TokioIo::new(tls), svc).await {
                        tracing::debug!("control connection ended: {e}");
                    }
                });
            }
            _ = shutdown.changed() => return,
        }
    }
}

/// Heartbeats on every stream, and expiry of leases.
async fn housekeeping(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(shared.heartbeat);
    let heartbeat = line(&StreamMessage::Heartbeat);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        let expired = {
            let mut mesh = shared.mesh.lock();
            for conn in mesh.sidecars.values_mut() {
                if let Some(tx) = &conn.stream
                    && tx.try_send(heartbeat.clone()).is_err()
                {
                    // A full or closed stream: the sidecar will reconnect.
                    conn.stream = None;
                }
            }
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
            !gone.is_empty()
        };
        if expired {
            persist_and_push(&shared);
        }
        let ca = shared.ca.lock();
        if shared.serving.due(SystemTime::now())
            && let Err(e) = shared.serving.reissue(&ca)
        {
            tracing::warn!("renewing the control plane's certificate failed, retrying: {e}");
        }
    }
}

type Body = http_body_util::combinators::UnsyncBoxBody<Bytes, std::convert::Infallible>;

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<Body> {
    let bytes = serde_json::to_vec_pretty(value).unwrap_or_default();
    let mut r = Response::new(Full::new(Bytes::from(bytes)).boxed_unsync());
    *r.status_mut() = status;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    r
}

fn errors(status: StatusCode, list: Vec<String>) -> Response<Body> {
    json(status, &serde_json::json!({ "errors": list }))
}

fn error(status: StatusCode, text: impl Into<String>) -> Response<Body> {
    errors(status, vec![text.into()])
}

fn line<T: Serialize>(msg: &T) -> Bytes {
    let mut v = serde_json::to_vec(msg).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

/// The largest request body the API reads (resources and artifacts).
const MAX_BODY: usize = 32 << 20;

async fn body_bytes(req: Request<Incoming>) -> Result<Bytes, Response<Body>> {
    match Limited::new(req.into_body(), MAX_BODY).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) => Err(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("request body unreadable or over {MAX_BODY} bytes: {e}"),
        )),
    }
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    req.uri()
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), percent_decode(v)))
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
                continue;
            }
            (b'+', _) => out.push(b' '),
            (c, _) => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
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

async fn handle(
    shared: Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
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
        (Method::GET, ["v1", "watch"]) => watch_stream(&shared, &who, &req),
        (Method::POST, ["v1", "ack"]) => match body_bytes(req).await {
            Ok(b) => ack(&shared, &who, &b),
            Err(r) => r,
        },
        (Method::GET, ["v1", "identity"]) => identity(&shared, &who),
        (Method::GET, ["v1", "bundle"]) => {
            let mut r =
                Response::new(Full::new(Bytes::from(shared.ca.lock().bundle())).boxed_unsync());
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/x-pem-file"),
            );
            r
        }
        (Method::POST, ["v1", "certificates"]) => match body_bytes(req).await {
            Ok(b) => certificate(&shared, &who, &b),
            Err(r) => r,
        },
        (Method::GET, ["v1", "artifacts", digest]) => match shared.store.artifact(digest) {
            Some(bytes) => Response::new(Full::new(Bytes::from(bytes)).boxed_unsync()),
            None => error(
                StatusCode::NOT_FOUND,
                format!("no artifact {digest} in the store"),
            ),
        },
        _ if !operator => forbidden(),
        (Method::POST, ["v1", "apply"]) => {
            let source = query(&req)
                .remove("source")
                .unwrap_or_else(|| "request".into());
            match body_bytes(req).await {
                Ok(b) => apply(&shared, &source, &b).await,
                Err(r) => r,
            }
        }
        (Method::GET, ["v1", "resources"]) => list(&shared, None, None),
        (Method::GET, ["v1", "resources", kind]) => list(&shared, Some(kind), None),
        (Method::GET, ["v1", "resources", kind, name]) => list(&shared, Some(kind), Some(name)),
        (Method::DELETE, ["v1", "resources", kind, name]) => {
            let ns = query(&req)
                .remove("namespace")
                .unwrap_or_else(|| "default".into());
            delete(&shared, kind, &ns, name)
        }
        (Method::POST, ["v1", "artifacts"]) => match body_bytes(req).await {
            Ok(b) => push_artifact(&shared, &b),
            Err(r) => r,
        },
        (Method::GET, ["v1", "status"]) => {
            let revision = shared.mesh.lock().state.revision;
            json(
                StatusCode::OK,
                &serde_json::json!({"revision": revision, "sidecars": status(&shared)}),
            )
        }
        (Method::POST, ["v1", "ca", "rotate"]) => ca_change(&shared, stage_root),
        (Method::POST, ["v1", "ca", "activate"]) => ca_change(&shared, activate_root),
        (Method::POST, ["v1", "ca", "retire"]) => ca_change(&shared, retire_roots),
        (Method::GET, ["v1", "stats"]) => stats(&shared).await,
        (Method::GET, ["v1", "history"]) => match shared.store.history() {
            Ok(h) => json(StatusCode::OK, &h),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
        },
        (Method::GET, ["v1", "tokens", service]) => json(
            StatusCode::OK,
            &serde_json::json!({"service": service, "token": shared.auth.service_token(service)}),
        ),
        _ => error(StatusCode::NOT_FOUND, format!("no API at {path}")),
    };
    Ok(resp)
}

/// Reads every connected sidecar's `/metrics` (1 s each, concurrently) into one
/// [`stats::Reading`] of the mesh's Istio series; sidecars that did not answer are listed.
async fn stats(shared: &Shared) -> Response<Body> {
    let targets: Vec<(String, String)> = status(shared)
        .into_iter()
        .filter(|s| s.connected)
        .filter_map(|s| Some((s.id, s.admin?)))
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for (id, admin) in targets {
        set.spawn(async move {
            let url = format!("http://{admin}/metrics");
            let got = tokio::time::timeout(Duration::from_secs(1), super::client::download(&url))
                .await
                .map_err(|_| "no answer within 1 s".to_string())
                .and_then(|r| r);
            (id, got)
        });
    }
    let mut reading = stats::Reading::default();
    let (mut scraped, mut unreachable) = (0, Vec::new());
    while let Some(Ok((id, got))) = set.join_next().await {
        match got {
            Ok(bytes) => {
                reading.add_exposition(&String::from_utf8_lossy(&bytes));
                scraped += 1;
            }
            Err(e) => unreachable.push(format!("{id}: {e}")),
        }
    }
    json(
        StatusCode::OK,
        &serde_json::json!({"scraped": scraped, "unreachable": unreachable, "reading": reading}),
    )
}

/// Applies a CA change and answers with the bundle now in force.
fn ca_change(shared: &Shared, change: fn(&Shared) -> Result<(), ControlError>) -> Response<Body> {
    match change(shared) {
        Ok(()) => {
            let bundle = shared.ca.lock().bundle();
            let roots = bundle.matches("-----BEGIN CERTIFICATE-----").count();
            json(
                StatusCode::OK,
                &serde_json::json!({"roots": roots, "bundle": bundle}),
            )
        }
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// The identity a service's token proves: the only one the CA signs for it.
fn identity_of(shared: &Shared, service: &str) -> Result<SpiffeId, String> {
    SpiffeId::new(&shared.trust_domain, NAMESPACE, service)
        .map_err(|e| format!("service {service:?} cannot be a SPIFFE identity: {e}"))
}

fn identity(shared: &Shared, who: &Caller) -> Response<Body> {
    let Caller::Service(service) = who else {
        return error(
            StatusCode::BAD_REQUEST,
            "the operator token names no workload: use a service token",
        );
    };
    match identity_of(shared, service) {
        Ok(id) => json(
            StatusCode::OK,
            &IdentityAnswer {
                spiffe_id: id.to_string(),
                trust_domain: shared.trust_domain.clone(),
            },
        ),
        Err(e) => error(StatusCode::BAD_REQUEST, e),
    }
}

/// The largest CSR read: a P-256 CSR with one URI SAN is well under 1 KiB.
const MAX_CSR: usize = 16 << 10;

/// Signs a CSR: a sidecar gets exactly its token's identity; the operator gets the service the
/// CSR names, within this trust domain and namespace.
fn certificate(shared: &Shared, who: &Caller, body: &[u8]) -> Response<Body> {
    if body.len() > MAX_CSR {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("a CSR is at most {MAX_CSR} bytes"),
        );
    }
    let Ok(csr) = std::str::from_utf8(body) else {
        return error(StatusCode::BAD_REQUEST, "the CSR is not PEM text");
    };
    let service = match who {
        Caller::Service(s) => s.clone(),
        Caller::Operator => match requested_service(csr) {
            Ok(s) => s,
            Err(e) => return error(StatusCode::BAD_REQUEST, e),
        },
    };
    let expected = match identity_of(shared, &service) {
        Ok(id) => id,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let (issued, bundle) = {
        let ca = shared.ca.lock();
        (
            ca.sign_csr(csr, &expected, shared.cert_lifetime),
            ca.bundle(),
        )
    };
    let issued = match issued {
        Ok(i) => i,
        Err(e @ CaError::WrongIdentity { .. }) => {
            tracing::warn!(caller = %expected, "certificate refused: {e}");
            return error(
                StatusCode::FORBIDDEN,
                format!(
                    "a sidecar cannot obtain a certificate for another service's identity: {e}"
                ),
            );
        }
        Err(
            e @ (CaError::Csr(_)
            | CaError::NoIdentity
            | CaError::OtherSans(_)
            | CaError::BadIdentity(_)),
        ) => return error(StatusCode::BAD_REQUEST, e.to_string()),
        Err(e) => {
            tracing::error!(identity = %expected, "cannot sign a certificate: {e}");
            return error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string());
        }
    };
    let not_after = issued
        .not_after
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    tracing::info!(identity = %expected, not_after_ms = not_after, "issued a workload certificate");
    json(
        StatusCode::OK,
        &CertificateAnswer {
            chain: issued.chain_pem,
            bundle,
            not_after,
            spiffe_id: expected.to_string(),
            trust_domain: shared.trust_domain.clone(),
        },
    )
}

/// The service a CSR's SPIFFE ID names (the operator's requests; the CA still checks the whole
/// ID against this trust domain and namespace).
fn requested_service(csr: &str) -> Result<String, String> {
    let parsed = rcgen::CertificateSigningRequestParams::from_pem(csr)
        .map_err(|e| format!("CSR refused: {e}"))?;
    parsed
        .params
        .subject_alt_names
        .iter()
        .find_map(|san| match san {
            rcgen::SanType::URI(uri) => SpiffeId::parse(uri.as_str()).ok(),
            _ => None,
        })
        .map(|id| id.service().to_string())
        .ok_or_else(|| "CSR refused: it names no SPIFFE ID (one URI SAN expected)".to_string())
}

/// The workloads registered now, for compiling snapshots.
fn workloads(state: &State) -> Vec<Workload> {
    state
        .workloads
        .values()
        .map(|w| Workload {
            service: w.service.clone(),
            labels: w.labels.clone(),
            address: w.address.clone(),
        })
        .collect()
}

/// Sends each connected sidecar its snapshot if its version changed. Sidecars of one service
/// with the same labels get the same snapshot: it is compiled and serialized once per push.
fn push(mesh: &mut Mesh) {
    let all = workloads(&mesh.state);
    let revision = mesh.state.revision;
    let Mesh {
        state,
        resources,
        sidecars,
    } = mesh;
    let mut compiled: HashMap<(String, BTreeMap<String, String>), (String, Bytes)> = HashMap::new();
    for (id, conn) in sidecars.iter_mut() {
        let Some(tx) = &conn.stream else { continue };
        let Some(w) = state.workloads.get(id) else {
            continue;
        };
        let (version, message) = compiled
            .entry((w.service.clone(), w.labels.clone()))
            .or_insert_with(|| {
                let me = Workload {
                    service: w.service.clone(),
                    labels: w.labels.clone(),
                    address: w.address.clone(),
                };
                let snapshot = compile::snapshot_for(resources, &all, &me);
                let version = snapshot.version.clone();
                let msg = StreamMessage::Snapshot {
                    version: version.clone(),
                    revision,
                    snapshot,
                };
                (version, line(&msg))
            });
        if *version == conn.status.sent {
            continue;
        }
        if tx.try_send(message.clone()).is_ok() {
            conn.status.sent = version.clone();
        } else {
            conn.stream = None;
        }
    }
}

fn persist_and_push(shared: &Shared) {
    let mut mesh = shared.mesh.lock();
    if let Err(e) = shared.store.save(&mesh.state) {
        tracing::error!("cannot persist control plane state: {e}");
    }
    push(&mut mesh);
}

/// A channel as a streaming response body.
struct StreamBody(mpsc::Receiver<Bytes>);

impl http_body::Body for StreamBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        self.0.poll_recv(cx).map(|m| m.map(|b| Ok(Frame::data(b))))
    }
}

fn watch_stream(shared: &Arc<Shared>, who: &Caller, req: &Request<Incoming>) -> Response<Body> {
    let q = query(req);
    let (Some(id), Some(service), Some(address)) =
        (q.get("id"), q.get("service"), q.get("address"))
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "watch needs id, service and address query parameters",
        );
    };
    if let Caller::Service(s) = who
        && s != service
    {
        return error(
            StatusCode::FORBIDDEN,
            format!("a token of service {s:?} cannot watch as {service:?}"),
        );
    }
    if address.parse::<SocketAddr>().is_err() {
        return error(
            StatusCode::BAD_REQUEST,
            format!("address {address:?} is not ip:port"),
        );
    }
    let mut labels: BTreeMap<String, String> = q
        .get("labels")
        .map(|l| {
            l.split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        })
        .unwrap_or_default();
    labels
        .entry("app".to_string())
        .or_insert_with(|| service.clone());
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let registration = Registration {
        id: id.clone(),
        service: service.clone(),
        labels,
        address: address.clone(),
        lease_until_ms: 0,
    };
    {
        let mut mesh = shared.mesh.lock();
        let changed = mesh.state.workloads.get(id) != Some(&registration);
        mesh.state.workloads.insert(id.clone(), registration);
        let current = q.get("version").cloned().unwrap_or_default();
        let acked = mesh
            .sidecars
            .get(id)
            .map(|c| c.status.acked.clone())
            .unwrap_or_default();
        mesh.sidecars.insert(
            id.clone(),
            Conn {
                status: SidecarStatus {
                    id: id.clone(),
                    service: service.clone(),
                    address: address.clone(),
                    admin: q
                        .get("admin")
                        .filter(|a| a.parse::<SocketAddr>().is_ok())
                        .cloned(),
                    // What the sidecar says it runs: a reconnect after a control plane restart
                    // is not pushed the same snapshot again.
                    sent: current.clone(),
                    acked: if current.is_empty() { acked } else { current },
                    nack: None,
                    connected: true,
                    last_seen_ms: now_ms(),
                },
                stream: Some(tx.clone()),
            },
        );
        if changed && let Err(e) = shared.store.save(&mesh.state) {
            tracing::error!("cannot persist registration: {e}");
        }
        // A new or moved endpoint changes everyone's snapshot; otherwise only this one's.
        push(&mut mesh);
    }
    // When the stream ends, the sidecar's lease starts running.
    let weak = Arc::downgrade(shared);
    let id = id.clone();
    tokio::spawn(async move {
        tx.closed().await;
        let Some(shared) = weak.upgrade() else { return };
        let mut mesh = shared.mesh.lock();
        let still_this = mesh
            .sidecars
            .get(&id)
            .and_then(|c| c.stream.as_ref())
            .is_none_or(|s| s.same_channel(&tx));
        if !still_this {
            return; // it reconnected already
        }
        if let Some(c) = mesh.sidecars.get_mut(&id) {
            c.status.connected = false;
            c.stream = None;
        }
        let until = now_ms() + shared.lease.as_millis() as u64;
        if let Some(w) = mesh.state.workloads.get_mut(&id) {
            w.lease_until_ms = until;
        }
        if let Err(e) = shared.store.save(&mesh.state) {
            tracing::error!("cannot persist lease: {e}");
        }
    });
    let mut r = Response::new(BodyExt::boxed_unsync(StreamBody(rx)));
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

fn ack(shared: &Shared, who: &Caller, body: &[u8]) -> Response<Body> {
    let a: Ack = match serde_json::from_slice(body) {
        Ok(a) => a,
        Err(e) => return error(StatusCode::BAD_REQUEST, format!("invalid ACK: {e}")),
    };
    let mut mesh = shared.mesh.lock();
    let Some(conn) = mesh.sidecars.get_mut(&a.id) else {
        return error(StatusCode::NOT_FOUND, format!("unknown sidecar {:?}", a.id));
    };
    if let Caller::Service(s) = who
        && *s != conn.status.service
    {
        return error(StatusCode::FORBIDDEN, "not this credential's sidecar");
    }
    conn.status.last_seen_ms = now_ms();
    if a.ok {
        conn.status.acked = a.version;
        conn.status.nack = None;
    } else {
        tracing::warn!(sidecar = %a.id, version = %a.version, reason = ?a.reason, "NACK");
        conn.status.nack = Some(a.reason.unwrap_or_else(|| "no reason given".into()));
    }
    json(StatusCode::OK, &serde_json::json!({"ok": true}))
}

/// Downloads `http(s)://` WasmPlugin URLs into the store; returns url → digest.
async fn fetch_remote(
    shared: &Shared,
    docs: &[serde_json::Value],
) -> Result<BTreeMap<String, String>, Vec<String>> {
    let mut fetched = BTreeMap::new();
    let mut errs = Vec::new();
    for doc in docs {
        let Some(url) = doc.pointer("/spec/url").and_then(|u| u.as_str()) else {
            continue;
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            continue;
        }
        if shared.mesh.lock().state.fetched.contains_key(url) {
            continue;
        }
        match super::client::download(url).await {
            Ok(bytes) => match shared.store.put_artifact(&bytes) {
                Ok(d) => {
                    fetched.insert(url.to_string(), d);
                }
                Err(e) => errs.push(format!("{url}: {e}")),
            },
            Err(e) => errs.push(format!("WasmPlugin url {url}: {e}")),
        }
    }
    if errs.is_empty() {
        Ok(fetched)
    } else {
        Err(errs)
    }
}

/// Stored documents with fetched URLs replaced by their digests, as the compiler reads them.
fn resolved(doc: &serde_json::Value, fetched: &BTreeMap<String, String>) -> serde_json::Value {
    let mut doc = doc.clone();
    if let Some(url) = doc.pointer_mut("/spec/url")
        && let Some(d) = url.as_str().and_then(|u| fetched.get(u))
    {
        *url = serde_json::Value::String(format!("sha256:{d}"));
    }
    doc
}

async fn apply(shared: &Arc<Shared>, source: &str, body: &[u8]) -> Response<Body> {
    let Ok(text) = std::str::from_utf8(body) else {
        return error(StatusCode::BAD_REQUEST, format!("{source}: not UTF-8 text"));
    };
    let parsed = match istio::parse_yaml(text, source) {
        Ok(p) => p,
        Err(e) => return errors(StatusCode::BAD_REQUEST, e),
    };
    if parsed.is_empty() {
        return error(StatusCode::BAD_REQUEST, format!("{source}: no resources"));
    }
    let docs: Vec<serde_json::Value> = parsed.iter().map(|r| r.document.clone()).collect();
    let fetched = match fetch_remote(shared, &docs).await {
        Ok(f) => f,
        Err(e) => return errors(StatusCode::BAD_REQUEST, e),
    };
    let mut mesh = shared.mesh.lock();
    let mut next = mesh.state.clone();
    next.fetched.extend(fetched);
    let revision = next.revision + 1;
    let mut changed = Vec::new();
    let mut unchanged = Vec::new();
    for r in &parsed {
        let kind = r.kind.to_string();
        let k = key(&kind, &r.namespace, &r.name);
        let label = format!("{kind} {}/{}", r.namespace, r.name);
        if next.resources.get(&k).map(|s| &s.document) == Some(&r.document) {
            unchanged.push(label);
            continue;
        }
        next.resources.insert(
            k,
            Stored {
                kind,
                namespace: r.namespace.clone(),
                name: r.name.clone(),
                revision,
                document: r.document.clone(),
            },
        );
        changed.push(label);
    }
    if changed.is_empty() {
        return json(
            StatusCode::OK,
            &serde_json::json!({"revision": next.revision, "changed": [], "unchanged": unchanged, "warnings": []}),
        );
    }
    let (resources, warnings) = match check(shared, &next) {
        Ok(ok) => ok,
        Err(e) => return errors(StatusCode::BAD_REQUEST, e),
    };
    next.revision = revision;
    commit(
        shared,
        &mut mesh,
        next,
        resources,
        changed.iter().map(|c| format!("apply {c}")).collect(),
    );
    json(
        StatusCode::OK,
        &serde_json::json!({"revision": revision, "changed": changed, "unchanged": unchanged, "warnings": warnings}),
    )
}

/// Parses and validates the whole state a change would produce.
fn check(shared: &Shared, next: &State) -> Result<(Vec<Resource>, Vec<String>), Vec<String>> {
    let mut resources = Vec::new();
    let mut errs = Vec::new();
    for (k, s) in &next.resources {
        match istio::from_document(resolved(&s.document, &next.fetched), k) {
            Ok(r) => resources.push(r),
            Err(e) => errs.extend(e),
        }
    }
    if !errs.is_empty() {
        return Err(errs);
    }
    let known = |d: &str| shared.store.has_artifact(d);
    let warnings = compile::validate(&resources, &known)?;
    Ok((resources, warnings))
}

/// Persists `next`, then makes it current and pushes; a state that cannot be persisted is
/// not made current.
fn commit(
    shared: &Shared,
    mesh: &mut Mesh,
    next: State,
    resources: Vec<Resource>,
    what: Vec<String>,
) {
    if let Err(e) = shared.store.save(&next) {
        tracing::error!("cannot persist: {e}");
        return;
    }
    let change = Change {
        revision: next.revision,
        at_ms: now_ms(),
        what,
    };
    if let Err(e) = shared.store.record(&change) {
        tracing::warn!("cannot record history: {e}");
    }
    mesh.state = next;
    mesh.resources = resources;
    push(mesh);
}

fn list(shared: &Shared, kind: Option<&str>, name: Option<&str>) -> Response<Body> {
    let kind = match kind.map(str::parse::<Kind>) {
        Some(Ok(k)) => Some(k.to_string()),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, e),
        None => None,
    };
    let mesh = shared.mesh.lock();
    let docs: Vec<&serde_json::Value> = mesh
        .state
        .resources
        .values()
        .filter(|s| kind.as_deref().is_none_or(|k| s.kind == k))
        .filter(|s| name.is_none_or(|n| s.name == n))
        .map(|s| &s.document)
        .collect();
    if name.is_some() && docs.is_empty() {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no {} named {:?}",
                kind.unwrap_or_default(),
                name.unwrap_or_default()
            ),
        );
    }
    json(StatusCode::OK, &docs)
}

fn delete(shared: &Shared, kind: &str, namespace: &str, name: &str) -> Response<Body> {
    let kind = match kind.parse::<Kind>() {
        Ok(k) => k.to_string(),
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    let mut mesh = shared.mesh.lock();
    let mut next = mesh.state.clone();
    if next
        .resources
        .remove(&key(&kind, namespace, name))
        .is_none()
    {
        return error(
            StatusCode::NOT_FOUND,
            format!("no {kind} {namespace}/{name}"),
        );
    }
    let (resources, _) = match check(shared, &next) {
        Ok(ok) => ok,
        Err(e) => return errors(StatusCode::BAD_REQUEST, e),
    };
    next.revision += 1;
    let revision = next.revision;
    commit(
        shared,
        &mut mesh,
        next,
        resources,
        vec![format!("delete {kind} {namespace}/{name}")],
    );
    json(StatusCode::OK, &serde_json::json!({"revision": revision}))
}

fn push_artifact(shared: &Shared, body: &[u8]) -> Response<Body> {
    // A component's preamble: magic, version 0x0d, layer 1 (a core module has layer 0).
    if !(body.len() >= 8 && body.starts_with(b"\0asm") && body[6..8] == [1, 0]) {
        return error(
            StatusCode::BAD_REQUEST,
            "not a Wasm component (build it for wasm32-wasip2, or wrap a core module with \
             wasm-tools component new)",
        );
    }
    match shared.store.put_artifact(body) {
        Ok(d) => json(StatusCode::OK, &serde_json::json!({"sha256": d})),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
