//! Where the captured demo runs: a network and mount namespace of its own (and, without root,
//! a user namespace too, so a laptop user needs no sudo), made by `unshare` around a second
//! `weft demo`. Its bridge, pods, capture rules and `/run` live and die with that namespace,
//! so nothing of it can be left on the machine. When the machine allows none of it, the demo
//! says why and runs in the explicit mode.

use anyhow::Context as _;
use std::process::{Command, Stdio};

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `unshare`'s options for the demo's namespaces: a user namespace (mapping us to root in it)
/// only when we are not root already.
pub fn unshare_flags() -> Vec<&'static str> {
    let mut flags = Vec::new();
    if !is_root() {
        flags.extend(["--user", "--map-root-user"]);
    }
    flags.extend(["--net", "--mount"]);
    flags
}

/// What the namespace must allow, tried in a throwaway one: a private `/run`, a pod
/// namespace, nat rules in it.
const PROBE: &str = "mount -t tmpfs tmpfs /run && ip link set lo up && ip netns add weft-probe \
     && ip netns exec weft-probe iptables-restore --version >/dev/null \
     && ip netns exec weft-probe iptables -t nat -S >/dev/null";

/// Whether the captured mode can run here; the reason when it cannot.
pub fn probe() -> Result<(), String> {
    for (tool, package) in [
        ("unshare", "util-linux"),
        ("ip", "iproute2"),
        ("iptables-restore", "iptables"),
    ] {
        let found = Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            return Err(format!("`{tool}` is missing (Debian package {package})"));
        }
    }
    let out = Command::new("unshare")
        .args(unshare_flags())
        .args(["sh", "-c", PROBE])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("unshare: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        let how = if is_root() {
            "a network namespace"
        } else {
            "an unprivileged user namespace"
        };
        Err(format!(
            "{how} did not allow it: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Inside the namespace, before anything else: a private `/run` (where `ip netns` and `weft
/// run` keep their state) and loopback up.
pub fn prepare_inside() -> anyhow::Result<()> {
    for (tool, args) in [
        ("mount", &["-t", "tmpfs", "tmpfs", "/run"][..]),
        ("ip", &["link", "set", "lo", "up"][..]),
    ] {
        let status = Command::new(tool)
            .args(args)
            .status()
            .with_context(|| format!("running {tool}"))?;
        anyhow::ensure!(status.success(), "{tool} {} failed", args.join(" "));
    }
    Ok(())
}

/// Runs this executable with `args` inside the namespaces, passing SIGINT and SIGTERM on to
/// it (it stops its pods and cleans up), and returns its exit code.
pub fn run_inside(args: &[String]) -> anyhow::Result<i32> {
    let exe = std::env::current_exe().context("finding the weft executable")?;
    // Without --fork, unshare becomes the demo: the child is the demo itself.
    let mut child = Command::new("unshare")
        .args(unshare_flags())
        .arg("--")
        .arg(exe)
        .args(args)
        .spawn()
        .context("starting the demo in its namespaces")?;
    let pid = child.id();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let code = runtime.block_on(async {
        let waited = tokio::task::spawn_blocking(move || child.wait());
        tokio::pin!(waited);
        loop {
            tokio::select! {
                status = &mut waited => {
                    return status.ok().and_then(Result::ok).and_then(|s| s.code()).unwrap_or(1);
                }
                () = super::super::wait_for_signal() => {
                    let _ = Command::new("kill").args(["-INT", &pid.to_string()]).status();
                }
            }
        }
    });
    Ok(code)
}
