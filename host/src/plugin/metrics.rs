//! Metrics: the runtime's own (calls, durations, failures, instances per plugin) and the ones
//! plugins define through the host, kept in the same Prometheus registry.
//!
//! Plugin metrics are resolved in two steps so the hot path is an index: a label set becomes
//! a series id once, then samples are recorded against ids in batches. Each metric's series
//! are bounded; past the bound, samples land in one `overflow` series.

use super::types::Hook;
use parking_lot::RwLock;
use prometheus::{
    Counter, CounterVec, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, Opts, Registry,
};
use std::collections::HashMap;

/// The runtime's metrics about plugins.
#[derive(Clone)]
pub struct RuntimeMetrics {
    calls: IntCounterVec,
    duration: HistogramVec,
    failures: IntCounterVec,
    instances: IntCounterVec,
    overflow: IntCounterVec,
    /// Components whose compiled code came from the control plane rather than a compile here,
    /// by tier (`optimized`, `baseline`).
    pub(crate) imported: IntCounterVec,
}

impl RuntimeMetrics {
    /// Registers the runtime's metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let calls = IntCounterVec::new(
            Opts::new("weft_plugin_calls_total", "Plugin hook calls."),
            &["plugin", "hook"],
        )?;
        let duration = HistogramVec::new(
            HistogramOpts::new(
                "weft_plugin_call_duration_seconds",
                "Time spent in a plugin hook call (one call in 8 is timed).",
            )
            .buckets(vec![
                1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 1e-1,
            ]),
            &["plugin", "hook"],
        )?;
        let failures = IntCounterVec::new(
            Opts::new(
                "weft_plugin_failures_total",
                "Plugin calls that failed, by cause (deadline, memory, trap, instantiate, backing_off).",
            ),
            &["plugin", "hook", "cause"],
        )?;
        let instances = IntCounterVec::new(
            Opts::new(
                "weft_plugin_instances_created_total",
                "Plugin instances created (per worker, and to replace failed ones).",
            ),
            &["plugin"],
        )?;
        let overflow = IntCounterVec::new(
            Opts::new(
                "weft_plugin_metric_series_overflow_total",
                "Label sets a plugin asked for past its metric's series bound.",
            ),
            &["plugin", "metric"],
        )?;
        let imported = IntCounterVec::new(
            Opts::new(
                "weft_plugin_compiled_code_imported_total",
                "Components whose compiled code the control plane sent (compiled once there for this engine), so this process did not compile them, by tier: baseline code runs until the optimized code replaces it.",
            ),
            &["tier"],
        )?;
        for c in [&calls, &failures, &instances, &overflow] {
            registry.register(Box::new(c.clone()))?;
        }
        registry.register(Box::new(duration.clone()))?;
        registry.register(Box::new(imported.clone()))?;
        Ok(RuntimeMetrics {
            calls,
            duration,
            failures,
            instances,
            overflow,
            imported,
        })
    }

    /// Pre-resolved handles for one plugin, so a call touches no label map.
    pub(crate) fn for_plugin(&self, plugin: &str) -> PluginStats {
        let per_hook = |hook: Hook| {
            (
                self.calls.with_label_values(&[plugin, hook.name()]),
                self.duration.with_label_values(&[plugin, hook.name()]),
            )
        };
        PluginStats {
            name: plugin.to_string(),
            hooks: Hook::ALL.map(per_hook),
            failures: self.failures.clone(),
            instances: self.instances.with_label_values(&[plugin]),
        }
    }
}

/// Hook calls timed: one in this many.
pub(crate) const SAMPLE_EVERY: u32 = 8;

thread_local! {
    static SAMPLE_TICK: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// One plugin's call statistics.
pub(crate) struct PluginStats {
    name: String,
    hooks: [(IntCounter, Histogram); Hook::ALL.len()],
    failures: IntCounterVec,
    pub(crate) instances: IntCounter,
}

impl PluginStats {
    /// Whether to time this call: one in [`SAMPLE_EVERY`], per thread, with no shared state.
    pub(crate) fn sample(&self) -> bool {
        SAMPLE_TICK.with(|t| {
            let n = t.get().wrapping_add(1);
            t.set(n);
            n % SAMPLE_EVERY == 0
        })
    }

    pub(crate) fn call(&self, hook: Hook, took: Option<std::time::Duration>) {
        let (calls, duration) = &self.hooks[hook.index()];
        calls.inc();
        if let Some(took) = took {
            duration.observe(took.as_secs_f64());
        }
    }

    pub(crate) fn failure(&self, hook: Hook, cause: &str) {
        self.failures
            .with_label_values(&[self.name.as_str(), hook.name(), cause])
            .inc();
    }
}

/// A metric kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Counter.
    Counter,
    /// Gauge.
    Gauge,
    /// Histogram.
    Histogram,
}

enum Family {
    Counter(CounterVec),
    Gauge(GaugeVec),
    Histogram(HistogramVec),
}

enum Handle {
    Counter(Counter),
    Gauge(Gauge),
    Histogram(Histogram),
}

struct MetricEntry {
    owner: u32,
    owner_name: String,
    name: String,
    kind: Kind,
    labels: Vec<String>,
    buckets: Vec<f64>,
    family: Family,
    series: usize,
    overflow: Option<u32>,
}

struct SeriesEntry {
    owner: u32,
    handle: Handle,
}

#[derive(Default)]
struct Inner {
    metrics: Vec<MetricEntry>,
    by_name: HashMap<String, u32>,
    series: Vec<SeriesEntry>,
    series_index: HashMap<(u32, Vec<String>), u32>,
}

/// A metric as a plugin defines it.
#[derive(Debug, Clone, Copy)]
pub struct MetricDef<'a> {
    /// Its kind.
    pub kind: Kind,
    /// Its Prometheus name.
    pub name: &'a str,
    /// Its help text.
    pub help: &'a str,
    /// Its label names.
    pub labels: &'a [String],
    /// Histogram buckets; empty for the defaults.
    pub buckets: &'a [f64],
}

/// Metrics plugins define, owned by the host.
pub struct PluginMetrics {
    registry: Registry,
    runtime: RuntimeMetrics,
    max_series: usize,
    inner: RwLock<Inner>,
}

fn valid_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn valid_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && !name.starts_with("__")
}

impl PluginMetrics {
    /// Plugin metrics kept in `registry`, at most `max_series` label sets per metric.
    pub fn new(registry: Registry, runtime: RuntimeMetrics, max_series: usize) -> Self {
        PluginMetrics {
            registry,
            runtime,
            max_series: max_series.max(1),
            inner: RwLock::new(Inner::default()),
        }
    }

    /// Defines a metric for a plugin, or returns the plugin's earlier identical definition.
    pub fn define(&self, owner: u32, owner_name: &str, def: MetricDef<'_>) -> Result<u32, String> {
        let MetricDef {
            kind,
            name,
            help,
            labels,
            buckets,
        } = def;
        if !valid_metric_name(name) || name.starts_with("weft_") {
            return Err(format!(
                "invalid metric name {name:?}: use [a-zA-Z_:][a-zA-Z0-9_:]*, not starting with weft_"
            ));
        }
        if let Some(bad) = labels.iter().find(|l| !valid_label_name(l)) {
            return Err(format!("metric {name}: invalid label name {bad:?}"));
        }
        if buckets.windows(2).any(|w| w[0] >= w[1]) || buckets.iter().any(|b| !b.is_finite()) {
            return Err(format!(
                "metric {name}: buckets must be finite and ascending"
            ));
        }
        let mut inner = self.inner.write();
        if let Some(&id) = inner.by_name.get(name) {
            let m = &inner.metrics[id as usize];
            if m.owner_name != owner_name {
                return Err(format!(
                    "metric {name} belongs to plugin {:?}",
                    m.owner_name
                ));
            }
            if m.kind != kind
                || m.labels != labels
                || (kind == Kind::Histogram && !buckets.is_empty() && m.buckets != buckets)
            {
                return Err(format!(
                    "metric {name} is already defined with another kind, labels or buckets"
                ));
            }
            // A new build of the same plugin takes over its metrics.
            let id_usize = id as usize;
            inner.metrics[id_usize].owner = owner;
            let series: Vec<u32> = inner
                .series_index
                .iter()
                .filter(|((m, _), _)| *m == id)
                .map(|(_, s)| *s)
                .collect();
            for s in series {
                inner.series[s as usize].owner = owner;
            }
            return Ok(id);
        }
        let label_refs: Vec<&str> = labels.iter().map(String::as_str).collect();
        let help = if help.is_empty() { name } else { help };
        let family = match kind {
            Kind::Counter => Family::Counter(
                CounterVec::new(Opts::new(name, help), &label_refs).map_err(|e| e.to_string())?,
            ),
            Kind::Gauge => Family::Gauge(
                GaugeVec::new(Opts::new(name, help), &label_refs).map_err(|e| e.to_string())?,
            ),
            Kind::Histogram => {
                let mut opts = HistogramOpts::new(name, help);
                if !buckets.is_empty() {
                    opts = opts.buckets(buckets.to_vec());
                }
                Family::Histogram(HistogramVec::new(opts, &label_refs).map_err(|e| e.to_string())?)
            }
        };
        let registered = match &family {
            Family::Counter(v) => self.registry.register(Box::new(v.clone())),
            Family::Gauge(v) => self.registry.register(Box::new(v.clone())),
            Family::Histogram(v) => self.registry.register(Box::new(v.clone())),
        };
        registered.map_err(|e| format!("metric {name}: {e}"))?;
        let id = inner.metrics.len() as u32;
        inner.metrics.push(MetricEntry {
            owner,
            owner_name: owner_name.to_string(),
            name: name.to_string(),
            kind,
            labels: labels.to_vec(),
            buckets: buckets.to_vec(),
            family,
            series: 0,
            overflow: None,
        });
        inner.by_name.insert(name.to_string(), id);
        Ok(id)
    }

    /// Resolves a label set of a metric the plugin owns to a series id.
    pub fn series(&self, owner: u32, metric: u32, values: Vec<String>) -> Result<u32, String> {
        let key = (metric, values);
        if let Some(&id) = self.inner.read().series_index.get(&key) {
            return Ok(id);
        }
        let mut inner = self.inner.write();
        if let Some(&id) = inner.series_index.get(&key) {
            return Ok(id);
        }
        let (metric, values) = key;
        let max_series = self.max_series;
        let Some(m) = inner.metrics.get_mut(metric as usize) else {
            return Err(format!("unknown metric id {metric}"));
        };
        if m.owner != owner {
            return Err(format!("metric {} belongs to another plugin", m.name));
        }
        if values.len() != m.labels.len() {
            return Err(format!(
                "metric {} takes {} label values, got {}",
                m.name,
                m.labels.len(),
                values.len()
            ));
        }
        let overflowing = m.series >= max_series;
        if overflowing {
            self.runtime
                .overflow
                .with_label_values(&[m.owner_name.as_str(), m.name.as_str()])
                .inc();
            if let Some(id) = m.overflow {
                return Ok(id);
            }
        }
        let label_values: Vec<String> = if overflowing {
            vec!["overflow".to_string(); m.labels.len()]
        } else {
            values.clone()
        };
        let refs: Vec<&str> = label_values.iter().map(String::as_str).collect();
        let handle = match &m.family {
            Family::Counter(v) => Handle::Counter(v.with_label_values(&refs)),
            Family::Gauge(v) => Handle::Gauge(v.with_label_values(&refs)),
            Family::Histogram(v) => Handle::Histogram(v.with_label_values(&refs)),
        };
        let id = inner.series.len() as u32;
        inner.series.push(SeriesEntry { owner, handle });
        let m = &mut inner.metrics[metric as usize];
        if overflowing {
            m.overflow = Some(id);
        } else {
            m.series += 1;
            inner.series_index.insert((metric, values), id);
        }
        Ok(id)
    }

    /// Whether `series` is one of `owner`'s.
    pub fn known(&self, owner: u32, series: u32) -> bool {
        (self.inner.read().series.get(series as usize)).is_some_and(|e| e.owner == owner)
    }

    /// Adds `delta` to a counter (when not negative) or a gauge series of `owner`'s; false for
    /// an unknown or foreign series, or a histogram.
    pub fn add(&self, owner: u32, series: u32, delta: f64) -> bool {
        let inner = self.inner.read();
        let Some(entry) = inner
            .series
            .get(series as usize)
            .filter(|e| e.owner == owner)
        else {
            return false;
        };
        match &entry.handle {
            Handle::Counter(c) if delta >= 0.0 => c.inc_by(delta),
            Handle::Counter(_) => {}
            Handle::Gauge(g) => g.add(delta),
            Handle::Histogram(_) => return false,
        }
        true
    }

    /// The value of a counter or gauge series of `owner`'s; none for a histogram, an unknown
    /// or a foreign series.
    pub fn value(&self, owner: u32, series: u32) -> Option<f64> {
        let inner = self.inner.read();
        let entry = inner
            .series
            .get(series as usize)
            .filter(|e| e.owner == owner)?;
        match &entry.handle {
            Handle::Counter(c) => Some(c.get()),
            Handle::Gauge(g) => Some(g.get()),
            Handle::Histogram(_) => None,
        }
    }

    /// Records a batch of samples; samples for unknown or foreign series are dropped.
    pub fn record(&self, owner: u32, samples: impl Iterator<Item = (u32, f64)>) {
        let inner = self.inner.read();
        for (series, value) in samples {
            let Some(entry) = inner.series.get(series as usize) else {
                continue;
            };
            if entry.owner != owner || !value.is_finite() {
                continue;
            }
            match &entry.handle {
                Handle::Counter(c) if value >= 0.0 => c.inc_by(value),
                Handle::Counter(_) => {}
                Handle::Gauge(g) => g.set(value),
                Handle::Histogram(h) => h.observe(value),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def<'a>(kind: Kind, name: &'a str, labels: &'a [String]) -> MetricDef<'a> {
        MetricDef {
            kind,
            name,
            help: "",
            labels,
            buckets: &[],
        }
    }

    fn metrics(max_series: usize) -> (Registry, PluginMetrics) {
        let registry = Registry::new();
        let runtime = RuntimeMetrics::register(&registry).expect("register");
        let m = PluginMetrics::new(registry.clone(), runtime, max_series);
        (registry, m)
    }

    fn value(registry: &Registry, name: &str) -> Vec<(Vec<String>, f64)> {
        registry
            .gather()
            .into_iter()
            .filter(|f| f.name() == name)
            .flat_map(|f| f.get_metric().to_vec())
            .map(|m| {
                let labels = m
                    .get_label()
                    .iter()
                    .map(|l| l.value().to_string())
                    .collect();
                (labels, m.get_counter().get_value())
            })
            .collect()
    }

    #[test]
    fn series_are_bounded_with_an_overflow_series() {
        let (registry, m) = metrics(2);
        let id = m
            .define(
                1,
                "p",
                def(Kind::Counter, "p_calls_total", &["user".into()]),
            )
            .expect("define");
        let mut ids = Vec::new();
        for user in ["a", "b", "c", "d"] {
            ids.push(m.series(1, id, vec![user.into()]).expect("series"));
        }
        assert_eq!(
            ids[2], ids[3],
            "past the bound every label set shares the overflow series"
        );
        m.record(1, ids.iter().map(|&s| (s, 1.0)));
        let mut got = value(&registry, "p_calls_total");
        got.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(
            got,
            vec![
                (vec!["a".into()], 1.0),
                (vec!["b".into()], 1.0),
                (vec!["overflow".into()], 2.0)
            ]
        );
    }

    #[test]
    fn plugins_cannot_touch_each_others_metrics() {
        let (_registry, m) = metrics(10);
        let id = m
            .define(1, "p", def(Kind::Gauge, "p_g", &[]))
            .expect("define");
        let err = m.define(2, "q", def(Kind::Gauge, "p_g", &[])).unwrap_err();
        assert!(err.contains("belongs to plugin \"p\""), "{err}");
        assert!(m.series(2, id, vec![]).is_err());
        assert!(m.define(1, "p", def(Kind::Gauge, "weft_x", &[])).is_err());
    }
}
