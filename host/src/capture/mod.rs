//! Transparent capture, as Istio's init step sets it up: nat rules in a pod's network namespace
//! send the app's outbound TCP to the sidecar's outbound listener and inbound TCP to its
//! inbound listener, and the sidecar reads where each connection was going from the socket
//! ([`socket::original_dst`]).
//!
//! The sidecar's own connections are not captured: every socket it opens carries a firewall
//! mark ([`Capture::proxy_mark`]), and the rules let marked packets pass; a user id can be
//! excluded too, as Istio excludes uid 1337. Loopback traffic stays the app's own (calls to
//! `127.0.0.1`, and the sidecar's calls to its app). The rules go in with one
//! `iptables-restore`, so they are in place whole or not at all, and come out the same way.

pub mod socket;

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};

/// The mark the sidecar's sockets carry by default (Istio's proxy uid, 1337).
pub const DEFAULT_MARK: u32 = 1337;

/// Which inbound ports are captured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum InboundPorts {
    /// Every port but the excluded ones (Istio's `*`).
    All,
    /// Only these.
    Only(Vec<u16>),
}

/// What to capture and where to send it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Capture {
    /// The sidecar's outbound listener: the app's outbound TCP goes here.
    pub outbound_port: u16,
    /// The sidecar's inbound listener: TCP arriving for the pod goes here.
    pub inbound_port: u16,
    /// Packets of sockets with this mark are the sidecar's own and pass.
    pub proxy_mark: u32,
    /// Packets of sockets owned by this user pass too (for a sidecar run under its own uid).
    pub proxy_uid: Option<u32>,
    /// Inbound ports captured.
    pub inbound_ports: InboundPorts,
    /// Inbound ports never captured (e.g. `22`); the sidecar's own listeners always pass.
    pub exclude_inbound_ports: Vec<u16>,
    /// Destination ports the app reaches directly, not through its sidecar.
    pub exclude_outbound_ports: Vec<u16>,
    /// The sidecar's DNS proxy (UDP): the app's DNS questions (UDP port 53, to any server) go
    /// here; none leaves DNS alone.
    pub dns_port: Option<u16>,
}

impl Default for Capture {
    fn default() -> Self {
        Capture {
            outbound_port: 15001,
            inbound_port: 15006,
            proxy_mark: DEFAULT_MARK,
            proxy_uid: None,
            inbound_ports: InboundPorts::All,
            exclude_inbound_ports: Vec::new(),
            exclude_outbound_ports: Vec::new(),
            dns_port: None,
        }
    }
}

/// Why capture could not be set up or removed.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    /// `iptables-restore` or `iptables` could not be run.
    #[error("cannot run {tool}: {source} (capture needs the iptables package and CAP_NET_ADMIN)")]
    Spawn {
        /// The program.
        tool: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// The rules were refused.
    #[error("{tool} failed: {stderr}")]
    Refused {
        /// The program.
        tool: &'static str,
        /// What it said.
        stderr: String,
    },
}

/// The chains Weft owns in the nat table, each jumped to from one built-in chain.
const CHAINS: [(&str, Option<&str>); 5] = [
    ("WEFT_INBOUND", Some("PREROUTING")),
    ("WEFT_IN_REDIRECT", None),
    ("WEFT_OUTPUT", Some("OUTPUT")),
    ("WEFT_REDIRECT", None),
    ("WEFT_DNS", Some("OUTPUT")),
];

impl Capture {
    /// The rules, as `iptables-restore --noflush` input for the nat table.
    pub fn rules(&self) -> String {
        let mut r = String::from("*nat\n");
        for (chain, _) in CHAINS {
            let _ = writeln!(r, ":{chain} - [0:0]");
        }
        // Inbound: the sidecar's own listeners pass (a peer sidecar dials the inbound
        // listener directly), excluded ports pass, the rest goes to the inbound listener.
        r.push_str("-A PREROUTING -p tcp -j WEFT_INBOUND\n");
        let mut passing = vec![self.inbound_port, self.outbound_port];
        passing.extend(&self.exclude_inbound_ports);
        for port in passing {
            let _ = writeln!(r, "-A WEFT_INBOUND -p tcp --dport {port} -j RETURN");
        }
        match &self.inbound_ports {
            InboundPorts::All => r.push_str("-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT\n"),
            InboundPorts::Only(ports) => {
                for port in ports {
                    let _ = writeln!(
                        r,
                        "-A WEFT_INBOUND -p tcp --dport {port} -j WEFT_IN_REDIRECT"
                    );
                }
            }
        }
        let _ = writeln!(
            r,
            "-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            self.inbound_port
        );
        // Outbound: the sidecar's own sockets pass (by mark, and by uid when given), loopback
        // stays local, excluded ports pass, the rest goes to the outbound listener.
        r.push_str("-A OUTPUT -p tcp -j WEFT_OUTPUT\n");
        let _ = writeln!(
            r,
            "-A WEFT_OUTPUT -m mark --mark {:#x} -j RETURN",
            self.proxy_mark
        );
        if let Some(uid) = self.proxy_uid {
            let _ = writeln!(r, "-A WEFT_OUTPUT -m owner --uid-owner {uid} -j RETURN");
        }
        r.push_str("-A WEFT_OUTPUT -o lo -j RETURN\n");
        for port in &self.exclude_outbound_ports {
            let _ = writeln!(r, "-A WEFT_OUTPUT -p tcp --dport {port} -j RETURN");
        }
        r.push_str("-A WEFT_OUTPUT -j WEFT_REDIRECT\n");
        let _ = writeln!(
            r,
            "-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports {}",
            self.outbound_port
        );
        // DNS: the app's questions go to the sidecar's DNS proxy; the proxy's own questions
        // upstream carry the mark and pass.
        if let Some(port) = self.dns_port {
            r.push_str("-A OUTPUT -p udp --dport 53 -j WEFT_DNS\n");
            let _ = writeln!(
                r,
                "-A WEFT_DNS -m mark --mark {:#x} -j RETURN",
                self.proxy_mark
            );
            if let Some(uid) = self.proxy_uid {
                let _ = writeln!(r, "-A WEFT_DNS -m owner --uid-owner {uid} -j RETURN");
            }
            let _ = writeln!(r, "-A WEFT_DNS -p udp -j REDIRECT --to-ports {port}");
        }
        r.push_str("COMMIT\n");
        r
    }

    /// Installs the rules in the current network namespace, replacing any Weft rules already
    /// there, so running it twice leaves one set.
    pub fn apply(&self) -> Result<(), CaptureError> {
        clean()?;
        restore(&self.rules())
    }
}

/// The input that removes Weft's rules: the jumps from the built-in chains, then the chains.
/// Empty when none are installed.
fn removal(current: &str) -> String {
    let ours: Vec<&str> = CHAINS
        .iter()
        .map(|(c, _)| *c)
        .filter(|c| current.lines().any(|l| l == format!("-N {c}")))
        .collect();
    if ours.is_empty() {
        return String::new();
    }
    let mut r = String::from("*nat\n");
    for (chain, from) in CHAINS {
        if let Some(from) = from
            && ours.contains(&chain)
        {
            for line in current.lines() {
                if line.starts_with(&format!("-A {from} "))
                    && line.ends_with(&format!("-j {chain}"))
                {
                    let _ = writeln!(r, "-D{}", &line[2..]);
                }
            }
        }
    }
    for chain in &ours {
        let _ = writeln!(r, "-F {chain}");
    }
    for chain in &ours {
        let _ = writeln!(r, "-X {chain}");
    }
    r.push_str("COMMIT\n");
    r
}

/// The nat table's rules as `iptables -t nat -S` lists them.
fn current_rules() -> Result<String, CaptureError> {
    let tool = "iptables";
    let out = Command::new(tool)
        .args(["-t", "nat", "-S"])
        .output()
        .map_err(|source| CaptureError::Spawn { tool, source })?;
    if !out.status.success() {
        return Err(CaptureError::Refused {
            tool,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Removes Weft's rules from the current network namespace; nothing to do when there are none.
pub fn clean() -> Result<(), CaptureError> {
    let input = removal(&current_rules()?);
    if input.is_empty() {
        return Ok(());
    }
    restore(&input)
}

fn restore(input: &str) -> Result<(), CaptureError> {
    let tool = "iptables-restore";
    let mut child = Command::new(tool)
        .arg("--noflush")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| CaptureError::Spawn { tool, source })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input.as_bytes())
            .map_err(|source| CaptureError::Spawn { tool, source })?;
    }
    let out = child
        .wait_with_output()
        .map_err(|source| CaptureError::Spawn { tool, source })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(CaptureError::Refused {
            tool,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_rules_capture_everything_but_the_sidecar_and_loopback() {
        let r = Capture::default().rules();
        let lines: Vec<&str> = r.lines().collect();
        assert_eq!(lines.first(), Some(&"*nat"));
        assert_eq!(lines.last(), Some(&"COMMIT"));
        for want in [
            "-A PREROUTING -p tcp -j WEFT_INBOUND",
            "-A WEFT_INBOUND -p tcp --dport 15006 -j RETURN",
            "-A WEFT_INBOUND -p tcp --dport 15001 -j RETURN",
            "-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT",
            "-A WEFT_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006",
            "-A OUTPUT -p tcp -j WEFT_OUTPUT",
            "-A WEFT_OUTPUT -m mark --mark 0x539 -j RETURN",
            "-A WEFT_OUTPUT -o lo -j RETURN",
            "-A WEFT_OUTPUT -j WEFT_REDIRECT",
            "-A WEFT_REDIRECT -p tcp -j REDIRECT --to-ports 15001",
        ] {
            assert!(lines.contains(&want), "missing {want:?} in\n{r}");
        }
        // The sidecar's own sockets pass before anything is redirected.
        let pass = lines.iter().position(|l| l.contains("--mark"));
        let redirect = lines
            .iter()
            .position(|l| *l == "-A WEFT_OUTPUT -j WEFT_REDIRECT");
        assert!(pass < redirect);
    }

    #[test]
    fn port_lists_and_uid_shape_the_rules() {
        let c = Capture {
            proxy_uid: Some(1337),
            inbound_ports: InboundPorts::Only(vec![8080, 9090]),
            exclude_inbound_ports: vec![22],
            exclude_outbound_ports: vec![5432],
            ..Capture::default()
        };
        let r = c.rules();
        assert!(r.contains("-A WEFT_INBOUND -p tcp --dport 22 -j RETURN\n"));
        assert!(r.contains("-A WEFT_INBOUND -p tcp --dport 8080 -j WEFT_IN_REDIRECT\n"));
        assert!(r.contains("-A WEFT_INBOUND -p tcp --dport 9090 -j WEFT_IN_REDIRECT\n"));
        assert!(!r.contains("-A WEFT_INBOUND -p tcp -j WEFT_IN_REDIRECT\n"));
        assert!(r.contains("-A WEFT_OUTPUT -m owner --uid-owner 1337 -j RETURN\n"));
        assert!(r.contains("-A WEFT_OUTPUT -p tcp --dport 5432 -j RETURN\n"));
        assert!(!r.contains("-j WEFT_DNS"), "no DNS capture unless asked");
        let dns = Capture {
            dns_port: Some(15053),
            ..c
        }
        .rules();
        assert!(dns.contains("-A OUTPUT -p udp --dport 53 -j WEFT_DNS\n"));
        assert!(dns.contains("-A WEFT_DNS -m mark --mark 0x539 -j RETURN\n"));
        assert!(dns.contains("-A WEFT_DNS -p udp -j REDIRECT --to-ports 15053\n"));
    }

    #[test]
    fn removal_takes_out_only_weft_rules() {
        let current = "-P PREROUTING ACCEPT\n-P OUTPUT ACCEPT\n-N OTHER\n-N WEFT_INBOUND\n\
            -N WEFT_IN_REDIRECT\n-N WEFT_OUTPUT\n-N WEFT_REDIRECT\n\
            -A PREROUTING -p tcp -j WEFT_INBOUND\n-A PREROUTING -p udp -j OTHER\n\
            -N WEFT_DNS\n-A OUTPUT -p tcp -j WEFT_OUTPUT\n-A WEFT_OUTPUT -j WEFT_REDIRECT\n\
            -A OUTPUT -p udp -m udp --dport 53 -j WEFT_DNS\n";
        let r = removal(current);
        assert!(r.contains("-D PREROUTING -p tcp -j WEFT_INBOUND\n"));
        assert!(r.contains("-D OUTPUT -p tcp -j WEFT_OUTPUT\n"));
        assert!(r.contains("-D OUTPUT -p udp -m udp --dport 53 -j WEFT_DNS\n"));
        assert!(!r.contains("OTHER"));
        for chain in [
            "WEFT_INBOUND",
            "WEFT_IN_REDIRECT",
            "WEFT_OUTPUT",
            "WEFT_REDIRECT",
            "WEFT_DNS",
        ] {
            assert!(r.contains(&format!("-F {chain}\n")));
            assert!(r.contains(&format!("-X {chain}\n")));
        }
        assert_eq!(removal("-P OUTPUT ACCEPT\n"), "");
    }
}
