//! Tracing for one sidecar from the Telemetry resources that select its workload and the mesh
//! configuration's providers, merged as Istio merges them: the mesh-wide Telemetry, then the
//! namespace's, then the workload's, each field a level sets (provider, sampling percentage,
//! span reporting, per side) overriding the level above; the mesh's default tracing provider
//! where none names one; Istio's 1% where no level sets a percentage.

use super::*;
use crate::control::istio::WorkloadMode;
use crate::control::mesh_config::{DEFAULT_SAMPLING, MeshConfig};
use crate::snapshot::{TraceSide, Tracing};

/// One side as the levels leave it.
#[derive(Clone)]
struct Side {
    provider: Option<String>,
    sampling: Option<f64>,
    report: bool,
}

pub(super) fn tracing(
    catalog: &Catalog,
    me: &Workload,
    labels: &BTreeMap<String, String>,
    mesh: &MeshConfig,
) -> Tracing {
    let mut levels: [Option<&crate::control::istio::Telemetry>; 3] = [None; 3];
    for (r, t) in &catalog.telemetries {
        let Some(scope) = t.scope(&r.namespace) else {
            continue;
        };
        if t.tracing.is_empty() || !t.selects(&r.namespace, &me.namespace, labels) {
            continue;
        }
        levels[scope as usize].get_or_insert(t);
    }
    let start = Side {
        provider: mesh.default_providers.tracing.first().cloned(),
        sampling: None,
        report: true,
    };
    // [client, server]
    let mut sides = [start.clone(), start];
    for t in levels.iter().flatten() {
        for entry in &t.tracing {
            let mode = entry
                .matches
                .as_ref()
                .and_then(|m| m.mode)
                .unwrap_or(WorkloadMode::ClientAndServer);
            let which: &[usize] = match mode {
                WorkloadMode::ClientAndServer => &[0, 1],
                WorkloadMode::Client => &[0],
                WorkloadMode::Server => &[1],
            };
            for &i in which {
                let side = &mut sides[i];
                if let Some(p) = entry.providers.first() {
                    side.provider = Some(p.name.clone());
                }
                if let Some(pct) = entry.random_sampling_percentage {
                    side.sampling = Some(pct);
                }
                if let Some(off) = entry.disable_span_reporting {
                    side.report = !off;
                }
            }
        }
    }
    let resolve = |side: &Side| -> Option<TraceSide> {
        let provider = mesh.tracer(side.provider.as_deref()?)?;
        Some(TraceSide {
            endpoint: provider.endpoint(),
            timeout: provider.http.timeout.clone(),
            sampling: side.sampling.unwrap_or(DEFAULT_SAMPLING),
            report: side.report,
        })
    };
    Tracing {
        client: resolve(&sides[0]),
        server: resolve(&sides[1]),
    }
}
