//! Which namespaces see a resource; the names themselves are `crate::names`'.

pub use crate::names::{DEFAULT_NAMESPACE, cluster_domain, service_of_host};

/// Whether a resource in namespace `own` with this `exportTo` is visible to sidecars in
/// namespace `viewer`, as Istio reads it: absent or `*` is every namespace, `.` its own, `~`
/// none, and any other entry a namespace by name.
pub fn exported_to(export_to: &[String], own: &str, viewer: &str) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|n| n == "*" || (n == "." && own == viewer) || n == viewer)
}

/// Istio's root namespace: an AuthorizationPolicy there applies mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";
