//! The sidecar's side of the control plane: register and watch, fetch the artifacts a snapshot
//! names (verified by digest), apply it off the request path, and ACK or NACK. A lost control
//! plane is retried with exponential back-off and full jitter while the sidecar keeps serving
//! its last snapshot.
//!
//! It also keeps the sidecar's certificate: [`obtain`] learns the identity the token proves,
//! makes a key and CSR and gets the first certificate; [`renew_loop`] replaces it with a
//! certificate for a new key before it expires, and refreshes the trust bundle each time.

use super::channel::Endpoint;
use super::tier_up::TierUps;
use super::wire::{Ack, CertificateAnswer, IdentityAnswer, StreamMessage};
use crate::identity::{
    PendingKey, SpiffeError, SpiffeId, TlsError, TrustBundle, Workload, WorkloadError, renew_at,
};
use crate::snapshot::{Snapshot, SnapshotTarget};
use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::watch;

/// Where and as whom a sidecar watches.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The control plane.
    pub server: Endpoint,
    /// The service's bootstrap token.
    pub token: String,
    /// This sidecar's id (unique in the mesh).
    pub id: String,
    /// Its service's name.
    pub service: String,
    /// Its namespace.
    pub namespace: String,
    /// Its workload labels (`version: v1`).
    pub labels: BTreeMap<String, String>,
    /// The inbound address peers reach it at.
    pub address: SocketAddr,
    /// Its admin endpoint, which the control plane reads `/metrics` from for `weft stat`.
    pub admin: Option<SocketAddr>,
}

/// Why a request to the control plane failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No connection or no answer.
    #[error("control plane unreachable: {0}")]
    Unreachable(String),
    /// It answered with an error.
    #[error("control plane answered {status}: {body}")]
    Refused {
        /// The status.
        status: StatusCode,
        /// Its words.
        body: String,
    },
}

type Http = Client<HttpConnector, Full<Bytes>>;

fn http() -> Http {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(Duration::from_secs(2)));
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

/// One API call over TLS: `method` `path` with a bearer token; the whole answer body.
pub async fn call(
    server: &Endpoint,
    token: &str,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<Bytes, ClientError> {
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(body))
        .map_err(|e| ClientError::Unreachable(e.to_string()))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), server.send(req))
        .await
        .map_err(|_| ClientError::Unreachable("no answer within 30 s".into()))?
        .map_err(ClientError::Unreachable)?;
    let status = resp.status();
    let bytes = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| ClientError::Unreachable(e.to_string()))?
        .to_bytes();
    if status.is_success() {
        Ok(bytes)
    } else {
        Err(ClientError::Refused {
            status,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        })
    }
}

/// Downloads a plain-HTTP URL on the pooled client (a sidecar's `/metrics`; WasmPlugin URLs
/// are [`super::fetch`]'s).
pub async fn download(url: &str) -> Result<Vec<u8>, String> {
    let uri: http::Uri = url.parse().map_err(|e| format!("invalid URL: {e}"))?;
    let req = Request::get(uri)
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(10), http().request(req))
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
        .map_err(|e| format!("{e}"))?;
    if !resp.status().is_success() {
        return Err(format!("answered {}", resp.status()));
    }
    let body = http_body_util::Limited::new(resp.into_body(), 32 << 20)
        .collect()
        .await
        .map_err(|e| format!("reading: {e}"))?;
    Ok(body.to_bytes().to_vec())
}

/// Makes sure the sidecar can load every stored artifact `snapshot` names: with the code the
/// control plane compiled for its engine where there is some (optimized, else baseline, which
/// `tier_ups` then replaces), else as a component in its artifact directory to compile.
async fn fetch_artifacts(
    cfg: &WatchConfig,
    sidecar: &impl SnapshotTarget,
    snapshot: &Snapshot,
    tier_ups: &mut TierUps,
) -> Result<(), String> {
    let fingerprint = sidecar.engine_fingerprint();
    let mut seen = std::collections::HashSet::new();
    for p in snapshot.plugin_refs() {
        let Some(digest) = &p.artifact else { continue };
        if !seen.insert(digest) {
            continue;
        }
        // Code held in memory loads without the component's bytes: the 12-18 MB of a
        // scripting-language component are neither fetched nor hashed again.
        if let Some(fingerprint) = &fingerprint
            && !sidecar.has_compiled(digest)
        {
            if sidecar.holds_compiled(digest) {
                tier_ups.add(digest.clone());
                continue;
            }
            if import(cfg, sidecar, &p.name, digest, fingerprint).await {
                continue;
            }
            if let Some(baseline) = sidecar.baseline_fingerprint()
                && import(cfg, sidecar, &p.name, digest, &baseline).await
            {
                tier_ups.add(digest.clone());
                continue;
            }
        }
        if !sidecar.holds_compiled(digest) {
            fetch_artifact(cfg, sidecar, digest)
                .await
                .map_err(|e| format!("plugin {}: {e}", p.name))?;
        }
    }
    Ok(())
}

/// Fetches component `digest` into the sidecar's artifact directory unless it is there,
/// verifying its sha256 before writing it.
pub(super) async fn fetch_artifact(
    cfg: &WatchConfig,
    sidecar: &impl SnapshotTarget,
    digest: &str,
) -> Result<(), String> {
    let path = sidecar.artifact_dir().join(format!("{digest}.wasm"));
    if path.is_file() {
        return Ok(());
    }
    let bytes = call(
        &cfg.server,
        &cfg.token,
        Method::GET,
        &format!("/v1/artifacts/{digest}"),
        Bytes::new(),
    )
    .await
    .map_err(|e| format!("fetching artifact {digest}: {e}"))?;
    let actual = crate::plugin::sha256_hex(&bytes);
    if actual != digest {
        return Err(format!("artifact {digest} arrived with sha256 {actual}"));
    }
    crate::files::write_atomic(&path, &bytes, crate::files::Mode::Private)
        .map_err(|e| e.to_string())
}

/// Fetches and imports the control plane's code for `digest` and the engine of
/// `fingerprint`; whether the sidecar now holds it.
async fn import(
    cfg: &WatchConfig,
    sidecar: &impl SnapshotTarget,
    plugin: &str,
    digest: &str,
    fingerprint: &str,
) -> bool {
    let path = format!("/v1/artifacts/{digest}/compiled/{fingerprint}");
    match call(&cfg.server, &cfg.token, Method::GET, &path, Bytes::new()).await {
        Ok(code) => match sidecar.import_compiled(digest, fingerprint, &code) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(
                    plugin,
                    "compiled code from the control plane unusable ({e}); compiling here"
                );
                false
            }
        },
        Err(e) => {
            tracing::debug!(
                plugin,
                "no compiled code from the control plane for engine {fingerprint}: {e}"
            );
            false
        }
    }
}

/// Applies one snapshot and answers for it.
async fn take(
    cfg: &WatchConfig,
    sidecar: &impl SnapshotTarget,
    version: String,
    snapshot: Snapshot,
    tier_ups: &mut TierUps,
) {
    let applied = match fetch_artifacts(cfg, sidecar, &snapshot, tier_ups).await {
        Ok(()) => sidecar.apply_snapshot(snapshot).await,
        Err(e) => Err(e),
    };
    if let Err(reason) = &applied {
        tracing::warn!(%version, "snapshot refused, the last good one keeps serving: {reason}");
    }
    let ack = Ack {
        id: cfg.id.clone(),
        version,
        ok: applied.is_ok(),
        reason: applied.err(),
    };
    let body = Bytes::from(serde_json::to_vec(&ack).unwrap_or_default());
    if let Err(e) = call(&cfg.server, &cfg.token, Method::POST, "/v1/ack", body).await {
        tracing::warn!("cannot send ACK: {e}");
    }
}

fn watch_path(cfg: &WatchConfig, version: &str) -> String {
    let labels: Vec<String> = cfg.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let mut path = format!(
        "/v1/watch?id={}&service={}&namespace={}&address={}&labels={}&version={}",
        enc(&cfg.id),
        enc(&cfg.service),
        enc(&cfg.namespace),
        enc(&cfg.address.to_string()),
        enc(&labels.join(",")),
        enc(version)
    );
    if let Some(admin) = cfg.admin {
        path.push_str(&format!("&admin={}", enc(&admin.to_string())));
    }
    path
}

fn enc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One watch connection, until it ends; whether it got as far as streaming.
async fn watch_once(
    cfg: &WatchConfig,
    sidecar: &impl SnapshotTarget,
    heartbeat_timeout: Duration,
    tier_ups: &mut TierUps,
) -> Result<(), String> {
    let version = sidecar.current_version();
    let req = Request::get(watch_path(cfg, &version))
        .header(http::header::AUTHORIZATION, format!("Bearer {}", cfg.token))
        .body(Full::new(Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), cfg.server.send(req))
        .await
        .map_err(|_| "no answer within 5 s".to_string())??;
    if !resp.status().is_success() {
        let status = resp.status();
        let body = resp
            .into_body()
            .collect()
            .await
            .map(|c| c.to_bytes())
            .unwrap_or_default();
        return Err(format!(
            "watch refused ({status}): {}",
            String::from_utf8_lossy(&body)
        ));
    }
    tracing::info!(server = %cfg.server.current(), "watching the control plane");
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    let mut quiet_until = tokio::time::Instant::now() + heartbeat_timeout;
    loop {
        // Reading a frame is cancel-safe: a tier-up in between loses nothing of the stream.
        let frame = tokio::select! {
            frame = tokio::time::timeout_at(quiet_until, body.frame()) => frame,
            () = tier_ups.due(), if tier_ups.any() => {
                tier_ups.ask(cfg, sidecar).await;
                continue;
            }
        };
        let frame = frame.map_err(|_| "no heartbeat: the control plane went quiet".to_string())?;
        quiet_until = tokio::time::Instant::now() + heartbeat_timeout;
        let Some(frame) = frame else {
            return Err("the control plane closed the stream".into());
        };
        let frame = frame.map_err(|e| format!("stream broke: {e}"))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line = buf.split_to(nl + 1);
            let line = &line.chunk()[..nl];
            match serde_json::from_slice::<StreamMessage>(line) {
                Ok(StreamMessage::Snapshot {
                    version, snapshot, ..
                }) => {
                    take(cfg, sidecar, version, *snapshot, tier_ups).await;
                }
                Ok(StreamMessage::Heartbeat) => {}
                Err(e) => tracing::warn!("unreadable stream message: {e}"),
            }
        }
    }
}

/// Watches until `shutdown`, reconnecting with exponential back-off (100 ms doubling to 5 s)
/// and full jitter; the sidecar serves its last snapshot meanwhile.
pub async fn run(
    cfg: WatchConfig,
    sidecar: &impl SnapshotTarget,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failures = 0u32;
    let mut tier_ups = TierUps::new();
    loop {
        let started = std::time::Instant::now();
        let outcome = tokio::select! {
            r = watch_once(&cfg, sidecar, Duration::from_secs(10), &mut tier_ups) => r,
            _ = shutdown.changed() => return,
        };
        if let Err(e) = outcome {
            tracing::warn!("control plane: {e}");
        }
        // A stream that lived a while was healthy: start the back-off over.
        if started.elapsed() > Duration::from_secs(10) {
            failures = 0;
        }
        let window = (100u64 << failures.min(6)).min(5_000);
        let delay = Duration::from_millis(crate::random::fast_u64() % (window + 1));
        failures = failures.saturating_add(1);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Why the sidecar has no (new) certificate.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    /// The request failed or was refused.
    #[error(transparent)]
    Client(#[from] ClientError),
    /// The control plane answered something this sidecar cannot read.
    #[error("unreadable answer from the control plane: {0}")]
    Answer(String),
    /// The identity the control plane named is malformed.
    #[error("the control plane named an invalid identity: {0}")]
    Identity(#[from] SpiffeError),
    /// The key, CSR or returned certificate is unusable.
    #[error(transparent)]
    Workload(#[from] WorkloadError),
    /// The returned trust bundle is unusable.
    #[error("trust bundle: {0}")]
    Bundle(#[from] TlsError),
    /// The control plane stayed unreachable.
    #[error("no certificate after {waited:?}: {last}")]
    GaveUp {
        /// How long it tried.
        waited: Duration,
        /// The last failure.
        last: Box<IdentityError>,
    },
}

impl IdentityError {
    /// Whether trying again may help: an unreachable or failing control plane, not a refusal.
    fn transient(&self) -> bool {
        match self {
            IdentityError::Client(ClientError::Unreachable(_)) => true,
            IdentityError::Client(ClientError::Refused { status, .. }) => status.is_server_error(),
            _ => false,
        }
    }
}

/// The identity the control plane signs for this token (`GET /v1/identity`).
pub async fn identity(server: &Endpoint, token: &str) -> Result<SpiffeId, IdentityError> {
    let body = call(server, token, Method::GET, "/v1/identity", Bytes::new()).await?;
    let answer: IdentityAnswer =
        serde_json::from_slice(&body).map_err(|e| IdentityError::Answer(e.to_string()))?;
    Ok(SpiffeId::parse(&answer.spiffe_id)?)
}

/// A fresh key for `id` and the control plane's certificate for it (`POST /v1/certificates`).
pub async fn request_certificate(
    server: &Endpoint,
    token: &str,
    id: &SpiffeId,
) -> Result<(PendingKey, CertificateAnswer), IdentityError> {
    // A P-256 key takes microseconds: generated inline, not on a blocking thread.
    let key = PendingKey::generate(id)?;
    let body = Bytes::from(key.csr_pem().to_owned());
    let answer = call(server, token, Method::POST, "/v1/certificates", body).await?;
    let answer: CertificateAnswer =
        serde_json::from_slice(&answer).map_err(|e| IdentityError::Answer(e.to_string()))?;
    Ok((key, answer))
}

/// Tries `attempt` until it succeeds, fails for good, or `patience` runs out; back-off from
/// 200 ms doubling to 5 s with jitter between tries.
async fn patiently<T, F, Fut>(patience: Duration, mut attempt: F) -> Result<T, IdentityError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, IdentityError>>,
{
    let started = Instant::now();
    let mut failures = 0u32;
    loop {
        let e = match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) if !e.transient() => return Err(e),
            Err(e) => e,
        };
        let delay = backoff(failures, Duration::from_millis(200), Duration::from_secs(5));
        failures = failures.saturating_add(1);
        if started.elapsed() + delay > patience {
            return Err(IdentityError::GaveUp {
                waited: started.elapsed(),
                last: Box::new(e),
            });
        }
        tracing::warn!("no certificate yet, retrying in {delay:?}: {e}");
        tokio::time::sleep(delay).await;
    }
}

/// `base` doubled per failure up to `max`, drawn from its upper half so retries spread out
/// without collapsing to zero.
fn backoff(failures: u32, base: Duration, max: Duration) -> Duration {
    let window = base.saturating_mul(1u32 << failures.min(16)).min(max);
    let half = window / 2;
    let jitter_ms = crate::random::fast_u64() % (half.as_millis() as u64 + 1);
    half + Duration::from_millis(jitter_ms)
}

/// The sidecar's first certificate: learns its identity from the control plane (which decides
/// it from the token), generates a key and CSR, and installs the answer; retries while the
/// control plane is unreachable, for up to `patience`. A refusal is final. `bundle`, the one
/// the endpoint trusts, is replaced by the control plane's current one.
pub async fn obtain(
    server: &Endpoint,
    bundle: &TrustBundle,
    token: &str,
    patience: Duration,
) -> Result<Arc<Workload>, IdentityError> {
    let started = Instant::now();
    let id = patiently(patience, || identity(server, token)).await?;
    let left = patience.saturating_sub(started.elapsed());
    let (key, answer) = patiently(left, || request_certificate(server, token, &id)).await?;
    let workload = Workload::new(id);
    bundle.update(&answer.bundle)?;
    workload.install(key, &answer.chain)?;
    tracing::info!(identity = %workload.id(), not_after_ms = answer.not_after, "obtained a workload certificate");
    Ok(Arc::new(workload))
}

/// One renewal: a new key and CSR, the certificate installed, the bundle replaced by the one
/// returned (so a root rotation reaches this sidecar).
pub async fn renew(
    server: &Endpoint,
    token: &str,
    workload: &Workload,
    bundle: &TrustBundle,
) -> Result<(), IdentityError> {
    let (key, answer) = request_certificate(server, token, workload.id()).await?;
    // Bundle first: a new certificate from a new root must not be presented to peers before
    // this sidecar itself trusts that root.
    bundle.update(&answer.bundle)?;
    workload.install(key, &answer.chain)?;
    tracing::info!(identity = %workload.id(), not_after_ms = answer.not_after, "rotated the workload certificate");
    Ok(())
}

/// When to renew a certificate received at `received`: 50–70% of the life left then.
///
/// Not [`Workload::renew_at`]: it counts from `not_before`, which the CA backdates by minutes
/// for clock skew, so a short-lived certificate would look due at once.
fn next_renewal(workload: &Workload, received: SystemTime) -> SystemTime {
    match workload.current() {
        Some(c) => renew_at(received.max(c.not_before), c.not_after),
        None => received,
    }
}

/// Renews the certificate before it expires until `shutdown`; a failed renewal is retried
/// with back-off (1 s doubling to 30 s) while the current certificate keeps serving.
pub async fn renew_loop(
    server: Endpoint,
    token: String,
    workload: Arc<Workload>,
    bundle: Arc<TrustBundle>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut received = SystemTime::now();
    let mut failures = 0u32;
    loop {
        let delay = if failures == 0 {
            next_renewal(&workload, received)
                .duration_since(SystemTime::now())
                .unwrap_or(Duration::ZERO)
                // Never a busy loop, even for a certificate already expired.
                .max(Duration::from_millis(200))
        } else {
            backoff(
                failures - 1,
                Duration::from_secs(1),
                Duration::from_secs(30),
            )
        };
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shutdown.changed() => return,
        }
        let renewed = tokio::select! {
            r = renew(&server, &token, &workload, &bundle) => r,
            _ = shutdown.changed() => return,
        };
        match renewed {
            Ok(()) => {
                received = SystemTime::now();
                failures = 0;
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                tracing::warn!(identity = %workload.id(), attempt = failures, "certificate renewal failed, the current one keeps serving: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::enc;

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(enc("version=v1,app=x"), "version%3Dv1%2Capp%3Dx");
        assert_eq!(enc("127.0.0.1:80"), "127.0.0.1%3A80");
    }
}
