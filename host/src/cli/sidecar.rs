//! `weft sidecar`: run the data plane from a bootstrap file — with a snapshot file, a control
//! plane to watch, or both (the file serves until the first push) — until SIGTERM or Ctrl-C,
//! then drain. With `"mtls"`, it first gets its certificate from the control plane and keeps
//! renewing it.

use anyhow::Context as _;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use weft::control::channel::Endpoint;
use weft::control::client::WatchConfig;
use weft::identity::PeerAuthMode;
use weft::identity::TrustBundle;
use weft::plugin::{Compiler, RuntimeConfig};
use weft::proxy::{Mtls, Sidecar, SidecarConfig};
use weft::snapshot::{Snapshot, parse_duration};

/// Arguments of `weft sidecar`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The bootstrap file (JSON): service, listener addresses, app address, snapshot file.
    #[arg(long)]
    config: PathBuf,
}

/// The bootstrap file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Bootstrap {
    service: String,
    outbound: String,
    inbound: String,
    admin: String,
    app: String,
    #[serde(default)]
    snapshot: Option<PathBuf>,
    #[serde(default)]
    control_plane: Option<ControlPlaneRef>,
    /// Workload labels (`version: v1`), registered with the control plane.
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    /// The inbound address peers should use, when it differs from `inbound`.
    #[serde(default)]
    advertise: Option<String>,
    #[serde(default)]
    replay_limit: Option<usize>,
    #[serde(default)]
    drain_timeout: Option<String>,
    /// Longest a plugin hook call may run (`"10ms"`).
    #[serde(default)]
    plugin_deadline: Option<String>,
    #[serde(default)]
    cache_dir: Option<PathBuf>,
    /// Mutual TLS between sidecars: `STRICT` or `PERMISSIVE`; absent, plaintext.
    #[serde(default)]
    mtls: Option<String>,
}

/// How long the sidecar waits for its first certificate before giving up.
const CERTIFICATE_PATIENCE: Duration = Duration::from_secs(30);

/// The `mtls` field: absent means plaintext.
fn mtls_mode(text: Option<&str>) -> anyhow::Result<Option<PeerAuthMode>> {
    match text {
        None => Ok(None),
        Some("STRICT") => Ok(Some(PeerAuthMode::Strict)),
        Some("PERMISSIVE") => Ok(Some(PeerAuthMode::Permissive)),
        Some(other) => {
            anyhow::bail!("invalid bootstrap: mtls: {other:?} is not STRICT or PERMISSIVE")
        }
    }
}

/// Where the control plane is, the service's token, and the roots to verify it with.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ControlPlaneRef {
    address: String,
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    token_file: Option<PathBuf>,
    /// The mesh's trust bundle (`weft control` writes it to `<data>/bundle.pem`).
    #[serde(default)]
    ca_file: Option<PathBuf>,
}

/// Checks every field, reporting all problems at once.
fn settle(b: Bootstrap, base: &Path) -> anyhow::Result<SidecarConfig> {
    let mut errors = Vec::new();
    let mut addr = |field: &str, text: &str| -> SocketAddr {
        text.parse().unwrap_or_else(|_| {
            errors.push(format!("{field}: {text:?} is not ip:port"));
            SocketAddr::from(([127, 0, 0, 1], 0))
        })
    };
    let (outbound, inbound, admin, app) = (
        addr("outbound", &b.outbound),
        addr("inbound", &b.inbound),
        addr("admin", &b.admin),
        addr("app", &b.app),
    );
    let drain_timeout = match b.drain_timeout.as_deref().map(parse_duration) {
        None => Duration::from_secs(10),
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            errors.push(format!("drainTimeout: {e}"));
            Duration::from_secs(10)
        }
    };
    let mut plugin_limits = weft::plugin::Limits::default();
    match b.plugin_deadline.as_deref().map(parse_duration) {
        None => {}
        Some(Ok(d)) if !d.is_zero() => plugin_limits.deadline = d,
        Some(Ok(_)) => errors.push("pluginDeadline: must be above zero".into()),
        Some(Err(e)) => errors.push(format!("pluginDeadline: {e}")),
    }
    if b.service.is_empty() {
        errors.push("service: must not be empty".into());
    }
    anyhow::ensure!(
        errors.is_empty(),
        "invalid bootstrap:\n  - {}",
        errors.join("\n  - ")
    );
    Ok(SidecarConfig {
        service: b.service,
        outbound,
        inbound,
        admin,
        app,
        replay_limit: b.replay_limit.unwrap_or(64 * 1024),
        drain_timeout,
        base_dir: base.to_path_buf(),
        artifact_dir: PathBuf::from("artifacts"),
        plugin_limits,
        mtls: None,
        runtime: RuntimeConfig {
            cache_dir: b.cache_dir.map(|d| base.join(d)),
            // The sidecar keeps the compiler's memory out of its own (see plugin::Compiler).
            compiler: std::env::current_exe()
                .map(Compiler::Subprocess)
                .unwrap_or_default(),
            ..RuntimeConfig::default()
        },
    })
}

/// What the watch needs from the bootstrap, taken before the rest is settled.
struct WatchParts {
    service: String,
    labels: std::collections::BTreeMap<String, String>,
    advertise: Option<String>,
    control_plane: ControlPlaneRef,
}

impl WatchParts {
    /// The control plane (verified against `caFile`), the bundle it trusts, and the service's
    /// token.
    fn credentials(&self, base: &Path) -> anyhow::Result<(Endpoint, Arc<TrustBundle>, String)> {
        let cp = &self.control_plane;
        let addr: SocketAddr = cp
            .address
            .parse()
            .with_context(|| format!("controlPlane.address: {:?} is not ip:port", cp.address))?;
        let ca_file = cp.ca_file.as_ref().context(
            "controlPlane.caFile is required: the mesh's trust bundle, which `weft control` \
             writes to <data>/bundle.pem (the control plane is only reached over verified TLS)",
        )?;
        let (server, bundle) =
            Endpoint::from_bundle_file(addr, &base.join(ca_file)).context("controlPlane.caFile")?;
        let token = match (&cp.token, &cp.token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(f)) => std::fs::read_to_string(base.join(f))
                .with_context(|| format!("controlPlane.tokenFile: reading {}", f.display()))?
                .trim()
                .to_string(),
            (None, None) => anyhow::bail!("controlPlane: token or tokenFile is required"),
        };
        Ok((server, bundle, token))
    }

    /// The watch, once the inbound listener's address is known.
    fn config(
        self,
        server: Endpoint,
        token: String,
        inbound: SocketAddr,
        admin: SocketAddr,
    ) -> anyhow::Result<WatchConfig> {
        let address = match &self.advertise {
            Some(a) => a
                .parse()
                .with_context(|| format!("advertise: {a:?} is not ip:port"))?,
            None => inbound,
        };
        // 128 random bits: another workload cannot guess the id to take its registration,
        // and the control plane binds an id to the service that first used it.
        let nonce = weft::random::secure_bytes().context("random sidecar id")?;
        Ok(WatchConfig {
            server,
            token,
            id: format!("{}-{}", self.service, hex::encode(&nonce[..16])),
            service: self.service,
            labels: self.labels,
            address,
            admin: Some(admin),
        })
    }
}

/// Runs `weft sidecar`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let mut bootstrap: Bootstrap = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", args.config.display()))?;
    let base = args.config.parent().unwrap_or(Path::new(".")).to_path_buf();
    anyhow::ensure!(
        bootstrap.snapshot.is_some() || bootstrap.control_plane.is_some(),
        "invalid bootstrap: give a snapshot file, a controlPlane, or both"
    );
    let mode = mtls_mode(bootstrap.mtls.as_deref())?;
    anyhow::ensure!(
        mode.is_none() || bootstrap.control_plane.is_some(),
        "invalid bootstrap: mtls needs a controlPlane (it issues the certificates)"
    );
    let snapshot = match &bootstrap.snapshot {
        Some(file) => {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Some(Snapshot::from_json(&text)?)
        }
        None => None,
    };
    let watch = bootstrap
        .control_plane
        .take()
        .map(|control_plane| WatchParts {
            service: bootstrap.service.clone(),
            labels: bootstrap.labels.clone(),
            advertise: bootstrap.advertise.clone(),
            control_plane,
        });
    let mut config = settle(bootstrap, &base)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut renewing = None;
        let credentials = watch.as_ref().map(|w| w.credentials(&base)).transpose()?;
        if let (Some(mode), Some((server, bundle, token))) = (mode, &credentials) {
            let workload =
                weft::control::client::obtain(server, bundle, token, CERTIFICATE_PATIENCE)
                    .await
                    .with_context(|| {
                        format!(
                            "mtls: getting this sidecar's certificate from {}",
                            server.addr
                        )
                    })?;
            anyhow::ensure!(
                workload.id().service() == config.service,
                "mtls: the controlPlane token is for {}, but this sidecar's service is {:?}",
                workload.id(),
                config.service
            );
            eprintln!("weft sidecar: identity {}", workload.id());
            renewing = Some(tokio::spawn(weft::control::client::renew_loop(
                server.clone(),
                token.clone(),
                workload.clone(),
                bundle.clone(),
                stopped.clone(),
            )));
            config.mtls = Some(Mtls {
                workload,
                bundle: bundle.clone(),
                mode,
            });
        }
        let sidecar = Sidecar::start(config).await?;
        if let Some(snapshot) = snapshot {
            sidecar.apply(snapshot).await?;
        }
        let watch = match (watch, credentials) {
            (Some(w), Some((server, _, token))) => {
                Some(w.config(server, token, sidecar.inbound, sidecar.admin)?)
            }
            _ => None,
        };
        println!(
            "weft sidecar ready: outbound {} inbound {} admin {}",
            sidecar.outbound, sidecar.inbound, sidecar.admin
        );
        let watching = async {
            match watch {
                Some(cfg) => weft::control::client::run(cfg, &sidecar, stopped).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = super::wait_for_signal() => {}
            _ = watching => {}
        }
        let _ = stop.send(true);
        eprintln!("weft sidecar: draining");
        sidecar.shutdown().await;
        if let Some(task) = renewing {
            let _ = task.await;
        }
        Ok(())
    })
}
