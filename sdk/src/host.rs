//! The host's services, as the plugin's only authority: logging, time, randomness, metrics,
//! shared state and endpoint health.
//!
//! On Wasm these call the host; natively they call [`crate::testing`]'s double.

#[cfg(not(target_arch = "wasm32"))]
use crate::testing::host_imp as imp;
#[cfg(target_arch = "wasm32")]
use crate::wasm::host_imp as imp;

use crate::{Level, Name};
use std::rc::Rc;

thread_local! {
    static NAMES: std::cell::RefCell<std::collections::HashMap<u32, Rc<str>>> =
        std::cell::RefCell::new(std::collections::HashMap::new());
}

/// Forgets resolved names (the test double's `reset` starts numbering again).
#[cfg(not(target_arch = "wasm32"))]
pub(crate) fn forget_names() {
    NAMES.with(|n| n.borrow_mut().clear());
}

/// The text of an interned name; looked up from the host once per id, then cached.
pub fn name(id: Name) -> Rc<str> {
    if id.is_none() {
        return Rc::from("");
    }
    NAMES.with(|names| {
        if let Some(n) = names.borrow().get(&id.0) {
            return n.clone();
        }
        let text: Rc<str> = Rc::from(imp::name(id.0));
        // Unknown ids resolve to "" and are not cached, in case the host learns them later.
        if !text.is_empty() {
            names.borrow_mut().insert(id.0, text.clone());
        }
        text
    })
}

/// Writes a log line through the host's `tracing`, tagged with the plugin's name.
pub fn log(level: Level, message: &str) {
    imp::log(level, message)
}

/// Whether a line at `level` would be written; check before formatting an expensive message.
pub fn log_enabled(level: Level) -> bool {
    imp::log_enabled(level)
}

/// Wall-clock milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    imp::now_ms()
}

/// A uniformly random 64-bit number (not for secrets).
///
/// On Wasm the numbers come from a generator in the plugin seeded once per instance from the
/// host, so drawing one costs no host call.
pub fn random_u64() -> u64 {
    #[cfg(target_arch = "wasm32")]
    {
        local_random()
    }
    #[cfg(not(target_arch = "wasm32"))]
    {
        imp::random_u64()
    }
}

/// The host's own random number: one host call each.
pub fn host_random_u64() -> u64 {
    imp::random_u64()
}

#[cfg(target_arch = "wasm32")]
fn local_random() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = const { Cell::new(0) };
    }
    STATE.with(|s| {
        if s.get() == 0 {
            s.set(imp::random_u64() | 1);
        }
        // wyrand: one multiply, passes BigCrush, plenty for weighted choices and jitter.
        let next = s.get().wrapping_add(0xa076_1d64_78bd_642f);
        s.set(next);
        let t = u128::from(next) * u128::from(next ^ 0xe703_7ed1_a0b4_28db);
        ((t >> 64) ^ t) as u64
    })
}

/// A uniformly random number in `0..bound` (`bound` > 0), without modulo bias.
pub fn random_below(bound: u64) -> u64 {
    if bound <= 1 {
        return 0;
    }
    // Lemire's multiply-shift with rejection: unbiased and one multiply in the common case.
    let threshold = bound.wrapping_neg() % bound;
    loop {
        let wide = u128::from(random_u64()) * u128::from(bound);
        if (wide as u64) >= threshold {
            return (wide >> 64) as u64;
        }
    }
}

/// Host-owned Prometheus metrics: define once, resolve label sets to series once, record often.
pub mod metrics {
    use super::imp;
    pub use crate::MetricKind;

    /// A metric's id, from [`define`].
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct MetricId(pub u32);

    /// One label set of a metric, from [`series`]; cache it.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    pub struct SeriesId(pub u32);

    /// One measurement against a series.
    #[derive(Debug, Clone, Copy, PartialEq)]
    pub struct Sample {
        /// The series.
        pub series: SeriesId,
        /// Increment (counter), value (gauge) or observation (histogram).
        pub value: f64,
    }

    /// Defines a metric (or finds this plugin's earlier definition of it).
    pub fn define(
        kind: MetricKind,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> Result<MetricId, String> {
        imp::define_metric(kind, name, help, labels, buckets).map(MetricId)
    }

    /// Resolves a label set to a series. Past the host's bound, the overflow series comes back.
    pub fn series(metric: MetricId, label_values: &[&str]) -> Result<SeriesId, String> {
        imp::series(metric.0, label_values).map(SeriesId)
    }

    /// Records a batch of samples in one host call.
    pub fn record(samples: &[Sample]) {
        if !samples.is_empty() {
            imp::record_metrics(samples)
        }
    }
}

/// State shared by every instance of this plugin, on every worker, kept across swaps.
pub mod state {
    use super::imp;
    use crate::{StateError, Versioned};

    /// Reads a key.
    pub fn get(key: &str) -> Option<Versioned> {
        imp::state_get(key)
    }

    /// Writes a key; with `if_version`, only when the version matches (`Some(0)`: only when
    /// absent). A `ttl_ms` above 0 expires it that long after this write. Returns the new version.
    pub fn set(
        key: &str,
        value: &[u8],
        if_version: Option<u64>,
        ttl_ms: u32,
    ) -> Result<u64, StateError> {
        imp::state_set(key, value, if_version, ttl_ms)
    }

    /// Atomically adds to a counter and returns the new value. A `ttl_ms` above 0 expires a
    /// key this call creates that long after.
    pub fn add(key: &str, delta: i64, ttl_ms: u32) -> Result<i64, StateError> {
        imp::state_add(key, delta, ttl_ms)
    }

    /// Reads a counter written by [`add`]; 0 when absent.
    pub fn counter(key: &str) -> i64 {
        get(key).map(|v| decode_counter(&v.value)).unwrap_or(0)
    }

    /// Removes a key.
    pub fn delete(key: &str) {
        imp::state_delete(key)
    }

    /// Atomically adds to a numeric-keyed counter and returns the new value; no strings cross,
    /// so this is the cheap path for per-endpoint counts. A `ttl_ms` above 0 expires a counter
    /// this call creates that long after.
    pub fn counter_add(key: u64, delta: i64, ttl_ms: u32) -> i64 {
        imp::counter_add(key, delta, ttl_ms)
    }

    /// Resets a numeric-keyed counter to 0.
    pub fn counter_reset(key: u64) {
        imp::counter_reset(key)
    }

    /// Decodes a counter value (little-endian i64); anything else reads as 0.
    pub fn decode_counter(bytes: &[u8]) -> i64 {
        <[u8; 8]>::try_from(bytes)
            .map(i64::from_le_bytes)
            .unwrap_or(0)
    }
}

/// Endpoint health, owned by the host and driven by plugins.
pub mod endpoints {
    use super::imp;
    use crate::EndpointStatus;

    /// Every endpoint of the service `endpoint` belongs to.
    pub fn pool(endpoint: u64) -> Vec<EndpointStatus> {
        imp::endpoint_pool(endpoint)
    }

    /// Takes an endpoint out of load balancing for `duration_ms`. False if the host does not
    /// know it.
    pub fn eject(endpoint: u64, duration_ms: u32) -> bool {
        imp::eject(endpoint, duration_ms)
    }
}
