//! `weft sidecar`: run the data plane from a bootstrap file — with a snapshot file, a control
//! plane to watch, or both (the file serves until the first push) — until SIGTERM or Ctrl-C,
//! then drain. With `"mtls"`, it first gets its certificate from the control plane and keeps
//! renewing it.

use anyhow::Context as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use weft::bootstrap::ControlPlaneRef;
use weft::control::channel::Endpoint;
use weft::control::client::WatchConfig;
use weft::identity::TrustBundle;
use weft::plugin::Compiler;
use weft::proxy::{Mtls, Sidecar};
use weft::snapshot::Snapshot;

/// Arguments of `weft sidecar`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The bootstrap file (JSON): service, listener addresses, app address, snapshot file.
    #[arg(long)]
    config: PathBuf,
}

/// How long the sidecar waits for its first certificate before giving up.
const CERTIFICATE_PATIENCE: Duration = Duration::from_secs(30);

/// What the watch needs from the bootstrap.
struct WatchParts {
    service: String,
    namespace: String,
    labels: std::collections::BTreeMap<String, String>,
    advertise: Option<SocketAddr>,
    control_plane: ControlPlaneRef,
}

impl WatchParts {
    /// The control plane (verified against `caFile`), the bundle it trusts, and the service's
    /// token.
    fn credentials(
        &self,
        base: &Path,
        mark: Option<u32>,
    ) -> anyhow::Result<(Endpoint, Arc<TrustBundle>, String)> {
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
        let replicas = cp
            .replicas
            .iter()
            .map(|a| {
                a.parse::<SocketAddr>()
                    .with_context(|| format!("controlPlane.replicas: {a:?} is not ip:port"))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        let server = server.with_mark(mark).with_replicas(&replicas);
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
        let address = self.advertise.unwrap_or(inbound);
        // 128 random bits: another workload cannot guess the id to take its registration,
        // and the control plane binds an id to the service that first used it.
        let nonce = weft::random::secure_bytes().context("random sidecar id")?;
        Ok(WatchConfig {
            server,
            token,
            id: format!("{}-{}", self.service, hex::encode(&nonce[..16])),
            service: self.service,
            namespace: self.namespace,
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
    let base = args.config.parent().unwrap_or(Path::new(".")).to_path_buf();
    let bootstrap = weft::bootstrap::parse(&text, &base)
        .with_context(|| format!("reading {}", args.config.display()))?;
    if let Some(domain) = &bootstrap.cluster_domain {
        weft::names::set_cluster_domain(domain)
            .map_err(|e| anyhow::anyhow!("clusterDomain: {e}"))?;
    }
    let mode = bootstrap.mtls;
    let snapshot = match &bootstrap.snapshot {
        Some(file) => {
            let path = base.join(file);
            let text = std::fs::read_to_string(&path)
                .with_context(|| format!("reading {}", path.display()))?;
            Some(Snapshot::from_json(&text)?)
        }
        None => None,
    };
    let watch = bootstrap.control_plane.map(|control_plane| WatchParts {
        service: bootstrap.sidecar.service.clone(),
        namespace: bootstrap.sidecar.namespace.clone(),
        labels: bootstrap.labels,
        advertise: bootstrap.advertise,
        control_plane,
    });
    let mut config = bootstrap.sidecar;
    // The sidecar keeps the compiler's memory out of its own (see plugin::Compiler).
    config.runtime.compiler = std::env::current_exe()
        .map(Compiler::Subprocess)
        .unwrap_or_default();
    // One worker (a sidecar pinned to one CPU, or `workerThreads: 1`): a current-thread
    // runtime, with no hand-offs between workers on the request path. bench/run.sh measured
    // the pinned pair at +12% req/s in the clear and +37% with mTLS against a one-worker
    // multi-thread runtime.
    let workers = bootstrap
        .worker_threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let runtime = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(workers)
            .enable_all()
            .build()?
    };
    runtime.block_on(async move {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut renewing = None;
        let credentials = watch
            .as_ref()
            .map(|w| w.credentials(&base, config.proxy_mark))
            .transpose()?;
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
                workload.id().service() == config.service
                    && workload.id().namespace() == config.namespace,
                "mtls: the controlPlane token is for {}, but this sidecar's service is {:?} in namespace {:?}",
                workload.id(),
                config.service,
                config.namespace
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
        // A second line once routes are in force, for whoever starts the app only then
        // (`weft run`, as Istio's holdApplicationUntilProxyStarts).
        let configured = async {
            let inputs = sidecar.inputs().clone();
            loop {
                let version = inputs.routes.load().snapshot.version.clone();
                if !version.is_empty() {
                    // Whoever started us may have stopped reading after the ready line: a
                    // closed stdout is no reason to stop serving.
                    use std::io::Write as _;
                    let mut out = std::io::stdout();
                    let _ = writeln!(out, "weft sidecar configured: snapshot {version}");
                    let _ = out.flush();
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            std::future::pending::<()>().await
        };
        tokio::select! {
            _ = super::wait_for_signal() => {}
            _ = watching => {}
            _ = configured => {}
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
