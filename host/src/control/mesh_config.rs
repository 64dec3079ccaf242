//! Istio's MeshConfig (what istiod reads from its `istio` ConfigMap's `mesh` key), as
//! `weft control --mesh-config <file>` reads it: the extension providers the Telemetry API
//! names (OpenTelemetry tracing over OTLP/HTTP, access logs to a file) and the default
//! providers. A field Weft does not
//! honour yet is refused by its path, so the file means what it says in Istio.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The mesh configuration in force.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MeshConfig {
    /// Providers Telemetry resources name.
    #[serde(default)]
    pub extension_providers: Vec<ExtensionProvider>,
    /// The providers in force where a Telemetry names none, or there is none.
    #[serde(default)]
    pub default_providers: DefaultProviders,
}

/// One provider: exactly one of its kinds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ExtensionProvider {
    /// Its name, as Telemetry resources refer to it.
    pub name: String,
    /// An OpenTelemetry collector, for traces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub opentelemetry: Option<OpenTelemetry>,
    /// Access logs written to a file, in Envoy's default text format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub envoy_file_access_log: Option<FileAccessLog>,
}

/// Istio's `EnvoyFileAccessLogProvider`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FileAccessLog {
    /// The file lines are appended to (`/dev/stdout` writes to the sidecar's stdout).
    pub path: String,
}

/// Istio's `OpenTelemetryTracingProvider`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OpenTelemetry {
    /// The collector's host (`otel-collector.observability.svc.cluster.local`, or an address).
    pub service: String,
    /// Its port.
    pub port: u16,
    /// OTLP over HTTP; Weft exports over HTTP only, so it is required.
    pub http: OtlpHttp,
}

/// Istio's `OpenTelemetryTracingProvider.HttpService`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct OtlpHttp {
    /// The path spans are posted to (`/v1/traces`).
    pub path: String,
    /// How long one export may take (default 5 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<String>,
}

/// Istio's `MeshConfig.DefaultProviders`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DefaultProviders {
    /// Tracing providers in force by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<String>,
}

/// Fields of Istio's MeshConfig and its providers that Weft reads; the rest are refused.
const KNOWN: &[(&str, &[&str])] = &[
    ("", &["extensionProviders", "defaultProviders"]),
    (
        "extensionProviders[]",
        &["name", "opentelemetry", "envoyFileAccessLog"],
    ),
    ("extensionProviders[].envoyFileAccessLog", &["path"]),
    (
        "extensionProviders[].opentelemetry",
        &["service", "port", "http"],
    ),
    (
        "extensionProviders[].opentelemetry.http",
        &["path", "timeout"],
    ),
    ("defaultProviders", &["tracing"]),
];

/// Istio's default sampling percentage where a Telemetry gives none (MeshConfig's
/// `defaultConfig.tracing.sampling`, 1% unless set).
pub const DEFAULT_SAMPLING: f64 = 1.0;

impl MeshConfig {
    /// Reads a MeshConfig YAML file's text; every problem is named by its path.
    pub fn parse(text: &str, source: &str) -> Result<MeshConfig, Vec<String>> {
        let docs = super::yaml::load(text, source)?;
        let value = match docs.as_slice() {
            [] => return Ok(MeshConfig::default()),
            [doc] => super::yaml::to_json(doc, "").map_err(|e| vec![format!("{source}: {e}")])?,
            _ => return Err(vec![format!("{source}: one MeshConfig document expected")]),
        };
        if value.is_null() {
            return Ok(MeshConfig::default());
        }
        let mut problems = Vec::new();
        check_known(&value, "", &mut problems);
        if !problems.is_empty() {
            return Err(problems
                .into_iter()
                .map(|p| format!("{source}: {p}"))
                .collect());
        }
        let config: MeshConfig =
            serde_json::from_value(value).map_err(|e| vec![format!("{source}: {e}")])?;
        config.check().map_err(|errors| {
            errors
                .into_iter()
                .map(|e| format!("{source}: {e}"))
                .collect::<Vec<_>>()
        })?;
        Ok(config)
    }

    fn check(&self) -> Result<(), Vec<String>> {
        let mut errors = Vec::new();
        for (i, p) in self.extension_providers.iter().enumerate() {
            let at = format!("extensionProviders[{i}]");
            if p.name.is_empty() {
                errors.push(format!("{at}.name: must not be empty"));
            }
            if self.extension_providers[..i]
                .iter()
                .any(|q| q.name == p.name)
            {
                errors.push(format!("{at}.name: {:?} is defined twice", p.name));
            }
            if p.opentelemetry.is_some() == p.envoy_file_access_log.is_some() {
                errors.push(format!(
                    "{at}: give exactly one of opentelemetry or envoyFileAccessLog"
                ));
            }
            if let Some(file) = &p.envoy_file_access_log
                && !file.path.starts_with('/')
            {
                errors.push(format!(
                    "{at}.envoyFileAccessLog.path: {:?} must be an absolute path",
                    file.path
                ));
            }
            let Some(otel) = &p.opentelemetry else {
                continue;
            };
            if otel.service.is_empty() || otel.service.contains(['/', ' ', ':']) {
                errors.push(format!(
                    "{at}.opentelemetry.service: {:?} is not a host name or IPv4 address",
                    otel.service
                ));
            }
            if otel.port == 0 {
                errors.push(format!("{at}.opentelemetry.port: must not be 0"));
            }
            if !otel.http.path.starts_with('/') {
                errors.push(format!(
                    "{at}.opentelemetry.http.path: {:?} must start with /",
                    otel.http.path
                ));
            }
            if let Some(t) = &otel.http.timeout
                && let Err(e) = crate::snapshot::parse_duration(t)
            {
                errors.push(format!("{at}.opentelemetry.http.timeout: {e}"));
            }
        }
        for (i, name) in self.default_providers.tracing.iter().enumerate() {
            if self.tracer(name).is_none() {
                errors.push(format!(
                    "defaultProviders.tracing[{i}]: no opentelemetry extension provider is named {name:?}"
                ));
            }
        }
        if self.default_providers.tracing.len() > 1 {
            errors.push(
                "defaultProviders.tracing: Istio supports one tracing provider per workload; give one"
                    .to_string(),
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(errors)
        }
    }

    /// The provider called `name`.
    pub fn provider(&self, name: &str) -> Option<&ExtensionProvider> {
        self.extension_providers.iter().find(|p| p.name == name)
    }

    /// The OpenTelemetry provider called `name`.
    pub fn tracer(&self, name: &str) -> Option<&OpenTelemetry> {
        self.provider(name)?.opentelemetry.as_ref()
    }

    /// Where the access-log provider called `name` writes (none: stdout) and in what
    /// encoding: Istio's built-in `envoy` (text) and Weft's `envoy-json`, or a file provider
    /// of this configuration (text).
    pub fn access_log(&self, name: &str) -> Option<(crate::access_log::Encoding, Option<String>)> {
        if let Some(encoding) = crate::access_log::provider(name) {
            return Some((encoding, None));
        }
        let file = self.provider(name)?.envoy_file_access_log.as_ref()?;
        let path = (file.path != "/dev/stdout").then(|| file.path.clone());
        Some((crate::access_log::Encoding::Text, path))
    }
}

impl MeshConfig {
    /// Telemetry resources naming a provider this configuration does not define (or one of
    /// the other kind): a name is a reference, refused like a dangling one in Istio.
    pub fn undefined_providers(&self, resources: &[super::istio::Resource]) -> Vec<String> {
        let named = |kind: fn(&ExtensionProvider) -> bool| -> String {
            let names: Vec<&str> = self
                .extension_providers
                .iter()
                .filter(|p| kind(p))
                .map(|p| p.name.as_str())
                .collect();
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        };
        let mut errors = Vec::new();
        for r in resources {
            let super::istio::Spec::Telemetry(t) = &r.spec else {
                continue;
            };
            for (i, entry) in t.tracing.iter().enumerate() {
                for (j, p) in entry.providers.iter().enumerate() {
                    if self.tracer(&p.name).is_none() {
                        errors.push(format!(
                            "{}: spec.tracing[{i}].providers[{j}].name: provider {:?} is not defined in the mesh configuration (weft control --mesh-config; opentelemetry providers: {})",
                            r.origin(),
                            p.name,
                            named(|p| p.opentelemetry.is_some())
                        ));
                    }
                }
            }
            for (i, entry) in t.access_logging.iter().enumerate() {
                for (j, p) in entry.providers.iter().enumerate() {
                    if self.access_log(&p.name).is_none() {
                        errors.push(format!(
                            "{}: spec.accessLogging[{i}].providers[{j}].name: provider {:?} is not defined ({}; the mesh configuration's envoyFileAccessLog providers: {})",
                            r.origin(),
                            p.name,
                            crate::access_log::PROVIDERS,
                            named(|p| p.envoy_file_access_log.is_some())
                        ));
                    }
                }
            }
        }
        errors
    }
}

impl OpenTelemetry {
    /// The URL spans are posted to.
    pub fn endpoint(&self) -> String {
        format!("http://{}:{}{}", self.service, self.port, self.http.path)
    }
}

fn check_known(value: &Value, at: &str, problems: &mut Vec<String>) {
    let Some(map) = value.as_object() else {
        return;
    };
    let Some((_, known)) = KNOWN.iter().find(|(path, _)| *path == at) else {
        return;
    };
    for (key, child) in map {
        let path = if at.is_empty() {
            key.clone()
        } else {
            format!("{at}.{key}")
        };
        if !known.contains(&key.as_str()) {
            problems.push(format!(
                "{path}: not supported by Weft yet (it reads {})",
                known.join(", ")
            ));
            continue;
        }
        match child {
            Value::Array(items) => {
                for item in items {
                    check_known(item, &format!("{path}[]"), problems);
                }
            }
            other => check_known(other, &path, problems),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MESH: &str = "
extensionProviders:
- name: otel
  opentelemetry:
    service: otel-collector.observability.svc.cluster.local
    port: 4318
    http: { path: /v1/traces, timeout: 2s }
defaultProviders:
  tracing: [otel]
";

    #[test]
    fn reads_an_opentelemetry_provider_as_istio_writes_it() {
        let m = MeshConfig::parse(MESH, "mesh.yaml").expect("valid");
        let otel = m.tracer("otel").expect("defined");
        assert_eq!(
            otel.endpoint(),
            "http://otel-collector.observability.svc.cluster.local:4318/v1/traces"
        );
        assert_eq!(m.default_providers.tracing, ["otel"]);
        assert_eq!(
            MeshConfig::parse("", "empty.yaml"),
            Ok(MeshConfig::default())
        );
    }

    #[test]
    fn refuses_what_it_cannot_honour_by_path() {
        let grpc = MESH.replace(
            "    http: { path: /v1/traces, timeout: 2s }\n",
            "    grpc: { timeout: 2s }\n",
        );
        let errors = MeshConfig::parse(&grpc, "m.yaml").expect_err("refused");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("extensionProviders[].opentelemetry.grpc: not supported")),
            "{errors:?}"
        );
        let zipkin = "extensionProviders:\n- name: z\n  zipkin: { service: z, port: 9411 }\n";
        let errors = MeshConfig::parse(zipkin, "m.yaml").expect_err("refused");
        assert!(
            errors
                .iter()
                .any(|e| e.contains("extensionProviders[].zipkin: not supported")),
            "{errors:?}"
        );
        let other = "accessLogFile: /dev/stdout\n";
        let errors = MeshConfig::parse(other, "m.yaml").expect_err("refused");
        assert!(
            errors[0].contains("accessLogFile: not supported"),
            "{errors:?}"
        );
        let dangling = "defaultProviders: { tracing: [nope] }\n";
        let errors = MeshConfig::parse(dangling, "m.yaml").expect_err("refused");
        assert!(
            errors[0].contains("no opentelemetry extension provider is named \"nope\""),
            "{errors:?}"
        );
    }

    #[test]
    fn reads_a_file_access_log_provider_and_checks_its_path() {
        let text = "extensionProviders:\n- name: file\n  envoyFileAccessLog: { path: /var/log/weft/access.log }\n- name: out\n  envoyFileAccessLog: { path: /dev/stdout }\n";
        let m = MeshConfig::parse(text, "m.yaml").expect("valid");
        assert_eq!(
            m.access_log("file"),
            Some((
                crate::access_log::Encoding::Text,
                Some("/var/log/weft/access.log".to_string())
            ))
        );
        assert_eq!(
            m.access_log("out"),
            Some((crate::access_log::Encoding::Text, None))
        );
        assert_eq!(
            m.access_log("envoy"),
            Some((crate::access_log::Encoding::Text, None))
        );
        assert_eq!(m.access_log("nope"), None);
        assert!(
            m.tracer("file").is_none(),
            "a file provider is not a tracer"
        );

        let relative =
            "extensionProviders:\n- name: f\n  envoyFileAccessLog: { path: access.log }\n";
        let errors = MeshConfig::parse(relative, "m.yaml").expect_err("refused");
        assert!(
            errors[0].contains("extensionProviders[0].envoyFileAccessLog.path: \"access.log\" must be an absolute path"),
            "{errors:?}"
        );
        let format = "extensionProviders:\n- name: f\n  envoyFileAccessLog: { path: /tmp/a, logFormat: { text: x } }\n";
        let errors = MeshConfig::parse(format, "m.yaml").expect_err("refused");
        assert!(
            errors[0].contains("extensionProviders[].envoyFileAccessLog.logFormat: not supported"),
            "{errors:?}"
        );
        let both = "extensionProviders:\n- name: f\n  envoyFileAccessLog: { path: /tmp/a }\n  opentelemetry: { service: c, port: 4318, http: { path: /v1/traces } }\n";
        let errors = MeshConfig::parse(both, "m.yaml").expect_err("refused");
        assert!(errors[0].contains("give exactly one of"), "{errors:?}");
    }

    #[test]
    fn telemetry_naming_an_undefined_provider_is_refused_at_apply() {
        let m = MeshConfig::parse(MESH, "mesh.yaml").expect("valid");
        let telemetry = |body: &str| {
            let text = format!(
                "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata: {{ name: t, namespace: shop }}\nspec:\n{body}"
            );
            crate::control::istio::parse_yaml(&text, "t.yaml").expect("parses")
        };
        let good = telemetry(
            "  tracing: [{ providers: [{ name: otel }] }]\n  accessLogging: [{ providers: [{ name: envoy }] }]\n",
        );
        assert_eq!(m.undefined_providers(&good), Vec::<String>::new());
        let bad = telemetry(
            "  tracing: [{ providers: [{ name: zipkin }] }]\n  accessLogging: [{ providers: [{ name: otel }] }]\n",
        );
        let errors = m.undefined_providers(&bad);
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(
            errors[0]
                .contains("spec.tracing[0].providers[0].name: provider \"zipkin\" is not defined")
                && errors[0].contains("opentelemetry providers: otel"),
            "{errors:?}"
        );
        assert!(
            errors[1].contains(
                "spec.accessLogging[0].providers[0].name: provider \"otel\" is not defined"
            ) && errors[1].contains("envoyFileAccessLog providers: none"),
            "{errors:?}"
        );
    }
}
