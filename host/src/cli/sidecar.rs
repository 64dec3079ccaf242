//! `weft sidecar`: run the data plane from a bootstrap file and a snapshot file, until SIGTERM
//! or Ctrl-C, then drain.

use anyhow::Context as _;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;
use weft::plugin::{Compiler, RuntimeConfig};
use weft::proxy::{Sidecar, SidecarConfig};
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
    snapshot: PathBuf,
    #[serde(default)]
    replay_limit: Option<usize>,
    #[serde(default)]
    drain_timeout: Option<String>,
    #[serde(default)]
    cache_dir: Option<PathBuf>,
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

/// Runs `weft sidecar`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let bootstrap: Bootstrap = serde_json::from_str(&text)
        .with_context(|| format!("parsing {}", args.config.display()))?;
    let base = args.config.parent().unwrap_or(Path::new(".")).to_path_buf();
    let snapshot_path = base.join(&bootstrap.snapshot);
    let config = settle(bootstrap, &base)?;
    let snapshot_text = std::fs::read_to_string(&snapshot_path)
        .with_context(|| format!("reading {}", snapshot_path.display()))?;
    let snapshot = Snapshot::from_json(&snapshot_text)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let sidecar = Sidecar::start(config).await?;
        sidecar.apply(snapshot).await?;
        println!(
            "weft sidecar ready: outbound {} inbound {} admin {}",
            sidecar.outbound, sidecar.inbound, sidecar.admin
        );
        wait_for_signal().await;
        eprintln!("weft sidecar: draining");
        sidecar.shutdown().await;
        Ok(())
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
