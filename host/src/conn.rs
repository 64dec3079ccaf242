//! Downstream connections, served with bounds: the protocol read from the first bytes (HTTP/1.1
//! or the HTTP/2 preface), then hyper's server for it, watched so no connection holds
//! resources forever — the sidecar's listeners and the control plane's API share it.
//!
//! The bounds, as Envoy names them:
//! - **request headers**: a new connection must deliver its first complete request head
//!   within this (protocol detection and a TLS-less preface included); on HTTP/1.1 every later
//!   head too, timed from its first byte. An idle keep-alive connection is not timed by it.
//! - **idle**: a connection with no request in flight for this long is closed (HTTP/1.1) or
//!   sent GOAWAY (HTTP/2). A response still streaming (a watch stream) keeps it busy.
//! - **max duration**: optional; past it the connection is drained the same way.
//!
//! What a connection is doing is seen through its reads (a wrapper over its I/O marks the first
//! byte of each HTTP/1.1 head) and its requests (a guard lives from the call to the end of the
//! response body). One timer per connection re-arms itself at the next deadline, so a quiet
//! connection costs no wake-ups between deadlines.

use bytes::{Buf, Bytes};
use http::{Request, Response};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::watch;

/// The bounds on one downstream connection (see the module's words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Time to the first request head, and for each HTTP/1.1 head from its first byte.
    pub request_headers: Duration,
    /// Longest time with no request in flight.
    pub idle: Duration,
    /// Longest life of a connection; none for no bound.
    pub max_duration: Option<Duration>,
}

impl Default for Limits {
    /// Envoy's defaults for idle (1 h) and no maximum duration; 10 s for request headers,
    /// where Envoy has no default and hyper 30 s.
    fn default() -> Self {
        Limits {
            request_headers: Duration::from_secs(10),
            idle: Duration::from_secs(3600),
            max_duration: None,
        }
    }
}

/// Which bound ended a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timeout {
    /// A request head did not arrive in time.
    RequestHeaders,
    /// Nothing was asked for too long.
    Idle,
    /// The connection reached its maximum duration.
    MaxDuration,
}

impl Timeout {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Timeout::RequestHeaders => "request_headers",
            Timeout::Idle => "idle",
            Timeout::MaxDuration => "max_duration",
        }
    }
}

/// How a connection ended.
#[derive(Debug)]
pub enum Ended {
    /// The peer closed it, or it was drained.
    Closed,
    /// A bound ended it.
    TimedOut(Timeout),
    /// A protocol or I/O error ended it.
    Failed(hyper::Error),
}

/// The HTTP/2 connection preface.
const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// What a connection is doing, shared by its I/O, its requests and its watchdog.
#[derive(Debug)]
struct Activity {
    start: Instant,
    in_flight: AtomicU32,
    /// Milliseconds after `start` when the head being read began, or [`NONE`].
    head_since: AtomicU64,
    /// Milliseconds after `start` when the last request ended (or the connection began).
    idle_since: AtomicU64,
    /// Whether heads after the first are timed from their first byte: HTTP/1.1, where a byte
    /// after a response can only begin a head; not HTTP/2, whose idle connections still carry
    /// frames (window updates, pings).
    track_heads: bool,
}

const NONE: u64 = u64::MAX;

impl Activity {
    fn new(track_heads: bool, start: Instant) -> Activity {
        Activity {
            start,
            in_flight: AtomicU32::new(0),
            // The first head is timed from the accept.
            head_since: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            track_heads,
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    fn read_some(&self) {
        if self.track_heads
            && self.in_flight.load(Ordering::Relaxed) == 0
            && self.head_since.load(Ordering::Relaxed) == NONE
        {
            self.head_since.store(self.now_ms(), Ordering::Relaxed);
        }
    }

    /// The bound passed now, or when to look again.
    fn check(&self, limits: &Limits) -> Result<Duration, Timeout> {
        let now = self.now_ms();
        let ms = |d: Duration| d.as_millis().min(u128::from(u64::MAX / 2)) as u64;
        let mut next = u64::MAX;
        if let Some(max) = limits.max_duration {
            let due = ms(max);
            if now >= due {
                return Err(Timeout::MaxDuration);
            }
            next = next.min(due);
        }
        if self.in_flight.load(Ordering::Relaxed) == 0 {
            let head = self.head_since.load(Ordering::Relaxed);
            if head != NONE {
                let due = head.saturating_add(ms(limits.request_headers));
                if now >= due {
                    return Err(Timeout::RequestHeaders);
                }
                next = next.min(due);
            } else {
                let due = self
                    .idle_since
                    .load(Ordering::Relaxed)
                    .saturating_add(ms(limits.idle));
                if now >= due {
                    return Err(Timeout::Idle);
                }
                next = next.min(due);
            }
        } else {
            // Busy: its requests have their own bounds; look again an idle period from now.
            next = next.min(now.saturating_add(ms(limits.idle)));
        }
        Ok(Duration::from_millis(next.saturating_sub(now).max(1)))
    }
}

/// Held from a request's call to the end of its response body.
struct InFlight(Arc<Activity>);

impl InFlight {
    fn enter(activity: &Arc<Activity>) -> InFlight {
        activity.in_flight.fetch_add(1, Ordering::Relaxed);
        activity.head_since.store(NONE, Ordering::Relaxed);
        InFlight(activity.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let a = &self.0;
        a.idle_since.store(a.now_ms(), Ordering::Relaxed);
        a.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that ends its request's [`InFlight`] when it ends or is dropped.
pub struct Guarded<B> {
    inner: B,
    _guard: InFlight,
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The connection's I/O, with bytes read before the protocol was chosen played back first and
/// every read marking activity.
struct Tracked<I> {
    io: I,
    replay: Bytes,
    activity: Arc<Activity>,
}

impl<I: AsyncRead + Unpin> AsyncRead for Tracked<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.replay.is_empty() {
            let n = self.replay.len().min(buf.remaining());
            buf.put_slice(&self.replay[..n]);
            self.replay.advance(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.activity.read_some();
        }
        polled
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Tracked<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Reads until the bytes either start the HTTP/2 preface in full or cannot: returns them and
/// whether they were the preface. An EOF before anything is `Ok(None)`.
async fn sniff<I: AsyncRead + Unpin>(io: &mut I) -> std::io::Result<Option<(Bytes, bool)>> {
    use tokio::io::AsyncReadExt;
    let mut buf = Vec::with_capacity(PREFACE.len());
    loop {
        let mut chunk = [0u8; 24];
        let want = PREFACE.len() - buf.len();
        let n = io.read(&mut chunk[..want]).await?;
        if n == 0 {
            return Ok((!buf.is_empty()).then(|| (Bytes::from(buf), false)));
        }
        buf.extend_from_slice(&chunk[..n]);
        if !PREFACE.starts_with(&buf) {
            return Ok(Some((Bytes::from(buf), false)));
        }
        if buf.len() == PREFACE.len() {
            return Ok(Some((Bytes::from(buf), true)));
        }
    }
}

/// Serves HTTP on one accepted connection with `limits`, calling `handler` per request, until
/// it closes, a bound ends it, or `drain` turns true (then it is shut down gracefully and
/// served until its requests finish).
pub async fn serve<I, F, Fut, B>(
    mut io: I,
    limits: Limits,
    mut drain: watch::Receiver<bool>,
    handler: F,
) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Response<B>, std::convert::Infallible>> + Send + 'static,
    B: Body + Unpin + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let start = Instant::now();
    // Read, not assumed from ALPN: the same bytes decide over TLS and in the clear.
    let (replay, h2) = match tokio::time::timeout(limits.request_headers, sniff(&mut io)).await {
        Err(_) => return Ended::TimedOut(Timeout::RequestHeaders),
        Ok(Err(_)) | Ok(Ok(None)) => return Ended::Closed,
        Ok(Ok(Some(sniffed))) => sniffed,
    };
    let activity = Arc::new(Activity::new(!h2, start));
    let tracked = TokioIo::new(Tracked {
        io,
        replay,
        activity: activity.clone(),
    });
    let handler = Arc::new(handler);
    let svc = {
        let activity = activity.clone();
        service_fn(move |req| {
            let guard = InFlight::enter(&activity);
            let call = handler(req);
            async move {
                let resp = call.await?;
                Ok::<_, std::convert::Infallible>(resp.map(|inner| Guarded {
                    inner,
                    _guard: guard,
                }))
            }
        })
    };
    if h2 {
        let mut builder = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        builder.timer(TokioTimer::new());
        let conn = builder.serve_connection(tracked, svc);
        watch_over(conn, &activity, &limits, &mut drain).await
    } else {
        let mut builder = hyper::server::conn::http1::Builder::new();
        // Heads are timed here from their first byte; hyper's own timer would also run while
        // a keep-alive connection merely waits.
        builder
            .timer(TokioTimer::new())
            .keep_alive(true)
            .header_read_timeout(None);
        // Upgrades (CONNECT, WebSocket) take the connection over once answered.
        let conn = builder.serve_connection(tracked, svc).with_upgrades();
        watch_over(conn, &activity, &limits, &mut drain).await
    }
}

/// A hyper server connection that can be asked to finish gracefully.
trait Graceful: Future<Output = hyper::Result<()>> {
    fn shut_down(self: Pin<&mut Self>);
}

impl<I, S, B> Graceful for hyper::server::conn::http1::Connection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B> Graceful for hyper::server::conn::http1::UpgradeableConnection<I, S>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<I, S, B, E> Graceful for hyper::server::conn::http2::Connection<I, S, E>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
    B: Body + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    E: hyper::rt::bounds::Http2ServerConnExec<S::Future, B>,
{
    fn shut_down(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Polls `conn` to its end, enforcing `limits` and answering `drain`.
async fn watch_over<C: Graceful>(
    conn: C,
    activity: &Activity,
    limits: &Limits,
    drain: &mut watch::Receiver<bool>,
) -> Ended {
    tokio::pin!(conn);
    let first = activity.check(limits).unwrap_or(Duration::ZERO);
    let timer = tokio::time::sleep(first);
    tokio::pin!(timer);
    let mut ending: Option<Timeout> = None;
    let mut draining = *drain.borrow();
    if draining {
        conn.as_mut().shut_down();
    }
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                return match (done, ending) {
                    (_, Some(t)) => Ended::TimedOut(t),
                    (Ok(()), None) => Ended::Closed,
                    (Err(e), None) => Ended::Failed(e),
                };
            }
            changed = drain.changed(), if !draining => {
                if changed.is_err() || *drain.borrow() {
                    draining = true;
                    conn.as_mut().shut_down();
                }
            }
            () = &mut timer, if ending.is_none() => match activity.check(limits) {
                Ok(next) => timer.as_mut().reset(tokio::time::Instant::now() + next),
                // A head that never completes: the peer is not speaking in good faith, close.
                Err(Timeout::RequestHeaders) => return Ended::TimedOut(Timeout::RequestHeaders),
                Err(t) => {
                    ending = Some(t);
                    conn.as_mut().shut_down();
                }
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_head_is_timed_from_the_accept_then_idle_takes_over() {
        let limits = Limits {
            request_headers: Duration::from_millis(50),
            idle: Duration::from_millis(200),
            max_duration: None,
        };
        let a = Arc::new(Activity::new(true, Instant::now()));
        assert!(a.check(&limits).expect("fresh") <= Duration::from_millis(50));
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(a.check(&limits), Err(Timeout::RequestHeaders));

        let a = Arc::new(Activity::new(true, Instant::now()));
        let guard = InFlight::enter(&a);
        std::thread::sleep(Duration::from_millis(60));
        assert!(a.check(&limits).is_ok(), "busy connections are not timed");
        drop(guard);
        assert!(a.check(&limits).is_ok(), "idle, not a head");
        // A byte of the next head starts its timer.
        a.read_some();
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(a.check(&limits), Err(Timeout::RequestHeaders));
        let _next = InFlight::enter(&a);
        drop(_next);
        std::thread::sleep(Duration::from_millis(210));
        assert_eq!(a.check(&limits), Err(Timeout::Idle));
    }

    #[test]
    fn max_duration_ends_even_a_busy_connection() {
        let limits = Limits {
            request_headers: Duration::from_secs(10),
            idle: Duration::from_secs(10),
            max_duration: Some(Duration::from_millis(30)),
        };
        let a = Arc::new(Activity::new(true, Instant::now()));
        let _busy = InFlight::enter(&a);
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(a.check(&limits), Err(Timeout::MaxDuration));
    }
}
