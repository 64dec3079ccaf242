//! The demo's mesh as real processes: `weft control` and one `weft sidecar` per pod, started
//! from this executable, each logging to the work directory and stopped (with its children's
//! pipes closed) when dropped, so neither Ctrl-C nor an error leaves a process behind.

use anyhow::{Context as _, bail};
use bytes::Bytes;
use http::Method;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};
use weft::control::channel::Endpoint;
use weft::control::client::call;

/// One child process and the words of its ready line.
pub struct Proc {
    child: Child,
    words: Vec<String>,
    // Kept open: the child may still write to its stdout.
    _stdout: BufReader<ChildStdout>,
}

impl Proc {
    /// Starts this executable with `args`, logging to `log`, and waits for its ready line.
    fn start(args: &[&str], log: &Path) -> anyhow::Result<Proc> {
        let exe = std::env::current_exe().context("finding the weft executable")?;
        let log_file =
            std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
        let mut child = Command::new(exe)
            .args(args)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("starting weft {}", args.join(" ")))?;
        let Some(stdout) = child.stdout.take() else {
            bail!("weft {}: no stdout", args.join(" "));
        };
        let mut stdout = BufReader::new(stdout);
        let mut line = String::new();
        let read = stdout.read_line(&mut line);
        if read.is_err() || !line.contains("ready") {
            let _ = child.kill();
            let _ = child.wait();
            let log_text = std::fs::read_to_string(log).unwrap_or_default();
            bail!(
                "weft {} did not start:\n{}",
                args.join(" "),
                log_text
                    .lines()
                    .rev()
                    .take(10)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
        Ok(Proc {
            child,
            words: line.split_whitespace().map(String::from).collect(),
            _stdout: stdout,
        })
    }

    /// The address after `key` in its ready line.
    pub fn addr(&self, key: &str) -> anyhow::Result<SocketAddr> {
        let i = self
            .words
            .iter()
            .position(|w| w == key)
            .with_context(|| format!("no {key} in the ready line {:?}", self.words))?;
        let word = self.words.get(i + 1).context("ready line cut short")?;
        word.parse()
            .with_context(|| format!("{key} {word:?} is not an address"))
    }

    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The control plane and what talking to it needs.
pub struct ControlPlane {
    /// The process, stopped when this is dropped.
    _proc: Proc,
    /// Its API, verified against its bundle.
    pub endpoint: Endpoint,
    /// The operator token.
    pub token: String,
    /// `<data>/bundle.pem`, every sidecar's `caFile`.
    pub bundle: PathBuf,
    /// Its data directory (the operator's credentials, for `weft run --data`).
    pub data: PathBuf,
}

impl ControlPlane {
    /// Starts `weft control` on a fresh data directory under `work`, its API on `listen`.
    pub fn start(work: &Path, listen: &str) -> anyhow::Result<ControlPlane> {
        let data = work.join("control");
        let data_arg = data.to_str().context("work directory is not UTF-8")?;
        let proc = Proc::start(
            &[
                "control", "--data", data_arg, "--listen", listen, "--lease", "3s",
            ],
            &work.join("control.log"),
        )?;
        let bundle = data.join("bundle.pem");
        let (endpoint, _) = Endpoint::from_bundle_file(proc.addr("api")?, &bundle)?;
        let token = std::fs::read_to_string(data.join("operator.token"))
            .context("reading the operator token")?
            .trim()
            .to_string();
        Ok(ControlPlane {
            _proc: proc,
            endpoint,
            token,
            bundle,
            data,
        })
    }

    /// One API call with the operator token; the JSON answer.
    pub async fn api(
        &self,
        method: Method,
        path: &str,
        body: Bytes,
    ) -> anyhow::Result<serde_json::Value> {
        let bytes = call(&self.endpoint, &self.token, method, path, body)
            .await
            .with_context(|| format!("control plane {path}"))?;
        Ok(serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null))
    }

    /// The snapshot version each connected sidecar was last sent, by sidecar id.
    pub async fn sent(&self) -> anyhow::Result<BTreeMap<String, (String, bool)>> {
        let st = self.api(Method::GET, "/v1/status", Bytes::new()).await?;
        let mut out = BTreeMap::new();
        for s in st["sidecars"].as_array().cloned().unwrap_or_default() {
            if s["connected"] != true {
                continue;
            }
            let sent = s["sent"].as_str().unwrap_or_default().to_string();
            let acked = s["acked"].as_str().unwrap_or_default() == sent && s.get("nack").is_none();
            out.insert(
                s["id"].as_str().unwrap_or_default().to_string(),
                (sent, acked),
            );
        }
        Ok(out)
    }

    /// Waits until `n` sidecars are connected and each runs a version other than the one it
    /// had in `before`; how long that took.
    pub async fn followed(
        &self,
        n: usize,
        before: &BTreeMap<String, (String, bool)>,
        within: Duration,
    ) -> anyhow::Result<Duration> {
        let started = Instant::now();
        loop {
            let now = self.sent().await?;
            let done = now.len() >= n
                && now.iter().all(|(id, (sent, acked))| {
                    *acked && before.get(id).is_none_or(|(old, _)| old != sent)
                });
            if done {
                return Ok(started.elapsed());
            }
            if started.elapsed() > within {
                bail!("the sidecars did not all follow within {within:?}: {now:?}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A sidecar process and its listeners.
pub struct SidecarProc {
    /// The process.
    pub proc: Proc,
    /// Where its app sends outbound calls.
    pub outbound: SocketAddr,
    /// Its admin endpoint (`/metrics`).
    pub admin: SocketAddr,
}

/// Starts a STRICT-mTLS sidecar for `service` (`version`) in front of `app`.
pub async fn sidecar(
    work: &Path,
    cp: &ControlPlane,
    name: &str,
    service: &str,
    version: &str,
    app: SocketAddr,
) -> anyhow::Result<SidecarProc> {
    let token = cp
        .api(Method::GET, &format!("/v1/tokens/{service}"), Bytes::new())
        .await?["token"]
        .as_str()
        .context("no token in the answer")?
        .to_string();
    let bootstrap = serde_json::json!({
        "service": service,
        "outbound": "127.0.0.1:0", "inbound": "127.0.0.1:0", "admin": "127.0.0.1:0",
        "app": app.to_string(),
        "labels": {"version": version},
        "controlPlane": {"address": cp.endpoint.addr.to_string(), "token": token,
                         "caFile": cp.bundle},
        "mtls": "STRICT",
        "cacheDir": work.join("cache"),
        "drainTimeout": "1s",
        // Five sidecars share the machine with the demo: one thread each, no hand-offs.
        "workerThreads": 1,
        // Plugins in other languages may load with `--apply`; their first calls on a fresh
        // instance can take more than the default 10 ms.
        "pluginDeadline": "50ms",
    });
    let path = work.join(format!("{name}.json"));
    std::fs::write(&path, bootstrap.to_string())
        .with_context(|| format!("writing {}", path.display()))?;
    let path_arg = path
        .to_str()
        .context("work directory is not UTF-8")?
        .to_string();
    let log = work.join(format!("{name}.log"));
    // Reading the ready line blocks: off the async workers.
    let proc =
        tokio::task::spawn_blocking(move || Proc::start(&["sidecar", "--config", &path_arg], &log))
            .await??;
    Ok(SidecarProc {
        outbound: proc.addr("outbound")?,
        admin: proc.addr("admin")?,
        proc,
    })
}
