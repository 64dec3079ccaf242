//! A request body sent upstream as it arrives, with a copy kept (up to the replay bound) so a
//! retry can send it again — as Envoy's router buffers a request for its retries. Nothing
//! waits for the body's end: a streaming call (a gRPC client or bidirectional stream) that
//! waits for an answer before it sends more gets one.

use super::body::{BoxError, Downstream};
use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame};
use parking_lot::Mutex;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};

/// The caller's body, shared by the attempts that send it.
pub struct Tee<B = Downstream> {
    shared: Arc<Mutex<Shared<B>>>,
}

struct Shared<B> {
    source: B,
    /// What has been read so far, while it fits the bound.
    kept: Vec<u8>,
    limit: usize,
    /// The copy outgrew the bound (or the caller's body failed): no attempt may follow.
    lost: bool,
    /// The caller's body is over (its trailers, if any, in `trailers`).
    ended: bool,
    trailers: Option<HeaderMap>,
    /// The attempt whose body reads now: an earlier attempt's reads no more.
    generation: u64,
    /// Where the bytes read from the caller are counted, once each.
    counter: Arc<AtomicU64>,
}

impl<B> Tee<B> {
    /// `source`, to be sent by up to as many attempts as its copy (at most `limit` bytes)
    /// allows.
    pub fn new(source: B, limit: usize, counter: Arc<AtomicU64>) -> Self {
        Tee {
            shared: Arc::new(Mutex::new(Shared {
                source,
                kept: Vec::new(),
                limit,
                lost: false,
                ended: false,
                trailers: None,
                generation: 0,
                counter,
            })),
        }
    }

    /// The body for the next attempt: what was read so far, then the rest as it arrives.
    /// None once the copy is lost (the body outgrew the bound, or failed).
    pub fn attempt(&self) -> Option<TeeBody<B>> {
        let mut s = self.shared.lock();
        if s.generation > 0 && s.lost {
            return None;
        }
        s.generation += 1;
        Some(TeeBody {
            shared: self.shared.clone(),
            generation: s.generation,
            next: 0,
            trailers_sent: false,
        })
    }

    /// Whether another attempt can send the body whole.
    pub fn replayable(&self) -> bool {
        !self.shared.lock().lost
    }
}

/// One attempt's view of a [`Tee`].
pub struct TeeBody<B = Downstream> {
    shared: Arc<Mutex<Shared<B>>>,
    generation: u64,
    /// The offset in the copy this attempt has sent up to.
    next: usize,
    trailers_sent: bool,
}

impl<B> Body for TeeBody<B>
where
    B: Body<Data = Bytes, Error = BoxError> + Unpin,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let mut s = this.shared.lock();
        if s.generation != this.generation {
            return Poll::Ready(Some(Err("a later attempt took the request body".into())));
        }
        // A retry first sends what earlier attempts read.
        if this.next < s.kept.len() {
            let replay = Bytes::copy_from_slice(&s.kept[this.next..]);
            this.next = s.kept.len();
            return Poll::Ready(Some(Ok(Frame::data(replay))));
        }
        if s.ended {
            if this.trailers_sent {
                return Poll::Ready(None);
            }
            this.trailers_sent = true;
            return Poll::Ready(s.trailers.clone().map(|t| Ok(Frame::trailers(t))));
        }
        let polled = Pin::new(&mut s.source).poll_frame(cx);
        match polled {
            Poll::Pending => Poll::Pending,
            Poll::Ready(None) => {
                s.ended = true;
                this.trailers_sent = true;
                Poll::Ready(None)
            }
            Poll::Ready(Some(Err(e))) => {
                s.lost = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(Some(Ok(frame))) => match frame.into_data() {
                Ok(data) => {
                    s.counter.fetch_add(data.len() as u64, Ordering::Relaxed);
                    if !s.lost {
                        if s.kept.len() + data.len() > s.limit {
                            // Past the bound: this attempt is the body's last.
                            s.lost = true;
                            s.kept = Vec::new();
                        } else {
                            s.kept.extend_from_slice(&data);
                        }
                    }
                    this.next = s.kept.len();
                    Poll::Ready(Some(Ok(Frame::data(data))))
                }
                Err(frame) => {
                    let trailers = frame.into_trailers().ok();
                    s.ended = true;
                    s.trailers.clone_from(&trailers);
                    this.trailers_sent = true;
                    Poll::Ready(trailers.map(|t| Ok(Frame::trailers(t))))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.shared.lock();
        s.generation == self.generation
            && s.ended
            && self.next >= s.kept.len()
            && (self.trailers_sent || s.trailers.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use std::collections::VecDeque;

    /// A caller's body: these frames, then its end.
    struct Frames(VecDeque<Result<Frame<Bytes>, BoxError>>);

    impl Body for Frames {
        type Data = Bytes;
        type Error = BoxError;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            Poll::Ready(self.0.pop_front())
        }
    }

    fn caller(chunks: &[&'static str], trailer: Option<&'static str>) -> Frames {
        let mut frames: VecDeque<_> = chunks
            .iter()
            .map(|c| Ok(Frame::data(Bytes::from_static(c.as_bytes()))))
            .collect();
        if let Some(v) = trailer {
            let mut t = HeaderMap::new();
            t.insert("x-sum", http::HeaderValue::from_static(v));
            frames.push_back(Ok(Frame::trailers(t)));
        }
        Frames(frames)
    }

    async fn sent(body: TeeBody<Frames>) -> (Vec<u8>, Option<HeaderMap>) {
        let collected = body.collect().await.expect("the body reads");
        let trailers = collected.trailers().cloned();
        (collected.to_bytes().to_vec(), trailers)
    }

    #[tokio::test]
    async fn a_retry_sends_the_body_and_its_trailers_again_and_counts_them_once() {
        let counter = Arc::new(AtomicU64::new(0));
        let tee = Tee::new(caller(&["ab", "cd"], Some("9")), 16, counter.clone());
        for _ in 0..3 {
            let (bytes, trailers) = sent(tee.attempt().expect("replayable")).await;
            assert_eq!(bytes, b"abcd");
            assert_eq!(trailers.expect("trailers")["x-sum"], "9");
        }
        assert!(tee.replayable());
        assert_eq!(counter.load(Ordering::Relaxed), 4);
    }

    #[tokio::test]
    async fn a_retry_mid_stream_sends_what_was_read_then_the_rest() {
        let tee = Tee::new(caller(&["ab", "cd", "ef"], None), 16, Arc::default());
        let mut first = tee.attempt().expect("first");
        let frame = first.frame().await.expect("a frame").expect("data");
        assert_eq!(frame.into_data().expect("data"), "ab");
        let second = tee.attempt().expect("still within the bound");
        // The first attempt is over: its body reads no more.
        assert!(first.frame().await.expect("a frame").is_err());
        assert_eq!(sent(second).await.0, b"abcdef");
    }

    #[tokio::test]
    async fn a_body_past_the_bound_goes_once() {
        let tee = Tee::new(caller(&["abcd", "efgh"], None), 6, Arc::default());
        assert_eq!(sent(tee.attempt().expect("first")).await.0, b"abcdefgh");
        assert!(!tee.replayable());
        assert!(tee.attempt().is_none());
    }

    #[tokio::test]
    async fn a_failed_body_is_not_sent_again() {
        let mut frames = caller(&["ab"], None);
        frames.0.push_back(Err("the caller went away".into()));
        let tee = Tee::new(frames, 16, Arc::default());
        assert!(tee.attempt().expect("first").collect().await.is_err());
        assert!(tee.attempt().is_none());
    }
}
