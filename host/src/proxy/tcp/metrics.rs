//! Istio's connection-level metrics for TCP carried by the sidecar: connections opened and
//! closed, bytes each way, labelled as Istio's standard TCP metrics are (the subset of
//! labels the HTTP metrics carry here too).

use prometheus::{IntCounter, IntCounterVec, Opts, Registry};

/// The labels, in order: Istio's standard TCP labels (its HTTP ones without the request's).
const LABELS: [&str; 19] = [
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_flags",
    "connection_security_policy",
];

/// Istio's default cluster id, both ends' `*_cluster`.
const CLUSTER: &str = "Kubernetes";

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
    /// The calling workload (its name form, see `proxy::workload`), empty when unknown.
    pub source: &'a str,
    /// The caller's SPIFFE ID, empty when unknown.
    pub source_principal: &'a str,
    /// The workload that took the connection, empty when unknown.
    pub destination: &'a str,
    /// Its SPIFFE ID, empty when unknown.
    pub destination_principal: &'a str,
    /// The destination service's key, or `PassthroughCluster`.
    pub destination_service: &'a str,
    /// `-`, or Envoy's flag (`UF`: the upstream connection failed).
    pub response_flags: &'a str,
    /// `mutual_tls`, `none`, or (the source reporter) `unknown`.
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

    /// The counters of a connection labelled `labels`; a metric in `off` (a Telemetry turned
    /// it off for this side) counts nowhere.
    pub fn connection(&self, l: Labels<'_>, off: &[String]) -> ConnectionCounters {
        let src = weft_sdk::Workload::parse(l.source);
        let dst = weft_sdk::Workload::parse(l.destination);
        let known = |v: &'_ str| {
            if v.is_empty() {
                "unknown".to_string()
            } else {
                v.to_string()
            }
        };
        let (host, name, namespace) = if l.destination_service == super::PASSTHROUGH {
            (
                l.destination_service.to_string(),
                l.destination_service.to_string(),
                "unknown".to_string(),
            )
        } else {
            let (name, ns) = crate::names::key_parts(l.destination_service);
            (
                crate::names::fqdn(l.destination_service),
                name.to_string(),
                ns.to_string(),
            )
        };
        let values = [
            l.reporter.to_string(),
            known(&src.name),
            known(&src.namespace),
            known(l.source_principal),
            known(&src.app),
            known(&src.version),
            CLUSTER.to_string(),
            known(&dst.name),
            known(&dst.namespace),
            known(l.destination_principal),
            known(&dst.app),
            known(&dst.version),
            host,
            name,
            namespace,
            CLUSTER.to_string(),
            "tcp".to_string(),
            l.response_flags.to_string(),
            l.security.to_string(),
        ];
        let refs: Vec<&str> = values.iter().map(String::as_str).collect();
        let counter = |vec: &IntCounterVec, name: &str| {
            if off.iter().any(|m| m == name) {
                // Counted, but registered nowhere: never exported.
                IntCounter::new(name, "off").unwrap_or_else(|_| vec.with_label_values(&refs))
            } else {
                vec.with_label_values(&refs)
            }
        };
        ConnectionCounters {
            opened: counter(&self.opened, "istio_tcp_connections_opened_total"),
            closed: counter(&self.closed, "istio_tcp_connections_closed_total"),
            sent: counter(&self.sent, "istio_tcp_sent_bytes_total"),
            received: counter(&self.received, "istio_tcp_received_bytes_total"),
        }
    }
}
