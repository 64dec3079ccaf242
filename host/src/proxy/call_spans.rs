//! The data plane's side of tracing: each side's sampling and exporter, resolved once per
//! snapshot; a call's place in its trace decided as its head arrives (the next hop's
//! `traceparent` rewritten); its span, with Istio's attributes, handed to the exporter when the
//! call is over. A call that is not sampled, or a side that reports nothing, costs one branch
//! and the header rewrite.

use crate::spans::{CallTrace, Exporter, Side, Span, TRACEPARENT};
use http::HeaderMap;
use http::header::USER_AGENT;
use opentelemetry::KeyValue;
use std::sync::Arc;
use std::time::SystemTime;

/// One side's tracing in force.
pub struct SideTracing {
    /// Percentage of new traces sampled.
    pub sampling: f64,
    /// Where spans go; none when span reporting is off.
    pub exporter: Option<Arc<Exporter>>,
}

/// Both sides'.
#[derive(Default)]
pub struct Tracing {
    /// Calls the workload makes.
    pub client: Option<SideTracing>,
    /// Calls into the workload.
    pub server: Option<SideTracing>,
}

/// A sampled call's span, waiting for the call to end.
pub struct Pending {
    context: CallTrace,
    exporter: Arc<Exporter>,
    side: Side,
    name: String,
    start: SystemTime,
    attributes: Vec<KeyValue>,
}

/// What the request head says that a span carries.
pub struct Head<'a> {
    /// The `traceparent` the call arrived with.
    pub arrived: Option<&'a http::HeaderValue>,
    /// The request's headers (the `traceparent` is rewritten for the next hop).
    pub headers: &'a mut HeaderMap,
    /// Method.
    pub method: &'a http::Method,
    /// The authority the caller named.
    pub authority: &'a str,
    /// Path and query.
    pub path: &'a str,
    /// `HTTP/1.1` or `HTTP/2`.
    pub protocol: &'static str,
    /// The caller's address.
    pub peer: std::net::IpAddr,
}

/// Decides the call's place in its trace and rewrites `traceparent` for the next hop; a
/// sampled call on a side that reports gets its pending span, named `name`, with Istio's
/// request attributes and `upstream_cluster`.
pub fn begin(
    side: Side,
    tracing: &SideTracing,
    head: Head<'_>,
    name: impl FnOnce() -> String,
    upstream_cluster: impl FnOnce() -> String,
    random: impl FnMut() -> u64,
) -> Option<Box<Pending>> {
    let context = CallTrace::begin(head.arrived, tracing.sampling, random);
    head.headers.insert(TRACEPARENT, context.next_hop());
    let exporter = tracing.exporter.as_ref().filter(|_| context.sampled)?;
    let header = |n: &str| {
        head.headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_string()
    };
    let cluster = upstream_cluster();
    let attributes = vec![
        KeyValue::new("component", "proxy"),
        KeyValue::new("http.method", head.method.as_str().to_string()),
        KeyValue::new(
            "http.url",
            format!("http://{}{}", head.authority, head.path),
        ),
        KeyValue::new("http.protocol", head.protocol),
        KeyValue::new("guid:x-request-id", header("x-request-id")),
        KeyValue::new("user_agent", header(USER_AGENT.as_str())),
        KeyValue::new("peer.address", head.peer.to_string()),
        KeyValue::new("upstream_cluster", cluster.clone()),
        KeyValue::new("upstream_cluster.name", cluster),
    ];
    Some(Box::new(Pending {
        context,
        exporter: exporter.clone(),
        side,
        name: name(),
        start: SystemTime::now(),
        attributes,
    }))
}

/// How a call ended, for its span.
pub struct End<'a> {
    /// The status sent to the caller (0: none).
    pub status: u16,
    /// Envoy's response flags (`-` for none).
    pub flags: &'a str,
    /// Request body bytes.
    pub request_bytes: u64,
    /// Response body bytes.
    pub response_bytes: u64,
    /// The workload's canonical service and namespace (Istio's `istio.canonical_service`,
    /// `istio.namespace`).
    pub workload: (&'a str, &'a str),
}

impl Pending {
    /// Hands the finished span to the exporter.
    pub fn finish(self, end: End<'_>) {
        let Pending {
            context,
            exporter,
            side,
            name,
            start,
            mut attributes,
        } = *Box::new(self);
        attributes.extend([
            KeyValue::new("http.status_code", i64::from(end.status)),
            KeyValue::new("response_flags", end.flags.to_string()),
            KeyValue::new("request_size", end.request_bytes as i64),
            KeyValue::new("response_size", end.response_bytes as i64),
            KeyValue::new("istio.canonical_service", end.workload.0.to_string()),
            KeyValue::new("istio.namespace", end.workload.1.to_string()),
        ]);
        exporter.record(Span {
            context,
            side,
            name,
            start,
            end: SystemTime::now(),
            attributes,
        });
    }
}
