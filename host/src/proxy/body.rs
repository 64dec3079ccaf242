//! Bodies on the way through: a request body buffered for replay up to a bound (larger ones
//! stream once and are not retried), and a response body that counts its bytes and reports
//! when it ends — completely, or because the caller went away.

use bytes::{Bytes, BytesMut};
use http_body::{Body, Frame, SizeHint};
use http_body_util::BodyExt;
use http_body_util::combinators::UnsyncBoxBody;
use hyper::body::Incoming;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

/// Errors crossing a body.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type every response and upstream request uses.
pub type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

/// An empty body.
pub fn empty() -> ProxyBody {
    full(Bytes::new())
}

/// A body of these bytes.
pub fn full(bytes: Bytes) -> ProxyBody {
    if bytes.is_empty() {
        // A zero-sized body boxes without allocating: most requests carry none.
        return http_body_util::Empty::new()
            .map_err(|never| match never {})
            .boxed_unsync();
    }
    http_body_util::Full::new(bytes)
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// A body of these bytes, then these trailers (a request read whole that carried them).
pub fn whole(bytes: Bytes, trailers: Option<http::HeaderMap>) -> ProxyBody {
    match trailers {
        None => full(bytes),
        Some(trailers) => http_body_util::Full::new(bytes)
            .with_trailers(std::future::ready(Some(Ok(trailers))))
            .map_err(|never| match never {})
            .boxed_unsync(),
    }
}

/// A request body as read for forwarding.
pub enum RequestBody {
    /// Fully read and within the bound, with its trailers if it had any: can be sent again.
    Replayable(Bytes, Option<http::HeaderMap>),
    /// Too large (or still arriving past the bound): streams once.
    Streaming(PrefixedBody),
    /// Streaming through proxy-wasm filters' body callbacks: streams once.
    Filtered(Option<Filtered<OnceBody>>),
    /// Sent as it arrives, a copy kept while it fits the bound: can be sent again until then.
    Teed(super::tee::Tee<ProxyBody>),
}

/// Why a streaming request body cannot go on through the filters.
pub enum StreamStop {
    /// A filter answered, failed closed, or holds more than the bound, on its first bytes.
    Stopped(crate::plugin::BodyStop),
    /// The body could not be read.
    Read(BoxError),
}

impl RequestBody {
    /// A body for one attempt; a streaming body can be taken only once.
    pub fn attempt(&mut self) -> Option<ProxyBody> {
        match self {
            RequestBody::Replayable(b, t) => Some(whole(b.clone(), t.clone())),
            RequestBody::Streaming(p) => p.take().map(BodyExt::boxed_unsync),
            RequestBody::Filtered(f) => f.take().map(BodyExt::boxed_unsync),
            RequestBody::Teed(t) => t.attempt().map(BodyExt::boxed_unsync),
        }
    }

    /// A body of unknown length, to stream through the filters ([`RequestBody::stream_through`]).
    pub fn streaming(body: Downstream, counter: Arc<AtomicU64>) -> Self {
        RequestBody::Streaming(PrefixedBody::new(Bytes::new(), body, counter))
    }

    /// Puts a streaming body through `pipe`, frame by frame as it arrives, as Envoy streams a
    /// body through its filters. Until the filters pass their first bytes on, nothing has gone
    /// on: a filter may still answer in the body's place, and one that holds more than the
    /// bound (it wants the body whole) stops it. Then the call goes on with what they passed,
    /// the rest passing them as it comes. (A filter failing or answering later fails the call:
    /// the request has gone.)
    pub async fn stream_through(
        &mut self,
        mut pipe: crate::plugin::BodyPipeline,
    ) -> Result<(), StreamStop> {
        let RequestBody::Streaming(p) = self else {
            return Ok(());
        };
        let Some((prefix, mut rest, counter)) = p.inner.take() else {
            return Ok(());
        };
        let mut out = match prefix {
            Some(read) => pipe.push(read, false).map_err(StreamStop::Stopped)?,
            None => Bytes::new(),
        };
        let mut trailers = None;
        let mut ended = false;
        while out.is_empty() && !ended {
            let data = match rest.frame().await {
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) => {
                        counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                        data
                    }
                    Err(frame) => {
                        trailers = frame.into_trailers().ok();
                        ended = true;
                        Bytes::new()
                    }
                },
                Some(Err(e)) => return Err(StreamStop::Read(e)),
                None => {
                    ended = true;
                    Bytes::new()
                }
            };
            out = pipe.push(data, ended).map_err(StreamStop::Stopped)?;
        }
        if let Some(t) = &mut trailers {
            pipe.trailers(t).map_err(StreamStop::Stopped)?;
        }
        let once = OnceBody {
            prefix: None,
            rest,
            counter,
        };
        *self = RequestBody::Filtered(Some(Filtered::Through {
            inner: once,
            pipe: Box::new(pipe),
            ready: (!out.is_empty()).then_some(out),
            trailers,
            ended,
            // The request's `content-length` went: a filter may change the length as it
            // streams.
            declared: None,
            sent: 0,
        }));
        Ok(())
    }

    /// Keeps a copy of a body streaming through the filters (what they pass on, up to `limit`
    /// bytes) so a retry can send it again.
    pub fn keep_for_retries(&mut self, limit: usize) {
        if let RequestBody::Filtered(f) = self
            && let Some(filtered) = f.take()
        {
            // The filtered body counts the caller's bytes already.
            let tee = super::tee::Tee::new(filtered.boxed_unsync(), limit, Arc::default());
            *self = RequestBody::Teed(tee);
        }
    }

    /// Whether it can be sent again.
    pub fn replayable(&self) -> bool {
        match self {
            RequestBody::Replayable(..) => true,
            RequestBody::Teed(t) => t.replayable(),
            RequestBody::Streaming(_) | RequestBody::Filtered(_) => false,
        }
    }
}

/// A request body as it arrives from downstream, bounded in time.
pub type Downstream = super::deadline::Bounded<Incoming>;

/// Reads `body` until it ends or passes `limit` bytes.
pub async fn read_for_replay(
    body: Downstream,
    content_length: Option<u64>,
    limit: usize,
    counter: Arc<AtomicU64>,
) -> Result<RequestBody, BoxError> {
    if content_length.is_some_and(|n| n > limit as u64) {
        return Ok(RequestBody::Streaming(PrefixedBody::new(
            Bytes::new(),
            body,
            counter,
        )));
    }
    let mut body = body;
    let mut buf = BytesMut::new();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(data) => {
                buf.extend_from_slice(&data);
                if buf.len() > limit {
                    counter.fetch_add(buf.len() as u64, Ordering::Relaxed);
                    return Ok(RequestBody::Streaming(PrefixedBody::new(
                        buf.freeze(),
                        body,
                        counter,
                    )));
                }
            }
            // Trailers end the body; they go on with it (and again with each retry).
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    counter.fetch_add(buf.len() as u64, Ordering::Relaxed);
    Ok(RequestBody::Replayable(buf.freeze(), trailers))
}

/// Bytes already read, then the rest of the stream; counts what it forwards.
pub struct PrefixedBody {
    inner: Option<(Option<Bytes>, Downstream, Arc<AtomicU64>)>,
}

impl PrefixedBody {
    fn new(prefix: Bytes, rest: Downstream, counter: Arc<AtomicU64>) -> Self {
        let prefix = (!prefix.is_empty()).then_some(prefix);
        PrefixedBody {
            inner: Some((prefix, rest, counter)),
        }
    }

    fn take(&mut self) -> Option<OnceBody> {
        self.inner.take().map(|(prefix, rest, counter)| OnceBody {
            prefix,
            rest,
            counter,
        })
    }
}

/// A streaming request body, sent once.
pub struct OnceBody {
    prefix: Option<Bytes>,
    rest: Downstream,
    counter: Arc<AtomicU64>,
}

impl Body for OnceBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        match Pin::new(&mut self.rest).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }
}

/// What happened to a response body.
#[derive(Debug, Clone, Copy)]
pub struct BodyEnd {
    /// Bytes sent.
    pub bytes: u64,
    /// Whether it ended normally (false: an error, or the caller went away).
    pub complete: bool,
    /// The `grpc-status` its trailers carried, if any.
    pub grpc_status: Option<u8>,
}

/// A response body that counts bytes and calls `on_end` exactly once when it is over.
pub struct ReportingBody<B: Body, F: FnOnce(BodyEnd)> {
    inner: B,
    bytes: u64,
    grpc_status: Option<u8>,
    on_end: Option<F>,
}

impl<B: Body, F: FnOnce(BodyEnd)> ReportingBody<B, F> {
    /// Wraps `inner`; generic over both, so a response is boxed once, not three times.
    pub fn new(inner: B, on_end: F) -> Self {
        ReportingBody {
            inner,
            bytes: 0,
            grpc_status: None,
            on_end: Some(on_end),
        }
    }

    fn end(&mut self, complete: bool) {
        if let Some(f) = self.on_end.take() {
            f(BodyEnd {
                bytes: self.bytes,
                complete,
                grpc_status: self.grpc_status,
            });
        }
    }
}

impl<B, F> Body for ReportingBody<B, F>
where
    B: Body<Data = Bytes> + Unpin,
    F: FnOnce(BodyEnd) + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let polled = Pin::new(&mut self.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    self.bytes += data.len() as u64;
                } else if let Some(trailers) = frame.trailers_ref() {
                    self.grpc_status = super::grpc::status(trailers);
                }
            }
            Poll::Ready(Some(Err(_))) => self.end(false),
            Poll::Ready(None) => self.end(true),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl<B: Body, F: FnOnce(BodyEnd)> Drop for ReportingBody<B, F> {
    fn drop(&mut self) {
        let complete = self.inner.is_end_stream();
        self.end(complete);
    }
}

/// A response body through the body callbacks of the proxy-wasm filters serving the call,
/// or, when none does, the body as it is (no cost beyond a branch per frame).
pub enum Filtered<B> {
    /// No filter asked for the body.
    Plain(B),
    /// Each data frame passes through the filters; what they hold comes out later.
    Through {
        /// The body as the upstream sends it.
        inner: B,
        /// The filters' callbacks.
        pipe: Box<crate::plugin::BodyPipeline>,
        /// Trailers that came after the data, sent once the filters have had the end.
        trailers: Option<http::HeaderMap>,
        /// Whether the upstream's body is over.
        ended: bool,
        /// Data the filters passed already, sent before anything else.
        ready: Option<Bytes>,
        /// The response's `content-length`, if it kept one: what comes out must match it.
        declared: Option<u64>,
        /// Bytes passed on so far.
        sent: u64,
    },
}

/// A response's body `inner` through the pipeline `pipe` makes, if the response carries a body
/// and a filter asked for it (as Envoy calls no body callback on a response that says it has
/// none). The response keeps its `content-length`, as under Envoy: a filter that changes the
/// body's length removes it in its response headers callback. One that does not gets the body
/// cut off (an error, so the caller sees a reset) rather than sent with a false length.
pub fn filtered<B>(
    inner: B,
    status: http::StatusCode,
    headers: &mut http::HeaderMap,
    pipe: impl FnOnce() -> Option<crate::plugin::BodyPipeline>,
) -> Filtered<B> {
    if crate::plugin::response_without_body(status, headers) {
        return Filtered::Plain(inner);
    }
    match pipe() {
        None => Filtered::Plain(inner),
        Some(pipe) => Filtered::Through {
            inner,
            pipe: Box::new(pipe),
            trailers: None,
            ended: false,
            ready: None,
            declared: headers
                .get(http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse().ok()),
            sent: 0,
        },
    }
}

fn filter_failed() -> BoxError {
    "a proxy-wasm filter failed on the response body".into()
}

/// Counts `out` into `sent` and checks it against the `content-length` the response kept:
/// no more than it, and all of it by the `end`.
fn within_length(
    declared: Option<u64>,
    sent: &mut u64,
    out: usize,
    end: bool,
) -> Result<(), BoxError> {
    *sent += out as u64;
    match declared {
        Some(length) if *sent > length || (end && *sent < length) => {
            tracing::warn!(
                content_length = length,
                body = *sent,
                "a proxy-wasm filter changed a response body's length but left its content-length; the response is cut off"
            );
            Err("the filtered response body does not match its content-length".into())
        }
        _ => Ok(()),
    }
}

impl<B> Body for Filtered<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let (inner, pipe, trailers, ended, declared, sent) = match self.get_mut() {
            Filtered::Plain(b) => return Pin::new(b).poll_frame(cx),
            Filtered::Through {
                inner,
                pipe,
                trailers,
                ended,
                ready,
                declared,
                sent,
            } => {
                if let Some(data) = ready.take() {
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                (inner, pipe, trailers, ended, *declared, sent)
            }
        };
        loop {
            if *ended {
                return Poll::Ready(trailers.take().map(|t| Ok(Frame::trailers(t))));
            }
            let frame = match Pin::new(&mut *inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(e))),
                Poll::Ready(Some(Ok(frame))) => Some(frame),
                Poll::Ready(None) => None,
            };
            let out = match frame.map(Frame::into_data) {
                Some(Ok(data)) => pipe.push(data, false),
                Some(Err(frame)) => {
                    let Ok(mut t) = frame.into_trailers() else {
                        continue;
                    };
                    // The body ends before its trailers: the filters get both, in order.
                    *ended = true;
                    let out = pipe.whole(Bytes::new(), Some(&mut t));
                    *trailers = Some(t);
                    out
                }
                None => {
                    *ended = true;
                    pipe.push(Bytes::new(), true)
                }
            };
            let Ok(out) = out else {
                return Poll::Ready(Some(Err(filter_failed())));
            };
            if let Err(e) = within_length(declared, sent, out.len(), *ended) {
                *trailers = None;
                return Poll::Ready(Some(Err(e)));
            }
            if !out.is_empty() {
                return Poll::Ready(Some(Ok(Frame::data(out))));
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Filtered::Plain(b) => b.is_end_stream(),
            Filtered::Through {
                ended,
                trailers,
                ready,
                ..
            } => *ended && trailers.is_none() && ready.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Filtered::Plain(b) => b.size_hint(),
            Filtered::Through { .. } => SizeHint::default(),
        }
    }
}
