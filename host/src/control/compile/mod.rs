//! Istio resources, checked together and compiled into the snapshot one sidecar applies.
//!
//! Every sidecar gets every service the mesh knows (from the resources or from registered
//! workloads), or, when a Sidecar resource is in force for its workload, those its
//! `egress.hosts` admit and its own (`registryOnly` from its `outboundTrafficPolicy`). For
//! each service:
//!
//! - `subsets` are its DestinationRule's; `endpoints` its registered workloads (address and
//!   labels, each workload carrying `app: <its service>` unless it says otherwise);
//! - `timeout` is its VirtualService's when every `http` entry has the same (`0s` and absent
//!   are both none); otherwise none, and each entry's own goes into its canary entry, so it
//!   holds for exactly the calls that entry matches (see `route_policies`);
//! - `loadBalancer` is its DestinationRule's `trafficPolicy.loadBalancer.simple`
//!   (`LEAST_REQUEST`/`UNSPECIFIED` → `leastRequest`, `ROUND_ROBIN` → `roundRobin`,
//!   `RANDOM` → `random`); `consistentHash` its `consistentHash` (the key and ring size);
//!   `connectionPool` its circuit-breaker bounds (0 or absent: unbounded); `subsetPolicies`
//!   the load balancer and connection pool of each subset with a `trafficPolicy` of its own;
//! - the plugin chain, in this order:
//!   1. WasmPlugins of phase `AUTHN`, then `AUTHZ` (within a phase: higher `priority` first,
//!      then by name, then namespace);
//!   2. `canary`, carrying the VirtualService's `http` entries (name, match, route, timeout);
//!      none without a VirtualService, nor when its one entry sends everything, unmatched and
//!      unsplit, to the service itself (it would change nothing) — unless a plugin scoped to
//!      routes needs that entry's name; when any is, every entry is named (its own name, or
//!      `#<index>`);
//!   3. `fault`, when every `http` entry has the same one (after the canary, so a call no entry
//!      takes gets its 404 untouched), or `fault@<route>`, one per distinct fault when entries
//!      differ, scoped to the routes that have it;
//!   4. `headers` (the entries' header operations and route actions: `redirect`,
//!      `directResponse`, `corsPolicy`), one for every call or `headers@<route>`;
//!   5. route-scoped WasmPlugins (annotation `weft.io/routes`), whatever their phase: they
//!      need the route the canary names, so they come after it (among themselves in phase,
//!      then priority order);
//!   6. `retry`: each entry's `retries`; Istio's default policy (2 attempts on
//!      `DEFAULT_RETRY_ON`) for an entry with none, as Istio gives every route, a service's
//!      default route included; none for an entry whose `attempts` is 0 or absent, as Istio
//!      turns retries off. One plugin when every entry agrees, else `retry@<route>` per
//!      distinct policy, scoped to its routes;
//!   7. `outlier`, when the DestinationRule has `outlierDetection` (its fields as written);
//!   8. WasmPlugins of phase `STATS`;
//!   9. `telemetry`, always;
//!   10. WasmPlugins of no phase (`UNSPECIFIED_PHASE`): last, as Istio puts them just before
//!       the router.
//!
//! Services are known by key (`payments`, `payments.shop`: see `crate::names`); a resource's
//! short hosts are read in its own namespace. A VirtualService or DestinationRule reaches the
//! sidecars of the namespaces its `exportTo` names (every one when absent), and a
//! VirtualService only when it applies to `mesh` (no `gateways`, or `mesh` among them).
//!
//! A WasmPlugin joins the chains of sidecar `me` when its `selector.matchLabels` are among the
//! workload's labels (or it has no selector), and only the chain of the services its
//! `targetRefs` name in its namespace (or every chain), when it is in the workload's namespace
//! or Istio's root namespace `istio-system`, as in Istio. A route-scoped WasmPlugin targets
//! exactly one service and runs only for its calls that took one of the named `http` entries.
//!
//! The snapshot's `inbound.authorization` holds the AuthorizationPolicies that select workload
//! `me`: in its namespace or Istio's root namespace `istio-system` (mesh-wide), with
//! `selector.matchLabels` among its labels or no selector; in a fixed order
//! (namespace, then name). Principals are kept as written: the sidecar compares them exactly
//! with the caller's SPIFFE ID minus `spiffe://`, so they name Weft's trust domain
//! (`weft.local/ns/default/sa/orders`), not Istio's `cluster.local`.
//!
//! The snapshot's `inbound.peerAuthentication` is the mTLS mode Istio's PeerAuthentication
//! precedence gives workload `me`: a policy with `selector.matchLabels` among its labels (in
//! its namespace) over its namespace-wide one (no selector) over the mesh-wide one
//! (`istio-system`, no selector); a level whose mode is `UNSET` (or has no `mtls`) inherits the
//! next. Absent when no level sets a mode: the sidecar keeps its bootstrap mode (Istio's default
//! would be PERMISSIVE). Istio ignores a selector in the root namespace; so does Weft, with a
//! warning. One namespace-wide policy per namespace and one mesh-wide policy (Istio keeps the
//! oldest, which Weft cannot tell); among several workload policies selecting one workload, the
//! first by namespace and name wins, with a warning.
//!
//! The module is split by concern: `validate` (checks across resources, and warnings),
//! `builtins` (the built-ins' configurations and a WasmPlugin's place), `inbound` (the mTLS
//! mode in force), `route_policies` (each entry's policies for its calls alone).
//!
//! A snapshot's version is a digest of its content, so identical content has the identical
//! version and the control plane pushes only what changed.

use crate::control::mesh_config::MeshConfig;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet};

use crate::control::istio::{
    AuthorizationPolicy, DestinationRule, HttpRoute, IstioFailStrategy, Kind, PeerAuthentication,
    PeerAuthnScope, Phase, ROUTES_PATH, Resource, Spec, VirtualService, WasmPlugin, WasmSource,
    service_of_host,
};
use crate::plugin::FailStrategy;
use crate::snapshot::{EndpointSpec, PluginRef, Service, Snapshot};
use route_policies::{RoutePolicies, route_name};

mod builtins;
mod inbound;
mod metrics;
mod route_policies;
#[cfg(test)]
mod tests;
mod tracing;
mod validate;
mod vips;

use builtins::*;
pub(in crate::control) use builtins::{builtin, canary_config, entry_retry};
use inbound::*;
pub use validate::validate;

/// The names the built-in plugins take in a chain; a WasmPlugin with one of them is a new
/// build of that built-in and takes its place.
pub const BUILTIN_NAMES: &[&str] = &crate::snapshot::BUILTINS;

/// Istio's default retries when a route sets none.
pub const DEFAULT_RETRY_ATTEMPTS: u32 = 2;

/// Istio's default `retryOn`.
pub const DEFAULT_RETRY_ON: &str =
    "connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes,503";

/// A registered service instance: what its sidecar is, and where callers reach it.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Workload {
    /// Its service's name (`payments`).
    pub service: String,
    /// Its namespace; state saved before namespaces existed reads as `default`.
    #[serde(
        default = "default_namespace",
        skip_serializing_if = "is_default_namespace"
    )]
    pub namespace: String,
    /// Its labels (`version: v1`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its inbound sidecar, `ip:port`.
    pub address: String,
}

fn default_namespace() -> String {
    crate::names::DEFAULT_NAMESPACE.to_string()
}

fn is_default_namespace(ns: &str) -> bool {
    ns == crate::names::DEFAULT_NAMESPACE
}

impl Workload {
    /// Its service's key (`payments`, or `payments.shop` in namespace `shop`).
    pub fn key(&self) -> String {
        crate::names::service_key(&self.service, &self.namespace)
    }

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

/// Compiles the snapshot for the sidecar of workload `me`. Deterministic: the same resources
/// and workloads, in any order, give the same snapshot and version.
pub fn compile(resources: &[Resource], workloads: &[Workload], me: &Workload) -> Compiled {
    compile_in(resources, workloads, me, &MeshConfig::default())
}

/// [`compile`] under a mesh configuration (its tracing providers).
pub fn compile_in(
    resources: &[Resource],
    workloads: &[Workload],
    me: &Workload,
    mesh: &MeshConfig,
) -> Compiled {
    let catalog = Catalog::new(resources, Some(&me.namespace));
    let mut warnings = Vec::new();

    let mut services: BTreeSet<String> = BTreeSet::new();
    // Wildcard hosts name the services there are; they add none.
    let exact = |k: &&String| !k.starts_with('*');
    services.extend(catalog.virtual_services.keys().filter(exact).cloned());
    services.extend(catalog.destination_rules.keys().filter(exact).cloned());
    for (r, vs) in &catalog.virtual_service_list {
        let ns = r.namespace.as_str();
        let hosts = vs.http.iter().flat_map(|e| &e.route);
        services.extend(hosts.filter_map(|d| {
            service_of_host(&d.destination.host, ns)
                .ok()
                .map(Into::into)
        }));
        // A mirror's service needs a route in every sidecar that may copy calls to it.
        let mirrored = vs.http.iter().flat_map(HttpRoute::all_mirrors);
        services.extend(
            mirrored.filter_map(|(d, _)| service_of_host(&d.host, ns).ok().map(Into::into)),
        );
    }
    services.extend(workloads.iter().map(Workload::key));
    // ServiceEntries: services outside the mesh, by host (the first entry for a host wins),
    // and workloads added to mesh services (MESH_INTERNAL, every entry's).
    let mut external: BTreeMap<String, Vec<EndpointSpec>> = BTreeMap::new();
    let mut entered: BTreeMap<String, Vec<EndpointSpec>> = BTreeMap::new();
    for (r, se) in &catalog.service_entries {
        let Some(entry) = se.service(&r.namespace) else {
            continue;
        };
        if entry.internal {
            entered
                .entry(entry.key)
                .or_default()
                .extend(entry.endpoints);
        } else {
            external.entry(entry.key).or_insert(entry.endpoints);
        }
    }
    services.extend(external.keys().cloned());
    services.extend(entered.keys().cloned());
    services.remove("");
    // A host outside the mesh is a service only through its ServiceEntry: a VirtualService or
    // DestinationRule naming one without it waits for it, as in Istio, and gives no route.
    services.retain(|k| {
        let known = !crate::names::is_external_key(k) || external.contains_key(k);
        if !known {
            warnings.push(format!(
                "{k}: named by a VirtualService or DestinationRule but no ServiceEntry; no route until one exists"
            ));
        }
        known
    });
    // A Sidecar's egress hosts bound what this sidecar is given (its own service stays).
    let scope = sidecar_scope(&catalog, me, &mut warnings);
    if let Some((_, s)) = scope {
        let domain = crate::names::cluster_domain();
        services.retain(|k| s.admits(&me.namespace, k, domain));
    }
    services.insert(me.key());

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
    // Each with the keys of the services it targets (none: every service).
    type Mine<'a> = (&'a Resource, &'a WasmPlugin, BTreeSet<String>, PluginRef);
    let mut mine: Vec<Mine> = Vec::new();
    for (r, wp) in &catalog.wasm_plugins {
        // As Istio: a WasmPlugin applies to the workloads of its own namespace, or to every
        // one from the root namespace.
        let namespace_ok =
            r.namespace == me.namespace || r.namespace == crate::control::istio::ROOT_NAMESPACE;
        if !namespace_ok || !wp.selects(&labels) {
            continue;
        }
        match wasm_plugin_ref(r, wp) {
            Ok(p) => mine.push((r, wp, wp.targets(&r.namespace), p)),
            Err(w) => warnings.push(w),
        }
    }
    mine.sort_by(|a, b| {
        let key = |(r, wp, _, _): &Mine| {
            (
                wp.phase(),
                Reverse(wp.priority.unwrap_or(0)),
                r.name.clone(),
                r.namespace.clone(),
            )
        };
        key(a).cmp(&key(b))
    });

    let mut snapshot = Snapshot {
        metrics_off: metrics::metrics_off(&catalog, me, &labels),
        ..Snapshot::default()
    };
    let client_off = metrics::http_off(&snapshot.metrics_off.client);
    let client_telemetry = if client_off.is_empty() {
        json!({})
    } else {
        json!({ "disabled": client_off })
    };
    for service in &services {
        let service = service.as_str();
        let vs = Catalog::for_service(&catalog.virtual_services, service);
        let dr = Catalog::for_service(&catalog.destination_rules, service);
        let applies =
            move |targets: &BTreeSet<String>| targets.is_empty() || targets.contains(service);
        // A WasmPlugin named like a built-in is a new build of that policy (see below).
        let overrides = |p: &PluginRef| BUILTIN_NAMES.contains(&p.name.as_str());
        let wasm = |phase: Phase| {
            mine.iter()
                .filter(move |(_, wp, _, _)| wp.phase() == phase && wp.runs_on(true))
                .filter(move |(_, _, t, p)| applies(t) && !overrides(p) && p.routes.is_empty())
                .map(|(_, wp, _, p)| PluginRef {
                    ports: wp.ports_on(true),
                    ..p.clone()
                })
        };
        // Route-scoped plugins, in phase and priority order as `mine` is sorted.
        let scoped: Vec<PluginRef> = mine
            .iter()
            .filter(|(_, wp, t, p)| {
                applies(t) && !overrides(p) && !p.routes.is_empty() && wp.runs_on(true)
            })
            .map(|(_, wp, _, p)| PluginRef {
                ports: wp.ports_on(true),
                ..p.clone()
            })
            .collect();

        let mut plugins: Vec<PluginRef> = Vec::new();
        plugins.extend(wasm(Phase::Authn));
        plugins.extend(wasm(Phase::Authz));
        let mut timeout = None;
        match vs {
            Some((vr, vs)) => {
                let policies = RoutePolicies::of(vs, &vr.namespace);
                timeout = policies.service_timeout;
                // Scoped plugins need the canary to name the route, even where it would
                // otherwise change nothing.
                let names_routes = policies.names_routes || !scoped.is_empty();
                if let Some(config) = canary_config(
                    service,
                    vs,
                    &vr.namespace,
                    names_routes,
                    Some((&labels, me.namespace.as_str())),
                ) {
                    plugins.push(builtin("canary", config));
                    plugins.extend(policies.shared_fault);
                    plugins.extend(policies.scoped_faults);
                    plugins.extend(policies.actions);
                    plugins.extend(scoped.iter().cloned());
                } else {
                    // No canary: one entry sending everything to the service, so a fault and
                    // any actions are for every call.
                    plugins.extend(policies.shared_fault);
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
        plugins.push(builtin("telemetry", client_telemetry.clone()));
        plugins.extend(wasm(Phase::Unspecified));
        for (_, _, _, build) in mine
            .iter()
            .filter(|(_, wp, t, p)| applies(t) && overrides(p) && wp.runs_on(true))
        {
            replace_builtin(&mut plugins, build);
        }

        let outside = external.get(service);
        let mut endpoints: Vec<EndpointSpec> = match outside {
            Some(list) => list.clone(),
            None => workloads
                .iter()
                .filter(|w| crate::names::key_parts(service) == (&w.service, &w.namespace))
                .map(|w| EndpointSpec {
                    address: w.address.clone(),
                    labels: w.effective_labels(),
                })
                .chain(entered.get(service).into_iter().flatten().cloned())
                .collect(),
        };
        endpoints.sort_by(|a, b| (&a.address, &a.labels).cmp(&(&b.address, &b.labels)));
        endpoints.dedup();

        let compiled = Service {
            timeout,
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
            vip: None,
            connection_pool: dr.and_then(|(_, d)| d.connection_pool()),
            external: outside.is_some(),
            tls: dr
                .filter(|_| outside.is_some())
                .and_then(|(_, d)| d.origination()),
            plaintext: outside.is_none() && dr.is_some_and(|(_, d)| d.plaintext()),
            consistent_hash: dr.and_then(|(_, d)| d.consistent_hash()),
            subset_policies: dr.map(|(_, d)| d.subset_policies()).unwrap_or_default(),
        };
        snapshot.services.insert(service.to_string(), compiled);
    }
    vips::assign(&mut snapshot.services);
    snapshot.registry_only = scope.is_some_and(|(_, s)| s.registry_only());
    let server_off = metrics::http_off(&snapshot.metrics_off.server);
    let (plugins, authorize_after) = server_chain(&mine, &me.key(), server_off);
    snapshot.inbound.plugins = plugins;
    snapshot.inbound.authorize_after = authorize_after;
    snapshot.inbound.authorization = catalog
        .authorization_policies
        .iter()
        .filter(|(r, ap)| ap.selects(&r.namespace, &me.namespace, &labels))
        .map(|(r, ap)| ap.to_snapshot(format!("{}/{}", r.namespace, r.name)))
        .collect();
    snapshot.inbound.peer_authentication =
        peer_authentication(&catalog, me, &labels, &mut warnings);
    snapshot.access_log = access_logging(&catalog, me, &labels, mesh);
    snapshot.tracing = tracing::tracing(&catalog, me, &labels, mesh);
    let domain = crate::names::cluster_domain();
    snapshot.cluster_domain =
        (domain != crate::names::DEFAULT_CLUSTER_DOMAIN).then(|| domain.to_string());
    snapshot.version = version_of(&snapshot);
    Compiled { snapshot, warnings }
}

/// The Sidecar in force for `me`: Istio's most specific level that selects it (a workload
/// selector, then its namespace's, then the root namespace's); the first by name, with a
/// warning, when several share that level.
fn sidecar_scope<'a>(
    catalog: &Catalog<'a>,
    me: &Workload,
    warnings: &mut Vec<String>,
) -> Option<(&'a Resource, &'a crate::control::istio::SidecarScope)> {
    let labels = me.effective_labels();
    let mut selecting: Vec<_> = catalog
        .sidecars
        .iter()
        .filter(|(r, s)| s.selects(&r.namespace, &me.namespace, &labels))
        .filter_map(|(r, s)| Some((s.scope(&r.namespace)?, *r, *s)))
        .collect();
    let best = selecting.iter().map(|(level, _, _)| *level).max()?;
    selecting.retain(|(level, _, _)| *level == best);
    if selecting.len() > 1 {
        warnings.push(format!(
            "{}: several Sidecars select it at one level; using {}",
            me.key(),
            selecting[0].1.origin()
        ));
    }
    selecting.first().map(|(_, r, s)| (*r, *s))
}

/// The server-side chain of workload `key`: the WasmPlugins selecting it whose `match` covers
/// the server side (and whose `targetRefs`, if any, name its service), in phase and priority
/// order, with `telemetry` (reporting as the destination) before the unphased ones, as on the
/// client side. Route-scoped plugins stay on the client side, where routes are named. Also how
/// many run before the authorization policies: the `AUTHN` and `AUTHZ` phases.
fn server_chain(
    mine: &[(&Resource, &WasmPlugin, BTreeSet<String>, PluginRef)],
    key: &str,
    off: Vec<String>,
) -> (Vec<PluginRef>, usize) {
    let here = |(_, wp, t, p): &&(&Resource, &WasmPlugin, BTreeSet<String>, PluginRef)| {
        wp.runs_on(false) && (t.is_empty() || t.contains(key)) && p.routes.is_empty()
    };
    let overrides = |p: &PluginRef| BUILTIN_NAMES.contains(&p.name.as_str());
    let phase = |phase: Phase| {
        mine.iter()
            .filter(here)
            .filter(move |(_, wp, _, p)| wp.phase() == phase && !overrides(p))
            .map(|(_, wp, _, p)| PluginRef {
                ports: wp.ports_on(false),
                ..p.clone()
            })
    };
    let mut plugins: Vec<PluginRef> = phase(Phase::Authn).chain(phase(Phase::Authz)).collect();
    let authorize_after = plugins.len();
    plugins.extend(phase(Phase::Stats));
    let mut telemetry = json!({ "reporter": "destination" });
    if !off.is_empty() {
        telemetry["disabled"] = json!(off);
    }
    plugins.push(builtin("telemetry", telemetry));
    plugins.extend(phase(Phase::Unspecified));
    for (_, _, _, build) in mine.iter().filter(here).filter(|(_, _, _, p)| overrides(p)) {
        replace_builtin(&mut plugins, build);
    }
    (plugins, authorize_after)
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

/// [`compile_in`]'s snapshot alone.
pub fn snapshot_in(
    resources: &[Resource],
    workloads: &[Workload],
    me: &Workload,
    mesh: &MeshConfig,
) -> Snapshot {
    compile_in(resources, workloads, me, mesh).snapshot
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

/// A resource host's key in the catalog ([`crate::names::HostRef::key`]).
fn host_key(host: &str, namespace: &str) -> Option<String> {
    crate::names::host_ref(host, namespace)
        .ok()
        .map(|r| r.key())
}

/// Resources by what compiling needs, in a fixed order whatever order they came in.
///
/// VirtualServices and DestinationRules are keyed by the service keys their hosts name; those
/// not exported to the `viewer` namespace are left out (none: every one, to check them all).
/// A VirtualService bound only to gateways is no sidecar's, so it is left out too.
struct Catalog<'a> {
    virtual_services: BTreeMap<String, Vec<(&'a Resource, &'a VirtualService)>>,
    virtual_service_list: Vec<(&'a Resource, &'a VirtualService)>,
    destination_rules: BTreeMap<String, Vec<(&'a Resource, &'a DestinationRule)>>,
    wasm_plugins: Vec<(&'a Resource, &'a WasmPlugin)>,
    authorization_policies: Vec<(&'a Resource, &'a AuthorizationPolicy)>,
    peer_authentications: Vec<(&'a Resource, &'a PeerAuthentication)>,
    telemetries: Vec<(&'a Resource, &'a crate::control::istio::Telemetry)>,
    sidecars: Vec<(&'a Resource, &'a crate::control::istio::SidecarScope)>,
    service_entries: Vec<(&'a Resource, &'a crate::control::istio::ServiceEntry)>,
}

impl<'a> Catalog<'a> {
    /// The resource that holds for service `key` in `map`: the one naming it exactly, else the
    /// wildcard with the longest suffix naming it, as Istio picks the most specific host.
    fn for_service<'m, T>(map: &'m BTreeMap<String, Vec<T>>, key: &str) -> Option<&'m T> {
        if let Some(list) = map.get(key) {
            return list.first();
        }
        map.iter()
            .filter_map(|(host, list)| {
                let suffix = host.strip_prefix("*.")?;
                crate::names::wildcard_names(suffix, key).then_some((suffix.len(), list))
            })
            .max_by_key(|(len, _)| *len)
            .and_then(|(_, list)| list.first())
    }

    fn new(resources: &'a [Resource], viewer: Option<&str>) -> Self {
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
            telemetries: Vec::new(),
            sidecars: Vec::new(),
            service_entries: Vec::new(),
        };
        let visible = |export_to: &[String], own: &str| {
            viewer.is_none_or(|v| crate::control::istio::exported_to(export_to, own, v))
        };
        for r in sorted {
            let ns = r.namespace.as_str();
            match &r.spec {
                // An HTTPRoute routes as the VirtualService it means.
                Spec::VirtualService(vs)
                | Spec::GatewayHttpRoute(crate::control::istio::GatewayHttpRoute {
                    mesh: vs,
                    ..
                })
                | Spec::GatewayGrpcRoute(crate::control::istio::GatewayGrpcRoute {
                    mesh: vs,
                    ..
                }) => {
                    if !vs.applies_to_mesh() || !visible(&vs.export_to, ns) {
                        continue;
                    }
                    catalog.virtual_service_list.push((r, vs));
                    let services: BTreeSet<String> =
                        vs.hosts.iter().filter_map(|h| host_key(h, ns)).collect();
                    for s in services {
                        catalog.virtual_services.entry(s).or_default().push((r, vs));
                    }
                }
                Spec::DestinationRule(dr) => {
                    if !visible(&dr.export_to, ns) {
                        continue;
                    }
                    if let Some(s) = host_key(&dr.host, ns) {
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
                Spec::Telemetry(t) => catalog.telemetries.push((r, t)),
                Spec::Sidecar(s) => catalog.sidecars.push((r, s)),
                Spec::ServiceEntry(se) => catalog.service_entries.push((r, se)),
            }
        }
        catalog
    }
}
