//! The snapshot: everything a sidecar needs to route — services, their subsets, endpoints,
//! timeouts and plugin chains — in the one form a local file gives today and the control plane
//! will push later. Validation collects every problem, each with the field's path.

mod origin_tls;
pub mod plugin_limits;

pub use origin_tls::OriginTls;
pub use plugin_limits::PluginLimits;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// A versioned routing snapshot.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Snapshot {
    /// Identifies this snapshot; sidecars report it.
    pub version: String,
    /// Services by name (the authority callers use).
    #[serde(default)]
    pub services: BTreeMap<String, Service>,
    /// What the inbound side enforces on calls to this workload; left out when empty, so a
    /// snapshot without it keeps the version it had before the section existed.
    #[serde(default, skip_serializing_if = "Inbound::is_empty")]
    pub inbound: Inbound,
    /// The cluster domain the control plane read hosts in, when not `cluster.local`: a sidecar
    /// reading callers' hosts in another refuses the snapshot rather than misroute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_domain: Option<String>,
    /// Access logging for this sidecar's calls, from the Telemetry resources that select its
    /// workload; left out when off, so a snapshot without any keeps its version.
    #[serde(default, skip_serializing_if = "crate::access_log::Sides::is_empty")]
    pub access_log: crate::access_log::Sides,
    /// Tracing for this sidecar's calls, per side; left out when off.
    #[serde(default, skip_serializing_if = "Tracing::is_empty")]
    pub tracing: Tracing,
    /// The standard metrics a Telemetry turned off, per side; left out when none is.
    #[serde(default, skip_serializing_if = "MetricsOff::is_empty")]
    pub metrics_off: MetricsOff,
    /// Calls to destinations outside `services` are refused rather than passed through (a
    /// Sidecar's `outboundTrafficPolicy: REGISTRY_ONLY`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub registry_only: bool,
}

/// Istio's standard metrics, as Weft reports them.
pub const STANDARD_METRICS: [&str; 8] = [
    "istio_requests_total",
    "istio_request_duration_milliseconds",
    "istio_request_bytes",
    "istio_response_bytes",
    "istio_tcp_connections_opened_total",
    "istio_tcp_connections_closed_total",
    "istio_tcp_sent_bytes_total",
    "istio_tcp_received_bytes_total",
];

/// Standard metrics not reported, per side (the HTTP ones are also in the telemetry plugins'
/// configurations; the sidecar reads the TCP ones).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsOff {
    /// Not reported for the calls the workload makes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub client: Vec<String>,
    /// Not reported for the calls into the workload.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub server: Vec<String>,
}

impl MetricsOff {
    /// Whether every metric is reported.
    pub fn is_empty(&self) -> bool {
        self.client.is_empty() && self.server.is_empty()
    }
}

/// Tracing per side of a sidecar's calls: absent, no spans on that side (context still
/// passes through).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Tracing {
    /// The calls the workload makes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<TraceSide>,
    /// The calls into the workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<TraceSide>,
}

impl Tracing {
    /// Whether neither side traces.
    pub fn is_empty(&self) -> bool {
        self.client.is_none() && self.server.is_none()
    }
}

/// One side's tracing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TraceSide {
    /// The collector's OTLP/HTTP URL (`http://host:4318/v1/traces`).
    pub endpoint: String,
    /// How long one export may take (`5s` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// The percentage of new traces sampled.
    pub sampling: f64,
    /// Whether spans are reported (false: trace context is propagated, nothing is sent).
    pub report: bool,
}

/// The inbound side's policies.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Inbound {
    /// Authorization policies (Istio's `AuthorizationPolicy`) that select this workload.
    #[serde(default)]
    pub authorization: Vec<AuthzPolicy>,
    /// The mTLS mode Istio's `PeerAuthentication` puts in force on the inbound listener; none:
    /// the sidecar keeps the mode its bootstrap gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer_authentication: Option<MtlsMode>,
    /// The server-side plugin chain: run on every call into the workload, before the app.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub plugins: Vec<PluginRef>,
    /// How many of `plugins` run before the authorization policies (Istio's `AUTHN` and
    /// `AUTHZ` phases); the rest run after them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub authorize_after: usize,
}

fn is_zero(n: &usize) -> bool {
    *n == 0
}

impl Inbound {
    /// Whether there is nothing to enforce.
    pub fn is_empty(&self) -> bool {
        self.authorization.is_empty()
            && self.peer_authentication.is_none()
            && self.plugins.is_empty()
    }
}

/// The inbound listener's mTLS mode, as `PeerAuthentication` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MtlsMode {
    /// Only mTLS with a certificate from the mesh.
    #[serde(rename = "STRICT")]
    Strict,
    /// mTLS or plaintext.
    #[serde(rename = "PERMISSIVE")]
    Permissive,
}

impl MtlsMode {
    /// The identity layer's form, which the listener's TLS configs are built for.
    pub fn peer_auth_mode(self) -> crate::identity::PeerAuthMode {
        match self {
            MtlsMode::Strict => crate::identity::PeerAuthMode::Strict,
            MtlsMode::Permissive => crate::identity::PeerAuthMode::Permissive,
        }
    }
}

/// One authorization policy: a rule matching a call triggers `action`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzPolicy {
    /// Where it came from (`<namespace>/<name>`), for logs.
    #[serde(default)]
    pub name: String,
    /// `ALLOW` or `DENY`.
    #[serde(default)]
    pub action: AuthzAction,
    /// Any of them matching is the policy matching; none never matches (Istio: an ALLOW with
    /// no rules allows nothing).
    #[serde(default)]
    pub rules: Vec<AuthzRule>,
}

/// What a matching policy does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthzAction {
    /// Calls must match one ALLOW policy when there is any.
    #[default]
    #[serde(rename = "ALLOW")]
    Allow,
    /// A call matching one is refused.
    #[serde(rename = "DENY")]
    Deny,
}

/// One rule: every non-empty clause list must have an entry that matches.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzRule {
    /// Who may call; any entry matching is enough, none: anyone.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<AuthzSource>,
    /// What they may call; any entry matching is enough, none: anything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<AuthzOperation>,
}

/// A caller condition; every non-empty field must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzSource {
    /// Istio principals (`<trust domain>/ns/<ns>/sa/<sa>`, `*`, `prefix*`, `*suffix`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Principals the caller must not be.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
    /// The caller's namespace (its SPIFFE ID's), as patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
    /// Namespaces the caller must not be in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_namespaces: Vec<String>,
}

/// A request condition; every non-empty field must hold.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzOperation {
    /// Paths (without the query), as patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Paths the request's must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
    /// Methods, as patterns.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Methods the request's must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
}

/// Checks an authorization pattern as Istio writes them: `*` alone, `prefix*`, `*suffix` or
/// an exact value; a `*` anywhere else would be read literally by Istio, so it is refused.
pub fn check_authz_pattern(text: &str) -> Result<(), String> {
    if text.is_empty() {
        return Err("must not be empty".to_string());
    }
    if text == "*" {
        return Ok(());
    }
    let inner = text.strip_prefix('*').unwrap_or(text);
    let inner = if inner.len() == text.len() {
        inner.strip_suffix('*').unwrap_or(inner)
    } else {
        inner
    };
    if inner.contains('*') {
        return Err(format!(
            "{text:?}: `*` may only stand alone, start (`*suffix`) or end (`prefix*`) a value"
        ));
    }
    Ok(())
}

/// One destination service.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Service {
    /// Overall timeout per call (`"6s"`); none for unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Subsets by name, each a label selector.
    #[serde(default)]
    pub subsets: BTreeMap<String, BTreeMap<String, String>>,
    /// The service's endpoints (their inbound sidecars).
    #[serde(default)]
    pub endpoints: Vec<EndpointSpec>,
    /// The filter chain, in order.
    #[serde(default)]
    pub plugins: Vec<PluginRef>,
    /// `leastRequest` (default), `roundRobin` or `random`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<String>,
    /// The virtual IP the control plane gave the service: a pod's sidecar answers DNS for the
    /// service's names with it, and captured connections to it are the service's calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vip: Option<std::net::Ipv4Addr>,
    /// Circuit breaking, per destination (the service, and each subset on its own).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
    /// Affinity: endpoints picked on a ring by a hash of each request's key, in place of
    /// `loadBalancer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,
    /// A service outside the mesh (a ServiceEntry): its endpoints are the service itself
    /// (`ip:port`, or `host:port` resolved when connecting), called over plain HTTP/1.1
    /// without the mesh's headers.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
    /// TLS originated to a service outside the mesh; none: plain HTTP/1.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<OriginTls>,
    /// Calls to this mesh service go to its sidecars in plaintext, not mTLS (a
    /// DestinationRule's `tls.mode: DISABLE`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plaintext: bool,
    /// Subsets with a policy of their own, by name: each field given replaces the service's
    /// for calls to the subset.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subset_policies: BTreeMap<String, SubsetPolicy>,
}

/// A subset's own traffic policy (a DestinationRule subset's `trafficPolicy`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SubsetPolicy {
    /// Its load balancer (`leastRequest`, `roundRobin`, `random`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<String>,
    /// Its consistent hash.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consistent_hash: Option<ConsistentHash>,
    /// Its circuit breaker's bounds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_pool: Option<ConnectionPool>,
}

/// Envoy's ring-hash load balancing, keyed as a DestinationRule's `consistentHash` says.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConsistentHash {
    /// Hash this request header's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Hash this cookie's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<HashCookie>,
    /// Hash the caller's IP address.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub source_ip: bool,
    /// Hash this query parameter's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query_parameter: Option<String>,
    /// The fewest entries on the ring.
    pub minimum_ring_size: u32,
}

/// The cookie a consistent hash reads, and sets when absent.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HashCookie {
    /// Its name.
    pub name: String,
    /// The path it is set for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// Set when absent with this `Max-Age` (0: a session cookie); none: never set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_s: Option<u64>,
}

/// Bounds on one destination's connections, requests and retries (Envoy's circuit
/// breakers, from a DestinationRule's `connectionPool`); absent means unbounded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ConnectionPool {
    /// HTTP/1.1 connections open at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<u32>,
    /// Requests waiting for a connection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_pending_requests: Option<u32>,
    /// Requests in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests: Option<u32>,
    /// Requests sent on one HTTP/1.1 connection before it is closed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_requests_per_connection: Option<u32>,
    /// Retries in flight.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
}

/// An endpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct EndpointSpec {
    /// `ip:port`.
    pub address: String,
    /// Labels (`version: v1`).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// A plugin in a chain.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PluginRef {
    /// Its name (metrics, logs, shared state).
    pub name: String,
    /// A built-in plugin: `canary`, `retry`, `outlier`, `telemetry` or `fault`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub builtin: Option<String>,
    /// A component file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// An artifact in the control plane's store, by sha256 (hex); the sidecar fetches it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// The sha256 the artifact must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Its configuration.
    #[serde(default)]
    pub config: serde_json::Value,
    /// `fail-open` (default) or `fail-closed`.
    #[serde(default)]
    pub fail_strategy: crate::plugin::FailStrategy,
    /// The routes (VirtualService `http` entry names) it runs for, as an earlier plugin
    /// names them; empty: every call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<String>,
    /// The ports it runs for (a WasmPlugin's `match[].ports`: on the client side the service
    /// port the app called, on the server side the app's port); empty: every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
    /// Its own sandbox bounds; none: the sidecar's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<PluginLimits>,
    /// A proxy-wasm filter's root id (a WasmPlugin's `pluginName`): the root context an SDK
    /// selects by it, and the `plugin_root_id` property.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub root_id: String,
}

/// The built-in plugins the binary carries.
pub const BUILTINS: [&str; 6] = [
    "canary",
    "retry",
    "outlier",
    "telemetry",
    "fault",
    "headers",
];

/// The embedded bytes of a built-in plugin.
pub fn builtin_bytes(name: &str) -> Option<&'static [u8]> {
    match name {
        "canary" => Some(weft_artifacts::CANARY),
        "retry" => Some(weft_artifacts::RETRY),
        "outlier" => Some(weft_artifacts::OUTLIER),
        "telemetry" => Some(weft_artifacts::TELEMETRY),
        "fault" => Some(weft_artifacts::FAULT),
        "headers" => Some(weft_artifacts::HEADERS),
        _ => None,
    }
}

/// Whether `text` is a sha256 digest as the artifact store names them.
pub fn is_digest(text: &str) -> bool {
    text.len() == 64 && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// What a control plane's watch drives: a data plane snapshots are applied to. The watch
/// client knows the data plane only through this, so the control code never imports the
/// proxy.
pub trait SnapshotTarget: Sync {
    /// Where fetched artifacts go, named `<sha256>.wasm`.
    fn artifact_dir(&self) -> &std::path::Path;
    /// The version it runs now.
    fn current_version(&self) -> String;
    /// Applies a snapshot whole, or refuses it and keeps the last one, with the reason.
    fn apply_snapshot(
        &self,
        snapshot: Snapshot,
    ) -> impl std::future::Future<Output = Result<(), String>> + Send;
    /// Its plugin engine's fingerprint, to be sent code compiled for it; none: it compiles
    /// everything itself.
    fn engine_fingerprint(&self) -> Option<String> {
        None
    }
    /// The fingerprint of its baseline-tier engine (quick to compile for, slower to run), to
    /// be sent such code while optimized code is being compiled; none: it has no such tier.
    fn baseline_fingerprint(&self) -> Option<String> {
        None
    }
    /// Whether artifact `digest` has optimized code here already.
    fn has_compiled(&self, _digest: &str) -> bool {
        true
    }
    /// Whether artifact `digest` runs on baseline code here.
    fn runs_baseline(&self, _digest: &str) -> bool {
        false
    }
    /// Whether code for artifact `digest` (of either tier) is held in memory, so loading it
    /// needs neither the component's bytes nor a compile.
    fn holds_compiled(&self, _digest: &str) -> bool {
        false
    }
    /// Takes code the control plane compiled for artifact `digest` and the engine of
    /// `fingerprint`.
    fn import_compiled(
        &self,
        _digest: &str,
        _fingerprint: &str,
        _code: &[u8],
    ) -> Result<(), String> {
        Ok(())
    }
    /// Drops the code held for artifact `digest`, so the next apply compiles it here.
    fn forget_compiled(&self, _digest: &str) {}
    /// Builds the snapshot in force again (its plugins from the code now held), swapping it in
    /// as any snapshot is.
    fn reapply(&self) -> impl std::future::Future<Output = Result<(), String>> + Send {
        async { Ok(()) }
    }
}

/// A snapshot that cannot be applied, with every reason found.
#[derive(Debug, thiserror::Error)]
#[error("snapshot rejected:\n  - {}", .0.join("\n  - "))]
pub struct Rejected(pub Vec<String>);

/// Checks one chain's plugin references (`at`: where the chain is, for messages).
fn check_plugins(plugins: &[PluginRef], at: &str, errors: &mut Vec<String>) {
    let mut seen = std::collections::BTreeSet::new();
    for (i, p) in plugins.iter().enumerate() {
        let at = format!("{at}.plugins[{i}]");
        if p.name.is_empty() {
            errors.push(format!("{at}.name: must not be empty"));
        } else if !seen.insert(p.name.as_str()) {
            errors.push(format!(
                "{at}.name: {:?} appears twice in the chain",
                p.name
            ));
        }
        match (&p.builtin, &p.file, &p.artifact) {
            (Some(b), None, None) if builtin_bytes(b).is_none() => errors.push(format!(
                "{at}.builtin: unknown built-in {b:?} (known: {})",
                BUILTINS.join(", ")
            )),
            (None, None, Some(d)) if !is_digest(d) => errors.push(format!(
                "{at}.artifact: {d:?} is not a sha256 (64 lower-case hex digits)"
            )),
            (Some(_), None, None) | (None, Some(_), None) | (None, None, Some(_)) => {}
            _ => errors.push(format!(
                "{at}: exactly one of builtin, file or artifact is required"
            )),
        }
        for (j, route) in p.routes.iter().enumerate() {
            if route.is_empty() {
                errors.push(format!("{at}.routes[{j}]: must not be empty"));
            }
        }
        if let Some(limits) = &p.limits {
            limits.check(&format!("{at}.limits"), errors);
        }
    }
}

/// Parses an Istio-style duration (`"6s"`, `"250ms"`), the same way plugins do.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    weft_sdk::config::IstioDuration::parse(text).map(|d| d.0)
}

impl Snapshot {
    /// Every plugin it names: each service's chain, then the server-side chain.
    pub fn plugin_refs(&self) -> impl Iterator<Item = &PluginRef> {
        (self.services.values().flat_map(|s| &s.plugins)).chain(&self.inbound.plugins)
    }

    /// Parses JSON text.
    pub fn from_json(text: &str) -> Result<Snapshot, Rejected> {
        serde_json::from_str(text).map_err(|e| Rejected(vec![format!("invalid JSON: {e}")]))
    }

    /// Checks everything that can be checked without loading plugins.
    pub fn validate(&self) -> Result<(), Rejected> {
        let mut errors = Vec::new();
        if self.version.trim().is_empty() {
            errors.push("version: must not be empty".to_string());
        }
        let theirs = self
            .cluster_domain
            .as_deref()
            .unwrap_or(crate::names::DEFAULT_CLUSTER_DOMAIN);
        let ours = crate::names::cluster_domain();
        if theirs != ours {
            errors.push(format!(
                "clusterDomain: the control plane reads hosts in cluster domain {theirs:?}, this sidecar in {ours:?}: give the sidecar's bootstrap \"clusterDomain\": {theirs:?}"
            ));
        }
        let mut vips = std::collections::BTreeMap::new();
        for (name, svc) in &self.services {
            let at = format!("services.{name}");
            if let Some(vip) = svc.vip
                && let Some(other) = vips.insert(vip, name)
            {
                errors.push(format!("{at}.vip: {vip} is also service {other}'s"));
            }
            if name.is_empty() || name.contains(['/', ' ', ':']) {
                errors.push(format!("{at}: invalid service name"));
            }
            if let Some(t) = &svc.timeout
                && let Err(e) = parse_duration(t)
            {
                errors.push(format!("{at}.timeout: {e}"));
            }
            if let Some(lb) = &svc.load_balancer
                && crate::proxy::balance::Kind::parse(lb).is_none()
            {
                errors.push(format!(
                    "{at}.loadBalancer: unknown policy {lb:?} (known: leastRequest, roundRobin, random)"
                ));
            }
            for (name, policy) in &svc.subset_policies {
                if !svc.subsets.contains_key(name) {
                    errors.push(format!(
                        "{at}.subsetPolicies.{name}: no subset is named {name:?}"
                    ));
                }
                if let Some(lb) = &policy.load_balancer
                    && crate::proxy::balance::Kind::parse(lb).is_none()
                {
                    errors.push(format!(
                        "{at}.subsetPolicies.{name}.loadBalancer: unknown policy {lb:?} (known: leastRequest, roundRobin, random)"
                    ));
                }
            }
            for (i, ep) in svc.endpoints.iter().enumerate() {
                // An external service's endpoint may be a host name, resolved when connecting.
                let named = svc.external
                    && ep
                        .address
                        .parse::<http::uri::Authority>()
                        .is_ok_and(|a| a.port_u16().is_some());
                if !named && ep.address.parse::<SocketAddr>().is_err() {
                    errors.push(format!(
                        "{at}.endpoints[{i}].address: {:?} is not ip:port",
                        ep.address
                    ));
                }
            }
            if svc.plaintext && svc.external {
                errors.push(format!(
                    "{at}.plaintext: a service outside the mesh is called in plaintext unless it has `tls`"
                ));
            }
            if let Some(tls) = &svc.tls {
                if !svc.external {
                    errors.push(format!(
                        "{at}.tls: TLS is originated only to services outside the mesh"
                    ));
                }
                tls.check(&format!("{at}.tls"), &mut errors);
            }
            check_plugins(&svc.plugins, &at, &mut errors);
        }
        check_plugins(&self.inbound.plugins, "inbound", &mut errors);
        for (side, t) in [
            ("client", &self.tracing.client),
            ("server", &self.tracing.server),
        ] {
            let Some(t) = t else { continue };
            if !(0.0..=100.0).contains(&t.sampling) {
                errors.push(format!(
                    "tracing.{side}.sampling: {} is not a percentage",
                    t.sampling
                ));
            }
            if !t.endpoint.starts_with("http://") {
                errors.push(format!(
                    "tracing.{side}.endpoint: {:?} is not an http:// URL",
                    t.endpoint
                ));
            }
            if let Some(timeout) = &t.timeout
                && let Err(e) = parse_duration(timeout)
            {
                errors.push(format!("tracing.{side}.timeout: {e}"));
            }
        }
        for (i, p) in self.inbound.plugins.iter().enumerate() {
            if !p.routes.is_empty() {
                errors.push(format!(
                    "inbound.plugins[{i}].routes: a server-side call takes no route, so a plugin scoped to routes cannot run there"
                ));
            }
        }
        if self.inbound.authorize_after > self.inbound.plugins.len() {
            errors.push(format!(
                "inbound.authorizeAfter: {} is more than the {} plugins of the chain",
                self.inbound.authorize_after,
                self.inbound.plugins.len()
            ));
        }
        for (side, sinks) in [
            ("client", &self.access_log.client),
            ("server", &self.access_log.server),
        ] {
            for (i, sink) in sinks.iter().enumerate() {
                if let Some(f) = &sink.filter
                    && let Err(e) = crate::access_log::Filter::parse(f)
                {
                    errors.push(format!("accessLog.{side}[{i}].filter: {e}"));
                }
            }
        }
        for (i, policy) in self.inbound.authorization.iter().enumerate() {
            let at = format!("inbound.authorization[{i}]");
            for (j, rule) in policy.rules.iter().enumerate() {
                let at = format!("{at}.rules[{j}]");
                let lists = rule
                    .from
                    .iter()
                    .enumerate()
                    .flat_map(|(k, s)| {
                        [
                            (format!("{at}.from[{k}].principals"), &s.principals),
                            (format!("{at}.from[{k}].notPrincipals"), &s.not_principals),
                        ]
                    })
                    .chain(rule.to.iter().enumerate().flat_map(|(k, o)| {
                        [
                            (format!("{at}.to[{k}].paths"), &o.paths),
                            (format!("{at}.to[{k}].notPaths"), &o.not_paths),
                            (format!("{at}.to[{k}].methods"), &o.methods),
                            (format!("{at}.to[{k}].notMethods"), &o.not_methods),
                        ]
                    }));
                for (at, values) in lists {
                    for (k, v) in values.iter().enumerate() {
                        if let Err(e) = check_authz_pattern(v) {
                            errors.push(format!("{at}[{k}]: {e}"));
                        }
                    }
                }
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Rejected(errors))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"{"version":"", "services":{"payments":{
            "timeout":"6", "endpoints":[{"address":"nowhere"}],
            "plugins":[{"name":"a","builtin":"nope"},{"name":"a","builtin":"retry","file":"x.wasm"},
                       {"name":"b","builtin":"retry","routes":["testers",""]}]}}}"#;
        let err = Snapshot::from_json(text)
            .expect("parses")
            .validate()
            .expect_err("invalid");
        let all = err.0.join("\n");
        for needle in [
            "version: must not be empty",
            "services.payments.timeout: invalid duration \"6\"",
            "services.payments.endpoints[0].address: \"nowhere\" is not ip:port",
            "services.payments.plugins[0].builtin: unknown built-in \"nope\"",
            "services.payments.plugins[1].name: \"a\" appears twice",
            "services.payments.plugins[1]: exactly one of builtin, file or artifact",
            "services.payments.plugins[2].routes[1]: must not be empty",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn routes_round_trip_and_are_left_out_when_empty() {
        let text = r#"{"version":"1","services":{"payments":{"plugins":[
            {"name":"a","builtin":"retry","routes":["testers"]},{"name":"b","builtin":"fault"}]}}}"#;
        let snapshot = Snapshot::from_json(text).expect("parses");
        assert!(snapshot.validate().is_ok());
        let plugins = &snapshot.services["payments"].plugins;
        assert_eq!(plugins[0].routes, ["testers"]);
        assert!(plugins[1].routes.is_empty());
        let json = serde_json::to_value(&snapshot).expect("serializes");
        assert_eq!(
            json["services"]["payments"]["plugins"][0]["routes"][0],
            "testers"
        );
        assert!(
            json["services"]["payments"]["plugins"][1]
                .get("routes")
                .is_none()
        );
    }

    #[test]
    fn peer_authentication_round_trips_and_is_left_out_when_absent() {
        let text = r#"{"version":"1","inbound":{"peerAuthentication":"STRICT"}}"#;
        let snapshot = Snapshot::from_json(text).expect("parses");
        assert_eq!(snapshot.inbound.peer_authentication, Some(MtlsMode::Strict));
        assert!(!snapshot.inbound.is_empty());
        let json = serde_json::to_value(&snapshot).expect("serializes");
        assert_eq!(json["inbound"]["peerAuthentication"], "STRICT");
        let none = Snapshot::from_json(r#"{"version":"1"}"#).expect("parses");
        let json = serde_json::to_value(&none).expect("serializes");
        assert!(json.get("inbound").is_none());
        let err =
            Snapshot::from_json(r#"{"version":"1","inbound":{"peerAuthentication":"DISABLE"}}"#)
                .expect_err("not a mode");
        assert!(
            err.to_string().contains("unknown variant `DISABLE`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = Snapshot::from_json(r#"{"version":"1","servces":{}}"#).expect_err("typo");
        assert!(err.to_string().contains("unknown field `servces`"), "{err}");
    }

    #[test]
    fn the_inbound_section_is_validated_and_left_out_when_empty() {
        let text = r#"{"version":"1","inbound":{"authorization":[{"name":"default/a","action":"DENY",
            "rules":[{"from":[{"principals":["a*b"]}],"to":[{"paths":["/x","*/y*"],"methods":[""]}]}]}]}}"#;
        let err = Snapshot::from_json(text)
            .expect("parses")
            .validate()
            .expect_err("invalid");
        let all = err.0.join("\n");
        for needle in [
            "inbound.authorization[0].rules[0].from[0].principals[0]: \"a*b\": `*` may only",
            "inbound.authorization[0].rules[0].to[0].paths[1]: \"*/y*\"",
            "inbound.authorization[0].rules[0].to[0].methods[0]: must not be empty",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert!(
            Snapshot::from_json(
                r#"{"version":"1","inbound":{"authorization":[{"action":"AUDIT"}]}}"#
            )
            .is_err()
        );
        let plain = Snapshot::from_json(r#"{"version":"1"}"#).expect("parses");
        let json = serde_json::to_value(&plain).expect("serializes");
        assert!(json.get("inbound").is_none(), "{json}");
        for ok in [
            "*",
            "/admin*",
            "*.json",
            "GET",
            "weft.local/ns/default/sa/orders",
        ] {
            assert_eq!(check_authz_pattern(ok), Ok(()), "{ok}");
        }
    }
}
