//! `weft capture`: installs (or removes) the nat rules that send a pod's TCP through its
//! sidecar, in the network namespace it runs in: the step an init container runs before the
//! app starts.

use anyhow::Context as _;
use clap::Args as ClapArgs;
use weft::capture::{Capture, InboundPorts};

/// Options of `weft capture`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The sidecar's outbound listener port: the app's outbound TCP is sent here.
    #[arg(long, default_value_t = 15001)]
    outbound_port: u16,
    /// The sidecar's inbound listener port: TCP arriving for the pod is sent here.
    #[arg(long, default_value_t = 15006)]
    inbound_port: u16,
    /// The firewall mark of the sidecar's own sockets (its `proxyMark`): they pass.
    #[arg(long, default_value_t = weft::capture::DEFAULT_MARK)]
    proxy_mark: u32,
    /// A user whose sockets pass too (a sidecar run under its own uid).
    #[arg(long)]
    proxy_uid: Option<u32>,
    /// Inbound ports to capture, comma-separated, or `*` for all.
    #[arg(long, default_value = "*")]
    inbound_ports: String,
    /// Inbound ports never captured, comma-separated.
    #[arg(long, default_value = "")]
    exclude_inbound_ports: String,
    /// Destination ports the app reaches directly, comma-separated.
    #[arg(long, default_value = "")]
    exclude_outbound_ports: String,
    /// The sidecar's DNS proxy port: the app's DNS questions (UDP 53) are sent there.
    #[arg(long)]
    dns_port: Option<u16>,
    /// Print the rules instead of installing them.
    #[arg(long)]
    dry_run: bool,
    /// Remove Weft's rules instead of installing them.
    #[arg(long, conflicts_with = "dry_run")]
    clean: bool,
}

fn ports(flag: &str, text: &str) -> anyhow::Result<Vec<u16>> {
    text.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => anyhow::bail!("--{flag}: {p:?} is not a port (1-65535)"),
        })
        .collect()
}

/// Runs `weft capture`.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.clean {
        weft::capture::clean().context("removing the capture rules")?;
        eprintln!("weft capture: rules removed");
        return Ok(());
    }
    let inbound_ports = if args.inbound_ports.trim() == "*" {
        InboundPorts::All
    } else {
        InboundPorts::Only(ports("inbound-ports", &args.inbound_ports)?)
    };
    let capture = Capture {
        outbound_port: args.outbound_port,
        inbound_port: args.inbound_port,
        proxy_mark: args.proxy_mark,
        proxy_uid: args.proxy_uid,
        inbound_ports,
        exclude_inbound_ports: ports("exclude-inbound-ports", &args.exclude_inbound_ports)?,
        exclude_outbound_ports: ports("exclude-outbound-ports", &args.exclude_outbound_ports)?,
        dns_port: args.dns_port,
    };
    if args.dry_run {
        print!("{}", capture.rules());
        return Ok(());
    }
    capture.apply().context("installing the capture rules")?;
    eprintln!(
        "weft capture: outbound TCP -> :{}, inbound TCP -> :{} (sockets marked {:#x} pass)",
        capture.outbound_port, capture.inbound_port, capture.proxy_mark
    );
    Ok(())
}
