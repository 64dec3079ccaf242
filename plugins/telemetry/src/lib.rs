//! Per-call telemetry through host-owned metrics, with Istio's standard names and labels so
//! existing dashboards map over: request count, duration, request and response sizes, and the
//! retries each call took.

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

// Labels of the retry counter: the call's route, not its outcome.
const RETRY_LABELS: [&str; 3] = [
    "source_workload",
    "destination_service",
    "destination_version",
];

// Istio's request duration buckets, in milliseconds.
const DURATION_BUCKETS_MS: [f64; 14] = [
    1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1_000.0, 2_500.0, 5_000.0, 10_000.0,
    30_000.0,
];

// Istio's size buckets: powers of ten from 1 B to 100 MB.
const SIZE_BUCKETS: [f64; 9] = [1.0, 10.0, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8];

/// A label set by the ids and numbers the host passes: hashing it allocates nothing.
type LabelKey = (Name, Name, Name, u16, u16, bool);

/// Series of one label set: requests, duration, request bytes, response bytes, retries.
type SeriesSet = [SeriesId; 5];

/// The telemetry plugin.
pub struct Telemetry {
    requests: MetricId,
    duration: MetricId,
    request_bytes: MetricId,
    response_bytes: MetricId,
    retries: MetricId,
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
        let request_bytes = metrics::define(
            MetricKind::Histogram,
            "istio_request_bytes",
            "Request body sizes in bytes.",
            &LABELS,
            &SIZE_BUCKETS,
        )?;
        let response_bytes = metrics::define(
            MetricKind::Histogram,
            "istio_response_bytes",
            "Response body sizes in bytes.",
            &LABELS,
            &SIZE_BUCKETS,
        )?;
        let retries = metrics::define(
            MetricKind::Counter,
            "request_retries_total",
            "Upstream attempts beyond the first, by source and destination.",
            &RETRY_LABELS,
            &[],
        )?;
        Ok(Telemetry {
            requests,
            duration,
            request_bytes,
            response_bytes,
            retries,
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
                let resolved = (
                    metrics::series(self.requests, &values),
                    metrics::series(self.duration, &values),
                    metrics::series(self.request_bytes, &values),
                    metrics::series(self.response_bytes, &values),
                    metrics::series(self.retries, &values[..3]),
                );
                let (Ok(a), Ok(b), Ok(c), Ok(d), Ok(e)) = resolved else {
                    return;
                };
                cache.insert(key, [a, b, c, d, e]);
                [a, b, c, d, e]
            }
        };
        let sample = |series: SeriesId, value: f64| Sample { series, value };
        let retries = s.attempts.saturating_sub(1);
        let samples = [
            sample(series[0], 1.0),
            sample(series[1], s.duration_us as f64 / 1_000.0),
            sample(series[2], s.request_bytes as f64),
            sample(series[3], s.response_bytes as f64),
            sample(series[4], f64::from(retries)),
        ];
        // A call without retries adds nothing to the retry counter: leave that sample out.
        let n = if retries == 0 { 4 } else { 5 };
        metrics::record(&samples[..n]);
    }
}

export_filter!(Telemetry);

#[cfg(test)]
mod tests {
    use super::*;
    use weft_sdk::ResponseFlags;
    use weft_sdk::testing::{Harness, histogram, intern, metric_value};

    #[test]
    fn counts_calls_with_istio_labels() {
        let h = Harness::<Telemetry>::new("{}").expect("valid");
        let s = CallSummary {
            status: 200,
            duration_us: 3_000,
            attempts: 3,
            request_bytes: 120,
            response_bytes: 5_000,
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
        assert_eq!(histogram("istio_request_bytes", &labels), Some((2, 240.0)));
        assert_eq!(
            histogram("istio_response_bytes", &labels),
            Some((2, 10_000.0))
        );
        assert_eq!(
            metric_value("request_retries_total", &labels[..3]),
            Some(4.0),
            "two calls of three attempts: two retries each"
        );
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
        let labels = ["unknown", "payments", "unknown", "503", "UH", "http"];
        assert_eq!(metric_value("istio_requests_total", &labels), Some(1.0));
        assert_eq!(
            metric_value("request_retries_total", &labels[..3]),
            Some(0.0),
            "no retries: the series exists (at zero, as Prometheus prefers) and stays there"
        );
    }
}
