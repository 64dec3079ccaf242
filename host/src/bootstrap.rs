//! The sidecar's bootstrap file (JSON), read once and checked whole: every problem is reported
//! together, and nothing here touches the filesystem or the network, so the same text always
//! reads the same (and a fuzzer can drive it).

use crate::identity::PeerAuthMode;
use crate::proxy::path::Normalization;
use crate::proxy::{SidecarConfig, Timeouts};
use crate::snapshot::parse_duration;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The bootstrap file as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Raw {
    service: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    cluster_domain: Option<String>,
    #[serde(default)]
    worker_threads: Option<usize>,
    outbound: String,
    inbound: String,
    admin: String,
    app: String,
    #[serde(default)]
    snapshot: Option<PathBuf>,
    #[serde(default)]
    control_plane: Option<ControlPlaneRef>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    advertise: Option<String>,
    #[serde(default)]
    replay_limit: Option<usize>,
    #[serde(default)]
    drain_timeout: Option<String>,
    #[serde(default)]
    plugin_deadline: Option<String>,
    #[serde(default)]
    cache_dir: Option<PathBuf>,
    #[serde(default)]
    mtls: Option<String>,
    #[serde(default)]
    timeouts: Option<RawTimeouts>,
    #[serde(default)]
    path_normalization: Option<String>,
    #[serde(default)]
    proxy_mark: Option<u32>,
    #[serde(default)]
    dns: Option<RawDns>,
    #[serde(default)]
    opaque_ports: Option<Vec<u16>>,
    #[serde(default)]
    stats: Option<String>,
    #[serde(default)]
    protocol_detection_timeout: Option<String>,
}

/// `dns` as written: where the pod's DNS proxy listens, and the resolvers it forwards to
/// (none given: the ones `/etc/resolv.conf` names when the sidecar starts).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawDns {
    listen: String,
    #[serde(default)]
    upstreams: Option<Vec<String>>,
}

/// `timeouts` as written: Istio durations; `0s` turns off the optional bounds.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawTimeouts {
    #[serde(default)]
    request_headers: Option<String>,
    #[serde(default)]
    idle: Option<String>,
    #[serde(default)]
    max_connection_duration: Option<String>,
    #[serde(default)]
    stream_idle: Option<String>,
    #[serde(default)]
    request: Option<String>,
}

/// Where the control plane is, the service's token, and the roots to verify it with.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ControlPlaneRef {
    /// Its API address (`ip:port`).
    pub address: String,
    /// Other replicas' API addresses: the sidecar moves to another when the one it uses
    /// cannot be reached.
    #[serde(default)]
    pub replicas: Vec<String>,
    /// The service's bootstrap token.
    #[serde(default)]
    pub token: Option<String>,
    /// A file holding the token.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// The mesh's trust bundle (`weft control` writes it to `<data>/bundle.pem`).
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// A bootstrap read and checked.
#[derive(Debug)]
pub struct Bootstrap {
    /// The data plane's settings (without mTLS, which needs a certificate first).
    pub sidecar: SidecarConfig,
    /// A snapshot file to serve until (or instead of) the control plane's, relative to the
    /// bootstrap's directory.
    pub snapshot: Option<PathBuf>,
    /// The control plane to watch.
    pub control_plane: Option<ControlPlaneRef>,
    /// Workload labels (`version: v1`), registered with the control plane.
    pub labels: BTreeMap<String, String>,
    /// The inbound address peers should use, when it differs from the listener's.
    pub advertise: Option<SocketAddr>,
    /// Mutual TLS between sidecars: STRICT or PERMISSIVE; none for plaintext.
    pub mtls: Option<PeerAuthMode>,
    /// The cluster domain callers' hosts are read in, when not `cluster.local` (the process
    /// sets it before it starts; see `crate::names::set_cluster_domain`).
    pub cluster_domain: Option<String>,
    /// Runtime worker threads: 1 is a current-thread runtime; none: one per CPU the process
    /// may use (so a sidecar pinned to one CPU gets a current-thread runtime).
    pub worker_threads: Option<usize>,
}

/// Why a bootstrap was refused.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    /// Not the JSON of a bootstrap (syntax, a wrong type, an unknown field).
    #[error("invalid bootstrap: {0}")]
    Json(String),
    /// Fields that do not hold together, every one named.
    #[error("invalid bootstrap:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Reads a bootstrap; relative paths in it are taken from `base` (its directory).
pub fn parse(text: &str, base: &Path) -> Result<Bootstrap, BootstrapError> {
    let raw: Raw = serde_json::from_str(text).map_err(|e| BootstrapError::Json(e.to_string()))?;
    let mut errors = Vec::new();
    let mut addr = |field: &str, text: &str| -> SocketAddr {
        text.parse().unwrap_or_else(|_| {
            errors.push(format!("{field}: {:?} is not ip:port", clip(text)));
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    };
    let (outbound, inbound, admin, app) = (
        addr("outbound", &raw.outbound),
        addr("inbound", &raw.inbound),
        addr("admin", &raw.admin),
        addr("app", &raw.app),
    );
    let advertise = raw.advertise.as_deref().map(|a| addr("advertise", a));
    let stats = raw.stats.as_deref().map(|a| addr("stats", a));
    let dns = raw.dns.as_ref().map(|d| crate::proxy::DnsConfig {
        listen: addr("dns.listen", &d.listen),
        upstreams: d.upstreams.as_ref().map(|list| {
            list.iter()
                .enumerate()
                .map(|(i, u)| addr(&format!("dns.upstreams[{i}]"), u))
                .collect()
        }),
    });
    let mut duration = |field: &str, text: Option<&str>| -> Option<Duration> {
        match text.map(parse_duration)? {
            Ok(d) => Some(d),
            Err(e) => {
                errors.push(format!("{field}: {e}"));
                None
            }
        }
    };
    let drain_timeout = duration("drainTimeout", raw.drain_timeout.as_deref());
    let plugin_deadline = duration("pluginDeadline", raw.plugin_deadline.as_deref());
    let t = raw.timeouts.unwrap_or_default();
    let request_headers = duration("timeouts.requestHeaders", t.request_headers.as_deref());
    let idle = duration("timeouts.idle", t.idle.as_deref());
    let max_connection = duration(
        "timeouts.maxConnectionDuration",
        t.max_connection_duration.as_deref(),
    );
    let stream_idle = duration("timeouts.streamIdle", t.stream_idle.as_deref());
    let request = duration("timeouts.request", t.request.as_deref());
    let detection = duration(
        "protocolDetectionTimeout",
        raw.protocol_detection_timeout.as_deref(),
    );

    let mut plugin_limits = crate::plugin::Limits::default();
    match plugin_deadline {
        Some(d) if d.is_zero() => errors.push("pluginDeadline: must be above zero".into()),
        Some(d) => plugin_limits.deadline = d,
        None => {}
    }
    let mut timeouts = Timeouts::default();
    for (field, value, slot) in [
        (
            "timeouts.requestHeaders",
            request_headers,
            &mut timeouts.connection.request_headers,
        ),
        ("timeouts.idle", idle, &mut timeouts.connection.idle),
        (
            "timeouts.streamIdle",
            stream_idle,
            &mut timeouts.stream_idle,
        ),
    ] {
        match value {
            Some(d) if d.is_zero() => errors.push(format!("{field}: must be above zero")),
            Some(d) => *slot = d,
            None => {}
        }
    }
    if let Some(d) = max_connection {
        timeouts.connection.max_duration = (!d.is_zero()).then_some(d);
    }
    if let Some(d) = request {
        timeouts.request = (!d.is_zero()).then_some(d);
    }
    if !crate::names::is_dns_label(&raw.service) {
        errors.push(format!(
            "service: {:?} is not a service name (1 to 63 of a-z, 0-9 and '-', starting and ending with a letter or digit)",
            clip(&raw.service)
        ));
    }
    let namespace = raw
        .namespace
        .unwrap_or_else(|| crate::names::DEFAULT_NAMESPACE.to_string());
    if raw.worker_threads.is_some_and(|n| !(1..=256).contains(&n)) {
        errors.push("workerThreads: must be from 1 to 256".into());
    }
    if let Some(d) = &raw.cluster_domain
        && let Err(e) = crate::names::check_domain(d)
    {
        errors.push(format!("clusterDomain: {e}"));
    }
    if !crate::names::is_dns_label(&namespace) {
        errors.push(format!(
            "namespace: {:?} is not a namespace (1 to 63 of a-z, 0-9 and '-', starting and ending with a letter or digit)",
            clip(&namespace)
        ));
    }
    let mtls = match raw.mtls.as_deref() {
        None => None,
        Some("STRICT") => Some(PeerAuthMode::Strict),
        Some("PERMISSIVE") => Some(PeerAuthMode::Permissive),
        Some(other) => {
            errors.push(format!(
                "mtls: {:?} is not STRICT or PERMISSIVE",
                clip(other)
            ));
            None
        }
    };
    let path_normalization = match raw.path_normalization.as_deref() {
        None => Normalization::default(),
        Some(text) => Normalization::parse(text).unwrap_or_else(|| {
            errors.push(format!(
                "pathNormalization: {:?} is not NONE, BASE (or DEFAULT), MERGE_SLASHES or DECODE_AND_MERGE_SLASHES",
                clip(text)
            ));
            Normalization::default()
        }),
    };
    if detection.is_some_and(|d| d.is_zero()) {
        errors.push(
            "protocolDetectionTimeout: must be above zero (a silent client would never be served)"
                .into(),
        );
    }
    if let Some(ports) = &raw.opaque_ports
        && let Some(i) = ports.iter().position(|p| *p == 0)
    {
        errors.push(format!("opaquePorts[{i}]: 0 is not a port"));
    }
    if raw.snapshot.is_none() && raw.control_plane.is_none() {
        errors.push("give a snapshot file, a controlPlane, or both".into());
    }
    if mtls.is_some() && raw.control_plane.is_none() {
        errors.push("mtls needs a controlPlane (it issues the certificates)".into());
    }
    if !errors.is_empty() {
        return Err(BootstrapError::Invalid(errors));
    }
    let mut sidecar = SidecarConfig::local(&raw.service, app);
    sidecar.namespace = namespace;
    sidecar.outbound = outbound;
    sidecar.inbound = inbound;
    sidecar.admin = admin;
    sidecar.replay_limit = raw.replay_limit.unwrap_or(sidecar.replay_limit);
    sidecar.drain_timeout = drain_timeout.unwrap_or(sidecar.drain_timeout);
    sidecar.base_dir = base.to_path_buf();
    sidecar.plugin_limits = plugin_limits;
    sidecar.runtime.cache_dir = raw.cache_dir.map(|d| base.join(d));
    sidecar.timeouts = timeouts;
    sidecar.path_normalization = path_normalization;
    sidecar.proxy_mark = raw.proxy_mark;
    sidecar.dns = dns;
    sidecar.stats = stats;
    sidecar.pod_ip = advertise.map(|a| a.ip()).filter(|ip| !ip.is_unspecified());
    sidecar.version = raw.labels.get("version").cloned();
    sidecar.app_label = raw.labels.get("app").cloned();
    if let Some(ports) = raw.opaque_ports {
        sidecar.opaque_ports = ports;
    }
    if let Some(d) = detection {
        sidecar.protocol_detection_timeout = d;
    }
    Ok(Bootstrap {
        sidecar,
        snapshot: raw.snapshot,
        control_plane: raw.control_plane,
        labels: raw.labels,
        advertise,
        mtls,
        cluster_domain: raw.cluster_domain,
        worker_threads: raw.worker_threads,
    })
}

/// Text echoed in an error, cut short.
fn clip(text: &str) -> std::borrow::Cow<'_, str> {
    crate::control::yaml::clip(text, 64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal(extra: &str) -> String {
        format!(
            r#"{{"service": "orders", "outbound": "127.0.0.1:15001", "inbound": "127.0.0.1:15006",
               "admin": "127.0.0.1:15000", "app": "127.0.0.1:8080", "snapshot": "s.json"{extra}}}"#
        )
    }

    #[test]
    fn defaults_are_envoys_and_every_field_reads() {
        let b = parse(&minimal(""), Path::new("/etc/weft")).expect("valid");
        assert_eq!(b.sidecar.timeouts, Timeouts::default());
        assert_eq!(
            b.sidecar.timeouts.connection.idle,
            Duration::from_secs(3600)
        );
        assert_eq!(b.sidecar.timeouts.stream_idle, Duration::from_secs(300));
        assert_eq!(b.sidecar.timeouts.request, None);
        let b = parse(
            &minimal(
                r#", "timeouts": {"requestHeaders": "2s", "idle": "1m", "maxConnectionDuration": "1h",
                     "streamIdle": "30s", "request": "1m30s"}, "cacheDir": "cache", "mtls": "STRICT",
                     "controlPlane": {"address": "127.0.0.1:15010", "token": "t"}"#,
            ),
            Path::new("/etc/weft"),
        )
        .expect("valid");
        let t = b.sidecar.timeouts;
        assert_eq!(t.connection.request_headers, Duration::from_secs(2));
        assert_eq!(t.connection.idle, Duration::from_secs(60));
        assert_eq!(t.connection.max_duration, Some(Duration::from_secs(3600)));
        assert_eq!(t.stream_idle, Duration::from_secs(30));
        assert_eq!(t.request, Some(Duration::from_secs(90)));
        assert_eq!(
            b.sidecar.runtime.cache_dir.as_deref(),
            Some(Path::new("/etc/weft/cache"))
        );
        assert_eq!(b.mtls, Some(PeerAuthMode::Strict));
        assert_eq!(b.sidecar.path_normalization, Normalization::Base);
        let b = parse(
            &minimal(r#", "pathNormalization": "MERGE_SLASHES""#),
            Path::new("."),
        )
        .expect("valid");
        assert_eq!(b.sidecar.path_normalization, Normalization::MergeSlashes);
    }

    #[test]
    fn every_problem_is_named_at_once() {
        let err = parse(
            &minimal(
                r#", "timeouts": {"requestHeaders": "0s", "idle": "1e300s"}, "mtls": "yes",
                     "pluginDeadline": "0s", "outbound": "nowhere", "pathNormalization": "base",
                     "workerThreads": 0"#,
            )
            .replace(r#""outbound": "127.0.0.1:15001","#, ""),
            Path::new("."),
        )
        .expect_err("invalid")
        .to_string();
        for needle in [
            "outbound: \"nowhere\" is not ip:port",
            "timeouts.requestHeaders: must be above zero",
            "timeouts.idle: invalid duration",
            "mtls: \"yes\" is not STRICT or PERMISSIVE",
            "pluginDeadline: must be above zero",
            "pathNormalization: \"base\" is not NONE",
            "workerThreads: must be from 1 to 256",
        ] {
            assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
        }
        let err = parse(&minimal(r#", "mtls": "STRICT""#), Path::new(".")).expect_err("no cp");
        assert!(
            err.to_string().contains("mtls needs a controlPlane"),
            "{err}"
        );
        let err = parse(&minimal(r#", "timeout": {}"#), Path::new(".")).expect_err("unknown");
        assert!(err.to_string().contains("unknown field `timeout`"), "{err}");
    }
}
