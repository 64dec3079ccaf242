//! Pods on one machine, as `weft run` makes them: a network namespace per pod with its own
//! loopback and an `eth0` whose other end sits on a bridge, so pods on the bridge reach each
//! other (and the machine, at the bridge's address) without the host forwarding anything.
//! Addresses come from the bridge's subnet; a pod's address is held by a file naming its
//! process, so a crashed `weft run` frees its address for the next one.
//!
//! Everything is made with `ip` (iproute2) and removed by [`PodNet::remove`] and
//! [`remove_bridge_if_unused`].

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Why a pod's network could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// `ip` could not be run.
    #[error("cannot run ip (iproute2): {0}")]
    Spawn(std::io::Error),
    /// `ip` refused.
    #[error("ip {args}: {stderr}")]
    Refused {
        /// The arguments.
        args: String,
        /// What it said.
        stderr: String,
    },
    /// No address is free in the subnet.
    #[error("no free address left in {0}")]
    Exhausted(String),
    /// The state directory could not be used.
    #[error("{path}: {source}")]
    State {
        /// The path.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A bridge and the subnet its pods take addresses from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bridge {
    /// The bridge's interface name.
    pub name: String,
    /// Its address: the pods' gateway, where the machine's own services (the control plane)
    /// are reached from a pod.
    pub gateway: Ipv4Addr,
    /// The subnet's prefix length (8 to 30).
    pub prefix: u8,
}

fn ip(args: &[&str]) -> Result<(), PodError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(PodError::Spawn)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(PodError::Refused {
            args: args.join(" "),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

impl Bridge {
    /// Whether the bridge's interface exists.
    pub fn exists(&self) -> bool {
        Command::new("ip")
            .args(["link", "show", &self.name])
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// Makes the bridge unless it exists; true when this call made it.
    pub fn ensure(&self) -> Result<bool, PodError> {
        if self.exists() {
            return Ok(false);
        }
        if let Err(e) = ip(&["link", "add", &self.name, "type", "bridge"]) {
            // Another `weft run` made it in the meantime: it is that one's to remove. Its
            // address may not be on it yet; the pod's route through it waits for nothing.
            if self.exists() {
                self.wait_for_address();
                return Ok(false);
            }
            return Err(e);
        }
        let made = (|| {
            let cidr = format!("{}/{}", self.gateway, self.prefix);
            ip(&["addr", "add", &cidr, "dev", &self.name])?;
            ip(&["link", "set", &self.name, "up"])
        })();
        if let Err(e) = made {
            let _ = ip(&["link", "del", &self.name]);
            return Err(e);
        }
        Ok(true)
    }

    /// Waits (briefly) until the bridge that another process is making carries its address,
    /// so a pod's default route through it can be added.
    fn wait_for_address(&self) {
        let cidr = format!("{}/{}", self.gateway, self.prefix);
        for _ in 0..100 {
            let shown = Command::new("ip")
                .args(["-o", "addr", "show", "dev", &self.name])
                .output();
            if shown.is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains(&cidr)) {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The addresses pods may take: the subnet's hosts but the gateway.
    fn hosts(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        let mask = u32::MAX << (32 - u32::from(self.prefix));
        let network = u32::from(self.gateway) & mask;
        let size = !mask;
        (1..size)
            .map(move |i| Ipv4Addr::from(network | i))
            .filter(move |a| *a != self.gateway)
    }
}

/// Removes `bridge` when no pod is attached to it any more.
pub fn remove_bridge_if_unused(bridge: &str) {
    let ports = Command::new("ip")
        .args(["-o", "link", "show", "master", bridge])
        .output();
    if let Ok(out) = ports
        && out.status.success()
        && out.stdout.iter().all(u8::is_ascii_whitespace)
    {
        let _ = ip(&["link", "del", bridge]);
    }
}

/// A pod's network: its namespace, its end of the veth pair on the bridge, and its address.
#[derive(Debug)]
pub struct PodNet {
    /// The network namespace (`ip netns` name).
    pub netns: String,
    /// Its address on the bridge.
    pub address: Ipv4Addr,
    link: String,
    lease: PathBuf,
}

/// Where pods hold their addresses: one file per address, naming the holding process.
fn leases_dir(bridge: &str) -> PathBuf {
    Path::new("/run/weft/pods").join(bridge)
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Takes the first address of `bridge`'s subnet no live pod holds.
fn lease(bridge: &Bridge, holder: u32) -> Result<(Ipv4Addr, PathBuf), PodError> {
    let dir = leases_dir(&bridge.name);
    let state = |path: &Path, source| PodError::State {
        path: path.display().to_string(),
        source,
    };
    std::fs::create_dir_all(&dir).map_err(|e| state(&dir, e))?;
    for address in bridge.hosts() {
        let path = dir.join(address.to_string());
        let held = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| t.trim().parse::<u32>().ok())
            .is_some_and(alive);
        if held {
            continue;
        }
        // create_new: of two processes racing for a free address, one gets it.
        let _ = std::fs::remove_file(&path);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
        {
            Ok(mut f) => {
                use std::io::Write as _;
                f.write_all(holder.to_string().as_bytes())
                    .map_err(|e| state(&path, e))?;
                return Ok((address, path));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(state(&path, e)),
        }
    }
    Err(PodError::Exhausted(format!(
        "{}/{}",
        bridge.gateway, bridge.prefix
    )))
}

impl PodNet {
    /// Makes a pod's network on `bridge` for the process `holder`: a namespace with loopback
    /// up, `eth0` with a free address, the default route through the bridge.
    pub fn create(bridge: &Bridge, holder: u32) -> Result<PodNet, PodError> {
        let (address, lease) = lease(bridge, holder)?;
        let pod = PodNet {
            netns: format!("weft-pod-{holder}"),
            address,
            link: format!("wp{holder}"),
            lease,
        };
        let made = (|| {
            let ns = pod.netns.as_str();
            ip(&["netns", "add", ns])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&[
                "link", "add", &pod.link, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])?;
            ip(&["link", "set", &pod.link, "master", &bridge.name])?;
            ip(&["link", "set", &pod.link, "up"])?;
            let cidr = format!("{address}/{}", bridge.prefix);
            ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            ip(&[
                "-n",
                ns,
                "route",
                "add",
                "default",
                "via",
                &bridge.gateway.to_string(),
            ])
        })();
        if let Err(e) = made {
            pod.remove();
            return Err(e);
        }
        Ok(pod)
    }

    /// Removes the namespace, the veth pair and the address lease.
    pub fn remove(&self) {
        let _ = ip(&["link", "del", &self.link]);
        let _ = ip(&["netns", "del", &self.netns]);
        let _ = std::fs::remove_file(&self.lease);
        // The bridge's lease directory goes with its last pod (only an empty one is removed).
        if let Some(dir) = self.lease.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pods_take_the_subnets_hosts_but_the_gateway() {
        let b = Bridge {
            name: "b".into(),
            gateway: Ipv4Addr::new(198, 18, 0, 1),
            prefix: 29,
        };
        let hosts: Vec<Ipv4Addr> = b.hosts().collect();
        assert_eq!(hosts.first(), Some(&Ipv4Addr::new(198, 18, 0, 2)));
        assert_eq!(hosts.last(), Some(&Ipv4Addr::new(198, 18, 0, 6)));
        assert_eq!(hosts.len(), 5);
    }
}
