//! The plugin configurations each resource turns into, with the field each comes from, so
//! `apply` can have each plugin's own `configure` judge them: the rules live once, in the
//! plugin the sidecars run, and whatever a sidecar would refuse is refused at apply first,
//! naming the resource and the field.

use super::compile::{canary_config, entry_retry};
use super::istio::{Resource, Spec, WasmSource};
use serde_json::{Value, json};

/// Where a configured plugin's code comes from.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Code {
    /// A built-in policy, by name.
    Builtin(&'static str),
    /// An artifact in the store, by sha256.
    Stored(String),
}

/// One plugin configuration a resource produces.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Use {
    /// The resource and field it comes from (`t.yaml: document 1 (VirtualService payments):
    /// spec.http[0].retries`).
    pub at: String,
    /// The plugin's name in a chain (the built-in's, or the WasmPlugin's).
    pub name: String,
    pub code: Code,
    /// The configuration, as JSON text.
    pub config: String,
    /// A WasmPlugin's `pluginName`: a proxy-wasm filter's root id.
    pub root_id: String,
}

/// The configurations `r` gives plugins. `digest_of` names the stored artifact an `http(s)`
/// URL was fetched into. WasmPlugins read from a file on the sidecar's host cannot be judged
/// here and produce none.
pub(super) fn of(r: &Resource, digest_of: &dyn Fn(&str) -> Option<String>) -> Vec<Use> {
    let origin = r.origin();
    let mut out = Vec::new();
    let mut add = |field: String, code: Code, config: &Value| {
        out.push(Use {
            at: format!("{origin}: {field}"),
            name: match &code {
                Code::Builtin(b) => b.to_string(),
                Code::Stored(_) => r.name.clone(),
            },
            code,
            config: config.to_string(),
            root_id: String::new(),
        });
    };
    match &r.spec {
        // An HTTPRoute's plugins are judged as the VirtualService it means, named by its paths.
        Spec::VirtualService(vs)
        | Spec::GatewayHttpRoute(crate::control::istio::GatewayHttpRoute { mesh: vs, .. })
        | Spec::GatewayGrpcRoute(crate::control::istio::GatewayGrpcRoute { mesh: vs, .. }) => {
            for host in &vs.hosts {
                // A wildcard's configuration is judged once, its calls to itself named by it.
                let Ok(service) = crate::names::host_ref(host, &r.namespace).map(|r| r.key())
                else {
                    continue;
                };
                if let Some(config) = canary_config(&service, vs, &r.namespace, true, None) {
                    // The canary's words name `http[i]...`, as its configuration is laid out.
                    add("spec".into(), Code::Builtin("canary"), &config);
                }
            }
            for (i, entry) in vs.http.iter().enumerate() {
                if let Some(config) = entry_retry(entry) {
                    add(
                        format!("spec.http[{i}].retries"),
                        Code::Builtin("retry"),
                        &config,
                    );
                }
                if let Some(config) = entry.actions_config(&r.namespace) {
                    add(format!("spec.http[{i}]"), Code::Builtin("headers"), &config);
                }
                if let Some(fault) = &entry.fault {
                    add(
                        format!("spec.http[{i}].fault"),
                        Code::Builtin("fault"),
                        &fault.to_config(),
                    );
                }
            }
        }
        Spec::DestinationRule(dr) => {
            if let Some(outlier) = dr
                .traffic_policy
                .as_ref()
                .and_then(|t| t.outlier_detection.as_ref())
            {
                let config = serde_json::to_value(outlier).unwrap_or_else(|_| json!({}));
                add(
                    "spec.trafficPolicy.outlierDetection".into(),
                    Code::Builtin("outlier"),
                    &config,
                );
            }
        }
        Spec::WasmPlugin(wp) => {
            let digest = match wp.source() {
                Ok(WasmSource::Stored(hex)) => Some(hex),
                Ok(WasmSource::Http(url)) => wp.digest().or_else(|| digest_of(&url)),
                Ok(WasmSource::File(_)) | Err(_) => None,
            };
            if let Some(digest) = digest {
                let config = wp.plugin_config.clone().unwrap_or_else(|| json!({}));
                add("spec.pluginConfig".into(), Code::Stored(digest), &config);
                if let Some(u) = out.last_mut() {
                    u.root_id = wp.plugin_name.clone().unwrap_or_default();
                }
            }
        }
        Spec::AuthorizationPolicy(_)
        | Spec::PeerAuthentication(_)
        | Spec::Telemetry(_)
        | Spec::Sidecar(_)
        | Spec::ServiceEntry(_) => {}
    }
    out
}

/// A plugin's refusal placed at the field it came from: a reason that starts with a field
/// of its configuration (`retryOn: ...`) extends the path (`spec.http[0].retries.retryOn: ...`),
/// also behind the SDK's `invalid configuration: ` (a refusal while the JSON was read).
pub(super) fn at_field(at: &str, reason: &str) -> String {
    let inner = reason
        .strip_prefix("invalid configuration: ")
        .unwrap_or(reason);
    match inner.split_once(": ") {
        Some((field, rest))
            if !field.is_empty()
                && field
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "[]._".contains(c)) =>
        {
            format!("{at}.{field}: {rest}")
        }
        _ => format!("{at}: {reason}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::istio::parse_yaml;

    #[test]
    fn each_policy_field_becomes_its_plugins_configuration() {
        let seed = include_str!("../../../examples/payments/payments.yaml");
        let resources = parse_yaml(seed, "seed.yaml").expect("parses");
        let uses: Vec<Use> = resources.iter().flat_map(|r| of(r, &|_| None)).collect();
        let fields: Vec<(&str, &Code)> = uses.iter().map(|u| (u.at.as_str(), &u.code)).collect();
        assert_eq!(
            fields,
            [
                (
                    "seed.yaml: document 1 (VirtualService payments): spec",
                    &Code::Builtin("canary")
                ),
                (
                    "seed.yaml: document 1 (VirtualService payments): spec.http[0].retries",
                    &Code::Builtin("retry")
                ),
                (
                    "seed.yaml: document 2 (DestinationRule payments): spec.trafficPolicy.outlierDetection",
                    &Code::Builtin("outlier")
                ),
            ]
        );
        let retry: Value = serde_json::from_str(&uses[1].config).expect("json");
        assert_eq!(retry["retryOn"], "5xx,reset");
    }

    #[test]
    fn a_refusal_naming_a_field_extends_the_path() {
        assert_eq!(
            at_field(
                "f: spec.http[0].retries",
                "retryOn: unknown retry condition \"x\""
            ),
            "f: spec.http[0].retries.retryOn: unknown retry condition \"x\""
        );
        assert_eq!(
            at_field("f: spec", "http[1].match[0].uri.regex: bad"),
            "f: spec.http[1].match[0].uri.regex: bad"
        );
        assert_eq!(
            at_field(
                "f: spec.http[0].fault",
                "invalid configuration: delay.percent: must be from 0 to 100 (got 150)"
            ),
            "f: spec.http[0].fault.delay.percent: must be from 0 to 100 (got 150)"
        );
        assert_eq!(
            at_field("f: spec.pluginConfig", "tenant header missing: add one"),
            "f: spec.pluginConfig: tenant header missing: add one"
        );
    }
}
