//! The sidecar's side of the control plane: register and watch, fetch the artifacts a snapshot
//! names (verified by digest), apply it off the request path, and ACK or NACK. A lost control
//! plane is retried with exponential back-off and full jitter while the sidecar keeps serving
//! its last snapshot.

use super::server::{Ack, StreamMessage};
use crate::proxy::Sidecar;
use crate::snapshot::Snapshot;
use bytes::{Buf, Bytes, BytesMut};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;
use tokio::sync::watch;

/// Where and as whom a sidecar watches.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The control plane's API address.
    pub server: SocketAddr,
    /// The service's bootstrap token.
    pub token: String,
    /// This sidecar's id (unique in the mesh).
    pub id: String,
    /// Its service.
    pub service: String,
    /// Its workload labels (`version: v1`).
    pub labels: BTreeMap<String, String>,
    /// The inbound address peers reach it at.
    pub address: SocketAddr,
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

/// One API call: `method` `path` with a bearer token; the whole answer body.
pub async fn call(
    server: SocketAddr,
    token: &str,
    method: Method,
    path: &str,
    body: Bytes,
) -> Result<Bytes, ClientError> {
    let req = Request::builder()
        .method(method)
        .uri(format!("http://{server}{path}"))
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(body))
        .map_err(|e| ClientError::Unreachable(e.to_string()))?;
    let resp = tokio::time::timeout(Duration::from_secs(30), http().request(req))
        .await
        .map_err(|_| ClientError::Unreachable("no answer within 30 s".into()))?
        .map_err(|e| ClientError::Unreachable(format!("{e}")))?;
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

/// Downloads a plain-HTTP URL (a WasmPlugin artifact); `https` is not fetched by the control
/// plane itself yet.
pub async fn download(url: &str) -> Result<Vec<u8>, String> {
    if url.starts_with("https://") {
        return Err(
            "https URLs are not fetched yet: push the artifact (weft plugin push) and \
                    use its sha256: URL"
                .into(),
        );
    }
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

/// Makes sure every stored artifact `snapshot` names is in the sidecar's artifact directory.
async fn fetch_artifacts(
    cfg: &WatchConfig,
    sidecar: &Sidecar,
    snapshot: &Snapshot,
) -> Result<(), String> {
    let dir = sidecar.artifact_dir().to_path_buf();
    for svc in snapshot.services.values() {
        for p in &svc.plugins {
            let Some(digest) = &p.artifact else { continue };
            let path = dir.join(format!("{digest}.wasm"));
            if path.is_file() {
                continue;
            }
            let bytes = call(
                cfg.server,
                &cfg.token,
                Method::GET,
                &format!("/v1/artifacts/{digest}"),
                Bytes::new(),
            )
            .await
            .map_err(|e| format!("plugin {}: fetching artifact {digest}: {e}", p.name))?;
            let actual = crate::plugin::sha256_hex(&bytes);
            if actual != *digest {
                return Err(format!(
                    "plugin {}: artifact {digest} arrived with sha256 {actual}",
                    p.name
                ));
            }
            super::store::write_atomic(&path, &bytes).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Applies one snapshot and answers for it.
async fn take(cfg: &WatchConfig, sidecar: &Sidecar, version: String, snapshot: Snapshot) {
    let applied = match fetch_artifacts(cfg, sidecar, &snapshot).await {
        Ok(()) => sidecar.apply(snapshot).await.map_err(|e| e.to_string()),
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
    if let Err(e) = call(cfg.server, &cfg.token, Method::POST, "/v1/ack", body).await {
        tracing::warn!("cannot send ACK: {e}");
    }
}

fn watch_path(cfg: &WatchConfig, version: &str) -> String {
    let labels: Vec<String> = cfg.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!(
        "/v1/watch?id={}&service={}&address={}&labels={}&version={}",
        enc(&cfg.id),
        enc(&cfg.service),
        enc(&cfg.address.to_string()),
        enc(&labels.join(",")),
        enc(version)
    )
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
    sidecar: &Sidecar,
    heartbeat_timeout: Duration,
) -> Result<(), String> {
    let version = sidecar.snapshot().version;
    let req = Request::get(format!(
        "http://{}{}",
        cfg.server,
        watch_path(cfg, &version)
    ))
    .header(http::header::AUTHORIZATION, format!("Bearer {}", cfg.token))
    .body(Full::new(Bytes::new()))
    .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(Duration::from_secs(5), http().request(req))
        .await
        .map_err(|_| "no answer within 5 s".to_string())?
        .map_err(|e| format!("{e}"))?;
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
    tracing::info!(server = %cfg.server, "watching the control plane");
    let mut body = resp.into_body();
    let mut buf = BytesMut::new();
    loop {
        let frame = tokio::time::timeout(heartbeat_timeout, body.frame())
            .await
            .map_err(|_| "no heartbeat: the control plane went quiet".to_string())?;
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
                    take(cfg, sidecar, version, snapshot).await;
                }
                Ok(StreamMessage::Heartbeat) => {}
                Err(e) => tracing::warn!("unreadable stream message: {e}"),
            }
        }
    }
}

/// Watches until `shutdown`, reconnecting with exponential back-off (100 ms doubling to 5 s)
/// and full jitter; the sidecar serves its last snapshot meanwhile.
pub async fn run(cfg: WatchConfig, sidecar: &Sidecar, mut shutdown: watch::Receiver<bool>) {
    let mut failures = 0u32;
    loop {
        let started = std::time::Instant::now();
        let outcome = tokio::select! {
            r = watch_once(&cfg, sidecar, Duration::from_secs(10)) => r,
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

#[cfg(test)]
mod tests {
    use super::enc;

    #[test]
    fn query_values_are_escaped() {
        assert_eq!(enc("version=v1,app=x"), "version%3Dv1%2Capp%3Dx");
        assert_eq!(enc("127.0.0.1:80"), "127.0.0.1%3A80");
    }
}
