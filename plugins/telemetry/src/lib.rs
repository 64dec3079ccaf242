//! Per-call telemetry through host-owned metrics, with Istio's standard names and labels so
//! existing dashboards map over.

use serde::Deserialize;
use std::cell::RefCell;
use std::collections::HashMap;
use weft_sdk::host::metrics::{self, MetricId, Sample, SeriesId};
use weft_sdk::{CallSummary, Filter, Hooks, MetricKind, Name, Protocol, export_filter};

/// Configuration.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase", default)]
pub struct Config {
    /// The workload name used for `destination_workload` when the summary has no identity.
    pub workload: Option<String>,
}

const LABELS: [&str; 6] = [
    "source_workload",
    "destination_service",
    "destination_version",
    "response_code",
    "response_flags",
    "request_protocol",
];

// Istio's request duration buckets, in milliseconds.
const DURATION_BUCKETS_MS: [f64; 14] = [
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0,
    30_000.0,
];

/// A label set by the ids and numbers the host passes: hashing it allocates nothing.
type LabelKey = (Name, Name, Name, u16, u16, bool);

/// The telemetry plugin.
pub struct Telemetry {
    requests: MetricId,
    duration: MetricId,
    // Series ids per label set, resolved once; the host bounds how many there can be.
    cache: RefCell<HashMap<LabelKey, [SeriesId; 2]>>,
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

impl Filter for Telemetry {
    type Config = Config;

    fn new(_config: Config) -> Result<Self, String> {
        let requests = metrics::define(
            MetricKind::Counter,
            "istio_requests_total",
            "Requests, by source, destination and response.",
            &LABELS,
            &[],
        )?;
        let duration = metrics::define(
            MetricKind::Histogram,
            "istio_request_duration_milliseconds",
            "Request duration in milliseconds.",
            &LABELS,
            &DURATION_BUCKETS_MS,
        )?;
        Ok(Telemetry {
            requests,
            duration,
            cache: RefCell::new(HashMap::new()),
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_DONE
    }

    fn on_done(&self, s: &CallSummary) {
        let key: LabelKey = (
            s.source,
            s.service,
            s.subset,
            s.status,
            s.flags.bits(),
            s.protocol == Protocol::Http2,
        );
        let mut cache = self.cache.borrow_mut();
        let series = match cache.get(&key) {
            Some(series) => *series,
            None => {
                // First time for this label set: resolve the names, then the series, once.
                let (source, service, subset) =
                    (s.source.resolve(), s.service.resolve(), s.subset.resolve());
                let code = s.status.to_string();
                let flags = s.flags.envoy_codes();
                let values = [
                    workload_of(&source),
                    &service,
                    if subset.is_empty() {
                        "unknown"
                    } else {
                        &subset
                    },
                    code.as_str(),
                    flags.as_str(),
                    "http",
                ];
                let (Ok(a), Ok(b)) = (
                    metrics::series(self.requests, &values),
                    metrics::series(self.duration, &values),
                ) else {
                    return;
                };
                cache.insert(key, [a, b]);
                [a, b]
            }
        };
        metrics::record(&[
            Sample {
                series: series[0],
                value: 1.0,
            },
            Sample {
                series: series[1],
                value: s.duration_us as f64 / 1_000.0,
            },
        ]);
    }
}

export_filter!(Telemetry);

#[cfg(test)]
mod tests {
    use super::*;
    use weft_sdk::testing::{Harness, histogram, intern, metric_value};

    #[test]
    fn counts_calls_with_istio_labels() {
        let h = Harness::<Telemetry>::new("{}").expect("valid");
        let s = CallSummary {
            status: 200,
            duration_us: 3_000,
            source: intern("spiffe://weft.local/ns/default/sa/orders"),
            service: intern("payments"),
            subset: intern("v2"),
            ..CallSummary::default()
        };
        h.on_done(&s);
        h.on_done(&s);
        let labels = ["orders", "payments", "v2", "200", "-", "http"];
        assert_eq!(metric_value("istio_requests_total", &labels), Some(2.0));
        assert_eq!(
            histogram("istio_request_duration_milliseconds", &labels),
            Some((2, 6.0))
        );
    }
}
