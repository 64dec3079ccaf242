//! The Kubernetes Gateway API's `GRPCRoute` for mesh traffic (GAMMA): a route whose parent is
//! a Service routes the gRPC calls made to that Service. Read as written, checked, and
//! translated into the HTTPRoute it means (a gRPC method is the HTTP/2 path
//! `/<service>/<method>`), then into that route's VirtualService, with the GRPCRoute's own
//! match precedence: the longest service, then the longest method, then the most header
//! matches; then rule and match order.

use super::http_route::{self as hr, GatewayHttpRoute};
use super::*;

/// A GRPCRoute's spec.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayGrpcRoute {
    /// What it attaches to: for mesh routing, Services (`group: ""`, `kind: Service`).
    pub parent_refs: Vec<hr::ParentRef>,
    /// Its rules.
    #[serde(default)]
    pub rules: Vec<GrpcRule>,
    /// The VirtualService it means, worked out when it is read.
    #[serde(skip)]
    pub mesh: VirtualService,
}

/// A GRPCRoute rule.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcRule {
    /// Its name (the route name telemetry reports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// When it applies: any of these; none means every call.
    #[serde(default)]
    pub matches: Vec<GrpcMatch>,
    /// `RequestHeaderModifier`, `ResponseHeaderModifier`, `RequestMirror`.
    #[serde(default)]
    pub filters: Vec<hr::Filter>,
    /// Where calls go, by weight.
    #[serde(default)]
    pub backend_refs: Vec<hr::BackendRef>,
}

/// A `GRPCRouteMatch`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GrpcMatch {
    /// The gRPC method; absent: every method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<MethodMatch>,
    /// Headers (metadata) that must all match.
    #[serde(default)]
    pub headers: Vec<hr::NameMatch>,
}

/// A `GRPCMethodMatch`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MethodMatch {
    /// `Exact` (default) or `RegularExpression`.
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The fully qualified service (`payments.v1.Payments`); absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The method (`Charge`); absent: any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
}

/// Fields of the Gateway API's GRPCRoute Weft refuses.
pub(in crate::control) const GRPC_ROUTE_UNSUPPORTED: Unsupported = &[
    ("", &["hostnames"]),
    ("rules[]", &["sessionPersistence"]),
    ("rules[].backendRefs[]", &["filters"]),
    ("rules[].filters[]", &["extensionRef"]),
];

/// A path segment matching any service or method.
const ANY: &str = "[^/]+";

impl GrpcMatch {
    /// The HTTP match it means: the method as a path.
    fn http(&self) -> hr::Match {
        let path = self.method.as_ref().map(|m| {
            let (service, method) = (m.service.as_deref(), m.method.as_deref());
            let (kind, value) = match (m.kind.as_deref().unwrap_or("Exact"), service, method) {
                ("Exact", Some(s), Some(m)) => ("Exact", format!("/{s}/{m}")),
                ("Exact", Some(s), None) => ("PathPrefix", format!("/{s}")),
                ("Exact", None, Some(m)) => ("RegularExpression", format!("/{ANY}/{m}")),
                (_, s, m) => (
                    "RegularExpression",
                    format!("/{}/{}", s.unwrap_or(ANY), m.unwrap_or(ANY)),
                ),
            };
            hr::PathMatch {
                kind: Some(kind.to_string()),
                value: Some(value),
            }
        });
        hr::Match {
            path,
            headers: self.headers.clone(),
            query_params: Vec::new(),
            method: None,
        }
    }

    /// Its precedence: the longest service, the longest method, the most headers.
    fn precedence(&self) -> hr::Precedence {
        let len = |f: fn(&MethodMatch) -> Option<&String>| {
            self.method.as_ref().and_then(f).map_or(0, String::len)
        };
        (
            0,
            std::cmp::Reverse(len(|m| m.service.as_ref())),
            std::cmp::Reverse(len(|m| m.method.as_ref())),
            std::cmp::Reverse(self.headers.len()),
            std::cmp::Reverse(0),
        )
    }
}

impl GatewayGrpcRoute {
    /// The HTTPRoute it means.
    pub fn to_http_route(&self) -> GatewayHttpRoute {
        GatewayHttpRoute {
            parent_refs: self.parent_refs.clone(),
            rules: self
                .rules
                .iter()
                .map(|r| hr::Rule {
                    name: r.name.clone(),
                    matches: r.matches.iter().map(GrpcMatch::http).collect(),
                    filters: r.filters.clone(),
                    backend_refs: r.backend_refs.clone(),
                    timeouts: None,
                    retry: None,
                })
                .collect(),
            mesh: VirtualService::default(),
        }
    }

    /// The VirtualService it means, read in `namespace`.
    pub fn to_virtual_service(&self, namespace: &str) -> VirtualService {
        self.to_http_route()
            .to_virtual_service_by(namespace, |r, k, _| {
                self.rules
                    .get(r)
                    .and_then(|rule| rule.matches.get(k))
                    .map_or_else(|| GrpcMatch::default().precedence(), GrpcMatch::precedence)
            })
    }
}

/// Whether `s` is a protobuf identifier (`[A-Za-z_][A-Za-z0-9_]*`), or with `dotted` a
/// dot-separated run of them (a fully qualified service).
fn is_identifier(s: &str, dotted: bool) -> bool {
    let one = |p: &str| {
        let mut b = p.bytes();
        b.next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_')
            && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
    };
    if dotted {
        s.split('.').all(one)
    } else {
        one(s)
    }
}

pub(super) fn check_grpc_route(route: &GatewayGrpcRoute, namespace: &str, problems: &mut Problems) {
    for (r, rule) in route.rules.iter().enumerate() {
        for (k, m) in rule.matches.iter().enumerate() {
            let at = format!("spec.rules[{r}].matches[{k}].method");
            let Some(method) = &m.method else { continue };
            match method.kind.as_deref().unwrap_or("Exact") {
                "Exact" => {
                    if method.service.is_none() && method.method.is_none() {
                        problems.at(&at, "give service, method or both");
                    }
                    if let Some(s) = &method.service
                        && !is_identifier(s, true)
                    {
                        problems.at(
                            format!("{at}.service"),
                            format!("{s:?} is not a gRPC service name (`package.Service`)"),
                        );
                    }
                    if let Some(m) = &method.method
                        && !is_identifier(m, false)
                    {
                        problems.at(
                            format!("{at}.method"),
                            format!("{m:?} is not a gRPC method name"),
                        );
                    }
                }
                // Its syntax is judged with the route's plugins' configurations.
                "RegularExpression" => {
                    for (field, v) in [("service", &method.service), ("method", &method.method)] {
                        if v.as_deref().is_some_and(|v| v.contains('/')) {
                            problems.at(format!("{at}.{field}"), "must not hold `/`");
                        }
                    }
                }
                other => problems.at(
                    format!("{at}.type"),
                    format!("unknown type {other:?} (known: Exact, RegularExpression)"),
                ),
            }
        }
        for (j, f) in rule.filters.iter().enumerate() {
            if !matches!(
                f.kind.as_str(),
                "RequestHeaderModifier" | "ResponseHeaderModifier" | "RequestMirror"
            ) || f.url_rewrite.is_some()
                || f.request_redirect.is_some()
            {
                problems.at(
                    format!("spec.rules[{r}].filters[{j}]"),
                    format!("{:?}: a GRPCRoute's filters are RequestHeaderModifier, ResponseHeaderModifier and RequestMirror", f.kind),
                );
            }
        }
    }
    // The rest (parents, headers, filters' settings, backends) is the HTTPRoute's check, at
    // the same paths.
    hr::check_http_route(&route.to_http_route(), namespace, problems);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(rules: &str) -> String {
        format!(
            "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {{ name: payments }}
spec:
  parentRefs: [{{ group: \"\", kind: Service, name: payments }}]
  rules:
{rules}"
        )
    }

    fn virtual_service(text: &str) -> VirtualService {
        let rs = parse_yaml(text, "t.yaml").unwrap_or_else(|e| panic!("{e:?}"));
        match &rs[0].spec {
            Spec::GatewayGrpcRoute(g) => g.mesh.clone(),
            other => panic!("not a GRPCRoute: {other:?}"),
        }
    }

    #[test]
    fn methods_become_paths_in_the_grpc_routes_precedence() {
        let vs = virtual_service(&route(
            "  - matches: [{ method: { service: pay.v1.Payments } }]
    backendRefs: [{ name: payments-v2, port: 80 }]
  - matches:
    - method: { service: pay.v1.Payments, method: Charge }
    - method: { method: Refund }
      headers: [{ name: x-tier, value: gold }]
    backendRefs: [{ name: payments, port: 80, weight: 95 }, { name: payments-v2, port: 80, weight: 5 }]
  - backendRefs: [{ name: payments }]
",
        ));
        assert_eq!(vs.hosts, ["payments"]);
        let uris: Vec<String> = vs
            .http
            .iter()
            .map(|e| {
                e.matches
                    .first()
                    .and_then(|m| m.uri.as_ref())
                    .map(|u| format!("{u:?}"))
                    .unwrap_or_else(|| "any".into())
            })
            .collect();
        // Service and method first (longest service, then longest method), then the service
        // alone (its exact path and its prefix), then the method alone, then everything.
        assert!(uris[0].contains("/pay.v1.Payments/Charge"), "{uris:?}");
        assert!(uris[1].contains("\"/pay.v1.Payments\""), "{uris:?}");
        assert!(uris[2].contains("/pay.v1.Payments/"), "{uris:?}");
        assert!(uris[3].contains("[^/]+/Refund"), "{uris:?}");
        assert!(uris[4].contains("prefix: Some(\"/\")"), "{uris:?}");
        assert_eq!(vs.http[0].route.len(), 2);
        assert_eq!(vs.http[0].route[1].weight, Some(5));
        assert_eq!(vs.http[3].matches[0].headers.len(), 1);
    }

    #[test]
    fn what_a_grpc_route_cannot_say_is_refused_by_path() {
        for (rules, needle) in [
            (
                "  - matches: [{ method: { type: Exact } }]\n    backendRefs: [{ name: payments }]\n",
                "spec.rules[0].matches[0].method: give service, method or both",
            ),
            (
                "  - matches: [{ method: { service: \"a/b\" } }]\n    backendRefs: [{ name: payments }]\n",
                "spec.rules[0].matches[0].method.service: \"a/b\" is not a gRPC service name",
            ),
            (
                "  - filters: [{ type: URLRewrite, urlRewrite: { hostname: x } }]\n    backendRefs: [{ name: payments }]\n",
                "spec.rules[0].filters[0]: \"URLRewrite\": a GRPCRoute's filters are",
            ),
            (
                "  - filters: [{ type: ExtensionRef, extensionRef: { group: x, kind: y, name: z } }]\n    backendRefs: [{ name: payments }]\n",
                "spec.rules[0].filters[0].extensionRef: not supported by Weft yet",
            ),
            (
                "  - timeouts: { request: 1s }\n    backendRefs: [{ name: payments }]\n",
                "unknown field `timeouts`",
            ),
        ] {
            let err = parse_yaml(&route(rules), "t.yaml")
                .expect_err(rules)
                .join("\n");
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    }
}
