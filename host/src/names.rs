//! Service names as callers and resources write them. A service is a name in a namespace
//! (`payments` in `shop`), and a host names one in any of the forms Kubernetes DNS gives it.
//! Shared by the control plane (reading resources) and the data plane (reading a caller's
//! `Host`).
//!
//! Inside Weft a service is known by its *key*: its name in namespace `default`, and
//! `name.namespace` in any other (`payments`, `payments.shop`). A key is itself a host that names
//! its service from anywhere in the mesh except a short name seen from another namespace, is a
//! prefix of the service's fully qualified name, and costs nothing to compare; snapshots,
//! registrations, tokens and metrics use it.

use std::borrow::Cow;
use std::sync::OnceLock;

/// The namespace of a resource or workload that names none.
pub const DEFAULT_NAMESPACE: &str = "default";

/// The cluster domain of fully qualified service names (`payments.default.svc.cluster.local`)
/// unless the process sets another.
pub const DEFAULT_CLUSTER_DOMAIN: &str = "cluster.local";

static CLUSTER_DOMAIN: OnceLock<Box<str>> = OnceLock::new();

/// The cluster domain this process reads hosts in: [`DEFAULT_CLUSTER_DOMAIN`] unless
/// [`set_cluster_domain`] chose another.
pub fn cluster_domain() -> &'static str {
    CLUSTER_DOMAIN.get().map_or(DEFAULT_CLUSTER_DOMAIN, |d| d)
}

/// Sets the cluster domain for the whole process, as Istio's `--domain` does for istiod and
/// its proxies: once, at start, before any host is read (`weft control --cluster-domain`, a
/// sidecar's bootstrap `clusterDomain`). Like Kubernetes' cluster domain it is one value per
/// mesh, so it is not threaded through every call that reads a host.
pub fn set_cluster_domain(domain: &str) -> Result<(), String> {
    check_domain(domain)?;
    let set = CLUSTER_DOMAIN.get_or_init(|| domain.into());
    if &**set != domain {
        return Err(format!(
            "the cluster domain is already {set:?}; it is set once per process"
        ));
    }
    Ok(())
}

/// The key of service `name` in `namespace` (see the module's documentation).
pub fn service_key(name: &str, namespace: &str) -> String {
    if namespace == DEFAULT_NAMESPACE {
        name.to_string()
    } else {
        format!("{name}.{namespace}")
    }
}

/// A key's service name and namespace: `payments.shop` → (`payments`, `shop`).
pub fn key_parts(key: &str) -> (&str, &str) {
    key.split_once('.').unwrap_or((key, DEFAULT_NAMESPACE))
}

/// A key's fully qualified host: `payments.shop` → `payments.shop.svc.cluster.local`; a host
/// outside the mesh is its own.
pub fn fqdn(key: &str) -> String {
    if is_external_key(key) {
        return key.to_string();
    }
    let (name, namespace) = key_parts(key);
    format!("{name}.{namespace}.svc.{}", cluster_domain())
}

/// Checks a cluster domain: dot-separated DNS labels, at most 253 characters.
pub fn check_domain(domain: &str) -> Result<(), String> {
    if domain.len() > 253 || !domain.split('.').all(is_dns_label) {
        let shown: String = domain.chars().take(64).collect();
        return Err(format!(
            "{shown:?} is not a domain (dot-separated labels of a-z, 0-9 and '-')"
        ));
    }
    Ok(())
}

/// The service a resource's host names, as a key, read in the resource's `namespace`:
/// `payments` is the service in that namespace; `payments.shop.svc` and
/// `payments.shop.svc.cluster.local` (in the [`cluster_domain`]) the one in `shop`;
/// `payments.shop` too when `shop` is the
/// resource's namespace or `default`. A host of three labels or more that is not a mesh
/// service's (`api.example.com`) names a host outside the mesh, a ServiceEntry's, keyed by
/// itself. Any other two-label host (`bookinfo.com`) is read by Istio as a host outside the
/// mesh too, but Weft's ServiceEntries cannot name it (it reads as `name.namespace`), so it is
/// refused rather than bound to a service it was probably not meant for; so are wildcards, a
/// `name.ns.svc.<domain>` in another cluster domain, and anything else.
pub fn service_of_host<'a>(host: &'a str, namespace: &str) -> Result<Cow<'a, str>, String> {
    let domain = cluster_domain();
    resolve(host, namespace, true).map_err(|why| match why {
        NotAService::Wildcard => format!(
            "{host:?}: a wildcard names no one service here (wildcards are for a VirtualService's or DestinationRule's hosts)"
        ),
        NotAService::Malformed => format!(
            "{host:?} is not a service host (expected `name` or `name.<namespace>.svc.{domain}`)"
        ),
        NotAService::Ambiguous { service, namespace: ns } => format!(
            "{host:?} names no mesh service as Istio reads it (a two-label host is a name outside the mesh, and Weft's ServiceEntries name hosts of three labels or more); for service {service} in namespace {ns}, write {service}.{ns}.svc.{domain}"
        ),
        NotAService::Outside => format!(
            "{host:?} names no Weft service: services are `name` or `name.<namespace>.svc.{domain}`, and hosts outside the mesh are DNS names of three labels or more"
        ),
    })
}

/// Whether a service key is a host outside the mesh (a ServiceEntry's): mesh keys are `name`
/// or `name.namespace`, so a key with two dots or more is never one.
pub fn is_external_key(key: &str) -> bool {
    key.matches('.').count() >= 2
}

/// The key of the service a caller's host names, read in the caller's `namespace`, without the
/// explanation: what the data plane asks of every call's authority. It borrows from `host`
/// except for a short name in a namespace other than `default`. `payments.shop` is read as
/// Kubernetes DNS reads it, as service `payments` in namespace `shop`; whether that service
/// exists is for the route table to say.
pub fn service_key_of<'a>(host: &'a str, namespace: &str) -> Option<Cow<'a, str>> {
    resolve(host, namespace, false).ok()
}

/// What a resource's host names: one service, or, for a wildcard, every service whose fully
/// qualified name ends with the suffix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostRef<'a> {
    /// One service, by key.
    Service(Cow<'a, str>),
    /// `*.shop.svc.cluster.local`: every service whose FQDN ends with `.shop.svc.cluster.local`.
    Wildcard(&'a str),
}

impl HostRef<'_> {
    /// Whether it names the service with key `key`.
    pub fn names(&self, key: &str) -> bool {
        match self {
            HostRef::Service(k) => k == key,
            HostRef::Wildcard(suffix) => wildcard_names(suffix, key),
        }
    }

    /// Its key among resources: the service's key, or the wildcard as written
    /// (`*.shop.svc.cluster.local`; no service key starts with `*`).
    pub fn key(&self) -> String {
        match self {
            HostRef::Service(k) => k.to_string(),
            HostRef::Wildcard(suffix) => format!("*.{suffix}"),
        }
    }

    /// Whether some service could be named by both.
    pub fn overlaps(&self, other: &HostRef) -> bool {
        match (self, other) {
            (HostRef::Service(a), HostRef::Service(b)) => a == b,
            (HostRef::Service(k), HostRef::Wildcard(s))
            | (HostRef::Wildcard(s), HostRef::Service(k)) => wildcard_names(s, k),
            (HostRef::Wildcard(a), HostRef::Wildcard(b)) => {
                let under = |long: &str, short: &str| {
                    long == short
                        || (long.ends_with(short)
                            && long.as_bytes()[long.len() - short.len() - 1] == b'.')
                };
                under(a, b) || under(b, a)
            }
        }
    }
}

/// Whether wildcard suffix `suffix` (the host after `*.`) names the service with key `key`.
pub fn wildcard_names(suffix: &str, key: &str) -> bool {
    // Wildcards name mesh services only (see [`host_ref`]).
    if is_external_key(key) {
        return false;
    }
    let fqdn = fqdn(key);
    fqdn.len() > suffix.len()
        && fqdn.ends_with(suffix)
        && fqdn.as_bytes()[fqdn.len() - suffix.len() - 1] == b'.'
}

/// A resource's host read in its `namespace` as Istio reads `hosts` and `host`: a service (see
/// [`service_of_host`]) or a wildcard over mesh services' fully qualified names
/// (`*.shop.svc.cluster.local`: shop's services; `*.svc.cluster.local`, `*.cluster.local`: all).
/// A wildcard that cannot name a mesh service (`*.example.com`, `*.shop`) is refused, as is
/// `*` alone, which Istio refuses for sidecars.
pub fn host_ref<'a>(host: &'a str, namespace: &str) -> Result<HostRef<'a>, String> {
    let Some(suffix) = host.strip_prefix("*.") else {
        if host == "*" {
            return Err(
                "\"*\": a wildcard for every host is not allowed for sidecars (as in Istio); use *.<namespace>.svc.<cluster domain>"
                    .to_string(),
            );
        }
        return service_of_host(host, namespace).map(HostRef::Service);
    };
    let domain = cluster_domain();
    let labels_ok = !suffix.is_empty() && suffix.split('.').all(is_dns_label);
    // The suffix must be the tail of some service's FQDN: `<ns>.svc.<domain>`, or the labels
    // of `svc.<domain>` from some point on.
    let svc_domain = format!("svc.{domain}");
    let names_mesh = labels_ok
        && (suffix
            .split_once('.')
            .is_some_and(|(_, rest)| rest == svc_domain)
            || svc_domain == suffix
            || svc_domain.ends_with(&format!(".{suffix}")));
    if names_mesh {
        Ok(HostRef::Wildcard(suffix))
    } else {
        Err(format!(
            "{host:?} names no mesh service: a wildcard host is *.<namespace>.svc.{domain} or a shorter tail of it (wildcards over hosts outside the mesh are not supported by Weft yet)"
        ))
    }
}

/// Why a host names no Weft service.
enum NotAService<'a> {
    Wildcard,
    Malformed,
    Ambiguous {
        service: &'a str,
        namespace: &'a str,
    },
    Outside,
}

fn resolve<'a>(host: &'a str, here: &str, strict: bool) -> Result<Cow<'a, str>, NotAService<'a>> {
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
        return Ok(if here == DEFAULT_NAMESPACE {
            Cow::Borrowed(service)
        } else {
            Cow::Owned(format!("{service}.{here}"))
        });
    };
    let (namespace, tail) = match rest.split_once('.') {
        Some((ns, tail)) => (ns, Some(tail)),
        None => (rest, None),
    };
    if !is_dns_label(namespace) {
        return Err(NotAService::Outside);
    }
    // What may follow the namespace: `svc`, then the cluster domain, label by label.
    let svc_suffix = tail.is_some_and(|t| {
        label_prefix("svc", t)
            || t.strip_prefix("svc.")
                .is_some_and(|d| label_prefix(cluster_domain(), d))
    });
    match tail {
        // A DNS name that is no mesh service's: a host outside the mesh, keyed by itself. One
        // that looks like a mesh name in another cluster domain is more likely a mistake.
        Some(t) if !svc_suffix => {
            return if t.starts_with("svc.") || !t.split('.').all(is_dns_label) {
                Err(NotAService::Outside)
            } else {
                Ok(Cow::Borrowed(host))
            };
        }
        None if strict && namespace != here && namespace != DEFAULT_NAMESPACE => {
            return Err(NotAService::Ambiguous { service, namespace });
        }
        _ => {}
    }
    Ok(if namespace == DEFAULT_NAMESPACE {
        Cow::Borrowed(service)
    } else {
        // `name.ns` is where the host starts.
        Cow::Borrowed(&host[..service.len() + 1 + namespace.len()])
    })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_dns_form_names_the_same_service_and_keys_name_namespaces() {
        for (host, here, key) in [
            ("payments", "default", "payments"),
            ("payments.default", "default", "payments"),
            ("payments.default.svc", "shop", "payments"),
            ("payments.default.svc.cluster.local", "shop", "payments"),
            ("payments", "shop", "payments.shop"),
            ("payments.shop", "shop", "payments.shop"),
            ("payments.shop.svc", "default", "payments.shop"),
            (
                "payments.shop.svc.cluster.local",
                "default",
                "payments.shop",
            ),
        ] {
            assert_eq!(service_of_host(host, here).as_deref(), Ok(key), "{host}");
            assert_eq!(service_key_of(host, here).as_deref(), Some(key), "{host}");
        }
        assert_eq!(key_parts("payments.shop"), ("payments", "shop"));
        assert_eq!(key_parts("payments"), ("payments", "default"));
        assert_eq!(service_key("payments", "shop"), "payments.shop");
        assert_eq!(service_key("payments", "default"), "payments");
    }

    #[test]
    fn hosts_outside_the_mesh_are_refused_in_resources_and_unrouted_in_calls() {
        for (host, words) in [
            ("bookinfo.com", "two-label host"),
            ("payments.shop", "payments.shop.svc.cluster.local"),
            ("payments.default.svc.example.org", "names no Weft service"),
            ("payments.a_b.svc", "names no Weft service"),
            ("api.Example.com", "names no Weft service"),
            ("*.default.svc.cluster.local", "wildcard"),
            ("Payments", "not a service host"),
            ("payments:80", "not a service host"),
        ] {
            let err = service_of_host(host, "default").expect_err(host);
            assert!(err.contains(words), "{host}: {err}");
        }
        // A caller's `bookinfo.com` is read as DNS would; no such service, so no route.
        assert_eq!(
            service_key_of("bookinfo.com", "default").as_deref(),
            Some("bookinfo.com")
        );
        assert_eq!(service_key_of("payments.example.com.", "default"), None);
    }

    #[test]
    fn hosts_of_three_labels_or_more_name_hosts_outside_the_mesh() {
        for host in [
            "api.example.com",
            "a.b.c.example.org",
            "payments.shop.example",
        ] {
            assert_eq!(service_of_host(host, "shop").as_deref(), Ok(host));
            assert_eq!(
                host_ref(host, "default"),
                Ok(HostRef::Service(Cow::Borrowed(host)))
            );
            assert!(is_external_key(host), "{host}");
        }
    }

    #[test]
    fn wildcards_name_the_services_under_them_and_only_mesh_ones() {
        for (host, key, named) in [
            ("*.shop.svc.cluster.local", "payments.shop", true),
            ("*.shop.svc.cluster.local", "payments", false),
            ("*.svc.cluster.local", "payments", true),
            ("*.cluster.local", "payments.shop", true),
            ("*.local", "payments.shop", true),
            ("*.default.svc.cluster.local", "payments", true),
        ] {
            let r = host_ref(host, "default").expect(host);
            assert_eq!(r.names(key), named, "{host} {key}");
        }
        assert_eq!(
            host_ref("payments", "shop"),
            Ok(HostRef::Service(
                Cow::Borrowed("payments.shop").into_owned().into()
            ))
        );
        for (host, words) in [
            ("*", "not allowed for sidecars"),
            ("*.shop", "names no mesh service"),
            ("*.example.com", "names no mesh service"),
            ("*.shop.svc.example.org", "names no mesh service"),
            ("*.*.svc.cluster.local", "names no mesh service"),
            ("a.*.svc.cluster.local", "wildcard"),
        ] {
            let err = host_ref(host, "default").expect_err(host);
            assert!(err.contains(words), "{host}: {err}");
        }
    }

    #[test]
    fn cluster_domains_are_dns_names() {
        for good in ["cluster.local", "corp.internal", "a"] {
            assert_eq!(check_domain(good), Ok(()), "{good}");
        }
        for bad in [
            "",
            "Corp.internal",
            "corp..internal",
            ".corp",
            "corp.internal.",
        ] {
            assert!(check_domain(bad).is_err(), "{bad:?}");
        }
    }
}
