//! The inbound side of a snapshot: the PeerAuthentication mode in force for a workload.

use super::*;

/// The mTLS mode in force for a workload carrying `labels`: per level (mesh, namespace,
/// workload) the first selecting policy in the catalog's order, then the most specific level
/// that sets a mode.
/// The access logging in force for workload `me`: the most specific Telemetry selecting it
/// that configures any (workload, then namespace, then mesh), as Istio resolves levels; of two
/// at one level, the first by name.
pub(super) fn access_logging(
    catalog: &Catalog,
    me: &Workload,
    labels: &BTreeMap<String, String>,
    mesh: &MeshConfig,
) -> crate::access_log::Sides {
    let mut levels: [Option<&crate::control::istio::Telemetry>; 3] = [None; 3];
    for (r, t) in &catalog.telemetries {
        let Some(scope) = t.scope(&r.namespace) else {
            continue;
        };
        if t.access_logging.is_empty() || !t.selects(&r.namespace, &me.namespace, labels) {
            continue;
        }
        levels[scope as usize].get_or_insert(t);
    }
    levels
        .iter()
        .rev()
        .flatten()
        .next()
        .map(|t| t.logging(mesh))
        .unwrap_or_default()
}

pub(super) fn peer_authentication(
    catalog: &Catalog,
    me: &Workload,
    labels: &BTreeMap<String, String>,
    warnings: &mut Vec<String>,
) -> Option<crate::snapshot::MtlsMode> {
    let mut levels: [Option<(&Resource, &PeerAuthentication)>; 3] = [None; 3];
    for (r, pa) in &catalog.peer_authentications {
        let Some(scope) = pa.scope(&r.namespace) else {
            continue;
        };
        if !pa.selects(&r.namespace, &me.namespace, labels) {
            continue;
        }
        let slot = &mut levels[scope as usize];
        match slot {
            None => *slot = Some((r, pa)),
            // Validation refuses two at the other levels.
            Some((first, _)) => warnings.push(format!(
                "{}: several PeerAuthentications select workload {} ({:?}); using {}",
                r.origin(),
                me.key(),
                labels,
                first.origin()
            )),
        }
    }
    // Most specific first: the first level that sets a mode wins.
    levels.iter().rev().flatten().find_map(|(_, pa)| pa.mode())
}
