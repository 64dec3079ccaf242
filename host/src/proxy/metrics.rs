//! The data plane's own metrics.

use parking_lot::RwLock;
use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry,
};
use std::sync::Arc;

/// Attempt outcomes, as the `outcome` label spells them.
pub const OUTCOMES: [&str; 7] = [
    "response",
    "5xx",
    "connect_failure",
    "reset",
    "refused_stream",
    "timeout",
    "no_endpoint",
];

/// One route's (or the inbound side's) metric handles, resolved once so a request hashes no
/// labels.
#[derive(Clone)]
pub struct RouteMetrics {
    direction: &'static str,
    service: String,
    requests: IntCounterVec,
    /// The counters of the codes seen so far: a route answers with few, so a scan beats a hash.
    codes: Arc<RwLock<Vec<(u16, IntCounter)>>>,
    /// Outbound request duration for this service.
    pub duration: Histogram,
    /// Attempts by outcome, indexed as [`OUTCOMES`].
    pub attempts: [IntCounter; 7],
}

impl RouteMetrics {
    /// Counts a request answered with `code` (0: no response was sent).
    pub fn request(&self, code: u16) {
        if let Some((_, c)) = self.codes.read().iter().find(|(k, _)| *k == code) {
            c.inc();
            return;
        }
        let c =
            self.requests
                .with_label_values(&[self.direction, &self.service, &code.to_string()]);
        c.inc();
        let mut codes = self.codes.write();
        if !codes.iter().any(|(k, _)| *k == code) {
            codes.push((code, c));
        }
    }
}

/// Requests, latency and connections, by direction (`inbound`/`outbound`).
#[derive(Clone)]
pub struct ProxyMetrics {
    /// Requests by direction, service and response code.
    pub requests: IntCounterVec,
    /// Request duration by direction and service.
    pub duration: HistogramVec,
    /// Open downstream connections by listener.
    pub connections: IntGaugeVec,
    /// Upstream attempts by service and outcome.
    pub attempts: IntCounterVec,
    /// Requests in flight.
    pub in_flight: IntGauge,
    /// Upstream connections opened, by pool.
    pub pool_opened: IntCounterVec,
    /// Upstream connections open now, by pool.
    pub pool_open: IntGaugeVec,
    /// Upstream connection attempts that failed, by pool.
    pub pool_failed: IntCounterVec,
    /// Inbound connections closed before serving for want of an acceptable TLS handshake.
    pub tls_refused: IntCounterVec,
    /// Inbound calls refused by an authorization policy.
    pub inbound_denied: IntCounter,
    /// Inbound calls by the caller's authenticated identity and the authorization decision.
    pub inbound_by_source: IntCounterVec,
    /// Downstream connections and streams ended by a bound, by listener and bound.
    pub timeouts: IntCounterVec,
    /// Mirrored copies, by destination service and outcome.
    pub mirrors: IntCounterVec,
    /// Requests and retries a circuit breaker refused, by service, subset and bound.
    pub overflow: IntCounterVec,
}

/// Which bound ended a downstream stream (connections: [`crate::conn::Timeout`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamTimeout {
    /// No piece of a body came for the stream idle timeout.
    StreamIdle,
    /// The whole request did not arrive within the request timeout.
    Request,
}

/// One listener's timeout counters, resolved once.
#[derive(Clone)]
pub struct DownstreamTimeouts {
    connection: [IntCounter; 3],
    stream: [IntCounter; 2],
}

impl DownstreamTimeouts {
    /// Counts a connection ended by a bound.
    pub fn count(&self, t: crate::conn::Timeout) {
        let i = match t {
            crate::conn::Timeout::RequestHeaders => 0,
            crate::conn::Timeout::Idle => 1,
            crate::conn::Timeout::MaxDuration => 2,
        };
        self.connection[i].inc();
    }

    /// Counts a stream ended by a bound.
    pub fn count_stream(&self, t: StreamTimeout) {
        self.stream[t as usize].inc();
    }
}

impl ProxyMetrics {
    /// The timeout counters of one listener.
    pub fn downstream_timeouts(&self, listener: &str) -> DownstreamTimeouts {
        let c = |t: &str| self.timeouts.with_label_values(&[listener, t]);
        DownstreamTimeouts {
            connection: [c("request_headers"), c("idle"), c("max_duration")],
            stream: [c("stream_idle"), c("request")],
        }
    }

    /// Connection counters of one upstream pool.
    pub fn pool(&self, pool: &str) -> super::pool::PoolStats {
        super::pool::PoolStats {
            opened: self.pool_opened.with_label_values(&[pool]),
            open: self.pool_open.with_label_values(&[pool]),
            failed: self.pool_failed.with_label_values(&[pool]),
        }
    }

    /// Handles for one route.
    pub fn for_route(&self, service: &str) -> RouteMetrics {
        self.handles("outbound", service)
    }

    /// Handles for one direction and service.
    pub fn handles(&self, direction: &'static str, service: &str) -> RouteMetrics {
        RouteMetrics {
            direction,
            service: service.to_string(),
            requests: self.requests.clone(),
            codes: Arc::default(),
            duration: self.duration.with_label_values(&[direction, service]),
            attempts: OUTCOMES.map(|o| self.attempts.with_label_values(&[service, o])),
        }
    }

    /// Registers them.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "weft_requests_total",
                "Requests handled, by direction, service and response code.",
            ),
            &["direction", "service", "code"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "weft_request_duration_seconds",
                "Time from request head to response end.",
            )
            .buckets(vec![
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0,
            ]),
            &["direction", "service"],
        )?;
        let connections = IntGaugeVec::new(
            Opts::new(
                "weft_active_connections",
                "Open downstream connections, by listener.",
            ),
            &["listener"],
        )?;
        let attempts = IntCounterVec::new(
            Opts::new(
                "weft_upstream_attempts_total",
                "Upstream attempts, by service and outcome.",
            ),
            &["service", "outcome"],
        )?;
        let in_flight = IntGauge::new("weft_requests_in_flight", "Requests being handled now.")?;
        let pool_opened = IntCounterVec::new(
            Opts::new(
                "weft_upstream_connections_opened_total",
                "Upstream connections opened, by pool (peers: other sidecars; app: the local app).",
            ),
            &["pool"],
        )?;
        let pool_open = IntGaugeVec::new(
            Opts::new(
                "weft_upstream_connections_open",
                "Upstream connections open now, by pool.",
            ),
            &["pool"],
        )?;
        let pool_failed = IntCounterVec::new(
            Opts::new(
                "weft_upstream_connect_failures_total",
                "Upstream connection attempts that failed, by pool.",
            ),
            &["pool"],
        )?;
        let tls_refused = IntCounterVec::new(
            Opts::new(
                "weft_inbound_tls_refused_total",
                "Inbound connections refused under mTLS, by reason (plaintext: not TLS under STRICT; handshake: TLS failed, e.g. an untrusted or missing certificate; timeout).",
            ),
            &["reason"],
        )?;
        let inbound_denied = IntCounter::new(
            "weft_inbound_denied_total",
            "Inbound calls refused with 403 by an authorization policy.",
        )?;
        let inbound_by_source = IntCounterVec::new(
            Opts::new(
                "weft_inbound_requests_by_source_total",
                "Inbound calls by the caller's mTLS identity (Istio principal; unknown without one) and decision (allowed, denied).",
            ),
            &["source_principal", "decision"],
        )?;
        let timeouts = IntCounterVec::new(
            Opts::new(
                "weft_downstream_timeouts_total",
                "Downstream connections and streams ended by a bound, by listener and timeout (request_headers, idle, max_duration: the connection; stream_idle, request: one call).",
            ),
            &["listener", "timeout"],
        )?;
        let mirrors = IntCounterVec::new(
            Opts::new(
                "weft_mirror_requests_total",
                "Copies of calls sent to a mirror destination (fire-and-forget), by service and outcome (answered, failed, timeout, skipped: no endpoint or a body too large to keep).",
            ),
            &["service", "outcome"],
        )?;
        let overflow = IntCounterVec::new(
            Opts::new(
                "weft_upstream_overflow_total",
                "Requests and retries a circuit breaker (a DestinationRule's connectionPool) refused, by service, subset (empty: none) and limit (requests: http2MaxRequests, pending: http1MaxPendingRequests, retries: maxRetries). A refused request is answered 503 with the UO flag; a refused retry returns the attempt's own answer.",
            ),
            &["service", "subset", "limit"],
        )?;
        registry.register(Box::new(overflow.clone()))?;
        registry.register(Box::new(mirrors.clone()))?;
        registry.register(Box::new(timeouts.clone()))?;
        registry.register(Box::new(inbound_by_source.clone()))?;
        registry.register(Box::new(inbound_denied.clone()))?;
        registry.register(Box::new(tls_refused.clone()))?;
        registry.register(Box::new(pool_opened.clone()))?;
        registry.register(Box::new(pool_open.clone()))?;
        registry.register(Box::new(pool_failed.clone()))?;
        registry.register(Box::new(requests.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(connections.clone()))?;
        registry.register(Box::new(attempts.clone()))?;
        registry.register(Box::new(in_flight.clone()))?;
        Ok(ProxyMetrics {
            requests,
            duration,
            connections,
            attempts,
            in_flight,
            pool_opened,
            pool_open,
            pool_failed,
            tls_refused,
            inbound_denied,
            inbound_by_source,
            timeouts,
            mirrors,
            overflow,
        })
    }
}
