//! Telemetry (`telemetry.istio.io`): access logging as Istio's Telemetry API sets it — which
//! workloads log, on which side of their calls (`match.mode`), through which providers, and
//! filtered by which expression — and tracing (provider, sampling percentage, span reporting,
//! per side) and metrics (which standard metrics each side reports: `overrides[].disabled`
//! by metric and mode; tag overrides are refused until Weft has them). Levels are Istio's: a Telemetry in the root namespace without a selector is
//! mesh-wide, one in a namespace without a selector covers the namespace, one with
//! `selector.matchLabels` its workloads; the most specific one that configures access logging
//! is the one in force.

use super::*;

/// A Telemetry's spec.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Telemetry {
    /// The workloads it applies to, by labels; none: its whole namespace (or mesh).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// Access logging, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<AccessLogging>,
    /// Tracing, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<Tracing>,
    /// Metrics, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metrics>,
}

/// Istio's `Metrics`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Metrics {
    /// The providers (`prometheus`, the only one Weft's sidecars serve); none: the default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// Changes to the standard metrics, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<MetricsOverrides>,
}

/// Istio's `MetricsOverrides`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsOverrides {
    /// Which metrics, on which side; none: every metric on both sides.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<MetricSelector>,
    /// Turns the metrics off (true) or back on (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
}

/// Istio's `MetricSelector`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricSelector {
    /// One of Istio's standard metrics, or `ALL_METRICS` (the default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<IstioMetric>,
    /// The side; none is `CLIENT_AND_SERVER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<WorkloadMode>,
}

/// Istio's `MetricSelector.IstioMetric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum IstioMetric {
    /// Every standard metric.
    AllMetrics,
    /// `istio_requests_total`.
    RequestCount,
    /// `istio_request_duration_milliseconds`.
    RequestDuration,
    /// `istio_request_bytes`.
    RequestSize,
    /// `istio_response_bytes`.
    ResponseSize,
    /// `istio_tcp_connections_opened_total`.
    TcpOpenedConnections,
    /// `istio_tcp_connections_closed_total`.
    TcpClosedConnections,
    /// `istio_tcp_sent_bytes_total`.
    TcpSentBytes,
    /// `istio_tcp_received_bytes_total`.
    TcpReceivedBytes,
    /// gRPC messages; Weft reports none yet, so there is nothing to turn off.
    GrpcRequestMessages,
    /// gRPC messages; as `GRPC_REQUEST_MESSAGES`.
    GrpcResponseMessages,
}

impl IstioMetric {
    /// The metrics Weft reports that it names.
    pub fn names(self) -> &'static [&'static str] {
        match self {
            IstioMetric::AllMetrics => &crate::snapshot::STANDARD_METRICS,
            IstioMetric::RequestCount => &["istio_requests_total"],
            IstioMetric::RequestDuration => &["istio_request_duration_milliseconds"],
            IstioMetric::RequestSize => &["istio_request_bytes"],
            IstioMetric::ResponseSize => &["istio_response_bytes"],
            IstioMetric::TcpOpenedConnections => &["istio_tcp_connections_opened_total"],
            IstioMetric::TcpClosedConnections => &["istio_tcp_connections_closed_total"],
            IstioMetric::TcpSentBytes => &["istio_tcp_sent_bytes_total"],
            IstioMetric::TcpReceivedBytes => &["istio_tcp_received_bytes_total"],
            IstioMetric::GrpcRequestMessages | IstioMetric::GrpcResponseMessages => &[],
        }
    }
}

/// Istio's `Tracing`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tracing {
    /// Which side of a workload's calls: none is `CLIENT_AND_SERVER`.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<LogMatch>,
    /// The provider (at most one, as in Istio), by its name in the mesh configuration; none:
    /// inherited, or the mesh's default tracing provider.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// The percentage of new traces sampled (0–100); none: inherited, or 1%.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub random_sampling_percentage: Option<f64>,
    /// Keeps propagating trace context but reports no spans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disable_span_reporting: Option<bool>,
}

/// Istio's `AccessLogging`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogging {
    /// Which side of a workload's calls: none is `CLIENT_AND_SERVER`.
    #[serde(default, rename = "match", skip_serializing_if = "Option::is_none")]
    pub matches: Option<LogMatch>,
    /// The providers that write the lines; none: the mesh's default providers, of which
    /// Weft's mesh configuration (as Istio's default one) has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// Turns logging off for these providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    /// Which calls are logged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filter: Option<LogFilter>,
}

/// Istio's `AccessLogging.LogSelector`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogMatch {
    /// The side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<WorkloadMode>,
}

/// Istio's `WorkloadMode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WorkloadMode {
    /// Both sides.
    #[serde(rename = "CLIENT_AND_SERVER")]
    ClientAndServer,
    /// The calls the workload makes (its sidecar's outbound side).
    #[serde(rename = "CLIENT")]
    Client,
    /// The calls the workload takes (its sidecar's inbound side).
    #[serde(rename = "SERVER")]
    Server,
}

/// A provider, by name.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ProviderRef {
    /// Its name in the mesh configuration.
    pub name: String,
}

/// Istio's `AccessLogging.Filter`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogFilter {
    /// A CEL expression.
    pub expression: String,
}

impl Telemetry {
    /// Its level, as PeerAuthentication's are read (none: it selects nothing).
    pub fn scope(&self, namespace: &str) -> Option<PeerAuthnScope> {
        PeerAuthentication {
            selector: self.selector.clone(),
            mtls: None,
        }
        .scope(namespace)
    }

    /// Whether it applies to a workload in `namespace` carrying `labels`.
    pub fn selects(&self, own: &str, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        PeerAuthentication {
            selector: self.selector.clone(),
            mtls: None,
        }
        .selects(own, namespace, labels)
    }

    /// What its access logging gives each side: entries in order, a later one for the same
    /// provider and side replacing an earlier one, `disabled` removing it; providers are
    /// Istio's built-in ones or `mesh`'s file providers.
    pub fn logging(
        &self,
        mesh: &crate::control::mesh_config::MeshConfig,
    ) -> crate::access_log::Sides {
        let mut out = crate::access_log::Sides::default();
        for entry in &self.access_logging {
            let mode = entry
                .matches
                .as_ref()
                .and_then(|m| m.mode)
                .unwrap_or(WorkloadMode::ClientAndServer);
            let sides: &[bool] = match mode {
                WorkloadMode::ClientAndServer => &[true, false],
                WorkloadMode::Client => &[true],
                WorkloadMode::Server => &[false],
            };
            for provider in &entry.providers {
                let Some((encoding, path)) = mesh.access_log(&provider.name) else {
                    continue;
                };
                for &client in sides {
                    let list = if client {
                        &mut out.client
                    } else {
                        &mut out.server
                    };
                    list.retain(|s| (s.encoding, &s.path) != (encoding, &path));
                    if entry.disabled != Some(true) {
                        list.push(crate::access_log::Sink {
                            encoding,
                            filter: entry.filter.as_ref().map(|f| f.expression.clone()),
                            path: path.clone(),
                        });
                    }
                }
            }
        }
        out
    }
}

// `targetRef(s)` bind to gateways and services Weft does not model for telemetry yet.
pub(in crate::control) const TELEMETRY_UNSUPPORTED: Unsupported = &[
    ("", &["targetRef", "targetRefs"]),
    ("metrics[]", &["reportingInterval"]),
    ("metrics[].overrides[]", &["tagOverrides"]),
    ("metrics[].overrides[].match", &["customMetric"]),
    (
        "tracing[]",
        &[
            "customTags",
            "useRequestIdForTraceSampling",
            "enableIstioTags",
        ],
    ),
];

pub(super) fn check_telemetry(t: &Telemetry, problems: &mut Problems) {
    for (i, entry) in t.metrics.iter().enumerate() {
        for (j, p) in entry.providers.iter().enumerate() {
            if p.name != "prometheus" {
                problems.at(
                    format!("spec.metrics[{i}].providers[{j}].name"),
                    format!(
                        "provider {:?} is not defined (Weft's sidecars serve metrics to prometheus only)",
                        p.name
                    ),
                );
            }
        }
    }
    for (i, entry) in t.tracing.iter().enumerate() {
        let at = format!("spec.tracing[{i}]");
        if entry.providers.len() > 1 {
            problems.at(
                format!("{at}.providers"),
                "Istio supports one tracing provider per workload; give one",
            );
        }
        if let Some(p) = entry.random_sampling_percentage
            && !(0.0..=100.0).contains(&p)
        {
            problems.at(
                format!("{at}.randomSamplingPercentage"),
                format!("{p} is not a percentage (0 to 100)"),
            );
        }
    }
    for (i, entry) in t.access_logging.iter().enumerate() {
        let at = format!("spec.accessLogging[{i}]");
        // Provider names are checked where the mesh configuration is known: when applied.
        if let Some(f) = &entry.filter
            && let Err(e) = crate::access_log::Filter::parse(&f.expression)
        {
            problems.at(format!("{at}.filter.expression"), e);
        }
    }
}
