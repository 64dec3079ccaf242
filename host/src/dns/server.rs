//! The DNS proxy's loop: one UDP socket, mesh answers sent inline, forwarded questions each in
//! a task of their own (bounded in number) with a fresh socket, so a slow upstream holds up
//! nobody and no answer can be matched to the wrong question.

use super::wire::{self, NOERROR, NXDOMAIN, SERVFAIL, TYPE_A};
use prometheus::{IntCounterVec, Opts, Registry};
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{Semaphore, watch};

/// How long the mesh's answers may be cached (Istio's DNS proxy uses 30 s).
pub const TTL: u32 = 30;

/// How long one upstream gets to answer before the next is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

/// Questions forwarded at once; past this, SERVFAIL at once rather than unbounded tasks.
const MAX_FORWARDED: usize = 256;

/// What the mesh says of a name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// A mesh service, at this virtual IP.
    Service(Ipv4Addr),
    /// Under the cluster domain but no service: no upstream knows it either.
    NoSuchName,
    /// Not the mesh's to answer.
    Elsewhere,
}

/// Where names are looked up: the routes in force.
pub trait Names: Send + Sync + 'static {
    /// What the mesh says of `name` (lower case, no trailing dot).
    fn lookup(&self, name: &str) -> Lookup;
}

/// The resolvers other names go to, and the mark their queries carry.
#[derive(Debug, Clone, Default)]
pub struct Upstreams {
    /// Tried in order.
    pub servers: Vec<SocketAddr>,
    /// The sidecar's mark, so the capture rules do not send the query back here.
    pub mark: Option<u32>,
}

/// Serves DNS on `socket` until `shutdown`.
pub async fn serve(
    socket: UdpSocket,
    names: Arc<dyn Names>,
    upstreams: Upstreams,
    registry: &Registry,
    mut shutdown: watch::Receiver<bool>,
) {
    let answers = IntCounterVec::new(
        Opts::new(
            "weft_dns_requests_total",
            "DNS questions the pod's DNS proxy answered, by how",
        ),
        &["answer"],
    )
    .expect("static metric definition");
    if let Err(e) = registry.register(Box::new(answers.clone())) {
        tracing::warn!("DNS metrics not registered: {e}");
    }
    let counted = |what: &str| answers.with_label_values(&[what]);
    let (mesh, nxdomain, forwarded, failed) = (
        counted("mesh"),
        counted("nxdomain"),
        counted("forwarded"),
        counted("failed"),
    );
    let socket = Arc::new(socket);
    let upstreams = Arc::new(upstreams);
    let slots = Arc::new(Semaphore::new(MAX_FORWARDED));
    let mut buf = vec![0u8; 4096];
    loop {
        let (len, client) = tokio::select! {
            got = socket.recv_from(&mut buf) => match got {
                Ok(got) => got,
                Err(e) => {
                    tracing::debug!("DNS receive failed: {e}");
                    continue;
                }
            },
            _ = shutdown.changed() => return,
        };
        let msg = &buf[..len];
        let local = wire::parse_query(msg).map(|q| (names.lookup(&q.name), q));
        let reply = match local {
            Some((Lookup::Service(vip), q)) => {
                mesh.inc();
                // Other types (AAAA) exist for the name but hold nothing: NODATA, so clients
                // go on with the A record at once.
                let addrs: &[Ipv4Addr] = if q.qtype == TYPE_A { &[vip] } else { &[] };
                wire::answer(&q, NOERROR, addrs, TTL)
            }
            Some((Lookup::NoSuchName, q)) => {
                nxdomain.inc();
                wire::answer(&q, NXDOMAIN, &[], TTL)
            }
            _ => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    failed.inc();
                    servfail(&socket, msg, client).await;
                    continue;
                };
                let (socket, upstreams, msg) = (socket.clone(), upstreams.clone(), msg.to_vec());
                let (forwarded, failed) = (forwarded.clone(), failed.clone());
                tokio::spawn(async move {
                    let _slot = slot;
                    match forward(&upstreams, &msg).await {
                        Some(reply) => {
                            forwarded.inc();
                            let _ = socket.send_to(&reply, client).await;
                        }
                        None => {
                            failed.inc();
                            servfail(&socket, &msg, client).await;
                        }
                    }
                });
                continue;
            }
        };
        if let Err(e) = socket.send_to(&reply, client).await {
            tracing::debug!(%client, "DNS answer not sent: {e}");
        }
    }
}

/// Tells `client` its question `msg` could not be answered (when it was one).
async fn servfail(socket: &UdpSocket, msg: &[u8], client: SocketAddr) {
    if let Some(q) = wire::parse_query(msg) {
        let _ = socket
            .send_to(&wire::answer(&q, SERVFAIL, &[], 0), client)
            .await;
    }
}

/// Asks each upstream in turn; the first answer carrying the question's id wins.
async fn forward(upstreams: &Upstreams, msg: &[u8]) -> Option<Vec<u8>> {
    let id = msg.get(..2)?;
    for server in &upstreams.servers {
        let local: SocketAddr = if server.is_ipv4() {
            (Ipv4Addr::UNSPECIFIED, 0).into()
        } else {
            (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
        };
        let attempt = async {
            let socket = crate::capture::socket::udp_marked(local, upstreams.mark).ok()?;
            socket.connect(server).await.ok()?;
            socket.send(msg).await.ok()?;
            let mut buf = vec![0u8; 4096];
            loop {
                let n = socket.recv(&mut buf).await.ok()?;
                if buf.get(..2) == Some(id) {
                    buf.truncate(n);
                    return Some(buf);
                }
            }
        };
        match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
            Ok(Some(reply)) => return Some(reply),
            _ => tracing::debug!(%server, "upstream resolver did not answer"),
        }
    }
    None
}

/// The nameservers a `resolv.conf` names, on port 53.
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .filter_map(|rest| rest.trim().parse::<std::net::IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl Names for Fixed {
        fn lookup(&self, name: &str) -> Lookup {
            match name {
                "payments" => Lookup::Service(Ipv4Addr::new(198, 19, 1, 2)),
                "nope.default.svc.cluster.local" => Lookup::NoSuchName,
                _ => Lookup::Elsewhere,
            }
        }
    }

    async fn ask(server: SocketAddr, name: &str, qtype: u16) -> (u16, u8, Vec<Ipv4Addr>) {
        let client = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        client
            .send_to(&wire::query(77, name, qtype), server)
            .await
            .expect("send");
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), client.recv(&mut buf))
            .await
            .expect("an answer")
            .expect("recv");
        wire::read_answer(&buf[..n]).expect("an answer")
    }

    #[tokio::test]
    async fn mesh_names_are_answered_others_go_upstream() {
        // The upstream: answers every question with 198.18.9.9.
        let upstream = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let upstream_addr = upstream.local_addr().expect("addr");
        tokio::spawn(async move {
            let mut buf = [0u8; 1024];
            while let Ok((n, from)) = upstream.recv_from(&mut buf).await {
                if let Some(q) = wire::parse_query(&buf[..n]) {
                    let reply = wire::answer(&q, NOERROR, &[Ipv4Addr::new(198, 18, 9, 9)], 5);
                    let _ = upstream.send_to(&reply, from).await;
                }
            }
        });
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let (_stop, shutdown) = watch::channel(false);
        let registry = Registry::new();
        let upstreams = Upstreams {
            servers: vec![upstream_addr],
            mark: None,
        };
        let reg = registry.clone();
        tokio::spawn(
            async move { serve(socket, Arc::new(Fixed), upstreams, &reg, shutdown).await },
        );

        let vip = Ipv4Addr::new(198, 19, 1, 2);
        assert_eq!(
            ask(addr, "Payments.", TYPE_A).await,
            (77, NOERROR, vec![vip])
        );
        assert_eq!(ask(addr, "payments", 28).await, (77, NOERROR, vec![]));
        let nx = ask(addr, "nope.default.svc.cluster.local", TYPE_A).await;
        assert_eq!(nx, (77, NXDOMAIN, vec![]));
        let out = ask(addr, "example.org", TYPE_A).await;
        assert_eq!(out, (77, NOERROR, vec![Ipv4Addr::new(198, 18, 9, 9)]));
        let text = prometheus::TextEncoder::new()
            .encode_to_string(&registry.gather())
            .expect("metrics encode");
        assert!(
            text.contains("weft_dns_requests_total{answer=\"forwarded\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("weft_dns_requests_total{answer=\"mesh\"} 2"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn without_an_answering_upstream_other_names_fail_fast() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.expect("bind");
        let addr = socket.local_addr().expect("addr");
        let (_stop, shutdown) = watch::channel(false);
        let registry = Registry::new();
        tokio::spawn(async move {
            serve(
                socket,
                Arc::new(Fixed),
                Upstreams::default(),
                &registry,
                shutdown,
            )
            .await
        });
        assert_eq!(
            ask(addr, "example.org", TYPE_A).await,
            (77, SERVFAIL, vec![])
        );
    }

    #[test]
    fn nameservers_are_read_from_resolv_conf() {
        let text = "# x\nsearch a b\nnameserver 198.18.0.53\nnameserver ::1\noptions ndots:5\n";
        let got = nameservers(text);
        assert_eq!(
            got,
            vec![
                "198.18.0.53:53".parse().unwrap(),
                "[::1]:53".parse().unwrap()
            ]
        );
    }
}
