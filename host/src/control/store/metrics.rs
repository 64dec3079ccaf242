//! The store's metrics: every call by operation and outcome with its duration, whether the
//! store answers, changes found stale (another replica moved first), and whether this replica
//! holds the singleton lease.

use prometheus::{
    HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

/// The store's metrics, registered in the control plane's registry.
#[derive(Clone)]
pub struct StoreMetrics {
    calls: IntCounterVec,
    seconds: HistogramVec,
    /// 1 while the last call reached the store.
    pub(crate) up: IntGauge,
    /// Changes found stale at commit and checked again.
    pub(crate) stale: IntCounter,
    /// 1 while this replica does the singleton work.
    pub(crate) singleton: IntGauge,
}

impl StoreMetrics {
    /// Registers them in `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<StoreMetrics> {
        let calls = IntCounterVec::new(
            Opts::new(
                "weft_control_store_calls_total",
                "Calls to the control plane's store, by operation and outcome (ok, error, stale).",
            ),
            &["operation", "outcome"],
        )?;
        let seconds = HistogramVec::new(
            HistogramOpts::new(
                "weft_control_store_call_duration_seconds",
                "Time a call to the store took.",
            )
            .buckets(vec![1e-4, 5e-4, 1e-3, 5e-3, 1e-2, 5e-2, 0.1, 0.5, 1.0, 5.0]),
            &["operation"],
        )?;
        let up = IntGauge::new(
            "weft_control_store_up",
            "1 while the store answers this replica's calls, 0 after one failed.",
        )?;
        let stale = IntCounter::new(
            "weft_control_store_stale_commits_total",
            "Changes found stale at commit (another replica changed the mesh first) and checked again.",
        )?;
        let singleton = IntGauge::new(
            "weft_control_singleton",
            "1 while this replica holds the singleton lease (sweeps leases).",
        )?;
        registry.register(Box::new(calls.clone()))?;
        registry.register(Box::new(seconds.clone()))?;
        registry.register(Box::new(up.clone()))?;
        registry.register(Box::new(stale.clone()))?;
        registry.register(Box::new(singleton.clone()))?;
        up.set(1);
        Ok(StoreMetrics {
            calls,
            seconds,
            up,
            stale,
            singleton,
        })
    }

    /// Records one call of `operation` that took `seconds` and ended as `outcome`.
    pub(crate) fn observe(&self, operation: &str, outcome: &str, seconds: f64) {
        self.calls.with_label_values(&[operation, outcome]).inc();
        self.seconds
            .with_label_values(&[operation])
            .observe(seconds);
        match outcome {
            "error" => self.up.set(0),
            _ => self.up.set(1),
        }
    }
}
