//! Which of Istio's standard metrics one sidecar reports, from the Telemetry resources that
//! select its workload: the mesh-wide level's `metrics[].overrides`, then the namespace's, then
//! the workload's, each override turning the metrics it matches (`ALL_METRICS` by default) off
//! or back on (`disabled`) on the sides its mode names (both by default), as Istio merges them.

use super::*;
use crate::control::istio::{IstioMetric, WorkloadMode};
use crate::snapshot::{MetricsOff, STANDARD_METRICS};

pub(super) fn metrics_off(
    catalog: &Catalog,
    me: &Workload,
    labels: &BTreeMap<String, String>,
) -> MetricsOff {
    let mut levels: [Option<&crate::control::istio::Telemetry>; 3] = [None; 3];
    for (r, t) in &catalog.telemetries {
        let Some(scope) = t.scope(&r.namespace) else {
            continue;
        };
        if t.metrics.is_empty() || !t.selects(&r.namespace, &me.namespace, labels) {
            continue;
        }
        levels[scope as usize].get_or_insert(t);
    }
    // [client, server]: the metrics off on each side.
    let mut off: [BTreeSet<&str>; 2] = Default::default();
    for t in levels.iter().flatten() {
        for o in t.metrics.iter().flat_map(|m| &m.overrides) {
            let Some(disabled) = o.disabled else { continue };
            let selector = o.matches.unwrap_or_default();
            let names = selector.metric.unwrap_or(IstioMetric::AllMetrics).names();
            let sides: &[usize] = match selector.mode.unwrap_or(WorkloadMode::ClientAndServer) {
                WorkloadMode::ClientAndServer => &[0, 1],
                WorkloadMode::Client => &[0],
                WorkloadMode::Server => &[1],
            };
            for &side in sides {
                for name in names {
                    if disabled {
                        off[side].insert(name);
                    } else {
                        off[side].remove(name);
                    }
                }
            }
        }
    }
    // In the standard order, so equal settings give equal snapshots.
    let list = |set: &BTreeSet<&str>| -> Vec<String> {
        STANDARD_METRICS
            .iter()
            .filter(|m| set.contains(*m))
            .map(|m| m.to_string())
            .collect()
    };
    MetricsOff {
        client: list(&off[0]),
        server: list(&off[1]),
    }
}

/// The HTTP metrics among `off`, for the telemetry plugin's `disabled`.
pub(super) fn http_off(off: &[String]) -> Vec<String> {
    off.iter()
        .filter(|m| !m.starts_with("istio_tcp_"))
        .cloned()
        .collect()
}
