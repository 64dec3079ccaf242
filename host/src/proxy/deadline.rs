//! Bounds on bodies in flight, as Envoy's stream idle and request timeouts: a body that sends
//! nothing for the stream idle timeout, or a request not received whole by its deadline, ends
//! with a [`TimedOut`] error instead of holding its stream (and its buffers) forever.
//!
//! A body that is already over (a GET) is never wrapped; a wrapped body starts a timer only
//! when it first has to wait, so a body that flows costs a clock read per frame.

use super::body::BoxError;
use super::metrics::{DownstreamTimeouts, StreamTimeout};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::time::{Instant, Sleep};

/// A body ended by a bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{}", match .0 {
    StreamTimeout::StreamIdle => "stream idle timeout: no data within the bound",
    StreamTimeout::Request => "request timeout: the request did not arrive whole in time",
})]
pub struct TimedOut(pub StreamTimeout);

/// Which bound, if any, ended a body: shared with the handler that sent it on, which answers
/// 408 for a request that timed out before its response began.
#[derive(Debug, Default)]
pub struct Tripped(AtomicU8);

impl Tripped {
    /// The bound that ended the body, if one did.
    pub fn get(&self) -> Option<StreamTimeout> {
        match self.0.load(Ordering::Relaxed) {
            1 => Some(StreamTimeout::StreamIdle),
            2 => Some(StreamTimeout::Request),
            _ => None,
        }
    }

    fn set(&self, t: StreamTimeout) {
        let v = match t {
            StreamTimeout::StreamIdle => 1,
            StreamTimeout::Request => 2,
        };
        self.0.store(v, Ordering::Relaxed);
    }
}

/// `inner`, ended by [`TimedOut`] when it stalls for `idle` or passes `deadline`.
pub struct Bounded<B> {
    inner: B,
    idle: Duration,
    deadline: Option<Instant>,
    last_frame: Instant,
    timer: Option<Pin<Box<Sleep>>>,
    counters: Arc<DownstreamTimeouts>,
    tripped: Option<Arc<Tripped>>,
    done: bool,
}

impl<B> Bounded<B> {
    /// Bounds `inner`: `idle` between frames, all of it by `deadline`; a timeout is counted in
    /// `counters` and noted in `tripped`.
    pub fn new(
        inner: B,
        idle: Duration,
        deadline: Option<Instant>,
        counters: Arc<DownstreamTimeouts>,
        tripped: Option<Arc<Tripped>>,
    ) -> Self {
        Bounded {
            inner,
            idle,
            deadline,
            last_frame: Instant::now(),
            timer: None,
            counters,
            tripped,
            done: false,
        }
    }
}

impl<B> Body for Bounded<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.last_frame = Instant::now();
                return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
            }
            Poll::Pending => {}
        }
        let idle_due = self.last_frame + self.idle;
        let (due, bound) = match self.deadline {
            Some(d) if d <= idle_due => (d, StreamTimeout::Request),
            _ => (idle_due, StreamTimeout::StreamIdle),
        };
        let timer = match &mut self.timer {
            Some(t) => {
                if t.deadline() != due {
                    t.as_mut().reset(due);
                }
                t
            }
            None => self.timer.insert(Box::pin(tokio::time::sleep_until(due))),
        };
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.done = true;
        self.counters.count_stream(bound);
        if let Some(t) = &self.tripped {
            t.set(bound);
        }
        Poll::Ready(Some(Err(Box::new(TimedOut(bound)))))
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn counters() -> Arc<DownstreamTimeouts> {
        let registry = prometheus::Registry::new();
        let m = super::super::metrics::ProxyMetrics::register(&registry).expect("metrics");
        Arc::new(m.downstream_timeouts("test"))
    }

    /// A body receiving its frames from a channel.
    struct Channel(tokio::sync::mpsc::Receiver<Bytes>);

    impl Body for Channel {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            self.0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
        }
    }

    /// A body sending one byte every `every`, `n` times, then waiting forever.
    fn trickle(every: Duration, n: usize) -> Channel {
        let (tx, rx) = tokio::sync::mpsc::channel(1);
        tokio::spawn(async move {
            for _ in 0..n {
                tokio::time::sleep(every).await;
                if tx.send(Bytes::from_static(b"x")).await.is_err() {
                    return;
                }
            }
            tx.closed().await;
        });
        Channel(rx)
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_body_ends_at_the_idle_bound_and_a_flowing_one_does_not() {
        let tripped = Arc::new(Tripped::default());
        let body = Bounded::new(
            trickle(Duration::from_secs(3), 2),
            Duration::from_secs(5),
            None,
            counters(),
            Some(tripped.clone()),
        );
        // Two bytes 3 s apart, then silence: the stall ends it 5 s after the last byte.
        let start = Instant::now();
        let err = body.collect().await.expect_err("timed out");
        assert_eq!(
            err.downcast_ref::<TimedOut>(),
            Some(&TimedOut(StreamTimeout::StreamIdle))
        );
        assert_eq!(start.elapsed(), Duration::from_secs(11));
        assert_eq!(tripped.get(), Some(StreamTimeout::StreamIdle));
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickle_is_ended_by_the_request_deadline() {
        let tripped = Arc::new(Tripped::default());
        let start = Instant::now();
        let body = Bounded::new(
            trickle(Duration::from_secs(3), 1_000),
            Duration::from_secs(300),
            Some(start + Duration::from_secs(10)),
            counters(),
            Some(tripped.clone()),
        );
        let err = body.collect().await.expect_err("timed out");
        assert_eq!(
            err.downcast_ref::<TimedOut>(),
            Some(&TimedOut(StreamTimeout::Request))
        );
        assert_eq!(start.elapsed(), Duration::from_secs(10));
        assert_eq!(tripped.get(), Some(StreamTimeout::Request));
    }
}
