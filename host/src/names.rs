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
    resolve(host).map_err(|why| match why {
        NotAService::Wildcard => format!("{host:?}: wildcard hosts are not supported by Weft yet"),
        NotAService::Malformed => format!(
            "{host:?} is not a service host (expected `name` or `name.{WORKLOAD_NAMESPACE}.svc.{CLUSTER_DOMAIN}`)"
        ),
        NotAService::OtherNamespace { service, namespace } => format!(
            "{host:?} is service {service} in namespace {namespace}: every Weft service is in namespace {WORKLOAD_NAMESPACE} (other namespaces are not supported yet)"
        ),
        NotAService::Outside => format!(
            "{host:?} names no Weft service: services are `name` or `name.{WORKLOAD_NAMESPACE}.svc.{CLUSTER_DOMAIN}`, all in namespace {WORKLOAD_NAMESPACE} (other namespaces, and hosts outside the mesh, which need a ServiceEntry, are not supported yet)"
        ),
    })
}

/// [`service_of_host`] without the explanation: what the data plane asks of every call's
/// authority, so it allocates nothing.
pub fn service_name(host: &str) -> Option<&str> {
    resolve(host).ok()
}

/// Why a host names no Weft service.
enum NotAService<'a> {
    Wildcard,
    Malformed,
    OtherNamespace {
        service: &'a str,
        namespace: &'a str,
    },
    Outside,
}

fn resolve(host: &str) -> Result<&str, NotAService<'_>> {
    if host.contains('*') {
        return Err(NotAService::Wildcard);
    }
    let (service, rest) = match host.split_once('.') {
        Some((first, rest)) => (first, Some(rest)),
        None => (host, None),
    };
    if host.contains(['/', ':', ' ']) || !is_dns_label(service) {
        return Err(NotAService::Malformed);
    }
    let Some(rest) = rest else {
        return Ok(service);
    };
    let (namespace, tail) = match rest.split_once('.') {
        Some((ns, tail)) => (ns, Some(tail)),
        None => (rest, None),
    };
    // What may follow the namespace: `svc`, then the cluster domain, label by label.
    let svc_suffix = tail.is_some_and(|t| {
        label_prefix("svc", t)
            || t.strip_prefix("svc.")
                .is_some_and(|d| label_prefix(CLUSTER_DOMAIN, d))
    });
    match (tail, svc_suffix) {
        (None, _) | (Some(_), true) if namespace == WORKLOAD_NAMESPACE => Ok(service),
        // `name.ns.svc...`: unambiguously another namespace.
        (Some(_), true) => Err(NotAService::OtherNamespace { service, namespace }),
        _ => Err(NotAService::Outside),
    }
}

/// Whether `part` is `whole`'s first labels (`cluster` of `cluster.local`, or all of it).
fn label_prefix(whole: &str, part: &str) -> bool {
    whole == part || (whole.starts_with(part) && whole.as_bytes().get(part.len()) == Some(&b'.'))
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
