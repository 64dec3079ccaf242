//! Reading documents: every kind, its refusals and its checks.

use super::*;
use serde_json::json;

const SEED: &str = include_str!("../../../../examples/payments/payments.yaml");

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
    assert_eq!(
        service_of_host(&v.hosts[0], "default").as_deref(),
        Ok("payments")
    );
}

#[test]
fn short_hosts_resolve_in_the_resource_namespace() {
    let text = "apiVersion: networking.istio.io/v1\nkind: VirtualService\n\
                    metadata: { name: payments, namespace: shop }\nspec:\n  hosts: [payments]\n  \
                    http:\n  - route: [{ destination: { host: payments.default.svc.cluster.local } }]\n";
    let rs = parse_yaml(text, "t.yaml").expect("parses");
    let Spec::VirtualService(v) = &rs[0].spec else {
        panic!("not a VirtualService")
    };
    assert_eq!(rs[0].namespace, "shop");
    assert_eq!(
        service_of_host(&v.hosts[0], &rs[0].namespace).as_deref(),
        Ok("payments.shop")
    );
    // A two-label host naming another namespace is Istio's external host: refused.
    let text = text.replace("hosts: [payments]", "hosts: [payments.billing]");
    assert_error(
        &text,
        "spec.hosts[0]: \"payments.billing\" names no mesh service",
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
    // The timeout is the host's (a service's overall timeout); retries' durations are the
    // retry plugin's to judge, at apply.
    let text = vs(&format!(
        "{ROUTE}    timeout: 6x\n    retries: {{ attempts: 2, perTryTimeout: 0s }}\n"
    ));
    let all = errors_of(&text);
    assert!(
        all.contains("spec.http[0].timeout: invalid duration \"6x\""),
        "{all}"
    );
    assert!(!all.contains("perTryTimeout"), "{all}");
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
        "t.yaml: document 1 (VirtualService payments): spec.http[0].route[0].wieght: unknown field `wieght`, expected one of `destination`, `weight`, `headers`",
    );
}

#[test]
fn unsupported_istio_fields_are_refused_not_ignored() {
    let text = vs(
        "  hosts: [payments]\n  tcp: []\n  http:\n  - delegate: { name: shadow }\n    match:\n    - statPrefix: orders\n    route:\n    - destination: { host: payments, port: { number: 80 } }\n      weigth: 100\n",
    );
    let all = errors_of(&text);
    for needle in [
        "spec.tcp: not supported by Weft yet",
        "spec.http[0].delegate: not supported by Weft yet",
        "spec.http[0].match[0].statPrefix: not supported by Weft yet",
        "spec.http[0].route[0].destination.port: not supported by Weft yet",
        // The typo is reported in the same pass.
        "spec.http[0].route[0].weigth: unknown field `weigth`",
    ] {
        assert!(all.contains(needle), "missing {needle:?} in:\n{all}");
    }
    let text = dr(
        "  host: payments\n  trafficPolicy:\n    connectionPool: { tcp: { maxConnections: 1, tcpKeepalive: { time: 7200s } }, http: { idleTimeout: 1h } }\n    portLevelSettings: []\n    loadBalancer: { consistentHash: { httpHeaderName: x, maglev: { tableSize: 7 } } }\n",
    );
    let all = errors_of(&text);
    for needle in [
        "spec.trafficPolicy.connectionPool.tcp.tcpKeepalive: not supported by Weft yet",
        "spec.trafficPolicy.connectionPool.http.idleTimeout: not supported by Weft yet",
        "spec.trafficPolicy.portLevelSettings: not supported by Weft yet",
        "spec.trafficPolicy.loadBalancer.consistentHash.maglev: not supported by Weft yet",
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
            "t.yaml: document 3 (Gateway gw): kind: Gateway is not supported by Weft yet (supported: VirtualService, DestinationRule, WasmPlugin, AuthorizationPolicy, PeerAuthentication, Telemetry)",
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
        "spec.hosts[0]: \"*.example.com\" names no mesh service",
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
    // As written: the fault plugin reads `percentage` first, then `percent`, as Istio does.
    assert_eq!(
        fault,
        json!({"delay": {"fixedDelay": "5s", "percent": 10},
                   "abort": {"httpStatus": 503, "percentage": {"value": 5.0}, "percent": 50}})
    );
    // Fields Weft does not have are refused when read; the values are the fault plugin's to
    // judge, at apply.
    let text = vs(&format!(
        "{ROUTE}    fault:\n      delay: {{ percentage: {{ value: 150 }}, exponentialDelay: 1s }}\n      abort: {{ httpStatus: 99 }}\n"
    ));
    let all = errors_of(&text);
    assert!(
        all.contains("spec.http[0].fault.delay.exponentialDelay: not supported by Weft yet"),
        "{all}"
    );
    assert!(!all.contains("httpStatus"), "{all}");
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
            "oci://ghcr.io/X/y:1",
            "\"X/y\" is not a repository (lower-case path components)",
        ),
        (
            "oci://ghcr.io/x/y@sha256:abc",
            "a digest is written @sha256:<64 lower-case hex digits>",
        ),
        (
            "sha256:abc",
            "a stored artifact is written sha256:<64 hex digits>",
        ),
        ("http://", "the URL names no host"),
        ("ftp://example.org/p.wasm", "not a URL Weft reads"),
    ] {
        assert_error(&wasm(&format!("  url: {url}\n")), needle);
    }
    assert_error(
        &wasm("  url: file:///p.wasm\n  sha256: xyz\n"),
        "spec.sha256: \"xyz\" is not a sha256",
    );
    assert_error(
        &wasm("  url: oci://ghcr.io/x/y:1\n  imagePullPolicy: Sometimes\n"),
        "spec.imagePullPolicy: unknown policy \"Sometimes\"",
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
        "  action: CUSTOM\n  provider: { name: ext }\n  targetRefs: [{ kind: Service, name: payments }]\n  rules:\n  - from:\n    - source: { ipBlocks: [198.18.0.0/15] }\n    - source: { principals: [\"a*b\", \"\"] }\n    - {}\n    to:\n    - operation: { hosts: [x], paths: [\"/{*}/x\"] }\n    - operation: {}\n    when: [{ key: source.ip, values: [y] }]\n",
    );
    let all = errors_of(&text);
    for needle in [
        "spec.provider: not supported by Weft yet",
        "spec.targetRefs: not supported by Weft yet",
        "spec.rules[0].when: not supported by Weft yet",
        "spec.rules[0].from[0].source.ipBlocks: not supported by Weft yet",
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
        assert!(pa.selects(&ns, "default", &labels));
    }
    let (ns, pa) = read_peer_authn(&peer_authn(
        "v1",
        "default",
        "  selector: { matchLabels: { app: orders } }\n  mtls: { mode: PERMISSIVE }\n",
    ));
    assert!(!pa.selects(&ns, "default", &labels));
    assert_eq!(pa.mode(), Some(MtlsMode::Permissive));
    // No selector, or one without labels: namespace-wide.
    for spec in [
        "  mtls: { mode: PERMISSIVE }\n",
        "  selector: {}\n  mtls: {}\n",
    ] {
        let (ns, pa) = read_peer_authn(&peer_authn("v1", "default", spec));
        assert_eq!(pa.scope(&ns), Some(PeerAuthnScope::Namespace));
        assert!(pa.selects(&ns, "default", &labels));
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
    assert!(pa.selects(&ns, "default", &labels));
    // Istio ignores a selector in the root namespace.
    let (ns, pa) = read_peer_authn(&peer_authn(
        "v1",
        "istio-system",
        "  selector: { matchLabels: { app: payments } }\n  mtls: { mode: STRICT }\n",
    ));
    assert_eq!(pa.scope(&ns), None);
    assert!(!pa.selects(&ns, "default", &labels));
    // A namespace-wide policy of another namespace is not for this workload, but is for
    // that namespace's.
    let (ns, pa) = read_peer_authn(&peer_authn("v1", "shop", "  mtls: { mode: STRICT }\n"));
    assert!(!pa.selects(&ns, "default", &labels));
    assert!(pa.selects(&ns, "shop", &labels));
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

fn telemetry(spec: &str) -> String {
    format!(
        "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{ name: logs }}\nspec:\n{spec}"
    )
}

#[test]
fn telemetry_access_logging_reads_with_istios_modes_and_refuses_the_rest() {
    let rs = parse_yaml(
        &telemetry(
            "  accessLogging:\n  - providers: [{ name: envoy }]\n  - match: { mode: SERVER }\n    providers: [{ name: envoy-json }]\n    filter: { expression: 'response.code >= 500' }\n  - match: { mode: CLIENT }\n    providers: [{ name: envoy }]\n    disabled: true\n",
        ),
        "t.yaml",
    )
    .expect("parses");
    let Spec::Telemetry(t) = &rs[0].spec else {
        panic!("not a Telemetry")
    };
    let sides = t.logging(&crate::control::mesh_config::MeshConfig::default());
    use crate::access_log::{Encoding, Sink};
    // The first entry logs both sides in text; the third turns text off for the client side.
    assert_eq!(sides.client, vec![]);
    assert_eq!(
        sides.server,
        vec![
            Sink {
                encoding: Encoding::Text,
                filter: None,
                path: None,
            },
            Sink {
                encoding: Encoding::Json,
                filter: Some("response.code >= 500".into()),
                path: None,
            },
        ]
    );
    assert_error(
        &telemetry("  tracing: [{ randomSamplingPercentage: 101 }]\n"),
        "spec.tracing[0].randomSamplingPercentage: 101 is not a percentage",
    );
    assert_error(
        &telemetry("  tracing: [{ customTags: { a: { literal: { value: b } } } }]\n"),
        "spec.tracing[0].customTags: not supported by Weft yet",
    );
    assert_error(
        &telemetry("  tracing: [{ providers: [{ name: a }, { name: b }] }]\n"),
        "spec.tracing[0].providers: Istio supports one tracing provider",
    );
    assert_error(
        &telemetry("  metrics: [{ reportingInterval: 5s }]\n"),
        "spec.metrics[0].reportingInterval: not supported by Weft yet",
    );
    assert_error(
        &telemetry(
            "  accessLogging:\n  - providers: [{ name: envoy }]\n    filter: { expression: 'upstream.port == 1' }\n",
        ),
        "spec.accessLogging[0].filter.expression: attribute upstream.port is not supported",
    );
    assert_error(
        &telemetry("  accessLogging:\n  - match: { mode: BOTH }\n"),
        "spec.accessLogging[0].match.mode: unknown variant `BOTH`",
    );
    assert_eq!("telemetry".parse::<Kind>(), Ok(Kind::Telemetry));
}

#[test]
fn a_connection_pool_compiles_to_bounds_with_zero_meaning_unbounded() {
    let text = dr(
        "  host: payments\n  trafficPolicy:\n    connectionPool:\n      tcp: { maxConnections: 0 }\n      http: { http1MaxPendingRequests: 1, http2MaxRequests: 100, maxRequestsPerConnection: 1, maxRetries: 3 }\n",
    );
    let rs = parse_yaml(&text, "t.yaml").expect("parses");
    let Spec::DestinationRule(d) = &rs[0].spec else {
        panic!("not a DestinationRule")
    };
    assert_eq!(
        d.connection_pool(),
        Some(crate::snapshot::ConnectionPool {
            max_connections: None,
            max_pending_requests: Some(1),
            max_requests: Some(100),
            max_requests_per_connection: Some(1),
            max_retries: Some(3),
        })
    );
    let unbounded = dr(
        "  host: payments\n  trafficPolicy:\n    connectionPool: { tcp: { maxConnections: 0 } }\n",
    );
    let rs = parse_yaml(&unbounded, "t.yaml").expect("parses");
    let Spec::DestinationRule(d) = &rs[0].spec else {
        panic!("not a DestinationRule")
    };
    assert_eq!(d.connection_pool(), None);
    let negative = dr(
        "  host: payments\n  trafficPolicy:\n    connectionPool: { http: { maxRetries: -2 } }\n",
    );
    assert!(
        errors_of(&negative).contains(
            "spec.trafficPolicy.connectionPool.http.maxRetries: must be between 0 and 2147483647 (Istio's int32), got -2"
        ),
        "{}",
        errors_of(&negative)
    );
}

#[test]
fn a_destination_rules_tls_is_the_meshs_for_mesh_services_and_originated_outside() {
    let tls = |host: &str, tls: &str| {
        dr(&format!(
            "  host: {host}\n  trafficPolicy:\n    tls: {tls}\n"
        ))
    };
    for ok in [
        tls("payments", "{ mode: ISTIO_MUTUAL }"),
        tls("payments", "{ mode: DISABLE }"),
        tls("\"*.svc.cluster.local\"", "{ mode: ISTIO_MUTUAL }"),
        tls("api.example.com", "{ mode: SIMPLE }"),
        tls("api.example.com", "{ mode: DISABLE }"),
        tls(
            "api.example.com",
            "{ mode: MUTUAL, clientCertificate: /c.pem, privateKey: /k.pem, caCertificates: /ca.pem, sni: api.example.com, subjectAltNames: [api.example.com] }",
        ),
    ] {
        let rs = parse_yaml(&ok, "t.yaml").unwrap_or_else(|e| panic!("{ok}: {e:?}"));
        let Spec::DestinationRule(d) = &rs[0].spec else {
            panic!("not a DestinationRule")
        };
        let originates = d.origination().is_some();
        assert_eq!(
            originates,
            ok.contains("SIMPLE") || ok.contains("MUTUAL, "),
            "{ok}"
        );
    }
    for (bad, needle) in [
        (
            tls("payments", "{ mode: SIMPLE }"),
            "spec.trafficPolicy.tls.mode: SIMPLE for a mesh service is not supported by Weft yet",
        ),
        (
            tls("payments", "{ mode: DISABLE, sni: payments }"),
            "spec.trafficPolicy.tls.sni: not with mode DISABLE",
        ),
        (
            tls("payments", "{ mode: ISTIO_MUTUAL, sni: payments }"),
            "spec.trafficPolicy.tls.sni: not with ISTIO_MUTUAL",
        ),
        (
            tls("api.example.com", "{ mode: ISTIO_MUTUAL }"),
            "spec.trafficPolicy.tls.mode: ISTIO_MUTUAL is the mesh's mTLS",
        ),
        (
            tls(
                "api.example.com",
                "{ mode: MUTUAL, clientCertificate: /c.pem }",
            ),
            "spec.trafficPolicy.tls.privateKey: required with mode MUTUAL",
        ),
        (
            tls(
                "api.example.com",
                "{ mode: SIMPLE, clientCertificate: /c.pem }",
            ),
            "spec.trafficPolicy.tls.clientCertificate: only with mode MUTUAL",
        ),
        (
            tls("api.example.com", "{ mode: SIMPLE, sni: \"a b\" }"),
            "spec.trafficPolicy.tls.sni: \"a b\" is not a DNS name or IP address",
        ),
        (
            tls(
                "api.example.com",
                "{ mode: SIMPLE, insecureSkipVerify: true, caCertificates: /ca.pem }",
            ),
            "spec.trafficPolicy.tls.insecureSkipVerify: true skips the checks",
        ),
        (
            tls(
                "api.example.com",
                "{ mode: SIMPLE, credentialName: api-creds }",
            ),
            "spec.trafficPolicy.tls.credentialName: not supported by Weft yet",
        ),
        (
            tls("api.example.com", "{ mode: TLS }"),
            "spec.trafficPolicy.tls.mode: unknown mode \"TLS\"",
        ),
    ] {
        assert_error(&bad, needle);
    }
}
