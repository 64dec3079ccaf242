//! Mesh traffic statistics for `weft stat`: the telemetry plugin's Istio series
//! (`istio_requests_total`, `istio_request_duration_milliseconds`) read from every sidecar's
//! `/metrics`, summed per destination service, subset and response code, and turned into
//! success rate, requests per second and latency percentiles over a window by differencing
//! two readings.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The cumulative counts of one destination service, subset and response code, summed over
/// the sidecars that called it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// Requests.
    pub requests: f64,
    /// Cumulative duration histogram: (upper bound in ms, count), finite bounds ascending.
    pub buckets: Vec<(f64, f64)>,
    /// The histogram's `+Inf` bucket: every observation (kept apart: JSON has no infinity).
    pub observed: f64,
}

/// Key of a [`Series`]: destination service, subset (`unknown` without one), response code.
pub type Key = (String, String, u16);

/// Every series of one reading.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    /// The series, as a list (JSON maps need string keys).
    pub series: Vec<(Key, Series)>,
}

/// Parses `name{a="x",b="y"} value` into its labels and value; `None` for other lines.
fn sample<'a>(line: &'a str, name: &str) -> Option<(BTreeMap<&'a str, String>, f64)> {
    let rest = line.strip_prefix(name)?;
    let (labels, value) = match rest.strip_prefix('{') {
        Some(r) => {
            let end = r.rfind('}')?;
            (&r[..end], r[end + 1..].trim())
        }
        None if rest.starts_with(' ') => ("", rest.trim()),
        None => return None,
    };
    let value: f64 = value.split_whitespace().next()?.parse().ok()?;
    let mut out = BTreeMap::new();
    // Label values here are names and numbers; escaped quotes are not expected, but a value
    // with a comma inside quotes is handled by splitting on `",`.
    for pair in labels.split("\",").filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once("=\"")?;
        out.insert(k.trim(), v.trim_end_matches('"').replace("\\\"", "\""));
    }
    Some((out, value))
}

impl Reading {
    /// Adds one sidecar's exposition to the reading.
    pub fn add_exposition(&mut self, text: &str) {
        let mut map: BTreeMap<Key, Series> = std::mem::take(&mut self.series).into_iter().collect();
        let key = |l: &BTreeMap<&str, String>| -> Option<Key> {
            // Each call is counted by both sidecars: the callers' count is the one read, as
            // Istio's dashboards read the source reporter for outbound views.
            if l.get("reporter").is_some_and(|r| r != "source") {
                return None;
            }
            let code = l.get("response_code")?.parse().unwrap_or(0);
            let host = l.get("destination_service")?;
            Some((
                crate::names::service_key_of(host, crate::names::DEFAULT_NAMESPACE)
                    .map_or_else(|| host.clone(), std::borrow::Cow::into_owned),
                l.get("destination_version")
                    .cloned()
                    .unwrap_or_else(|| "unknown".into()),
                code,
            ))
        };
        for line in text.lines() {
            if let Some((labels, v)) = sample(line, "istio_requests_total")
                && let Some(k) = key(&labels)
            {
                map.entry(k).or_default().requests += v;
            } else if let Some((labels, v)) =
                sample(line, "istio_request_duration_milliseconds_bucket")
                && let Some(k) = key(&labels)
            {
                let series = map.entry(k).or_default();
                let le: f64 = match labels.get("le").map(String::as_str) {
                    Some("+Inf") => {
                        series.observed += v;
                        continue;
                    }
                    Some(x) => match x.parse() {
                        Ok(le) => le,
                        Err(_) => continue,
                    },
                    None => continue,
                };
                let buckets = &mut series.buckets;
                match buckets.iter_mut().find(|(b, _)| *b == le) {
                    Some((_, c)) => *c += v,
                    None => {
                        buckets.push((le, v));
                        buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                    }
                }
            }
        }
        self.series = map.into_iter().collect();
    }
}

/// One row of `weft stat`: a destination service and subset over a window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// Destination service.
    pub service: String,
    /// Subset (version), or `unknown`.
    pub subset: String,
    /// Requests in the window.
    pub requests: f64,
    /// Share of requests not answered 5xx (or not at all), in percent; `None` without traffic.
    pub success_rate: Option<f64>,
    /// Requests per second.
    pub rps: f64,
    /// Latency percentiles in ms, interpolated in the histogram's buckets.
    pub p50_ms: Option<f64>,
    /// See `p50_ms`.
    pub p95_ms: Option<f64>,
    /// See `p50_ms`.
    pub p99_ms: Option<f64>,
}

/// The `q` quantile of a cumulative histogram of `total` observations (finite `buckets`),
/// interpolated linearly inside its bucket as Prometheus' `histogram_quantile` does; beyond the
/// last finite bound it is that bound, as there.
pub fn quantile(buckets: &[(f64, f64)], total: f64, q: f64) -> Option<f64> {
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut prev = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            let in_bucket = count - prev.1;
            let frac = if in_bucket > 0.0 {
                (rank - prev.1) / in_bucket
            } else {
                1.0
            };
            return Some(prev.0 + (le - prev.0) * frac);
        }
        prev = (le, count);
    }
    buckets.last().map(|(le, _)| *le)
}

/// Rows for the traffic between `before` and `after`, `seconds` apart.
pub fn window(before: &Reading, after: &Reading, seconds: f64) -> Vec<Row> {
    let old: BTreeMap<&Key, &Series> = before.series.iter().map(|(k, s)| (k, s)).collect();
    // (service, subset) → (requests, failed, merged bucket deltas, observations)
    type Acc = (f64, f64, Vec<(f64, f64)>, f64);
    let mut rows: BTreeMap<(String, String), Acc> = BTreeMap::new();
    for (key, now) in &after.series {
        let then = old.get(key);
        // A counter that went down belongs to a restarted sidecar: count it from zero.
        let reset = then.is_some_and(|t| t.requests > now.requests);
        let base = if reset { None } else { then };
        let requests = now.requests - base.map_or(0.0, |t| t.requests);
        let row = rows
            .entry((key.0.clone(), key.1.clone()))
            .or_insert_with(|| (0.0, 0.0, Vec::new(), 0.0));
        row.0 += requests;
        row.3 += now.observed - base.map_or(0.0, |t| t.observed);
        if key.2 >= 500 || key.2 == 0 {
            row.1 += requests;
        }
        for &(le, count) in &now.buckets {
            let prior = base
                .and_then(|t| t.buckets.iter().find(|(b, _)| *b == le))
                .map_or(0.0, |(_, c)| *c);
            match row.2.iter_mut().find(|(b, _)| *b == le) {
                Some((_, c)) => *c += count - prior,
                None => row.2.push((le, count - prior)),
            }
        }
    }
    rows.into_iter()
        .map(
            |((service, subset), (requests, failed, mut buckets, observed))| {
                buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
                let traffic = requests > 0.0;
                Row {
                    service,
                    subset,
                    requests,
                    success_rate: traffic.then(|| 100.0 * (requests - failed) / requests),
                    rps: requests / seconds.max(1e-3),
                    p50_ms: traffic
                        .then(|| quantile(&buckets, observed, 0.50))
                        .flatten(),
                    p95_ms: traffic
                        .then(|| quantile(&buckets, observed, 0.95))
                        .flatten(),
                    p99_ms: traffic
                        .then(|| quantile(&buckets, observed, 0.99))
                        .flatten(),
                }
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exposition(v1: f64, v2: f64, failed: f64) -> String {
        format!(
            "# TYPE istio_requests_total counter\n\
             istio_requests_total{{destination_service=\"payments\",destination_version=\"v1\",request_protocol=\"http\",response_code=\"200\",response_flags=\"-\",source_workload=\"orders\"}} {v1}\n\
             istio_requests_total{{destination_service=\"payments\",destination_version=\"v1\",request_protocol=\"http\",response_code=\"503\",response_flags=\"URX\",source_workload=\"orders\"}} {failed}\n\
             istio_requests_total{{destination_service=\"payments\",destination_version=\"v2\",request_protocol=\"http\",response_code=\"200\",response_flags=\"-\",source_workload=\"orders\"}} {v2}\n\
             istio_request_duration_milliseconds_bucket{{destination_service=\"payments\",destination_version=\"v1\",request_protocol=\"http\",response_code=\"200\",response_flags=\"-\",source_workload=\"orders\",le=\"1\"}} 0\n\
             istio_request_duration_milliseconds_bucket{{destination_service=\"payments\",destination_version=\"v1\",request_protocol=\"http\",response_code=\"200\",response_flags=\"-\",source_workload=\"orders\",le=\"2\"}} {half}\n\
             istio_request_duration_milliseconds_bucket{{destination_service=\"payments\",destination_version=\"v1\",request_protocol=\"http\",response_code=\"200\",response_flags=\"-\",source_workload=\"orders\",le=\"5\"}} {v1}\n\
             istio_request_duration_milliseconds_bucket{{destination_service=\"payments\",destination_version=\"v1\",request_protocol=\"http\",response_code=\"200\",response_flags=\"-\",source_workload=\"orders\",le=\"+Inf\"}} {v1}\n\
             istio_request_duration_milliseconds_sum{{destination_service=\"payments\"}} 1\n",
            half = v1 / 2.0
        )
    }

    #[test]
    fn two_readings_give_rates_success_and_percentiles() {
        let mut before = Reading::default();
        before.add_exposition(&exposition(100.0, 10.0, 0.0));
        let mut after = Reading::default();
        // Two sidecars call payments: their series add up.
        after.add_exposition(&exposition(200.0, 20.0, 2.0));
        after.add_exposition(&exposition(100.0, 10.0, 0.0));
        let rows = window(&before, &after, 2.0);
        assert_eq!(rows.len(), 2);
        let v1 = &rows[0];
        assert_eq!(
            (v1.service.as_str(), v1.subset.as_str()),
            ("payments", "v1")
        );
        assert_eq!(v1.requests, 202.0);
        assert_eq!(v1.rps, 101.0);
        let success = v1.success_rate.expect("traffic");
        assert!((success - 100.0 * 200.0 / 202.0).abs() < 1e-9, "{success}");
        // Half the 200 new v1 calls took at most 2 ms, all at most 5: the median is 2 ms.
        assert_eq!(v1.p50_ms, Some(2.0));
        assert!(v1.p99_ms.expect("p99") > 4.0 && v1.p99_ms.expect("p99") <= 5.0);
        assert_eq!(rows[1].rps, 10.0);
    }

    #[test]
    fn a_window_without_traffic_has_no_rates_and_a_restart_counts_from_zero() {
        let mut a = Reading::default();
        a.add_exposition(&exposition(100.0, 10.0, 0.0));
        let idle = window(&a, &a, 1.0);
        assert!(
            idle.iter()
                .all(|r| r.success_rate.is_none() && r.rps == 0.0)
        );
        let mut restarted = Reading::default();
        restarted.add_exposition(&exposition(5.0, 1.0, 0.0));
        let rows = window(&a, &restarted, 1.0);
        assert_eq!(rows[0].requests, 5.0);
    }

    #[test]
    fn quantiles_interpolate_inside_buckets_and_stop_at_the_last_bound() {
        let b = [(10.0, 50.0), (20.0, 100.0)];
        assert_eq!(quantile(&b, 100.0, 0.5), Some(10.0));
        assert_eq!(quantile(&b, 100.0, 0.75), Some(15.0));
        let tail = [(10.0, 0.0)];
        assert_eq!(quantile(&tail, 10.0, 0.99), Some(10.0));
        assert_eq!(quantile(&[], 0.0, 0.5), None);
    }
}
