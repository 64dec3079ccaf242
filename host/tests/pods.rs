//! `weft run` end to end: two pods on a bridge, each an app in its own network namespace with
//! a captured sidecar, certificates from a real control plane. An unmodified `curl` (and
//! Python's `urllib`) in the orders pod reaches payments by name — the pod's DNS proxy answers
//! with the service's virtual IP, other names go to the upstream resolver — through both
//! sidecars over mTLS (the payments app sees the caller's SPIFFE ID), cannot reach the payments app around them under STRICT mTLS, and each
//! pod leaves nothing behind when its app exits or when it is interrupted. Needs root; skipped
//! with the reason where namespaces cannot be made.

mod support;

use std::io::{BufRead as _, BufReader};
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use support::mesh;
use support::netns;

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

/// An HTTP app answering every GET with the request's headers as JSON, on every address of
/// its pod (so a call that got around the sidecar would reach it).
const ECHO_HEADERS: &str = r#"
import http.server, json
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        b = json.dumps({k.lower(): v for k, v in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header('content-length', str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
http.server.ThreadingHTTPServer(('0.0.0.0', 8080), H).serve_forever()
"#;

/// The bridge the test's pods share, removed (with any pod left on it) when dropped.
struct TestBridge(weft::pod::Bridge);

impl Drop for TestBridge {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["link", "del", &self.0.name])
            .output();
    }
}

/// A `weft run` process, interrupted (as Ctrl-C would) when dropped so it cleans up after
/// itself even when the test fails; killed only if it does not end.
struct RunPod(std::process::Child);

impl Drop for RunPod {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = Command::new("kill")
                .args(["-INT", &self.0.id().to_string()])
                .status();
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(20) {
                if !matches!(self.0.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// `weft run` arguments for a pod of `service` on `bridge`, against the control plane.
fn run_args(bridge: &weft::pod::Bridge, cp: &str, data: &Path, service: &str) -> Vec<String> {
    [
        "run",
        "--service",
        service,
        "--labels",
        "version=v1",
        "--bridge",
        &bridge.name,
        "--gateway",
        &format!("{}/{}", bridge.gateway, bridge.prefix),
        "--server",
        cp,
        "--data",
        data.to_str().expect("utf-8"),
        "--",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Polls `done` until it holds, failing the test after `within`.
fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "not within {within:?}: {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What a pod leaves on the machine while it runs: its namespace, veth and private files.
fn traces_of(pid: u32) -> Vec<String> {
    let mut found = Vec::new();
    let netns = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip");
    if String::from_utf8_lossy(&netns.stdout).contains(&format!("weft-pod-{pid}")) {
        found.push(format!("netns weft-pod-{pid}"));
    }
    if Command::new("ip")
        .args(["link", "show", &format!("wp{pid}")])
        .output()
        .is_ok_and(|o| o.status.success())
    {
        found.push(format!("link wp{pid}"));
    }
    for dir in [
        format!("/run/weft/pods/{pid}.d"),
        format!("/etc/netns/weft-pod-{pid}"),
    ] {
        if Path::new(&dir).exists() {
            found.push(dir);
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_made_by_weft_run_talk_through_their_sidecars_and_leave_nothing_behind() {
    if let Some(why) = netns::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    netns::ensure_packages(&[
        ("iptables-restore", "iptables"),
        ("curl", "curl"),
        ("python3", "python3"),
    ]);
    let pid = std::process::id();
    let bridge = TestBridge(weft::pod::Bridge {
        name: format!("wb{}", pid % 10_000_000),
        gateway: Ipv4Addr::new(198, 19, 210 + (pid % 40) as u8, 1),
        prefix: 24,
    });
    assert!(bridge.0.ensure().expect("bridge"), "bridge already there");
    // The control plane listens on the bridge's address: reachable from the pods, and from
    // nowhere else.
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let control = mesh::control(&data, &format!("{}:0", bridge.0.gateway));
    let cp = control.addr("api").to_string();

    // The payments pod: its app echoes the headers it gets. Ready once its sidecar is.
    let mut payments = Command::new(WEFT);
    payments
        .args(run_args(&bridge.0, &cp, &data, "payments"))
        .args(["python3", "-c", ECHO_HEADERS])
        .stderr(Stdio::piped());
    let mut payments = RunPod(payments.spawn().expect("weft run payments"));
    let payments_pid = payments.0.id();
    let stderr = payments.0.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("weft run: pod ") {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let payments_ip = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the payments pod never became ready");
    // Its app listening too.
    wait_until("the payments app listens", Duration::from_secs(30), || {
        Command::new("ip")
            .args(["netns", "exec", &format!("weft-pod-{payments_pid}")])
            .args(["curl", "-s", "-o", "/dev/null", "http://127.0.0.1:8080/"])
            .status()
            .is_ok_and(|s| s.success())
    });

    // The resolver outside the mesh, on the bridge's address: answers every name with
    // 198.18.9.9.
    let upstream = tokio::net::UdpSocket::bind((bridge.0.gateway, 0))
        .await
        .expect("upstream resolver");
    let upstream_addr = upstream.local_addr().expect("addr");
    let resolver = tokio::spawn(async move {
        let mut buf = [0u8; 1500];
        while let Ok((n, from)) = upstream.recv_from(&mut buf).await {
            if let Some(q) = weft::dns::wire::parse_query(&buf[..n]) {
                let a = [Ipv4Addr::new(198, 18, 9, 9)];
                let reply = weft::dns::wire::answer(&q, 0, &a, 5);
                let _ = upstream.send_to(&reply, from).await;
            }
        }
    });

    // The orders pod's app: curl and Python, unmodified, calling payments by name; a name
    // outside the mesh; then a call straight at the payments app's port, around the sidecars.
    let script = format!(
        "curl -sS --max-time 10 http://payments:8080/charge; echo; \
         python3 -c \"import urllib.request as u; print('python', u.urlopen('http://payments.default.svc.cluster.local/charge', timeout=10).status)\"; \
         python3 -c \"import socket; print('outside', socket.gethostbyname('outside.example'))\"; \
         curl -s -o /dev/null -w 'direct=%{{http_code}}' --max-time 10 http://{payments_ip}:8080/direct"
    );
    let mut orders_args = run_args(&bridge.0, &cp, &data, "orders");
    orders_args.pop();
    orders_args.extend([
        "--dns-upstream".into(),
        upstream_addr.to_string(),
        "--".into(),
    ]);
    let orders = Command::new(WEFT)
        .args(orders_args)
        .args(["sh", "-c", &script])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("weft run orders");
    let orders_pid = orders.id();
    let orders = orders.wait_with_output().expect("orders pod");
    let out = String::from_utf8_lossy(&orders.stdout).into_owned();
    assert!(orders.status.success(), "orders pod failed: {out}");
    let mut lines = out.lines();
    let echoed: serde_json::Value = serde_json::from_str(lines.next().unwrap_or_default())
        .unwrap_or_else(|e| panic!("{e}: {out}"));
    let xfcc = echoed["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default();
    assert!(
        xfcc.contains("URI=spiffe://") && xfcc.contains("/ns/default/sa/orders"),
        "the payments app did not see the caller's identity: {echoed}"
    );
    assert_eq!(lines.next(), Some("python 200"), "{out}");
    assert_eq!(lines.next(), Some("outside 198.18.9.9"), "{out}");
    resolver.abort();
    // STRICT mTLS: a plaintext call at the app's port is taken by the payments sidecar and
    // refused, so the orders sidecar's passthrough answers 502.
    assert_eq!(lines.next(), Some("direct=502"), "{out}");

    // The orders pod is gone with its app.
    wait_until("the orders pod is gone", Duration::from_secs(10), || {
        traces_of(orders_pid).is_empty()
    });

    // Ctrl-C ends the payments pod, and it cleans up too.
    assert!(
        !traces_of(payments_pid).is_empty(),
        "the payments pod should be up"
    );
    let _ = Command::new("kill")
        .args(["-INT", &payments_pid.to_string()])
        .status();
    let status = payments.0.wait().expect("wait");
    assert_eq!(status.code(), Some(130));
    assert!(
        traces_of(payments_pid).is_empty(),
        "{:?}",
        traces_of(payments_pid)
    );
    let leases = Path::new("/run/weft/pods").join(&bridge.0.name);
    assert!(!leases.exists(), "{} left behind", leases.display());
    drop(control);
}
