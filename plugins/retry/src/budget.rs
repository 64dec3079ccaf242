//! Linkerd's retry budget over the host's shared state.
//!
//! Requests and granted retries are counted in per-second buckets, numeric counters keyed by
//! kind and second, so every instance on every worker of this plugin name sees one count. A
//! retry is allowed while the retries granted in the last `ttl` seconds, this one included,
//! stay within `minRetriesPerSecond × ttl + retryRatio × requests in those seconds`.
//!
//! Buckets expire by themselves a little after they leave the window, so nothing sweeps them.
//! The window is summed only when a retry is wanted, so a request costs one counter call.

use weft_sdk::Level;
use weft_sdk::host::metrics::{self, MetricKind, Sample, SeriesId};
use weft_sdk::host::{self, state};

/// The kind of a bucket, in the top byte of its key; the low bytes hold the second.
const REQUESTS: u64 = 1 << 56;
const RETRIES: u64 = 2 << 56;
const SECOND_MASK: u64 = (1 << 56) - 1;

/// The metric counting retries the budget refused.
pub(crate) const EXHAUSTED_METRIC: &str = "retry_budget_exhausted_total";

fn key(kind: u64, second: u64) -> u64 {
    kind | (second & SECOND_MASK)
}

/// A configured budget.
pub(crate) struct Budget {
    retry_ratio: f64,
    // minRetriesPerSecond × window: the retries allowed however few requests there were.
    reserve: f64,
    window_s: u64,
    // A bucket is read until `window_s` seconds after its own second ends; one more second
    // of life covers the bucket being created late in its second.
    bucket_ttl_ms: u32,
    exhausted: Option<SeriesId>,
}

impl Budget {
    /// A budget of `retry_ratio` per request plus `min_per_second`, over `window_s` seconds.
    pub(crate) fn new(retry_ratio: f64, min_per_second: u32, window_s: u64) -> Self {
        let window_s = window_s.max(1);
        Budget {
            retry_ratio,
            reserve: f64::from(min_per_second) * window_s as f64,
            window_s,
            bucket_ttl_ms: u32::try_from((window_s + 1) * 1_000).unwrap_or(u32::MAX),
            exhausted: define_metric(),
        }
    }

    /// Counts a request toward the budget.
    pub(crate) fn record_request(&self) {
        let now = host::now_ms() / 1_000;
        state::counter_add(key(REQUESTS, now), 1, self.bucket_ttl_ms);
    }

    /// Takes one retry from the budget if it allows one; counts a refusal in the metric.
    pub(crate) fn try_spend(&self) -> bool {
        let now = host::now_ms() / 1_000;
        let first = now.saturating_sub(self.window_s - 1);
        // A read is an add of 0. It creates an absent bucket, so it passes the bucket TTL
        // too: a bucket made by a read expires like any other.
        let read =
            |kind: u64, second: u64| state::counter_add(key(kind, second), 0, self.bucket_ttl_ms);
        let requests: i64 = (first..=now).map(|s| read(REQUESTS, s)).sum();
        let earlier: i64 = (first..now).map(|s| read(RETRIES, s)).sum();
        // Take the retry first, then check: two workers racing for the last retry then both
        // see each other's and at worst both give it back, never both spend it.
        let current = key(RETRIES, now);
        let with_this_one = earlier + state::counter_add(current, 1, self.bucket_ttl_ms);
        let allowance = self.reserve + self.retry_ratio * requests.max(0) as f64;
        // Granted retries never exceed the allowance (Linkerd withdraws a whole token per
        // retry): with a fractional allowance, the retries before this one being under it is
        // not enough.
        if with_this_one as f64 <= allowance {
            return true;
        }
        state::counter_add(current, -1, self.bucket_ttl_ms);
        if let Some(series) = self.exhausted {
            metrics::record(&[Sample { series, value: 1.0 }]);
        }
        false
    }
}

/// Defines the refusal counter once per instance. A failure only loses the metric: retries
/// should not stop because a metric could not be kept.
fn define_metric() -> Option<SeriesId> {
    let defined = metrics::define(
        MetricKind::Counter,
        EXHAUSTED_METRIC,
        "Retries the retry budget refused.",
        &[],
        &[],
    )
    .and_then(|m| metrics::series(m, &[]));
    match defined {
        Ok(series) => Some(series),
        Err(e) => {
            host::log(
                Level::Warn,
                &format!("budget: {EXHAUSTED_METRIC} will not be recorded: {e}"),
            );
            None
        }
    }
}
