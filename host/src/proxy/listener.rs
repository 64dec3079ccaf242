//! The sidecar's listeners: the accept loop every listener runs, the inbound listener's mTLS
//! gate (STRICT or PERMISSIVE per connection, from the routes in force), and [`Peer`], what
//! a connection's requests know of whoever is on its other end. Each connection is served by
//! [`crate::conn`] with the sidecar's bounds; a drain lets in-flight calls finish.

use super::body::ProxyBody;
use super::metrics::ProxyMetrics;
use super::tcp::{self, sniff, sniff::Detected};
use super::{Inputs, authz, headers};
use crate::conn::{self, Ended, Limits};
use http::Response;
use hyper::body::Incoming;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

/// The other end of a downstream connection, with what every request on it reuses.
pub struct Peer {
    /// Its address.
    pub addr: SocketAddr,
    /// Where it was connecting before capture sent the connection here (`SO_ORIGINAL_DST`),
    /// as the authority a passthrough call is sent to, formatted once per connection; none
    /// when it dialled the listener itself.
    pub original_dst: Option<http::uri::Authority>,
    /// The same destination as an address: a service's virtual IP names the service.
    pub original_addr: Option<SocketAddr>,
    /// Its port as the `x-weft-target-port` value, when not 80; formatted once per
    /// connection.
    pub target_port: Option<http::HeaderValue>,
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
    /// Its identity and workload as plugins see them on the server side, interned at its
    /// first call with the metadata its sidecar sent then.
    pub(super) caller: std::sync::OnceLock<super::server_side::Caller>,
}

impl Peer {
    pub(super) fn new(
        addr: SocketAddr,
        original_dst: Option<SocketAddr>,
        identity: Option<crate::identity::SpiffeId>,
        us: &str,
    ) -> Peer {
        let xfcc = identity.as_ref().and_then(|id| {
            // SPIFFE IDs are validated to URI-safe characters, so this never fails in practice.
            http::HeaderValue::from_str(&format!("By={us};URI={id}")).ok()
        });
        Peer {
            addr,
            original_addr: original_dst,
            target_port: original_dst
                .map(|d| d.port())
                .filter(|p| *p != 80)
                .map(http::HeaderValue::from),
            original_dst: original_dst
                .and_then(|dst| http::uri::Authority::try_from(dst.to_string()).ok()),
            forwarded: headers::forwarded_value(addr.ip()),
            principal: identity.as_ref().map(authz::principal_of),
            identity,
            xfcc,
            by_source: std::sync::OnceLock::new(),
            caller: std::sync::OnceLock::new(),
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
pub(super) struct InboundTls {
    pub(super) strict: tokio_rustls::TlsAcceptor,
    pub(super) permissive: tokio_rustls::TlsAcceptor,
    pub(super) bootstrap: crate::identity::PeerAuthMode,
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

/// Accepts connections until shutdown, then drains them within `drain`; each request goes to
/// `handler` with the shared inputs and the peer. With `tls`, each connection first passes the
/// TLS handshake (or, PERMISSIVE, may be plaintext), in its own task so a slow handshake never
/// holds up the accept loop. Every connection is bounded by `limits`; the bound that ends one
/// is counted.
#[allow(clippy::too_many_arguments)]
pub(super) async fn serve<F, Fut>(
    listener: TcpListener,
    name: &'static str,
    tls: Option<InboundTls>,
    inputs: Arc<Inputs>,
    mut shutdown: watch::Receiver<bool>,
    drain: Duration,
    limits: Limits,
    handler: F,
) where
    F: Fn(Arc<Inputs>, http::Request<Incoming>, Arc<Peer>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>>
        + Send
        + 'static,
{
    // Every connection task holds a sender; when the last is gone, the drain is over.
    let (live, mut all_done) = mpsc::channel::<()>(1);
    let gauge = inputs.metrics.connections.with_label_values(&[name]);
    let timeouts = inputs.metrics.downstream_timeouts(name);
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
                let tls = tls.clone();
                let gauge = gauge.clone();
                let timeouts = timeouts.clone();
                // Cloned before the task starts, so a shutdown meanwhile still reaches it.
                let drained = shutdown.clone();
                let live = live.clone();
                gauge.inc();
                tokio::spawn(async move {
                    let _live = live;
                    let us = shared.settings.identity.clone();
                    let ended = match tls {
                        None => {
                            let original = crate::capture::socket::original_dst(&stream);
                            // A captured connection on its way out is HTTP or opaque TCP.
                            let detected = match original {
                                Some(dst) if name == "outbound" => Some((dst, detect(&shared, &stream, dst).await)),
                                _ => None,
                            };
                            match detected {
                                Some((_, Detected::Closed)) => Ended::Closed,
                                Some((dst, Detected::Opaque)) => {
                                    tcp::outbound(shared, stream, dst).await;
                                    Ended::Closed
                                }
                                _ => {
                                    let who = Arc::new(Peer::new(peer, original, None, &us));
                                    serve_one(stream, shared, who, limits, drained, handler).await
                                }
                            }
                        }
                        Some(tls) => match accept_tls(&tls, tls.mode_in_force(&shared), stream).await {
                            Ok(Accepted::Plain(stream)) => {
                                // Captured on its way in (PERMISSIVE): opaque TCP goes to the
                                // app's port as it is.
                                let original = crate::capture::socket::original_dst(&stream);
                                let detected = match original {
                                    Some(dst) => detect(&shared, &stream, dst).await,
                                    None => Detected::Http,
                                };
                                match (detected, original) {
                                    (Detected::Closed, _) => Ended::Closed,
                                    (Detected::Opaque, Some(dst)) => {
                                        tcp::inbound_plain(shared, stream, dst.port()).await;
                                        Ended::Closed
                                    }
                                    _ => {
                                        let who = Arc::new(Peer::new(peer, None, None, &us));
                                        serve_one(stream, shared, who, limits, drained, handler).await
                                    }
                                }
                            }
                            Ok(Accepted::Tls(stream)) => {
                                let caller = crate::identity::caller_identity(&stream);
                                let who = Arc::new(Peer::new(peer, None, caller, &us));
                                serve_one(*stream, shared, who, limits, drained, handler).await
                            }
                            Ok(Accepted::Closed) => Ended::Closed,
                            Err(refused) => {
                                tracing::debug!(listener = name, %peer, reason = refused.reason, "connection refused: {}", refused.detail);
                                shared.metrics.tls_refused.with_label_values(&[refused.reason]).inc();
                                Ended::Closed
                            }
                        },
                    };
                    match ended {
                        Ended::Closed => {}
                        Ended::TimedOut(t) => {
                            tracing::debug!(listener = name, %peer, timeout = t.as_str(), "connection closed by a bound");
                            timeouts.count(t);
                        }
                        Ended::Failed(e) => tracing::debug!(listener = name, %peer, "connection ended: {e}"),
                    }
                    gauge.dec();
                });
            }
            _ = shutdown.changed() => break,
        }
    }
    drop(listener);
    drop(live);
    tokio::select! {
        _ = all_done.recv() => tracing::info!(listener = name, "drained"),
        _ = tokio::time::sleep(drain) => tracing::warn!(listener = name, "drain timeout: closing remaining connections"),
    }
}

/// What a captured connection to `dst` speaks: TCP without looking on a declared opaque port,
/// else what its first bytes say.
async fn detect(inputs: &Inputs, stream: &tokio::net::TcpStream, dst: SocketAddr) -> Detected {
    if inputs.settings.opaque_ports.contains(&dst.port()) {
        return Detected::Opaque;
    }
    sniff::detect(stream, inputs.settings.detection_timeout).await
}

/// Serves one connection's requests through `handler`.
async fn serve_one<I, F, Fut>(
    io: I,
    inputs: Arc<Inputs>,
    who: Arc<Peer>,
    limits: Limits,
    drain: watch::Receiver<bool>,
    handler: F,
) -> Ended
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    F: Fn(Arc<Inputs>, http::Request<Incoming>, Arc<Peer>) -> Fut + Copy + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<ProxyBody>, std::convert::Infallible>>
        + Send
        + 'static,
{
    conn::serve(io, limits, drain, move |req| {
        handler(inputs.clone(), req, who.clone())
    })
    .await
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
