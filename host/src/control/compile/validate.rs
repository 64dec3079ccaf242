//! The checks that need several resources together: one resource per kind, namespace and
//! name, one VirtualService and DestinationRule per service, the subsets and routes resources
//! name, stored artifacts; and the warnings for what Istio would also ignore.

use super::*;

/// Checks resources together, as they would stand once applied: the subsets routes name, one
/// VirtualService and one DestinationRule per service, one resource per kind, namespace and
/// name, WasmPlugin names, and that stored artifacts exist (`artifact_known` takes the hex
/// digest). Each resource was checked on its own when read. Returns the warnings, or every error.
pub fn validate(
    resources: &[Resource],
    artifact_known: &dyn Fn(&str) -> bool,
) -> Result<Vec<String>, Vec<String>> {
    let mut errors = Vec::new();
    let mut warnings = Vec::new();

    let mut seen: BTreeMap<(Kind, &str, &str), &Resource> = BTreeMap::new();
    for r in resources {
        let key = (r.kind, r.namespace.as_str(), r.name.as_str());
        match seen.get(&key) {
            Some(first) => errors.push(format!(
                "{}: {} {}/{} is defined twice (first by {})",
                r.origin(),
                r.kind,
                r.namespace,
                r.name,
                first.origin()
            )),
            None => {
                seen.insert(key, r);
            }
        }
    }

    let catalog = Catalog::new(resources, None);
    for (service, list) in &catalog.virtual_services {
        for (r, _) in list.iter().skip(1) {
            errors.push(format!(
                "{}: spec.hosts: {service} is already routed by {}; Weft takes one VirtualService, HTTPRoute or GRPCRoute per host",
                r.origin(),
                list[0].0.origin()
            ));
        }
    }
    for (service, list) in &catalog.destination_rules {
        for (r, _) in list.iter().skip(1) {
            errors.push(format!(
                "{}: spec.host: {service} already has {}; Weft takes one DestinationRule per host",
                r.origin(),
                list[0].0.origin()
            ));
        }
    }

    // Istio keeps the oldest of several namespace-wide (or mesh-wide) policies; Weft keeps no
    // creation times, so it refuses the ambiguity instead of picking by name.
    let mut wide: BTreeMap<&str, &Resource> = BTreeMap::new();
    for (r, pa) in &catalog.peer_authentications {
        if !matches!(
            pa.scope(&r.namespace),
            Some(PeerAuthnScope::Mesh | PeerAuthnScope::Namespace)
        ) {
            continue;
        }
        match wide.get(r.namespace.as_str()) {
            Some(first) => errors.push(format!(
                "{}: spec.selector: namespace {} already has a {} PeerAuthentication ({}); Weft takes one per namespace (give this one a selector or merge them)",
                r.origin(),
                r.namespace,
                if r.namespace == crate::control::istio::ROOT_NAMESPACE {
                    "mesh-wide"
                } else {
                    "namespace-wide"
                },
                first.origin()
            )),
            None => {
                wide.insert(r.namespace.as_str(), r);
            }
        }
    }

    let mut wasm_names: BTreeMap<&str, &Resource> = BTreeMap::new();
    for r in resources {
        match &r.spec {
            Spec::VirtualService(vs)
            | Spec::GatewayHttpRoute(crate::control::istio::GatewayHttpRoute {
                mesh: vs, ..
            })
            | Spec::GatewayGrpcRoute(crate::control::istio::GatewayGrpcRoute {
                mesh: vs, ..
            }) => {
                check_subsets(r, vs, &catalog, &mut errors);
                warn_virtual_service(r, vs, &mut warnings);
            }
            Spec::DestinationRule(dr) => warn_destination_rule(r, dr, &mut warnings),
            Spec::AuthorizationPolicy(ap) => warn_authorization_policy(r, ap, &mut warnings),
            Spec::PeerAuthentication(pa) => warn_peer_authentication(r, pa, &mut warnings),
            Spec::ServiceEntry(_) => {}
            Spec::Sidecar(s) => {
                if s.scope(&r.namespace).is_none() {
                    warnings.push(format!(
                        "{}: a Sidecar with a workloadSelector in the root namespace selects no workload (as in Istio)",
                        r.origin()
                    ));
                }
            }
            Spec::Telemetry(t) => {
                if t.scope(&r.namespace).is_none() {
                    warnings.push(format!(
                        "{}: a Telemetry with a selector in the root namespace selects no workload (as in Istio)",
                        r.origin()
                    ));
                }
            }
            Spec::WasmPlugin(wp) => {
                if let Some(first) = wasm_names.get(r.name.as_str()) {
                    if first.namespace != r.namespace {
                        errors.push(format!(
                            "{}: metadata.name: a WasmPlugin {} is also in namespace {} ({}); plugin names are mesh-wide in Weft",
                            r.origin(),
                            r.name,
                            first.namespace,
                            first.origin()
                        ));
                    }
                } else {
                    wasm_names.insert(r.name.as_str(), r);
                }
                check_routes(r, wp, &catalog, &mut errors);
                if BUILTIN_NAMES.contains(&r.name.as_str())
                    && wp.traffic.iter().any(|t| !t.ports.is_empty())
                {
                    errors.push(format!(
                        "{}: spec.match[].ports: {} is a new build of the built-in {} and takes its place on every port; it cannot be scoped to ports",
                        r.origin(),
                        r.name,
                        r.name
                    ));
                }
                if let Ok(WasmSource::Stored(hex)) = wp.source()
                    && !artifact_known(&hex)
                {
                    errors.push(format!(
                        "{}: spec.url: no artifact sha256:{hex} in the store",
                        r.origin()
                    ));
                }
                // A pull policy is for what is fetched by URL; files and stored artifacts are
                // not pulled.
                let pulled = matches!(wp.source(), Ok(WasmSource::Http(_)));
                for (field, value) in [
                    (
                        "imagePullPolicy",
                        wp.image_pull_policy.as_ref().filter(|_| !pulled),
                    ),
                    ("pluginName", wp.plugin_name.as_ref()),
                ] {
                    if value.is_some() {
                        warnings.push(format!(
                            "{}: spec.{field}: ignored: Weft loads one component by URL or digest",
                            r.origin()
                        ));
                    }
                }
            }
        }
    }

    if errors.is_empty() {
        Ok(warnings)
    } else {
        Err(errors)
    }
}

pub(super) fn check_subsets(
    r: &Resource,
    vs: &VirtualService,
    catalog: &Catalog,
    errors: &mut Vec<String>,
) {
    for (i, entry) in vs.http.iter().enumerate() {
        for (j, d) in entry.route.iter().enumerate() {
            let (Some(subset), Ok(service)) = (
                &d.destination.subset,
                service_of_host(&d.destination.host, &r.namespace),
            ) else {
                continue;
            };
            let at = format!(
                "{}: spec.http[{i}].route[{j}].destination.subset",
                r.origin()
            );
            match Catalog::for_service(&catalog.destination_rules, &service) {
                None => errors.push(format!(
                    "{at}: unknown subset {subset} of {service} (no DestinationRule for {service})"
                )),
                Some((dr_resource, dr)) if !dr.subsets.iter().any(|s| &s.name == subset) => {
                    let defined: Vec<&str> = dr.subsets.iter().map(|s| s.name.as_str()).collect();
                    let defined = if defined.is_empty() {
                        "no subsets".to_string()
                    } else {
                        defined.join(", ")
                    };
                    errors.push(format!(
                        "{at}: unknown subset {subset} of {service} (DestinationRule {} defines {defined})",
                        dr_resource.name
                    ));
                }
                Some(_) => {}
            }
        }
    }
}

/// A route-scoped WasmPlugin: its routes are `http` entry names of its one target service's
/// VirtualService, and it is not a new build of a built-in (those keep the built-in's place,
/// for every route).
pub(super) fn check_routes(
    r: &Resource,
    wp: &WasmPlugin,
    catalog: &Catalog,
    errors: &mut Vec<String>,
) {
    if wp.routes.is_empty() {
        return;
    }
    let at = format!("{}: {ROUTES_PATH}", r.origin());
    if BUILTIN_NAMES.contains(&r.name.as_str()) {
        errors.push(format!(
            "{at}: {} is a new build of the built-in {} and takes its place on every route; it cannot be scoped to routes",
            r.name, r.name
        ));
    }
    // Exactly one target is checked when the document is read.
    let targets = wp.targets(&r.namespace);
    let Some(service) = targets.first().filter(|_| targets.len() == 1) else {
        return;
    };
    let vs = Catalog::for_service(&catalog.virtual_services, service);
    let known: Vec<&str> = vs
        .map(|(_, vs)| vs.http.iter().filter_map(|e| e.name.as_deref()).collect())
        .unwrap_or_default();
    for route in &wp.routes {
        if known.contains(&route.as_str()) {
            continue;
        }
        let why = match vs {
            None => format!("no VirtualService for {service}"),
            Some((vr, _)) if known.is_empty() => {
                format!("VirtualService {} names none of its http entries", vr.name)
            }
            Some((vr, _)) => format!("VirtualService {} names {}", vr.name, known.join(", ")),
        };
        errors.push(format!("{at}: unknown route {route} of {service} ({why})"));
    }
}

pub(super) fn warn_virtual_service(r: &Resource, vs: &VirtualService, warnings: &mut Vec<String>) {
    let origin = r.origin();
    let elsewhere: Vec<&str> = vs
        .gateways
        .iter()
        .map(String::as_str)
        .filter(|g| *g != "mesh")
        .collect();
    if !elsewhere.is_empty() {
        if vs.gateways.iter().any(|g| g == "mesh") {
            warnings.push(format!(
                "{origin}: spec.gateways: {} ignored: Weft has no gateways",
                elsewhere.join(", ")
            ));
        } else {
            warnings.push(format!(
                "{origin}: spec.gateways: these routes apply only at {}, and Weft runs no gateways: they reach no sidecar (as in Istio, which applies them to sidecars only when gateways is absent or lists mesh)",
                elsewhere.join(", ")
            ));
        }
    }
    if exported_nowhere(&vs.export_to) {
        warnings.push(format!(
            "{origin}: spec.exportTo: exported to no namespace (`~`): it reaches no sidecar (as in Istio)"
        ));
    }
    for (i, entry) in vs.http.iter().enumerate() {
        let Some(fault) = &entry.fault else { continue };
        let unset = [
            (
                "delay",
                fault
                    .delay
                    .as_ref()
                    .map(|d| d.percentage.is_none() && d.percent.is_none()),
            ),
            (
                "abort",
                fault
                    .abort
                    .as_ref()
                    .map(|a| a.percentage.is_none() && a.percent.is_none()),
            ),
        ];
        for (what, no_share) in unset {
            if no_share == Some(true) {
                warnings.push(format!(
                    "{origin}: spec.http[{i}].fault.{what}: no percentage, so it never applies (as in Istio); set percentage.value to 100 to apply it to every call"
                ));
            }
        }
    }
    for (i, entry) in vs.http.iter().enumerate() {
        if let Some(r) = &entry.retries
            && r.attempts.unwrap_or(0) == 0
            && (r.per_try_timeout.is_some() || r.retry_on.is_some())
        {
            warnings.push(format!(
                "{origin}: spec.http[{i}].retries: attempts is 0 or absent, so retries are off (as in Istio) and perTryTimeout and retryOn have no effect"
            ));
        }
    }
}

pub(super) fn warn_authorization_policy(
    r: &Resource,
    ap: &AuthorizationPolicy,
    warnings: &mut Vec<String>,
) {
    let principals = ap
        .rules
        .iter()
        .flat_map(|rule| &rule.from)
        .filter_map(|f| f.source.as_ref())
        .flat_map(|s| s.principals.iter().chain(&s.not_principals));
    for p in principals {
        if p.starts_with("cluster.local/") {
            warnings.push(format!(
                "{}: principal {p:?} names Istio's default trust domain; Weft compares principals exactly with its own trust domain's (--trust-domain, default weft.local)",
                r.origin()
            ));
        }
    }
}

pub(super) fn warn_peer_authentication(
    r: &Resource,
    pa: &PeerAuthentication,
    warnings: &mut Vec<String>,
) {
    use crate::control::istio::ROOT_NAMESPACE;
    if pa.scope(&r.namespace).is_none() {
        warnings.push(format!(
            "{}: spec.selector: ignored, as Istio does in the root namespace {ROOT_NAMESPACE}: selects no workload (put it in the workloads' namespace, or drop the selector for a mesh-wide policy)",
            r.origin()
        ));
    }
}

pub(super) fn warn_destination_rule(
    r: &Resource,
    dr: &DestinationRule,
    warnings: &mut Vec<String>,
) {
    if exported_nowhere(&dr.export_to) {
        warnings.push(format!(
            "{}: spec.exportTo: exported to no namespace (`~`): it reaches no sidecar (as in Istio)",
            r.origin()
        ));
    }
    let simple = dr
        .traffic_policy
        .as_ref()
        .and_then(|t| t.load_balancer.as_ref())
        .and_then(|l| l.simple.as_deref());
    if simple == Some("LEAST_CONN") {
        warnings.push(format!(
            "{}: spec.trafficPolicy.loadBalancer.simple: LEAST_CONN is Istio's deprecated name for LEAST_REQUEST",
            r.origin()
        ));
    }
}

/// Whether `exportTo` is Istio's `~` alone: visible to no sidecar.
fn exported_nowhere(export_to: &[String]) -> bool {
    !export_to.is_empty() && export_to.iter().all(|n| n == "~")
}
