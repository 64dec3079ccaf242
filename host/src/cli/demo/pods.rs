//! The demo's captured mode: every app a process in a pod of its own made by `weft run` (a
//! network namespace, its traffic captured, names resolved by its sidecar), on a bridge in
//! the demo's private network namespace. The payments apps are `weft demo-app`, their health
//! set through files; orders' app is `weft demo-driver`, calling `http://payments/charge` by
//! name and reporting each call on its stdout, which is read into the story's tally.

use super::Record;
use super::apps::Health;
use super::mesh::ControlPlane;
use anyhow::Context as _;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bridge the demo's pods share (inside the demo's own network namespace).
pub const BRIDGE: &str = "weft0";
/// Its address: the pods' gateway, where the control plane listens.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);

/// One `weft run` pod.
pub struct PodProc {
    child: Child,
    /// Its name in the story.
    pub name: String,
    /// Its address on the bridge.
    pub ip: Ipv4Addr,
    health: PathBuf,
}

impl PodProc {
    /// Changes how its app answers, from the next health read on (within 100 ms).
    pub fn set(&self, health: Health) {
        let _ = std::fs::write(&self.health, health.word());
    }

    fn signal(&self, name: &str) {
        let _ = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status();
    }
}

/// Stops pods the way Ctrl-C stops `weft run` (which then removes its pod), all at once, and
/// waits for each; a pod that does not end is killed.
pub fn stop_all(pods: &mut [PodProc]) {
    for p in pods.iter() {
        p.signal("TERM");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for p in pods.iter_mut() {
        while matches!(p.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        if matches!(p.child.try_wait(), Ok(None)) {
            let _ = p.child.kill();
            let _ = p.child.wait();
        }
    }
}

/// What is done with each line an app prints.
pub type OnLine = Box<dyn Fn(&str) + Send>;

/// Starts a pod of `service` labelled `version`, running `app` (this executable's arguments);
/// waits until its sidecar is ready and, when `listening` is given, until the app prints a
/// line starting with it. The app's other stdout lines go to `on_line`.
#[allow(clippy::too_many_arguments)]
pub fn start(
    work: &Path,
    cp: &ControlPlane,
    name: &str,
    service: &str,
    version: &str,
    app: &[&str],
    listening: Option<&'static str>,
    on_line: Option<OnLine>,
) -> anyhow::Result<PodProc> {
    let exe = std::env::current_exe().context("finding the weft executable")?;
    let health = work.join(format!("{name}.health"));
    std::fs::write(&health, Health::Healthy.word())?;
    let log_path = work.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path)?;
    let mut child = Command::new(&exe)
        .arg("run")
        .args([
            "--service",
            service,
            "--labels",
            &format!("version={version}"),
        ])
        .args(["--bridge", BRIDGE, "--gateway", &format!("{GATEWAY}/16")])
        .args(["--server", &cp.endpoint.addr.to_string()])
        .arg("--data")
        .arg(&cp.data)
        .arg("--")
        .arg(&exe)
        .args(app)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting pod {name}"))?;
    let (tx, rx) = std::sync::mpsc::channel::<Result<Ipv4Addr, ()>>();
    if let Some(stderr) = child.stderr.take() {
        let mut log = log.try_clone()?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = writeln!(log, "{line}");
                if let Some(rest) = line.strip_prefix("weft run: pod ")
                    && let Some(Ok(ip)) = rest.split_whitespace().next().map(str::parse)
                {
                    let _ = tx.send(Ok(ip));
                }
            }
            // weft run ended (or closed stderr) before saying so: not ready.
            let _ = tx.send(Err(()));
        });
    }
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    if let Some(stdout) = child.stdout.take() {
        let mut log = log;
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if listening.is_some_and(|l| line.starts_with(l)) {
                    let _ = ready_tx.send(());
                }
                match &on_line {
                    Some(f) => f(&line),
                    None => {
                        let _ = writeln!(log, "{line}");
                    }
                }
            }
        });
    }
    let mut pod = PodProc {
        child,
        name: name.to_string(),
        ip: Ipv4Addr::UNSPECIFIED,
        health,
    };
    let failed = |pod: &mut PodProc, what: &str| {
        stop_all(std::slice::from_mut(pod));
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(12).collect();
        anyhow::anyhow!(
            "pod {name}: {what}:\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    };
    // A sidecar compiles its plugins before it is ready (seconds in a debug build).
    match rx.recv_timeout(Duration::from_secs(120)) {
        Ok(Ok(ip)) => pod.ip = ip,
        _ => return Err(failed(&mut pod, "its sidecar did not become ready")),
    }
    if listening.is_some() && ready_rx.recv_timeout(Duration::from_secs(30)).is_err() {
        return Err(failed(&mut pod, "its app did not start"));
    }
    Ok(pod)
}

/// The orders pod: its driver's calls go to `record`.
pub fn start_orders(
    work: &Path,
    cp: &ControlPlane,
    rate: u32,
    record: Record,
) -> anyhow::Result<PodProc> {
    let rate = rate.to_string();
    let on_line: OnLine = Box::new(move |line: &str| {
        let mut words = line.split_whitespace();
        if words.next() != Some("call") {
            return;
        }
        let (Some(version), Some(ok), Some(us), Some(marked)) =
            (words.next(), words.next(), words.next(), words.next())
        else {
            return;
        };
        let took = Duration::from_micros(us.parse().unwrap_or(0));
        record(version, ok == "1", took, marked == "1");
    });
    start(
        work,
        cp,
        "orders",
        "orders",
        "v1",
        &["demo-driver", "--rate", &rate],
        None,
        Some(on_line),
    )
}

/// A payments pod.
pub fn start_payments(
    work: &Path,
    cp: &ControlPlane,
    name: &str,
    version: &str,
) -> anyhow::Result<PodProc> {
    let health = work.join(format!("{name}.health"));
    let health = health.to_str().context("work directory is not UTF-8")?;
    start(
        work,
        cp,
        name,
        "payments",
        version,
        &[
            "demo-app",
            "--name",
            name,
            "--version",
            version,
            "--health-file",
            health,
        ],
        Some("demo-app"),
        None,
    )
}

/// Where a pod's sidecar serves its metrics (Istio's 15090, on the pod's address).
pub fn stats_of(pod: &PodProc) -> SocketAddr {
    SocketAddr::from((pod.ip, 15090))
}
