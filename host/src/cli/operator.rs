//! The operator's commands against a running control plane: `apply`, `get`, `delete`,
//! `status`, `token` and `plugin push`.

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::Method;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use weft::control::channel::Endpoint;
use weft::control::client::{ClientError, call};
use weft::control::{istio, yaml};

/// Where the control plane is and the credential to use.
#[derive(Debug, Clone, clap::Args)]
pub struct Conn {
    /// The control plane's API address.
    #[arg(long, env = "WEFT_SERVER", default_value = "127.0.0.1:15010")]
    server: SocketAddr,
    /// The operator token (default: read from DATA/operator.token).
    #[arg(long, env = "WEFT_TOKEN")]
    token: Option<String>,
    /// The control plane's data directory, to find the operator token and trust bundle in.
    #[arg(long, default_value = ".weft")]
    data: PathBuf,
    /// The mesh's trust bundle to verify the control plane with (default: DATA/bundle.pem).
    #[arg(long, env = "WEFT_CA_FILE")]
    ca_file: Option<PathBuf>,
}

impl Conn {
    /// The control plane's API address.
    pub(super) fn server(&self) -> SocketAddr {
        self.server
    }

    /// The trust bundle the control plane is verified with.
    pub(super) fn bundle_path(&self) -> PathBuf {
        self.ca_file
            .clone()
            .unwrap_or_else(|| self.data.join(weft::control::serving::BUNDLE_FILE))
    }

    fn token(&self) -> anyhow::Result<String> {
        if let Some(t) = &self.token {
            return Ok(t.clone());
        }
        let path = self.data.join("operator.token");
        std::fs::read_to_string(&path)
            .map(|t| t.trim().to_string())
            .with_context(|| {
                format!(
                    "no --token, no WEFT_TOKEN and no {} (run from the control plane's directory, \
                     or pass --data)",
                    path.display()
                )
            })
    }

    /// One API call with the operator token; the JSON answer, or the refusal as an error.
    pub(super) async fn call(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<serde_json::Value> {
        let token = self.token()?;
        let ca_file = self.bundle_path();
        let (server, _) = Endpoint::from_bundle_file(self.server, &ca_file).with_context(
            || "pass --ca-file (or WEFT_CA_FILE), or --data for the control plane's directory",
        )?;
        match call(&server, &token, method, path, body).await {
            Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)),
            Err(ClientError::Refused { body, status }) => {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                match v.get("errors").and_then(|e| e.as_array()) {
                    Some(list) => bail!(
                        "refused ({status}):\n  - {}",
                        list.iter()
                            .map(|e| e.as_str().unwrap_or_default().to_string())
                            .collect::<Vec<_>>()
                            .join("\n  - ")
                    ),
                    None => bail!("refused ({status}): {body}"),
                }
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// Arguments of `weft apply`.
#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// YAML files or directories of them (`.yaml`, `.yml`), applied as one change each.
    #[arg(short = 'f', long = "filename", required = true)]
    files: Vec<PathBuf>,
    /// Wait until every sidecar sent the change ACKs it, or one NACKs it; exits non-zero on a
    /// NACK or timeout. The default when standard output is a terminal.
    #[arg(long, conflicts_with = "no_wait")]
    wait: bool,
    /// Return once the control plane has taken the change.
    #[arg(long)]
    no_wait: bool,
    /// How long `--wait` waits.
    #[arg(long, default_value = "30s")]
    timeout: String,
    #[command(flatten)]
    conn: Conn,
}

/// Arguments of `weft get`.
#[derive(Debug, clap::Args)]
pub struct GetArgs {
    /// VirtualService (vs), DestinationRule (dr), WasmPlugin, AuthorizationPolicy (ap) or
    /// PeerAuthentication (pa).
    kind: String,
    /// One resource by name.
    name: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, default_value = "yaml", value_parser = ["yaml", "json"])]
    output: String,
    #[command(flatten)]
    conn: Conn,
}

/// Arguments of `weft delete`.
#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// The kind (vs, dr, WasmPlugin).
    kind: String,
    /// The name.
    name: String,
    /// The namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    #[command(flatten)]
    conn: Conn,
}

/// Arguments of commands that need only the connection.
#[derive(Debug, clap::Args)]
pub struct ConnArgs {
    #[command(flatten)]
    conn: Conn,
}

/// Arguments of `weft status`.
#[derive(Debug, clap::Args)]
pub struct StatusArgs {
    /// Output format: a table, or the control plane's JSON.
    #[arg(short = 'o', long, default_value = "table", value_parser = ["table", "json"])]
    output: String,
    #[command(flatten)]
    conn: Conn,
}

/// Arguments of `weft token`.
#[derive(Debug, clap::Args)]
pub struct TokenArgs {
    /// The service whose sidecars will use the token.
    service: String,
    /// The service's namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    #[command(flatten)]
    conn: Conn,
}

/// Arguments of `weft pull-secret`.
#[derive(Debug, clap::Args)]
pub struct PullSecretArgs {
    /// Its name, as a WasmPlugin's `imagePullSecret` gives it.
    name: String,
    /// The namespace of the WasmPlugins that may use it.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The registry it is for (`host[:port]`, as in `oci://host[:port]/…`).
    #[arg(long)]
    registry: String,
    /// The registry user.
    #[arg(long)]
    username: String,
    /// Read the password (or token) from standard input, so it stays out of the process list.
    #[arg(long, required = true)]
    password_stdin: bool,
    #[command(flatten)]
    conn: Conn,
}

/// Runs `weft pull-secret`: keeps a registry credential in the control plane.
pub fn pull_secret(args: PullSecretArgs) -> anyhow::Result<()> {
    let mut password = String::new();
    std::io::Read::read_to_string(&mut std::io::stdin(), &mut password)
        .context("reading the password from standard input")?;
    let body = serde_json::json!({
        "server": args.registry,
        "username": args.username,
        "password": password.trim_end_matches(['\r', '\n']),
    });
    let out = runtime()?.block_on(args.conn.call(
        Method::PUT,
        &format!(
            "/v1/pull-secrets/{}?namespace={}",
            args.name, args.namespace
        ),
        Bytes::from(body.to_string()),
    ))?;
    println!(
        "pull secret {} kept",
        out["pullSecret"].as_str().unwrap_or_default()
    );
    Ok(())
}

/// Arguments of `weft plugin push`.
#[derive(Debug, clap::Args)]
pub struct PushArgs {
    /// The component (`.wasm`).
    file: PathBuf,
    /// Publish it to a registry as a Wasm OCI artifact (`oci://registry/repository:tag`)
    /// rather than to the control plane's store; prints `oci://…@sha256:<manifest digest>`.
    to: Option<String>,
    /// Speak plain HTTP to the registry (a local one) rather than HTTPS.
    #[arg(long)]
    plain_http: bool,
    /// Its detached signature (`weft plugin sign`), pushed with it.
    #[arg(long)]
    signature: Option<PathBuf>,
    #[command(flatten)]
    conn: Conn,
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn yaml_files(path: &Path) -> anyhow::Result<Vec<PathBuf>> {
    if path.is_dir() {
        let mut files: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "yaml" || x == "yml"))
            .collect();
        files.sort();
        Ok(files)
    } else {
        Ok(vec![path.to_path_buf()])
    }
}

/// Runs `weft apply`.
pub fn apply(args: ApplyArgs) -> anyhow::Result<()> {
    use std::io::IsTerminal as _;
    let wait = args.wait || (!args.no_wait && std::io::stdout().is_terminal());
    let timeout = weft::snapshot::parse_duration(&args.timeout)
        .map_err(|e| anyhow::anyhow!("--timeout: {e}"))?;
    let rt = runtime()?;
    for f in args
        .files
        .iter()
        .flat_map(|p| yaml_files(p).unwrap_or_else(|_| vec![p.clone()]))
    {
        let text = std::fs::read(&f).with_context(|| format!("reading {}", f.display()))?;
        let name = f.display().to_string();
        let path = format!(
            "/v1/apply?source={}",
            name.replace(['&', '?', '#', ' '], "_")
        );
        let out = rt
            .block_on(args.conn.call(Method::POST, &path, Bytes::from(text)))
            .with_context(|| format!("applying {name}"))?;
        let list = |k: &str| -> Vec<String> {
            out.get(k)
                .and_then(|v| v.as_array())
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default()
        };
        for c in list("changed") {
            println!("{c} configured (revision {})", out["revision"]);
        }
        for c in list("unchanged") {
            println!("{c} unchanged");
        }
        for w in list("warnings") {
            eprintln!("warning: {w}");
        }
        if wait {
            let pushed: Vec<weft::control::wire::Pushed> =
                serde_json::from_value(out["pushed"].clone()).unwrap_or_default();
            let status = || args.conn.call(Method::GET, "/v1/status", Bytes::new());
            rt.block_on(super::wait::for_answers(status, &pushed, timeout))
                .with_context(|| format!("applying {name}"))?;
        }
    }
    Ok(())
}

/// Runs `weft get`.
pub fn get(args: GetArgs) -> anyhow::Result<()> {
    let kind: istio::Kind = args.kind.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let path = match &args.name {
        Some(n) => format!("/v1/resources/{kind}/{n}"),
        None => format!("/v1/resources/{kind}"),
    };
    let out = runtime()?.block_on(args.conn.call(Method::GET, &path, Bytes::new()))?;
    let docs = out.as_array().cloned().unwrap_or_default();
    if args.output == "json" {
        let v = if args.name.is_some() && docs.len() == 1 {
            docs[0].clone()
        } else {
            serde_json::Value::Array(docs)
        };
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let texts: Vec<String> = docs.iter().map(yaml::to_yaml).collect();
        print!("{}", texts.join("---\n"));
    }
    Ok(())
}

/// Runs `weft delete`.
pub fn delete(args: DeleteArgs) -> anyhow::Result<()> {
    let kind: istio::Kind = args.kind.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    let path = format!(
        "/v1/resources/{kind}/{}?namespace={}",
        args.name, args.namespace
    );
    let out = runtime()?.block_on(args.conn.call(Method::DELETE, &path, Bytes::new()))?;
    println!(
        "{kind} {}/{} deleted (revision {})",
        args.namespace, args.name, out["revision"]
    );
    Ok(())
}

/// Runs `weft status`.
pub fn status(args: StatusArgs) -> anyhow::Result<()> {
    let rt = runtime()?;
    let out = rt.block_on(args.conn.call(Method::GET, "/v1/status", Bytes::new()))?;
    if args.output == "json" {
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("revision {}", out["revision"]);
    println!(
        "{:<12} {:<22} {:<26} {:<10} {:<12} {:<11} LABELS",
        "SERVICE", "ADDRESS", "VERSION", "STATE", "CONNECTED", "LAST SEEN"
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    for s in out["sidecars"].as_array().cloned().unwrap_or_default() {
        let sent = s["sent"].as_str().unwrap_or("");
        let acked = s["acked"].as_str().unwrap_or("");
        let state = match s.get("nack").and_then(|n| n.as_str()) {
            Some(_) => "NACK",
            None if sent == acked => "ACK",
            None => "pending",
        };
        let seen = now.saturating_sub(s["lastSeenMs"].as_u64().unwrap_or(0)) as f64 / 1000.0;
        let labels: Vec<String> = s["labels"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or("")))
                    .collect()
            })
            .unwrap_or_default();
        println!(
            "{:<12} {:<22} {:<26} {:<10} {:<12} {:<11} {}",
            s["service"].as_str().unwrap_or(""),
            s["address"].as_str().unwrap_or(""),
            acked,
            state,
            s["connected"],
            format!("{seen:.1}s ago"),
            labels.join(",")
        );
        if let Some(reason) = s.get("nack").and_then(|n| n.as_str()) {
            println!("    NACK: {reason}");
        }
    }
    let ejected = rt.block_on(ejections(&out));
    if !ejected.is_empty() {
        println!("\nEJECTED, as each caller's sidecar sees it");
        println!("{:<12} {:<22} {:<12} LEFT", "SERVICE", "ENDPOINT", "CALLER");
        for (service, endpoint, caller, left_ms) in ejected {
            println!(
                "{service:<12} {endpoint:<22} {caller:<12} {:.1}s",
                left_ms as f64 / 1000.0
            );
        }
    }
    Ok(())
}

/// The endpoints each connected sidecar has ejected now (service, endpoint, the caller's
/// service, milliseconds left), read from its admin `/endpoints`; a sidecar that does not
/// answer within 2 s is left out.
async fn ejections(status: &serde_json::Value) -> Vec<(String, String, String, u64)> {
    use http_body_util::{BodyExt, Empty};
    let client: hyper_util::client::legacy::Client<_, Empty<Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut out = Vec::new();
    for s in status["sidecars"].as_array().into_iter().flatten() {
        let (Some(admin), true) = (s["admin"].as_str(), s["connected"] == true) else {
            continue;
        };
        let Ok(uri) = format!("http://{admin}/endpoints").parse::<http::Uri>() else {
            continue;
        };
        let asked = async {
            let resp = client.get(uri).await.ok()?;
            let body = resp.into_body().collect().await.ok()?.to_bytes();
            serde_json::from_slice::<serde_json::Value>(&body).ok()
        };
        let Ok(Some(list)) = tokio::time::timeout(std::time::Duration::from_secs(2), asked).await
        else {
            continue;
        };
        let caller = s["service"].as_str().unwrap_or("").to_string();
        for e in list.as_array().into_iter().flatten() {
            let left = e["ejectedForMs"].as_u64().unwrap_or(0);
            if left > 0 {
                out.push((
                    e["service"].as_str().unwrap_or("").to_string(),
                    e["address"].as_str().unwrap_or("").to_string(),
                    caller.clone(),
                    left,
                ));
            }
        }
    }
    out.sort();
    out
}

/// Runs `weft token`.
pub fn token(args: TokenArgs) -> anyhow::Result<()> {
    let out = runtime()?.block_on(args.conn.call(
        Method::GET,
        &format!("/v1/tokens/{}?namespace={}", args.service, args.namespace),
        Bytes::new(),
    ))?;
    println!("{}", out["token"].as_str().unwrap_or_default());
    Ok(())
}

/// Runs `weft ca rotate` or `weft ca retire`.
pub fn ca(args: ConnArgs, verb: &str) -> anyhow::Result<()> {
    let out = runtime()?.block_on(args.conn.call(
        Method::POST,
        &format!("/v1/ca/{verb}"),
        Bytes::new(),
    ))?;
    let roots = out["roots"].as_u64().unwrap_or(0);
    // Each step must reach every sidecar (at its next renewal) before the next one.
    match verb {
        "rotate" => println!(
            "staged: the bundle holds {roots} roots; once every sidecar has renewed, run \
             `weft ca activate`"
        ),
        "activate" => println!(
            "activated: new certificates come from the new root; once every sidecar has \
             renewed, run `weft ca retire`"
        ),
        _ => println!("retired: the bundle holds {roots} root(s)"),
    }
    Ok(())
}

/// Runs `weft plugin push`.
pub fn push(args: PushArgs) -> anyhow::Result<()> {
    let bytes =
        std::fs::read(&args.file).with_context(|| format!("reading {}", args.file.display()))?;
    let signature = match &args.signature {
        Some(path) => Some(
            std::fs::read_to_string(path)
                .with_context(|| format!("reading {}", path.display()))?
                .trim()
                .to_string(),
        ),
        None => None,
    };
    if let Some(to) = &args.to {
        use weft::control::fetch::oci;
        let reference = oci::Reference::parse(to).map_err(anyhow::Error::msg)?;
        let digest = runtime()?
            .block_on(async {
                let digest = oci::push(&reference, &bytes, args.plain_http).await?;
                if let Some(s) = &signature {
                    oci::push_signature(&reference, &digest, s, args.plain_http).await?;
                }
                Ok::<_, String>(digest)
            })
            .map_err(|e| anyhow::anyhow!("pushing to {to}: {e}"))?;
        println!(
            "oci://{}/{}@sha256:{digest}",
            reference.registry, reference.repository
        );
        return Ok(());
    }
    let path = match &signature {
        Some(s) => format!("/v1/artifacts?signature={s}"),
        None => "/v1/artifacts".to_string(),
    };
    let out = runtime()?.block_on(args.conn.call(Method::POST, &path, Bytes::from(bytes)))?;
    println!("sha256:{}", out["sha256"].as_str().unwrap_or_default());
    Ok(())
}
