//! A mesh of real processes for end-to-end tests: `weft control`, `weft sidecar`s watching it,
//! the operator's CLI, and calls through the mesh. Every process is killed when its handle
//! drops, so a failing test leaves none behind.

use super::{App, full, h1_client, read};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};
use weft::control::channel::Endpoint;
use weft::control::client::call;

/// The seed's YAML, verbatim.
pub const SEED: &str = include_str!("../../../examples/payments/payments.yaml");

pub struct Proc {
    pub child: Child,
    pub words: Vec<String>,
    /// The lines it prints after its ready line (a sidecar's access log), read as they come.
    pub lines: std::sync::mpsc::Receiver<String>,
}

impl Proc {
    /// The address after `key` in the process's ready line.
    pub fn addr(&self, key: &str) -> SocketAddr {
        let i = self
            .words
            .iter()
            .position(|w| w == key)
            .unwrap_or_else(|| panic!("no {key} in {:?}", self.words));
        self.words[i + 1].parse().expect("address")
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Starts `weft ARGS` and waits for its ready line.
pub fn spawn(args: &[&str]) -> Proc {
    spawn_logged(args, None)
}

/// Starts `weft ARGS`, its info-level log in `log` if given, and waits for its ready line.
pub fn spawn_logged(args: &[&str], log: Option<&Path>) -> Proc {
    spawn_with(args, log, &[])
}

/// [`spawn_logged`] with more environment variables.
pub fn spawn_with(args: &[&str], log: Option<&Path>, env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_weft"));
    cmd.args(args)
        .envs(env.iter().copied())
        .stdout(Stdio::piped());
    match log {
        Some(path) => {
            cmd.env("RUST_LOG", "info")
                .stderr(std::fs::File::create(path).expect("log file"));
        }
        None => {
            cmd.stderr(Stdio::null());
        }
    }
    let mut child = cmd.spawn().expect("spawn weft");
    let stdout = child.stdout.take().expect("stdout");
    let mut line = String::new();
    let mut reader = BufReader::new(stdout);
    reader.read_line(&mut line).expect("ready line");
    assert!(line.contains("ready"), "not ready: {line:?}");
    // The rest is read as it comes, so the process never writes into a full pipe.
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for l in reader.lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    Proc {
        child,
        words: line.split_whitespace().map(String::from).collect(),
        lines,
    }
}

pub fn control(data: &Path, listen: &str) -> Proc {
    control_with(data, listen, &[])
}

/// [`control`] with more arguments.
pub fn control_with(data: &Path, listen: &str, more: &[&str]) -> Proc {
    let mut args = vec![
        "control",
        "--data",
        data.to_str().expect("utf-8 path"),
        "--listen",
        listen,
        "--lease",
        "3s",
    ];
    args.extend_from_slice(more);
    let p = spawn(&args);
    remember(p.addr("api"), data);
    p
}

/// Each control plane's data directory by API address, so helpers given only the address can
/// trust the bundle it publishes there, as a sidecar's `caFile` does.
pub static DATA_DIRS: std::sync::LazyLock<parking_lot::Mutex<BTreeMap<SocketAddr, PathBuf>>> =
    std::sync::LazyLock::new(Default::default);

pub fn remember(cp: SocketAddr, data: &Path) {
    DATA_DIRS.lock().insert(cp, data.to_path_buf());
}

/// `<data>/bundle.pem` of the control plane at `cp`.
pub fn bundle_file(cp: SocketAddr) -> PathBuf {
    DATA_DIRS
        .lock()
        .get(&cp)
        .unwrap_or_else(|| panic!("no data directory known for {cp}"))
        .join("bundle.pem")
}

/// A verified TLS endpoint for the control plane at `cp`.
pub fn endpoint(cp: SocketAddr) -> Endpoint {
    Endpoint::from_bundle_file(cp, &bundle_file(cp))
        .expect("the control plane's bundle")
        .0
}

/// The operator's CLI against the control plane at `cp`.
pub fn weft(cp: SocketAddr, data: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(args)
        .args(["--server", &cp.to_string(), "--data"])
        .arg(data)
        .output()
        .expect("run weft")
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn token(data: &Path) -> String {
    std::fs::read_to_string(data.join("operator.token"))
        .expect("operator token")
        .trim()
        .to_string()
}

/// Starts a sidecar process watching `cp` as `service` with `labels`, in front of `app`.
pub fn sidecar(
    dir: &Path,
    cp: SocketAddr,
    service_token: &str,
    service: &str,
    labels: &[(&str, &str)],
    app: SocketAddr,
) -> Proc {
    sidecar_with(
        dir,
        cp,
        service_token,
        service,
        labels,
        app,
        serde_json::json!({}),
        None,
    )
}

/// [`sidecar`] with `extra` bootstrap fields, logging to `log` if given.
#[allow(clippy::too_many_arguments)]
pub fn sidecar_with(
    dir: &Path,
    cp: SocketAddr,
    service_token: &str,
    service: &str,
    labels: &[(&str, &str)],
    app: SocketAddr,
    extra: serde_json::Value,
    log: Option<&Path>,
) -> Proc {
    let labels: BTreeMap<&str, &str> = labels.iter().copied().collect();
    let values: Vec<&str> = labels.values().copied().collect();
    let namespace = extra.get("namespace").and_then(|n| n.as_str());
    let name = format!(
        "{}{service}-{}",
        namespace.map(|n| format!("{n}-")).unwrap_or_default(),
        values.join("-")
    );
    let mut bootstrap = serde_json::json!({
        "service": service, "outbound": "127.0.0.1:0", "inbound": "127.0.0.1:0",
        "admin": "127.0.0.1:0", "app": app.to_string(), "labels": labels,
        "controlPlane": {"address": cp.to_string(), "token": service_token,
                         "caFile": bundle_file(cp)},
        "drainTimeout": "2s", "pluginDeadline": "1s",
        // A current-thread runtime, as a sidecar pinned to one CPU runs (the in-process tests
        // run the multi-thread one).
        "workerThreads": 1,
    });
    if let (Some(b), Some(extra)) = (bootstrap.as_object_mut(), extra.as_object()) {
        b.extend(extra.clone());
    }
    let path = dir.join(format!("{name}.json"));
    std::fs::write(&path, bootstrap.to_string()).expect("bootstrap");
    spawn_logged(&["sidecar", "--config", path.to_str().expect("utf-8")], log)
}

pub async fn api(cp: SocketAddr, token: &str, method: Method, path: &str) -> serde_json::Value {
    let bytes = call(&endpoint(cp), token, method, path, Bytes::new())
        .await
        .unwrap_or_else(|e| panic!("{path}: {e}"));
    serde_json::from_slice(&bytes).expect("json")
}

/// The bootstrap token of `service`'s sidecars, asked for with the operator token.
pub async fn service_token(cp: SocketAddr, op: &str, service: &str) -> String {
    namespaced_token(cp, op, "default", service).await
}

/// The bootstrap token of the sidecars of `service` in `namespace`.
pub async fn namespaced_token(cp: SocketAddr, op: &str, namespace: &str, service: &str) -> String {
    let path = format!("/v1/tokens/{service}?namespace={namespace}");
    api(cp, op, Method::GET, &path).await["token"]
        .as_str()
        .expect("token")
        .to_string()
}

/// Waits until `n` connected sidecars run what they were sent (with no NACK); returns the
/// versions they run.
pub async fn converged(cp: SocketAddr, token: &str, n: usize, within: Duration) -> Vec<String> {
    let deadline = Instant::now() + within;
    loop {
        let st = api(cp, token, Method::GET, "/v1/status").await;
        let live: Vec<&serde_json::Value> = st["sidecars"]
            .as_array()
            .map(|a| a.iter().filter(|s| s["connected"] == true).collect())
            .unwrap_or_default();
        let done = live.len() == n
            && live
                .iter()
                .all(|s| s["acked"] == s["sent"] && s.get("nack").is_none() && s["acked"] != "");
        if done {
            return live
                .iter()
                .map(|s| s["acked"].as_str().unwrap_or("").to_string())
                .collect();
        }
        assert!(Instant::now() < deadline, "not converged: {st:#}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A call to payments through the sidecar whose outbound listener is `orders`.
pub fn charge(orders: SocketAddr) -> Request<super::Body> {
    Request::builder()
        .uri(format!("http://{orders}/charge"))
        .header("host", "payments")
        .body(full(""))
        .expect("request")
}

/// `n` calls to payments through `orders`; (calls that reached v2, calls that failed).
pub async fn split(orders: SocketAddr, v2: &App, n: usize) -> (usize, usize) {
    let before = v2.seen().len();
    let client = h1_client();
    let mut failed = 0;
    let mut set = tokio::task::JoinSet::new();
    for w in 0..8 {
        let client = client.clone();
        set.spawn(async move {
            let mut failed = 0;
            for _ in 0..(n / 8 + usize::from(w < n % 8)) {
                match client.request(charge(orders)).await {
                    Ok(r) if r.status() == StatusCode::OK => {
                        let _ = read(r).await;
                    }
                    _ => failed += 1,
                }
            }
            failed
        });
    }
    while let Some(f) = set.join_next().await {
        failed += f.expect("worker");
    }
    (v2.seen().len() - before, failed)
}

pub fn reweighted(v1: u32, v2: u32) -> String {
    let out = SEED
        .replacen("weight: 5\n", &format!("weight: {v2}\n"), 1)
        .replacen("weight: 95\n", &format!("weight: {v1}\n"), 1);
    assert_ne!(out, SEED, "the seed YAML changed shape");
    out
}

pub fn write(dir: &Path, name: &str, body: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, body).expect("write");
    p
}

/// A `weft control` process in a fresh directory, with its operator token: what most mesh
/// tests start from. Sidecars join with [`TestMesh::pod`]; everything stops when it drops.
pub struct TestMesh {
    pub dir: tempfile::TempDir,
    pub data: PathBuf,
    pub cp: SocketAddr,
    pub op: String,
    pub control: Proc,
}

/// The discard address, for a sidecar whose app is never called (a caller such as `orders`).
pub const NO_APP: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9);

impl TestMesh {
    /// Starts the control plane on a loopback port.
    pub fn start() -> TestMesh {
        TestMesh::start_with(&[])
    }

    /// Starts the control plane with more arguments (`--cluster-domain …`).
    pub fn start_with(more: &[&str]) -> TestMesh {
        let dir = tempfile::tempdir().expect("dir");
        let data = dir.path().join("data");
        let control = control_with(&data, "127.0.0.1:0", more);
        let cp = control.addr("api");
        let op = token(&data);
        TestMesh {
            dir,
            data,
            cp,
            op,
            control,
        }
    }

    /// A sidecar for `service` with `labels` in front of `app`, holding its service's token.
    pub async fn pod(&self, service: &str, labels: &[(&str, &str)], app: SocketAddr) -> Proc {
        let token = service_token(self.cp, &self.op, service).await;
        sidecar(self.dir.path(), self.cp, &token, service, labels, app)
    }

    /// A sidecar for `service` in `namespace`, with `extra` bootstrap fields.
    pub async fn pod_in(
        &self,
        namespace: &str,
        service: &str,
        labels: &[(&str, &str)],
        app: SocketAddr,
        mut extra: serde_json::Value,
    ) -> Proc {
        let token = namespaced_token(self.cp, &self.op, namespace, service).await;
        extra["namespace"] = namespace.into();
        let dir = self.dir.path();
        sidecar_with(dir, self.cp, &token, service, labels, app, extra, None)
    }

    /// Applies `yaml` as the operator, naming it `source`.
    pub async fn apply(&self, source: &str, yaml: &str) {
        call(
            &endpoint(self.cp),
            &self.op,
            Method::POST,
            &format!("/v1/apply?source={source}"),
            Bytes::from(yaml.to_string()),
        )
        .await
        .unwrap_or_else(|e| panic!("{source}: {e}"));
    }
}
