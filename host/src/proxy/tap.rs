//! Live calls for `weft tap`, as `linkerd viz tap` shows them: while anyone watches a
//! sidecar's admin `/tap`, each call it handles is published when it is over (the access-log
//! entry plus which side, service, subset and attempts); with nobody watching, nothing is
//! captured. A watcher that falls behind loses events, never slows a call.

use super::body::{BoxError, ProxyBody};
use crate::access_log::Entry;
use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// Events a slow watcher may fall behind by before it loses some.
const BACKLOG: usize = 1024;

/// One call, as a watcher sees it.
#[derive(Debug, Clone)]
pub struct Event {
    /// `outbound` (a call this workload made) or `inbound` (one it took).
    pub direction: &'static str,
    /// The calling workload's service.
    pub source: String,
    /// The called service.
    pub destination: String,
    /// The subset the call was sent to, when one was picked.
    pub subset: Option<String>,
    /// Attempts made (retries + 1); 1 inbound.
    pub attempts: u32,
    /// What its access-log line would say.
    pub entry: Entry,
}

impl Event {
    fn json(&self) -> String {
        let mut v = self.entry.to_json();
        if let Some(o) = v.as_object_mut() {
            o.insert("direction".into(), self.direction.into());
            o.insert("source".into(), self.source.clone().into());
            o.insert("destination".into(), self.destination.clone().into());
            o.insert("subset".into(), self.subset.clone().into());
            o.insert("attempts".into(), self.attempts.into());
        }
        v.to_string()
    }
}

/// The sidecar's publisher.
pub struct Tap {
    sender: broadcast::Sender<Arc<Event>>,
}

impl Default for Tap {
    fn default() -> Self {
        Tap {
            sender: broadcast::channel(BACKLOG).0,
        }
    }
}

impl Tap {
    /// Whether anyone watches: one atomic read, so an unwatched call pays nothing more.
    pub fn active(&self) -> bool {
        self.sender.receiver_count() > 0
    }

    /// Publishes a call to whoever watches.
    pub fn publish(&self, event: Event) {
        let _ = self.sender.send(Arc::new(event));
    }
}

/// What a watcher asked for: `service` (the destination of an outbound call, or this
/// workload for an inbound one), a `path` prefix, errors only (status ≥ 500 or none), at most
/// `max` events, for at most `seconds`.
#[derive(Debug, Clone, PartialEq)]
pub struct Watch {
    service: Option<String>,
    path: Option<String>,
    errors: bool,
    max: usize,
    seconds: u64,
}

impl Watch {
    /// Reads the query string; unknown keys are refused.
    pub fn parse(query: Option<&str>) -> Result<Watch, String> {
        let mut w = Watch {
            service: None,
            path: None,
            errors: false,
            max: 100,
            seconds: 30,
        };
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "service" => w.service = Some(v.to_string()),
                "path" => w.path = Some(v.to_string()),
                "errors" => w.errors = v != "0" && v != "false",
                "max" => {
                    w.max = v
                        .parse::<usize>()
                        .ok()
                        .filter(|n| (1..=10_000).contains(n))
                        .ok_or("max: 1 to 10000")?
                }
                "seconds" => {
                    w.seconds = v
                        .parse::<u64>()
                        .ok()
                        .filter(|n| (1..=3600).contains(n))
                        .ok_or("seconds: 1 to 3600")?
                }
                other => return Err(format!("unknown parameter {other:?}")),
            }
        }
        Ok(w)
    }

    fn admits(&self, e: &Event) -> bool {
        self.service.as_ref().is_none_or(|s| *s == e.destination)
            && self
                .path
                .as_ref()
                .is_none_or(|p| e.entry.path.starts_with(p.as_str()))
            && (!self.errors || e.entry.response_code == 0 || e.entry.response_code >= 500)
    }
}

/// The `/tap` answer: one JSON line per matching call, streamed until `max` calls or
/// `seconds` have passed, or the watcher hangs up.
pub fn stream(tap: &Tap, watch: Watch) -> Response<ProxyBody> {
    let mut events = tap.sender.subscribe();
    let (tx, rx) = mpsc::channel::<Bytes>(64);
    tokio::spawn(async move {
        let mut sent = 0;
        let deadline = tokio::time::sleep(Duration::from_secs(watch.seconds));
        tokio::pin!(deadline);
        while sent < watch.max {
            let event = tokio::select! {
                e = events.recv() => e,
                () = &mut deadline => return,
                () = tx.closed() => return,
            };
            match event {
                Ok(e) if watch.admits(&e) => {
                    let mut line = e.json();
                    line.push('\n');
                    if tx.send(Bytes::from(line)).await.is_err() {
                        return;
                    }
                    sent += 1;
                }
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => return,
            }
        }
    });
    let mut r = Response::new(Lines(rx).boxed_unsync());
    *r.status_mut() = StatusCode::OK;
    r.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

/// A body of lines as they come.
struct Lines(mpsc::Receiver<Bytes>);

impl Body for Lines {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.0
            .poll_recv(cx)
            .map(|line| line.map(|b| Ok(Frame::data(b))))
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watches_read_their_query() {
        let w = Watch::parse(Some("service=payments&path=/charge&errors=1&max=5")).expect("ok");
        assert_eq!(w.service.as_deref(), Some("payments"));
        assert_eq!(w.path.as_deref(), Some("/charge"));
        assert!(w.errors);
        assert_eq!((w.max, w.seconds), (5, 30));
        assert!(Watch::parse(Some("max=0")).is_err());
        assert!(Watch::parse(Some("colour=red")).is_err());
        let e = Event {
            direction: "outbound",
            source: "orders".into(),
            destination: "payments".into(),
            subset: None,
            attempts: 1,
            entry: Entry {
                path: "/charge".into(),
                response_code: 503,
                ..Entry::default()
            },
        };
        assert!(w.admits(&e));
        let ok = Event {
            entry: Entry {
                response_code: 200,
                ..e.entry.clone()
            },
            ..e.clone()
        };
        assert!(!w.admits(&ok), "errors only");
        let other = Event {
            destination: "ratings".into(),
            ..e
        };
        assert!(!w.admits(&other));
    }
}
