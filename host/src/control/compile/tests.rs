//! Compiling resources into snapshots: the seed, every feature, and each rule.

use super::*;
use crate::control::istio::parse_yaml;

const SEED: &str = include_str!("../../../../examples/payments/payments.yaml");
const FEATURES: &str = include_str!("../../../tests/data/istio/features.yaml");

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
        namespace: "default".to_string(),
        labels,
        address: address.to_string(),
    }
}

/// [`workload`] in namespace `namespace`.
fn workload_in(namespace: &str, service: &str, version: &str, address: &str) -> Workload {
    Workload {
        namespace: namespace.into(),
        ..workload(service, version, address)
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
    let mut payments = serde_json::to_value(&snapshot.services["payments"]).expect("serializes");
    // Each service's virtual IP is derived from its key: the same in every compile.
    assert_eq!(payments["vip"], json!("198.19.71.216"));
    payments.as_object_mut().map(|o| o.remove("vip"));
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
    let mut orders = serde_json::to_value(&snapshot.services["orders"]).expect("serializes");
    assert!(
        orders
            .as_object_mut()
            .and_then(|o| o.remove("vip"))
            .is_some()
    );
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
    let canary = |s: &Snapshot| plugin(s, "payments", "canary").config["http"][0]["route"].clone();
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
        "u.yaml: document 1 (VirtualService payments-2): spec.hosts: payments is already routed by t.yaml: document 1 (VirtualService payments); Weft takes one VirtualService, HTTPRoute or GRPCRoute per host",
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
        "  url: http://plugins.example/gate.wasm\n",
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
            "canary",
            "fault",
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
        json!({"delay": {"fixedDelay": "5s", "percent": 10},
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

fn server_chain(snapshot: &Snapshot) -> Vec<&str> {
    snapshot
        .inbound
        .plugins
        .iter()
        .map(|p| p.name.as_str())
        .collect()
}

#[test]
fn match_modes_place_plugins_on_either_side_as_istio_does() {
    let text = [
        wasm_doc(
            "both",
            "  url: file:///b.wasm\n  selector: { matchLabels: { app: payments } }\n",
        ),
        wasm_doc(
            "gate",
            "  url: file:///g.wasm\n  phase: AUTHZ\n  selector: { matchLabels: { app: payments } }\n  match: [{ mode: SERVER }]\n",
        ),
        wasm_doc(
            "out-only",
            "  url: file:///o.wasm\n  selector: { matchLabels: { app: payments } }\n  match: [{ mode: CLIENT }]\n",
        ),
        wasm_doc(
            "either",
            "  url: file:///e.wasm\n  phase: STATS\n  match: [{ mode: CLIENT }, { mode: SERVER }]\n  targetRefs: [{ kind: Service, name: payments }]\n",
        ),
    ]
    .concat();
    let resources = parse(&text);
    let workloads = mesh();
    let payments = snapshot_for(&resources, &workloads, &workloads[0]);
    // Server side: AUTHZ-phase plugins before the authorization policies, telemetry reporting
    // as the destination, then the unphased ones.
    assert_eq!(
        server_chain(&payments),
        ["gate", "either", "telemetry", "both"]
    );
    assert_eq!(payments.inbound.authorize_after, 1);
    let telemetry = &payments.inbound.plugins[2];
    assert_eq!(telemetry.config, json!({"reporter": "destination"}));
    // Client side: the SERVER-only gate stays off the calls payments makes.
    assert_eq!(
        chain(&payments, "orders"),
        ["retry", "telemetry", "both", "out-only"]
    );
    // `either` targets payments: on orders' calls to payments, not on payments' own calls out.
    let orders = snapshot_for(&resources, &workloads, &workloads[2]);
    assert_eq!(chain(&orders, "payments"), ["retry", "either", "telemetry"]);
    assert_eq!(server_chain(&orders), ["telemetry"]);
    assert_eq!(orders.inbound.authorize_after, 0);
}

#[test]
fn port_selectors_scope_a_plugin_per_side() {
    let text = wasm_doc(
        "ported",
        "  url: file:///p.wasm\n  match: [{ mode: SERVER, ports: [{ number: 8080 }, { number: 9090 }] }, { mode: CLIENT }]\n",
    );
    let resources = parse(&text);
    let workloads = mesh();
    let s = snapshot_for(&resources, &workloads, &workloads[0]);
    assert_eq!(plugin(&s, "orders", "ported").ports, Vec::<u16>::new());
    let server = s
        .inbound
        .plugins
        .iter()
        .find(|p| p.name == "ported")
        .expect("server side");
    assert_eq!(server.ports, [8080, 9090]);
    let bad = wasm_doc(
        "ported",
        "  url: file:///p.wasm\n  match: [{ ports: [{ number: 70000 }] }]\n",
    );
    let err = crate::control::istio::parse_yaml(&bad, "p.yaml").expect_err("refused");
    assert!(
        err.iter()
            .any(|e| e.contains("spec.match[0].ports[0].number: 70000 is not a port")),
        "{err:?}"
    );
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
    // A policy of namespace shop judges shop's workloads, and only theirs.
    let shop = workload_in("shop", "payments", "v1", "127.0.0.1:9009");
    let shop = snapshot_for(&resources, &workloads, &shop);
    assert_eq!(names(&shop), ["istio-system/no-admin", "shop/elsewhere"]);
    // Without policies there are none, and the version is not what it was; the server side
    // still reports its telemetry.
    let none = snapshot_for(&[], &workloads, &workloads[2]);
    assert!(none.inbound.authorization.is_empty());
    assert_eq!(none.inbound.peer_authentication, None);
    let server: Vec<&str> = none
        .inbound
        .plugins
        .iter()
        .map(|p| p.name.as_str())
        .collect();
    assert_eq!(server, ["telemetry"]);
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
    // A selector in the root namespace selects nothing, with a warning; another namespace's
    // policy is for that namespace's workloads only.
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
    let shop = workload_in("shop", "payments", "v1", "127.0.0.1:9009");
    assert_eq!(
        snapshot_for(&parse(&ignored), &[], &shop)
            .inbound
            .peer_authentication,
        Some(Strict)
    );
    let warnings = validate_warnings(&parse(&ignored));
    let needle =
        "(PeerAuthentication rooted): spec.selector: ignored, as Istio does in the root namespace";
    assert!(
        warnings.contains(needle),
        "missing {needle:?} in:\n{warnings}"
    );
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
        v2.warnings
            .iter()
            .any(|w| w.contains(
                "(PeerAuthentication b-v2): several PeerAuthentications select workload payments"
            ) && w.contains("using t.yaml: document 1 (PeerAuthentication a-payments)")),
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
    let shop = workload_in("shop", "orders", "", "127.0.0.1:2");
    // Seen from namespace default (the VirtualService's own), and from shop.
    for (export, seen, seen_from_shop) in [
        ("['.']", true, false),
        ("['*']", true, true),
        ("[default, shop]", true, true),
        ("[shop]", false, true),
        ("['~']", false, false),
    ] {
        let resources = parse(&vs(export));
        for (who, expected) in [(&me, seen), (&shop, seen_from_shop)] {
            let s = snapshot_for(&resources, &[], who);
            let timeout = s.services.get("payments").and_then(|p| p.timeout.clone());
            assert_eq!(
                timeout.is_some(),
                expected,
                "exportTo {export} from {}",
                who.namespace
            );
        }
    }
    assert!(
        validate_warnings(&parse(&vs("['~']"))).contains("spec.exportTo: exported to no namespace"),
    );
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
                "  url: http://example.invalid/p.wasm\n  sha256: {}\n",
                hex.to_uppercase()
            )
        ),
        wasm_doc("loose", "  url: http://example.invalid/l.wasm\n")
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
            "t.yaml: document 2 (WasmPlugin loose): spec.url: http://example.invalid/l.wasm has not been fetched into the artifact store; the plugin is left out of the chains"
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
        namespace: "default".into(),
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

#[test]
fn a_wasm_plugin_applies_in_its_namespace_or_from_the_root_namespace() {
    let doc = |ns: &str| {
        format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{ name: gate-{ns}, namespace: {ns} }}\nspec: {{ url: file:///gate.wasm }}\n---\n"
        )
    };
    let text = format!("{}{}{}", doc("default"), doc("istio-system"), doc("shop"));
    let resources = parse(&text);
    let shop = workload_in("shop", "orders", "", "127.0.0.1:2");
    let s = snapshot_for(&resources, &[], &shop);
    let names = chain(&s, "orders.shop");
    assert!(names.contains(&"gate-shop".to_string()), "{names:?}");
    assert!(!names.contains(&"gate-default".to_string()), "{names:?}");
    let s = snapshot_for(&resources, &[], &workload("orders", "", "127.0.0.1:1"));
    let names = chain(&s, "orders");
    assert!(names.contains(&"gate-default".to_string()), "{names:?}");
    assert!(
        names.contains(&"gate-istio-system".to_string()),
        "{names:?}"
    );
    assert!(!names.contains(&"gate-shop".to_string()), "{names:?}");
}

#[test]
fn same_named_services_in_two_namespaces_are_two_services() {
    let text = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: payments, namespace: shop }
spec:
  hosts: [payments]
  http:
  - route:
    - destination: { host: payments, subset: v2 }
    timeout: 4s
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: payments, namespace: shop }
spec:
  host: payments.shop.svc.cluster.local
  subsets: [{ name: v2, labels: { version: v2 } }]
";
    let resources = parse(text);
    assert_eq!(validate_warnings(&resources), "");
    let shop = |version: &str, address: &str| workload_in("shop", "payments", version, address);
    let mut workloads = mesh();
    workloads.push(shop("v2", "127.0.0.1:9102"));
    let me = workloads[2].clone();
    let s = snapshot_for(&resources, &workloads, &me);
    // The default namespace's payments is untouched by shop's VirtualService.
    let default = &s.services["payments"];
    assert_eq!(default.timeout, None);
    assert!(default.subsets.is_empty());
    assert!(
        default
            .endpoints
            .iter()
            .all(|e| e.address != "127.0.0.1:9102")
    );
    let other = &s.services["payments.shop"];
    assert_eq!(other.timeout.as_deref(), Some("4s"));
    assert_eq!(other.endpoints.len(), 1);
    assert_eq!(other.endpoints[0].labels["app"], "payments");
    let canary = other
        .plugins
        .iter()
        .find(|p| p.name == "canary")
        .expect("canary");
    assert_eq!(
        canary.config["http"][0]["route"][0]["destination"]["host"],
        "payments.shop"
    );
}

#[test]
fn wildcard_hosts_hold_for_the_services_without_a_more_specific_one() {
    let text = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: shop-wide, namespace: shop }
spec:
  hosts: ['*.shop.svc.cluster.local']
  http:
  - directResponse: { status: 503, body: { string: closed } }
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: reviews, namespace: shop }
spec:
  hosts: [reviews]
  http:
  - route: [{ destination: { host: reviews } }]
    timeout: 2s
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: everything }
spec:
  host: '*.svc.cluster.local'
  trafficPolicy: { outlierDetection: { consecutive5xxErrors: 5 } }
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: { name: payments }
spec:
  host: payments
  subsets: [{ name: v1, labels: { version: v1 } }]
";
    let resources = parse(text);
    assert_eq!(validate_warnings(&resources), "");
    let shop = |service: &str, address: &str| workload_in("shop", service, "v1", address);
    let mut workloads = mesh();
    workloads.push(shop("payments", "127.0.0.1:9201"));
    workloads.push(shop("reviews", "127.0.0.1:9202"));
    let s = snapshot_for(&resources, &workloads, &workloads[2]);
    // shop's payments: the wildcard VirtualService and DestinationRule.
    assert_eq!(
        chain(&s, "payments.shop"),
        ["canary", "headers", "retry", "outlier", "telemetry"]
    );
    // shop's reviews: its own VirtualService, more specific than the wildcard.
    assert_eq!(s.services["reviews.shop"].timeout.as_deref(), Some("2s"));
    assert!(!chain(&s, "reviews.shop").contains(&"headers".to_string()));
    // default's payments: its exact DestinationRule wins over the wildcard's outlier policy.
    assert_eq!(chain(&s, "payments"), ["retry", "telemetry"]);
    assert!(s.services["payments"].subsets.contains_key("v1"));
    assert!(chain(&s, "orders").contains(&"outlier".to_string()));
    // No service comes from a wildcard alone.
    assert!(s.services.keys().all(|k| !k.starts_with('*')));
}

#[test]
fn a_match_for_gateways_only_is_left_out_of_sidecars() {
    let text = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: { name: payments }
spec:
  hosts: [payments]
  http:
  - match: [{ uri: { prefix: /admin }, gateways: [istio-system/ingress] }]
    fault: { abort: { httpStatus: 403, percentage: { value: 100 } } }
    route: [{ destination: { host: payments } }]
  - match: [{ uri: { prefix: /internal }, gateways: [mesh, istio-system/ingress] }]
    route: [{ destination: { host: payments } }]
    timeout: 1s
  - route: [{ destination: { host: payments } }]
";
    let resources = parse(text);
    let s = snapshot_for(&resources, &[], &workload("orders", "", "127.0.0.1:1"));
    let canary = &plugin(&s, "payments", "canary").config;
    // The edge's /admin abort is not the mesh's; /internal (mesh listed) is, its gateways gone.
    assert_eq!(canary["http"].as_array().map(Vec::len), Some(2));
    assert_eq!(
        canary["http"][0]["match"],
        json!([{"uri": {"prefix": "/internal"}}])
    );
    // Its fault is scoped to its route, which no call of this sidecar takes.
    let fault = s.services["payments"]
        .plugins
        .iter()
        .find(|p| p.builtin.as_deref() == Some("fault"))
        .expect("a fault instance");
    assert_eq!(fault.routes, ["#0"]);
    let names: Vec<&Value> = canary["http"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| &e["name"])
        .collect();
    assert!(!names.contains(&&json!("#0")), "{names:?}");
}

#[test]
fn tracing_merges_the_levels_field_by_field_under_the_mesh_configuration() {
    let mesh_config = crate::control::mesh_config::MeshConfig::parse(
        "extensionProviders:
- name: otel
  opentelemetry: { service: collector.obs, port: 4318, http: { path: /v1/traces } }
- name: other
  opentelemetry: { service: 198.18.0.9, port: 4318, http: { path: /v1/traces, timeout: 1s } }
defaultProviders: { tracing: [otel] }
",
        "mesh.yaml",
    )
    .expect("valid");
    let text = "
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: mesh, namespace: istio-system }
spec:
  tracing: [{ randomSamplingPercentage: 10 }]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: payments-v2 }
spec:
  selector: { matchLabels: { app: payments, version: v2 } }
  tracing:
  - match: { mode: SERVER }
    providers: [{ name: other }]
  - match: { mode: CLIENT }
    disableSpanReporting: true
";
    let resources = parse(text);
    let workloads = mesh();
    let otel = |sampling: f64, report: bool| crate::snapshot::TraceSide {
        endpoint: "http://collector.obs:4318/v1/traces".into(),
        timeout: None,
        sampling,
        report,
    };
    // The mesh-wide level sets the percentage; the default provider is the mesh's.
    let orders = snapshot_in(&resources, &workloads, &workloads[2], &mesh_config);
    assert_eq!(orders.tracing.client, Some(otel(10.0, true)));
    assert_eq!(orders.tracing.server, Some(otel(10.0, true)));
    // payments v2 keeps the inherited percentage, changes the server's provider and stops
    // reporting its client spans.
    let v2 = snapshot_in(&resources, &workloads, &workloads[1], &mesh_config);
    assert_eq!(v2.tracing.client, Some(otel(10.0, false)));
    assert_eq!(
        v2.tracing.server,
        Some(crate::snapshot::TraceSide {
            endpoint: "http://198.18.0.9:4318/v1/traces".into(),
            timeout: Some("1s".into()),
            sampling: 10.0,
            report: true,
        })
    );
    // Without a mesh configuration there is no provider: no tracing, and no section.
    let none = snapshot_for(&resources, &workloads, &workloads[2]);
    assert!(none.tracing.is_empty());
    // A default provider and no Telemetry: Istio's 1%.
    let default = snapshot_in(&[], &workloads, &workloads[2], &mesh_config);
    assert_eq!(default.tracing.client, Some(otel(1.0, true)));
}

#[test]
fn metrics_overrides_turn_standard_metrics_off_per_side_level_by_level() {
    let text = "
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: mesh, namespace: istio-system }
spec:
  metrics:
  - providers: [{ name: prometheus }]
    overrides:
    - match: { metric: REQUEST_SIZE }
      disabled: true
    - match: { metric: RESPONSE_SIZE, mode: SERVER }
      disabled: true
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: payments-all }
spec:
  selector: { matchLabels: { app: payments } }
  metrics:
  - overrides:
    - match: { metric: REQUEST_SIZE, mode: CLIENT }
      disabled: false
    - match: { metric: TCP_OPENED_CONNECTIONS, mode: SERVER }
      disabled: true
";
    let resources = parse(text);
    let workloads = mesh();
    let orders = snapshot_for(&resources, &workloads, &workloads[2]);
    assert_eq!(orders.metrics_off.client, ["istio_request_bytes"]);
    assert_eq!(
        orders.metrics_off.server,
        ["istio_request_bytes", "istio_response_bytes"]
    );
    assert_eq!(
        plugin(&orders, "payments", "telemetry").config,
        json!({"disabled": ["istio_request_bytes"]})
    );
    let server = &orders.inbound.plugins[0];
    assert_eq!(
        server.config,
        json!({"reporter": "destination", "disabled": ["istio_request_bytes", "istio_response_bytes"]})
    );
    // The workload level turns one back on for its client side, and a TCP one off.
    let payments = snapshot_for(&resources, &workloads, &workloads[0]);
    assert!(payments.metrics_off.client.is_empty());
    assert_eq!(
        payments.metrics_off.server,
        [
            "istio_request_bytes",
            "istio_response_bytes",
            "istio_tcp_connections_opened_total"
        ]
    );
    assert_eq!(plugin(&payments, "orders", "telemetry").config, json!({}));
    // Istio's other providers and the tag overrides are refused by path.
    let refused = |spec: &str| {
        let doc = format!(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{ name: t }}\nspec:\n{spec}"
        );
        crate::control::istio::parse_yaml(&doc, "t.yaml").expect_err("refused")
    };
    let e = refused("  metrics: [{ providers: [{ name: stackdriver }] }]\n");
    assert!(
        e.iter()
            .any(|e| e.contains("spec.metrics[0].providers[0].name")),
        "{e:?}"
    );
    let e = refused(
        "  metrics: [{ overrides: [{ tagOverrides: { request_protocol: { operation: REMOVE } } }] }]\n",
    );
    assert!(
        e.iter()
            .any(|e| e.contains("spec.metrics[0].overrides[0].tagOverrides")),
        "{e:?}"
    );
}

#[test]
fn the_most_specific_telemetry_gives_a_workload_its_access_logging() {
    let text = "
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: mesh, namespace: istio-system }
spec:
  accessLogging: [{ providers: [{ name: envoy }] }]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: payments-errors }
spec:
  selector: { matchLabels: { app: payments, version: v2 } }
  accessLogging:
  - providers: [{ name: envoy-json }]
    filter: { expression: 'response.code >= 500' }
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: shop-quiet, namespace: shop }
spec:
  accessLogging: [{ providers: [{ name: envoy }], disabled: true }]
";
    let resources = parse(text);
    let workloads = mesh();
    use crate::access_log::{Encoding, Sink};
    let text_sink = Sink {
        encoding: Encoding::Text,
        filter: None,
        path: None,
    };
    // Mesh-wide: orders and payments v1 log both sides in text.
    for me in [&workloads[0], &workloads[2]] {
        let s = snapshot_for(&resources, &workloads, me);
        assert_eq!(s.access_log.client, vec![text_sink.clone()], "{me:?}");
        assert_eq!(s.access_log.server, vec![text_sink.clone()], "{me:?}");
    }
    // payments v2's own Telemetry replaces the mesh-wide one.
    let v2 = snapshot_for(&resources, &workloads, &workloads[1]);
    let json_errors = Sink {
        encoding: Encoding::Json,
        filter: Some("response.code >= 500".into()),
        path: None,
    };
    assert_eq!(v2.access_log.server, vec![json_errors.clone()]);
    assert_eq!(v2.access_log.client, vec![json_errors]);
    // A namespace's Telemetry that turns logging off wins over the mesh's there.
    let shop = workload_in("shop", "ratings", "v1", "127.0.0.1:9201");
    let s = snapshot_for(&resources, &workloads, &shop);
    assert!(s.access_log.is_empty(), "{:?}", s.access_log);
    // No Telemetry: nothing logged, and the snapshot is as it was before logging existed.
    let plain = snapshot_for(&parse(SEED), &workloads, &workloads[2]);
    assert!(plain.access_log.is_empty());
    assert!(
        !serde_json::to_string(&plain)
            .expect("json")
            .contains("accessLog")
    );
}
