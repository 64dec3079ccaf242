//! `weft run`: a pod on this machine. The app runs in a network namespace of its own with a
//! sidecar beside it and every TCP connection captured; the sidecar's bootstrap is generated
//! and its token fetched from the control plane with the operator's credentials, kept in a
//! private directory for the pod's life. All of it is removed when the app exits or on
//! Ctrl-C / SIGTERM, and `weft run` exits with the app's status.

use super::operator::Conn;
use anyhow::Context as _;
use clap::Args as ClapArgs;
use std::io::BufRead as _;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use weft::pod::{Bridge, PodNet};

/// The sidecar's ports inside a pod (Istio's).
const OUTBOUND: u16 = 15001;
const INBOUND: u16 = 15006;
const ADMIN: u16 = 15000;
const DNS: u16 = 15053;
/// Istio's port for scraping a sidecar's metrics on the pod's address.
const STATS: u16 = 15090;

/// Options of `weft run`.
#[derive(Debug, ClapArgs)]
pub struct Args {
    /// The service this pod is an instance of.
    #[arg(long)]
    service: String,
    /// The service's namespace.
    #[arg(short = 'n', long, default_value = "default")]
    namespace: String,
    /// The pod's labels, comma-separated `key=value` (subsets select on them).
    #[arg(long, default_value = "")]
    labels: String,
    /// The port the app listens on inside the pod.
    #[arg(long, default_value_t = 8080)]
    app_port: u16,
    /// Mutual TLS on the pod's inbound side: STRICT or PERMISSIVE.
    #[arg(long, default_value = "STRICT", value_parser = ["STRICT", "PERMISSIVE"])]
    mtls: String,
    /// The bridge pods attach to (made when missing, removed with the last pod it served).
    #[arg(long, default_value = "weft0")]
    bridge: String,
    /// The bridge's address and prefix: the pods' gateway and subnet.
    #[arg(long, default_value = "198.18.0.1/16")]
    gateway: String,
    /// Resolvers the pod's DNS proxy asks for names outside the mesh, comma-separated
    /// `ip:port`; by default the machine's (its `/etc/resolv.conf`, loopback ones left out,
    /// since a pod cannot reach the machine's loopback).
    #[arg(long)]
    dns_upstream: Option<String>,
    /// Destination ports the app's connections to are carried as TCP without protocol
    /// detection, comma-separated (declare a server-first protocol's port here); by default
    /// 25, 587, 3306, 4444, 5432, 6379, 9300 and 11211.
    #[arg(long)]
    opaque_ports: Option<String>,
    /// The user the app runs as (a name or uid, via `runuser`). Without CAP_NET_ADMIN it
    /// cannot set the sidecar's firewall mark, so it cannot get around its sidecar; by
    /// default the app runs as the user `weft run` runs as.
    #[arg(long)]
    user: Option<String>,
    /// How long the sidecar may take to be ready (its plugins compile on first start).
    #[arg(long, default_value = "120s", value_parser = weft::snapshot::parse_duration)]
    ready_timeout: Duration,
    #[command(flatten)]
    conn: Conn,
    /// The app and its arguments.
    #[arg(last = true, required = true)]
    command: Vec<String>,
}

fn parse_gateway(name: &str, text: &str) -> anyhow::Result<Bridge> {
    let (ip, prefix) = text
        .split_once('/')
        .with_context(|| format!("--gateway: {text:?} is not address/prefix"))?;
    let gateway: Ipv4Addr = ip
        .parse()
        .with_context(|| format!("--gateway: {ip:?} is not an IPv4 address"))?;
    let prefix: u8 = match prefix.parse() {
        Ok(p) if (8..=30).contains(&p) => p,
        _ => anyhow::bail!("--gateway: prefix {prefix:?} is not from 8 to 30"),
    };
    Ok(Bridge {
        name: name.to_string(),
        gateway,
        prefix,
    })
}

fn labels(text: &str) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let mut out = serde_json::Map::new();
    for pair in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (k, v) = pair
            .split_once('=')
            .with_context(|| format!("--labels: {pair:?} is not key=value"))?;
        out.insert(k.to_string(), serde_json::Value::String(v.to_string()));
    }
    Ok(out)
}

/// Stops a child politely (SIGTERM), then for good after `patience`.
fn stop(child: &mut Child, patience: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let start = Instant::now();
    while start.elapsed() < patience {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// What a pod holds, released in reverse on drop: whatever happened, nothing stays.
struct Held {
    bridge: Bridge,
    made_bridge: bool,
    pod: Option<PodNet>,
    dir: Option<PathBuf>,
    resolv: Option<PathBuf>,
    sidecar: Option<Child>,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(mut sidecar) = self.sidecar.take() {
            // A drain lets its last calls finish.
            stop(&mut sidecar, Duration::from_secs(12));
        }
        if let Some(pod) = self.pod.take() {
            pod.remove();
        }
        if let Some(dir) = self.dir.take() {
            let _ = std::fs::remove_dir_all(dir);
        }
        if let Some(dir) = self.resolv.take() {
            let _ = std::fs::remove_dir_all(dir);
            // Only an empty one: other namespaces' files stay.
            let _ = std::fs::remove_dir("/etc/netns");
        }
        if self.made_bridge || made_marker(&self.bridge.name).exists() {
            weft::pod::remove_bridge_if_unused(&self.bridge.name);
            if !self.bridge.exists() {
                let _ = std::fs::remove_file(made_marker(&self.bridge.name));
            }
        }
        // The run directory goes with the last pod (only empty directories are removed).
        let _ = std::fs::remove_dir("/run/weft/pods");
        let _ = std::fs::remove_dir("/run/weft");
    }
}

fn made_marker(bridge: &str) -> PathBuf {
    Path::new("/run/weft/pods").join(format!("{bridge}.made-by-weft-run"))
}

/// The resolvers for names outside the mesh: the ones given, else the machine's that a pod
/// can reach (not loopback).
fn dns_upstreams(given: Option<&str>) -> anyhow::Result<Vec<SocketAddr>> {
    match given {
        Some(text) => text
            .split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                t.parse()
                    .with_context(|| format!("--dns-upstream: {t:?} is not ip:port"))
            })
            .collect(),
        None => Ok(std::fs::read_to_string("/etc/resolv.conf")
            .map(|t| weft::dns::server::nameservers(&t))
            .unwrap_or_default()
            .into_iter()
            .filter(|a| !a.ip().is_loopback())
            .collect()),
    }
}

/// The pod's `resolv.conf`, which `ip netns exec` puts in place of the machine's for
/// everything run in the pod: Kubernetes' search list, so `payments` is tried as
/// `payments.<namespace>.svc.cluster.local` first, and a nameserver the capture rules send to
/// the sidecar anyway. Returns the directory to remove.
fn write_resolv_conf(
    netns: &str,
    namespace: &str,
    upstreams: &[SocketAddr],
    gateway: Ipv4Addr,
) -> anyhow::Result<PathBuf> {
    let dir = Path::new("/etc/netns").join(netns);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let domain = weft::names::cluster_domain();
    let server = upstreams
        .first()
        .map_or(std::net::IpAddr::V4(gateway), SocketAddr::ip);
    let text = format!(
        "# weft run: the pod's sidecar answers these questions (mesh names itself).\n\
         search {namespace}.svc.{domain} svc.{domain} {domain}\n\
         nameserver {server}\n\
         options ndots:5\n"
    );
    std::fs::write(dir.join("resolv.conf"), text)
        .with_context(|| format!("writing {}/resolv.conf", dir.display()))?;
    Ok(dir)
}

/// Runs `weft run`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let code = pod(args)?;
    std::process::exit(code);
}

fn pod(args: Args) -> anyhow::Result<i32> {
    let bridge = parse_gateway(&args.bridge, &args.gateway)?;
    let labels = labels(&args.labels)?;
    let exe = std::env::current_exe().context("finding the weft binary")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // The token first: a control plane that refuses us leaves nothing to clean up.
    let answer = runtime
        .block_on(args.conn.call(
            http::Method::GET,
            &format!("/v1/tokens/{}?namespace={}", args.service, args.namespace),
            bytes::Bytes::new(),
        ))
        .context("getting the sidecar's token from the control plane")?;
    let token = answer["token"]
        .as_str()
        .context("the control plane answered without a token")?
        .to_string();
    let bundle = std::fs::canonicalize(args.conn.bundle_path()).with_context(|| {
        format!(
            "the mesh's trust bundle {}",
            args.conn.bundle_path().display()
        )
    })?;
    // The control plane as the pod sees it: across the bridge when it listens on loopback
    // here (it must then listen on every address, or on the bridge's).
    let server = args.conn.server();
    let control = if server.ip().is_loopback() {
        SocketAddr::from((bridge.gateway, server.port()))
    } else {
        server
    };

    let mut held = Held {
        made_bridge: false,
        bridge: bridge.clone(),
        pod: None,
        dir: None,
        resolv: None,
        sidecar: None,
    };
    std::fs::create_dir_all("/run/weft/pods").context("creating /run/weft/pods")?;
    held.made_bridge = bridge.ensure().context("making the pods' bridge")?;
    if held.made_bridge {
        let _ = std::fs::write(made_marker(&bridge.name), b"");
    }
    let pid = std::process::id();
    let pod = PodNet::create(&bridge, pid).context("making the pod's network")?;
    let (netns, address) = (pod.netns.clone(), pod.address);
    held.pod = Some(pod);

    // The pod's private files: only this user reads the token.
    let dir = Path::new("/run/weft/pods").join(format!("{pid}.d"));
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("creating {}", dir.display()))?;
    held.dir = Some(dir.clone());
    {
        use std::io::Write as _;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(dir.join("token"))
            .context("writing the token")?;
        f.write_all(token.as_bytes())?;
    }
    let upstreams = dns_upstreams(args.dns_upstream.as_deref())?;
    let opaque: Option<Vec<u16>> = match &args.opaque_ports {
        None => None,
        Some(text) => Some(
            text.split(',')
                .map(str::trim)
                .filter(|p| !p.is_empty())
                .map(|p| match p.parse::<u16>() {
                    Ok(n) if n > 0 => Ok(n),
                    _ => Err(anyhow::anyhow!("--opaque-ports: {p:?} is not a port")),
                })
                .collect::<anyhow::Result<_>>()?,
        ),
    };
    // Where /etc is not ours to write (an unprivileged user namespace), the pod keeps the
    // machine's resolv.conf: its questions reach the sidecar all the same, only without
    // Kubernetes' search list.
    match write_resolv_conf(&netns, &args.namespace, &upstreams, bridge.gateway) {
        Ok(dir) => held.resolv = Some(dir),
        Err(e) => eprintln!(
            "weft run: no resolv.conf for the pod ({e:#}); names still resolve through its sidecar"
        ),
    }
    let bootstrap = serde_json::json!({
        "service": args.service,
        "namespace": args.namespace,
        "outbound": format!("127.0.0.1:{OUTBOUND}"),
        "inbound": format!("0.0.0.0:{INBOUND}"),
        "admin": format!("127.0.0.1:{ADMIN}"),
        "app": format!("127.0.0.1:{}", args.app_port),
        "advertise": format!("{address}:{INBOUND}"),
        "labels": labels,
        "mtls": args.mtls,
        "proxyMark": weft::capture::DEFAULT_MARK,
        "workerThreads": 1,
        "stats": format!("0.0.0.0:{STATS}"),
        "opaquePorts": opaque,
        "dns": {"listen": format!("127.0.0.1:{DNS}"),
                "upstreams": upstreams.iter().map(ToString::to_string).collect::<Vec<_>>()},
        "controlPlane": {"address": control.to_string(), "tokenFile": "token",
                         "caFile": bundle},
    });
    std::fs::write(dir.join("bootstrap.json"), bootstrap.to_string())?;

    let status = Command::new("ip")
        .args(["netns", "exec", &netns])
        .arg(&exe)
        .args(["capture", "--inbound-port", &INBOUND.to_string()])
        .args(["--outbound-port", &OUTBOUND.to_string()])
        .args(["--dns-port", &DNS.to_string()])
        .args(["--exclude-inbound-ports", &STATS.to_string()])
        .status()
        .context("running weft capture in the pod")?;
    anyhow::ensure!(status.success(), "weft capture failed in the pod");

    let mut sidecar = Command::new("ip")
        .args(["netns", "exec", &netns])
        .arg(&exe)
        .arg("sidecar")
        .arg("--config")
        .arg(dir.join("bootstrap.json"))
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the sidecar")?;
    let ready = sidecar.stdout.take().map(|out| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                if line.starts_with("weft sidecar configured") {
                    let _ = tx.send(());
                }
                // Past readiness its stdout is the pod's log.
                tracing::info!(target: "weft::run::sidecar", "{line}");
            }
        });
        rx
    });
    held.sidecar = Some(sidecar);
    let became_ready = ready.is_some_and(|rx| rx.recv_timeout(args.ready_timeout).is_ok());
    anyhow::ensure!(
        became_ready,
        "the sidecar was not ready within {:?}",
        args.ready_timeout
    );
    eprintln!(
        "weft run: pod {address} ({} in {}), sidecar ready; starting {}",
        args.service, args.namespace, args.command[0]
    );

    let mut app = Command::new("ip");
    app.args(["netns", "exec", &netns]);
    if let Some(user) = &args.user {
        app.args(["runuser", "-u", user, "--"]);
    }
    let mut app = app
        .args(&args.command)
        .spawn()
        .with_context(|| format!("starting {}", args.command[0]))?;
    // The app's exit, or a signal to this process: either ends the pod.
    let signalled = runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).ok();
        let mut int = signal(SignalKind::interrupt()).ok();
        loop {
            if !matches!(app.try_wait(), Ok(None)) {
                return None;
            }
            tokio::select! {
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => return Some(143),
                _ = async { match int.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => return Some(130),
                () = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    });
    let code = match signalled {
        Some(code) => {
            stop(&mut app, Duration::from_secs(5));
            code
        }
        None => app.wait().ok().and_then(|s| s.code()).unwrap_or(1),
    };
    drop(held);
    Ok(code)
}
