//! Per-call telemetry through host-owned metrics, with Istio's standard names, labels and
//! buckets so existing dashboards and alerts map over: request count, duration, request and
//! response sizes from either reporter (the caller's sidecar, `source`; the destination's,
//! `destination`), and the retries each call took.

use serde::Deserialize;
use std::cell::RefCell;
use std::collections::HashMap;
use weft_sdk::host::metrics::{self, MetricId, Sample, SeriesId};
use weft_sdk::{CallSummary, Filter, Hooks, MetricKind, Name, Workload, export_filter};

/// Configuration.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    /// Which side this sidecar reports as: `source` (the caller's sidecar) or `destination`.
    pub reporter: Reporter,
    /// The cluster both ends are in (`source_cluster`, `destination_cluster`).
    pub cluster: String,
    /// The cluster domain service hosts end in (`destination_service`).
    pub cluster_domain: String,
    /// Standard metrics not reported (`istio_requests_total`, …), as a Telemetry's
    /// `metrics[].overrides[].disabled` turns them off.
    pub disabled: Vec<String>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            reporter: Reporter::Source,
            // Istio's default cluster id.
            cluster: "Kubernetes".to_string(),
            cluster_domain: "cluster.local".to_string(),
            disabled: Vec::new(),
        }
    }
}

/// Istio's `reporter` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reporter {
    /// The caller's sidecar.
    Source,
    /// The destination's sidecar.
    Destination,
}

/// Istio's standard labels, in order.
pub const LABELS: [&str; 21] = [
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
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
];

// Labels of the retry counter: the call's route, not its outcome.
const RETRY_LABELS: [&str; 4] = [
    "reporter",
    "source_workload",
    "destination_service",
    "destination_version",
];

// Envoy's default histogram buckets, which Istio's standard histograms use (milliseconds for
// durations, bytes for sizes).
const BUCKETS: [f64; 19] = [
    0.5,
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    30_000.0,
    60_000.0,
    300_000.0,
    600_000.0,
    1_800_000.0,
    3_600_000.0,
];

/// A label set by the ids and numbers the host passes: hashing it allocates nothing.
type LabelKey = (Name, Name, Name, Name, Name, u16, u16, Option<u8>);

/// Series of one label set: requests, duration, request bytes, response bytes, retries (none
/// where the metric is not reported).
type SeriesSet = [Option<SeriesId>; 5];

/// The telemetry plugin.
pub struct Telemetry {
    config: Config,
    // Each metric, when reported: requests, duration, request bytes, response bytes, retries.
    metrics: [Option<MetricId>; 5],
    // Series ids per label set, resolved once; the host bounds how many there can be.
    cache: RefCell<HashMap<LabelKey, SeriesSet>>,
}

/// The workload name in a SPIFFE ID (`spiffe://td/ns/default/sa/orders` → `orders`).
pub fn workload_of(identity: &str) -> &str {
    if identity.is_empty() {
        return "unknown";
    }
    identity
        .rsplit_once("/sa/")
        .map(|(_, sa)| sa)
        .unwrap_or(identity)
}

/// `value`, or `unknown` when empty, as Istio writes a label it cannot fill.
fn or_unknown(value: &str) -> &str {
    if value.is_empty() { "unknown" } else { value }
}

/// The label values of one call.
fn label_values(config: &Config, s: &CallSummary) -> Vec<String> {
    let src = Workload::parse(&s.source_workload.resolve());
    let dst = Workload::parse(&s.destination_workload.resolve());
    let service = s.service.resolve();
    // A service key is `name` (namespace `default`) or `name.namespace`; a ServiceEntry's
    // host (two dots or more) is its own name, in no namespace Weft knows.
    let external = service.matches('.').count() >= 2;
    let (name, namespace) = if external {
        (&*service, "unknown")
    } else {
        service.split_once('.').unwrap_or((&service, "default"))
    };
    let principal = |id: Name| or_unknown(&id.resolve()).to_string();
    let security = match config.reporter {
        Reporter::Source => "unknown",
        Reporter::Destination if s.source.is_none() => "none",
        Reporter::Destination => "mutual_tls",
    };
    let reporter = match config.reporter {
        Reporter::Source => "source",
        Reporter::Destination => "destination",
    };
    [
        reporter,
        or_unknown(&src.name),
        or_unknown(&src.namespace),
        &principal(s.source),
        or_unknown(&src.app),
        or_unknown(&src.version),
        &config.cluster,
        or_unknown(&dst.name),
        or_unknown(&dst.namespace),
        &principal(s.destination_identity),
        or_unknown(&dst.app),
        or_unknown(&dst.version),
        &if service.is_empty() {
            "unknown".to_string()
        } else if external {
            service.to_string()
        } else {
            format!("{name}.{namespace}.svc.{}", config.cluster_domain)
        },
        or_unknown(name),
        or_unknown(namespace),
        &config.cluster,
        // Istio's `grpc` for a gRPC call: one whose answer carried a grpc-status.
        if s.grpc_status.is_some() {
            "grpc"
        } else {
            "http"
        },
        &s.status.to_string(),
        &s.grpc_status.map(|g| g.to_string()).unwrap_or_default(),
        &s.flags.envoy_codes(),
        security,
    ]
    .map(str::to_string)
    .to_vec()
}

impl Filter for Telemetry {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        const KNOWN: [&str; 4] = [
            "istio_requests_total",
            "istio_request_duration_milliseconds",
            "istio_request_bytes",
            "istio_response_bytes",
        ];
        if let Some(unknown) = config
            .disabled
            .iter()
            .find(|m| !KNOWN.contains(&m.as_str()))
        {
            return Err(format!(
                "disabled: {unknown:?} is not one of this plugin's metrics ({})",
                KNOWN.join(", ")
            ));
        }
        let on = |name: &str| !config.disabled.iter().any(|m| m == name);
        let define = |kind, name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
            if on(name) {
                metrics::define(kind, name, help, labels, buckets).map(Some)
            } else {
                Ok(None)
            }
        };
        let metrics = [
            define(
                MetricKind::Counter,
                KNOWN[0],
                "Requests, by source, destination and response.",
                &LABELS,
                &[],
            )?,
            define(
                MetricKind::Histogram,
                KNOWN[1],
                "Request duration in milliseconds.",
                &LABELS,
                &BUCKETS,
            )?,
            define(
                MetricKind::Histogram,
                KNOWN[2],
                "Request body sizes in bytes.",
                &LABELS,
                &BUCKETS,
            )?,
            define(
                MetricKind::Histogram,
                KNOWN[3],
                "Response body sizes in bytes.",
                &LABELS,
                &BUCKETS,
            )?,
            // Not one of Istio's standard metrics: it goes with the request count.
            define(
                MetricKind::Counter,
                "request_retries_total",
                "Upstream attempts beyond the first, by source and destination.",
                &RETRY_LABELS,
                &[],
            )?
            .filter(|_| on(KNOWN[0])),
        ];
        Ok(Telemetry {
            config,
            metrics,
            cache: RefCell::new(HashMap::new()),
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_DONE
    }

    fn on_done(&self, s: &CallSummary) {
        let key: LabelKey = (
            s.source_workload,
            s.destination_workload,
            s.source,
            s.destination_identity,
            s.service,
            s.status,
            s.flags.bits(),
            // `request_protocol` and `grpc_response_status`.
            s.grpc_status,
        );
        let mut cache = self.cache.borrow_mut();
        let series = match cache.get(&key) {
            Some(series) => *series,
            None => {
                // First time for this label set: resolve the names, then the series, once.
                let owned = label_values(&self.config, s);
                let values: Vec<&str> = owned.iter().map(String::as_str).collect();
                let retry_values = [values[0], values[1], values[12], values[11]];
                let mut set: SeriesSet = [None; 5];
                for (i, metric) in self.metrics.iter().enumerate() {
                    let Some(metric) = *metric else { continue };
                    let labels: &[&str] = if i == 4 { &retry_values } else { &values };
                    match metrics::series(metric, labels) {
                        Ok(series) => set[i] = Some(series),
                        Err(_) => return,
                    }
                }
                cache.insert(key, set);
                set
            }
        };
        let retries = s.attempts.saturating_sub(1);
        let values = [
            1.0,
            s.duration_us as f64 / 1_000.0,
            s.request_bytes as f64,
            s.response_bytes as f64,
            f64::from(retries),
        ];
        let mut samples = [Sample {
            series: SeriesId(0),
            value: 0.0,
        }; 5];
        let mut n = 0;
        for (i, (series, value)) in series.iter().zip(values).enumerate() {
            // A call without retries adds nothing to the retry counter: leave that sample out.
            if let Some(series) = series
                && (i < 4 || retries > 0)
            {
                samples[n] = Sample {
                    series: *series,
                    value,
                };
                n += 1;
            }
        }
        metrics::record(&samples[..n]);
    }
}

export_filter!(Telemetry);

#[cfg(test)]
mod tests {
    use super::*;
    use weft_sdk::testing::{Harness, histogram, intern, metric_value};
    use weft_sdk::{Protocol, ResponseFlags};

    /// A call from orders (v1) to payments (v2) as a summary gives it.
    fn call() -> CallSummary {
        CallSummary {
            status: 200,
            duration_us: 3_000,
            attempts: 3,
            request_bytes: 120,
            response_bytes: 5_000,
            source: intern("spiffe://weft.local/ns/default/sa/orders"),
            destination_identity: intern("spiffe://weft.local/ns/shop/sa/payments"),
            source_workload: intern("name=orders;namespace=default;app=orders;version=v1"),
            destination_workload: intern("name=payments;namespace=shop;app=payments;version=v2"),
            service: intern("payments.shop"),
            subset: intern("canary"),
            ..CallSummary::default()
        }
    }

    #[test]
    fn counts_calls_with_istios_standard_labels() {
        let h = Harness::<Telemetry>::new("{}").expect("valid");
        h.on_done(&call());
        h.on_done(&call());
        let labels = [
            "source",
            "orders",
            "default",
            "spiffe://weft.local/ns/default/sa/orders",
            "orders",
            "v1",
            "Kubernetes",
            "payments",
            "shop",
            "spiffe://weft.local/ns/shop/sa/payments",
            "payments",
            "v2",
            "payments.shop.svc.cluster.local",
            "payments",
            "shop",
            "Kubernetes",
            "http",
            "200",
            "",
            "-",
            "unknown",
        ];
        assert_eq!(metric_value("istio_requests_total", &labels), Some(2.0));
        assert_eq!(
            histogram("istio_request_duration_milliseconds", &labels),
            Some((2, 6.0))
        );
        assert_eq!(histogram("istio_request_bytes", &labels), Some((2, 240.0)));
        assert_eq!(
            histogram("istio_response_bytes", &labels),
            Some((2, 10_000.0))
        );
        assert_eq!(
            metric_value(
                "request_retries_total",
                &["source", "orders", "payments.shop.svc.cluster.local", "v2"]
            ),
            Some(4.0),
            "two calls of three attempts: two retries each"
        );
    }

    #[test]
    fn the_destination_reports_the_connections_security() {
        let h = Harness::<Telemetry>::new(r#"{"reporter": "destination"}"#).expect("valid");
        h.on_done(&call());
        let plaintext = CallSummary {
            source: Name::NONE,
            source_workload: Name::NONE,
            ..call()
        };
        h.on_done(&plaintext);
        let mut labels = [
            "destination",
            "orders",
            "default",
            "spiffe://weft.local/ns/default/sa/orders",
            "orders",
            "v1",
            "Kubernetes",
            "payments",
            "shop",
            "spiffe://weft.local/ns/shop/sa/payments",
            "payments",
            "v2",
            "payments.shop.svc.cluster.local",
            "payments",
            "shop",
            "Kubernetes",
            "http",
            "200",
            "",
            "-",
            "mutual_tls",
        ];
        assert_eq!(metric_value("istio_requests_total", &labels), Some(1.0));
        labels[1..6].copy_from_slice(&["unknown"; 5]);
        labels[20] = "none";
        assert_eq!(metric_value("istio_requests_total", &labels), Some(1.0));
    }

    #[test]
    fn a_disabled_metric_is_not_reported_and_an_unknown_one_is_refused() {
        let config = r#"{"reporter": "destination", "disabled": ["istio_requests_total"]}"#;
        let h = Harness::<Telemetry>::new(config).expect("valid");
        let s = CallSummary {
            service: intern("ledger.disabled"),
            ..call()
        };
        h.on_done(&s);
        let labels = [
            "destination",
            "orders",
            "default",
            "spiffe://weft.local/ns/default/sa/orders",
            "orders",
            "v1",
            "Kubernetes",
            "payments",
            "shop",
            "spiffe://weft.local/ns/shop/sa/payments",
            "payments",
            "v2",
            "ledger.disabled.svc.cluster.local",
            "ledger",
            "disabled",
            "Kubernetes",
            "http",
            "200",
            "",
            "-",
            "mutual_tls",
        ];
        assert_eq!(metric_value("istio_requests_total", &labels), None);
        assert_eq!(
            histogram("istio_request_duration_milliseconds", &labels),
            Some((1, 3.0))
        );
        assert!(Harness::<Telemetry>::new(r#"{"disabled": ["istio_nope"]}"#).is_err());
    }

    #[test]
    fn labels_name_the_flags_and_the_unknowns() {
        let h = Harness::<Telemetry>::new("{}").expect("valid");
        let s = CallSummary {
            status: 503,
            attempts: 1,
            service: intern("payments"),
            flags: ResponseFlags::NO_HEALTHY_UPSTREAM,
            protocol: Protocol::Http2,
            ..CallSummary::default()
        };
        h.on_done(&s);
        let mut labels = ["unknown"; 21];
        labels[0] = "source";
        labels[6] = "Kubernetes";
        labels[12] = "payments.default.svc.cluster.local";
        labels[13] = "payments";
        labels[14] = "default";
        labels[15] = "Kubernetes";
        labels[16] = "http";
        labels[17] = "503";
        labels[18] = "";
        labels[19] = "UH";
        assert_eq!(metric_value("istio_requests_total", &labels), Some(1.0));
        assert_eq!(
            metric_value(
                "request_retries_total",
                &[
                    "source",
                    "unknown",
                    "payments.default.svc.cluster.local",
                    "unknown"
                ]
            ),
            Some(0.0),
            "no retries: the series exists (at zero, as Prometheus prefers) and stays there"
        );
    }
}
