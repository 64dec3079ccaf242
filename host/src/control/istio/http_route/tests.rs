use super::*;

fn route(rules: &str) -> GatewayHttpRoute {
    let text = format!(
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {{ name: r, namespace: shop }}\nspec:\n  parentRefs: [{{ group: \"\", kind: Service, name: payments }}]\n  rules:\n{rules}"
    );
    let rs = parse_yaml(&text, "r.yaml").expect("parses");
    let Spec::GatewayHttpRoute(hr) = &rs[0].spec else {
        panic!("not an HTTPRoute")
    };
    hr.clone()
}

fn uris(v: &VirtualService) -> Vec<String> {
    v.http
        .iter()
        .map(|e| {
            e.matches
                .first()
                .and_then(|m| m.uri.as_ref())
                .map_or("*".into(), |u| {
                    format!(
                        "{}{}{}",
                        u.exact
                            .as_deref()
                            .map(|x| format!("={x}"))
                            .unwrap_or_default(),
                        u.prefix
                            .as_deref()
                            .map(|x| format!("^{x}"))
                            .unwrap_or_default(),
                        u.regex
                            .as_deref()
                            .map(|x| format!("~{x}"))
                            .unwrap_or_default()
                    )
                })
        })
        .collect()
}

#[test]
fn matches_take_the_gateway_apis_precedence_and_prefixes_are_segments() {
    let hr = route(
        "  - matches: [{ path: { value: / } }]\n    backendRefs: [{ name: a }]\n  - matches: [{ path: { value: /api } }, { path: { type: Exact, value: /api/health } }]\n    backendRefs: [{ name: b }]\n  - matches: [{ path: { value: /api/v2/ }, headers: [{ name: x, value: y }] }, { path: { value: /api/v2 }, method: GET }]\n    backendRefs: [{ name: c, weight: 0 }]\n",
    );
    assert_eq!(
        uris(&hr.mesh),
        [
            "=/api/health",
            // `/api/v2/` and `/api/v2` are one prefix: the method match goes first.
            "=/api/v2",
            "^/api/v2/",
            "=/api/v2",
            "^/api/v2/",
            "=/api",
            "^/api/",
            "^/",
        ]
    );
    assert_eq!(hr.mesh.hosts, ["payments"]);
    // Every weight 0: the Gateway API's 500.
    assert_eq!(
        hr.mesh.http[1].direct_response.as_ref().map(|d| d.status),
        Some(500)
    );
    assert!(hr.mesh.http[1].matches[0].method.is_some());
    assert_eq!(hr.mesh.http[5].route[0].destination.host, "b");
}

#[test]
fn filters_timeouts_and_retry_become_the_virtual_service_fields() {
    let hr = route(
        "  - matches: [{ path: { value: /old } }]\n    filters:\n    - { type: URLRewrite, urlRewrite: { hostname: new.example, path: { type: ReplacePrefixMatch, replacePrefixMatch: /new } } }\n    - { type: RequestMirror, requestMirror: { backendRef: { name: shadow, namespace: qa }, fraction: { numerator: 1, denominator: 4 } } }\n    backendRefs: [{ name: a, weight: 3 }, { name: b, namespace: other }]\n    timeouts: { request: 6s, backendRequest: 2s }\n    retry: { codes: [503, 504], attempts: 3, backoff: 25ms }\n",
    );
    let exact = &hr.mesh.http[0];
    let under = &hr.mesh.http[1];
    assert_eq!(
        exact.rewrite.as_ref().and_then(|r| r.uri.as_deref()),
        Some("/new")
    );
    assert_eq!(
        under.rewrite.as_ref().and_then(|r| r.uri.as_deref()),
        Some("/new/")
    );
    assert_eq!(
        exact.rewrite.as_ref().and_then(|r| r.authority.as_deref()),
        Some("new.example")
    );
    assert_eq!(exact.mirrors[0].destination.host, "shadow.qa");
    assert_eq!(exact.mirrors[0].percentage.map(|p| p.value), Some(25.0));
    assert_eq!(
        exact
            .route
            .iter()
            .map(|d| (d.destination.host.as_str(), d.weight))
            .collect::<Vec<_>>(),
        [("a", Some(3)), ("b.other", Some(1))]
    );
    assert_eq!(exact.timeout.as_deref(), Some("6s"));
    let r = exact.retries.as_ref().expect("retries");
    assert_eq!(r.attempts, Some(3));
    assert_eq!(r.per_try_timeout.as_deref(), Some("2s"));
    assert_eq!(
        r.retry_on.as_deref(),
        Some("connect-failure,refused-stream,reset,503,504")
    );
    assert_eq!(r.backoff.as_deref(), Some("25ms"));
}

#[test]
fn what_cannot_be_honoured_is_refused_by_path() {
    let text = "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: { name: r }\nspec:\n  parentRefs: [{ name: edge }]\n  rules:\n  - filters: [{ type: ExtensionRef, extensionRef: { group: x, kind: y, name: z } }, { type: URLRewrite, urlRewrite: { path: { type: ReplacePrefixMatch, replacePrefixMatch: /x } } }]\n    backendRefs: [{ name: a, kind: ConfigMap }]\n    timeouts: { request: 1s, backendRequest: 2s }\n    retry: { codes: [200] }\n";
    let errors = parse_yaml(text, "r.yaml").expect_err("refused").join("\n");
    for needle in [
        "spec.parentRefs[0]: Gateway \"edge\": Weft routes mesh traffic (GAMMA) only",
        "spec.rules[0].filters[0].extensionRef: not supported by Weft yet",
        "spec.rules[0].filters[0].type: \"ExtensionRef\" is not supported by Weft yet",
        "spec.rules[0].filters[1].path: ReplaceFullPath with replaceFullPath, or (in URLRewrite, on a rule whose every match is a PathPrefix)",
        "spec.rules[0].backendRefs[0]: must be a Service",
        "spec.rules[0].timeouts.backendRequest: must not be longer than request",
        "spec.rules[0].retry.codes[0]: 200 is not an error status",
    ] {
        assert!(errors.contains(needle), "missing {needle:?} in:\n{errors}");
    }
}
