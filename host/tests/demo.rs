//! `weft demo` as a user runs it: a real process that starts the control plane, sidecars and
//! apps, walks through the seed's story, reports it, and leaves no process behind — at the end
//! of its run or on Ctrl-C.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Processes whose command line mentions `dir` (the demo's sidecars and control plane do).
fn processes_using(dir: &Path) -> Vec<String> {
    let needle = dir.to_string_lossy().into_owned();
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").expect("/proc").flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(&needle) {
            found.push(format!(
                "{}: {cmdline}",
                entry.file_name().to_string_lossy()
            ));
        }
    }
    found
}

/// The demo's work directory for the process `pid`.
fn work_dir(pid: u32) -> PathBuf {
    std::env::temp_dir().join(format!("weft-demo-{pid}"))
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn share(phase: &serde_json::Value, version: &str) -> f64 {
    phase["destinations"][version]["share"]
        .as_f64()
        .unwrap_or(0.0)
}

#[test]
fn the_demo_tells_the_seed_story_and_cleans_up() {
    if is_root() {
        // The captured mode needs iptables; a machine without it falls back (tested below).
        support::netns::ensure_packages(&[("iptables-restore", "iptables")]);
    }
    let child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["demo", "--duration", "25", "-o", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weft demo");
    let pid = child.id();
    let out = child.wait_with_output().expect("demo runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stderr}");
    // Where pods can be made (root here), every app is in one, calling payments by name.
    if is_root() {
        assert!(
            stderr.contains("captured by its sidecar")
                && stderr.contains("http://payments/charge by name"),
            "the demo did not run captured pods:\n{stderr}"
        );
    }
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", String::from_utf8_lossy(&out.stdout)));
    // The baseline: calls straight to a pod, beside which the phases' latency means something.
    let baseline = &report["baseline"];
    assert!(
        baseline["calls"].as_u64().unwrap_or(0) >= 100,
        "baseline: {baseline}"
    );
    assert_eq!(baseline["failed"], 0, "baseline: {baseline}");
    assert!(
        baseline["p50Ms"].as_f64().unwrap_or(0.0) > 0.0,
        "baseline: {baseline}"
    );
    let phases = report["phases"].as_array().expect("phases");
    let by_name = |name: &str| {
        phases
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no phase {name} in {report}"))
    };
    for p in phases {
        let calls = p["calls"].as_u64().unwrap_or(0);
        assert!(calls >= 300, "{} made only {calls} calls", p["name"]);
        // The seed's retries hide a flaky and a broken pod; a call fails only if every try
        // lands on a failing pod before the broken one is ejected.
        let rate = p["successRate"].as_f64().unwrap_or(0.0);
        assert!(rate >= 99.0, "{}: success {rate}%", p["name"]);
    }
    // 95/5: v2's share over ~1,000 calls is 5% ± 0.7% (1σ); these bounds are beyond 4σ.
    let canary = share(by_name("canary"), "v2");
    assert!((2.0..=9.0).contains(&canary), "canary share {canary}%");
    assert!(
        by_name("flaky")["retries"].as_u64().unwrap_or(0) > 0,
        "no retries"
    );
    assert!(
        by_name("broken")["ejections"].as_u64().unwrap_or(0) >= 1,
        "no ejection"
    );
    let half = share(by_name("weight-50"), "v2");
    assert!(
        (40.0..=60.0).contains(&half),
        "after the change v2 has {half}%"
    );
    let swap = by_name("plugin-swap");
    assert_eq!(swap["failed"], 0, "the swap failed calls: {swap}");
    assert!(
        swap["newBuildCalls"].as_u64().unwrap_or(0) > 0,
        "the new build never answered"
    );

    let dir = work_dir(pid);
    assert_eq!(report["workDir"], dir.to_string_lossy().as_ref());
    assert!(!dir.exists(), "the work directory is removed");
    assert_eq!(processes_using(&dir), Vec::<String>::new());
}

#[test]
fn where_pods_cannot_be_made_the_demo_says_why_and_runs_the_explicit_mode() {
    // No `unshare`, `ip` or `iptables` on this PATH: as on a machine without them.
    let empty = tempfile::tempdir().expect("dir");
    let out = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["demo", "--duration", "15", "-o", "json"])
        .env("PATH", empty.path())
        .output()
        .expect("weft demo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stderr}");
    assert!(
        stderr.contains("cannot be made here (`unshare` is missing")
            && stderr.contains("running the explicit mode"),
        "no reason given:\n{stderr}"
    );
    assert!(
        !stderr.contains("captured by its sidecar"),
        "pods were made:\n{stderr}"
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let phases = report["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 5);
    for p in phases {
        let rate = p["successRate"].as_f64().unwrap_or(0.0);
        assert!(rate >= 99.0, "{}: success {rate}%", p["name"]);
    }
}

#[test]
fn ctrl_c_stops_every_process_the_demo_started() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_weft"))
        .args(["demo", "--duration", "120", "-o", "json"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn weft demo");
    let dir = work_dir(child.id());
    // Wait until the mesh is up and traffic flows (the first phase is announced).
    let stderr = child.stderr.take().expect("stderr");
    let mut lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let line = lines
            .next()
            .expect("the demo ended before its first phase")
            .expect("stderr");
        if line.starts_with("== canary") {
            break;
        }
        assert!(Instant::now() < deadline, "no first phase within 90 s");
    }
    assert!(
        processes_using(&dir).len() >= 5,
        "control plane and four sidecars run: {:?}",
        processes_using(&dir)
    );
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let exit = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "the demo did not stop on Ctrl-C");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(exit.success(), "{exit}");
    assert_eq!(processes_using(&dir), Vec::<String>::new());
    assert!(!dir.exists(), "the work directory is removed");
}
