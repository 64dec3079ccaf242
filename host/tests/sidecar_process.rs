//! `weft sidecar` as real processes: bootstrap and snapshot files, a call through the pair,
//! and SIGTERM draining a call in flight before the process exits.

mod support;

use http::{Request, StatusCode};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};
use support::mesh::{Proc, spawn};
use support::{App, full, h1_client, read};

/// Starts `weft sidecar` and reads the addresses it bound from its ready line.
fn start(dir: &Path, name: &str, app: SocketAddr, snapshot: serde_json::Value) -> Proc {
    let bootstrap = serde_json::json!({
        "service": name, "outbound": "127.0.0.1:0", "inbound": "127.0.0.1:0",
        "admin": "127.0.0.1:0", "app": app.to_string(), "snapshot": format!("{name}-snapshot.json"),
        "drainTimeout": "5s", "pluginDeadline": "1s",
    });
    std::fs::write(dir.join(format!("{name}.json")), bootstrap.to_string()).expect("write");
    std::fs::write(
        dir.join(format!("{name}-snapshot.json")),
        snapshot.to_string(),
    )
    .expect("write");
    let config = dir.join(format!("{name}.json"));
    spawn(&["sidecar", "--config", config.to_str().expect("utf-8 path")])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecar_processes_serve_and_drain_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let app = App::start("payments-v1").await;
    let payments = start(
        dir.path(),
        "payments",
        app.addr,
        serde_json::json!({"version": "p1"}),
    );
    let snapshot = serde_json::json!({"version": "o1", "services": {"payments": {
        "timeout": "6s",
        "endpoints": [{"address": payments.addr("inbound").to_string(), "labels": {"version": "v1"}}],
        "plugins": [{"name": "telemetry", "builtin": "telemetry"}]}}});
    let orders = start(
        dir.path(),
        "orders",
        "127.0.0.1:9".parse().expect("addr"),
        snapshot,
    );
    let get = |path: &str| {
        Request::builder()
            .uri(format!("http://{}{path}", orders.addr("outbound")))
            .header("host", "payments")
            .body(full(""))
            .expect("request")
    };
    let (status, headers, _) = read(h1_client().request(get("/")).await.expect("answered")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        headers.get("x-app").map(|v| v.as_bytes()),
        Some(&b"payments-v1"[..])
    );

    let slow = tokio::spawn(h1_client().request(get("/slow/700")));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = orders.child.id().to_string();
    let killed = Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .expect("kill");
    assert!(killed.success());
    let resp = slow
        .await
        .expect("joined")
        .expect("the call in flight was answered");
    assert_eq!(resp.status(), StatusCode::OK, "drain let the call finish");
    let mut orders = orders;
    let deadline = Instant::now() + Duration::from_secs(8);
    let exit = loop {
        if let Some(status) = orders.child.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "the sidecar did not exit after draining"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(exit.success(), "exit {exit:?}");
    drop(payments);
}
