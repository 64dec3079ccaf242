//! VirtualService (`networking.istio.io`): the spec as written, the Istio fields Weft refuses,
//! and the checks one document gets.

use super::*;

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
    /// What the call is sent upstream with instead of the caller's path and authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rewrite: Option<Rewrite>,
    /// Answer with a redirect instead of routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub redirect: Option<Redirect>,
    /// A destination that gets a copy of each call (fire-and-forget).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<Destination>,
    /// The share of calls `mirror` copies; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percentage: Option<Percentage>,
    /// The deprecated integer form of `mirrorPercentage`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror_percent: Option<u32>,
    /// Several mirrors, each with its share.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mirrors: Vec<MirrorPolicy>,
    /// Cross-origin resource sharing for browsers calling this route.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cors_policy: Option<CorsPolicy>,
    /// Answer locally instead of routing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direct_response: Option<DirectResponse>,
}

impl MatchRequest {
    /// Whether it can hold for calls from a workload with `labels` in `namespace` (a sidecar:
    /// its `gateways`, when given, must list `mesh`).
    pub fn is_for_caller(&self, labels: &BTreeMap<String, String>, namespace: &str) -> bool {
        (self.gateways.is_empty() || self.gateways.iter().any(|g| g == "mesh"))
            && self
                .source_labels
                .iter()
                .all(|(k, v)| labels.get(k) == Some(v))
            && self
                .source_namespace
                .as_deref()
                .is_none_or(|ns| ns == namespace)
    }

    /// The conditions the canary checks per call: the caller's are decided when the snapshot
    /// is compiled for it.
    pub fn for_canary(&self) -> MatchRequest {
        MatchRequest {
            source_labels: BTreeMap::new(),
            source_namespace: None,
            gateways: Vec::new(),
            ..self.clone()
        }
    }
}

/// Istio's `HTTPMirrorPolicy`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorPolicy {
    /// Where the copies go.
    pub destination: Destination,
    /// The share of calls copied; all when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentage: Option<Percentage>,
}

impl HttpRoute {
    /// Every mirror of the entry, `mirror` first, each with its share (0 to 100) if given.
    pub fn all_mirrors(&self) -> Vec<(&Destination, Option<f64>)> {
        let mut out: Vec<(&Destination, Option<f64>)> = Vec::new();
        if let Some(m) = &self.mirror {
            let share = self
                .mirror_percentage
                .as_ref()
                .map(|p| p.value)
                .or(self.mirror_percent.map(f64::from));
            out.push((m, share));
        }
        out.extend(
            self.mirrors
                .iter()
                .map(|m| (&m.destination, m.percentage.as_ref().map(|p| p.value))),
        );
        out
    }
}

/// Istio's `CorsPolicy`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct CorsPolicy {
    /// Origins allowed, as string matches.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origins: Vec<StringMatch>,
    /// The deprecated form: exact origins (`*`: any).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_origin: Vec<String>,
    /// Methods a preflight may ask for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_methods: Vec<String>,
    /// Headers a preflight may ask for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow_headers: Vec<String>,
    /// Response headers a page may read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub expose_headers: Vec<String>,
    /// How long a preflight's answer may be cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
    /// Whether credentials may be sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_credentials: Option<bool>,
    /// `FORWARD` (default) or `IGNORE`: a preflight from another origin.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unmatched_preflights: Option<String>,
}

/// Istio's `HTTPRewrite`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rewrite {
    /// Replaces the part of the path the entry's `uri` match matched.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// Replaces the authority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<String>,
    /// Rewrites the path by a regex (every match; `\1` names a group).
    #[serde(
        default,
        rename = "uriRegexRewrite",
        skip_serializing_if = "Option::is_none"
    )]
    pub uri_regex_rewrite: Option<RegexRewrite>,
}

/// Istio's `RegexRewrite`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegexRewrite {
    /// The expression (RE2 syntax).
    #[serde(rename = "match")]
    pub pattern: String,
    /// The replacement.
    pub rewrite: String,
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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
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
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
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
    pub fn actions_config(&self, namespace: &str) -> Option<Value> {
        let mut out = Map::new();
        // The destinations, in `route[]` order, with their own operations, named as the canary
        // names them (by key); only when one has operations.
        if self.route.iter().any(|d| d.headers.is_some()) {
            let route: Vec<Value> = self
                .route
                .iter()
                .map(|d| {
                    let service = crate::names::service_of_host(&d.destination.host, namespace)
                        .map(std::borrow::Cow::into_owned)
                        .unwrap_or_else(|_| d.destination.host.clone());
                    let mut one = serde_json::json!({ "service": service });
                    if let Some(subset) = &d.destination.subset {
                        one["subset"] = Value::from(subset.as_str());
                    }
                    if let Some(h) = &d.headers {
                        one["headers"] = serde_json::to_value(h).unwrap_or(Value::Null);
                    }
                    one
                })
                .collect();
            out.insert("route".into(), Value::Array(route));
        }
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
        if let Some(c) = &self.cors_policy {
            let mut cors = serde_json::to_value(c).unwrap_or(Value::Null);
            // The deprecated exact list joins the matches, as Istio merges them.
            if let Some(obj) = cors.as_object_mut() {
                let mut origins: Vec<Value> = c
                    .allow_origins
                    .iter()
                    .map(|m| serde_json::to_value(m).unwrap_or(Value::Null))
                    .collect();
                origins.extend(
                    c.allow_origin
                        .iter()
                        .map(|o| serde_json::json!({ "exact": o })),
                );
                obj.remove("allowOrigin");
                obj.insert("allowOrigins".into(), Value::Array(origins));
            }
            out.insert("cors".into(), cors);
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
    /// The authority the caller named.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authority: Option<StringMatch>,
    /// The scheme (`http` for every call from an app to its sidecar).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<StringMatch>,
    /// The calling workload's labels, all of which must be among its own.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub source_labels: BTreeMap<String, String>,
    /// The calling workload's namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_namespace: Option<String>,
    /// The gateways it holds at, overriding the VirtualService's `gateways`: sidecars only
    /// when it lists `mesh`; empty: wherever the VirtualService applies.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gateways: Vec<String>,
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
    /// Header operations for the calls sent to this destination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Headers>,
}

impl RouteDestination {
    /// All calls to the service with key `service`, to the service itself (named by its fully
    /// qualified host, which reads the same in every namespace).
    pub fn to(service: &str) -> RouteDestination {
        RouteDestination {
            destination: Destination {
                host: crate::names::fqdn(service),
                subset: None,
            },
            weight: None,
            headers: None,
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
    /// The base interval of the exponential back-off between tries (Istio 1.26; 25 ms when
    /// absent, as Envoy's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
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
    /// The gRPC status (by name, `UNAVAILABLE`) a gRPC caller is answered with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grpc_status: Option<String>,
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
            // As written: the plugin reads both, `percentage` first, as Istio does.
            if let Some(p) = d.percentage {
                delay.insert("percentage".into(), serde_json::json!({ "value": p.value }));
            }
            if let Some(p) = d.percent {
                delay.insert("percent".into(), Value::from(p));
            }
            out.insert("delay".into(), Value::Object(delay));
        }
        if let Some(a) = &self.abort {
            let mut abort = Map::new();
            if let Some(s) = a.http_status {
                abort.insert("httpStatus".into(), Value::from(s));
            }
            if let Some(s) = &a.grpc_status {
                abort.insert("grpcStatus".into(), Value::from(s.as_str()));
            }
            if let Some(p) = a.percentage {
                abort.insert("percentage".into(), serde_json::json!({ "value": p.value }));
            }
            if let Some(p) = a.percent {
                abort.insert("percent".into(), Value::from(p));
            }
            out.insert("abort".into(), Value::Object(abort));
        }
        Value::Object(out)
    }
}

impl VirtualService {
    /// Whether its routes apply to sidecars at all: `gateways` absent, or naming `mesh`
    /// (Istio's reserved word for every sidecar).
    pub fn applies_to_mesh(&self) -> bool {
        self.gateways.is_empty() || self.gateways.iter().any(|g| g == "mesh")
    }
}

pub(in crate::control) const VS_UNSUPPORTED: Unsupported = &[
    ("", &["tcp", "tls"]),
    ("http[]", &["delegate"]),
    ("http[].redirect", &["port", "derivePort"]),
    ("http[].directResponse.body", &["bytes"]),
    ("http[].match[]", &["port", "statPrefix"]),
    ("http[].route[].destination", &["port"]),
    ("http[].retries", &["retryRemoteLocalities"]),
    ("http[].fault.delay", &["exponentialDelay"]),
    ("http[].fault.abort", &["http2Error"]),
];

pub(super) fn check_virtual_service(vs: &VirtualService, namespace: &str, problems: &mut Problems) {
    if vs.hosts.is_empty() {
        problems.at("spec.hosts", "at least one host is required");
    }
    // As Istio: two hosts of one VirtualService must not overlap (`*.shop.svc.cluster.local`
    // and `payments.shop` are duplicates, as are a wildcard and a shorter one).
    let mut seen: Vec<(&str, crate::names::HostRef)> = Vec::new();
    for (i, host) in vs.hosts.iter().enumerate() {
        let named = match crate::names::host_ref(host, namespace) {
            Ok(r) => r,
            Err(e) => {
                problems.at(format!("spec.hosts[{i}]"), e);
                continue;
            }
        };
        if let Some((first, _)) = seen.iter().find(|(_, r)| r.overlaps(&named)) {
            problems.at(
                format!("spec.hosts[{i}]"),
                format!("{host:?} names services {first:?} already names (as in Istio, hosts of one VirtualService must not overlap)"),
            );
        }
        seen.push((host, named));
    }
    if vs.http.is_empty() {
        problems.at(
            "spec.http",
            "at least one route is required (Weft routes HTTP only)",
        );
    }
    for (i, entry) in vs.http.iter().enumerate() {
        let at = format!("spec.http[{i}]");
        check_route(entry, &at, namespace, problems);
        if let Some(t) = &entry.timeout
            && let Err(e) = parse_duration(t)
        {
            problems.at(format!("{at}.timeout"), e);
        }
        for (k, m) in entry.matches.iter().enumerate() {
            check_match(m, &format!("{at}.match[{k}]"), problems);
        }
        // Retries and faults are judged at apply by the retry and fault plugins themselves
        // (`control::configs`), so their rules live once.
        if let Some(r) = &entry.retries
            && r.retry_ignore_previous_hosts == Some(false)
        {
            problems.at(
                format!("{at}.retries.retryIgnorePreviousHosts"),
                "false is not supported by Weft yet: a retry always prefers another endpoint",
            );
        }
    }
}

pub(super) fn check_route(entry: &HttpRoute, at: &str, namespace: &str, problems: &mut Problems) {
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
    if entry.mirror.is_some() && !entry.mirrors.is_empty() {
        problems.at(
            format!("{at}.mirrors"),
            "set mirror or mirrors, not both (as Istio)",
        );
    }
    for (k, (m, _)) in entry.all_mirrors().into_iter().enumerate() {
        if let Err(e) = service_of_host(&m.host, namespace) {
            problems.at(format!("{at}.mirrors[{k}].destination.host"), e);
        }
    }
    for (j, d) in entry.route.iter().enumerate() {
        if let Err(e) = service_of_host(&d.destination.host, namespace) {
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

pub(super) fn check_match(m: &MatchRequest, at: &str, problems: &mut Problems) {
    for (field, value) in [
        ("uri", &m.uri),
        ("method", &m.method),
        ("authority", &m.authority),
        ("scheme", &m.scheme),
    ] {
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

pub(super) fn check_string_match(
    s: &StringMatch,
    at: &str,
    required: bool,
    problems: &mut Problems,
) {
    let given = [&s.exact, &s.prefix, &s.regex]
        .iter()
        .filter(|v| v.is_some())
        .count();
    if given > 1 || (required && given == 0) {
        problems.at(at, "exactly one of exact, prefix or regex is required");
    }
}
