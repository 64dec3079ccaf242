//! Which namespaces see a resource; the names themselves are `crate::names`'.

pub use crate::names::{CLUSTER_DOMAIN, WORKLOAD_NAMESPACE, service_of_host};

/// Whether a resource in namespace `default` with this `exportTo` is visible to Weft's
/// sidecars, which are all in `default`: absent, `*`, `.` (its own namespace) or `default`
/// are; a list of other namespaces, or `~` (none), is not.
pub fn exported_to_workloads(export_to: &[String]) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|n| n == "*" || n == "." || n == WORKLOAD_NAMESPACE)
}

/// Istio's root namespace: an AuthorizationPolicy there applies mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";
