//! Opaque TCP through the mesh. A captured connection that is not HTTP (see [`sniff`]) to a
//! service's virtual IP is carried to one of the service's endpoints inside an HTTP/1.1
//! `CONNECT` tunnel over the mTLS connection between the two sidecars (Istio's HBONE does the
//! same over HTTP/2); the destination's sidecar checks the caller against its authorization
//! policies and splices the tunnel to its app on the port the caller dialled. A connection to
//! anything else is carried to where it was going, unchanged (Istio's `PassthroughCluster`).
//! Both sides count connections and bytes as Istio's TCP metrics.

pub mod metrics;
pub mod sniff;
mod splice;

pub(crate) use splice::splice;

use super::balance::{self, Candidate};
use super::body::ProxyBody;
use super::{Inputs, Peer, authz, local_response};
use crate::endpoints::Endpoint;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use metrics::{ConnectionCounters, Labels};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};
use tokio::net::TcpStream;

/// How long opening the upstream side of a TCP connection may take (Istio's default
/// `connectTimeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The service label of TCP carried outside the mesh.
const PASSTHROUGH: &str = super::passthrough::PASSTHROUGH;

/// Carries a captured, non-HTTP connection from the app to `dst`.
pub async fn outbound(inputs: Arc<Inputs>, client: TcpStream, dst: SocketAddr) {
    let route = match dst {
        SocketAddr::V4(v4) => inputs.routes.load().by_vip.get(v4.ip()).cloned(),
        SocketAddr::V6(_) => None,
    };
    match route {
        Some(route) => {
            let (counters, tunnel) = tunnel_to(&inputs, &route, dst.port()).await;
            match tunnel {
                Ok((endpoint, upstream)) => {
                    endpoint.outstanding.fetch_add(1, Ordering::Relaxed);
                    splice::splice(client, upstream, idle_of(&inputs), Some(&counters)).await;
                    endpoint.outstanding.fetch_sub(1, Ordering::Relaxed);
                }
                Err(e) => {
                    tracing::debug!(service = %route.service, "TCP connection not carried: {e}");
                    reset(&client);
                }
            }
            counters.closed.inc();
        }
        // REGISTRY_ONLY: nothing outside the registry, as Envoy's BlackHoleCluster.
        None if inputs.routes.load().snapshot.registry_only => {
            tracing::debug!(%dst, "TCP outside the registry refused (REGISTRY_ONLY)");
            reset(&client);
        }
        None => passthrough(&inputs, client, dst).await,
    }
}

/// The outbound listener's answer to an app's own `CONNECT host:port`: a tunnel to a mesh
/// service (by name or virtual IP) through its sidecar, or to the host itself.
pub async fn connect_request(
    inputs: Arc<Inputs>,
    mut req: Request<Incoming>,
) -> Response<ProxyBody> {
    let Some(authority) = req.uri().authority().cloned() else {
        return local_response(StatusCode::BAD_REQUEST, "weft: CONNECT needs host:port\n");
    };
    let Some(port) = authority.port_u16() else {
        return local_response(StatusCode::BAD_REQUEST, "weft: CONNECT needs host:port\n");
    };
    let service = super::outbound::service_of(authority.as_str(), &inputs.settings.namespace);
    let route = inputs
        .routes
        .load()
        .lookup(service.as_ref(), authority.host().parse().ok())
        .cloned();
    let on_upgrade = hyper::upgrade::on(&mut req);
    match route {
        Some(route) => {
            let (counters, tunnel) = tunnel_to(&inputs, &route, port).await;
            let Ok((endpoint, upstream)) = tunnel else {
                counters.closed.inc();
                return local_response(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("weft: no connection to {}\n", route.service),
                );
            };
            splice_once_upgraded(&inputs, on_upgrade, upstream, counters, Some(endpoint));
        }
        None if inputs.routes.load().snapshot.registry_only => {
            return local_response(
                StatusCode::BAD_GATEWAY,
                format!("weft: {authority} is outside this workload's registry (REGISTRY_ONLY)\n"),
            );
        }
        None => {
            let counters = passthrough_counters(&inputs);
            counters.opened.inc();
            let target = tokio::net::lookup_host(authority.as_str())
                .await
                .ok()
                .and_then(|mut a| a.next());
            let upstream = match target {
                Some(addr) => dial(addr, inputs.settings.proxy_mark).await.ok(),
                None => None,
            };
            let Some(upstream) = upstream else {
                counters.closed.inc();
                return local_response(
                    StatusCode::BAD_GATEWAY,
                    format!("weft: cannot reach {authority}\n"),
                );
            };
            splice_once_upgraded(&inputs, on_upgrade, upstream, counters, None);
        }
    }
    Response::new(ProxyBody::default())
}

/// The inbound listener's side of a tunnel: a peer sidecar's `CONNECT` for a port of our app,
/// authorized as TCP, then spliced to the app.
pub async fn accept_tunnel(
    inputs: Arc<Inputs>,
    mut req: Request<Incoming>,
    peer: Arc<Peer>,
) -> Response<ProxyBody> {
    let Some(port) = req
        .uri()
        .authority()
        .and_then(http::uri::Authority::port_u16)
    else {
        return local_response(StatusCode::BAD_REQUEST, "weft: CONNECT needs host:port\n");
    };
    let verdict = {
        let routes = inputs.routes.load();
        routes.authz.check(&authz::Call {
            principal: peer.principal.as_deref(),
            method: "CONNECT",
            path: "",
            tcp: true,
        })
    };
    if let authz::Verdict::Deny(policy) = verdict {
        tracing::debug!(
            caller = peer.principal.as_deref().unwrap_or("(unauthenticated)"),
            port,
            policy = policy.as_deref().unwrap_or("(no ALLOW policy matched)"),
            "inbound TCP connection denied"
        );
        inputs.metrics.inbound_denied.inc();
        peer.count_inbound(&inputs.metrics, false);
        return local_response(StatusCode::FORBIDDEN, authz::DENIED_BODY);
    }
    let Some(app) = inputs.settings.app_at(Some(port)) else {
        peer.count_inbound(&inputs.metrics, false);
        return local_response(
            StatusCode::FORBIDDEN,
            "weft: that port is the sidecar's own\n",
        );
    };
    peer.count_inbound(&inputs.metrics, true);
    let security = if peer.identity.is_some() {
        "mutual_tls"
    } else {
        "none"
    };
    // Who calls: named by its verified identity, labelled by what its sidecar said.
    let metadata = req.headers().get(super::workload::PEER_METADATA);
    let source = peer
        .identity
        .as_ref()
        .map(|id| (super::workload::of_caller(id, metadata), id.to_string()))
        .unwrap_or_default();
    let upstream = dial(app, inputs.settings.proxy_mark).await;
    let counters =
        destination_counters(&inputs, (&source.0, &source.1), security, upstream.is_ok());
    let upstream = match upstream {
        Ok(u) => u,
        Err(e) => {
            counters.closed.inc();
            tracing::debug!(%app, "the app refused a TCP connection: {e}");
            return local_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("weft: the local app refused port {port}\n"),
            );
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    splice_once_upgraded(&inputs, on_upgrade, upstream, counters, None);
    Response::new(ProxyBody::default())
}

/// Once the `CONNECT` answer has gone out and hyper hands the connection over, splices it
/// with `upstream` (counting `endpoint`'s requests in flight meanwhile); the connection is
/// counted closed either way.
fn splice_once_upgraded<U>(
    inputs: &Inputs,
    on_upgrade: hyper::upgrade::OnUpgrade,
    upstream: U,
    counters: ConnectionCounters,
    endpoint: Option<Arc<Endpoint>>,
) where
    U: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let idle = idle_of(inputs);
    tokio::spawn(async move {
        if let Ok(client) = on_upgrade.await {
            if let Some(e) = &endpoint {
                e.outstanding.fetch_add(1, Ordering::Relaxed);
            }
            splice::splice(TokioIo::new(client), upstream, idle, Some(&counters)).await;
            if let Some(e) = &endpoint {
                e.outstanding.fetch_sub(1, Ordering::Relaxed);
            }
        }
        counters.closed.inc();
    });
}

/// A plaintext, non-HTTP connection captured on its way into the pod (PERMISSIVE mTLS lets
/// it in): spliced to the app on the port it was sent to.
pub async fn inbound_plain(inputs: Arc<Inputs>, client: TcpStream, port: u16) {
    // Sent to this port of the pod, not to a service's: the same port of the pod.
    let app = SocketAddr::new(inputs.settings.pod_ip, port);
    let upstream = dial(app, inputs.settings.proxy_mark).await;
    let counters = destination_counters(&inputs, ("", ""), "none", upstream.is_ok());
    match upstream {
        Ok(upstream) => splice::splice(client, upstream, idle_of(&inputs), Some(&counters)).await,
        Err(_) => reset(&client),
    }
    counters.closed.inc();
}

/// A tunnel to `route`'s service for `port`, and the source side's counters of the
/// connection, counted as opened (flagged `UF` when no tunnel could be opened).
async fn tunnel_to(
    inputs: &Inputs,
    route: &super::routes::Route,
    port: u16,
) -> (
    ConnectionCounters,
    Result<(Arc<Endpoint>, Upgraded), String>,
) {
    let tunnel = open_to_service(inputs, route, port).await;
    let endpoint = tunnel.as_ref().ok().map(|(e, _)| e);
    let name = |id: u32| inputs.runtime.name(id).unwrap_or_else(|| Arc::from(""));
    let me = name(inputs.settings.workload_id);
    let destination = name(endpoint.map_or(0, |e| e.workload.load(Ordering::Relaxed)));
    let destination_principal = name(route.identity_id);
    let counters = inputs.tcp.connection(
        Labels {
            reporter: "source",
            source: &me,
            source_principal: own_principal(inputs),
            destination: &destination,
            destination_principal: &destination_principal,
            destination_service: &route.service,
            response_flags: if endpoint.is_some() { "-" } else { "UF" },
            // As Istio's source reporter says of a connection's security.
            security: "unknown",
        },
        &inputs.routes.load().snapshot.metrics_off.client,
    );
    counters.opened.inc();
    (counters, tunnel)
}

/// The destination side's counters of a connection from `source`, counted as opened
/// (flagged `UF` when the app refused it).
fn destination_counters(
    inputs: &Inputs,
    (source, source_principal): (&str, &str),
    security: &str,
    connected: bool,
) -> ConnectionCounters {
    let me = inputs
        .runtime
        .name(inputs.settings.workload_id)
        .unwrap_or_else(|| Arc::from(""));
    let counters = inputs.tcp.connection(
        Labels {
            reporter: "destination",
            source,
            source_principal,
            destination: &me,
            destination_principal: own_principal(inputs),
            destination_service: &inputs.settings.service_key,
            response_flags: if connected { "-" } else { "UF" },
            security,
        },
        &inputs.routes.load().snapshot.metrics_off.server,
    );
    counters.opened.inc();
    counters
}

/// A tunnel's upgraded connection.
type Upgraded = TokioIo<hyper::upgrade::Upgraded>;

/// A new connection to a peer sidecar (mTLS when the mesh has it and the destination is not
/// `plaintext`, HTTP/1.1 ALPN), not pooled: a tunnel or an upgrade takes it over.
pub(super) async fn connect_peer(
    inputs: &Inputs,
    uri: http::Uri,
    plaintext: bool,
) -> Result<super::pool::Counted<super::pool::PeerStream>, String> {
    use tower_service::Service as _;
    let mut connector = inputs.peers_for(plaintext).tunnels.clone();
    std::future::poll_fn(|cx| connector.poll_ready(cx))
        .await
        .map_err(|e| e.to_string())?;
    connector.call(uri).await.map_err(|e| e.to_string())
}

fn passthrough_counters(inputs: &Inputs) -> ConnectionCounters {
    let me = inputs
        .runtime
        .name(inputs.settings.workload_id)
        .unwrap_or_else(|| Arc::from(""));
    inputs.tcp.connection(
        Labels {
            reporter: "source",
            source: &me,
            source_principal: own_principal(inputs),
            destination: "",
            destination_principal: "",
            destination_service: PASSTHROUGH,
            response_flags: "-",
            security: "unknown",
        },
        &inputs.routes.load().snapshot.metrics_off.client,
    )
}

/// This sidecar's SPIFFE ID when it has one (mTLS), else empty.
fn own_principal(inputs: &Inputs) -> &str {
    if inputs.settings.mtls {
        &inputs.settings.identity
    } else {
        ""
    }
}

async fn passthrough(inputs: &Inputs, client: TcpStream, dst: SocketAddr) {
    let counters = passthrough_counters(inputs);
    counters.opened.inc();
    match dial(dst, inputs.settings.proxy_mark).await {
        Ok(upstream) => splice::splice(client, upstream, idle_of(inputs), Some(&counters)).await,
        Err(e) => {
            tracing::debug!(%dst, "passthrough TCP connection failed: {e}");
            reset(&client);
        }
    }
    counters.closed.inc();
}

/// The upstream tunnel: an endpoint of `route` picked as for a call, and a `CONNECT` to its
/// sidecar for `port`.
async fn open_to_service(
    inputs: &Inputs,
    route: &super::routes::Route,
    port: u16,
) -> Result<(Arc<Endpoint>, Upgraded), String> {
    let now = Instant::now();
    let candidates = route.endpoints.iter().map(|e| Candidate {
        id: e.id,
        outstanding: e.outstanding.load(Ordering::Relaxed),
        ejected: e.is_ejected(now),
    });
    let picked = balance::pick(candidates, None, route.picking.balancer.next(), |n| {
        (inputs.random() % n as u64) as usize
    });
    let endpoint = picked
        .and_then(|id| route.endpoints.iter().find(|e| e.id == id))
        .cloned()
        .ok_or_else(|| "no healthy endpoint".to_string())?;
    let target = format!("{}:{port}", route.service);
    let tunnel = tokio::time::timeout(
        CONNECT_TIMEOUT,
        open_tunnel(inputs, &endpoint, &target, route.plaintext),
    )
    .await
    .map_err(|_| {
        format!(
            "no tunnel to {} within {CONNECT_TIMEOUT:?}",
            endpoint.address
        )
    })??;
    Ok((endpoint, tunnel))
}

async fn open_tunnel(
    inputs: &Inputs,
    endpoint: &Endpoint,
    target: &str,
    plaintext: bool,
) -> Result<Upgraded, String> {
    let authority = endpoint
        .authority
        .clone()
        .ok_or_else(|| format!("endpoint {} has no address", endpoint.address))?;
    let uri = http::Uri::builder()
        .scheme("http")
        .authority(authority)
        .path_and_query("/")
        .build()
        .map_err(|e| e.to_string())?;
    let io = connect_peer(inputs, uri, plaintext).await?;
    let mut req = Request::builder()
        .method(Method::CONNECT)
        .uri(target)
        .header(http::header::HOST, target)
        .body(ProxyBody::default())
        .map_err(|e| e.to_string())?;
    if let Some(m) = &inputs.settings.peer_metadata {
        req.headers_mut()
            .insert(super::workload::PEER_METADATA, m.clone());
    }
    let resp = super::upgrade::send(io, req)
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != StatusCode::OK {
        return Err(format!(
            "{}'s sidecar answered {}",
            endpoint.address,
            resp.status()
        ));
    }
    let upgraded = hyper::upgrade::on(resp).await.map_err(|e| e.to_string())?;
    Ok(TokioIo::new(upgraded))
}

/// Connects to `addr`, from a socket carrying the sidecar's mark when it has one.
pub(super) async fn dial(addr: SocketAddr, mark: Option<u32>) -> std::io::Result<TcpStream> {
    let connecting = async {
        match mark {
            Some(mark) => crate::capture::socket::connect_marked(addr, mark).await,
            None => {
                let s = TcpStream::connect(addr).await?;
                s.set_nodelay(true)?;
                Ok(s)
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, connecting)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
}

/// Closes the client's connection with a reset, as Envoy does when the upstream side fails,
/// so the client sees a failure rather than an orderly end.
fn reset(client: &TcpStream) {
    let _ = socket2::SockRef::from(client).set_linger(Some(Duration::ZERO));
}

/// How long a carried TCP connection may pass no byte either way before it is closed: the
/// sidecar's connection idle timeout (Envoy's TCP proxy idles out after 1 h too).
fn idle_of(inputs: &Inputs) -> Duration {
    inputs.settings.timeouts.connection.idle
}
