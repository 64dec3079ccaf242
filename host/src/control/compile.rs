//! Istio resources, checked together and compiled into the snapshot one sidecar applies.
//!
//! Every sidecar gets every service the mesh knows (from the resources or from registered
//! workloads). For each service:
//!
//! - `subsets` are its DestinationRule's; `endpoints` its registered workloads (address and
//!   labels, each workload carrying `app: <its service>` unless it says otherwise);
//! - `timeout` is its VirtualService's when every `http` entry has the same (`0s` and absent
//!   are both none); otherwise none, and each entry's own goes into its canary entry, so it
//!   holds for exactly the calls that entry matches (see `route_policies`);
//! - `loadBalancer` is its DestinationRule's `trafficPolicy.loadBalancer.simple`
//!   (`LEAST_REQUEST`/`UNSPECIFIED` → `leastRequest`, `ROUND_ROBIN` → `roundRobin`,
//!   `RANDOM` → `random`);
//! - the plugin chain, in this order:
//!   1. WasmPlugins of phase `AUTHN`, then `AUTHZ` (within a phase: higher `priority` first,
//!      then by name, then namespace);
//!   2. `fault`, when every `http` entry has the same one;
//!   3. `canary`, carrying the VirtualService's `http` entries (name, match, route, timeout);
//!      none without a VirtualService, nor when its one entry sends everything, unmatched and
//!      unsplit, to the service itself (it would change nothing) — unless a plugin scoped to
//!      routes needs that entry's name; when any is, every entry is named (its own name, or
//!      `#<index>`);
//!   4. `fault@<route>`, one per distinct fault when entries differ, scoped to the routes that
//!      have it;
//!   5. route-scoped WasmPlugins (annotation `weft.io/routes`), whatever their phase: they
//!      need the route the canary names, so they come right after it (among themselves in
//!      phase, then priority order);
//!   6. `retry`: each entry's `retries`; Istio's default policy (2 attempts, connect failures
//!      and refused streams) for an entry with none, as Istio gives every route, a service's
//!      default route included; none for an entry whose `attempts` is 0 or absent, as Istio
//!      turns retries off. One plugin when every entry agrees, else `retry@<route>` per
//!      distinct policy, scoped to its routes;
//!   7. `outlier`, when the DestinationRule has `outlierDetection` (its fields as written);
//!   8. WasmPlugins of phase `STATS`;
//!   9. `telemetry`, always;
//!   10. WasmPlugins of no phase (`UNSPECIFIED_PHASE`): last, as Istio puts them just before
//!       the router.
//!
//! A WasmPlugin joins the chains of sidecar `me` when its `selector.matchLabels` are among the
//! workload's labels (or it has no selector), and only the chain of the services its
//! `targetRefs` name (or every chain); a WasmPlugin's namespace does not scope it. Every Weft
//! service is in namespace `default`: a VirtualService or DestinationRule elsewhere, or a host
//! naming another namespace or a name outside the mesh, is refused when read
//! (`istio::service_of_host`). A route-scoped WasmPlugin targets exactly one service and runs only for its
//! calls that took one of the named `http` entries.
//!
//! The snapshot's `inbound.authorization` holds the AuthorizationPolicies that select workload
//! `me`: in namespace `default` (every Weft workload's) or Istio's root namespace `istio-system`
//! (mesh-wide), with `selector.matchLabels` among its labels or no selector; in a fixed order
//! (namespace, then name). Principals are kept as written: the sidecar compares them exactly
//! with the caller's SPIFFE ID minus `spiffe://`, so they name Weft's trust domain
//! (`weft.local/ns/default/sa/orders`), not Istio's `cluster.local`.
//!
//! The snapshot's `inbound.peerAuthentication` is the mTLS mode Istio's PeerAuthentication
//! precedence gives workload `me`: a policy with `selector.matchLabels` among its labels (in
//! `default`) over the namespace-wide one (`default`, no selector) over the mesh-wide one
//! (`istio-system`, no selector); a level whose mode is `UNSET` (or has no `mtls`) inherits the
//! next. Absent when no level sets a mode: the sidecar keeps its bootstrap mode (Istio's default
//! would be PERMISSIVE). Istio ignores a selector in the root namespace; so does Weft, with a
//! warning. One namespace-wide policy per namespace and one mesh-wide policy (Istio keeps the
//! oldest, which Weft cannot tell); among several workload policies selecting one workload, the
//! first by namespace and name wins, with a warning.
//!
//! A snapshot's version is a digest of its content, so identical content has the identical
//! version and the control plane pushes only what changed.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use super::istio::{
    AuthorizationPolicy, DestinationRule, HttpRoute, IstioFailStrategy, Kind, PeerAuthentication,
    PeerAuthnScope, Phase, ROUTES_PATH, Resource, Spec, VirtualService, WasmPlugin, WasmSource,
    service_of_host,
};
use super::route_policies::{RoutePolicies, route_name};
use crate::plugin::FailStrategy;
use crate::snapshot::{EndpointSpec, PluginRef, Service, Snapshot};

/// The names the built-in plugins take in a chain; a WasmPlugin with one of them is a new
/// build of that built-in and takes its place.
pub const BUILTIN_NAMES: &[&str] = &crate::snapshot::BUILTINS;

/// Istio's default retries when a route sets none.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;

/// Istio's default `retryOn`.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes";

/// A registered service instance: what its sidecar is, and where callers reach it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// Its service (`payments`).
    pub service: String,
    /// Its labels (`version: v1`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its inbound sidecar, `ip:port`.
    pub address: String,
}

impl Workload {
    /// Its labels with `app: <service>` added unless it sets `app` itself, as selectors see them.
    pub fn effective_labels(&self) -> BTreeMap<String, String> {
        let mut labels = self.labels.clone();
        labels
            .entry("app".to_string())
            .or_insert_with(|| self.service.clone());
        labels
    }
}

/// A compiled snapshot and what compiling it had to decide that the resources left open.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Compiled {
    /// The snapshot, versioned.
    pub snapshot: Snapshot,
    /// Warnings (policies merged, plugins left out), each naming its resource.
    pub warnings: Vec<String>,
}

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

    let catalog = Catalog::new(resources);
    for (service, list) in &catalog.virtual_services {
        for (r, _) in list.iter().skip(1) {
            errors.push(format!(
                "{}: spec.hosts: {service} is already routed by {}; Weft takes one VirtualService per host",
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
                if r.namespace == super::istio::ROOT_NAMESPACE {
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
            Spec::VirtualService(vs) => {
                check_subsets(r, vs, &catalog, &mut errors);
                warn_virtual_service(r, vs, &mut warnings);
            }
            Spec::DestinationRule(dr) => warn_destination_rule(r, dr, &mut warnings),
            Spec::AuthorizationPolicy(ap) => warn_authorization_policy(r, ap, &mut warnings),
            Spec::PeerAuthentication(pa) => warn_peer_authentication(r, pa, &mut warnings),
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
                if let Ok(WasmSource::Stored(hex)) = wp.source()
                    && !artifact_known(&hex)
                {
                    errors.push(format!(
                        "{}: spec.url: no artifact sha256:{hex} in the store",
                        r.origin()
                    ));
                }
                for (field, value) in [
                    ("imagePullPolicy", &wp.image_pull_policy),
                    ("pluginName", &wp.plugin_name),
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

/// Compiles the snapshot for the sidecar of workload `me`. Deterministic: the same resources
/// and workloads, in any order, give the same snapshot and version.
pub fn compile(resources: &[Resource], workloads: &[Workload], me: &Workload) -> Compiled {
    let catalog = Catalog::new(resources);
    let mut warnings = Vec::new();

    let mut services: BTreeSet<&str> = BTreeSet::new();
    services.extend(catalog.virtual_services.keys().copied());
    services.extend(catalog.destination_rules.keys().copied());
    for (_, vs) in catalog
        .virtual_service_list
        .iter()
        .filter(|(_, vs)| vs.applies_to_mesh())
    {
        let hosts = vs.http.iter().flat_map(|e| &e.route);
        services.extend(hosts.filter_map(|d| service_of_host(&d.destination.host).ok()));
        // A mirror's service needs a route in every sidecar that may copy calls to it.
        let mirrored = vs.http.iter().flat_map(HttpRoute::all_mirrors);
        services.extend(mirrored.filter_map(|(d, _)| service_of_host(&d.host).ok()));
    }
    services.extend(workloads.iter().map(|w| w.service.as_str()));
    services.insert(me.service.as_str());
    services.remove("");

    for (service, list) in &catalog.virtual_services {
        if list.len() > 1 {
            warnings.push(format!(
                "{service}: several VirtualServices; using {}",
                list[0].0.origin()
            ));
        }
    }
    for (service, list) in &catalog.destination_rules {
        if list.len() > 1 {
            warnings.push(format!(
                "{service}: several DestinationRules; using {}",
                list[0].0.origin()
            ));
        }
    }

    // The WasmPlugins this sidecar runs, in chain order within each phase.
    let labels = me.effective_labels();
    let mut mine: Vec<(&Resource, &WasmPlugin, PluginRef)> = Vec::new();
    for (r, wp) in &catalog.wasm_plugins {
        if !wp.selects(&labels) {
            continue;
        }
        match wasm_plugin_ref(r, wp) {
            Ok(p) => mine.push((r, wp, p)),
            Err(w) => warnings.push(w),
        }
    }
    mine.sort_by(|a, b| {
        let key = |(r, wp, _): &(&Resource, &WasmPlugin, PluginRef)| {
            (
                wp.phase(),
                Reverse(wp.priority.unwrap_or(0)),
                r.name.clone(),
                r.namespace.clone(),
            )
        };
        key(a).cmp(&key(b))
    });

    let mut snapshot = Snapshot::default();
    for service in services {
        let vs = catalog
            .virtual_services
            .get(service)
            .and_then(|l| l.first());
        let dr = catalog
            .destination_rules
            .get(service)
            .and_then(|l| l.first());
        let applies = move |wp: &WasmPlugin| {
            let targets = wp.targets();
            targets.is_empty() || targets.contains(service)
        };
        // A WasmPlugin named like a built-in is a new build of that policy (see below).
        let overrides = |p: &PluginRef| BUILTIN_NAMES.contains(&p.name.as_str());
        let wasm = |phase: Phase| {
            mine.iter()
                .filter(move |(_, wp, _)| wp.phase() == phase)
                .filter(move |(_, wp, p)| applies(wp) && !overrides(p) && p.routes.is_empty())
                .map(|(_, _, p)| p.clone())
        };
        // Route-scoped plugins, in phase and priority order as `mine` is sorted.
        let scoped: Vec<PluginRef> = mine
            .iter()
            .filter(|(_, wp, p)| applies(wp) && !overrides(p) && !p.routes.is_empty())
            .map(|(_, _, p)| p.clone())
            .collect();

        let mut plugins: Vec<PluginRef> = Vec::new();
        plugins.extend(wasm(Phase::Authn));
        plugins.extend(wasm(Phase::Authz));
        match vs {
            Some((_, vs)) => {
                let policies = RoutePolicies::of(vs);
                plugins.extend(policies.before_canary);
                // Scoped plugins need the canary to name the route, even where it would
                // otherwise change nothing.
                let names_routes = policies.names_routes || !scoped.is_empty();
                if let Some(config) = canary_config(service, vs, names_routes, Some(&labels)) {
                    plugins.push(builtin("canary", config));
                    plugins.extend(policies.scoped_faults);
                    plugins.extend(policies.actions);
                    plugins.extend(scoped.iter().cloned());
                } else {
                    // No canary: one entry sending everything to the service, so any actions
                    // are for every call.
                    plugins.extend(policies.actions);
                }
                plugins.extend(policies.retries);
            }
            None => plugins.push(builtin("retry", default_retry())),
        }
        if let Some(outlier) = dr
            .and_then(|(_, d)| d.traffic_policy.as_ref())
            .and_then(|t| t.outlier_detection.as_ref())
        {
            let config = serde_json::to_value(outlier).unwrap_or_else(|_| json!({}));
            plugins.push(builtin("outlier", config));
        }
        if !scoped.is_empty()
            && !plugins
                .iter()
                .any(|p| p.builtin.as_deref() == Some("canary"))
        {
            // Validation refuses this (the routes must be the VirtualService's); compiling
            // anyway, a scoped plugin with no canary before it would never run.
            for p in &scoped {
                warnings.push(format!(
                    "{service}: WasmPlugin {} is scoped to routes {} but {service} has no VirtualService http entries to name them; left out of its chain",
                    p.name,
                    p.routes.join(", ")
                ));
            }
        }
        plugins.extend(wasm(Phase::Stats));
        plugins.push(builtin("telemetry", json!({})));
        plugins.extend(wasm(Phase::Unspecified));
        for (_, _, build) in mine.iter().filter(|(_, wp, p)| applies(wp) && overrides(p)) {
            replace_builtin(&mut plugins, build);
        }

        let mut endpoints: Vec<EndpointSpec> = workloads
            .iter()
            .filter(|w| w.service == service)
            .map(|w| EndpointSpec {
                address: w.address.clone(),
                labels: w.effective_labels(),
            })
            .collect();
        endpoints.sort_by(|a, b| (&a.address, &a.labels).cmp(&(&b.address, &b.labels)));
        endpoints.dedup();

        let compiled = Service {
            timeout: vs.and_then(|(_, vs)| RoutePolicies::of(vs).service_timeout),
            subsets: dr
                .map(|(_, d)| {
                    d.subsets
                        .iter()
                        .map(|s| (s.name.clone(), s.labels.clone()))
                        .collect()
                })
                .unwrap_or_default(),
            endpoints,
            plugins,
            load_balancer: dr.and_then(|(_, d)| d.load_balancer()).map(str::to_string),
        };
        snapshot.services.insert(service.to_string(), compiled);
    }
    snapshot.inbound.authorization = catalog
        .authorization_policies
        .iter()
        .filter(|(r, ap)| ap.selects(&r.namespace, &labels))
        .map(|(r, ap)| ap.to_snapshot(format!("{}/{}", r.namespace, r.name)))
        .collect();
    snapshot.inbound.peer_authentication =
        peer_authentication(&catalog, me, &labels, &mut warnings);
    snapshot.version = version_of(&snapshot);
    Compiled { snapshot, warnings }
}

/// The mTLS mode in force for a workload carrying `labels`: per level (mesh, namespace,
/// workload) the first selecting policy in the catalog's order, then the most specific level
/// that sets a mode.
fn peer_authentication(
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
        if !pa.selects(&r.namespace, labels) {
            continue;
        }
        let slot = &mut levels[scope as usize];
        match slot {
            None => *slot = Some((r, pa)),
            // Validation refuses two at the other levels.
            Some((first, _)) => warnings.push(format!(
                "{}: several PeerAuthentications select workload {} ({:?}); using {}",
                r.origin(),
                me.service,
                labels,
                first.origin()
            )),
        }
    }
    // Most specific first: the first level that sets a mode wins.
    levels.iter().rev().flatten().find_map(|(_, pa)| pa.mode())
}

/// Puts `build` (a WasmPlugin named like a built-in) in the built-in's place: same position,
/// the configuration the resources give the built-in with `pluginConfig`'s fields on top, the
/// artifact and fail strategy of the WasmPlugin. This is how a new build of a policy ships:
/// push the artifact, apply a WasmPlugin named `retry`, and every chain that had the built-in
/// retry runs the new build under the same VirtualService settings. Without the built-in in
/// the chain, the build goes just before telemetry.
fn replace_builtin(plugins: &mut Vec<PluginRef>, build: &PluginRef) {
    // Every slot of that built-in: one per distinct route policy when routes differ, each
    // keeping its name and routes and taking the new build's code.
    let mut replaced = false;
    for slot in plugins
        .iter_mut()
        .filter(|p| p.builtin.as_deref() == Some(build.name.as_str()))
    {
        let mut config = slot.config.clone();
        if let (Some(base), Some(extra)) = (config.as_object_mut(), build.config.as_object()) {
            for (k, v) in extra {
                base.insert(k.clone(), v.clone());
            }
        } else if !build.config.is_null() {
            config = build.config.clone();
        }
        *slot = PluginRef {
            name: slot.name.clone(),
            routes: std::mem::take(&mut slot.routes),
            config,
            ..build.clone()
        };
        replaced = true;
    }
    if !replaced {
        let at = plugins
            .iter()
            .position(|p| p.builtin.as_deref() == Some("telemetry"))
            .unwrap_or(plugins.len());
        plugins.insert(at, build.clone());
    }
}

/// [`compile`]'s snapshot alone.
pub fn snapshot_for(resources: &[Resource], workloads: &[Workload], me: &Workload) -> Snapshot {
    compile(resources, workloads, me).snapshot
}

/// `sha256:` and the first 16 hex digits of the sha256 of the snapshot's canonical JSON (keys
/// sorted, no spaces), its version left out: identical content, identical version.
pub fn version_of(snapshot: &Snapshot) -> String {
    let mut unversioned = snapshot.clone();
    unversioned.version = String::new();
    let value = serde_json::to_value(&unversioned).unwrap_or(Value::Null);
    let mut text = String::new();
    canonical_json(&value, &mut text);
    let digest = hex::encode(Sha256::digest(text.as_bytes()));
    format!("sha256:{}", &digest[..16])
}

/// JSON with keys sorted at every level, whatever order the map type keeps.
fn canonical_json(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical_json(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical_json(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// Resources by what compiling needs, in a fixed order whatever order they came in.
struct Catalog<'a> {
    virtual_services: BTreeMap<&'a str, Vec<(&'a Resource, &'a VirtualService)>>,
    virtual_service_list: Vec<(&'a Resource, &'a VirtualService)>,
    destination_rules: BTreeMap<&'a str, Vec<(&'a Resource, &'a DestinationRule)>>,
    wasm_plugins: Vec<(&'a Resource, &'a WasmPlugin)>,
    authorization_policies: Vec<(&'a Resource, &'a AuthorizationPolicy)>,
    peer_authentications: Vec<(&'a Resource, &'a PeerAuthentication)>,
}

impl<'a> Catalog<'a> {
    fn new(resources: &'a [Resource]) -> Self {
        let mut sorted: Vec<&Resource> = resources.iter().collect();
        sorted.sort_by(|a, b| {
            (a.kind, &a.namespace, &a.name, &a.source, a.index).cmp(&(
                b.kind,
                &b.namespace,
                &b.name,
                &b.source,
                b.index,
            ))
        });
        let mut catalog = Catalog {
            virtual_services: BTreeMap::new(),
            virtual_service_list: Vec::new(),
            destination_rules: BTreeMap::new(),
            wasm_plugins: Vec::new(),
            authorization_policies: Vec::new(),
            peer_authentications: Vec::new(),
        };
        for r in sorted {
            match &r.spec {
                Spec::VirtualService(vs) => {
                    catalog.virtual_service_list.push((r, vs));
                    // As in Istio, a VirtualService bound only to gateways is no sidecar's.
                    if !vs.applies_to_mesh() {
                        continue;
                    }
                    let services: BTreeSet<&str> = vs
                        .hosts
                        .iter()
                        .filter_map(|h| service_of_host(h).ok())
                        .collect();
                    for s in services {
                        catalog.virtual_services.entry(s).or_default().push((r, vs));
                    }
                }
                Spec::DestinationRule(dr) => {
                    if !dr.visible_to_mesh() {
                        continue;
                    }
                    if let Ok(s) = service_of_host(&dr.host) {
                        catalog
                            .destination_rules
                            .entry(s)
                            .or_default()
                            .push((r, dr));
                    }
                }
                Spec::WasmPlugin(wp) => catalog.wasm_plugins.push((r, wp)),
                Spec::AuthorizationPolicy(ap) => catalog.authorization_policies.push((r, ap)),
                Spec::PeerAuthentication(pa) => catalog.peer_authentications.push((r, pa)),
            }
        }
        catalog
    }
}

fn check_subsets(r: &Resource, vs: &VirtualService, catalog: &Catalog, errors: &mut Vec<String>) {
    for (i, entry) in vs.http.iter().enumerate() {
        for (j, d) in entry.route.iter().enumerate() {
            let (Some(subset), Ok(service)) =
                (&d.destination.subset, service_of_host(&d.destination.host))
            else {
                continue;
            };
            let at = format!(
                "{}: spec.http[{i}].route[{j}].destination.subset",
                r.origin()
            );
            match catalog
                .destination_rules
                .get(service)
                .and_then(|l| l.first())
            {
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
fn check_routes(r: &Resource, wp: &WasmPlugin, catalog: &Catalog, errors: &mut Vec<String>) {
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
    let targets = wp.targets();
    let Some(service) = targets.first().copied().filter(|_| targets.len() == 1) else {
        return;
    };
    let vs = catalog
        .virtual_services
        .get(service)
        .and_then(|l| l.first());
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

fn warn_virtual_service(r: &Resource, vs: &VirtualService, warnings: &mut Vec<String>) {
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
    if !super::istio::exported_to_workloads(&vs.export_to) {
        warnings.push(format!(
            "{origin}: spec.exportTo: not exported to namespace default, where every Weft sidecar is: it reaches no sidecar (as in Istio)"
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

fn warn_authorization_policy(r: &Resource, ap: &AuthorizationPolicy, warnings: &mut Vec<String>) {
    use super::istio::{ROOT_NAMESPACE, WORKLOAD_NAMESPACE};
    if r.namespace != WORKLOAD_NAMESPACE && r.namespace != ROOT_NAMESPACE {
        warnings.push(format!(
            "{}: metadata.namespace: selects no workload: every Weft workload is in namespace {WORKLOAD_NAMESPACE} (use {ROOT_NAMESPACE} for a mesh-wide policy)",
            r.origin()
        ));
    }
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

fn warn_peer_authentication(r: &Resource, pa: &PeerAuthentication, warnings: &mut Vec<String>) {
    use super::istio::{ROOT_NAMESPACE, WORKLOAD_NAMESPACE};
    if pa.scope(&r.namespace).is_none() {
        warnings.push(format!(
            "{}: spec.selector: ignored, as Istio does in the root namespace {ROOT_NAMESPACE}: selects no workload (put it in {WORKLOAD_NAMESPACE}, or drop the selector for a mesh-wide policy)",
            r.origin()
        ));
    } else if r.namespace != WORKLOAD_NAMESPACE && r.namespace != ROOT_NAMESPACE {
        warnings.push(format!(
            "{}: metadata.namespace: selects no workload: every Weft workload is in namespace {WORKLOAD_NAMESPACE} (use {ROOT_NAMESPACE} for a mesh-wide policy)",
            r.origin()
        ));
    }
}

fn warn_destination_rule(r: &Resource, dr: &DestinationRule, warnings: &mut Vec<String>) {
    if !dr.visible_to_mesh() {
        warnings.push(format!(
            "{}: spec.exportTo: not exported to namespace default, where every Weft sidecar is: it reaches no sidecar (as in Istio)",
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

/// What a VirtualService's `http` entries give the chain-wide plugins, which have one
/// configuration per service where Istio has one per route.
fn default_retry() -> Value {
    json!({ "attempts": DEFAULT_RETRY_ATTEMPTS, "retryOn": DEFAULT_RETRY_ON })
}

/// The retry plugin's configuration for one entry; none when retries are off.
pub(super) fn entry_retry(entry: &HttpRoute) -> Option<Value> {
    let Some(r) = &entry.retries else {
        return Some(default_retry());
    };
    let attempts = r.attempts.filter(|a| *a > 0)?;
    let mut config = Map::new();
    config.insert("attempts".into(), Value::from(attempts));
    if let Some(t) = &r.per_try_timeout {
        config.insert("perTryTimeout".into(), Value::from(t.as_str()));
    }
    if let Some(on) = &r.retry_on {
        config.insert("retryOn".into(), Value::from(on.as_str()));
    }
    if let Some(base) = &r.backoff {
        config.insert("backoff".into(), json!({ "baseInterval": base.as_str() }));
    }
    Some(Value::Object(config))
}

/// The canary's configuration for `service`; none when it would change nothing, unless it
/// must run anyway (`names_routes`: a scoped plugin needs the route it names).
///
/// `me`, the labels of the workload whose sidecar runs it, decides `sourceLabels` and
/// `sourceNamespace` here, as Istio decides them when it generates a proxy's routes: an
/// alternative for other callers is left out, and an entry left with none is left out; none
/// (for judging a configuration) keeps every alternative.
pub(super) fn canary_config(
    service: &str,
    vs: &VirtualService,
    names_routes: bool,
    me: Option<&BTreeMap<String, String>>,
) -> Option<Value> {
    let short = |host: &str| service_of_host(host).unwrap_or(host).to_string();
    if !names_routes
        && let [entry] = vs.http.as_slice()
        && entry.matches.is_empty()
        && entry.rewrite.is_none()
        && entry.all_mirrors().is_empty()
        && let [only] = entry.route.as_slice()
        && only.destination.subset.is_none()
        && short(&only.destination.host) == service
    {
        return None;
    }
    let mut entries: Vec<Value> = vs
        .http
        .iter()
        .enumerate()
        .filter_map(|(i, entry)| {
            let mut out = Map::new();
            let alternatives: Vec<Value> = entry
                .matches
                .iter()
                .filter(|m| me.is_none_or(|labels| m.is_for_caller(labels)))
                .map(|m| serde_json::to_value(m.for_canary()).unwrap_or(Value::Null))
                .collect();
            if !entry.matches.is_empty() && alternatives.is_empty() {
                return None;
            }
            // Plugins scoped to routes need every route named, the unnamed ones too.
            if names_routes {
                out.insert("name".into(), Value::from(route_name(entry, i)));
            } else if let Some(name) = &entry.name {
                out.insert("name".into(), Value::from(name.as_str()));
            }
            if !alternatives.is_empty() {
                out.insert("match".into(), Value::Array(alternatives));
            }
            // An entry that answers locally (redirect, directResponse) still needs the canary to
            // pick it and name its route; the `headers` plugin after it answers.
            let to_self = [super::istio::RouteDestination::to(service)];
            let destinations: &[super::istio::RouteDestination] = if entry.route.is_empty() {
                &to_self
            } else {
                &entry.route
            };
            let route: Vec<Value> = destinations
                .iter()
                .map(|d| {
                    // The proxy knows services by short name; the canary names them so.
                    let mut destination = json!({ "host": short(&d.destination.host) });
                    if let Some(subset) = &d.destination.subset {
                        destination["subset"] = Value::from(subset.as_str());
                    }
                    let mut item = json!({ "destination": destination });
                    if let Some(w) = d.weight {
                        item["weight"] = Value::from(w);
                    }
                    item
                })
                .collect();
            out.insert("route".into(), Value::Array(route));
            if let Some(t) = &entry.timeout {
                out.insert("timeout".into(), Value::from(t.as_str()));
            }
            let mirrors: Vec<Value> = entry
                .all_mirrors()
                .into_iter()
                .map(|(d, share)| {
                    let mut destination = json!({ "host": short(&d.host) });
                    if let Some(subset) = &d.subset {
                        destination["subset"] = Value::from(subset.as_str());
                    }
                    let mut m = json!({ "destination": destination });
                    if let Some(p) = share {
                        m["percentage"] = Value::from(p);
                    }
                    m
                })
                .collect();
            if !mirrors.is_empty() {
                out.insert("mirrors".into(), Value::Array(mirrors));
            }
            if let Some(r) = &entry.rewrite {
                out.insert(
                    "rewrite".into(),
                    serde_json::to_value(r).unwrap_or(Value::Null),
                );
            }
            Some(Value::Object(out))
        })
        .collect();
    if entries.is_empty() {
        // Every entry is for other callers: nothing matches here (an app's call is never
        // `https`), so every call gets the canary's 404, as Istio's "no route".
        entries.push(json!({
            "match": [{ "scheme": { "exact": "https" } }],
            "route": [{ "destination": { "host": service } }],
        }));
    }
    Some(json!({ "host": service, "http": entries }))
}

pub(super) fn builtin(name: &str, config: Value) -> PluginRef {
    PluginRef {
        name: name.to_string(),
        builtin: Some(name.to_string()),
        file: None,
        artifact: None,
        sha256: None,
        config,
        fail_strategy: FailStrategy::FailOpen,
        routes: Vec::new(),
    }
}

/// A WasmPlugin's place in a chain, or a warning why it has none.
fn wasm_plugin_ref(r: &Resource, wp: &WasmPlugin) -> Result<PluginRef, String> {
    let (file, artifact) = match wp.source() {
        Ok(WasmSource::File(path)) => (Some(path), None),
        Ok(WasmSource::Stored(hex)) => (None, Some(hex)),
        // The apply handler stores what a URL serves and rewrites the URL to its digest; a
        // given sha256 names the same artifact.
        Ok(WasmSource::Http(url)) => match wp.digest() {
            Some(hex) => (None, Some(hex)),
            None => {
                return Err(format!(
                    "{}: spec.url: {url} has not been fetched into the artifact store; the plugin is left out of the chains",
                    r.origin()
                ));
            }
        },
        Err(e) => return Err(format!("{}: spec.url: {e}", r.origin())),
    };
    Ok(PluginRef {
        name: r.name.clone(),
        builtin: None,
        file,
        artifact,
        sha256: wp.digest(),
        config: wp.plugin_config.clone().unwrap_or_else(|| json!({})),
        fail_strategy: match wp.fail_strategy {
            Some(IstioFailStrategy::FailOpen) => FailStrategy::FailOpen,
            // Istio's default; FAIL_RELOAD is refused when read.
            _ => FailStrategy::FailClosed,
        },
        routes: wp.routes.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::istio::parse_yaml;

    const SEED: &str = include_str!("../../../examples/payments/payments.yaml");
    const FEATURES: &str = include_str!("../../tests/data/istio/features.yaml");

    fn parse(text: &str) -> Vec<Resource> {
        match parse_yaml(text, "t.yaml") {
            Ok(r) => r,
            Err(e) => panic!("does not parse:\n{}", e.join("\n")),
        }
    }

    fn workload(service: &str, version: &str, address: &str) -> Workload {
        let mut labels = BTreeMap::new();
        if !version.is_empty() {
            labels.insert("version".to_string(), version.to_string());
        }
        Workload {
            service: service.to_string(),
            labels,
            address: address.to_string(),
        }
    }

    fn mesh() -> Vec<Workload> {
        vec![
            workload("payments", "v1", "127.0.0.1:9001"),
            workload("payments", "v2", "127.0.0.1:9002"),
            workload("orders", "", "127.0.0.1:9101"),
        ]
    }

    fn chain(snapshot: &Snapshot, service: &str) -> Vec<String> {
        snapshot.services[service]
            .plugins
            .iter()
            .map(|p| p.name.clone())
            .collect()
    }

    fn plugin<'a>(snapshot: &'a Snapshot, service: &str, name: &str) -> &'a PluginRef {
        match snapshot.services[service]
            .plugins
            .iter()
            .find(|p| p.name == name)
        {
            Some(p) => p,
            None => panic!("no {name} in {service}'s chain"),
        }
    }

    fn validate_errors(resources: &[Resource]) -> String {
        match validate(resources, &|_| true) {
            Ok(w) => panic!("expected errors; warnings: {w:?}"),
            Err(e) => e.join("\n"),
        }
    }

    fn validate_warnings(resources: &[Resource]) -> String {
        match validate(resources, &|_| true) {
            Ok(w) => w.join("\n"),
            Err(e) => panic!("rejected:\n{}", e.join("\n")),
        }
    }

    #[test]
    fn the_seed_compiles_to_the_expected_snapshot() {
        let resources = parse(SEED);
        assert_eq!(validate(&resources, &|_| false), Ok(vec![]));
        let workloads = mesh();
        let compiled = compile(&resources, &workloads, &workloads[2]);
        assert_eq!(compiled.warnings, Vec::<String>::new());
        let snapshot = compiled.snapshot;
        let payments = serde_json::to_value(&snapshot.services["payments"]).expect("serializes");
        assert_eq!(
            payments,
            json!({
                "timeout": "6s",
                "subsets": {"v1": {"version": "v1"}, "v2": {"version": "v2"}},
                "endpoints": [
                    {"address": "127.0.0.1:9001", "labels": {"app": "payments", "version": "v1"}},
                    {"address": "127.0.0.1:9002", "labels": {"app": "payments", "version": "v2"}}
                ],
                "plugins": [
                    {"name": "canary", "builtin": "canary", "failStrategy": "fail-open",
                     "config": {"host": "payments", "http": [{
                        "route": [
                            {"destination": {"host": "payments", "subset": "v1"}, "weight": 95},
                            {"destination": {"host": "payments", "subset": "v2"}, "weight": 5}
                        ],
                        "timeout": "6s"}]}},
                    {"name": "retry", "builtin": "retry", "failStrategy": "fail-open",
                     "config": {"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx,reset"}},
                    {"name": "outlier", "builtin": "outlier", "failStrategy": "fail-open",
                     "config": {"consecutive5xxErrors": 5, "baseEjectionTime": "30s"}},
                    {"name": "telemetry", "builtin": "telemetry", "failStrategy": "fail-open",
                     "config": {}}
                ]
            })
        );
        // A service with no VirtualService gets Istio's default retries, as Istio's default
        // route does.
        let orders = serde_json::to_value(&snapshot.services["orders"]).expect("serializes");
        assert_eq!(
            orders,
            json!({
                "subsets": {},
                "endpoints": [{"address": "127.0.0.1:9101", "labels": {"app": "orders"}}],
                "plugins": [
                    {"name": "retry", "builtin": "retry", "failStrategy": "fail-open",
                     "config": {"attempts": 2, "retryOn": DEFAULT_RETRY_ON}},
                    {"name": "telemetry", "builtin": "telemetry", "failStrategy": "fail-open",
                     "config": {}}
                ]
            })
        );
        assert_eq!(snapshot.services.len(), 2);
        assert!(snapshot.validate().is_ok(), "{:?}", snapshot.validate());
        let hex = snapshot
            .version
            .strip_prefix("sha256:")
            .expect("sha256: prefix");
        assert!(
            hex.len() == 16 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{hex}"
        );
        assert_eq!(snapshot.version, version_of(&snapshot));
    }

    #[test]
    fn a_weight_change_changes_only_the_canary_config_and_the_version() {
        let workloads = mesh();
        let before = snapshot_for(&parse(SEED), &workloads, &workloads[2]);
        let text = SEED
            .replace("weight: 95", "weight: 50")
            .replace("weight: 5\n", "weight: 50\n");
        let after = snapshot_for(&parse(&text), &workloads, &workloads[2]);
        assert_ne!(before.version, after.version);
        let canary =
            |s: &Snapshot| plugin(s, "payments", "canary").config["http"][0]["route"].clone();
        assert_eq!(canary(&after)[0]["weight"], 50);
        assert_eq!(canary(&after)[1]["weight"], 50);
        let mut patched = before.clone();
        patched.version = after.version.clone();
        patched
            .services
            .get_mut("payments")
            .expect("payments")
            .plugins[0]
            .config = plugin(&after, "payments", "canary").config.clone();
        assert_eq!(patched, after);
    }

    #[test]
    fn identical_inputs_give_identical_versions_in_any_order() {
        let resources = parse(SEED);
        let workloads = mesh();
        let a = snapshot_for(&resources, &workloads, &workloads[0]);
        let b = snapshot_for(&resources, &workloads, &workloads[0]);
        assert_eq!(a, b);
        let mut reversed = resources.clone();
        reversed.reverse();
        let mut shuffled = workloads.clone();
        shuffled.rotate_left(1);
        let c = snapshot_for(&reversed, &shuffled, &workloads[0]);
        assert_eq!(a, c);
        // Without selectors, every sidecar gets the same snapshot, so one push serves all.
        let d = snapshot_for(&resources, &workloads, &workloads[2]);
        assert_eq!(a.version, d.version);
        // A new endpoint is new content.
        let mut more = workloads.clone();
        more.push(workload("payments", "v2", "127.0.0.1:9003"));
        assert_ne!(
            snapshot_for(&resources, &more, &workloads[0]).version,
            a.version
        );
    }

    #[test]
    fn unknown_subsets_are_named_with_what_is_defined() {
        let text = SEED.replace("subset: v2 }", "subset: v3 }");
        assert_eq!(
            validate_errors(&parse(&text)),
            "t.yaml: document 1 (VirtualService payments): spec.http[0].route[1].destination.subset: unknown subset v3 of payments (DestinationRule payments defines v1, v2)"
        );
        let vs_only: String = SEED.split("---").next().unwrap_or_default().to_string();
        let all = validate_errors(&parse(&vs_only));
        assert!(
            all.contains("spec.http[0].route[0].destination.subset: unknown subset v1 of payments (no DestinationRule for payments)"),
            "{all}"
        );
    }

    #[test]
    fn one_virtual_service_and_one_destination_rule_per_host() {
        let mut resources = parse(SEED);
        let mut second = parse(&SEED.replace(
            "metadata: { name: payments }",
            "metadata: { name: payments-2 }",
        ));
        for r in &mut second {
            r.source = "u.yaml".to_string();
        }
        resources.append(&mut second);
        let all = validate_errors(&resources);
        for needle in [
            "u.yaml: document 1 (VirtualService payments-2): spec.hosts: payments is already routed by t.yaml: document 1 (VirtualService payments); Weft takes one VirtualService per host",
            "u.yaml: document 2 (DestinationRule payments-2): spec.host: payments already has t.yaml: document 2 (DestinationRule payments); Weft takes one DestinationRule per host",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        // Compiling anyway picks the first by namespace and name, and says so.
        let compiled = compile(&resources, &[], &workload("orders", "", "127.0.0.1:1"));
        assert!(
            compiled
                .warnings
                .iter()
                .any(|w| w.contains("several VirtualServices"))
        );
    }

    #[test]
    fn the_same_resource_twice_is_an_error() {
        let mut resources = parse(SEED);
        resources.extend(parse(SEED));
        let all = validate_errors(&resources);
        assert!(
            all.contains("t.yaml: document 1 (VirtualService payments): VirtualService default/payments is defined twice (first by t.yaml: document 1 (VirtualService payments))"),
            "{all}"
        );
    }

    fn wasm_doc(name: &str, spec: &str) -> String {
        format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{ name: {name} }}\nspec:\n{spec}---\n"
        )
    }

    #[test]
    fn stored_artifacts_must_exist() {
        let hex = "ab".repeat(32);
        let resources = parse(&wasm_doc("gate", &format!("  url: sha256:{hex}\n")));
        let err = validate(&resources, &|_| false).expect_err("unknown artifact");
        assert_eq!(
            err,
            [format!(
                "t.yaml: document 1 (WasmPlugin gate): spec.url: no artifact sha256:{hex} in the store"
            )]
        );
        assert_eq!(validate(&resources, &|d| d == hex), Ok(vec![]));
        // File and http sources are not the store's business here.
        let resources = parse(&wasm_doc(
            "gate",
            "  url: https://plugins.example/gate.wasm\n",
        ));
        assert_eq!(validate(&resources, &|_| false), Ok(vec![]));
    }

    #[test]
    fn wasm_plugin_names_are_mesh_wide() {
        let text = format!(
            "{}apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{ name: gate, namespace: shop }}\nspec: {{ url: file:///b.wasm }}\n",
            wasm_doc("gate", "  url: file:///a.wasm\n")
        );
        let all = validate_errors(&parse(&text));
        assert!(
            all.contains("metadata.name: a WasmPlugin gate is also in namespace"),
            "{all}"
        );
    }

    #[test]
    fn warnings_for_what_is_ignored_or_merged() {
        let text = "apiVersion: networking.istio.io/v1beta1
kind: VirtualService
metadata: { name: payments }
spec:
  hosts: [payments]
  gateways: [edge]
  exportTo: ['.']
  http:
  - match: [{ headers: { x-test: { exact: '1' } } }]
    route: [{ destination: { host: payments } }]
    retries: { attempts: 5 }
    fault: { abort: { httpStatus: 503, percentage: { value: 1 } } }
    timeout: 2s
  - route: [{ destination: { host: payments } }]
    retries: { perTryTimeout: 1s }
    fault: { delay: { fixedDelay: 1s } }
---
apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: { name: payments }
spec:
  host: payments
  trafficPolicy: { loadBalancer: { simple: LEAST_CONN } }
";
        let all = validate_warnings(&parse(text));
        for needle in [
            "(VirtualService payments): spec.gateways: these routes apply only at edge, and Weft runs no gateways: they reach no sidecar",
            "spec.http[1].retries: attempts is 0 or absent, so retries are off",
            "spec.http[1].fault.delay: no percentage, so it never applies (as in Istio)",
            "(DestinationRule payments): spec.trafficPolicy.loadBalancer.simple: LEAST_CONN is Istio's deprecated name",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn the_features_example_compiles() {
        let resources = parse(FEATURES);
        let warnings = validate(&resources, &|_| true).expect("valid");
        assert!(warnings.is_empty(), "{warnings:?}");
        let me = workload("orders", "", "127.0.0.1:9101");
        let snapshot = snapshot_for(&resources, &mesh(), &me);
        let payments = &snapshot.services["payments"];
        assert_eq!(payments.load_balancer.as_deref(), Some("roundRobin"));
        // Entries with different timeouts: none for the service, each entry keeps its own.
        assert_eq!(payments.timeout, None);
        assert_eq!(
            chain(&snapshot, "payments"),
            [
                "authn",
                "authz-first",
                "authz-second",
                "a-authz-low",
                "fault",
                "canary",
                "retry",
                "outlier",
                "stats",
                "telemetry",
                "last"
            ]
        );
        let canary = &plugin(&snapshot, "payments", "canary").config;
        assert_eq!(
            canary["http"][0],
            json!({"name": "testers",
                   "match": [{"headers": {"x-user": {"exact": "tester"}}, "uri": {"prefix": "/charge"}}],
                   "route": [{"destination": {"host": "payments", "subset": "v2"}}],
                   "timeout": "2s"})
        );
        assert_eq!(
            canary["http"][1]["route"][1]["destination"],
            json!({"host": "payments-next"})
        );
        assert_eq!(
            plugin(&snapshot, "payments", "fault").config,
            json!({"delay": {"fixedDelay": "5s", "percentage": {"value": 10.0}},
                   "abort": {"httpStatus": 503, "percentage": {"value": 5.0}}})
        );
        assert_eq!(
            plugin(&snapshot, "payments", "outlier").config,
            json!({"consecutive5xxErrors": 3, "consecutiveGatewayErrors": 2, "interval": "5s",
                   "baseEjectionTime": "15s", "maxEjectionPercent": 50, "minHealthPercent": 20})
        );
        // A route to another service makes it known to every sidecar.
        assert!(snapshot.services.contains_key("payments-next"));
        // targetRefs: authn targets payments only.
        assert!(!chain(&snapshot, "orders").contains(&"authn".to_string()));
        assert!(chain(&snapshot, "orders").contains(&"authz-first".to_string()));

        let authz = plugin(&snapshot, "payments", "authz-first");
        assert_eq!(authz.file.as_deref(), Some("/opt/weft/plugins/authz.wasm"));
        assert_eq!(authz.fail_strategy, FailStrategy::FailClosed);
        assert_eq!(authz.config, json!({"allow": ["orders"]}));
        let stats = plugin(&snapshot, "payments", "stats");
        assert_eq!(
            stats.artifact.as_deref(),
            Some("0123456789abcdef".repeat(4).as_str())
        );
        assert_eq!(
            stats.sha256.as_deref(),
            Some("0123456789abcdef".repeat(4).as_str())
        );
        assert_eq!(stats.fail_strategy, FailStrategy::FailOpen);
        assert_eq!(stats.config, json!({}));
    }

    #[test]
    fn selectors_pick_sidecars() {
        let text = format!(
            "{}{}",
            wasm_doc(
                "for-orders",
                "  url: file:///o.wasm\n  selector: { matchLabels: { app: orders } }\n"
            ),
            wasm_doc(
                "for-v2",
                "  url: file:///v.wasm\n  selector: { matchLabels: { version: v2 } }\n  targetRefs: [{ kind: Service, name: orders }]\n"
            )
        );
        let resources = parse(&text);
        let workloads = mesh();
        let orders = snapshot_for(&resources, &workloads, &workloads[2]);
        assert_eq!(
            chain(&orders, "payments"),
            ["retry", "telemetry", "for-orders"]
        );
        let v2 = snapshot_for(&resources, &workloads, &workloads[1]);
        assert_eq!(chain(&v2, "payments"), ["retry", "telemetry"]);
        assert_eq!(chain(&v2, "orders"), ["retry", "telemetry", "for-v2"]);
        assert_ne!(orders.version, v2.version);
        // A workload's own `app` label wins over the implicit one.
        let mut renamed = workloads[2].clone();
        renamed.labels.insert("app".into(), "checkout".into());
        let other = snapshot_for(&resources, &workloads, &renamed);
        assert_eq!(chain(&other, "payments"), ["retry", "telemetry"]);
    }

    fn authz_doc(namespace: &str, name: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{ name: {name}, namespace: {namespace} }}\nspec:\n{spec}"
        )
    }

    #[test]
    fn authorization_policies_go_to_the_workloads_they_select() {
        let text = [
            authz_doc(
                "default",
                "payments-only-orders",
                "  selector: { matchLabels: { app: payments } }\n  rules: [{ from: [{ source: { principals: [weft.local/ns/default/sa/orders] } }] }]\n",
            ),
            authz_doc(
                "istio-system",
                "no-admin",
                "  action: DENY\n  rules: [{ to: [{ operation: { paths: [/admin*] } }] }]\n",
            ),
            authz_doc(
                "default",
                "v2-nothing",
                "  selector: { matchLabels: { version: v2 } }\n",
            ),
            authz_doc(
                "shop",
                "elsewhere",
                "  rules: [{ from: [{ source: { principals: [cluster.local/ns/shop/sa/x] } }] }]\n",
            ),
        ]
        .concat();
        let resources = parse(&text);
        let warnings = validate_warnings(&resources);
        assert!(
            warnings.contains(
                "(AuthorizationPolicy elsewhere): metadata.namespace: selects no workload"
            ),
            "{warnings}"
        );
        assert!(
            warnings.contains(
                "principal \"cluster.local/ns/shop/sa/x\" names Istio's default trust domain"
            ),
            "{warnings}"
        );
        let workloads = mesh();
        let names = |s: &Snapshot| -> Vec<String> {
            s.inbound
                .authorization
                .iter()
                .map(|p| p.name.clone())
                .collect()
        };
        let v1 = snapshot_for(&resources, &workloads, &workloads[0]);
        assert_eq!(
            names(&v1),
            ["default/payments-only-orders", "istio-system/no-admin"]
        );
        let allow = &v1.inbound.authorization[0];
        assert_eq!(allow.action, crate::snapshot::AuthzAction::Allow);
        assert_eq!(
            allow.rules[0].from[0].principals,
            ["weft.local/ns/default/sa/orders"]
        );
        assert_eq!(
            v1.inbound.authorization[1].action,
            crate::snapshot::AuthzAction::Deny
        );
        assert!(v1.validate().is_ok(), "{:?}", v1.validate());
        let v2 = snapshot_for(&resources, &workloads, &workloads[1]);
        assert_eq!(
            names(&v2),
            [
                "default/payments-only-orders",
                "default/v2-nothing",
                "istio-system/no-admin"
            ]
        );
        assert!(v2.inbound.authorization[1].rules.is_empty());
        let orders = snapshot_for(&resources, &workloads, &workloads[2]);
        assert_eq!(names(&orders), ["istio-system/no-admin"]);
        // Without policies the section is absent and the version what it was.
        let none = snapshot_for(&[], &workloads, &workloads[2]);
        assert!(none.inbound.is_empty());
        assert!(
            serde_json::to_value(&none)
                .expect("json")
                .get("inbound")
                .is_none()
        );
        assert_ne!(none.version, orders.version);
    }

    fn peer_authn_doc(namespace: &str, name: &str, spec: &str) -> String {
        format!(
            "---\napiVersion: security.istio.io/v1beta1\nkind: PeerAuthentication\nmetadata: {{ name: {name}, namespace: {namespace} }}\nspec:\n{spec}"
        )
    }

    fn modes(text: &str) -> Vec<Option<crate::snapshot::MtlsMode>> {
        let resources = if text.is_empty() {
            Vec::new()
        } else {
            parse(text)
        };
        let workloads = mesh();
        workloads
            .iter()
            .map(|w| {
                snapshot_for(&resources, &workloads, w)
                    .inbound
                    .peer_authentication
            })
            .collect()
    }

    #[test]
    fn peer_authentication_follows_istio_precedence() {
        use crate::snapshot::MtlsMode::{Permissive, Strict};
        let mesh_strict = peer_authn_doc("istio-system", "mesh", "  mtls: { mode: STRICT }\n");
        let ns_permissive = peer_authn_doc("default", "ns", "  mtls: { mode: PERMISSIVE }\n");
        let v2_strict = peer_authn_doc(
            "default",
            "v2",
            "  selector: { matchLabels: { app: payments, version: v2 } }\n  mtls: { mode: STRICT }\n",
        );
        let v2_unset = peer_authn_doc(
            "default",
            "v2",
            "  selector: { matchLabels: { version: v2 } }\n  mtls: { mode: UNSET }\n",
        );
        // mesh() is payments v1, payments v2, orders.
        assert_eq!(modes(""), [None, None, None], "no policy: bootstrap mode");
        assert_eq!(modes(&mesh_strict), [Some(Strict); 3]);
        assert_eq!(
            modes(&[mesh_strict.clone(), ns_permissive.clone()].concat()),
            [Some(Permissive); 3],
            "namespace-wide over mesh-wide"
        );
        assert_eq!(
            modes(&[mesh_strict.clone(), ns_permissive.clone(), v2_strict].concat()),
            [Some(Permissive), Some(Strict), Some(Permissive)],
            "workload over namespace-wide"
        );
        assert_eq!(
            modes(&[mesh_strict.clone(), ns_permissive.clone(), v2_unset.clone()].concat()),
            [Some(Permissive); 3],
            "UNSET inherits the namespace's"
        );
        let ns_unset = peer_authn_doc("default", "ns", "  mtls: {}\n");
        assert_eq!(
            modes(&[mesh_strict.clone(), ns_unset, v2_unset.clone()].concat()),
            [Some(Strict); 3],
            "UNSET twice inherits the mesh's"
        );
        assert_eq!(
            modes(&v2_unset),
            [None, None, None],
            "only UNSET: nothing in force"
        );
        // Policies that select no Weft workload change nothing, with a warning.
        let ignored = [
            peer_authn_doc(
                "istio-system",
                "rooted",
                "  selector: { matchLabels: { app: payments } }\n  mtls: { mode: STRICT }\n",
            ),
            peer_authn_doc("shop", "elsewhere", "  mtls: { mode: STRICT }\n"),
        ]
        .concat();
        assert_eq!(modes(&ignored), [None, None, None]);
        let warnings = validate_warnings(&parse(&ignored));
        for needle in [
            "(PeerAuthentication rooted): spec.selector: ignored, as Istio does in the root namespace",
            "(PeerAuthentication elsewhere): metadata.namespace: selects no workload",
        ] {
            assert!(
                warnings.contains(needle),
                "missing {needle:?} in:\n{warnings}"
            );
        }
        // The mode is part of the content, so of the version.
        let resources = parse(&mesh_strict);
        let workloads = mesh();
        let strict = snapshot_for(&resources, &workloads, &workloads[2]);
        let none = snapshot_for(&[], &workloads, &workloads[2]);
        assert_ne!(strict.version, none.version);
        assert!(strict.validate().is_ok());
        assert_eq!(
            serde_json::to_value(&strict).expect("json")["inbound"]["peerAuthentication"],
            "STRICT"
        );
    }

    #[test]
    fn one_wide_peer_authentication_per_namespace() {
        let text = [
            peer_authn_doc("default", "a", "  mtls: { mode: STRICT }\n"),
            peer_authn_doc(
                "default",
                "b",
                "  selector: {}\n  mtls: { mode: PERMISSIVE }\n",
            ),
            peer_authn_doc("istio-system", "m1", "  mtls: { mode: STRICT }\n"),
            peer_authn_doc("istio-system", "m2", "  {}\n"),
        ]
        .concat();
        let errors = validate_errors(&parse(&text));
        for needle in [
            "(PeerAuthentication b): spec.selector: namespace default already has a namespace-wide PeerAuthentication",
            "(PeerAuthentication m2): spec.selector: namespace istio-system already has a mesh-wide PeerAuthentication",
        ] {
            assert!(errors.contains(needle), "missing {needle:?} in:\n{errors}");
        }
        // Several workload policies may exist; one selecting a workload twice is a warning.
        let text = [
            peer_authn_doc(
                "default",
                "a-payments",
                "  selector: { matchLabels: { app: payments } }\n  mtls: { mode: STRICT }\n",
            ),
            peer_authn_doc(
                "default",
                "b-v2",
                "  selector: { matchLabels: { version: v2 } }\n  mtls: { mode: PERMISSIVE }\n",
            ),
        ]
        .concat();
        let resources = parse(&text);
        assert!(validate(&resources, &|_| true).is_ok());
        let workloads = mesh();
        let v2 = compile(&resources, &workloads, &workloads[1]);
        assert_eq!(
            v2.snapshot.inbound.peer_authentication,
            Some(crate::snapshot::MtlsMode::Strict)
        );
        assert!(
            v2.warnings.iter().any(|w| w.contains(
                "(PeerAuthentication b-v2): several PeerAuthentications select workload payments"
            ) && w
                .contains("using t.yaml: document 1 (PeerAuthentication a-payments)")),
            "{:?}",
            v2.warnings
        );
    }

    #[test]
    fn retries_follow_istio() {
        let base = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: payments }\nspec:\n  hosts: [payments]\n  http:\n  - route: [{ destination: { host: payments } }]\n";
        let me = workload("payments", "v1", "127.0.0.1:9001");
        // No retries: Istio's default policy. The lone unsplit route needs no canary.
        let s = snapshot_for(&parse(base), &[], &me);
        assert_eq!(chain(&s, "payments"), ["retry", "telemetry"]);
        assert_eq!(plugin(&s, "payments", "retry").config, default_retry());
        // attempts 0: retries off, no plugin at all.
        let s = snapshot_for(
            &parse(&format!("{base}    retries: {{ attempts: 0 }}\n")),
            &[],
            &me,
        );
        assert_eq!(chain(&s, "payments"), ["telemetry"]);
        // `timeout: 0s` is Istio's "none".
        let s = snapshot_for(&parse(&format!("{base}    timeout: 0s\n")), &[], &me);
        assert_eq!(s.services["payments"].timeout, None);
    }

    #[test]
    fn a_virtual_service_bound_only_to_gateways_reaches_no_sidecar() {
        // An /admin abort meant for the edge, and the mesh's own routes beside it.
        let text = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: edge-admin }
spec:
  hosts: [payments]
  gateways: [istio-system/ingress]
  http:
  - match: [{ uri: { prefix: /admin } }]
    fault: { abort: { httpStatus: 403, percentage: { value: 100 } } }
    route: [{ destination: { host: payments } }]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: payments }
spec:
  hosts: [payments]
  gateways: [mesh, istio-system/ingress]
  http:
  - route: [{ destination: { host: payments } }]
    timeout: 3s
";
        let resources = parse(text);
        let warnings = validate_warnings(&resources);
        assert!(warnings.contains("(VirtualService edge-admin): spec.gateways: these routes apply only at istio-system/ingress"), "{warnings}");
        let s = snapshot_for(&resources, &[], &workload("orders", "", "127.0.0.1:1"));
        assert_eq!(chain(&s, "payments"), ["retry", "telemetry"]);
        assert_eq!(s.services["payments"].timeout.as_deref(), Some("3s"));
    }

    #[test]
    fn export_to_decides_whether_sidecars_see_a_resource() {
        let vs = |export: &str| {
            format!(
                "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: payments }}
spec:
  hosts: [payments]
  exportTo: {export}
  http:
  - route: [{{ destination: {{ host: payments }} }}]
    timeout: 3s
"
            )
        };
        let me = workload("orders", "", "127.0.0.1:1");
        for (export, seen) in [
            ("['.']", true),
            ("['*']", true),
            ("[default, shop]", true),
            ("[shop]", false),
            ("['~']", false),
        ] {
            let resources = parse(&vs(export));
            let s = snapshot_for(&resources, &[], &me);
            let timeout = s.services.get("payments").and_then(|p| p.timeout.clone());
            assert_eq!(timeout.is_some(), seen, "exportTo {export}");
            if !seen {
                assert!(
                    validate_warnings(&resources)
                        .contains("spec.exportTo: not exported to namespace default"),
                    "{export}"
                );
            }
        }
    }

    #[test]
    fn source_labels_are_decided_for_each_caller_as_istio_does() {
        let text = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: payments }
spec:
  hosts: [payments]
  http:
  - match: [{ sourceLabels: { app: orders }, headers: { x-beta: { exact: '1' } } }]
    route: [{ destination: { host: payments } }]
    timeout: 1s
  - match: [{ sourceNamespace: elsewhere }]
    route: [{ destination: { host: payments } }]
  - route: [{ destination: { host: payments } }]
";
        let resources = parse(text);
        let canary_for = |service: &str| {
            let s = snapshot_for(&resources, &[], &workload(service, "", "127.0.0.1:1"));
            plugin(&s, "payments", "canary").config.clone()
        };
        // orders: its entry, the caller condition gone; the other namespace's entry left out.
        let orders = canary_for("orders");
        assert_eq!(orders["http"].as_array().map(Vec::len), Some(2));
        assert_eq!(
            orders["http"][0]["match"],
            json!([{"headers": {"x-beta": {"exact": "1"}}}])
        );
        assert_eq!(orders["http"][1]["name"], "#2");
        // reviews: only the entry for everyone.
        let reviews = canary_for("reviews");
        assert_eq!(reviews["http"].as_array().map(Vec::len), Some(1));
        assert_eq!(reviews["http"][0]["name"], "#2");
        // No entry for this caller at all: nothing matches, as Istio's no route.
        let only = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: payments }
spec:
  hosts: [payments]
  http:
  - match: [{ sourceLabels: { app: orders } }]
    route: [{ destination: { host: payments } }]
";
        let resources = parse(only);
        let s = snapshot_for(&resources, &[], &workload("reviews", "", "127.0.0.1:1"));
        let canary = &plugin(&s, "payments", "canary").config;
        assert_eq!(
            canary["http"][0]["match"],
            json!([{"scheme": {"exact": "https"}}])
        );
        // Its retries are scoped to its route, so they never run for reviews' calls.
        assert_eq!(chain(&s, "payments"), ["canary", "retry@#0", "telemetry"]);
    }

    #[test]
    fn a_new_build_of_retry_replaces_every_route_scoped_retry() {
        let hex = "ab".repeat(32);
        let text = format!(
            "{}apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: payments }}
spec:
  hosts: [payments]
  http:
  - match: [{{ method: {{ exact: POST }} }}]
    retries: {{ attempts: 1, retryOn: reset }}
    route: [{{ destination: {{ host: payments }} }}]
  - route: [{{ destination: {{ host: payments }} }}]
    retries: {{ attempts: 3, retryOn: 5xx }}
",
            wasm_doc(
                "retry",
                &format!("  url: sha256:{hex}\n  pluginConfig: {{ attemptCountHeader: x-n }}\n")
            )
        );
        let s = snapshot_for(&parse(&text), &[], &workload("orders", "", "127.0.0.1:1"));
        assert_eq!(
            chain(&s, "payments"),
            ["canary", "retry@#0", "retry@#1", "telemetry"]
        );
        for (name, route, attempts) in [("retry@#0", "#0", 1), ("retry@#1", "#1", 3)] {
            let p = plugin(&s, "payments", name);
            assert_eq!(p.artifact.as_deref(), Some(hex.as_str()), "{name}");
            assert_eq!(p.routes, [route]);
            assert_eq!(p.config["attempts"], attempts);
            assert_eq!(p.config["attemptCountHeader"], "x-n");
        }
    }

    #[test]
    fn a_fault_applies_only_to_the_routes_that_have_it() {
        let text = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: payments }
spec:
  hosts: [payments]
  http:
  - match: [{ uri: { prefix: /health } }]
    route: [{ destination: { host: payments } }]
  - route: [{ destination: { host: payments } }]
    fault: { abort: { httpStatus: 503, percentage: { value: 50 } } }
";
        let resources = parse(text);
        assert_eq!(validate_warnings(&resources), "");
        let s = snapshot_for(&resources, &[], &workload("orders", "", "127.0.0.1:1"));
        assert_eq!(
            chain(&s, "payments"),
            ["canary", "fault@#1", "retry", "telemetry"]
        );
        let fault = plugin(&s, "payments", "fault@#1");
        assert_eq!(fault.routes, ["#1"]);
        assert_eq!(
            fault.config,
            json!({"abort": {"httpStatus": 503, "percentage": {"value": 50.0}}})
        );
        // The canary names both routes, so the host knows which one each call took.
        let canary = &plugin(&s, "payments", "canary").config;
        assert_eq!(canary["http"][0]["name"], "#0");
        assert_eq!(canary["http"][1]["name"], "#1");
    }

    #[test]
    fn http_urls_use_their_digest_until_rewritten() {
        let hex = "cd".repeat(32);
        let text = format!(
            "{}{}",
            wasm_doc(
                "pinned",
                &format!(
                    "  url: https://example.invalid/p.wasm\n  sha256: {}\n",
                    hex.to_uppercase()
                )
            ),
            wasm_doc("loose", "  url: https://example.invalid/l.wasm\n")
        );
        let me = workload("orders", "", "127.0.0.1:9101");
        let compiled = compile(&parse(&text), &[], &me);
        let pinned = plugin(&compiled.snapshot, "orders", "pinned");
        assert_eq!(pinned.artifact.as_deref(), Some(hex.as_str()));
        assert_eq!(pinned.sha256.as_deref(), Some(hex.as_str()));
        assert_eq!(
            chain(&compiled.snapshot, "orders"),
            ["retry", "telemetry", "pinned"]
        );
        assert_eq!(
            compiled.warnings,
            [
                "t.yaml: document 2 (WasmPlugin loose): spec.url: https://example.invalid/l.wasm has not been fetched into the artifact store; the plugin is left out of the chains"
            ]
        );
        assert!(compiled.snapshot.validate().is_ok());
    }

    #[test]
    fn the_snapshot_passes_its_own_validation() {
        let snapshot = snapshot_for(&parse(FEATURES), &mesh(), &mesh()[2]);
        assert!(snapshot.validate().is_ok(), "{:?}", snapshot.validate());
    }

    #[test]
    fn a_wasm_plugin_named_like_a_built_in_is_a_new_build_in_its_place() {
        let digest = "ab".repeat(32);
        let text = format!(
            "{SEED}---\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n\
             metadata: {{ name: retry }}\nspec:\n  url: sha256:{digest}\n  \
             pluginConfig: {{ attemptCountHeader: x-retry-build }}\n"
        );
        let resources = parse(&text);
        let me = Workload {
            service: "orders".into(),
            labels: BTreeMap::new(),
            address: "127.0.0.1:1".into(),
        };
        let snapshot = snapshot_for(&resources, &[], &me);
        let chain = &snapshot.services["payments"].plugins;
        let names: Vec<&str> = chain.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(
            names,
            ["canary", "retry", "outlier", "telemetry"],
            "same place"
        );
        let retry = &chain[1];
        assert_eq!(retry.builtin, None);
        assert_eq!(retry.artifact.as_deref(), Some(digest.as_str()));
        assert_eq!(
            retry.config,
            json!({"attempts": 3, "perTryTimeout": "2s", "retryOn": "5xx,reset",
                   "attemptCountHeader": "x-retry-build"}),
            "the VirtualService's settings, with pluginConfig on top"
        );
    }

    const SCOPED_VS: &str = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: payments }
spec:
  hosts: [payments]
  http:
  - name: testers
    match: [{ headers: { x-user: { exact: tester } } }]
    route: [{ destination: { host: payments, subset: v2 } }]
  - name: default
    route: [{ destination: { host: payments, subset: v1 } }]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: payments }
spec:
  host: payments
  subsets:
  - { name: v1, labels: { version: v1 } }
  - { name: v2, labels: { version: v2 } }
---
";

    fn scoped_wasm(name: &str, routes: &str, service: &str, extra: &str) -> String {
        format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: {name}\n  annotations: {{ weft.io/routes: '{routes}' }}\nspec:\n  url: file:///{name}.wasm\n  targetRefs: [{{ kind: Service, name: {service} }}]\n{extra}---\n"
        )
    }

    #[test]
    fn route_scoped_wasm_plugins_run_right_after_the_canary_in_phase_order() {
        let text = format!(
            "{SCOPED_VS}{}{}{}{}",
            scoped_wasm("audit", "testers,default", "payments", "  phase: STATS\n"),
            scoped_wasm("stamp", "testers", "payments", "  phase: AUTHN\n"),
            scoped_wasm(
                "stamp-low",
                "testers",
                "payments",
                "  phase: AUTHN\n  priority: -1\n"
            ),
            wasm_doc("gate", "  url: file:///gate.wasm\n  phase: AUTHZ\n"),
        );
        let resources = parse(&text);
        assert_eq!(validate(&resources, &|_| true), Ok(vec![]));
        let compiled = compile(&resources, &mesh(), &mesh()[2]);
        assert_eq!(compiled.warnings, Vec::<String>::new());
        let s = compiled.snapshot;
        assert_eq!(
            chain(&s, "payments"),
            [
                "gate",
                "canary",
                "stamp",
                "stamp-low",
                "audit",
                "retry",
                "telemetry"
            ]
        );
        assert_eq!(plugin(&s, "payments", "stamp").routes, ["testers"]);
        assert_eq!(
            plugin(&s, "payments", "audit").routes,
            ["testers", "default"]
        );
        assert!(plugin(&s, "payments", "gate").routes.is_empty());
        assert_eq!(
            plugin(&s, "payments", "canary").config["http"][0]["name"],
            "testers"
        );
        // Scoped to payments' routes, so in no other chain.
        assert_eq!(chain(&s, "orders"), ["gate", "retry", "telemetry"]);
        assert!(s.validate().is_ok(), "{:?}", s.validate());
        // The scope is content: it is in the snapshot's JSON and so in its version.
        let json = serde_json::to_value(&s.services["payments"]).expect("serializes");
        assert_eq!(json["plugins"][2]["routes"], json!(["testers"]));
        assert!(json["plugins"][0].get("routes").is_none());
    }

    #[test]
    fn a_scoped_plugin_keeps_a_canary_that_would_change_nothing() {
        let vs = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: orders }
spec:
  hosts: [orders]
  http:
  - name: all
    route: [{ destination: { host: orders } }]
---
";
        let me = workload("payments", "v1", "127.0.0.1:9001");
        let alone = snapshot_for(&parse(vs), &[], &me);
        assert_eq!(chain(&alone, "orders"), ["retry", "telemetry"]);
        let text = format!("{vs}{}", scoped_wasm("stamp", "all", "orders", ""));
        let resources = parse(&text);
        assert_eq!(validate(&resources, &|_| true), Ok(vec![]));
        let s = snapshot_for(&resources, &[], &me);
        assert_eq!(
            chain(&s, "orders"),
            ["canary", "stamp", "retry", "telemetry"]
        );
        assert_eq!(
            plugin(&s, "orders", "canary").config,
            json!({"host": "orders", "http": [
                {"name": "all", "route": [{"destination": {"host": "orders"}}]}]})
        );
    }

    #[test]
    fn scoped_routes_must_be_the_target_services_http_entries() {
        let text = format!(
            "{SCOPED_VS}{}",
            scoped_wasm("stamp", "testers,checkout", "payments", "")
        );
        assert_eq!(
            validate_errors(&parse(&text)),
            "t.yaml: document 3 (WasmPlugin stamp): metadata.annotations.weft.io/routes: unknown route checkout of payments (VirtualService payments names testers, default)"
        );
        let text = format!(
            "{SCOPED_VS}{}",
            scoped_wasm("stamp", "testers", "orders", "")
        );
        assert_eq!(
            validate_errors(&parse(&text)),
            "t.yaml: document 3 (WasmPlugin stamp): metadata.annotations.weft.io/routes: unknown route testers of orders (no VirtualService for orders)"
        );
        let unnamed = SEED.to_string() + "---\n" + &scoped_wasm("stamp", "testers", "payments", "");
        let all = validate_errors(&parse(&unnamed));
        assert!(
            all.contains("unknown route testers of payments (VirtualService payments names none of its http entries)"),
            "{all}"
        );
        let text = format!(
            "{SCOPED_VS}{}",
            scoped_wasm("retry", "testers", "payments", "")
        );
        let all = validate_errors(&parse(&text));
        assert!(
            all.contains("(WasmPlugin retry): metadata.annotations.weft.io/routes: retry is a new build of the built-in retry and takes its place on every route; it cannot be scoped to routes"),
            "{all}"
        );
        // Compiled anyway without a VirtualService: left out, with a warning, as it could
        // never run.
        let text = scoped_wasm("stamp", "testers", "orders", "");
        let compiled = compile(&parse(&text), &[], &workload("orders", "", "127.0.0.1:1"));
        assert_eq!(chain(&compiled.snapshot, "orders"), ["retry", "telemetry"]);
        assert!(
            compiled
                .warnings
                .iter()
                .any(|w| w.contains("WasmPlugin stamp is scoped to routes testers")),
            "{:?}",
            compiled.warnings
        );
    }
}
