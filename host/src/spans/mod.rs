//! Traces: a sidecar records a client span for each call its app makes and a server span for
//! each call into its app, in W3C trace context, sampled, and exported over OTLP/HTTP
//! (protobuf) by the OpenTelemetry SDK's batch processor, whose queue is bounded: a dead or slow
//! collector costs dropped spans, never a slower call or a growing proxy.
//!
//! Sampling is decided once per trace, where it starts: a call arriving with a `traceparent`
//! follows its sampled flag; one without starts a trace, sampled at the configured percentage.
//! Either way the next hop gets this hop's span as its parent and the decision in its flags.

mod export;
pub mod traceparent;

use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer as _, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::time::{Duration, SystemTime};
use traceparent::TraceParent;

pub use export::ExportMetrics;

/// The W3C trace context header.
pub const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// Why tracing could not start.
#[derive(Debug, thiserror::Error)]
pub enum SpansError {
    /// The collector's URL is not one an exporter can send to.
    #[error("tracing endpoint {endpoint:?}: {reason}")]
    Endpoint {
        /// The URL.
        endpoint: String,
        /// Why.
        reason: String,
    },
}

/// A sidecar's span exporter: one per collector endpoint, kept across snapshots that name the
/// same one.
pub struct Exporter {
    endpoint: String,
    provider: SdkTracerProvider,
    tracer: SdkTracer,
}

impl std::fmt::Debug for Exporter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Exporter")
            .field("endpoint", &self.endpoint)
            .finish()
    }
}

/// Which side of a call a span is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The caller's sidecar.
    Client,
    /// The destination's sidecar.
    Server,
}

/// One finished span.
#[derive(Debug, Clone)]
pub struct Span {
    /// Its trace and parent.
    pub context: CallTrace,
    /// Client or server.
    pub side: Side,
    /// Its name (Envoy's: `<service host>:<port>/*`).
    pub name: String,
    /// When the call's head arrived.
    pub start: SystemTime,
    /// When its response ended.
    pub end: SystemTime,
    /// Istio's span attributes.
    pub attributes: Vec<KeyValue>,
}

impl Exporter {
    /// Starts exporting to `endpoint` (`http://host:port/v1/traces`) as `service`, each export
    /// bounded by `timeout`; the HTTP requests run on `runtime`.
    pub fn start(
        endpoint: &str,
        timeout: Duration,
        service: &str,
        runtime: tokio::runtime::Handle,
        metrics: ExportMetrics,
    ) -> Result<Exporter, SpansError> {
        let provider = export::provider(endpoint, timeout, service, runtime, metrics)?;
        let tracer = provider.tracer("weft");
        Ok(Exporter {
            endpoint: endpoint.to_string(),
            provider,
            tracer,
        })
    }

    /// The collector it sends to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Queues a finished span for export; a full queue drops it.
    pub fn record(&self, span: Span) {
        let c = span.context;
        let parent = match c.parent {
            Some(parent_id) => Context::new().with_remote_span_context(SpanContext::new(
                TraceId::from_bytes(c.trace_id),
                SpanId::from_bytes(parent_id),
                TraceFlags::SAMPLED,
                true,
                TraceState::default(),
            )),
            None => Context::new(),
        };
        let kind = match span.side {
            Side::Client => SpanKind::Client,
            Side::Server => SpanKind::Server,
        };
        let mut s = self
            .tracer
            .span_builder(span.name)
            .with_kind(kind)
            .with_trace_id(TraceId::from_bytes(c.trace_id))
            .with_span_id(SpanId::from_bytes(c.span_id))
            .with_start_time(span.start)
            .with_attributes(span.attributes)
            .start_with_context(&self.tracer, &parent);
        s.end_with_timestamp(span.end);
    }

    /// Exports what is queued and stops; blocks up to the export timeout.
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::debug!(endpoint = %self.endpoint, "span exporter shutdown: {e}");
        }
    }
}

/// A call's place in its trace, decided when its head arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallTrace {
    /// The trace.
    pub trace_id: [u8; 16],
    /// This hop's span.
    pub span_id: [u8; 8],
    /// The span the caller made the call in; none when this hop starts the trace.
    pub parent: Option<[u8; 8]>,
    /// Whether the trace is sampled.
    pub sampled: bool,
}

/// A 64-bit value as 8 bytes that are not all zero (W3C forbids a zero id).
fn nonzero(mut random: impl FnMut() -> u64) -> [u8; 8] {
    (random() | 1).to_be_bytes()
}

impl CallTrace {
    /// Decides a call's place in its trace from the `traceparent` it arrived with: its trace and
    /// sampling decision, or a new trace sampled with probability `percentage`/100.
    pub fn begin(
        arrived: Option<&http::HeaderValue>,
        percentage: f64,
        mut random: impl FnMut() -> u64,
    ) -> CallTrace {
        let span_id = nonzero(&mut random);
        match arrived.and_then(|v| TraceParent::parse(v.as_bytes())) {
            Some(tp) => CallTrace {
                trace_id: tp.trace_id,
                span_id,
                parent: Some(tp.parent_id),
                sampled: tp.sampled,
            },
            None => {
                let mut trace_id = [0u8; 16];
                trace_id[..8].copy_from_slice(&nonzero(&mut random));
                trace_id[8..].copy_from_slice(&random().to_be_bytes());
                // A draw in [0, 1) with 53 bits: uniform enough for any percentage written.
                let draw = (random() >> 11) as f64 / (1u64 << 53) as f64;
                CallTrace {
                    trace_id,
                    span_id,
                    parent: None,
                    sampled: draw * 100.0 < percentage,
                }
            }
        }
    }

    /// The `traceparent` the next hop gets: this hop's span as its parent.
    pub fn next_hop(&self) -> http::HeaderValue {
        TraceParent {
            trace_id: self.trace_id,
            parent_id: self.span_id,
            sampled: self.sampled,
        }
        .with_parent(self.span_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    fn counter() -> impl FnMut() -> u64 {
        let mut n = 0u64;
        move || {
            n = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
            n
        }
    }

    #[test]
    fn a_call_with_a_parent_joins_its_trace_and_keeps_its_decision() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
            ),
        );
        let t = CallTrace::begin(h.get(TRACEPARENT), 100.0, counter());
        assert!(!t.sampled, "an unsampled parent stays unsampled at 100%");
        assert_eq!(
            t.parent,
            Some([0x00, 0xf0, 0x67, 0xaa, 0x0b, 0xa9, 0x02, 0xb7])
        );
        let next = TraceParent::parse(t.next_hop().as_bytes()).expect("valid");
        assert_eq!(next.trace_id, t.trace_id);
        assert_eq!(next.parent_id, t.span_id);
        assert!(!next.sampled);
    }

    #[test]
    fn a_new_trace_is_sampled_at_the_percentage() {
        let mut random = counter();
        let n = 20_000;
        let sampled = (0..n)
            .filter(|_| CallTrace::begin(None, 10.0, &mut random).sampled)
            .count();
        // 10% of 20,000 draws: well within ±1.5 points for this generator.
        assert!((1_700..=2_300).contains(&sampled), "{sampled}");
        let all = CallTrace::begin(None, 100.0, counter());
        assert!(all.sampled && all.parent.is_none());
        let none = CallTrace::begin(None, 0.0, counter());
        assert!(!none.sampled);
    }
}
