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
    run_args_as(bridge, cp, data, service, "v1")
}

/// [`run_args`] for a pod labelled `version`.
fn run_args_as(
    bridge: &weft::pod::Bridge,
    cp: &str,
    data: &Path,
    service: &str,
    version: &str,
) -> Vec<String> {
    [
        "run",
        "--service",
        service,
        "--labels",
        &format!("version={version}"),
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

/// What a pod leaves on the machine while it runs: its namespace, veth, private files and its
/// sidecar's process.
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
    // The sidecar runs with its bootstrap from the pod's private directory.
    let private = format!("/run/weft/pods/{pid}.d/");
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline"))
            && String::from_utf8_lossy(&cmdline).contains(&private)
        {
            found.push(format!("process {}", entry.file_name().to_string_lossy()));
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
        // The orders app runs as nobody, which may not reach another Python on the PATH.
        (netns::DEBIAN_PYTHON, "python3"),
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
    // Run as nobody: the app cannot set the sidecar's mark to get around it.
    let script = format!(
        "{py} -c \"import socket; s = socket.socket()
try:
    s.setsockopt(socket.SOL_SOCKET, 36, 1337); print('mark set')
except PermissionError:
    print('mark refused')\"; \
         curl -sS --max-time 10 http://payments:8080/charge; echo; \
         {py} -c \"import urllib.request as u; print('python', u.urlopen('http://payments.default.svc.cluster.local/charge', timeout=10).status)\"; \
         {py} -c \"import socket; print('outside', socket.gethostbyname('outside.example'))\"; \
         curl -s -o /dev/null -w 'direct=%{{http_code}}' --max-time 10 http://{payments_ip}:8080/direct",
        py = netns::DEBIAN_PYTHON
    );
    let mut orders_args = run_args(&bridge.0, &cp, &data, "orders");
    orders_args.pop();
    orders_args.extend([
        "--dns-upstream".into(),
        upstream_addr.to_string(),
        "--user".into(),
        "nobody".into(),
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
    assert_eq!(lines.next(), Some("mark refused"), "{out}");
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

/// The payments app of the policy test, as version `$VERSION`: HTTP on 8080 answering its
/// version (v2 fails every other call with 503), a TCP echo on 9000, a server-first greeter on
/// 5432 (an opaque port by default) and 5433 (not declared: detection times out), a WebSocket
/// echo on 8081 (the `websockets` library).
const PAYMENTS_APP: &str = r#"
import asyncio, http.server, json, os, socketserver, threading, websockets
V = os.environ['VERSION']
calls = [0]
lock = threading.Lock()
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        with lock:
            calls[0] += 1
            n = calls[0]
        status = 503 if V == 'v2' and n % 2 == 1 else 200
        b = json.dumps({'version': V}).encode()
        self.send_response(status)
        self.send_header('content-length', str(len(b)))
        self.end_headers()
        self.wfile.write(b)
    def log_message(self, *a):
        pass
class Echo(socketserver.BaseRequestHandler):
    def handle(self):
        while True:
            d = self.request.recv(4096)
            if not d:
                return
            self.request.sendall(d)
class Greeter(Echo):
    def handle(self):
        self.request.sendall(('HELLO ' + V + '\n').encode())
        Echo.handle(self)
socketserver.ThreadingTCPServer.allow_reuse_address = True
servers = [http.server.ThreadingHTTPServer(('0.0.0.0', 8080), H),
           socketserver.ThreadingTCPServer(('0.0.0.0', 9000), Echo),
           socketserver.ThreadingTCPServer(('0.0.0.0', 5432), Greeter),
           socketserver.ThreadingTCPServer(('0.0.0.0', 5433), Greeter)]
for s in servers:
    threading.Thread(target=s.serve_forever, daemon=True).start()
async def ws_echo(ws, *path):
    async for m in ws:
        await ws.send(m)
async def main():
    async with websockets.serve(ws_echo, '0.0.0.0', 8081):
        await asyncio.Future()
asyncio.run(main())
"#;

/// The orders app of the policy test: every call by name, through capture.
const ORDERS_APP: &str = r#"
import asyncio, json, socket, urllib.request, websockets
seen = {}
for i in range(200):
    r = urllib.request.urlopen('http://payments:8080/charge', timeout=10)
    v = json.loads(r.read())['version']
    seen[v] = seen.get(v, 0) + 1
print('split', seen.get('v1', 0), seen.get('v2', 0))
s = socket.create_connection(('payments', 9000), timeout=10)
s.sendall(b'ping over tcp\n')
print('echo', s.recv(100).decode().strip())
s.close()
for port in (5432, 5433):
    s = socket.create_connection(('payments', port), timeout=10)
    print('greeting', port, s.recv(100).decode().strip().split()[0])
    s.close()
async def ws():
    async with websockets.connect('ws://payments:8081/ws') as c:
        await c.send('hello over websocket')
        print('ws', await c.recv())
asyncio.run(ws())
m = urllib.request.urlopen('http://127.0.0.1:15000/metrics', timeout=10).read().decode()
for line in m.splitlines():
    if line.startswith('istio_tcp_connections_opened_total'):
        print('metric', line)
"#;

/// The value of a Prometheus text line, or 0.
fn value_of(line: &str) -> f64 {
    line.rsplit(' ')
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// Starts a `weft run` pod and waits for its sidecar to be ready; returns it and its address.
fn start_pod(args: Vec<String>, app: &[&str], env: &[(&str, &str)]) -> (RunPod, String) {
    let mut cmd = Command::new(WEFT);
    cmd.args(args).args(app).stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut pod = RunPod(cmd.spawn().expect("weft run"));
    let stderr = pod.0.stderr.take().expect("stderr");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(rest) = line.strip_prefix("weft run: pod ") {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_string());
            }
        }
    });
    let ip = rx
        .recv_timeout(Duration::from_secs(120))
        .expect("the pod never became ready");
    (pod, ip)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn captured_calls_get_the_seed_policies_and_tcp_and_websockets_cross_the_mesh() {
    if let Some(why) = netns::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    netns::ensure_packages(&[("iptables-restore", "iptables"), ("python3", "python3")]);
    netns::ensure_python_modules(&[("websockets", "python3-websockets")]);
    let pid = std::process::id();
    let bridge = TestBridge(weft::pod::Bridge {
        name: format!("wc{}", pid % 10_000_000),
        gateway: Ipv4Addr::new(198, 19, 170 + (pid % 40) as u8, 1),
        prefix: 24,
    });
    assert!(bridge.0.ensure().expect("bridge"), "bridge already there");
    let dir = tempfile::tempdir().expect("dir");
    let data = dir.path().join("data");
    let control = mesh::control(&data, &format!("{}:0", bridge.0.gateway));
    let cp = control.addr("api");
    let seed = mesh::write(dir.path(), "payments.yaml", mesh::SEED);
    let applied = mesh::weft(cp, &data, &["apply", "-f", seed.to_str().expect("utf-8")]);
    assert!(applied.status.success(), "{}", mesh::text(&applied));
    let cp = cp.to_string();

    // payments v1 and v2, each a pod; their apps listening before orders starts.
    let mut pods = Vec::new();
    for version in ["v1", "v2"] {
        let args = run_args_as(&bridge.0, &cp, &data, "payments", version);
        let (pod, _) = start_pod(
            args,
            &[netns::DEBIAN_PYTHON, "-c", PAYMENTS_APP],
            &[("VERSION", version)],
        );
        let netns = format!("weft-pod-{}", pod.0.id());
        wait_until("the payments app listens", Duration::from_secs(30), || {
            Command::new("ip")
                .args(["netns", "exec", &netns])
                .args(["python3", "-c"])
                .arg("import socket; [socket.create_connection(('127.0.0.1', p), 1).close() for p in (8080, 9000, 5432, 5433, 8081)]")
                .status()
                .is_ok_and(|s| s.success())
        });
        pods.push(pod);
    }

    let orders = Command::new(WEFT)
        .args(run_args(&bridge.0, &cp, &data, "orders"))
        .args([netns::DEBIAN_PYTHON, "-c", ORDERS_APP])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("weft run orders");
    let orders = orders.wait_with_output().expect("orders pod");
    let out = String::from_utf8_lossy(&orders.stdout).into_owned();
    assert!(
        orders.status.success(),
        "orders pod failed: {out}\n{}",
        String::from_utf8_lossy(&orders.stderr)
    );
    let line = |prefix: &str| {
        out.lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {out}"))
            .to_string()
    };
    // 95/5: every call answered 200 (v2's failures retried), about 5% of them by v2.
    let split: Vec<usize> = line("split ")
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().expect("count"))
        .collect();
    assert_eq!(split[0] + split[1], 200, "{out}");
    assert!(
        (1..=30).contains(&split[1]),
        "v2 answered {} of 200 calls, not about 5%: {out}",
        split[1]
    );
    assert_eq!(line("echo "), "echo ping over tcp");
    assert_eq!(line("greeting 5432"), "greeting 5432 HELLO");
    assert_eq!(line("greeting 5433"), "greeting 5433 HELLO");
    assert_eq!(line("ws "), "ws hello over websocket");
    // The three TCP connections (echo, two greetings; the WebSocket is an HTTP call) were
    // carried to payments, counted by the orders sidecar (whose reports of a connection's
    // security say `unknown`, as Istio's source reporter does).
    let opened: f64 = out
        .lines()
        .filter(|l| l.starts_with("metric "))
        .filter(|l| l.contains("destination_service=\"payments.default.svc.cluster.local\""))
        .filter(|l| l.contains("reporter=\"source\""))
        .filter(|l| l.contains("source_principal=\"spiffe://weft.local/ns/default/sa/orders\""))
        .map(value_of)
        .sum();
    assert_eq!(opened, 3.0, "{out}");
    // The payments sidecars counted them as destination, from orders, over mTLS.
    let mut seen = 0.0;
    wait_until(
        "the payments sidecars count 3 connections",
        Duration::from_secs(10),
        || {
            seen = pods
                .iter()
                .map(|p| {
                    let m = Command::new("ip")
                        .args(["netns", "exec", &format!("weft-pod-{}", p.0.id())])
                        .args(["python3", "-c", "import urllib.request as u; print(u.urlopen('http://127.0.0.1:15000/metrics').read().decode())"])
                        .output()
                        .expect("metrics");
                    String::from_utf8_lossy(&m.stdout)
                        .lines()
                        .filter(|l| l.starts_with("istio_tcp_connections_closed_total"))
                        .filter(|l| l.contains("reporter=\"destination\""))
                        .filter(|l| l.contains("source_workload=\"orders\""))
                        .filter(|l| l.contains("connection_security_policy=\"mutual_tls\""))
                        .map(value_of)
                        .sum::<f64>()
                })
                .sum();
            seen == 3.0
        },
    );
    drop(pods);
    drop(control);
}
