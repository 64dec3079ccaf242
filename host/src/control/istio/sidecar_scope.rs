//! Istio's `Sidecar` resource (`networking.istio.io`): what a workload's sidecar is given.
//! `egress[].hosts` (`<namespace>/<host>`) limits the services in its snapshot, and so what it
//! compiles and can call by name; `outboundTrafficPolicy.mode: REGISTRY_ONLY` refuses calls to
//! destinations outside that list instead of passing them through. Istio's levels: a Sidecar
//! with a `workloadSelector` for the workloads it selects, else its namespace's Sidecar without
//! one, else the root namespace's.

use super::*;

/// A Sidecar's spec.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SidecarScope {
    /// The workloads it is for; absent: its namespace's (or, in the root namespace, all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workload_selector: Option<SidecarSelector>,
    /// What the workload may reach.
    #[serde(default)]
    pub egress: Vec<Egress>,
    /// What happens to calls to destinations not in the registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbound_traffic_policy: Option<OutboundTrafficPolicy>,
}

/// Istio's `WorkloadSelector` (`labels`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SidecarSelector {
    /// Labels the workload must carry.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// Istio's `IstioEgressListener`, without a port: every port.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Egress {
    /// `<namespace>/<host>`: `*/`, `./` (its own), `~/` (none) or a namespace; `*`, `*.suffix`
    /// or a host.
    pub hosts: Vec<String>,
}

/// Istio's `OutboundTrafficPolicy`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutboundTrafficPolicy {
    /// `ALLOW_ANY` (default) or `REGISTRY_ONLY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

/// Fields of Istio's Sidecar Weft refuses.
pub(in crate::control) const SIDECAR_UNSUPPORTED: Unsupported = &[
    ("", &["ingress", "inboundConnectionPool"]),
    ("egress[]", &["port", "bind", "captureMode"]),
    ("outboundTrafficPolicy", &["egressProxy"]),
];

impl SidecarScope {
    /// Its level in `namespace`, as PeerAuthentication's are read (none: it selects nothing).
    pub fn scope(&self, namespace: &str) -> Option<PeerAuthnScope> {
        self.as_policy().scope(namespace)
    }

    /// Whether it, in namespace `own`, is for a workload in `namespace` carrying `labels`.
    pub fn selects(&self, own: &str, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        self.as_policy().selects(own, namespace, labels)
    }

    /// Its selector as a PeerAuthentication's, whose levels Istio reads the same way.
    fn as_policy(&self) -> PeerAuthentication {
        PeerAuthentication {
            selector: self.workload_selector.as_ref().map(|s| WorkloadSelector {
                match_labels: s.labels.clone(),
            }),
            mtls: None,
        }
    }

    /// Whether a workload in `namespace` under this Sidecar may reach the service `key`
    /// (`name.namespace`) of a mesh in `domain`; true when it has no `egress`.
    pub fn admits(&self, namespace: &str, key: &str, domain: &str) -> bool {
        if self.egress.is_empty() {
            return true;
        }
        let (name, ns) = crate::names::key_parts(key);
        // A ServiceEntry's host is matched as written.
        let outside = crate::names::is_external_key(key);
        let fqdn = if outside {
            key.to_string()
        } else {
            format!("{name}.{ns}.svc.{domain}")
        };
        self.egress.iter().flat_map(|e| &e.hosts).any(|h| {
            let Some((want_ns, host)) = h.split_once('/') else {
                return false;
            };
            let ns_ok = match want_ns {
                "*" => true,
                "." => ns == namespace,
                "~" => false,
                _ if outside => true,
                other => other == ns,
            };
            let host_ok = match host.strip_prefix('*') {
                Some("") => true,
                Some(suffix) => fqdn.ends_with(suffix),
                None => host == fqdn,
            };
            ns_ok && host_ok
        })
    }

    /// Whether calls to destinations outside the registry are refused.
    pub fn registry_only(&self) -> bool {
        self.outbound_traffic_policy
            .as_ref()
            .and_then(|p| p.mode.as_deref())
            == Some("REGISTRY_ONLY")
    }
}

pub(super) fn check_sidecar(s: &SidecarScope, problems: &mut Problems) {
    for (i, e) in s.egress.iter().enumerate() {
        if e.hosts.is_empty() {
            problems.at(
                format!("spec.egress[{i}].hosts"),
                "must name at least one host",
            );
        }
        for (j, h) in e.hosts.iter().enumerate() {
            let at = format!("spec.egress[{i}].hosts[{j}]");
            let Some((ns, host)) = h.split_once('/') else {
                problems.at(
                    at,
                    format!("{h:?} must be <namespace>/<host> (`*/`, `./`, `~/` or a namespace)"),
                );
                continue;
            };
            if !matches!(ns, "*" | "." | "~") && !is_dns_label(ns) {
                problems.at(&at, format!("{ns:?} is not a namespace, `*`, `.` or `~`"));
            }
            let wildcard_ok = host
                .strip_prefix("*.")
                .is_some_and(|rest| !rest.is_empty() && !rest.contains('*'));
            if !(host == "*" || wildcard_ok || (!host.contains('*') && is_dns_subdomain(host))) {
                problems.at(&at, format!("{host:?} is not a host, `*` or `*.<suffix>`"));
            }
        }
    }
    if let Some(mode) = s
        .outbound_traffic_policy
        .as_ref()
        .and_then(|p| p.mode.as_deref())
        && !matches!(mode, "ALLOW_ANY" | "REGISTRY_ONLY")
    {
        problems.at(
            "spec.outboundTrafficPolicy.mode",
            format!("unknown mode {mode:?} (known: ALLOW_ANY, REGISTRY_ONLY)"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sidecar(hosts: &[&str]) -> SidecarScope {
        SidecarScope {
            egress: vec![Egress {
                hosts: hosts.iter().map(|h| h.to_string()).collect(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn egress_hosts_admit_services_as_istio_reads_them() {
        let d = "cluster.local";
        let s = sidecar(&[
            "./*",
            "shop/payments.shop.svc.cluster.local",
            "*/*.ops.svc.cluster.local",
        ]);
        assert!(s.admits("web", "orders.web", d), "its own namespace");
        assert!(s.admits("web", "payments.shop", d));
        assert!(!s.admits("web", "ledger.shop", d));
        assert!(s.admits("web", "grafana.ops", d), "a wildcard suffix");
        assert!(!s.admits("web", "grafana.other", d));
        assert!(!sidecar(&["~/*"]).admits("web", "orders.web", d));
        assert!(sidecar(&["*/*"]).admits("web", "x.y", d));
        assert!(
            SidecarScope::default().admits("web", "x.y", d),
            "no egress: everything"
        );
    }

    #[test]
    fn bad_hosts_and_modes_are_refused_by_path() {
        let mut problems = Problems::default();
        let mut s = sidecar(&["payments", "Bad_NS/*", "*/a*b"]);
        s.outbound_traffic_policy = Some(OutboundTrafficPolicy {
            mode: Some("DENY".into()),
        });
        check_sidecar(&s, &mut problems);
        let all = problems.0.join("\n");
        for needle in [
            "spec.egress[0].hosts[0]: \"payments\" must be <namespace>/<host>",
            "spec.egress[0].hosts[1]: \"Bad_NS\" is not a namespace",
            "spec.egress[0].hosts[2]: \"a*b\" is not a host",
            "spec.outboundTrafficPolicy.mode: unknown mode \"DENY\"",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }
}
