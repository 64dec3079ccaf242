//! The Istio conformance table in `docs/istio-compatibility.md`, generated from the code so it
//! cannot drift: for every level of every kind, the fields Weft reads (asked of the typed
//! structs themselves, by offering each an unknown field and reading the list serde expects)
//! and the fields it refuses (its unsupported-field tables). A field in neither is refused as
//! unknown. `WEFT_BLESS=1 cargo test -p weft --lib conformance` rewrites the table.

use super::istio::{
    self, AUTHZ_UNSUPPORTED, DR_UNSUPPORTED, GRPC_ROUTE_UNSUPPORTED, HTTP_ROUTE_UNSUPPORTED,
    PEER_AUTHN_UNSUPPORTED, SERVICE_ENTRY_UNSUPPORTED, SIDECAR_UNSUPPORTED, TELEMETRY_UNSUPPORTED,
    Unsupported, VS_UNSUPPORTED, WASM_UNSUPPORTED,
};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

/// A kind, the header its documents start with, and the levels of its spec to probe.
struct KindProbe {
    title: &'static str,
    header: &'static str,
    levels: &'static [&'static str],
    refused: Unsupported,
}

const KINDS: &[KindProbe] = &[
    KindProbe {
        title: "VirtualService (networking.istio.io)",
        header: "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: { name: probe }\n",
        levels: &[
            "",
            "http[]",
            "http[].match[]",
            "http[].match[].uri",
            "http[].match[].headers.<name>",
            "http[].match[].method",
            "http[].match[].authority",
            "http[].match[].scheme",
            "http[].match[].withoutHeaders.<name>",
            "http[].match[].queryParams.<name>",
            "http[].route[]",
            "http[].route[].destination",
            "http[].retries",
            "http[].fault",
            "http[].fault.delay",
            "http[].fault.delay.percentage",
            "http[].fault.abort",
            "http[].fault.abort.percentage",
            "http[].headers",
            "http[].headers.request",
            "http[].headers.response",
            "http[].redirect",
            "http[].rewrite",
            "http[].rewrite.uriRegexRewrite",
            "http[].corsPolicy",
            "http[].corsPolicy.allowOrigins[]",
            "http[].mirrorPercentage",
            "http[].mirror",
            "http[].mirrors[]",
            "http[].mirrors[].destination",
            "http[].mirrors[].percentage",
            "http[].directResponse",
            "http[].directResponse.body",
        ],
        refused: VS_UNSUPPORTED,
    },
    KindProbe {
        title: "DestinationRule (networking.istio.io)",
        header: "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: { name: probe }\n",
        levels: &[
            "",
            "trafficPolicy",
            "trafficPolicy.loadBalancer",
            "trafficPolicy.loadBalancer.consistentHash",
            "trafficPolicy.loadBalancer.consistentHash.httpCookie",
            "trafficPolicy.loadBalancer.consistentHash.ringHash",
            "trafficPolicy.outlierDetection",
            "trafficPolicy.connectionPool",
            "trafficPolicy.connectionPool.tcp",
            "trafficPolicy.connectionPool.http",
            "subsets[]",
            "subsets[].trafficPolicy",
            "subsets[].trafficPolicy.loadBalancer",
            "subsets[].trafficPolicy.loadBalancer.consistentHash",
            "subsets[].trafficPolicy.connectionPool",
            "subsets[].trafficPolicy.connectionPool.tcp",
            "subsets[].trafficPolicy.connectionPool.http",
        ],
        refused: DR_UNSUPPORTED,
    },
    KindProbe {
        title: "WasmPlugin (extensions.istio.io)",
        header: "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: { name: probe }\n",
        levels: &["", "selector", "targetRefs[]", "match[]"],
        refused: WASM_UNSUPPORTED,
    },
    KindProbe {
        title: "AuthorizationPolicy (security.istio.io)",
        header: "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: { name: probe }\n",
        levels: &[
            "",
            "selector",
            "rules[]",
            "rules[].from[]",
            "rules[].from[].source",
            "rules[].to[]",
            "rules[].to[].operation",
        ],
        refused: AUTHZ_UNSUPPORTED,
    },
    KindProbe {
        title: "PeerAuthentication (security.istio.io)",
        header: "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: { name: probe }\n",
        levels: &["", "selector", "mtls"],
        refused: PEER_AUTHN_UNSUPPORTED,
    },
    KindProbe {
        title: "Telemetry (telemetry.istio.io)",
        header: "apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: { name: probe }
",
        levels: &[
            "",
            "selector",
            "accessLogging[]",
            "accessLogging[].match",
            "accessLogging[].providers[]",
            "accessLogging[].filter",
            "tracing[]",
            "tracing[].match",
            "tracing[].providers[]",
            "metrics[]",
            "metrics[].providers[]",
            "metrics[].overrides[]",
            "metrics[].overrides[].match",
        ],
        refused: TELEMETRY_UNSUPPORTED,
    },
    KindProbe {
        title: "HTTPRoute (gateway.networking.k8s.io), for mesh traffic",
        header: "apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: { name: probe }
",
        levels: &[
            "",
            "parentRefs[]",
            "rules[]",
            "rules[].matches[]",
            "rules[].matches[].path",
            "rules[].matches[].headers[]",
            "rules[].matches[].queryParams[]",
            "rules[].filters[]",
            "rules[].filters[].requestHeaderModifier",
            "rules[].filters[].requestHeaderModifier.set[]",
            "rules[].filters[].responseHeaderModifier",
            "rules[].filters[].urlRewrite",
            "rules[].filters[].urlRewrite.path",
            "rules[].filters[].requestRedirect",
            "rules[].filters[].requestMirror",
            "rules[].filters[].requestMirror.backendRef",
            "rules[].filters[].requestMirror.fraction",
            "rules[].backendRefs[]",
            "rules[].timeouts",
            "rules[].retry",
        ],
        refused: HTTP_ROUTE_UNSUPPORTED,
    },
    KindProbe {
        title: "GRPCRoute (gateway.networking.k8s.io), for mesh traffic",
        header: "apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: { name: probe }
",
        levels: &[
            "",
            "parentRefs[]",
            "rules[]",
            "rules[].matches[]",
            "rules[].matches[].method",
            "rules[].matches[].headers[]",
            "rules[].filters[]",
            "rules[].backendRefs[]",
        ],
        refused: GRPC_ROUTE_UNSUPPORTED,
    },
    KindProbe {
        title: "Sidecar (networking.istio.io)",
        header: "apiVersion: networking.istio.io/v1\nkind: Sidecar\nmetadata: { name: probe }\n",
        levels: &["", "workloadSelector", "egress[]", "outboundTrafficPolicy"],
        refused: SIDECAR_UNSUPPORTED,
    },
    KindProbe {
        title: "ServiceEntry (networking.istio.io)",
        header: "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: { name: probe }\n",
        levels: &["", "ports[]", "endpoints[]"],
        refused: SERVICE_ENTRY_UNSUPPORTED,
    },
];

/// A spec with an unknown field `zzzProbe` at `level`.
fn probe_spec(level: &str) -> Value {
    let mut value = json!({ "zzzProbe": 1 });
    for segment in level.split('.').filter(|s| !s.is_empty()).rev() {
        let (name, list) = match segment.strip_suffix("[]") {
            Some(name) => (name, true),
            None => (segment, false),
        };
        let inner = if list {
            Value::Array(vec![value])
        } else {
            value
        };
        let mut object = Map::new();
        object.insert(name.to_string(), inner);
        value = Value::Object(object);
    }
    value
}

/// The fields the typed struct at `level` reads, as serde lists them when refusing the probe.
fn supported(kind: &KindProbe, level: &str) -> Vec<String> {
    let doc = format!(
        "{}spec: {}\n",
        kind.header,
        serde_json::to_string(&probe_spec(level)).unwrap_or_default()
    );
    let errors = match istio::parse_yaml(&doc, "probe.yaml") {
        Ok(_) => panic!("{}: {level:?} accepted an unknown field", kind.title),
        Err(e) => e,
    };
    let Some(refusal) = errors
        .iter()
        .find(|e| e.contains("unknown field `zzzProbe`"))
    else {
        panic!("{}: {level:?} is not a struct: {errors:?}", kind.title);
    };
    let expected = refusal.split_once("expected").map_or("", |(_, rest)| rest);
    expected
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The generated Markdown: one table per kind.
fn table() -> String {
    let mut out = String::new();
    for kind in KINDS {
        let mut rows: BTreeMap<String, &str> = BTreeMap::new();
        for level in kind.levels {
            for field in supported(kind, level) {
                rows.insert(path(level, &field), "read");
            }
        }
        for (level, fields) in kind.refused {
            for field in *fields {
                rows.insert(path(level, field), "**refused** at apply, naming the field");
            }
        }
        out.push_str(&format!(
            "\n### {}\n\n| field | Weft |\n| --- | --- |\n",
            kind.title
        ));
        for (field, what) in rows {
            out.push_str(&format!("| `{field}` | {what} |\n"));
        }
    }
    out
}

fn path(level: &str, field: &str) -> String {
    if level.is_empty() {
        format!("spec.{field}")
    } else {
        format!("spec.{level}.{field}")
    }
}

const DOC: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../docs/istio-compatibility.md"
);
const BEGIN: &str = "<!-- generated by host/src/control/conformance.rs: begin -->\n";
const END: &str = "<!-- generated: end -->\n";

#[test]
fn the_conformance_table_is_the_codes() {
    let text = std::fs::read_to_string(DOC).unwrap_or_default();
    let generated = table();
    let current = text
        .split_once(BEGIN)
        .and_then(|(_, rest)| rest.split_once(END))
        .map(|(t, _)| t);
    if current == Some(generated.as_str()) {
        return;
    }
    if std::env::var_os("WEFT_BLESS").is_some() {
        let (head, tail) = match text.split_once(BEGIN) {
            Some((head, rest)) => (
                head.to_string(),
                rest.split_once(END).map_or("", |(_, t)| t).to_string(),
            ),
            None => (text.clone(), String::new()),
        };
        let updated = format!("{head}{BEGIN}{generated}{END}{tail}");
        std::fs::write(DOC, updated).unwrap_or_else(|e| panic!("{DOC}: {e}"));
        return;
    }
    panic!(
        "docs/istio-compatibility.md does not match the code; run \
         WEFT_BLESS=1 cargo test -p weft --lib conformance, and read the diff"
    );
}
