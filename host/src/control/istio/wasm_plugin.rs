//! WasmPlugin (`extensions.istio.io`): the spec as written, its source and route scope, the
//! Istio fields Weft refuses, and the checks one document gets.

use super::*;

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
    /// `file:///abs/path.wasm`, `http(s)://…` or `oci://…` (fetched into the store at apply),
    /// or `sha256:<hex>` of a stored artifact.
    pub url: String,
    /// The sha256 (hex) the component must have.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// Istio's image pull policy for `http(s)://` and `oci://` URLs: `IfNotPresent` (fetch
    /// once), `Always` (fetch again at every apply); unset: `Always` for an OCI tag `latest`,
    /// else `IfNotPresent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_policy: Option<String>,
    /// The pull secret (`weft pull-secret`) in its namespace whose credentials pull an
    /// `oci://` image from a private registry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_pull_secret: Option<String>,
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
    /// The traffic it runs on: a call passes it when any selector matches; none: both sides.
    #[serde(default, rename = "match", skip_serializing_if = "Vec::is_empty")]
    pub traffic: Vec<TrafficSelector>,
    /// The routes (the target service's VirtualService `http` entry names) it runs for, from
    /// the annotation [`ROUTES_ANNOTATION`], not from the spec: an annotation keeps the
    /// document valid Istio. Empty: every route.
    #[serde(skip)]
    pub routes: Vec<String>,
    /// Its own sandbox bounds, from the `weft.io/plugin-*` annotations (see
    /// `plugin_limits`); none: the sidecar's.
    #[serde(skip)]
    pub limits: Option<crate::snapshot::PluginLimits>,
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
    /// The Service's namespace: the WasmPlugin's own, as Istio allows no other.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Istio's `TrafficSelector`: which side of a workload's calls a WasmPlugin runs on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct TrafficSelector {
    /// The side; unset: both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<TrafficMode>,
    /// The ports (on the client side the service port called, on the server side the app's
    /// port); none: every port.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PortSelector>,
}

/// Istio's `PortSelector`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortSelector {
    /// The port number.
    pub number: u32,
}

/// Istio's `WorkloadMode` of `istio.type.v1beta1`, which WasmPlugin selectors use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TrafficMode {
    /// Unset: as `CLIENT_AND_SERVER` for a WasmPlugin.
    #[serde(rename = "UNDEFINED")]
    Undefined,
    /// The workload's calls out (its sidecar's client side).
    #[serde(rename = "CLIENT")]
    Client,
    /// Calls into the workload (its sidecar's server side).
    #[serde(rename = "SERVER")]
    Server,
    /// Both.
    #[serde(rename = "CLIENT_AND_SERVER")]
    ClientAndServer,
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
    /// A URL the control plane downloads into its store when the resource is applied:
    /// `http://`, `https://` or `oci://`.
    Http(String),
    /// An artifact in the control plane's store, by sha256 (lower-case hex).
    Stored(String),
}

impl TrafficSelector {
    /// Whether it selects that side of a workload's calls.
    fn covers(&self, client: bool) -> bool {
        match self.mode {
            None | Some(TrafficMode::Undefined | TrafficMode::ClientAndServer) => true,
            Some(TrafficMode::Client) => client,
            Some(TrafficMode::Server) => !client,
        }
    }
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
        } else if url.starts_with("oci://") {
            crate::control::fetch::oci::Reference::parse(url)?;
            Ok(WasmSource::Http(url.to_string()))
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
                "{url:?}: not a URL Weft reads; use file:///path/to/plugin.wasm, http(s)://…, \
                 oci://registry/repository:tag or sha256:<digest> of a stored artifact"
            ))
        }
    }

    /// Whether its URL is fetched again at every apply, as Istio's `imagePullPolicy` says:
    /// `Always`; or, unset, an OCI reference to the tag `latest` (as Kubernetes pulls). An
    /// OCI reference by digest names content that cannot change, so it is fetched once.
    pub fn pulls_always(&self) -> bool {
        let oci = crate::control::fetch::oci::Reference::parse(self.url.trim()).ok();
        if oci.as_ref().is_some_and(|r| !r.is_mutable()) {
            return false;
        }
        match self.image_pull_policy.as_deref() {
            Some("Always") => true,
            Some("IfNotPresent") => false,
            _ => oci.is_some_and(|r| r.tag.as_deref().unwrap_or("latest") == "latest"),
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

    /// The keys of the destination services it is limited to, read in its own `namespace`
    /// (Istio refers to Services of the policy's namespace only); empty: every service.
    pub fn targets(&self, namespace: &str) -> BTreeSet<String> {
        self.target_refs
            .iter()
            .chain(self.target_ref.as_ref())
            .map(|t| crate::names::service_key(&t.name, namespace))
            .collect()
    }

    /// Whether it runs on the client side (`client`) or the server side of a workload's calls,
    /// as Istio reads `match`: any selector whose mode covers the side; none: both sides.
    pub fn runs_on(&self, client: bool) -> bool {
        self.traffic.is_empty() || self.traffic.iter().any(|t| t.covers(client))
    }

    /// The ports it runs for on that side: every port any selector covering the side names;
    /// empty (every port) when one of them names none.
    pub fn ports_on(&self, client: bool) -> Vec<u16> {
        let covering: Vec<&TrafficSelector> =
            self.traffic.iter().filter(|t| t.covers(client)).collect();
        if covering.is_empty() || covering.iter().any(|t| t.ports.is_empty()) {
            return Vec::new();
        }
        let mut ports: Vec<u16> = covering
            .iter()
            .flat_map(|t| &t.ports)
            .filter_map(|p| u16::try_from(p.number).ok())
            .collect();
        ports.sort_unstable();
        ports.dedup();
        ports
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

pub(in crate::control) const WASM_UNSUPPORTED: Unsupported = &[("", &["vmConfig"])];

/// A WasmPlugin's route scope from its annotation: comma-separated names, each trimmed and
/// non-empty, duplicates dropped; none without the annotation.
pub(super) fn read_routes(metadata: Option<&Value>, problems: &mut Problems) -> Vec<String> {
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
pub(super) fn check_route_scope(wp: &WasmPlugin, problems: &mut Problems) {
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

pub(super) fn check_wasm_plugin(wp: &WasmPlugin, namespace: &str, problems: &mut Problems) {
    let source = wp.source();
    if let Err(e) = &source {
        problems.at("spec.url", e);
    }
    // (A stored document's pulled URL reads back as its digest: that is an OCI image too.)
    if wp.image_pull_secret.is_some()
        && ["file://", "http://", "https://"]
            .iter()
            .any(|p| wp.url.trim().starts_with(p))
    {
        problems.at(
            "spec.imagePullSecret",
            "is for oci:// images (as in Istio); this url is not one",
        );
    }
    if let Some(p) = wp.image_pull_policy.as_deref()
        && !matches!(p, "IfNotPresent" | "Always" | "UNSPECIFIED_POLICY")
    {
        problems.at(
            "spec.imagePullPolicy",
            format!("unknown policy {p:?} (known: IfNotPresent, Always, UNSPECIFIED_POLICY)"),
        );
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
        if let Some(ns) = t
            .namespace
            .as_deref()
            .filter(|ns| !ns.is_empty() && *ns != namespace)
        {
            problems.at(
                format!("{at}.namespace"),
                format!(
                    "{ns:?}: a WasmPlugin targets Services of its own namespace {namespace:?} only, as in Istio"
                ),
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
    for (i, t) in wp.traffic.iter().enumerate() {
        for (j, p) in t.ports.iter().enumerate() {
            if !(1..=65_535).contains(&p.number) {
                problems.at(
                    format!("spec.match[{i}].ports[{j}].number"),
                    format!("{} is not a port (1 to 65535)", p.number),
                );
            }
        }
    }
    if wp.plugin_type == Some(PluginType::Network) {
        problems.at("spec.type", "NETWORK plugins are not supported by Weft yet");
    }
}
