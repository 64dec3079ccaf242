//! Istio's `ServiceEntry` (`networking.istio.io`): a service outside the mesh
//! (`MESH_EXTERNAL`) that callers reach through their sidecar by its host name, with the same
//! routing, retries and telemetry as a mesh service, over plain HTTP to its endpoints.
//! `resolution: STATIC` takes the endpoints' IP addresses; `DNS` resolves the endpoints' host
//! names (or, with none, the entry's host) when the sidecar connects. A `MESH_INTERNAL` entry
//! adds workloads to a mesh service by address, beside the ones that register (as Istio's
//! WorkloadEntry does): sidecars that serve the service but do not register themselves.

use super::*;

/// A ServiceEntry's spec.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServiceEntry {
    /// The host callers name (`api.example.com`).
    pub hosts: Vec<String>,
    /// Its port (Weft's services have one).
    pub ports: Vec<ServicePort>,
    /// `MESH_EXTERNAL` (default) or `MESH_INTERNAL`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
    /// `STATIC` or `DNS` (default `NONE`, refused).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resolution: Option<String>,
    /// Where it is served.
    #[serde(default)]
    pub endpoints: Vec<EntryEndpoint>,
}

/// Istio's `ServicePort`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServicePort {
    /// The port callers use.
    pub number: u16,
    /// `HTTP` (the one Weft carries to an external service).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Its name, which endpoints' `ports` refer to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The port endpoints serve it on (default: `number`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_port: Option<u16>,
}

/// Istio's `WorkloadEntry` as a ServiceEntry endpoint.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EntryEndpoint {
    /// An IP address (`STATIC`) or a host name (`DNS`).
    pub address: String,
    /// Its port per service port name.
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    /// Its labels.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// The identity it serves with (`MESH_INTERNAL`): the service's own, in Weft.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

/// What an entry adds to the snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct EntryService {
    /// The service's key: the host outside the mesh, or the mesh service's key.
    pub key: String,
    /// Its endpoints.
    pub endpoints: Vec<crate::snapshot::EndpointSpec>,
    /// `MESH_INTERNAL`: workloads of a mesh service.
    pub internal: bool,
}

/// Fields of Istio's ServiceEntry Weft refuses.
pub(in crate::control) const SERVICE_ENTRY_UNSUPPORTED: Unsupported = &[
    (
        "",
        &[
            "addresses",
            "workloadSelector",
            "subjectAltNames",
            "exportTo",
        ],
    ),
    ("endpoints[]", &["network", "locality", "weight"]),
];

impl ServiceEntry {
    /// Whether it adds workloads to a mesh service (`MESH_INTERNAL`).
    pub fn internal(&self) -> bool {
        self.location.as_deref() == Some("MESH_INTERNAL")
    }

    /// The snapshot service its host becomes, read in `namespace`: its key and endpoints.
    pub fn service(&self, namespace: &str) -> Option<EntryService> {
        let host = self.hosts.first()?;
        let internal = self.internal();
        let key = if internal {
            crate::names::service_of_host(host, namespace)
                .ok()?
                .into_owned()
        } else {
            host.to_ascii_lowercase()
        };
        let port = self.ports.first()?;
        let served = port.target_port.unwrap_or(port.number);
        let endpoints = if self.endpoints.is_empty() {
            vec![crate::snapshot::EndpointSpec {
                address: format!("{host}:{served}"),
                labels: BTreeMap::new(),
            }]
        } else {
            self.endpoints
                .iter()
                .map(|e| {
                    let p = port
                        .name
                        .as_ref()
                        .and_then(|n| e.ports.get(n).copied())
                        .unwrap_or(served);
                    let mut labels = e.labels.clone();
                    if internal {
                        // As a registered workload's: `app: <service>` unless it says otherwise.
                        let (name, _) = crate::names::key_parts(&key);
                        labels
                            .entry("app".to_string())
                            .or_insert_with(|| name.to_string());
                    }
                    crate::snapshot::EndpointSpec {
                        address: format!("{}:{p}", e.address),
                        labels,
                    }
                })
                .collect()
        };
        Some(EntryService {
            key,
            endpoints,
            internal,
        })
    }
}

pub(super) fn check_service_entry(se: &ServiceEntry, namespace: &str, problems: &mut Problems) {
    if se.internal() {
        check_internal(se, namespace, problems);
        return;
    }
    for (i, e) in se.endpoints.iter().enumerate() {
        if e.service_account.is_some() {
            problems.at(
                format!("spec.endpoints[{i}].serviceAccount"),
                "only with location MESH_INTERNAL (an outside host has no mesh identity)",
            );
        }
    }
    match se.hosts.as_slice() {
        [host] => {
            if host.contains('*') || !is_dns_subdomain(host) {
                problems.at(
                    "spec.hosts[0]",
                    format!(
                        "{host:?} is not a host name (wildcards are not supported by Weft yet)"
                    ),
                );
            } else if !crate::names::is_external_key(host) {
                problems.at(
                    "spec.hosts[0]",
                    format!("{host:?}: a host with fewer than two dots reads as a mesh service (`name.namespace`) in Weft; name it fully (`api.{host}`)"),
                );
            } else if host.ends_with(&format!(".svc.{}", crate::names::cluster_domain())) {
                problems.at(
                    "spec.hosts[0]",
                    format!("{host:?} is a mesh service's name"),
                );
            }
        }
        _ => problems.at(
            "spec.hosts",
            "give exactly one host (Weft's services have one name)",
        ),
    }
    match se.ports.as_slice() {
        [p] => {
            let protocol = p.protocol.as_deref().unwrap_or("HTTP");
            if protocol != "HTTP" {
                problems.at(
                    "spec.ports[0].protocol",
                    format!("{protocol} is not supported by Weft yet (it carries HTTP to external services)"),
                );
            }
        }
        _ => problems.at(
            "spec.ports",
            "give exactly one port (Weft's services have one)",
        ),
    }
    if let Some(l) = se.location.as_deref()
        && l != "MESH_EXTERNAL"
    {
        problems.at(
            "spec.location",
            format!("unknown location {l:?} (known: MESH_EXTERNAL, MESH_INTERNAL)"),
        );
    }
    let resolution = se.resolution.as_deref().unwrap_or("NONE");
    match resolution {
        "STATIC" => {
            if se.endpoints.is_empty() {
                problems.at("spec.endpoints", "STATIC resolution needs endpoints");
            }
            for (i, e) in se.endpoints.iter().enumerate() {
                if e.address.parse::<std::net::IpAddr>().is_err() {
                    problems.at(
                        format!("spec.endpoints[{i}].address"),
                        format!("{:?} is not an IP address (STATIC resolution)", e.address),
                    );
                }
            }
        }
        "DNS" | "DNS_ROUND_ROBIN" => {
            for (i, e) in se.endpoints.iter().enumerate() {
                if !is_dns_subdomain(&e.address) && e.address.parse::<std::net::IpAddr>().is_err() {
                    problems.at(
                        format!("spec.endpoints[{i}].address"),
                        format!("{:?} is not a host name or IP address", e.address),
                    );
                }
            }
        }
        other => problems.at(
            "spec.resolution",
            format!("{other} is not supported by Weft yet (STATIC and DNS are)"),
        ),
    }
    let names: Vec<&str> = se.ports.iter().filter_map(|p| p.name.as_deref()).collect();
    for (i, e) in se.endpoints.iter().enumerate() {
        for name in e.ports.keys() {
            if !names.contains(&name.as_str()) {
                problems.at(
                    format!("spec.endpoints[{i}].ports.{name}"),
                    "names no port of the entry",
                );
            }
        }
    }
}

/// A `MESH_INTERNAL` entry: one mesh service's host, one HTTP port, `STATIC` endpoints at the
/// addresses of their sidecars' inbound listeners, serving with the service's own identity.
fn check_internal(se: &ServiceEntry, namespace: &str, problems: &mut Problems) {
    let service = match se.hosts.as_slice() {
        [host] => match crate::names::service_of_host(host, namespace) {
            Ok(key) if !crate::names::is_external_key(&key) => Some(key.into_owned()),
            Ok(_) => {
                problems.at(
                    "spec.hosts[0]",
                    format!("{host:?} is outside the mesh: MESH_INTERNAL adds workloads to a mesh service (`name` or `name.<namespace>.svc.<domain>`)"),
                );
                None
            }
            Err(e) => {
                problems.at("spec.hosts[0]", e);
                None
            }
        },
        _ => {
            problems.at(
                "spec.hosts",
                "give exactly one host (Weft's services have one name)",
            );
            None
        }
    };
    match se.ports.as_slice() {
        [p] => {
            let protocol = p.protocol.as_deref().unwrap_or("HTTP");
            if !matches!(protocol, "HTTP" | "HTTP2" | "GRPC") {
                problems.at(
                    "spec.ports[0].protocol",
                    format!("{protocol} is not supported by Weft yet for MESH_INTERNAL (HTTP, HTTP2 and GRPC are: sidecars carry them)"),
                );
            }
        }
        _ => problems.at(
            "spec.ports",
            "give exactly one port (Weft's services have one)",
        ),
    }
    match se.resolution.as_deref().unwrap_or("NONE") {
        "STATIC" => {}
        other => problems.at(
            "spec.resolution",
            format!("{other} is not supported by Weft yet for MESH_INTERNAL (STATIC is: the workloads' sidecars by IP address)"),
        ),
    }
    if se.endpoints.is_empty() {
        problems.at("spec.endpoints", "MESH_INTERNAL adds workloads: give them");
    }
    let names: Vec<&str> = se.ports.iter().filter_map(|p| p.name.as_deref()).collect();
    for (i, e) in se.endpoints.iter().enumerate() {
        if e.address.parse::<std::net::IpAddr>().is_err() {
            problems.at(
                format!("spec.endpoints[{i}].address"),
                format!("{:?} is not an IP address (STATIC resolution)", e.address),
            );
        }
        for name in e.ports.keys() {
            if !names.contains(&name.as_str()) {
                problems.at(
                    format!("spec.endpoints[{i}].ports.{name}"),
                    "names no port of the entry",
                );
            }
        }
        if let (Some(account), Some(key)) = (&e.service_account, &service) {
            let (name, _) = crate::names::key_parts(key);
            if account != name {
                problems.at(
                    format!("spec.endpoints[{i}].serviceAccount"),
                    format!("{account:?}: a workload of {name} serves with {name}'s identity in Weft (its SPIFFE ID names the service), so the service account is {name:?}"),
                );
            }
        }
    }
}
