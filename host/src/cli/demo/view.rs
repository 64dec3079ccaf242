//! What the demo measures and shows: every call's outcome by the version that answered it,
//! latency percentiles, and the orders sidecar's own counters (retries, ejections), rendered
//! as a refreshing table in a terminal or as one summary per phase elsewhere.

use serde::Serialize;
use std::collections::BTreeMap;
use std::time::Duration;

/// Calls to one destination version.
#[derive(Debug, Default, Clone)]
struct Dest {
    ok: u64,
    failed: u64,
    latencies_us: Vec<u32>,
}

/// Every call of one phase so far.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    by_version: BTreeMap<String, Dest>,
    /// Calls whose response carried the swapped plugin's header.
    pub marked: u64,
}

impl Tally {
    /// Records one call: the version that answered (`none` if no pod did), whether it
    /// succeeded, and how long it took.
    pub fn record(&mut self, version: &str, ok: bool, took: Duration, marked: bool) {
        let d = self.by_version.entry(version.to_string()).or_default();
        if ok {
            d.ok += 1;
        } else {
            d.failed += 1;
        }
        d.latencies_us
            .push(u32::try_from(took.as_micros()).unwrap_or(u32::MAX));
        self.marked += u64::from(marked);
    }

    fn calls(&self) -> u64 {
        self.by_version.values().map(|d| d.ok + d.failed).sum()
    }

    /// Every call's latency together: the baseline's, which has no versions to tell apart.
    pub fn baseline(&self) -> Baseline {
        let mut all: Vec<u32> = self
            .by_version
            .values()
            .flat_map(|d| d.latencies_us.iter().copied())
            .collect();
        Baseline {
            calls: self.calls(),
            failed: self.failed(),
            p50_ms: quantile_ms(&mut all, 0.50),
            p99_ms: quantile_ms(&mut all, 0.99),
        }
    }

    fn failed(&self) -> u64 {
        self.by_version.values().map(|d| d.failed).sum()
    }
}

/// The `q` quantile of `v` (sorted in place), in milliseconds.
fn quantile_ms(v: &mut [u32], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
    f64::from(v[i]) / 1000.0
}

/// Calls straight to a payments pod, with no sidecar on the way: what the mesh's latency
/// compares with.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Baseline {
    /// Calls made.
    pub calls: u64,
    /// Calls that failed.
    pub failed: u64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

/// One destination's line.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DestReport {
    /// Calls answered by this version (successes and failures).
    pub calls: u64,
    /// Its share of all calls, in percent.
    pub share: f64,
    /// Successful calls, in percent.
    pub success_rate: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

/// One phase of the story, as measured.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhaseReport {
    /// Its name (`canary`, `flaky`, `broken`, `weight-50`, `plugin-swap`).
    pub name: String,
    /// What it shows.
    pub story: String,
    /// How long it ran, seconds.
    pub seconds: f64,
    /// Calls made.
    pub calls: u64,
    /// Calls that did not get a 200.
    pub failed: u64,
    /// Successful calls, in percent.
    pub success_rate: f64,
    /// Requests per second.
    pub rps: f64,
    /// By the version that answered (`v1`, `v2`; `none` when no pod answered).
    pub destinations: BTreeMap<String, DestReport>,
    /// Upstream retries the orders sidecar made (its `request_retries_total`).
    pub retries: u64,
    /// Ejections by outlier detection (its `outlier_ejections_total`).
    pub ejections: u64,
    /// Calls answered with the swapped plugin's header.
    pub new_build_calls: u64,
    /// How long the sidecars took to follow this phase's change, ms.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub followed_ms: Option<u64>,
}

/// Counters read from the orders sidecar at a phase's start, to report differences.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// `request_retries_total`, summed over series.
    pub retries: u64,
    /// `outlier_ejections_total`, summed over series.
    pub ejections: u64,
}

impl Counters {
    /// Reads the counters out of a Prometheus text exposition.
    pub fn parse(text: &str) -> Counters {
        let sum = |name: &str| -> u64 {
            text.lines()
                .filter(|l| {
                    l.strip_prefix(name)
                        .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
                })
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum::<f64>() as u64
        };
        Counters {
            retries: sum("request_retries_total"),
            ejections: sum("outlier_ejections_total"),
        }
    }
}

/// Builds a phase's report from its tally and the counters at its start and now.
pub fn report(
    name: &str,
    story: &str,
    tally: &Tally,
    took: Duration,
    start: Counters,
    now: Counters,
    followed: Option<Duration>,
) -> PhaseReport {
    let calls = tally.calls();
    let failed = tally.failed();
    let pct = |part: u64, whole: u64| {
        if whole == 0 {
            0.0
        } else {
            100.0 * part as f64 / whole as f64
        }
    };
    let destinations = tally
        .by_version
        .iter()
        .map(|(v, d)| {
            let mut lat = d.latencies_us.clone();
            let n = d.ok + d.failed;
            (
                v.clone(),
                DestReport {
                    calls: n,
                    share: pct(n, calls),
                    success_rate: pct(d.ok, n),
                    p50_ms: quantile_ms(&mut lat, 0.50),
                    p99_ms: quantile_ms(&mut lat, 0.99),
                },
            )
        })
        .collect();
    PhaseReport {
        name: name.to_string(),
        story: story.to_string(),
        seconds: took.as_secs_f64(),
        calls,
        failed,
        success_rate: pct(calls - failed, calls),
        rps: calls as f64 / took.as_secs_f64().max(1e-3),
        destinations,
        retries: now.retries.saturating_sub(start.retries),
        ejections: now.ejections.saturating_sub(start.ejections),
        new_build_calls: tally.marked,
        followed_ms: followed.map(|d| d.as_millis() as u64),
    }
}

/// The table for one phase (live or final).
pub fn table(step: usize, steps: usize, r: &PhaseReport) -> String {
    let mut out = format!(
        "phase {step}/{steps} · {}  ({:.0}s)\n  {}\n\n",
        r.name, r.seconds, r.story
    );
    out.push_str(&format!(
        "  {:<14} {:>7} {:>7} {:>9} {:>9} {:>9}\n",
        "DESTINATION", "SHARE", "CALLS", "SUCCESS", "P50", "P99"
    ));
    for (v, d) in &r.destinations {
        out.push_str(&format!(
            "  {:<14} {:>6.1}% {:>7} {:>8.1}% {:>7.2}ms {:>7.2}ms\n",
            format!("payments {v}"),
            d.share,
            d.calls,
            d.success_rate,
            d.p50_ms,
            d.p99_ms
        ));
    }
    out.push_str(&format!(
        "\n  {} calls at {:.0}/s · success {:.2}% · failed {} · retries {} · ejections {}",
        r.calls, r.rps, r.success_rate, r.failed, r.retries, r.ejections
    ));
    if r.new_build_calls > 0 {
        out.push_str(&format!(" · new build answered {}", r.new_build_calls));
    }
    if let Some(ms) = r.followed_ms {
        out.push_str(&format!(" · every sidecar followed in {ms} ms"));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_every_series_of_a_metric_and_nothing_else() {
        let text = "# HELP request_retries_total x\n\
                    request_retries_total{a=\"1\"} 3\n\
                    request_retries_total{a=\"2\"} 4\n\
                    request_retries_total_other 100\n\
                    outlier_ejections_total{cause=\"5xx\"} 2\n";
        let c = Counters::parse(text);
        assert_eq!((c.retries, c.ejections), (7, 2));
    }

    #[test]
    fn a_report_splits_calls_by_version() {
        let mut t = Tally::default();
        for i in 0..100 {
            let v = if i < 95 { "v1" } else { "v2" };
            t.record(v, i != 0, Duration::from_millis(1 + i % 3), false);
        }
        let r = report(
            "canary",
            "",
            &t,
            Duration::from_secs(1),
            Counters::default(),
            Counters {
                retries: 5,
                ejections: 1,
            },
            None,
        );
        assert_eq!((r.calls, r.failed), (100, 1));
        assert_eq!(r.destinations["v2"].share, 5.0);
        assert_eq!((r.retries, r.ejections), (5, 1));
        assert!(r.destinations["v1"].p99_ms >= r.destinations["v1"].p50_ms);
    }
}
