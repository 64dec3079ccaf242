//! Transparent capture in a real network namespace: `weft capture` installs the nat rules, a
//! `weft sidecar` process in the pod recovers where each captured connection was going, and an
//! unmodified `curl` in the pod goes through it: to a mesh service by its `Host`, to anywhere
//! else unchanged, and around it for an excluded port. Needs root (namespaces, iptables);
//! skipped with the reason where namespaces cannot be made.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};
use support::App;
use support::netns::{self, Child, Pod};

const WEFT: &str = env!("CARGO_BIN_EXE_weft");

fn curl(pod: &Pod, args: &[&str]) -> (String, String) {
    let mut all = vec!["-sS", "--max-time", "10"];
    all.extend_from_slice(args);
    let out = pod.run("curl", &all);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The sidecar's `weft_requests_total` for `service` and `code`, read from its admin endpoint
/// inside the pod.
fn requests(pod: &Pod, service: &str, code: u16) -> u64 {
    let (metrics, _) = curl(pod, &["http://127.0.0.1:15000/metrics"]);
    let want = format!("service=\"{service}\"");
    let code = format!("code=\"{code}\"");
    metrics
        .lines()
        .filter(|l| l.starts_with("weft_requests_total{") && l.contains(&want) && l.contains(&code))
        .filter(|l| l.contains("direction=\"outbound\""))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .map(|v| v as u64)
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmodified_client_in_a_captured_pod_goes_through_its_sidecar() {
    if let Some(why) = netns::unavailable() {
        eprintln!("skipped: {why}");
        return;
    }
    netns::ensure_packages(&[("iptables-restore", "iptables"), ("curl", "curl")]);
    let pod = Pod::new();
    // Three apps outside the pod, on the test's end of the veth: the one curl dials, the one
    // the mesh knows as `payments`, and one on a port the pod reaches directly.
    let dialled = App::start_on("dialled", SocketAddr::from((pod.host, 0))).await;
    let payments = App::start_on("payments", SocketAddr::from((pod.host, 0))).await;
    let excluded = App::start_on("excluded", SocketAddr::from((pod.host, 0))).await;

    let dir = tempfile::tempdir().expect("tempdir");
    let snapshot = serde_json::json!({"version": "capture", "services": {"payments": {
        "endpoints": [{"address": payments.addr.to_string()}], "plugins": []}}});
    std::fs::write(dir.path().join("snapshot.json"), snapshot.to_string()).expect("write");
    let bootstrap = serde_json::json!({"service": "orders", "outbound": "127.0.0.1:15001",
        "inbound": "0.0.0.0:15006", "admin": "127.0.0.1:15000", "app": "127.0.0.1:9",
        "snapshot": "snapshot.json", "proxyMark": 1337, "workerThreads": 1});
    let config = dir.path().join("bootstrap.json");
    std::fs::write(&config, bootstrap.to_string()).expect("write");

    let out = pod.run(
        WEFT,
        &[
            "capture",
            "--exclude-outbound-ports",
            &excluded.addr.port().to_string(),
        ],
    );
    assert!(
        out.status.success(),
        "weft capture: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let _sidecar = Child(
        pod.command(WEFT)
            .args(["sidecar", "--config"])
            .arg(&config)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn sidecar"),
    );
    let started = Instant::now();
    while curl(&pod, &["-f", "http://127.0.0.1:15000/ready"])
        .0
        .is_empty()
    {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "sidecar never ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Dialled at one address but naming `payments`: the sidecar routes it by name, adding
    // the mesh's headers on the way. Its own connection to payments is not captured again.
    let target = format!("http://{}/via-mesh", dialled.addr);
    let (body, err) = curl(&pod, &["-H", "Host: payments", &target]);
    assert!(err.is_empty(), "curl: {err}");
    assert!(
        dialled.seen().is_empty(),
        "went straight to the address dialled: {body}"
    );
    let seen = payments.seen();
    assert_eq!(seen.len(), 1, "{body}");
    assert_eq!(seen[0].path, "/via-mesh");
    assert!(seen[0].headers.contains_key("x-request-id"));

    // Not a mesh service: carried to where curl was going, unchanged, and counted.
    let (_, err) = curl(&pod, &[&format!("http://{}/elsewhere", dialled.addr)]);
    assert!(err.is_empty(), "curl: {err}");
    let seen = dialled.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/elsewhere");
    assert!(
        !seen[0].headers.contains_key("x-request-id"),
        "passthrough adds nothing"
    );
    assert_eq!(requests(&pod, "PassthroughCluster", 200), 1);

    // An excluded port is reached directly: the sidecar never sees the call.
    let (_, err) = curl(&pod, &[&format!("http://{}/around", excluded.addr)]);
    assert!(err.is_empty(), "curl: {err}");
    assert_eq!(excluded.seen().len(), 1);
    assert_eq!(requests(&pod, "PassthroughCluster", 200), 1);

    // Loopback is the pod's own: the admin endpoint answered every read above uncaptured.
    // `--clean` takes the rules out, and the same call then goes where it was dialled.
    let out = pod.run(WEFT, &["capture", "--clean"]);
    assert!(out.status.success());
    let rules = pod.run("iptables", &["-t", "nat", "-S"]);
    let rules = String::from_utf8_lossy(&rules.stdout);
    assert!(!rules.contains("WEFT"), "rules left behind:\n{rules}");
    let (_, err) = curl(
        &pod,
        &[
            "-H",
            "Host: payments",
            &format!("http://{}/after", dialled.addr),
        ],
    );
    assert!(err.is_empty(), "curl: {err}");
    assert_eq!(dialled.seen().len(), 2);
    assert_eq!(payments.seen().len(), 1);
}
