//! The socket side of capture: where a redirected connection was going, and marking the
//! sockets the sidecar opens so its own traffic is not captured again.

use std::net::SocketAddr;

/// Where a connection accepted on a capturing listener was going before the nat rules sent
/// it here (`SO_ORIGINAL_DST`); none when it was not redirected (dialled straight at the
/// listener, or no rules are installed).
pub fn original_dst(stream: &tokio::net::TcpStream) -> Option<SocketAddr> {
    let sock = socket2::SockRef::from(stream);
    let local = stream.local_addr().ok()?;
    let original = if local.is_ipv4() {
        sock.original_dst_v4()
    } else {
        sock.original_dst_v6()
    };
    let original = original.ok()?.as_socket()?;
    (original != local).then_some(original)
}

/// Connects to `addr` from a socket carrying `mark` (needs CAP_NET_ADMIN), with Nagle off, as
/// every connection the sidecar makes does.
pub async fn connect_marked(addr: SocketAddr, mark: u32) -> std::io::Result<tokio::net::TcpStream> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket2::SockRef::from(&socket).set_mark(mark)?;
    socket.set_nodelay(true)?;
    socket.connect(addr).await
}

/// A UDP socket bound to `local`, its packets carrying `mark` when given (the sidecar's DNS
/// queries to the upstream resolver, which the capture rules would otherwise send back to it).
pub fn udp_marked(local: SocketAddr, mark: Option<u32>) -> std::io::Result<tokio::net::UdpSocket> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(local),
        socket2::Type::DGRAM,
        Some(socket2::Protocol::UDP),
    )?;
    if let Some(mark) = mark {
        socket.set_mark(mark)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&local.into())?;
    tokio::net::UdpSocket::from_std(socket.into())
}
