//! Service names as callers and resources write them: every Weft service is in namespace
//! `default`, and a host names one in any of the forms Kubernetes DNS gives it. Shared by the
//! control plane (reading resources) and the data plane (reading a caller's `Host`).

/// The namespace every Weft workload is in (its identity's `ns`).
pub const WORKLOAD_NAMESPACE: &str = "default";

/// The cluster domain of fully qualified service names (`payments.default.svc.cluster.local`).
pub const CLUSTER_DOMAIN: &str = "cluster.local";

/// The service a host names. Every Weft service lives in namespace `default`, so these all
/// name `payments`: `payments`, `payments.default`, `payments.default.svc` and
/// `payments.default.svc.cluster.local`. A host in another namespace, or outside the mesh
/// (`bookinfo.com`), names no Weft service and is refused rather than bound to its first label.
pub fn service_of_host(host: &str) -> Result<&str, String> {
    if host.contains('*') {
        return Err(format!(
            "{host:?}: wildcard hosts are not supported by Weft yet"
        ));
    }
    let mut labels = host.split('.');
    let first = labels.next().unwrap_or("");
    if host.contains(['/', ':', ' ']) || !is_dns_label(first) {
        return Err(format!(
            "{host:?} is not a service host (expected `name` or `name.{WORKLOAD_NAMESPACE}.svc.{CLUSTER_DOMAIN}`)"
        ));
    }
    let rest: Vec<&str> = labels.collect();
    let fqdn: Vec<&str> = std::iter::once("svc")
        .chain(CLUSTER_DOMAIN.split('.'))
        .collect();
    match rest.split_first() {
        None => Ok(first),
        Some((&namespace, tail)) if namespace == WORKLOAD_NAMESPACE && fqdn.starts_with(tail) => {
            Ok(first)
        }
        // `name.ns.svc...`: unambiguously another namespace.
        Some((&namespace, tail)) if !tail.is_empty() && fqdn.starts_with(tail) => Err(format!(
            "{host:?} is service {first} in namespace {namespace}: every Weft service is in namespace {WORKLOAD_NAMESPACE} (other namespaces are not supported yet)"
        )),
        Some(_) => Err(format!(
            "{host:?} names no Weft service: services are `name` or `name.{WORKLOAD_NAMESPACE}.svc.{CLUSTER_DOMAIN}`, all in namespace {WORKLOAD_NAMESPACE} (other namespaces, and hosts outside the mesh, which need a ServiceEntry, are not supported yet)"
        )),
    }
}

/// Whether `s` is a DNS label as Kubernetes names are: 1–63 of `a-z 0-9 -`, not starting or
/// ending with `-`.
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}
