//! Istio's connection-level metrics for TCP carried by the sidecar: connections opened and
//! closed, bytes each way, labelled as Istio's standard TCP metrics are (the subset of
//! labels the HTTP metrics carry here too).

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// The labels, in order.
const LABELS: [&str; 7] = [
    "reporter",
    "source_workload",
    "destination_service",
    "destination_version",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

/// The four counters, by label.
#[derive(Clone)]
pub struct TcpMetrics {
    opened: IntCounterVec,
    closed: IntCounterVec,
    sent: IntCounterVec,
    received: IntCounterVec,
}

/// One connection's counters, resolved once.
pub struct ConnectionCounters {
    /// Connections opened.
    pub opened: IntCounter,
    /// Connections closed.
    pub closed: IntCounter,
    /// Bytes sent back to the connection's client (Istio: "sent during a response").
    pub sent: IntCounter,
    /// Bytes received from the client (Istio: "received during a request").
    pub received: IntCounter,
}

/// What one connection is labelled with.
#[derive(Debug, Clone, Copy)]
pub struct Labels<'a> {
    /// `source` (the caller's sidecar) or `destination`.
    pub reporter: &'a str,
    /// The calling workload.
    pub source_workload: &'a str,
    /// The destination service's key, or `PassthroughCluster`.
    pub destination_service: &'a str,
    /// The destination endpoint's `version` label, or `unknown`.
    pub destination_version: &'a str,
    /// `-`, or Envoy's flag (`UF`: the upstream connection failed).
    pub response_flags: &'a str,
    /// `mutual_tls` or `none`.
    pub security: &'a str,
}

impl TcpMetrics {
    /// Registers the counters.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let vec = |name: &str, help: &str| -> prometheus::Result<IntCounterVec> {
            let v = IntCounterVec::new(Opts::new(name, help), &LABELS)?;
            registry.register(Box::new(v.clone()))?;
            Ok(v)
        };
        Ok(TcpMetrics {
            opened: vec(
                "istio_tcp_connections_opened_total",
                "TCP connections opened, as Istio counts them.",
            )?,
            closed: vec(
                "istio_tcp_connections_closed_total",
                "TCP connections closed, as Istio counts them.",
            )?,
            sent: vec(
                "istio_tcp_sent_bytes_total",
                "Bytes sent to the client of a TCP connection.",
            )?,
            received: vec(
                "istio_tcp_received_bytes_total",
                "Bytes received from the client of a TCP connection.",
            )?,
        })
    }

    /// The counters of a connection labelled `labels`.
    pub fn connection(&self, l: Labels<'_>) -> ConnectionCounters {
        let values = [
            l.reporter,
            l.source_workload,
            l.destination_service,
            l.destination_version,
            "tcp",
            l.response_flags,
            l.security,
        ];
        ConnectionCounters {
            opened: self.opened.with_label_values(&values),
            closed: self.closed.with_label_values(&values),
            sent: self.sent.with_label_values(&values),
            received: self.received.with_label_values(&values),
        }
    }
}
