//! Istio resources as people write them: `VirtualService` and `DestinationRule`
//! (`networking.istio.io`), `WasmPlugin` (`extensions.istio.io`), `AuthorizationPolicy` and
//! `PeerAuthentication` (`security.istio.io`), read from multi-document YAML.
//!
//! YAML is read with `yaml-rust2` into its tree, turned into JSON, then into the typed structs
//! below through `serde_path_to_error`, so every error names its document and the field's path
//! (`payments.yaml: document 1 (VirtualService payments): spec.http[0].route[1].weight: invalid
//! type: floating point`). Nothing is half-read: a file with one bad document is rejected whole,
//! with every problem of every document.
//!
//! The structs deny unknown fields. Istio fields Weft does not implement (`mirror`, `corsPolicy`,
//! `connectionPool`, …) are refused as "not supported by Weft yet" rather than silently ignored,
//! so a policy never looks applied when it is not. `gateways` and `exportTo` are honoured as
//! Istio does: a VirtualService bound only to gateways, or a resource not exported to
//! namespace `default` (where every Weft sidecar is), reaches no sidecar
//! ([`super::compile::validate`] says so in a warning).
//!
//! This module checks each document on its own; checks that need several resources (subsets a
//! route names, one VirtualService per host, stored artifacts) are [`super::compile::validate`]'s.

use super::yaml;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;
use yaml_rust2::Yaml;

use crate::snapshot::{is_digest, parse_duration};

/// The kinds of Istio resource Weft reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// `networking.istio.io` VirtualService: routes, weights, retries, timeouts, faults.
    VirtualService,
    /// `networking.istio.io` DestinationRule: subsets, load balancing, outlier detection.
    DestinationRule,
    /// `extensions.istio.io` WasmPlugin: a plugin joining the chain.
    WasmPlugin,
    /// `security.istio.io` AuthorizationPolicy: who may call a workload, enforced inbound.
    AuthorizationPolicy,
    /// `security.istio.io` PeerAuthentication: whether a workload's inbound listener requires mTLS.
    PeerAuthentication,
}

impl Kind {
    /// Every kind, in the order `weft get` lists them.
    pub const ALL: [Kind; 5] = [
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::WasmPlugin,
        Kind::AuthorizationPolicy,
        Kind::PeerAuthentication,
    ];

    /// The kind as Istio spells it in a document.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::WasmPlugin => "WasmPlugin",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
            Kind::PeerAuthentication => "PeerAuthentication",
        }
    }

    /// The `apiVersion`s that serve this kind.
    pub fn api_versions(self) -> &'static [&'static str] {
        match self {
            Kind::VirtualService | Kind::DestinationRule => &[
                "networking.istio.io/v1",
                "networking.istio.io/v1beta1",
                "networking.istio.io/v1alpha3",
            ],
            Kind::WasmPlugin => &["extensions.istio.io/v1alpha1"],
            Kind::AuthorizationPolicy | Kind::PeerAuthentication => {
                &["security.istio.io/v1", "security.istio.io/v1beta1"]
            }
        }
    }

    /// The kind a document's `kind` names: exact spelling only, as Kubernetes reads it.
    fn from_document(kind: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == kind)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = String;

    /// Reads a kind as `weft get` takes it: any case, plural, or short name (`vs`, `dr`).
    fn from_str(text: &str) -> Result<Kind, String> {
        match text.to_ascii_lowercase().as_str() {
            "virtualservice" | "virtualservices" | "vs" => Ok(Kind::VirtualService),
            "destinationrule" | "destinationrules" | "dr" => Ok(Kind::DestinationRule),
            "wasmplugin" | "wasmplugins" => Ok(Kind::WasmPlugin),
            "authorizationpolicy" | "authorizationpolicies" | "ap" => Ok(Kind::AuthorizationPolicy),
            "peerauthentication" | "peerauthentications" | "pa" => Ok(Kind::PeerAuthentication),
            _ => Err(format!(
                "unknown kind {text:?} (known: VirtualService or vs, DestinationRule or dr, WasmPlugin, AuthorizationPolicy or ap, PeerAuthentication or pa)"
            )),
        }
    }
}

/// One Istio resource, read and checked on its own.
#[derive(Debug, Clone, PartialEq)]
pub struct Resource {
    /// Its kind.
    pub kind: Kind,
    /// `metadata.name`.
    pub name: String,
    /// `metadata.namespace`, `default` when not given.
    pub namespace: String,
    /// Where it was read from (a file name), for messages.
    pub source: String,
    /// Its document's position in the source, from 1, for messages; 0 when the source holds
    /// just this document (a stored one).
    pub index: usize,
    /// The whole document as applied, for `weft get -o yaml|json`.
    pub document: Value,
    /// Its spec, typed.
    pub spec: Spec,
}

/// A resource's spec, by kind.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    /// A VirtualService's spec.
    VirtualService(VirtualService),
    /// A DestinationRule's spec.
    DestinationRule(DestinationRule),
    /// A WasmPlugin's spec.
    WasmPlugin(WasmPlugin),
    /// An AuthorizationPolicy's spec.
    AuthorizationPolicy(AuthorizationPolicy),
    /// A PeerAuthentication's spec.
    PeerAuthentication(PeerAuthentication),
}

impl Resource {
    /// Where it came from, for messages: `payments.yaml: document 1 (VirtualService payments)`.
    pub fn origin(&self) -> String {
        format!(
            "{}{} ({} {})",
            self.source,
            document_number(self.index),
            self.kind,
            self.name
        )
    }

    /// Reads one document already in JSON form (as `document` holds it, so a store can reload
    /// what it kept). `source` and `index` only name it in messages.
    pub fn from_document(
        document: Value,
        source: &str,
        index: usize,
    ) -> Result<Resource, Vec<String>> {
        let kind_text = document.get("kind").and_then(Value::as_str);
        let name_text = document.pointer("/metadata/name").and_then(Value::as_str);
        let at = format!("{source}{}", document_number(index));
        let label = match (kind_text, name_text) {
            (Some(k), Some(n)) => format!("{at} ({k} {n})"),
            (Some(k), None) => format!("{at} ({k})"),
            _ => at,
        };
        let mut problems = Problems::default();
        let size = serde_json::to_vec(&document).map_or(0, |b| b.len());
        if size > MAX_RESOURCE_BYTES {
            return Err(vec![format!(
                "{label}: {size} bytes; a resource may be at most {} KiB",
                MAX_RESOURCE_BYTES >> 10
            )]);
        }
        let parsed = read_document(&document, &mut problems);
        match parsed {
            Some((kind, name, namespace, spec)) if problems.0.is_empty() => Ok(Resource {
                kind,
                name,
                namespace,
                source: source.to_string(),
                index,
                document,
                spec,
            }),
            // A message may quote the value it refuses: clipped, so a huge value does not
            // come back as a huge error.
            _ => Err(problems
                .0
                .into_iter()
                .map(|p| format!("{label}: {}", yaml::clip(&p, MAX_MESSAGE_BYTES)))
                .collect()),
        }
    }
}

/// The largest resource, as JSON: Kubernetes stores objects of up to about 1.5 MiB; Istio
/// resources are a few KiB, and every one is kept, re-read at each change and sent to sidecars.
pub const MAX_RESOURCE_BYTES: usize = 1 << 20;

/// The most all of a resource's annotations may hold, as in Kubernetes.
const MAX_ANNOTATION_BYTES: usize = 256 << 10;

/// The most one error message may say.
const MAX_MESSAGE_BYTES: usize = 1024;

/// `: document N` for a document of a multi-document source; nothing for a lone one (index 0).
fn document_number(index: usize) -> String {
    if index == 0 {
        String::new()
    } else {
        format!(": document {index}")
    }
}

/// Reads one stored document (as [`Resource::document`] holds it); `source` names it in
/// messages (`VirtualService payments: spec.hosts: …`).
pub fn from_document(document: Value, source: &str) -> Result<Resource, Vec<String>> {
    Resource::from_document(document, source, 0)
}

/// Reads multi-document YAML into resources. Empty documents are skipped; anything wrong in any
/// document rejects the whole text, with every problem found, each naming `source`, the
/// document and the field's path. A syntax error names its line and column.
pub fn parse_yaml(text: &str, source: &str) -> Result<Vec<Resource>, Vec<String>> {
    let docs = yaml::load(text, source)?;
    let mut resources = Vec::new();
    let mut errors = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let index = i + 1;
        // `---` with nothing after it, or only comments: nothing to apply, as kubectl reads it.
        if matches!(doc, Yaml::Null | Yaml::BadValue) {
            continue;
        }
        let value = match yaml::to_json(doc, "") {
            Ok(v) => v,
            Err(e) => {
                let label = match (doc["kind"].as_str(), doc["metadata"]["name"].as_str()) {
                    (Some(k), Some(n)) => format!(" ({k} {n})"),
                    _ => String::new(),
                };
                errors.push(format!("{source}: document {index}{label}: {e}"));
                continue;
            }
        };
        match Resource::from_document(value, source, index) {
            Ok(r) => resources.push(r),
            Err(mut e) => errors.append(&mut e),
        }
    }
    if resources.is_empty() && errors.is_empty() {
        errors.push(format!("{source}: no resources found"));
    }
    if errors.is_empty() {
        Ok(resources)
    } else {
        Err(errors)
    }
}

// ---------------------------------------------------------------------------------------------
// VirtualService

/// A VirtualService's spec: HTTP routes for one or more hosts.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct VirtualService {
    /// The hosts the routes apply to; the first label of each is a service
    /// (`payments.default.svc.cluster.local` is `payments`).
    pub hosts: Vec<String>,
    /// Where its routes apply: `mesh` (every sidecar) and gateways; absent means `mesh`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
    /// The namespaces whose sidecars see it (`.` its own, `*` all); absent: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
    /// The routes, tried in order.
    #[serde(default)]
    pub http: Vec<HttpRoute>,
}

/// One `http` entry: when it applies, where calls go, and how they are retried and bounded.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HttpRoute {
    /// A label, quoted in errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Conditions, any of which selects this entry; none selects every request.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub matches: Vec<MatchRequest>,
    /// The weighted destinations.
    #[serde(default)]
    pub route: Vec<RouteDestination>,
    /// The call's overall timeout (`"6s"`); `0s` or none for unbounded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
    /// Retries; none means Istio's default policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<Retries>,
    /// Fault injection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault: Option<Fault>,
    /// Header operations on the request and the response.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
    /// Answer with a redirect instead of routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// Answer locally instead of routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
}

/// Istio's `HTTPRedirect` (`port` and `derivePort` are refused when read).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Redirect {
    /// Replaces the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replaces the authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Replaces the scheme.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// The status: 301 unless given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect_code: Option<u16>,
}

/// Istio's `HTTPDirectResponse`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectResponse {
    /// The status.
    pub status: u16,
    /// The body (`string`; `bytes` is refused when read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<DirectBody>,
}

/// Istio's `HTTPBody`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirectBody {
    /// The body as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub string: Option<String>,
}

/// Istio's `Headers`: operations on the request and on the response.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Headers {
    /// On the request, on its way up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<HeaderOperations>,
    /// On the response, on its way back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<HeaderOperations>,
}

/// Istio's `Headers.HeaderOperations`: `remove`, then `set` (replace), then `add` (append).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderOperations {
    /// Replaces each header's values with this one.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub set: BTreeMap<String, String>,
    /// Appends a value to each header.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub add: BTreeMap<String, String>,
    /// Removes each header.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub remove: Vec<String>,
}

impl HttpRoute {
    /// The `headers` plugin's configuration for this entry; none when it has nothing to do.
    /// The plugin judges and runs `redirect` and `directResponse` as Istio writes them.
    pub fn actions_config(&self) -> Option<Value> {
        let mut out = Map::new();
        if let Some(h) = &self.headers {
            for (side, ops) in [("request", &h.request), ("response", &h.response)] {
                if let Some(ops) = ops.as_ref().filter(|o| **o != HeaderOperations::default()) {
                    out.insert(
                        side.into(),
                        serde_json::to_value(ops).unwrap_or(Value::Null),
                    );
                }
            }
        }
        if let Some(r) = &self.redirect {
            out.insert(
                "redirect".into(),
                serde_json::to_value(r).unwrap_or(Value::Null),
            );
        }
        if let Some(d) = &self.direct_response {
            let mut direct = Map::new();
            direct.insert("status".into(), Value::from(d.status));
            if let Some(text) = d.body.as_ref().and_then(|b| b.string.as_ref()) {
                direct.insert("body".into(), Value::from(text.as_str()));
            }
            out.insert("directResponse".into(), Value::Object(direct));
        }
        (!out.is_empty()).then_some(Value::Object(out))
    }

    /// Whether it answers locally rather than routing.
    pub fn answers_locally(&self) -> bool {
        self.redirect.is_some() || self.direct_response.is_some()
    }
}

/// Istio's `HTTPMatchRequest`: every condition given must hold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MatchRequest {
    /// A label; not used in matching.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The path, without query string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<StringMatch>,
    /// The method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<StringMatch>,
    /// Headers that must be present and match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, StringMatch>,
    /// Headers that must not match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub without_headers: BTreeMap<String, StringMatch>,
    /// Query parameters that must be present and match.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub query_params: BTreeMap<String, StringMatch>,
    /// Compare `uri` exact and prefix ignoring ASCII case.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_uri_case: Option<bool>,
}

/// Istio's `StringMatch`: one of exact, prefix or regex.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct StringMatch {
    /// Equal to this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exact: Option<String>,
    /// Starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Matched whole by this RE2-style expression (checked by the canary plugin).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex: Option<String>,
}

/// Istio's `HTTPRouteDestination`: a destination and its share.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RouteDestination {
    /// Where.
    pub destination: Destination,
    /// Its share relative to the entry's other destinations (weight / sum); omitted is 0, and
    /// a single destination gets every call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

impl RouteDestination {
    /// All of `service`'s calls, to the service itself.
    pub fn to(service: &str) -> RouteDestination {
        RouteDestination {
            destination: Destination {
                host: service.to_string(),
                subset: None,
            },
            weight: None,
        }
    }
}

/// A service and optionally one of its subsets.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Destination {
    /// The service's host.
    pub host: String,
    /// A subset a DestinationRule for that host defines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subset: Option<String>,
}

/// Istio's `HTTPRetry`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retries {
    /// Retries after the first try; 0 or absent turns retries off, as in Istio.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// Bound on each try.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_try_timeout: Option<String>,
    /// Envoy retry conditions and bare status codes, comma-separated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_on: Option<String>,
    /// Only `true`, which is what the host does: a retry prefers another endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_ignore_previous_hosts: Option<bool>,
}

/// Istio's `HTTPFaultInjection`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fault {
    /// Delay some calls.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<FaultDelay>,
    /// Answer some calls with an error.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub abort: Option<FaultAbort>,
}

/// A fault's delay.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultDelay {
    /// How long (`"5s"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fixed_delay: Option<String>,
    /// The share of calls delayed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percentage>,
    /// The share of calls delayed, in whole percent (Istio's deprecated form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
}

/// A fault's abort.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FaultAbort {
    /// The status to answer with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http_status: Option<u32>,
    /// The share of calls aborted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percentage>,
    /// The share of calls aborted, in whole percent (Istio's deprecated form).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
}

/// Istio's `Percent`.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Percentage {
    /// 0 to 100.
    #[serde(default)]
    pub value: f64,
}

impl Fault {
    /// The fault plugin's configuration: Istio's form, with the legacy `percent` written as
    /// `percentage.value` so the plugin reads one form (`percentage` wins when both are given,
    /// as in Istio). No share given stays none: Istio then injects nothing.
    pub fn to_config(&self) -> Value {
        let mut out = Map::new();
        if let Some(d) = &self.delay {
            let mut delay = Map::new();
            if let Some(t) = &d.fixed_delay {
                delay.insert("fixedDelay".into(), Value::from(t.as_str()));
            }
            let share = d.percentage.map(|p| p.value).or(d.percent.map(f64::from));
            if let Some(v) = share {
                delay.insert("percentage".into(), serde_json::json!({ "value": v }));
            }
            out.insert("delay".into(), Value::Object(delay));
        }
        if let Some(a) = &self.abort {
            let mut abort = Map::new();
            if let Some(s) = a.http_status {
                abort.insert("httpStatus".into(), Value::from(s));
            }
            let share = a.percentage.map(|p| p.value).or(a.percent.map(f64::from));
            if let Some(v) = share {
                abort.insert("percentage".into(), serde_json::json!({ "value": v }));
            }
            out.insert("abort".into(), Value::Object(abort));
        }
        Value::Object(out)
    }
}

// ---------------------------------------------------------------------------------------------
// DestinationRule

/// A DestinationRule's spec: a service's subsets and traffic policy.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DestinationRule {
    /// The service's host.
    pub host: String,
    /// Load balancing and outlier detection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic_policy: Option<TrafficPolicy>,
    /// Named label selectors.
    #[serde(default)]
    pub subsets: Vec<Subset>,
    /// The namespaces whose sidecars see it (`.` its own, `*` all); absent: all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub export_to: Vec<String>,
}

/// Istio's `TrafficPolicy`, the parts Weft implements.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficPolicy {
    /// The load-balancing policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub load_balancer: Option<LoadBalancer>,
    /// Ejection of failing endpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outlier_detection: Option<OutlierDetection>,
}

/// Istio's `LoadBalancerSettings`: `simple` only.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LoadBalancer {
    /// `LEAST_REQUEST`, `ROUND_ROBIN`, `RANDOM` or `UNSPECIFIED`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub simple: Option<String>,
}

/// Istio's `OutlierDetection`, passed to the outlier plugin as written.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OutlierDetection {
    /// 5xx errors in a row that eject an endpoint.
    #[serde(
        default,
        rename = "consecutive5xxErrors",
        skip_serializing_if = "Option::is_none"
    )]
    pub consecutive_5xx_errors: Option<u32>,
    /// Gateway errors in a row that eject an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_gateway_errors: Option<u32>,
    /// How often an ejection multiplier falls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<String>,
    /// How long the first ejection lasts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base_ejection_time: Option<String>,
    /// The most endpoints out at once, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ejection_percent: Option<u32>,
    /// No ejection below this share of serving endpoints, in percent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_health_percent: Option<u32>,
}

/// A named subset: the endpoints whose labels include these.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Subset {
    /// Its name (`v1`).
    pub name: String,
    /// The labels an endpoint must carry.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

impl DestinationRule {
    /// The snapshot's `loadBalancer` value, when `simple` is given and known.
    pub fn load_balancer(&self) -> Option<&'static str> {
        let simple = self
            .traffic_policy
            .as_ref()?
            .load_balancer
            .as_ref()?
            .simple
            .as_deref()?;
        load_balancer_of(simple).ok()
    }
}

/// The snapshot's `loadBalancer` for Istio's `simple` policy.
pub fn load_balancer_of(simple: &str) -> Result<&'static str, String> {
    match simple {
        // LEAST_CONN is Istio's deprecated name for LEAST_REQUEST.
        "LEAST_REQUEST" | "UNSPECIFIED" | "LEAST_CONN" => Ok("leastRequest"),
        "ROUND_ROBIN" => Ok("roundRobin"),
        "RANDOM" => Ok("random"),
        "PASSTHROUGH" => Err("PASSTHROUGH is not supported by Weft yet".to_string()),
        other => Err(format!(
            "unknown policy {other:?} (known: LEAST_REQUEST, ROUND_ROBIN, RANDOM, UNSPECIFIED)"
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// WasmPlugin

/// A WasmPlugin's spec: a plugin, where it joins the chain, and whose chains it joins.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WasmPlugin {
    /// The sidecars it applies to, by their workload's labels; none: every sidecar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The destination services whose chains it joins; none: every service.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<TargetRef>,
    /// Istio's older single form of `targetRefs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<TargetRef>,
    /// `file:///abs/path.wasm`, `http://…` (https is not fetched yet), or `sha256:<hex>` of a
    /// stored artifact.
    pub url: String,
    /// The sha256 (hex) the component must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Istio's image pull policy; ignored (Weft fetches by URL or digest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// Istio's proxy-wasm root id; ignored (a component has one filter).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_name: Option<String>,
    /// The plugin's configuration, a mapping.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plugin_config: Option<Value>,
    /// Where in the chain it runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<Phase>,
    /// Order within a phase: higher first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    /// What a failure of the plugin does; Istio's default is `FAIL_CLOSE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_strategy: Option<IstioFailStrategy>,
    /// `HTTP` (or unspecified); `NETWORK` plugins are not supported.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub plugin_type: Option<PluginType>,
    /// The routes (the target service's VirtualService `http` entry names) it runs for, from
    /// the annotation [`ROUTES_ANNOTATION`], not from the spec: an annotation keeps the
    /// document valid Istio. Empty: every route.
    #[serde(skip)]
    pub routes: Vec<String>,
}

/// The WasmPlugin annotation that scopes it to routes: `weft.io/routes: "testers,checkout"`.
pub const ROUTES_ANNOTATION: &str = "weft.io/routes";

/// Where [`ROUTES_ANNOTATION`] sits, for messages.
pub const ROUTES_PATH: &str = "metadata.annotations.weft.io/routes";

/// Istio's `WorkloadSelector`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct WorkloadSelector {
    /// Labels the workload must carry (every workload carries `app: <its service>`).
    #[serde(default)]
    pub match_labels: BTreeMap<String, String>,
}

/// Istio's `PolicyTargetReference`: in Weft, a destination `Service`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TargetRef {
    /// `""` or `core` for a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Service`.
    pub kind: String,
    /// The service's name.
    pub name: String,
    /// Ignored: Weft's service names are mesh-wide.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Istio's `PluginPhase`: where a WasmPlugin joins the chain.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub enum Phase {
    /// Before everything: authentication.
    #[serde(rename = "AUTHN")]
    Authn,
    /// After authentication: authorization.
    #[serde(rename = "AUTHZ")]
    Authz,
    /// After the routing policies, before telemetry.
    #[serde(rename = "STATS")]
    Stats,
    /// Last, just before the request leaves (Istio: just before the router).
    #[default]
    #[serde(rename = "UNSPECIFIED_PHASE")]
    Unspecified,
}

/// Istio's `FailStrategy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IstioFailStrategy {
    /// Fail the call (Istio's default).
    #[serde(rename = "FAIL_CLOSE")]
    FailClose,
    /// Skip the plugin.
    #[serde(rename = "FAIL_OPEN")]
    FailOpen,
    /// Istio's reload-on-failure; not supported by Weft yet.
    #[serde(rename = "FAIL_RELOAD")]
    FailReload,
}

/// Istio's `PluginType`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PluginType {
    /// Unspecified: HTTP.
    #[serde(rename = "UNSPECIFIED_PLUGIN_TYPE")]
    Unspecified,
    /// An HTTP filter.
    #[serde(rename = "HTTP")]
    Http,
    /// A network filter; not supported by Weft.
    #[serde(rename = "NETWORK")]
    Network,
}

/// Where a WasmPlugin's component comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WasmSource {
    /// A file on the sidecar's machine, by absolute path.
    File(String),
    /// A URL the control plane downloads into its store when the resource is applied.
    Http(String),
    /// An artifact in the control plane's store, by sha256 (lower-case hex).
    Stored(String),
}

impl VirtualService {
    /// Whether its routes apply to Weft's sidecars: `gateways` absent, or naming `mesh`
    /// (Istio's reserved word for every sidecar), and exported to them.
    pub fn applies_to_mesh(&self) -> bool {
        (self.gateways.is_empty() || self.gateways.iter().any(|g| g == "mesh"))
            && exported_to_workloads(&self.export_to)
    }
}

impl DestinationRule {
    /// Whether Weft's sidecars see it (see [`exported_to_workloads`]).
    pub fn visible_to_mesh(&self) -> bool {
        exported_to_workloads(&self.export_to)
    }
}

/// Whether a resource in namespace `default` with this `exportTo` is visible to Weft's
/// sidecars, which are all in `default`: absent, `*`, `.` (its own namespace) or `default`
/// are; a list of other namespaces, or `~` (none), is not.
pub fn exported_to_workloads(export_to: &[String]) -> bool {
    export_to.is_empty()
        || export_to
            .iter()
            .any(|n| n == "*" || n == "." || n == WORKLOAD_NAMESPACE)
}

impl WasmPlugin {
    /// Reads `url`.
    pub fn source(&self) -> Result<WasmSource, String> {
        let url = self.url.trim();
        if let Some(path) = url.strip_prefix("file://") {
            if path.starts_with('/') && path.len() > 1 {
                Ok(WasmSource::File(path.to_string()))
            } else {
                Err(format!(
                    "{url:?}: a file URL needs an absolute path: file:///path/to/plugin.wasm"
                ))
            }
        } else if url.starts_with("http://") || url.starts_with("https://") {
            let rest = url.split_once("://").map(|(_, r)| r).unwrap_or("");
            if rest.is_empty() || rest.starts_with('/') {
                Err(format!("{url:?}: the URL names no host"))
            } else {
                Ok(WasmSource::Http(url.to_string()))
            }
        } else if let Some(hex) = url.strip_prefix("sha256:") {
            let hex = hex.to_ascii_lowercase();
            if is_digest(&hex) {
                Ok(WasmSource::Stored(hex))
            } else {
                Err(format!(
                    "{url:?}: a stored artifact is written sha256:<64 hex digits>"
                ))
            }
        } else {
            Err(format!(
                "{url:?}: not supported by Weft yet (OCI images included); use \
                 file:///path/to/plugin.wasm, http://… or sha256:<digest> of a stored artifact"
            ))
        }
    }

    /// `sha256`, lower-cased.
    pub fn digest(&self) -> Option<String> {
        self.sha256.as_deref().map(str::to_ascii_lowercase)
    }

    /// The phase, `UNSPECIFIED_PHASE` when not given.
    pub fn phase(&self) -> Phase {
        self.phase.unwrap_or_default()
    }

    /// The destination services it is limited to; empty: every service.
    pub fn targets(&self) -> BTreeSet<&str> {
        self.target_refs
            .iter()
            .chain(self.target_ref.as_ref())
            .map(|t| t.name.as_str())
            .collect()
    }

    /// Whether a sidecar whose workload carries `labels` runs it.
    pub fn selects(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.as_ref().is_none_or(|s| {
            s.match_labels
                .iter()
                .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
        })
    }
}

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

// ---------------------------------------------------------------------------------------------
// AuthorizationPolicy

/// Istio's root namespace: an AuthorizationPolicy there applies mesh-wide.
pub const ROOT_NAMESPACE: &str = "istio-system";

/// The namespace every Weft workload is in (its identity's `ns`).
pub const WORKLOAD_NAMESPACE: &str = "default";

/// An AuthorizationPolicy's spec: which workloads' inbound calls it judges, and how.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthorizationPolicy {
    /// The workloads it applies to, by labels; none: every workload in its namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// `ALLOW` (default) or `DENY`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<AuthzActionName>,
    /// Any matching is the policy matching; none: it never matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<AuthzRuleSpec>,
}

/// Istio's `AuthorizationPolicy.Action`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AuthzActionName {
    /// Allow matching calls (and, once any ALLOW applies, only those).
    #[serde(rename = "ALLOW")]
    Allow,
    /// Deny matching calls.
    #[serde(rename = "DENY")]
    Deny,
    /// Not supported by Weft yet.
    #[serde(rename = "AUDIT")]
    Audit,
    /// Not supported by Weft yet (external authorizers).
    #[serde(rename = "CUSTOM")]
    Custom,
}

/// Istio's `Rule`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzRuleSpec {
    /// Callers; any entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub from: Vec<AuthzFrom>,
    /// Requests; any entry.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub to: Vec<AuthzTo>,
}

/// Istio's `Rule.From`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzFrom {
    /// The caller's conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<AuthzSourceSpec>,
}

/// Istio's `Source`, the fields Weft implements.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzSourceSpec {
    /// Peer principals (`<trust domain>/ns/<ns>/sa/<sa>`, with `*` wildcards).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub principals: Vec<String>,
    /// Principals the caller must not be.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_principals: Vec<String>,
}

/// Istio's `Rule.To`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzTo {
    /// The request's conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operation: Option<AuthzOperationSpec>,
}

/// Istio's `Operation`, the fields Weft implements.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AuthzOperationSpec {
    /// Paths without the query (`/exact`, `/prefix*`, `*suffix`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub paths: Vec<String>,
    /// Paths the request's must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_paths: Vec<String>,
    /// Methods.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub methods: Vec<String>,
    /// Methods the request's must not match.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub not_methods: Vec<String>,
}

impl AuthorizationPolicy {
    /// Whether it judges the inbound calls of a workload carrying `labels` (Weft's workloads
    /// are all in [`WORKLOAD_NAMESPACE`]; a policy in [`ROOT_NAMESPACE`] applies mesh-wide).
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        (namespace == WORKLOAD_NAMESPACE || namespace == ROOT_NAMESPACE)
            && self.selector.as_ref().is_none_or(|s| {
                s.match_labels
                    .iter()
                    .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
            })
    }

    /// The snapshot's form, named `<namespace>/<name>` (a checked policy: its action is ALLOW
    /// or DENY, each `source`/`operation` present).
    pub fn to_snapshot(&self, name: String) -> crate::snapshot::AuthzPolicy {
        use crate::snapshot::{AuthzAction, AuthzOperation, AuthzRule, AuthzSource};
        crate::snapshot::AuthzPolicy {
            name,
            action: match self.action {
                Some(AuthzActionName::Deny) => AuthzAction::Deny,
                _ => AuthzAction::Allow,
            },
            rules: self
                .rules
                .iter()
                .map(|r| AuthzRule {
                    from: r
                        .from
                        .iter()
                        .filter_map(|f| f.source.as_ref())
                        .map(|s| AuthzSource {
                            principals: s.principals.clone(),
                            not_principals: s.not_principals.clone(),
                        })
                        .collect(),
                    to: r
                        .to
                        .iter()
                        .filter_map(|t| t.operation.as_ref())
                        .map(|o| AuthzOperation {
                            paths: o.paths.clone(),
                            not_paths: o.not_paths.clone(),
                            methods: o.methods.clone(),
                            not_methods: o.not_methods.clone(),
                        })
                        .collect(),
                })
                .collect(),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// PeerAuthentication

/// A PeerAuthentication's spec: the mTLS mode of the inbound listener of the workloads it
/// selects.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerAuthentication {
    /// The workloads it applies to, by labels; none (or no labels): its whole namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    /// The mode; none: inherit (as `UNSET`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtls: Option<PeerMtls>,
}

/// Istio's `PeerAuthentication.MutualTLS`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PeerMtls {
    /// The mode; none: `UNSET`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<MtlsModeName>,
}

/// Istio's `PeerAuthentication.MutualTLS.Mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MtlsModeName {
    /// Inherit from the namespace-wide or mesh-wide policy.
    #[serde(rename = "UNSET")]
    Unset,
    /// Refused: a Weft sidecar with mTLS always has an identity to present.
    #[serde(rename = "DISABLE")]
    Disable,
    /// mTLS or plaintext.
    #[serde(rename = "PERMISSIVE")]
    Permissive,
    /// mTLS only.
    #[serde(rename = "STRICT")]
    Strict,
}

/// Which of Istio's three levels a PeerAuthentication is at, most specific last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum PeerAuthnScope {
    /// In [`ROOT_NAMESPACE`] without a selector: every workload.
    Mesh,
    /// In a workload namespace without a selector: every workload there.
    Namespace,
    /// In a workload namespace with `selector.matchLabels`: the workloads carrying them.
    Workload,
}

impl PeerAuthentication {
    /// Its level, as Istio reads it, or none when it can select no workload: Istio ignores a
    /// selector in the root namespace (it would pick root-namespace workloads only).
    pub fn scope(&self, namespace: &str) -> Option<PeerAuthnScope> {
        let selects = self
            .selector
            .as_ref()
            .is_some_and(|s| !s.match_labels.is_empty());
        match (namespace == ROOT_NAMESPACE, selects) {
            (true, false) => Some(PeerAuthnScope::Mesh),
            (true, true) => None,
            (false, false) => Some(PeerAuthnScope::Namespace),
            (false, true) => Some(PeerAuthnScope::Workload),
        }
    }

    /// Whether it applies to a workload carrying `labels` (every Weft workload is in
    /// [`WORKLOAD_NAMESPACE`]).
    pub fn selects(&self, namespace: &str, labels: &BTreeMap<String, String>) -> bool {
        match self.scope(namespace) {
            None => false,
            Some(PeerAuthnScope::Mesh) => true,
            Some(_) if namespace != WORKLOAD_NAMESPACE => false,
            Some(_) => self.selector.as_ref().is_none_or(|s| {
                s.match_labels
                    .iter()
                    .all(|(k, v)| labels.get(k).is_some_and(|have| have == v))
            }),
        }
    }

    /// The mode it sets, none when it inherits (`UNSET` or no `mtls`); `DISABLE` is refused
    /// when the document is read, so it never gets here.
    pub fn mode(&self) -> Option<crate::snapshot::MtlsMode> {
        match self.mtls.as_ref().and_then(|m| m.mode) {
            Some(MtlsModeName::Strict) => Some(crate::snapshot::MtlsMode::Strict),
            Some(MtlsModeName::Permissive) => Some(crate::snapshot::MtlsMode::Permissive),
            Some(MtlsModeName::Unset | MtlsModeName::Disable) | None => None,
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading a document

/// Problems found in one document, each `path: message`.
#[derive(Default)]
struct Problems(Vec<String>);

impl Problems {
    fn at(&mut self, path: impl fmt::Display, message: impl fmt::Display) {
        self.0.push(format!("{path}: {message}"));
    }
}

/// Istio fields Weft knows but does not implement, by where they sit under `spec`
/// (`[]` = every element of a list).
pub(super) type Unsupported = &'static [(&'static str, &'static [&'static str])];

pub(super) const VS_UNSUPPORTED: Unsupported = &[
    ("", &["tcp", "tls"]),
    (
        "http[]",
        &[
            "delegate",
            "rewrite",
            "mirror",
            "mirrors",
            "mirrorPercent",
            "mirrorPercentage",
            "corsPolicy",
        ],
    ),
    ("http[].redirect", &["port", "derivePort"]),
    ("http[].directResponse.body", &["bytes"]),
    (
        "http[].match[]",
        &[
            "scheme",
            "authority",
            "port",
            "sourceLabels",
            "sourceNamespace",
            "gateways",
            "statPrefix",
        ],
    ),
    ("http[].route[]", &["headers"]),
    ("http[].route[].destination", &["port"]),
    ("http[].retries", &["retryRemoteLocalities"]),
    ("http[].fault.delay", &["exponentialDelay"]),
    ("http[].fault.abort", &["grpcStatus", "http2Error"]),
];

pub(super) const DR_UNSUPPORTED: Unsupported = &[
    ("", &["workloadSelector"]),
    (
        "trafficPolicy",
        &[
            "connectionPool",
            "tls",
            "portLevelSettings",
            "tunnel",
            "proxyProtocol",
        ],
    ),
    (
        "trafficPolicy.loadBalancer",
        &[
            "consistentHash",
            "localityLbSetting",
            "warmupDurationSecs",
            "warmup",
        ],
    ),
    (
        "trafficPolicy.outlierDetection",
        &[
            "splitExternalLocalOriginErrors",
            "consecutiveLocalOriginFailures",
            "consecutiveErrors",
        ],
    ),
    ("subsets[]", &["trafficPolicy"]),
];

pub(super) const WASM_UNSUPPORTED: Unsupported = &[("", &["imagePullSecret", "vmConfig", "match"])];

// Per-port modes need the listener to know the app's ports, which Weft's sidecar does not.
pub(super) const PEER_AUTHN_UNSUPPORTED: Unsupported = &[("", &["portLevelMtls"])];

pub(super) const AUTHZ_UNSUPPORTED: Unsupported = &[
    ("", &["targetRef", "targetRefs", "provider"]),
    ("rules[]", &["when"]),
    (
        "rules[].from[].source",
        &[
            "requestPrincipals",
            "notRequestPrincipals",
            "namespaces",
            "notNamespaces",
            "ipBlocks",
            "notIpBlocks",
            "remoteIpBlocks",
            "notRemoteIpBlocks",
            "serviceAccounts",
            "notServiceAccounts",
        ],
    ),
    (
        "rules[].to[].operation",
        &["hosts", "notHosts", "ports", "notPorts"],
    ),
];

/// Reads kind, name, namespace and spec, recording every problem found.
fn read_document(doc: &Value, problems: &mut Problems) -> Option<(Kind, String, String, Spec)> {
    let Some(top) = doc.as_object() else {
        problems.0.push(format!(
            "expected a mapping with apiVersion, kind, metadata and spec, found {}",
            type_name(doc)
        ));
        return None;
    };
    for key in top.keys() {
        // `status` appears in what `kubectl get -o yaml` prints; it is the server's, not ours.
        if !["apiVersion", "kind", "metadata", "spec", "status"].contains(&key.as_str()) {
            problems.0.push(format!(
                "unknown field `{key}`, expected one of `apiVersion`, `kind`, `metadata`, `spec`"
            ));
        }
    }

    let kind = match top.get("kind") {
        None => {
            problems.at("kind", "required");
            None
        }
        Some(Value::String(k)) => match Kind::from_document(k) {
            Some(kind) => Some(kind),
            None => {
                problems.at(
                    "kind",
                    format!(
                        "{k} is not supported by Weft yet (supported: VirtualService, DestinationRule, WasmPlugin, AuthorizationPolicy, PeerAuthentication)"
                    ),
                );
                None
            }
        },
        Some(other) => {
            problems.at(
                "kind",
                format!("expected a string, found {}", type_name(other)),
            );
            None
        }
    };

    match (top.get("apiVersion"), kind) {
        (None, _) => problems.at("apiVersion", "required"),
        (Some(Value::String(v)), Some(kind)) if !kind.api_versions().contains(&v.as_str()) => {
            problems.at(
                "apiVersion",
                format!(
                    "{v} does not serve {kind} (use {})",
                    kind.api_versions().join(", ")
                ),
            )
        }
        (Some(Value::String(_)), _) => {}
        (Some(other), _) => problems.at(
            "apiVersion",
            format!("expected a string, found {}", type_name(other)),
        ),
    }

    let (name, namespace) = read_metadata(top.get("metadata"), problems);
    // A WasmPlugin named like a built-in (`retry`) replaces it: see compile::replace_builtin.

    let mut spec = match top.get("spec") {
        None => {
            problems.at("spec", "required");
            None
        }
        Some(spec @ Value::Object(_)) => kind.and_then(|k| {
            // A VirtualService's or DestinationRule's short hosts resolve in its own namespace,
            // and every Weft service is in `default`: elsewhere, it would name services that
            // do not exist, so it is refused rather than applied to the default ones.
            if matches!(k, Kind::VirtualService | Kind::DestinationRule)
                && namespace != WORKLOAD_NAMESPACE
            {
                problems.at(
                    "metadata.namespace",
                    format!(
                        "{namespace}: every Weft service is in namespace {WORKLOAD_NAMESPACE}, so a {k} elsewhere would route none of them (other namespaces are not supported yet)"
                    ),
                );
            }
            read_spec(k, spec, problems)
        }),
        Some(other) => {
            problems.at(
                "spec",
                format!("expected a mapping, found {}", type_name(other)),
            );
            None
        }
    };
    if let Some(Spec::WasmPlugin(wp)) = &mut spec {
        wp.routes = read_routes(top.get("metadata"), problems);
        check_route_scope(wp, problems);
    }
    Some((kind?, name?, namespace, spec?))
}

/// A WasmPlugin's route scope from its annotation: comma-separated names, each trimmed and
/// non-empty, duplicates dropped; none without the annotation.
fn read_routes(metadata: Option<&Value>, problems: &mut Problems) -> Vec<String> {
    let Some(annotations) = metadata.and_then(|m| m.get("annotations")) else {
        return Vec::new();
    };
    let Some(annotations) = annotations.as_object() else {
        problems.at(
            "metadata.annotations",
            format!("expected a mapping, found {}", type_name(annotations)),
        );
        return Vec::new();
    };
    let text = match annotations.get(ROUTES_ANNOTATION) {
        None => return Vec::new(),
        Some(Value::String(text)) => text,
        Some(other) => {
            problems.at(
                ROUTES_PATH,
                format!(
                    "expected a string of comma-separated route names, found {}",
                    type_name(other)
                ),
            );
            return Vec::new();
        }
    };
    if text.trim().is_empty() {
        problems.at(
            ROUTES_PATH,
            "names no route; list http entry names (\"testers,checkout\"), or remove the annotation to run on every route",
        );
        return Vec::new();
    }
    let mut routes: Vec<String> = Vec::new();
    for name in text.split(',').map(str::trim) {
        if name.is_empty() {
            problems.at(
                ROUTES_PATH,
                format!("{text:?} has an empty route name (names are separated by commas)"),
            );
            return Vec::new();
        }
        if !routes.iter().any(|r| r == name) {
            routes.push(name.to_string());
        }
    }
    routes
}

/// A route names an `http` entry of one VirtualService, so a scoped plugin targets exactly
/// the one service whose entries those are.
fn check_route_scope(wp: &WasmPlugin, problems: &mut Problems) {
    if wp.routes.is_empty() {
        return;
    }
    let refs = wp.target_refs.len() + usize::from(wp.target_ref.is_some());
    if refs != 1 {
        problems.at(
            "spec.targetRefs",
            format!(
                "a WasmPlugin scoped to routes ({ROUTES_PATH}) must target exactly one Service, whose VirtualService names them; found {refs} targets"
            ),
        );
    }
}

fn read_metadata(metadata: Option<&Value>, problems: &mut Problems) -> (Option<String>, String) {
    let mut namespace = "default".to_string();
    let Some(metadata) = metadata else {
        problems.at("metadata", "required");
        return (None, namespace);
    };
    let Some(m) = metadata.as_object() else {
        problems.at(
            "metadata",
            format!("expected a mapping, found {}", type_name(metadata)),
        );
        return (None, namespace);
    };
    // Other metadata (labels, annotations, what a server adds) is kept in the document and
    // otherwise not read; annotations are bounded as Kubernetes bounds them.
    if let Some(Value::Object(annotations)) = m.get("annotations") {
        let size: usize = annotations
            .iter()
            .map(|(k, v)| k.len() + v.as_str().map_or(0, str::len))
            .sum();
        if size > MAX_ANNOTATION_BYTES {
            problems.at(
                "metadata.annotations",
                format!(
                    "{size} bytes; annotations may hold at most {} KiB in all",
                    MAX_ANNOTATION_BYTES >> 10
                ),
            );
        }
    }
    let name = match m.get("name") {
        None => {
            problems.at("metadata.name", "required");
            None
        }
        Some(Value::String(n)) if is_dns_subdomain(n) => Some(n.clone()),
        Some(Value::String(n)) => {
            problems.at(
                "metadata.name",
                format!(
                    "{n:?} is not a valid name (lower-case letters, digits, '-' and '.', starting and ending with a letter or digit)"
                ),
            );
            None
        }
        Some(other) => {
            problems.at(
                "metadata.name",
                format!("expected a string, found {}", type_name(other)),
            );
            None
        }
    };
    match m.get("namespace") {
        None => {}
        Some(Value::String(ns)) if is_dns_label(ns) => namespace = ns.clone(),
        Some(Value::String(ns)) => problems.at(
            "metadata.namespace",
            format!("{ns:?} is not a valid namespace (lower-case letters, digits and '-')"),
        ),
        Some(other) => problems.at(
            "metadata.namespace",
            format!("expected a string, found {}", type_name(other)),
        ),
    }
    (name, namespace)
}

fn read_spec(kind: Kind, spec: &Value, problems: &mut Problems) -> Option<Spec> {
    let rules = match kind {
        Kind::VirtualService => VS_UNSUPPORTED,
        Kind::DestinationRule => DR_UNSUPPORTED,
        Kind::WasmPlugin => WASM_UNSUPPORTED,
        Kind::AuthorizationPolicy => AUTHZ_UNSUPPORTED,
        Kind::PeerAuthentication => PEER_AUTHN_UNSUPPORTED,
    };
    // Unsupported fields are named and taken out first, so the typed read below still reports
    // the document's other mistakes in the same pass.
    let mut spec = spec.clone();
    for (at, fields) in rules {
        let segments: Vec<&str> = at.split('.').filter(|s| !s.is_empty()).collect();
        strip_unsupported(&mut spec, &segments, "spec".to_string(), fields, problems);
    }
    match kind {
        Kind::VirtualService => typed::<VirtualService>(spec, problems).map(|vs| {
            check_virtual_service(&vs, problems);
            Spec::VirtualService(vs)
        }),
        Kind::DestinationRule => typed::<DestinationRule>(spec, problems).map(|dr| {
            check_destination_rule(&dr, problems);
            Spec::DestinationRule(dr)
        }),
        Kind::WasmPlugin => typed::<WasmPlugin>(spec, problems).map(|wp| {
            check_wasm_plugin(&wp, problems);
            Spec::WasmPlugin(wp)
        }),
        Kind::AuthorizationPolicy => typed::<AuthorizationPolicy>(spec, problems).map(|ap| {
            check_authorization_policy(&ap, problems);
            Spec::AuthorizationPolicy(ap)
        }),
        Kind::PeerAuthentication => typed::<PeerAuthentication>(spec, problems).map(|pa| {
            check_peer_authentication(&pa, problems);
            Spec::PeerAuthentication(pa)
        }),
    }
}

fn strip_unsupported(
    value: &mut Value,
    segments: &[&str],
    path: String,
    fields: &[&str],
    problems: &mut Problems,
) {
    let Some((segment, rest)) = segments.split_first() else {
        if let Some(object) = value.as_object_mut() {
            for field in fields {
                if object.remove(*field).is_some() {
                    problems.at(format!("{path}.{field}"), "not supported by Weft yet");
                }
            }
        }
        return;
    };
    let (key, each) = match segment.strip_suffix("[]") {
        Some(key) => (key, true),
        None => (*segment, false),
    };
    let Some(child) = value.as_object_mut().and_then(|o| o.get_mut(key)) else {
        return;
    };
    if !each {
        strip_unsupported(child, rest, format!("{path}.{key}"), fields, problems);
    } else if let Some(items) = child.as_array_mut() {
        for (i, item) in items.iter_mut().enumerate() {
            strip_unsupported(item, rest, format!("{path}.{key}[{i}]"), fields, problems);
        }
    }
}

/// Deserializes a spec, naming the path of what is wrong.
fn typed<T: serde::de::DeserializeOwned>(spec: Value, problems: &mut Problems) -> Option<T> {
    match serde_path_to_error::deserialize::<_, T>(spec) {
        Ok(t) => Some(t),
        Err(e) => {
            let path = e.path().to_string();
            let path = if path == "." {
                "spec".to_string()
            } else {
                format!("spec.{path}")
            };
            problems.at(path, e.inner());
            None
        }
    }
}

fn check_virtual_service(vs: &VirtualService, problems: &mut Problems) {
    if vs.hosts.is_empty() {
        problems.at("spec.hosts", "at least one host is required");
    }
    let mut services = BTreeSet::new();
    for (i, host) in vs.hosts.iter().enumerate() {
        match service_of_host(host) {
            Ok(s) if !services.insert(s) => problems.at(
                format!("spec.hosts[{i}]"),
                format!("{host:?} names service {s} again"),
            ),
            Ok(_) => {}
            Err(e) => problems.at(format!("spec.hosts[{i}]"), e),
        }
    }
    if vs.http.is_empty() {
        problems.at(
            "spec.http",
            "at least one route is required (Weft routes HTTP only)",
        );
    }
    for (i, entry) in vs.http.iter().enumerate() {
        let at = format!("spec.http[{i}]");
        check_route(entry, &at, problems);
        if let Some(t) = &entry.timeout
            && let Err(e) = parse_duration(t)
        {
            problems.at(format!("{at}.timeout"), e);
        }
        for (k, m) in entry.matches.iter().enumerate() {
            check_match(m, &format!("{at}.match[{k}]"), problems);
        }
        if let Some(r) = &entry.retries {
            if let Some(t) = &r.per_try_timeout {
                check_duration(t, &format!("{at}.retries.perTryTimeout"), true, problems);
            }
            if r.retry_ignore_previous_hosts == Some(false) {
                problems.at(
                    format!("{at}.retries.retryIgnorePreviousHosts"),
                    "false is not supported by Weft yet: a retry always prefers another endpoint",
                );
            }
        }
        if let Some(f) = &entry.fault {
            check_fault(f, &format!("{at}.fault"), problems);
        }
    }
}

fn check_route(entry: &HttpRoute, at: &str, problems: &mut Problems) {
    // As Istio's validation: an entry routes, redirects or answers directly, one of the three.
    let actions = [
        (!entry.route.is_empty(), "route"),
        (entry.redirect.is_some(), "redirect"),
        (entry.direct_response.is_some(), "directResponse"),
    ];
    let given: Vec<&str> = actions
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
    match given.as_slice() {
        [] => {
            problems.at(
                format!("{at}.route"),
                "at least one destination is required (or a redirect or directResponse)",
            );
            return;
        }
        [_] => {}
        several => problems.at(
            at.to_string(),
            format!("set only one of {}", several.join(", ")),
        ),
    }
    for (j, d) in entry.route.iter().enumerate() {
        if let Err(e) = service_of_host(&d.destination.host) {
            problems.at(format!("{at}.route[{j}].destination.host"), e);
        }
        if d.destination.subset.as_deref() == Some("") {
            problems.at(
                format!("{at}.route[{j}].destination.subset"),
                "must not be empty",
            );
        }
    }
    // Weights are relative, as in Istio; the canary, which runs them, judges them at apply.
}

fn check_match(m: &MatchRequest, at: &str, problems: &mut Problems) {
    for (field, value) in [("uri", &m.uri), ("method", &m.method)] {
        if let Some(s) = value {
            check_string_match(s, &format!("{at}.{field}"), true, problems);
        }
    }
    for (field, map) in [
        ("headers", &m.headers),
        ("withoutHeaders", &m.without_headers),
        ("queryParams", &m.query_params),
    ] {
        for (name, s) in map {
            let here = format!("{at}.{field}.{name}");
            // `{}` only checks presence here, as in Istio.
            check_string_match(s, &here, false, problems);
            if field != "queryParams" && name.chars().any(|c| c.is_ascii_uppercase()) {
                problems.at(here, "header names must be lower-case (as Istio requires)");
            }
        }
    }
}

fn check_string_match(s: &StringMatch, at: &str, required: bool, problems: &mut Problems) {
    let given = [&s.exact, &s.prefix, &s.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if given > 1 || (required && given == 0) {
        problems.at(at, "exactly one of exact, prefix or regex is required");
    }
}

fn check_fault(f: &Fault, at: &str, problems: &mut Problems) {
    if f.delay.is_none() && f.abort.is_none() {
        problems.at(at, "one of delay or abort is required");
    }
    if let Some(d) = &f.delay {
        match &d.fixed_delay {
            None => problems.at(format!("{at}.delay.fixedDelay"), "required"),
            Some(t) => check_duration(t, &format!("{at}.delay.fixedDelay"), true, problems),
        }
        if let Some(p) = d.percentage {
            check_percentage(p.value, &format!("{at}.delay.percentage.value"), problems);
        }
        if let Some(p) = d.percent {
            check_percentage(f64::from(p), &format!("{at}.delay.percent"), problems);
        }
    }
    if let Some(a) = &f.abort {
        match a.http_status {
            None => problems.at(format!("{at}.abort.httpStatus"), "required"),
            Some(s) if !(200..=599).contains(&s) => problems.at(
                format!("{at}.abort.httpStatus"),
                format!("must be between 200 and 599, got {s}"),
            ),
            Some(_) => {}
        }
        if let Some(p) = a.percentage {
            check_percentage(p.value, &format!("{at}.abort.percentage.value"), problems);
        }
        if let Some(p) = a.percent {
            check_percentage(f64::from(p), &format!("{at}.abort.percent"), problems);
        }
    }
}

fn check_percentage(value: f64, at: &str, problems: &mut Problems) {
    if !(0.0..=100.0).contains(&value) {
        problems.at(at, format!("must be between 0 and 100, got {value}"));
    }
}

fn check_duration(text: &str, at: &str, positive: bool, problems: &mut Problems) {
    match parse_duration(text) {
        Err(e) => problems.at(at, e),
        Ok(d) if positive && d.as_millis() < 1 => problems.at(at, "must be at least 1ms"),
        Ok(_) => {}
    }
}

fn check_destination_rule(dr: &DestinationRule, problems: &mut Problems) {
    if let Err(e) = service_of_host(&dr.host) {
        problems.at("spec.host", e);
    }
    let mut names = BTreeSet::new();
    for (i, s) in dr.subsets.iter().enumerate() {
        if s.name.is_empty() {
            problems.at(format!("spec.subsets[{i}].name"), "must not be empty");
        } else if !names.insert(s.name.as_str()) {
            problems.at(
                format!("spec.subsets[{i}].name"),
                format!("subset {} is defined twice", s.name),
            );
        }
    }
    let Some(policy) = &dr.traffic_policy else {
        return;
    };
    if let Some(simple) = policy
        .load_balancer
        .as_ref()
        .and_then(|l| l.simple.as_deref())
        && let Err(e) = load_balancer_of(simple)
    {
        problems.at("spec.trafficPolicy.loadBalancer.simple", e);
    }
    if let Some(o) = &policy.outlier_detection {
        let at = "spec.trafficPolicy.outlierDetection";
        for (field, value) in [
            ("interval", &o.interval),
            ("baseEjectionTime", &o.base_ejection_time),
        ] {
            if let Some(t) = value {
                check_duration(t, &format!("{at}.{field}"), true, problems);
            }
        }
        for (field, value) in [
            ("maxEjectionPercent", o.max_ejection_percent),
            ("minHealthPercent", o.min_health_percent),
        ] {
            if let Some(p) = value {
                check_percentage(f64::from(p), &format!("{at}.{field}"), problems);
            }
        }
    }
}

fn check_wasm_plugin(wp: &WasmPlugin, problems: &mut Problems) {
    let source = wp.source();
    if let Err(e) = &source {
        problems.at("spec.url", e);
    }
    if let Some(s) = &wp.sha256 {
        if !is_digest(&s.to_ascii_lowercase()) {
            problems.at(
                "spec.sha256",
                format!("{s:?} is not a sha256 (64 hex digits)"),
            );
        } else if let Ok(WasmSource::Stored(hex)) = &source
            && *hex != s.to_ascii_lowercase()
        {
            problems.at(
                "spec.sha256",
                format!("{s} differs from the digest spec.url names, sha256:{hex}"),
            );
        }
    }
    if !wp.target_refs.is_empty() && wp.target_ref.is_some() {
        problems.at("spec", "give one of targetRef or targetRefs");
    }
    let refs = wp
        .target_refs
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("spec.targetRefs[{i}]"), t))
        .chain(
            wp.target_ref
                .iter()
                .map(|t| ("spec.targetRef".to_string(), t)),
        );
    for (at, t) in refs {
        if t.kind != "Service" {
            problems.at(
                format!("{at}.kind"),
                format!("{} is not supported by Weft yet (only Service)", t.kind),
            );
        }
        if let Some(g) = &t.group
            && !g.is_empty()
            && g != "core"
        {
            problems.at(
                format!("{at}.group"),
                format!("{g:?}: a Service's group is \"\" (core)"),
            );
        }
        if !is_dns_label(&t.name) {
            problems.at(
                format!("{at}.name"),
                format!("{:?} is not a service name", t.name),
            );
        }
    }
    if let Some(c) = &wp.plugin_config
        && !c.is_object()
    {
        problems.at(
            "spec.pluginConfig",
            format!("expected a mapping, found {}", type_name(c)),
        );
    }
    if wp.fail_strategy == Some(IstioFailStrategy::FailReload) {
        problems.at(
            "spec.failStrategy",
            "FAIL_RELOAD is not supported by Weft yet (use FAIL_CLOSE or FAIL_OPEN)",
        );
    }
    if wp.plugin_type == Some(PluginType::Network) {
        problems.at("spec.type", "NETWORK plugins are not supported by Weft yet");
    }
}

fn check_peer_authentication(pa: &PeerAuthentication, problems: &mut Problems) {
    if pa.mtls.as_ref().and_then(|m| m.mode) == Some(MtlsModeName::Disable) {
        problems.at(
            "spec.mtls.mode",
            "DISABLE is not supported: Weft sidecars always have identities once mTLS is on (use PERMISSIVE to accept plaintext as well)",
        );
    }
}

fn check_authorization_policy(ap: &AuthorizationPolicy, problems: &mut Problems) {
    if let Some(action @ (AuthzActionName::Audit | AuthzActionName::Custom)) = ap.action {
        let name = if action == AuthzActionName::Audit {
            "AUDIT"
        } else {
            "CUSTOM"
        };
        problems.at(
            "spec.action",
            format!("{name} is not supported by Weft yet (use ALLOW or DENY)"),
        );
    }
    let check = |at: String, values: &[String], is_path: bool, problems: &mut Problems| {
        for (i, v) in values.iter().enumerate() {
            // Templates first: `{*}` would otherwise read as a misplaced wildcard.
            if is_path && v.contains(['{', '}']) {
                problems.at(
                    format!("{at}[{i}]"),
                    format!("{v:?}: path templates ({{*}}, {{**}}) are not supported by Weft yet"),
                );
            } else if let Err(e) = crate::snapshot::check_authz_pattern(v) {
                problems.at(format!("{at}[{i}]"), e);
            }
        }
    };
    for (i, rule) in ap.rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        for (j, from) in rule.from.iter().enumerate() {
            let at = format!("{at}.from[{j}].source");
            match &from.source {
                None => problems.at(at, "required"),
                Some(s) if s.principals.is_empty() && s.not_principals.is_empty() => {
                    problems.at(at, "must not be empty (give principals or notPrincipals)")
                }
                Some(s) => {
                    check(format!("{at}.principals"), &s.principals, false, problems);
                    check(
                        format!("{at}.notPrincipals"),
                        &s.not_principals,
                        false,
                        problems,
                    );
                }
            }
        }
        for (j, to) in rule.to.iter().enumerate() {
            let at = format!("{at}.to[{j}].operation");
            match &to.operation {
                None => problems.at(at, "required"),
                Some(o)
                    if o.paths.is_empty()
                        && o.not_paths.is_empty()
                        && o.methods.is_empty()
                        && o.not_methods.is_empty() =>
                {
                    problems.at(
                        at,
                        "must not be empty (give paths, notPaths, methods or notMethods)",
                    )
                }
                Some(o) => {
                    check(format!("{at}.paths"), &o.paths, true, problems);
                    check(format!("{at}.notPaths"), &o.not_paths, true, problems);
                    check(format!("{at}.methods"), &o.methods, false, problems);
                    check(format!("{at}.notMethods"), &o.not_methods, false, problems);
                }
            }
        }
    }
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

// ---------------------------------------------------------------------------------------------
#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SEED: &str = include_str!("../../../examples/payments/payments.yaml");

    fn errors_of(text: &str) -> String {
        match parse_yaml(text, "t.yaml") {
            Ok(r) => panic!("expected errors, parsed {} resources", r.len()),
            Err(e) => e.join("\n"),
        }
    }

    fn assert_error(text: &str, needle: &str) {
        let all = errors_of(text);
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }

    fn vs(spec: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {{ name: payments }}\nspec:\n{spec}"
        )
    }

    fn dr(spec: &str) -> String {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {{ name: payments }}\nspec:\n{spec}"
        )
    }

    fn wasm(spec: &str) -> String {
        format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{ name: gate }}\nspec:\n{spec}"
        )
    }

    const ROUTE: &str =
        "  hosts: [payments]\n  http:\n  - route:\n    - destination: { host: payments }\n";

    #[test]
    fn the_seed_parses() {
        let rs = parse_yaml(SEED, "payments.yaml").expect("seed parses");
        assert_eq!(rs.len(), 2);
        assert_eq!(
            (rs[0].kind, rs[0].name.as_str(), rs[0].namespace.as_str()),
            (Kind::VirtualService, "payments", "default")
        );
        assert_eq!(
            rs[0].origin(),
            "payments.yaml: document 1 (VirtualService payments)"
        );
        let Spec::VirtualService(v) = &rs[0].spec else {
            panic!("not a VirtualService")
        };
        assert_eq!(v.hosts, ["payments"]);
        let entry = &v.http[0];
        assert_eq!(entry.route.len(), 2);
        assert_eq!(entry.route[1].destination.subset.as_deref(), Some("v2"));
        assert_eq!(entry.route[1].weight, Some(5));
        assert_eq!(entry.timeout.as_deref(), Some("6s"));
        let r = entry.retries.as_ref().expect("retries");
        assert_eq!(
            (
                r.attempts,
                r.per_try_timeout.as_deref(),
                r.retry_on.as_deref()
            ),
            (Some(3), Some("2s"), Some("5xx,reset"))
        );
        let Spec::DestinationRule(d) = &rs[1].spec else {
            panic!("not a DestinationRule")
        };
        assert_eq!(d.subsets[0].labels["version"], "v1");
        let o = d
            .traffic_policy
            .as_ref()
            .and_then(|t| t.outlier_detection.as_ref())
            .expect("outlierDetection");
        assert_eq!(o.consecutive_5xx_errors, Some(5));
        assert_eq!(o.base_ejection_time.as_deref(), Some("30s"));
        // The document is kept whole, comments aside, for `weft get`.
        assert_eq!(
            rs[1].document["spec"]["subsets"][1]["labels"]["version"],
            "v2"
        );
    }

    #[test]
    fn quoted_durations_and_full_hosts_read_the_same() {
        let text = vs(
            "  hosts: [\"payments.default.svc.cluster.local\"]\n  http:\n  - route:\n    - destination: { host: \"payments.default.svc.cluster.local\" }\n    timeout: \"6s\"\n",
        );
        let rs = parse_yaml(&text, "t.yaml").expect("parses");
        let Spec::VirtualService(v) = &rs[0].spec else {
            panic!("not a VirtualService")
        };
        assert_eq!(v.http[0].timeout.as_deref(), Some("6s"));
        assert_eq!(service_of_host(&v.hosts[0]), Ok("payments"));
    }

    #[test]
    fn hosts_name_default_services_in_every_form_and_nothing_else() {
        for host in [
            "payments",
            "payments.default",
            "payments.default.svc",
            "payments.default.svc.cluster.local",
        ] {
            assert_eq!(service_of_host(host), Ok("payments"), "{host}");
        }
        for (host, words) in [
            ("payments.shop.svc.cluster.local", "in namespace shop"),
            ("payments.shop.svc", "in namespace shop"),
            ("bookinfo.com", "names no Weft service"),
            ("payments.shop", "names no Weft service"),
            ("payments.default.svc.example.org", "names no Weft service"),
            ("*.default.svc.cluster.local", "wildcard"),
            ("Payments", "not a service host"),
        ] {
            let err = service_of_host(host).expect_err(host);
            assert!(err.contains(words), "{host}: {err}");
        }
    }

    #[test]
    fn a_virtual_service_outside_default_is_refused() {
        let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
                    metadata: { name: payments, namespace: shop }\nspec:\n  hosts: [payments]\n  \
                    http:\n  - route: [{ destination: { host: payments } }]\n";
        assert_error(
            text,
            "metadata.namespace: shop: every Weft service is in namespace default",
        );
    }

    #[test]
    fn weights_are_relative_integers() {
        // Relative, as in Istio: any sum, omitted weights are 0 (the canary judges a zero sum).
        for route in [
            "    - destination: { host: payments, subset: v1 }\n      weight: 85\n    - destination: { host: payments, subset: v2 }\n      weight: 5\n",
            "    - destination: { host: payments, subset: v1 }\n    - destination: { host: payments, subset: v2 }\n      weight: 5\n",
            "    - destination: { host: payments }\n      weight: 50\n",
        ] {
            let text = vs(&format!(
                "  hosts: [payments]\n  http:\n  - route:\n{route}"
            ));
            parse_yaml(&text, "t.yaml").expect("accepted");
        }
        let text = vs(
            "  hosts: [payments]\n  http:\n  - route:\n    - destination: { host: payments, subset: v1 }\n      weight: 94.5\n    - destination: { host: payments, subset: v2 }\n      weight: 5.5\n",
        );
        assert_error(
            &text,
            "spec.http[0].route[0].weight: invalid type: floating point `94.5`",
        );
    }

    #[test]
    fn durations_are_checked_with_their_path() {
        let text = vs(&format!("{ROUTE}    timeout: 6\n"));
        assert_error(
            &text,
            "spec.http[0].timeout: invalid type: integer `6`, expected a string",
        );
        let text = vs(&format!(
            "{ROUTE}    timeout: 6x\n    retries: {{ attempts: 2, perTryTimeout: 0s }}\n"
        ));
        let all = errors_of(&text);
        for needle in [
            "spec.http[0].timeout: invalid duration \"6x\"",
            "spec.http[0].retries.perTryTimeout: must be at least 1ms",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn string_matches_need_exactly_one_kind() {
        let text = vs(
            "  hosts: [payments]\n  http:\n  - match:\n    - uri: { prefix: /a, exact: /a }\n      method: {}\n      headers: { x-user: {}, X-Bad: { exact: a } }\n    route:\n    - destination: { host: payments }\n",
        );
        let all = errors_of(&text);
        for needle in [
            "spec.http[0].match[0].uri: exactly one of exact, prefix or regex is required",
            "spec.http[0].match[0].method: exactly one of exact, prefix or regex is required",
            "spec.http[0].match[0].headers.X-Bad: header names must be lower-case",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        // `{}` on a header checks presence only: no error for x-user.
        assert!(!all.contains("headers.x-user"), "{all}");
    }

    #[test]
    fn unknown_fields_are_named() {
        let text = vs(
            "  hosts: [payments]\n  http:\n  - route:\n    - destination: { host: payments }\n      wieght: 100\n",
        );
        assert_error(
            &text,
            "t.yaml: document 1 (VirtualService payments): spec.http[0].route[0].wieght: unknown field `wieght`, expected `destination` or `weight`",
        );
    }

    #[test]
    fn unsupported_istio_fields_are_refused_not_ignored() {
        let text = vs(
            "  hosts: [payments]\n  tcp: []\n  http:\n  - mirror: { host: shadow }\n    corsPolicy: {}\n    match:\n    - sourceLabels: { app: orders }\n    route:\n    - destination: { host: payments, port: { number: 80 } }\n      weigth: 100\n",
        );
        let all = errors_of(&text);
        for needle in [
            "spec.tcp: not supported by Weft yet",
            "spec.http[0].mirror: not supported by Weft yet",
            "spec.http[0].corsPolicy: not supported by Weft yet",
            "spec.http[0].match[0].sourceLabels: not supported by Weft yet",
            "spec.http[0].route[0].destination.port: not supported by Weft yet",
            // The typo is reported in the same pass.
            "spec.http[0].route[0].weigth: unknown field `weigth`",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        let text = dr(
            "  host: payments\n  trafficPolicy:\n    connectionPool: { tcp: { maxConnections: 1 } }\n    portLevelSettings: []\n    loadBalancer: { consistentHash: { httpHeaderName: x } }\n",
        );
        let all = errors_of(&text);
        for needle in [
            "spec.trafficPolicy.connectionPool: not supported by Weft yet",
            "spec.trafficPolicy.portLevelSettings: not supported by Weft yet",
            "spec.trafficPolicy.loadBalancer.consistentHash: not supported by Weft yet",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
    }

    #[test]
    fn gateways_and_export_to_are_accepted() {
        let text = vs(&format!("  gateways: [mesh]\n  exportTo: [\".\"]\n{ROUTE}"));
        let rs = parse_yaml(&text, "t.yaml").expect("parses");
        let Spec::VirtualService(v) = &rs[0].spec else {
            panic!("not a VirtualService")
        };
        assert_eq!(v.gateways, ["mesh"]);
    }

    #[test]
    fn bad_yaml_names_the_line() {
        let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: payments\nspec: {}\n";
        let all = errors_of(text);
        assert!(all.starts_with("t.yaml: line "), "{all}");
        assert!(all.contains("invalid YAML"), "{all}");
        assert_eq!(
            errors_of("a: 1\na: 2\n"),
            "t.yaml: line 2, column 4: invalid YAML: duplicated key \"a\""
        );
        assert_error(
            &vs(&format!("{ROUTE}    timeout: !!int x\n")),
            "t.yaml: document 1 (VirtualService payments): spec.http[0].timeout: invalid value (does it match its tag?)",
        );
    }

    #[test]
    fn one_bad_document_rejects_all_with_every_error() {
        let text = format!(
            "{}---\n{}---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{ name: gw }}\nspec: {{}}\n",
            vs(ROUTE),
            dr(
                "  host: payments\n  subsets:\n  - { name: v1 }\n  - { name: v1 }\n  trafficPolicy: { loadBalancer: { simple: PASSTHROUGH } }\n"
            ),
        );
        let errors = parse_yaml(&text, "t.yaml").expect_err("rejected");
        assert_eq!(
            errors,
            [
                "t.yaml: document 2 (DestinationRule payments): spec.subsets[1].name: subset v1 is defined twice",
                "t.yaml: document 2 (DestinationRule payments): spec.trafficPolicy.loadBalancer.simple: PASSTHROUGH is not supported by Weft yet",
                "t.yaml: document 3 (Gateway gw): kind: Gateway is not supported by Weft yet (supported: VirtualService, DestinationRule, WasmPlugin, AuthorizationPolicy, PeerAuthentication)",
            ]
        );
    }

    #[test]
    fn envelope_errors() {
        let text = "apiVersion: networking.istio.io/v2\nkind: VirtualService\nmetadata: { namespace: Prod }\nspec:\n  hosts: [payments]\n  http: [{ route: [{ destination: { host: payments } }] }]\nextra: 1\n";
        let all = errors_of(text);
        for needle in [
            "t.yaml: document 1 (VirtualService): unknown field `extra`",
            "apiVersion: networking.istio.io/v2 does not serve VirtualService (use networking.istio.io/v1, networking.istio.io/v1beta1, networking.istio.io/v1alpha3)",
            "metadata.name: required",
            "metadata.namespace: \"Prod\" is not a valid namespace",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_error(
            "apiVersion: networking.istio.io/v1\nkind: WasmPlugin\nmetadata: { name: x }\nspec: { url: file:///x.wasm }\n",
            "apiVersion: networking.istio.io/v1 does not serve WasmPlugin (use extensions.istio.io/v1alpha1)",
        );
        assert_error("- 1\n- 2\n", "t.yaml: document 1: expected a mapping");
        assert_error("# nothing\n", "t.yaml: no resources found");
        assert_error(
            &vs("  hosts: []\n"),
            "spec.hosts: at least one host is required",
        );
        assert_error(
            &vs("  hosts: [\"*.example.com\"]\n  http: []\n"),
            "spec.hosts[0]: \"*.example.com\": wildcard hosts are not supported by Weft yet",
        );
        assert_error(
            &vs("  hosts: [payments]\n"),
            "spec.http: at least one route is required",
        );
    }

    #[test]
    fn every_api_version_is_accepted_and_namespaces_kept() {
        for v in ["v1", "v1beta1", "v1alpha3"] {
            let text = format!(
                "apiVersion: networking.istio.io/{v}\nkind: DestinationRule\nmetadata:\n  name: payments\n  namespace: default\n  labels: {{ team: pay }}\nspec: {{ host: payments }}\n---\n\
                 apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {{ name: p, namespace: shop }}\nspec: {{}}\n"
            );
            let rs = parse_yaml(&text, "t.yaml").expect("parses");
            assert_eq!(rs[0].namespace, "default");
            assert_eq!(rs[1].namespace, "shop");
        }
    }

    #[test]
    fn faults_are_checked_and_normalised() {
        let text = vs(&format!(
            "{ROUTE}    fault:\n      delay: {{ percent: 10, fixedDelay: 5s }}\n      abort: {{ percentage: {{ value: 5.0 }}, percent: 50, httpStatus: 503 }}\n"
        ));
        let rs = parse_yaml(&text, "t.yaml").expect("parses");
        let Spec::VirtualService(v) = &rs[0].spec else {
            panic!("not a VirtualService")
        };
        let fault = v.http[0].fault.as_ref().expect("fault").to_config();
        assert_eq!(
            fault,
            json!({"delay": {"fixedDelay": "5s", "percentage": {"value": 10.0}},
                   "abort": {"httpStatus": 503, "percentage": {"value": 5.0}}})
        );
        let text = vs(&format!(
            "{ROUTE}    fault:\n      delay: {{ percentage: {{ value: 150 }}, exponentialDelay: 1s }}\n      abort: {{ httpStatus: 99 }}\n"
        ));
        let all = errors_of(&text);
        for needle in [
            "spec.http[0].fault.delay.exponentialDelay: not supported by Weft yet",
            "spec.http[0].fault.delay.fixedDelay: required",
            "spec.http[0].fault.delay.percentage.value: must be between 0 and 100, got 150",
            "spec.http[0].fault.abort.httpStatus: must be between 200 and 599, got 99",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_error(
            &vs(&format!("{ROUTE}    fault: {{}}\n")),
            "spec.http[0].fault: one of delay or abort is required",
        );
    }

    #[test]
    fn destination_rule_checks() {
        let text = dr(
            "  host: payments\n  trafficPolicy:\n    loadBalancer: { simple: LEAST_LOADED }\n    outlierDetection: { interval: 10, maxEjectionPercent: 150, baseEjectionTime: 1d }\n",
        );
        // The typed read stops at the first type error; fix it and the rest shows.
        assert_error(
            &text,
            "spec.trafficPolicy.outlierDetection.interval: invalid type: integer `10`, expected a string",
        );
        let text = dr(
            "  host: payments\n  trafficPolicy:\n    loadBalancer: { simple: LEAST_LOADED }\n    outlierDetection: { maxEjectionPercent: 150, baseEjectionTime: 1d, consecutiveErrors: 5 }\n",
        );
        let all = errors_of(&text);
        for needle in [
            "spec.trafficPolicy.loadBalancer.simple: unknown policy \"LEAST_LOADED\"",
            "spec.trafficPolicy.outlierDetection.maxEjectionPercent: must be between 0 and 100, got 150",
            "spec.trafficPolicy.outlierDetection.baseEjectionTime: invalid duration \"1d\"",
            "spec.trafficPolicy.outlierDetection.consecutiveErrors: not supported by Weft yet",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        let rs = parse_yaml(
            &dr("  host: payments\n  trafficPolicy: { loadBalancer: { simple: ROUND_ROBIN } }\n"),
            "t.yaml",
        )
        .expect("parses");
        let Spec::DestinationRule(d) = &rs[0].spec else {
            panic!("not a DestinationRule")
        };
        assert_eq!(d.load_balancer(), Some("roundRobin"));
    }

    #[test]
    fn wasm_plugin_checks() {
        let good = format!(
            "  url: sha256:{}\n  phase: AUTHZ\n  priority: 10\n  failStrategy: FAIL_OPEN\n  pluginConfig: {{ tenants: [a] }}\n",
            "a".repeat(64)
        );
        let rs = parse_yaml(&wasm(&good), "t.yaml").expect("parses");
        let Spec::WasmPlugin(w) = &rs[0].spec else {
            panic!("not a WasmPlugin")
        };
        assert_eq!(w.source(), Ok(WasmSource::Stored("a".repeat(64))));
        assert_eq!(w.phase(), Phase::Authz);

        let text = wasm(&format!(
            "  url: sha256:{}\n  sha256: {}\n  targetRefs: [{{ kind: Gateway, name: gw }}]\n  pluginConfig: [1]\n  failStrategy: FAIL_RELOAD\n  type: NETWORK\n  vmConfig: {{}}\n",
            "a".repeat(64),
            "b".repeat(64)
        ));
        let all = errors_of(&text);
        for needle in [
            "spec.vmConfig: not supported by Weft yet",
            &format!(
                "spec.sha256: {} differs from the digest spec.url names, sha256:{}",
                "b".repeat(64),
                "a".repeat(64)
            ),
            "spec.targetRefs[0].kind: Gateway is not supported by Weft yet (only Service)",
            "spec.pluginConfig: expected a mapping, found a sequence",
            "spec.failStrategy: FAIL_RELOAD is not supported by Weft yet",
            "spec.type: NETWORK plugins are not supported by Weft yet",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        for (url, needle) in [
            ("file://relative.wasm", "a file URL needs an absolute path"),
            (
                "oci://ghcr.io/x/y:1",
                "not supported by Weft yet (OCI images included)",
            ),
            (
                "sha256:abc",
                "a stored artifact is written sha256:<64 hex digits>",
            ),
            ("https://", "the URL names no host"),
        ] {
            assert_error(&wasm(&format!("  url: {url}\n")), needle);
        }
        assert_error(
            &wasm("  url: file:///p.wasm\n  sha256: xyz\n"),
            "spec.sha256: \"xyz\" is not a sha256",
        );
        assert_error(
            &wasm("  url: file:///p.wasm\n  phase: EARLY\n"),
            "spec.phase: unknown variant `EARLY`",
        );
    }

    fn scoped(annotations: &str, spec: &str) -> String {
        format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: gate\n  annotations: {annotations}\nspec:\n  url: file:///p.wasm\n{spec}"
        )
    }

    #[test]
    fn the_routes_annotation_scopes_a_wasm_plugin() {
        let one = "  targetRefs: [{ kind: Service, name: payments }]\n";
        let text = scoped(
            r#"{ weft.io/routes: " testers, checkout,testers", team: shop }"#,
            one,
        );
        let rs = parse_yaml(&text, "t.yaml").expect("parses");
        let Spec::WasmPlugin(w) = &rs[0].spec else {
            panic!("not a WasmPlugin")
        };
        assert_eq!(
            w.routes,
            ["testers", "checkout"],
            "trimmed, duplicates dropped"
        );
        // The annotation stays in the document, so `weft get` shows it and it reads back.
        let again = from_document(rs[0].document.clone(), "stored").expect("reads");
        assert_eq!(again.spec, rs[0].spec);
        // The older single targetRef counts as one target too.
        let single = scoped(
            "{ weft.io/routes: testers }",
            "  targetRef: { kind: Service, name: payments }\n",
        );
        assert!(parse_yaml(&single, "t.yaml").is_ok());
        // No annotation, or others only: every route.
        let rs = parse_yaml(&scoped("{ team: shop }", ""), "t.yaml").expect("parses");
        let Spec::WasmPlugin(w) = &rs[0].spec else {
            panic!("not a WasmPlugin")
        };
        assert!(w.routes.is_empty());

        for (annotations, spec, needle) in [
            (
                "{ weft.io/routes: 'testers,,checkout' }",
                one,
                "metadata.annotations.weft.io/routes: \"testers,,checkout\" has an empty route name",
            ),
            (
                "{ weft.io/routes: ' ' }",
                one,
                "metadata.annotations.weft.io/routes: names no route",
            ),
            (
                "{ weft.io/routes: [testers] }",
                one,
                "metadata.annotations.weft.io/routes: expected a string of comma-separated route names, found a sequence",
            ),
            (
                "[weft.io/routes]",
                one,
                "metadata.annotations: expected a mapping, found a sequence",
            ),
            (
                "{ weft.io/routes: testers }",
                "",
                "spec.targetRefs: a WasmPlugin scoped to routes (metadata.annotations.weft.io/routes) must target exactly one Service, whose VirtualService names them; found 0 targets",
            ),
            (
                "{ weft.io/routes: testers }",
                "  targetRefs: [{ kind: Service, name: payments }, { kind: Service, name: orders }]\n",
                "must target exactly one Service, whose VirtualService names them; found 2 targets",
            ),
        ] {
            assert_error(&scoped(annotations, spec), needle);
        }
    }

    fn authz(version: &str, spec: &str) -> String {
        format!(
            "apiVersion: security.istio.io/{version}\nkind: AuthorizationPolicy\nmetadata: {{ name: payments-authz }}\nspec:\n{spec}"
        )
    }

    #[test]
    fn authorization_policies_parse() {
        let spec = "  selector: { matchLabels: { app: payments } }\n  action: DENY\n  rules:\n  - from:\n    - source: { principals: [\"weft.local/ns/default/sa/orders\", \"*/sa/inventory\"], notPrincipals: [\"*\"] }\n    to:\n    - operation: { paths: [/admin*, /exact], notPaths: [\"*.json\"], methods: [GET], notMethods: [DELETE] }\n";
        for version in ["v1", "v1beta1"] {
            let rs = parse_yaml(&authz(version, spec), "t.yaml").expect("parses");
            let Spec::AuthorizationPolicy(ap) = &rs[0].spec else {
                panic!("not an AuthorizationPolicy")
            };
            assert_eq!(ap.action, Some(AuthzActionName::Deny));
            let compiled = ap.to_snapshot("default/payments-authz".into());
            assert_eq!(compiled.action, crate::snapshot::AuthzAction::Deny);
            assert_eq!(
                compiled.rules[0].from[0].principals,
                ["weft.local/ns/default/sa/orders", "*/sa/inventory"]
            );
            assert_eq!(compiled.rules[0].to[0].not_methods, ["DELETE"]);
        }
        // `spec: {}` is Istio's allow-nothing: ALLOW with no rules.
        let rs = parse_yaml(&authz("v1", "  {}\n"), "t.yaml").expect("parses");
        let Spec::AuthorizationPolicy(ap) = &rs[0].spec else {
            panic!("not an AuthorizationPolicy")
        };
        let compiled = ap.to_snapshot("default/deny-all".into());
        assert_eq!(compiled.action, crate::snapshot::AuthzAction::Allow);
        assert!(compiled.rules.is_empty());
        assert_eq!("ap".parse::<Kind>(), Ok(Kind::AuthorizationPolicy));
        assert_eq!(
            "AuthorizationPolicies".parse::<Kind>(),
            Ok(Kind::AuthorizationPolicy)
        );
    }

    #[test]
    fn authorization_policy_checks() {
        let text = authz(
            "v1",
            "  action: CUSTOM\n  provider: { name: ext }\n  targetRefs: [{ kind: Service, name: payments }]\n  rules:\n  - from:\n    - source: { namespaces: [default] }\n    - source: { principals: [\"a*b\", \"\"] }\n    - {}\n    to:\n    - operation: { hosts: [x], paths: [\"/{*}/x\"] }\n    - operation: {}\n    when: [{ key: source.ip, values: [y] }]\n",
        );
        let all = errors_of(&text);
        for needle in [
            "spec.provider: not supported by Weft yet",
            "spec.targetRefs: not supported by Weft yet",
            "spec.rules[0].when: not supported by Weft yet",
            "spec.rules[0].from[0].source.namespaces: not supported by Weft yet",
            "spec.rules[0].to[0].operation.hosts: not supported by Weft yet",
            "spec.action: CUSTOM is not supported by Weft yet (use ALLOW or DENY)",
            "spec.rules[0].from[0].source: must not be empty",
            "spec.rules[0].from[1].source.principals[0]: \"a*b\": `*` may only",
            "spec.rules[0].from[1].source.principals[1]: must not be empty",
            "spec.rules[0].from[2].source: required",
            "spec.rules[0].to[0].operation.paths[0]: \"/{*}/x\": path templates",
            "spec.rules[0].to[1].operation: must not be empty",
        ] {
            assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
        }
        assert_error(
            &authz("v1", "  action: AUDIT\n"),
            "spec.action: AUDIT is not supported by Weft yet",
        );
        assert_error(
            &authz("v1", "  action: REJECT\n"),
            "spec.action: unknown variant `REJECT`",
        );
        assert_error(
            &authz(
                "v1",
                "  rules: [{ from: [{ source: { principal: [x] } }] }]\n",
            ),
            "spec.rules[0].from[0].source.principal: unknown field `principal`",
        );
        assert_error(
            &authz("v1alpha1", "  {}\n"),
            "apiVersion: security.istio.io/v1alpha1 does not serve AuthorizationPolicy",
        );
    }

    fn peer_authn(version: &str, namespace: &str, spec: &str) -> String {
        format!(
            "apiVersion: security.istio.io/{version}\nkind: PeerAuthentication\nmetadata: {{ name: pa, namespace: {namespace} }}\nspec:\n{spec}"
        )
    }

    fn read_peer_authn(text: &str) -> (String, PeerAuthentication) {
        let rs = parse_yaml(text, "t.yaml").expect("parses");
        let Spec::PeerAuthentication(pa) = &rs[0].spec else {
            panic!("not a PeerAuthentication")
        };
        (rs[0].namespace.clone(), pa.clone())
    }

    #[test]
    fn peer_authentications_parse_with_their_scope_and_mode() {
        use crate::snapshot::MtlsMode;
        let labels: BTreeMap<String, String> = [("app", "payments"), ("version", "v1")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        for version in ["v1", "v1beta1"] {
            let (ns, pa) = read_peer_authn(&peer_authn(
                version,
                "default",
                "  selector: { matchLabels: { app: payments } }\n  mtls: { mode: STRICT }\n",
            ));
            assert_eq!(pa.scope(&ns), Some(PeerAuthnScope::Workload));
            assert_eq!(pa.mode(), Some(MtlsMode::Strict));
            assert!(pa.selects(&ns, &labels));
        }
        let (ns, pa) = read_peer_authn(&peer_authn(
            "v1",
            "default",
            "  selector: { matchLabels: { app: orders } }\n  mtls: { mode: PERMISSIVE }\n",
        ));
        assert!(!pa.selects(&ns, &labels));
        assert_eq!(pa.mode(), Some(MtlsMode::Permissive));
        // No selector, or one without labels: namespace-wide.
        for spec in [
            "  mtls: { mode: PERMISSIVE }\n",
            "  selector: {}\n  mtls: {}\n",
        ] {
            let (ns, pa) = read_peer_authn(&peer_authn("v1", "default", spec));
            assert_eq!(pa.scope(&ns), Some(PeerAuthnScope::Namespace));
            assert!(pa.selects(&ns, &labels));
        }
        // UNSET, an empty `mtls` and no `mtls` all inherit.
        for spec in ["  mtls: { mode: UNSET }\n", "  mtls: {}\n", "  {}\n"] {
            let (_, pa) = read_peer_authn(&peer_authn("v1", "default", spec));
            assert_eq!(pa.mode(), None, "{spec}");
        }
        let (ns, pa) = read_peer_authn(&peer_authn(
            "v1",
            "istio-system",
            "  mtls: { mode: STRICT }\n",
        ));
        assert_eq!(pa.scope(&ns), Some(PeerAuthnScope::Mesh));
        assert!(pa.selects(&ns, &labels));
        // Istio ignores a selector in the root namespace.
        let (ns, pa) = read_peer_authn(&peer_authn(
            "v1",
            "istio-system",
            "  selector: { matchLabels: { app: payments } }\n  mtls: { mode: STRICT }\n",
        ));
        assert_eq!(pa.scope(&ns), None);
        assert!(!pa.selects(&ns, &labels));
        // Another namespace holds no Weft workload.
        let (ns, pa) = read_peer_authn(&peer_authn("v1", "shop", "  mtls: { mode: STRICT }\n"));
        assert!(!pa.selects(&ns, &labels));
        assert_eq!("pa".parse::<Kind>(), Ok(Kind::PeerAuthentication));
        assert_eq!(
            "PeerAuthentications".parse::<Kind>(),
            Ok(Kind::PeerAuthentication)
        );
    }

    #[test]
    fn peer_authentication_checks() {
        assert_error(
            &peer_authn("v1", "default", "  mtls: { mode: DISABLE }\n"),
            "spec.mtls.mode: DISABLE is not supported: Weft sidecars always have identities once mTLS is on",
        );
        assert_error(
            &peer_authn(
                "v1",
                "default",
                "  mtls: { mode: STRICT }\n  portLevelMtls: { 8080: { mode: PERMISSIVE } }\n",
            ),
            "spec.portLevelMtls: not supported by Weft yet",
        );
        assert_error(
            &peer_authn("v1", "default", "  mtls: { mode: strict }\n"),
            "spec.mtls.mode: unknown variant `strict`",
        );
        assert_error(
            &peer_authn("v1", "default", "  mtls: { mod: STRICT }\n"),
            "spec.mtls.mod: unknown field `mod`",
        );
        assert_error(
            &peer_authn("v1alpha1", "default", "  {}\n"),
            "apiVersion: security.istio.io/v1alpha1 does not serve PeerAuthentication",
        );
    }

    #[test]
    fn stored_documents_read_back() {
        let rs = parse_yaml(SEED, "payments.yaml").expect("seed parses");
        let again = from_document(rs[0].document.clone(), "stored").expect("reads");
        assert_eq!(again.spec, rs[0].spec);
        assert_eq!(again.origin(), "stored (VirtualService payments)");
        let mut broken = rs[0].document.clone();
        broken["spec"]["hosts"] = json!([]);
        assert_eq!(
            from_document(broken, "stored"),
            Err(vec![
                "stored (VirtualService payments): spec.hosts: at least one host is required"
                    .to_string()
            ])
        );
    }

    #[test]
    fn kinds_read_as_weft_get_takes_them() {
        for (text, kind) in [
            ("VirtualService", Kind::VirtualService),
            ("virtualservices", Kind::VirtualService),
            ("vs", Kind::VirtualService),
            ("DestinationRule", Kind::DestinationRule),
            ("dr", Kind::DestinationRule),
            ("wasmplugin", Kind::WasmPlugin),
            ("WasmPlugins", Kind::WasmPlugin),
        ] {
            assert_eq!(text.parse::<Kind>(), Ok(kind), "{text}");
        }
        assert!("gateway".parse::<Kind>().is_err());
        assert_eq!(Kind::DestinationRule.to_string(), "DestinationRule");
    }

    #[test]
    fn to_yaml_round_trips() {
        for r in parse_yaml(SEED, "payments.yaml").expect("seed parses") {
            let text = yaml::to_yaml(&r.document);
            let back = parse_yaml(&text, "again.yaml").expect("reparses");
            assert_eq!(back[0].document, r.document, "{text}");
            assert_eq!(back[0].spec, r.spec);
        }
    }
}
