//! The Kubernetes Gateway API's `HTTPRoute` for mesh traffic (GAMMA): a route whose parent is
//! a Service routes the calls made to that Service. Read as written, checked, and translated
//! into the VirtualService it means, so it compiles into the same snapshots and runs through
//! the same plugins: each rule's matches become `http` entries in the Gateway API's match
//! precedence (an exact path, then the longest prefix, then a method, then the most header
//! matches, then the most query matches; then rule and match order), its `backendRefs`
//! weighted destinations, its filters header operations, rewrites, redirects and mirrors, its
//! `timeouts` and `retry` a timeout and retry policy.

use super::virtual_service as vs;
use super::*;

/// An HTTPRoute's spec.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayHttpRoute {
    /// What it attaches to: for mesh routing, Services (`group: ""`, `kind: Service`).
    pub parent_refs: Vec<ParentRef>,
    /// Its rules.
    #[serde(default)]
    pub rules: Vec<Rule>,
    /// The VirtualService it means, worked out when it is read.
    #[serde(skip)]
    pub mesh: VirtualService,
}

/// A `parentRefs` entry.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ParentRef {
    /// `""` (core) for a Service; absent means `gateway.networking.k8s.io`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Service`; absent means `Gateway`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The Service's name.
    pub name: String,
    /// Its namespace; the route's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The Service port (a Weft service has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
}

/// An HTTPRoute rule.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rule {
    /// Its name (the route name telemetry reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When it applies: any of these; none means every call.
    #[serde(default)]
    pub matches: Vec<Match>,
    /// What it does to the call before it goes.
    #[serde(default)]
    pub filters: Vec<Filter>,
    /// Where calls go, by weight.
    #[serde(default)]
    pub backend_refs: Vec<BackendRef>,
    /// Bounds on the whole call and on each attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    /// Retries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
}

/// An `HTTPRouteMatch`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Match {
    /// The path; `PathPrefix /` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathMatch>,
    /// Headers that must all match.
    #[serde(default)]
    pub headers: Vec<NameMatch>,
    /// Query parameters that must all match.
    #[serde(default)]
    pub query_params: Vec<NameMatch>,
    /// The method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// An `HTTPPathMatch`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathMatch {
    /// `Exact`, `PathPrefix` (default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The path; `/` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// An `HTTPHeaderMatch` or `HTTPQueryParamMatch`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NameMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The header or parameter.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// An `HTTPRouteFilter`: its type and that type's settings.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Filter {
    /// `RequestHeaderModifier`, `ResponseHeaderModifier`, `URLRewrite`, `RequestRedirect` or
    /// `RequestMirror`.
    #[serde(rename = "type")]
    pub kind: String,
    /// For `RequestHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_header_modifier: Option<HeaderModifier>,
    /// For `ResponseHeaderModifier`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_header_modifier: Option<HeaderModifier>,
    /// For `URLRewrite`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url_rewrite: Option<UrlRewrite>,
    /// For `RequestRedirect`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_redirect: Option<RequestRedirect>,
    /// For `RequestMirror`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_mirror: Option<RequestMirror>,
}

/// An `HTTPHeaderFilter`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderModifier {
    /// Headers set (replacing any value).
    #[serde(default)]
    pub set: Vec<HeaderValue>,
    /// Headers added (beside any value).
    #[serde(default)]
    pub add: Vec<HeaderValue>,
    /// Headers removed.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// A header and its value.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct HeaderValue {
    /// The header.
    pub name: String,
    /// Its value.
    pub value: String,
}

/// An `HTTPURLRewriteFilter`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UrlRewrite {
    /// The `Host` sent on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The path sent on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
}

/// An `HTTPPathModifier`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PathModifier {
    /// `ReplaceFullPath` or `ReplacePrefixMatch`.
    #[serde(rename = "type")]
    pub kind: String,
    /// With `ReplaceFullPath`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_full_path: Option<String>,
    /// With `ReplacePrefixMatch`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replace_prefix_match: Option<String>,
}

/// An `HTTPRequestRedirectFilter`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestRedirect {
    /// `http` or `https`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheme: Option<String>,
    /// The host redirected to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The path redirected to (`ReplaceFullPath` only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<PathModifier>,
    /// 301 or 302 (default), or 303, 307, 308.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
}

/// An `HTTPRequestMirrorFilter`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RequestMirror {
    /// The Service copies go to.
    pub backend_ref: BackendRef,
    /// The share of calls copied, in percent (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u32>,
    /// The share as a fraction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fraction: Option<Fraction>,
}

/// A `Fraction`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Fraction {
    /// Above the line.
    pub numerator: u32,
    /// Below it (default 100).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub denominator: Option<u32>,
}

/// An `HTTPBackendRef` (a Service).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BackendRef {
    /// `""` (core): a Service.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// `Service` (default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The Service.
    pub name: String,
    /// Its namespace; the route's when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Its port (a Weft service has one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// Its share, relative to the rule's others (default 1; 0: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// `HTTPRouteTimeouts`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Timeouts {
    /// The whole call, retries included (`0s`: none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<String>,
    /// Each attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend_request: Option<String>,
}

/// `HTTPRouteRetry`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Retry {
    /// Statuses retried (connection errors always are).
    #[serde(default)]
    pub codes: Vec<u16>,
    /// Retries at most (default 2, Istio's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<u32>,
    /// The least wait before a retry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backoff: Option<String>,
}

/// Fields of the Gateway API's HTTPRoute Weft refuses.
pub(in crate::control) const HTTP_ROUTE_UNSUPPORTED: Unsupported = &[
    ("", &["hostnames"]),
    ("rules[]", &["sessionPersistence"]),
    ("rules[].backendRefs[]", &["filters"]),
    (
        "rules[].filters[]",
        &["extensionRef", "cors", "externalAuth"],
    ),
    ("rules[].filters[].requestRedirect", &["port"]),
];

/// Istio's retries when a rule's `retry` gives no `attempts`.
const DEFAULT_ATTEMPTS: u32 = 2;

/// Connection errors, retried whatever the codes (the Gateway API's
/// `HTTPRouteRetryConnectionError`).
const CONNECTION_ERRORS: &str = "connect-failure,refused-stream,reset";

fn is_service(group: &Option<String>, kind: &Option<String>, kind_default: &str) -> bool {
    let group_default = if kind_default == "Service" {
        ""
    } else {
        "gateway.networking.k8s.io"
    };
    group.as_deref().unwrap_or(group_default).is_empty()
        && kind.as_deref().unwrap_or(kind_default) == "Service"
}

/// The host a VirtualService names a Service by, from a route in `namespace`.
fn host_of(name: &str, namespace: Option<&str>, own: &str) -> String {
    match namespace {
        Some(ns) if ns != own => format!("{name}.{ns}"),
        _ => name.to_string(),
    }
}

/// One expansion of a match: the VirtualService match and, for a prefix, the replacement a
/// `ReplacePrefixMatch` rewrite gets (the Gateway API's prefixes are whole path segments).
struct Expanded {
    matched: vs::MatchRequest,
    prefix_rewrite: Option<String>,
}

/// Where a match sorts: path kind, prefix length (longest first), a method first, the most
/// header matches first, the most query matches first (a GRPCRoute's: the longest service, the
/// longest method, the most header matches).
pub(super) type Precedence = (
    u8,
    std::cmp::Reverse<usize>,
    std::cmp::Reverse<usize>,
    std::cmp::Reverse<usize>,
    std::cmp::Reverse<usize>,
);

/// The Gateway API's precedence of a match: smaller sorts first.
fn precedence(m: &Match) -> Precedence {
    let (kind, len) = match &m.path {
        Some(p) => (
            match p.kind.as_deref().unwrap_or("PathPrefix") {
                "Exact" => 0,
                "PathPrefix" => 1,
                _ => 2,
            },
            // `/p/` and `/p` are one prefix.
            p.value
                .as_deref()
                .unwrap_or("/")
                .trim_end_matches('/')
                .len(),
        ),
        None => (1, 0),
    };
    (
        kind,
        std::cmp::Reverse(len),
        std::cmp::Reverse(usize::from(m.method.is_some())),
        std::cmp::Reverse(m.headers.len()),
        std::cmp::Reverse(m.query_params.len()),
    )
}

fn string_match(kind: Option<&str>, value: &str) -> vs::StringMatch {
    match kind.unwrap_or("Exact") {
        "RegularExpression" => vs::StringMatch {
            regex: Some(value.to_string()),
            ..Default::default()
        },
        _ => vs::StringMatch {
            exact: Some(value.to_string()),
            ..Default::default()
        },
    }
}

/// A match as VirtualService matches: a path prefix `/p` is `/p` exactly or anything under
/// `/p/`, as the Gateway API reads prefixes by segment.
fn expand(m: &Match, replace_prefix: Option<&str>) -> Vec<Expanded> {
    let mut base = vs::MatchRequest {
        method: m.method.as_deref().map(|v| string_match(None, v)),
        ..Default::default()
    };
    for h in &m.headers {
        base.headers.insert(
            h.name.to_ascii_lowercase(),
            string_match(h.kind.as_deref(), &h.value),
        );
    }
    for q in &m.query_params {
        base.query_params
            .insert(q.name.clone(), string_match(q.kind.as_deref(), &q.value));
    }
    let with = |uri: vs::StringMatch| {
        let mut m = base.clone();
        m.uri = Some(uri);
        m
    };
    let (kind, value) = match &m.path {
        Some(p) => (
            p.kind.as_deref().unwrap_or("PathPrefix"),
            p.value.as_deref().unwrap_or("/"),
        ),
        None => ("PathPrefix", "/"),
    };
    match kind {
        "Exact" => vec![Expanded {
            matched: with(string_match(None, value)),
            prefix_rewrite: None,
        }],
        "RegularExpression" => vec![Expanded {
            matched: with(string_match(Some("RegularExpression"), value)),
            prefix_rewrite: None,
        }],
        _ => {
            let trimmed = value.trim_end_matches('/');
            if trimmed.is_empty() {
                // `/`: everything; the replacement takes the place of the leading `/`.
                let prefix = vs::StringMatch {
                    prefix: Some("/".into()),
                    ..Default::default()
                };
                return vec![Expanded {
                    matched: if base == vs::MatchRequest::default() {
                        vs::MatchRequest {
                            uri: Some(prefix),
                            ..Default::default()
                        }
                    } else {
                        with(prefix)
                    },
                    prefix_rewrite: replace_prefix.map(|r| {
                        if r.ends_with('/') {
                            r.to_string()
                        } else {
                            format!("{r}/")
                        }
                    }),
                }];
            }
            let under = replace_prefix.map(|r| {
                let r = r.trim_end_matches('/');
                format!("{r}/")
            });
            vec![
                Expanded {
                    matched: with(string_match(None, trimmed)),
                    prefix_rewrite: replace_prefix.map(|r| {
                        let r = r.trim_end_matches('/');
                        if r.is_empty() {
                            "/".into()
                        } else {
                            r.to_string()
                        }
                    }),
                },
                Expanded {
                    matched: with(vs::StringMatch {
                        prefix: Some(format!("{trimmed}/")),
                        ..Default::default()
                    }),
                    prefix_rewrite: under,
                },
            ]
        }
    }
}

fn operations(m: &HeaderModifier) -> vs::HeaderOperations {
    vs::HeaderOperations {
        set: m
            .set
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
            .collect(),
        add: m
            .add
            .iter()
            .map(|h| (h.name.to_ascii_lowercase(), h.value.clone()))
            .collect(),
        remove: m.remove.iter().map(|h| h.to_ascii_lowercase()).collect(),
    }
}

impl GatewayHttpRoute {
    /// The services it routes (its Service parents), as hosts relative to `namespace`.
    fn hosts(&self, namespace: &str) -> Vec<String> {
        self.parent_refs
            .iter()
            .filter(|p| is_service(&p.group, &p.kind, "Gateway"))
            .map(|p| host_of(&p.name, p.namespace.as_deref(), namespace))
            .collect()
    }

    /// The VirtualService this route means, read in `namespace`.
    pub fn to_virtual_service(&self, namespace: &str) -> VirtualService {
        self.to_virtual_service_by(namespace, |_, _, m| precedence(m))
    }

    /// [`GatewayHttpRoute::to_virtual_service`] with matches sorted by `order` (of rule `r`'s
    /// match `k`).
    pub(super) fn to_virtual_service_by(
        &self,
        namespace: &str,
        order: impl Fn(usize, usize, &Match) -> Precedence,
    ) -> VirtualService {
        let mut entries: Vec<(Precedence, usize, usize, vs::HttpRoute)> = Vec::new();
        for (r, rule) in self.rules.iter().enumerate() {
            let every = [Match::default()];
            let matches: &[Match] = if rule.matches.is_empty() {
                &every
            } else {
                &rule.matches
            };
            for (k, m) in matches.iter().enumerate() {
                let replace_prefix = rule
                    .filters
                    .iter()
                    .filter_map(|f| f.url_rewrite.as_ref()?.path.as_ref())
                    .find_map(|p| p.replace_prefix_match.as_deref());
                for e in expand(m, replace_prefix) {
                    let mut entry = self.entry(rule, namespace);
                    entry.matches = if e.matched == vs::MatchRequest::default() {
                        Vec::new()
                    } else {
                        vec![e.matched]
                    };
                    if let (Some(rw), Some(prefix)) = (entry.rewrite.as_mut(), e.prefix_rewrite) {
                        rw.uri = Some(prefix);
                    }
                    entries.push((order(r, k, m), r, k, entry));
                }
            }
        }
        // A stable sort keeps a match's expansions, and equal matches, in written order.
        entries.sort_by(|a, b| (&a.0, a.1, a.2).cmp(&(&b.0, b.1, b.2)));
        VirtualService {
            hosts: self.hosts(namespace),
            gateways: Vec::new(),
            export_to: Vec::new(),
            http: entries.into_iter().map(|(_, _, _, e)| e).collect(),
        }
    }

    /// One rule's `http` entry, without its matches.
    fn entry(&self, rule: &Rule, namespace: &str) -> vs::HttpRoute {
        let mut entry = vs::HttpRoute {
            name: rule.name.clone(),
            ..Default::default()
        };
        let live: Vec<&BackendRef> = rule
            .backend_refs
            .iter()
            .filter(|b| b.weight.unwrap_or(1) > 0)
            .collect();
        if live.is_empty() {
            // No backend (or every weight 0): the Gateway API answers 500.
            entry.direct_response = Some(vs::DirectResponse {
                status: 500,
                body: None,
            });
        } else {
            entry.route = live
                .iter()
                .map(|b| vs::RouteDestination {
                    destination: vs::Destination {
                        host: host_of(&b.name, b.namespace.as_deref(), namespace),
                        subset: None,
                    },
                    weight: (live.len() > 1).then(|| b.weight.unwrap_or(1)),
                    headers: None,
                })
                .collect();
        }
        let mut headers = vs::Headers::default();
        for f in &rule.filters {
            if let Some(m) = &f.request_header_modifier {
                headers.request = Some(operations(m));
            }
            if let Some(m) = &f.response_header_modifier {
                headers.response = Some(operations(m));
            }
            if let Some(u) = &f.url_rewrite {
                let mut rw = vs::Rewrite {
                    authority: u.hostname.clone(),
                    ..Default::default()
                };
                if let Some(full) = u.path.as_ref().and_then(|p| p.replace_full_path.as_ref()) {
                    rw.uri_regex_rewrite = Some(vs::RegexRewrite {
                        pattern: "^.*$".into(),
                        rewrite: full.clone(),
                    });
                }
                if u.path
                    .as_ref()
                    .is_some_and(|p| p.replace_prefix_match.is_some())
                {
                    // Filled per expanded match by the caller.
                    rw.uri = Some(String::new());
                }
                entry.rewrite = Some(rw);
            }
            if let Some(r) = &f.request_redirect {
                entry.redirect = Some(vs::Redirect {
                    uri: r.path.as_ref().and_then(|p| p.replace_full_path.clone()),
                    authority: r.hostname.clone(),
                    scheme: r.scheme.clone(),
                    redirect_code: Some(r.status_code.unwrap_or(302)),
                });
                entry.route.clear();
                entry.direct_response = None;
            }
            if let Some(m) = &f.request_mirror {
                let value = match (&m.fraction, m.percent) {
                    (Some(f), _) => {
                        f64::from(f.numerator) * 100.0
                            / f64::from(f.denominator.unwrap_or(100).max(1))
                    }
                    (None, Some(p)) => f64::from(p),
                    (None, None) => 100.0,
                };
                entry.mirrors.push(vs::MirrorPolicy {
                    destination: vs::Destination {
                        host: host_of(
                            &m.backend_ref.name,
                            m.backend_ref.namespace.as_deref(),
                            namespace,
                        ),
                        subset: None,
                    },
                    percentage: Some(vs::Percentage { value }),
                });
            }
        }
        if headers != vs::Headers::default() {
            entry.headers = Some(headers);
        }
        if let Some(t) = &rule.timeouts {
            entry.timeout = t.request.clone();
        }
        let per_try = rule
            .timeouts
            .as_ref()
            .and_then(|t| t.backend_request.clone());
        match &rule.retry {
            Some(r) => {
                let mut on = CONNECTION_ERRORS.to_string();
                for c in &r.codes {
                    on.push_str(&format!(",{c}"));
                }
                entry.retries = Some(vs::Retries {
                    attempts: Some(r.attempts.unwrap_or(DEFAULT_ATTEMPTS)),
                    per_try_timeout: per_try,
                    retry_on: Some(on),
                    retry_ignore_previous_hosts: None,
                    backoff: r.backoff.clone(),
                });
            }
            None if per_try.is_some() => {
                // A per-attempt bound with Istio's default retries.
                entry.retries = Some(vs::Retries {
                    attempts: Some(DEFAULT_ATTEMPTS),
                    per_try_timeout: per_try,
                    ..Default::default()
                });
            }
            None => {}
        }
        entry
    }
}

mod check;
#[cfg(test)]
mod tests;

pub(super) use check::check_http_route;
