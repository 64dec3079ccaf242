//! The inbound side of a snapshot: the PeerAuthentication mode in force for a workload.

use super::*;

/// The mTLS mode in force for a workload carrying `labels`: per level (mesh, namespace,
/// workload) the first selecting policy in the catalog's order, then the most specific level
/// that sets a mode.
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
