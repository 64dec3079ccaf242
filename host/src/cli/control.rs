//! `weft control`: run the control plane (and mesh CA) on a data directory until SIGTERM or
//! Ctrl-C.

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
    /// The SPIFFE trust domain of the mesh's workload certificates.
    #[arg(long, default_value = weft::control::server::DEFAULT_TRUST_DOMAIN)]
    trust_domain: String,
    /// How long a workload certificate is valid (`24h`; `30s` for tests of renewal).
    #[arg(long, default_value = "24h")]
    cert_lifetime: String,
    /// The cluster domain of fully qualified hosts (`payments.shop.svc.<domain>`); sidecars
    /// need the same in their bootstrap's `clusterDomain`.
    #[arg(long, default_value = weft::names::DEFAULT_CLUSTER_DOMAIN)]
    cluster_domain: String,
    /// Istio's MeshConfig (YAML, as istiod's `mesh` ConfigMap key): the extension providers
    /// Telemetry resources name (OpenTelemetry tracing) and the default providers.
    #[arg(long)]
    mesh_config: Option<PathBuf>,
    /// A registry (`host:port`) to pull `oci://` plugins from over plain HTTP rather than
    /// HTTPS (a local registry); repeat for several.
    #[arg(long = "plain-http-registry")]
    plain_http_registries: Vec<String>,
    /// A public key (PEM, ed25519) whose signatures make a plugin trusted; repeat for several.
    #[arg(long = "plugin-signing-key")]
    plugin_signing_keys: Vec<PathBuf>,
    /// A namespace whose WasmPlugins must be signed by a trusted key (`*`: every namespace);
    /// repeat for several.
    #[arg(long = "require-signed-plugins")]
    require_signed_plugins: Vec<String>,
    /// Keep the state in PostgreSQL (`postgres://user[:password]@host[:port]/db`) rather than
    /// in the data directory: any number of replicas may share it. Needs a store key.
    #[arg(long)]
    store: Option<String>,
    /// A file holding the store key (64 hex digits), the same on every replica: secrets and
    /// the CA's keys are sealed with it in the database. Or set `WEFT_STORE_KEY`.
    #[arg(long)]
    store_key_file: Option<PathBuf>,
    /// PEM roots to verify the database's TLS certificate with (default: the system's). TLS
    /// is used as the store URL's `sslmode` says: `prefer` (default), `require`, `disable`.
    #[arg(long)]
    store_ca_file: Option<PathBuf>,
}

/// The store the flags name.
fn store_config(args: &Args) -> anyhow::Result<weft::control::server::StoreConfig> {
    use weft::control::server::StoreConfig;
    use weft::control::store::SealKey;
    let Some(url) = &args.store else {
        if args.store_key_file.is_some() || args.store_ca_file.is_some() {
            anyhow::bail!(
                "--store-key-file and --store-ca-file are for --store postgres://...: the file store needs neither"
            );
        }
        return Ok(StoreConfig::Files);
    };
    if !url.starts_with("postgres://") && !url.starts_with("postgresql://") {
        anyhow::bail!("--store: expected postgres://user@host:port/db, found {url:?}");
    }
    let text = match (&args.store_key_file, std::env::var("WEFT_STORE_KEY")) {
        (Some(path), _) => std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--store-key-file {}: {e}", path.display()))?,
        (None, Ok(key)) => key,
        (None, Err(_)) => anyhow::bail!(
            "--store needs a store key: --store-key-file PATH or WEFT_STORE_KEY (64 hex digits, the same on every replica)"
        ),
    };
    let key = SealKey::from_hex(&text).map_err(|e| anyhow::anyhow!("store key: {e}"))?;
    let ca = match &args.store_ca_file {
        Some(path) => Some(
            std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("--store-ca-file {}: {e}", path.display()))?,
        ),
        None => None,
    };
    Ok(StoreConfig::Postgres {
        url: url.clone(),
        key,
        ca,
    })
}

/// Runs `weft control`.
pub fn run(args: Args) -> anyhow::Result<()> {
    weft::names::set_cluster_domain(&args.cluster_domain)
        .map_err(|e| anyhow::anyhow!("--cluster-domain: {e}"))?;
    let mut config = ControlConfig::new(args.data.clone());
    config.listen = args.listen;
    config.store = store_config(&args)?;
    config.lease = parse_duration(&args.lease).map_err(|e| anyhow::anyhow!("--lease: {e}"))?;
    config.trust_domain = args.trust_domain.clone();
    config.plain_http_registries = args.plain_http_registries.clone();
    for path in &args.plugin_signing_keys {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--plugin-signing-key {}: {e}", path.display()))?;
        let name = path.display().to_string();
        config.signing.keys.push(
            weft::control::signing::TrustedKey::from_pem(&name, &text)
                .map_err(|e| anyhow::anyhow!("--plugin-signing-key {e}"))?,
        );
    }
    if !args.require_signed_plugins.is_empty() && config.signing.keys.is_empty() {
        anyhow::bail!(
            "--require-signed-plugins needs at least one --plugin-signing-key: no plugin could ever be trusted"
        );
    }
    config.signing.namespaces = args.require_signed_plugins.clone();
    config.cert_lifetime =
        parse_duration(&args.cert_lifetime).map_err(|e| anyhow::anyhow!("--cert-lifetime: {e}"))?;
    if let Some(path) = &args.mesh_config {
        let text = std::fs::read_to_string(path)
            .map_err(|e| anyhow::anyhow!("--mesh-config {}: {e}", path.display()))?;
        config.mesh_config =
            weft::control::mesh_config::MeshConfig::parse(&text, &path.display().to_string())
                .map_err(|e| anyhow::anyhow!("--mesh-config:\n  {}", e.join("\n  ")))?;
    }
    // Pushed artifacts are compiled to check them; a child keeps a compiler blow-up on a
    // hostile artifact, and the compiler's memory, out of the control plane.
    config.compiler = std::env::current_exe()
        .map(weft::plugin::Compiler::Subprocess)
        .unwrap_or_default();
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
