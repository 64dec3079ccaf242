//! `weft control`: run the control plane on a data directory until SIGTERM or Ctrl-C.

use std::net::SocketAddr;
use std::path::PathBuf;
use weft::control::server::{ControlConfig, ControlPlane};
use weft::snapshot::parse_duration;

/// Arguments of `weft control`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The data directory: resources, revisions, history, artifacts, tokens.
    #[arg(long, default_value = ".weft")]
    data: PathBuf,
    /// Where the API and the watch stream listen.
    #[arg(long, default_value = "127.0.0.1:15010")]
    listen: SocketAddr,
    /// How long a sidecar whose stream dropped stays registered (`10s`).
    #[arg(long, default_value = "10s")]
    lease: String,
}

/// Runs `weft control`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let mut config = ControlConfig::new(args.data.clone());
    config.listen = args.listen;
    config.lease = parse_duration(&args.lease).map_err(|e| anyhow::anyhow!("--lease: {e}"))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let cp = ControlPlane::start(config).await?;
        println!(
            "weft control ready: api {} data {} (operator token in {})",
            cp.addr,
            args.data.display(),
            args.data.join("operator.token").display()
        );
        super::wait_for_signal().await;
        eprintln!("weft control: stopping");
        cp.stop().await;
        Ok(())
    })
}
