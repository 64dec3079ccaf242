//! Sidecars as the control plane sees them: registration through the watch stream, the
//! snapshot each is pushed when its version changes, its ACKs and NACKs, and leases that keep a
//! sidecar's endpoint for a while after its stream drops.

use super::api::{Body, error, json, line, query};
use super::auth::Caller;
use super::compile::{self, Workload};
use super::server::{Mesh, Shared, now_ms};
use super::store::{Registration, State};
use super::wire::{Ack, SidecarStatus, StreamMessage};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::mpsc;

/// A sidecar the control plane knows: what it reports, and its stream while connected.
pub(super) struct Conn {
    pub(super) status: SidecarStatus,
    pub(super) stream: Option<mpsc::Sender<Bytes>>,
}

/// The sidecars known now, by service then id.
pub(super) fn status(shared: &Shared) -> Vec<SidecarStatus> {
    let mesh = shared.mesh.lock();
    let mut out: Vec<SidecarStatus> = mesh.sidecars.values().map(|c| c.status.clone()).collect();
    out.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
    out
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
pub(super) fn push(mesh: &mut Mesh) {
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

pub(super) fn persist_and_push(shared: &Shared) {
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

pub(super) fn watch_stream(
    shared: &Arc<Shared>,
    who: &Caller,
    req: &Request<Incoming>,
) -> Response<Body> {
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

pub(super) fn ack(shared: &Shared, who: &Caller, body: &[u8]) -> Response<Body> {
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

/// Reads every connected sidecar's `/metrics` (1 s each, concurrently) into one
/// [`super::stats::Reading`] of the mesh's Istio series; sidecars that did not answer are listed.
pub(super) async fn stats(shared: &Shared) -> Response<Body> {
    let targets: Vec<(String, String)> = status(shared)
        .into_iter()
        .filter(|s| s.connected)
        .filter_map(|s| Some((s.id, s.admin?)))
        .collect();
    let mut set = tokio::task::JoinSet::new();
    for (id, admin) in targets {
        set.spawn(async move {
            let url = format!("http://{admin}/metrics");
            let got = tokio::time::timeout(
                std::time::Duration::from_secs(1),
                super::client::download(&url),
            )
            .await
            .map_err(|_| "no answer within 1 s".to_string())
            .and_then(|r| r);
            (id, got)
        });
    }
    let mut reading = super::stats::Reading::default();
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
