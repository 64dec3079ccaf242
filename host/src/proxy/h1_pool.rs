//! HTTP/1.1 keep-alive connections: to peer sidecars, for the calls an app makes over HTTP/1.1
//! (over the `peers` connector, TCP or mTLS), and to the local app. hyper's low-level
//! `client::conn::http1` with a pool of our own per endpoint, newest first, so few connections
//! stay warm; no per-call task or channel of the pool's own, as hyper-util's pooled client has.
//!
//! A connection goes back to the pool as soon as its response head is in; hyper's sender for
//! it is ready again only once that response's body has been read to its end, and a body
//! dropped early closes the connection. A checkout takes the newest ready connection, skips
//! busy ones, drops closed and long-idle ones, and connects when none is ready. A request that
//! a pooled connection could not send (the peer closed it meanwhile) is sent once more on a
//! new connection, as nothing of it reached the peer.
//!
//! A destination with a circuit breaker (`connectionPool`) keeps its connections apart, keyed
//! by endpoint and breaker, and bounded as Envoy bounds an HTTP/1.1 cluster: a request that
//! finds no ready connection waits as pending (if `http1MaxPendingRequests` allows; else it
//! overflows) until it may open one (`maxConnections`) or one becomes free, whose current
//! response it then waits out; a connection that has carried `maxRequestsPerConnection`
//! requests is closed after its last.

use super::body::ProxyBody;
use super::breaker::{Breaker, Slot};
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long an unused connection is kept.
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// At most this many connections are kept per endpoint; more are closed after their call.
const MAX_IDLE_PER_ENDPOINT: usize = 256;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Why a call got no response.
#[derive(Debug)]
pub enum PeerError {
    /// No connection (refused, timed out, TLS or identity check failed).
    Connect(BoxError),
    /// The connection failed during the exchange.
    Http(hyper::Error),
    /// The destination's circuit breaker refused it: too many requests pending.
    Overflow,
}

impl std::fmt::Display for PeerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PeerError::Connect(e) => write!(f, "connect: {e}"),
            PeerError::Http(e) => write!(f, "{e}"),
            PeerError::Overflow => write!(f, "too many requests waiting for a connection"),
        }
    }
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// A connection's sender and the requests it has carried.
struct Conn {
    sender: SendRequest<ProxyBody>,
    used: u32,
}

/// The pool, connecting through `C` (a counting connector around the peers' or the app's).
pub struct H1Pool<C> {
    connector: C,
    /// By group (a bounded destination's breaker id, else 0), then by endpoint authority as
    /// written in the request URI (`10.0.0.1:15006`): looked up by `&str`, so only an
    /// endpoint's first connection allocates its key.
    idle: Mutex<HashMap<u32, Endpoints, foldhash::fast::RandomState>>,
}

type Endpoints = HashMap<Box<str>, Vec<Idle>, foldhash::fast::RandomState>;

/// Where a connection is kept: its group and endpoint.
#[derive(Clone, Copy)]
struct Key<'a> {
    group: u32,
    authority: &'a str,
}

impl<C> H1Pool<C>
where
    C: tower_service::Service<http::Uri> + Clone + Send,
    C::Error: Into<BoxError>,
    C::Future: Send,
    C::Response: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    /// A pool connecting through `connector`.
    pub fn new(connector: C) -> Self {
        H1Pool {
            connector,
            idle: Mutex::new(HashMap::default()),
        }
    }

    /// Sends `req` (its URI `http://<endpoint>/path`) to its endpoint over HTTP/1.1, in origin
    /// form.
    pub async fn request(&self, req: Request<ProxyBody>) -> Result<Response<Incoming>, PeerError> {
        self.request_within(req, None).await
    }

    /// [`H1Pool::request`] within `breaker`'s connection bounds, if any.
    pub async fn request_within(
        &self,
        req: Request<ProxyBody>,
        breaker: Option<&Arc<Breaker>>,
    ) -> Result<Response<Incoming>, PeerError> {
        let Some(key) = req.uri().authority().cloned() else {
            return Err(PeerError::Connect("the request names no endpoint".into()));
        };
        let mut req = req;
        // HTTP/1.1 requires a Host; hyper's low-level client does not add one.
        if !req.headers().contains_key(http::header::HOST)
            && let Ok(host) = http::HeaderValue::from_str(key.as_str())
        {
            req.headers_mut().insert(http::header::HOST, host);
        }
        // Origin form on the wire, as a client speaking to a server (not a proxy) sends it;
        // built from the parts, so nothing is parsed again.
        let target = req.uri().clone();
        let mut origin = http::uri::Parts::default();
        origin.path_and_query = Some(
            target
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
        );
        if let Ok(origin) = http::Uri::from_parts(origin) {
            *req.uri_mut() = origin;
        }
        let bounded = breaker.filter(|b| b.bounds_connections());
        let key = Key {
            group: bounded.map_or(0, |b| b.id),
            authority: key.as_str(),
        };
        let per_connection = bounded.map_or(0, |b| b.per_connection());
        if let Some(mut conn) = self.checkout(key, false) {
            match conn.sender.try_send_request(req).await {
                Ok(resp) => {
                    conn.used += 1;
                    self.checkin(key, conn, per_connection, bounded);
                    return Ok(resp);
                }
                Err(mut e) => match e.take_message() {
                    // Never sent: the pooled connection was closed under us.
                    Some(unsent) => req = unsent,
                    None => return Err(PeerError::Http(e.into_error())),
                },
            }
        }
        let mut conn = match bounded {
            None => Conn {
                sender: self.connect(target, None).await?,
                used: 0,
            },
            Some(b) => self.wait_for_connection(key, target, b).await?,
        };
        let resp = conn
            .sender
            .send_request(req)
            .await
            .map_err(PeerError::Http)?;
        conn.used += 1;
        self.checkin(key, conn, per_connection, bounded);
        Ok(resp)
    }

    /// A connection for a request that found none ready, as a pending request of `breaker`:
    /// a new one if `maxConnections` allows, else the next one freed (waiting out the
    /// response it carries). Refused at once when too many are pending already.
    async fn wait_for_connection(
        &self,
        key: Key<'_>,
        target: http::Uri,
        breaker: &Arc<Breaker>,
    ) -> Result<Conn, PeerError> {
        let _pending = breaker.pending().ok_or(PeerError::Overflow)?;
        loop {
            // Registered before looking, so a connection freed in between still wakes us.
            let freed = breaker.freed.notified();
            tokio::pin!(freed);
            freed.as_mut().enable();
            if let Some(mut conn) = self.checkout(key, true) {
                if conn.sender.ready().await.is_ok() {
                    return Ok(conn);
                }
                continue;
            }
            if let Some(slot) = breaker.connection() {
                return Ok(Conn {
                    sender: self.connect(target, Some(slot)).await?,
                    used: 0,
                });
            }
            freed.await;
        }
    }

    /// The newest ready connection to `key` (or, with `busy`, the newest open one),
    /// dropping closed and expired ones on the way.
    fn checkout(&self, key: Key<'_>, busy: bool) -> Option<Conn> {
        let mut idle = self.idle.lock();
        let list = idle.get_mut(&key.group)?.get_mut(key.authority)?;
        let now = Instant::now();
        let mut i = list.len();
        while i > 0 {
            i -= 1;
            let entry = &list[i];
            if entry.conn.sender.is_closed() || now.duration_since(entry.since) > IDLE_TIMEOUT {
                list.remove(i);
            } else if busy || entry.conn.sender.is_ready() {
                return Some(list.remove(i).conn);
            }
        }
        None
    }

    /// Returns `conn` to the pool, unless it has carried its `per_connection` requests: then it
    /// is dropped, and closes once its response is done.
    fn checkin(
        &self,
        key: Key<'_>,
        conn: Conn,
        per_connection: u32,
        breaker: Option<&Arc<Breaker>>,
    ) {
        if per_connection != 0 && conn.used >= per_connection {
            return;
        }
        let entry = Idle {
            conn,
            since: Instant::now(),
        };
        let mut idle = self.idle.lock();
        let endpoints = idle.entry(key.group).or_default();
        match endpoints.get_mut(key.authority) {
            Some(list) if list.len() < MAX_IDLE_PER_ENDPOINT => list.push(entry),
            Some(_) => {}
            None => {
                endpoints.insert(key.authority.into(), vec![entry]);
            }
        }
        drop(idle);
        if let Some(b) = breaker {
            b.freed.notify_one();
        }
    }

    /// A new connection; `slot` (a breaker's count of connections) is held until it closes.
    async fn connect(
        &self,
        uri: http::Uri,
        slot: Option<Slot>,
    ) -> Result<SendRequest<ProxyBody>, PeerError> {
        let mut connector = self.connector.clone();
        std::future::poll_fn(|cx| connector.poll_ready(cx))
            .await
            .map_err(|e| PeerError::Connect(e.into()))?;
        let io = connector
            .call(uri)
            .await
            .map_err(|e| PeerError::Connect(e.into()))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(io)
            .await
            .map_err(PeerError::Http)?;
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = conn.await {
                tracing::debug!("peer connection ended: {e}");
            }
        });
        Ok(sender)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::pool::{CountingConnector, PoolStats};
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use hyper_util::client::legacy::connect::HttpConnector;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// An HTTP/1.1 app on loopback answering `ok`, counting the connections it accepted;
    /// with `close`, it ends every connection after one response.
    async fn app(close: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(|req: Request<Incoming>| async move {
                        let host = req.headers().get("host").cloned();
                        let mut resp = Response::new(Full::new(Bytes::from(req.uri().to_string())));
                        if let Some(h) = host {
                            resp.headers_mut().insert("x-host", h);
                        }
                        Ok::<_, std::convert::Infallible>(resp)
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(!close)
                        .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc)
                        .await;
                });
            }
        });
        (addr, accepted)
    }

    fn pool() -> H1Pool<CountingConnector> {
        let stats = PoolStats {
            opened: prometheus::IntCounter::new("o", "o").expect("counter"),
            open: prometheus::IntGauge::new("p", "p").expect("gauge"),
            failed: prometheus::IntCounter::new("f", "f").expect("counter"),
        };
        H1Pool::new(CountingConnector::new(HttpConnector::new(), stats))
    }

    async fn get(pool: &H1Pool<CountingConnector>, to: std::net::SocketAddr) -> (String, String) {
        let req = Request::builder()
            .uri(format!("http://{to}/charge?id=1"))
            .body(
                Full::new(Bytes::new())
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            )
            .expect("request");
        let resp = pool.request(req).await.expect("answered");
        let host = resp.headers()["x-host"]
            .to_str()
            .expect("ascii")
            .to_string();
        let body = resp.into_body().collect().await.expect("body").to_bytes();
        (String::from_utf8_lossy(&body).into_owned(), host)
    }

    #[tokio::test]
    async fn calls_in_turn_reuse_one_connection_in_origin_form_with_a_host() {
        let (addr, accepted) = app(false).await;
        let pool = pool();
        for _ in 0..5 {
            let (target, host) = get(&pool, addr).await;
            assert_eq!(target, "/charge?id=1", "origin form on the wire");
            assert_eq!(host, addr.to_string());
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_connection_the_app_closed_is_replaced_without_failing_a_call() {
        let (addr, accepted) = app(true).await;
        let pool = pool();
        for _ in 0..5 {
            get(&pool, addr).await;
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 5);
    }

    #[tokio::test]
    async fn no_listener_is_a_connect_error() {
        let addr = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let req = Request::builder()
            .uri(format!("http://{addr}/"))
            .body(
                Full::new(Bytes::new())
                    .map_err(|e| match e {})
                    .boxed_unsync(),
            )
            .expect("request");
        assert!(matches!(
            pool().request(req).await,
            Err(PeerError::Connect(_))
        ));
    }
}
