//! Network namespaces for tests, as pods: each with its own loopback and a veth pair to the
//! test's own namespace, addressed from 198.18.0.0/15. Everything made here is removed when
//! its guard drops, a failing test included; nothing else is touched.

use std::net::Ipv4Addr;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Why the test cannot make namespaces here, or none when it can (root, `ip netns` works).
pub fn unavailable() -> Option<String> {
    let uid = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&uid.stdout).trim() != "0" {
        return Some("not root: network namespaces and nat rules need root".into());
    }
    // One name per call: tests of one binary probe at the same time.
    static PROBES: AtomicU32 = AtomicU32::new(0);
    let probe = format!(
        "weft-probe-{}-{}",
        std::process::id(),
        PROBES.fetch_add(1, Ordering::Relaxed)
    );
    match Command::new("ip").args(["netns", "add", &probe]).output() {
        Ok(o) if o.status.success() => {
            let _ = Command::new("ip").args(["netns", "del", &probe]).output();
            None
        }
        Ok(o) => Some(format!(
            "`ip netns add` failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Some(format!("cannot run `ip`: {e}")),
    }
}

/// Installs Debian packages the test needs when their commands are missing, one installer at
/// a time across test binaries.
pub fn ensure_packages(wanted: &[(&str, &str)]) {
    let checks: Vec<(String, &str)> = wanted
        .iter()
        .map(|(command, package)| (format!("command -v {command}"), *package))
        .collect();
    ensure_checked(&checks);
}

/// Debian's Python, which Debian's Python modules are installed for (a `python3` earlier on
/// the PATH may be another).
#[allow(dead_code)]
pub const DEBIAN_PYTHON: &str = "/usr/bin/python3";

/// Installs the Debian packages of Python modules the test needs when they do not import in
/// [`DEBIAN_PYTHON`].
#[allow(dead_code)]
pub fn ensure_python_modules(wanted: &[(&str, &str)]) {
    let checks: Vec<(String, &str)> = wanted
        .iter()
        .map(|(module, package)| (format!("{DEBIAN_PYTHON} -c 'import {module}'"), *package))
        .collect();
    ensure_checked(&checks);
}

/// Installs each package whose shell check fails.
fn ensure_checked(wanted: &[(String, &str)]) {
    let missing: Vec<&str> = wanted
        .iter()
        .filter(|(check, _)| {
            !Command::new("sh")
                .args(["-c", check])
                .output()
                .is_ok_and(|o| o.status.success())
        })
        .map(|(_, package)| *package)
        .collect();
    if missing.is_empty() {
        return;
    }
    let script = format!(
        "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {}",
        missing.join(" ")
    );
    let out = Command::new("flock")
        .args(["/tmp/weft-tests-apt.lock", "sh", "-c", &script])
        .output()
        .expect("run apt-get");
    assert!(
        out.status.success(),
        "installing {missing:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

static NEXT: AtomicU32 = AtomicU32::new(0);

/// A network namespace with a veth pair to the test's namespace: `host` on this side, `pod`
/// inside, a /30 between them, the pod's default route through `host`.
pub struct Pod {
    pub name: String,
    pub host: Ipv4Addr,
    pub pod: Ipv4Addr,
    link: String,
}

impl Pod {
    pub fn new() -> Pod {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        // Per process and pod, so test binaries running side by side never share a subnet.
        let subnet = (pid % 64) * 4 + n % 4;
        let (third, fourth) = (subnet / 64, (subnet % 64) * 4);
        let host = Ipv4Addr::new(198, 19, 200 + third as u8, fourth as u8 + 1);
        let pod = Ipv4Addr::new(198, 19, 200 + third as u8, fourth as u8 + 2);
        let name = format!("weft-test-{pid}-{n}");
        let link = format!("wv{}{n}", pid % 10_000_000);
        let p = Pod {
            name,
            host,
            pod,
            link,
        };
        let peer = format!("{}p", p.link);
        let ns = p.name.clone();
        for args in [
            vec!["netns", "add", &ns],
            vec!["-n", &ns, "link", "set", "lo", "up"],
            vec![
                "link", "add", &p.link, "type", "veth", "peer", "name", &peer, "netns", &ns,
            ],
            vec!["addr", "add", &format!("{}/30", p.host), "dev", &p.link],
            vec!["link", "set", &p.link, "up"],
            vec![
                "-n",
                &ns,
                "addr",
                "add",
                &format!("{}/30", p.pod),
                "dev",
                &peer,
            ],
            vec!["-n", &ns, "link", "set", &peer, "up"],
            vec![
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &p.host.to_string(),
            ],
        ] {
            let out = Command::new("ip").args(&args).output().expect("run ip");
            assert!(
                out.status.success(),
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        p
    }

    /// Runs `program args` inside the namespace and waits for it.
    pub fn run(&self, program: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.name, program])
            .args(args)
            .output()
            .expect("run ip netns exec")
    }

    /// A command that runs `program` inside the namespace, to spawn.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        // The veth pair goes with the namespace; deleted here too in case a process inside
        // still holds the namespace open.
        let _ = Command::new("ip")
            .args(["link", "del", &self.link])
            .output();
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A child process killed (and reaped) when dropped.
pub struct Child(pub std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
