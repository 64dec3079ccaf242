//! Sidecars as the control plane sees them: registration through the watch stream, the
//! snapshot each is pushed when its version changes, its ACKs and NACKs, and leases that keep a
//! sidecar's endpoint for a while after its stream drops.

use super::api::{Body, error, json, line, query};
use super::auth::Caller;
use super::compile::{self, Workload};
use super::server::{Mesh, Shared, now_ms};
use super::store::{Registration, State};
use super::wire::{Ack, Pushed, SidecarStatus, StreamMessage};
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
    state.workloads.values().map(workload).collect()
}

fn workload(w: &Registration) -> Workload {
    Workload {
        service: w.service.clone(),
        namespace: w.namespace.clone(),
        labels: w.labels.clone(),
        address: w.address.clone(),
    }
}

/// Sends each connected sidecar its snapshot if its version changed, and says which were sent
/// what. Sidecars of one service with the same labels get the same snapshot: it is compiled and
/// serialized once per push.
pub(super) fn push(mesh: &mut Mesh) -> Vec<Pushed> {
    let mut pushed = Vec::new();
    let all = workloads(&mesh.state);
    let revision = mesh.state.revision;
    let Mesh {
        state,
        resources,
        sidecars,
        config,
    } = mesh;
    // By namespace, service and labels: all the compiled snapshot depends on.
    type Who = (String, String, BTreeMap<String, String>);
    let mut compiled: HashMap<Who, (String, Bytes)> = HashMap::new();
    for (id, conn) in sidecars.iter_mut() {
        let Some(tx) = &conn.stream else { continue };
        let Some(w) = state.workloads.get(id) else {
            continue;
        };
        let (version, message) = compiled
            .entry((w.namespace.clone(), w.service.clone(), w.labels.clone()))
            .or_insert_with(|| {
                let me = workload(w);
                let snapshot = compile::snapshot_in(resources, &all, &me, config);
                let version = snapshot.version.clone();
                let msg = StreamMessage::Snapshot {
                    version: version.clone(),
                    revision,
                    snapshot: Box::new(snapshot),
                };
                (version, line(&msg))
            });
        if *version == conn.status.sent {
            continue;
        }
        if tx.try_send(message.clone()).is_ok() {
            conn.status.sent = version.clone();
            pushed.push(Pushed {
                id: id.clone(),
                service: crate::names::service_key(&w.service, &w.namespace),
                version: version.clone(),
            });
        } else {
            conn.stream = None;
        }
    }
    pushed.sort_by(|a, b| (&a.service, &a.id).cmp(&(&b.service, &b.id)));
    pushed
}

/// Keeps the registrations of `ids` as `mesh` has them, then pushes.
pub(super) fn persist_and_push(shared: &Shared, mesh: &mut Mesh, ids: &[String]) {
    keep(shared, &mesh.state, ids, "registrations");
    let _ = push(mesh);
}

/// Keeps the registrations of `ids`; one that cannot be kept (the store is away) is logged,
/// and a shared store's follower writes this replica's back once the store answers again.
fn keep(shared: &Shared, state: &State, ids: &[String], what: &str) {
    if let Err(e) = shared.store.save_workloads(state, ids) {
        tracing::error!("cannot persist {what}: {e}");
        shared
            .unsaved
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Where the control plane may read a sidecar's `/metrics`: its admin port on the host its
/// watch comes from. A sidecar reporting an admin address on another host is not scraped at
/// all, so no token can point the control plane at an arbitrary address; one listening on
/// every interface (`0.0.0.0`) is reached at the watch's own address.
fn admin_target(reported: &str, peer: SocketAddr) -> Option<SocketAddr> {
    let reported: SocketAddr = reported.parse().ok()?;
    if reported.ip().is_unspecified() {
        return Some(SocketAddr::new(peer.ip(), reported.port()));
    }
    if reported.ip() == peer.ip().to_canonical() || reported.ip().to_canonical() == peer.ip() {
        return Some(reported);
    }
    tracing::warn!(%reported, %peer, "admin address on another host than the sidecar's watch: not scraped");
    None
}

/// The longest sidecar id.
const MAX_ID: usize = 128;

/// Whether `id` is a name a sidecar may register under: short and printable.
fn is_sidecar_id(id: &str) -> bool {
    (1..=MAX_ID).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
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

/// Registers a sidecar (query: id, service, namespace (default `default`), address, labels,
/// admin, the version it runs) and
/// answers with its stream of snapshots and heartbeats; `peer` is where the watch comes from.
pub(super) fn watch_stream(
    shared: &Arc<Shared>,
    who: &Caller,
    req: &Request<Incoming>,
    peer: SocketAddr,
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
    let namespace = q
        .get("namespace")
        .map_or(crate::names::DEFAULT_NAMESPACE, String::as_str);
    for (what, name) in [("service", service.as_str()), ("namespace", namespace)] {
        if !crate::names::is_dns_label(name) {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                    "{what} {:?}: 1 to 63 of a-z, 0-9 and '-', starting and ending with a letter or digit",
                    super::yaml::clip(name, 63)
                ),
            );
        }
    }
    let key = crate::names::service_key(service, namespace);
    if let Caller::Service(s) = who
        && *s != key
    {
        return error(
            StatusCode::FORBIDDEN,
            format!("a token of service {s:?} cannot watch as {key:?}"),
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
    if !is_sidecar_id(id) {
        return error(
            StatusCode::BAD_REQUEST,
            format!(
                "sidecar id {:?}: 1 to {MAX_ID} letters, digits, '-', '_' or '.'",
                super::yaml::clip(id, MAX_ID)
            ),
        );
    }
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    let labels_now = labels.clone();
    let registration = Registration {
        id: id.clone(),
        service: service.clone(),
        namespace: namespace.to_string(),
        labels,
        address: address.clone(),
        lease_until_ms: 0,
        replica: shared.replica.clone(),
    };
    {
        let mut mesh = shared.mesh.lock();
        // An id belongs to the service that registered it first: another service's token
        // reusing it would cut that sidecar's stream and take over its endpoint.
        if let Some(held) = mesh.state.workloads.get(id)
            && (held.service != *service || held.namespace != namespace)
        {
            tracing::warn!(sidecar = %id, held_by = %crate::names::service_key(&held.service, &held.namespace), claimed_by = %key, "registration refused: id taken");
            return error(
                StatusCode::CONFLICT,
                format!(
                    "sidecar id {id:?} is registered to another service; each sidecar needs an id of its own"
                ),
            );
        }
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
                    service: key.clone(),
                    address: address.clone(),
                    labels: labels_now.clone(),
                    admin: q
                        .get("admin")
                        .and_then(|a| admin_target(a, peer))
                        .map(|a| a.to_string()),
                    // What the sidecar says it runs: a reconnect after a control plane restart
                    // is not pushed the same snapshot again.
                    sent: current.clone(),
                    acked: if current.is_empty() { acked } else { current },
                    nack: None,
                    nacked: String::new(),
                    connected: true,
                    last_seen_ms: now_ms(),
                },
                stream: Some(tx.clone()),
            },
        );
        if changed {
            keep(
                shared,
                &mesh.state,
                std::slice::from_ref(id),
                "a registration",
            );
        }
        // A new or moved endpoint changes everyone's snapshot; otherwise only this one's.
        let _ = push(&mut mesh);
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
        keep(&shared, &mesh.state, std::slice::from_ref(&id), "a lease");
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
        conn.status.nacked = String::new();
    } else {
        tracing::warn!(sidecar = %a.id, version = %a.version, reason = ?a.reason, "NACK");
        conn.status.nack = Some(a.reason.unwrap_or_else(|| "no reason given".into()));
        conn.status.nacked = a.version;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_addresses_are_taken_only_on_the_watch_host() {
        let peer: SocketAddr = "198.18.0.7:40000".parse().expect("addr");
        let at = |a: &str| admin_target(a, peer).map(|a| a.to_string());
        assert_eq!(at("198.18.0.7:15000").as_deref(), Some("198.18.0.7:15000"));
        assert_eq!(at("0.0.0.0:15000").as_deref(), Some("198.18.0.7:15000"));
        assert_eq!(at("198.18.0.8:15000"), None);
        assert_eq!(at("127.0.0.1:15000"), None);
        assert_eq!(at("169.254.169.254:80"), None);
        assert_eq!(at("not an address"), None);
        let local: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        assert!(admin_target("127.0.0.1:15000", local).is_some());
    }

    #[test]
    fn sidecar_ids_are_short_and_printable() {
        assert!(is_sidecar_id("payments-0123456789abcdef0123456789abcdef"));
        assert!(!is_sidecar_id(""));
        assert!(!is_sidecar_id("a b"));
        assert!(!is_sidecar_id("a/b"));
        assert!(!is_sidecar_id(&"x".repeat(129)));
    }
}
