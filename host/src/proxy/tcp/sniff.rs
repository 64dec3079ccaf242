//! Protocol detection on a captured connection, as Istio's sidecar sniffs: the first bytes
//! are looked at (not taken) and decide between HTTP (an HTTP/1.1 method, or the HTTP/2
//! preface) and opaque TCP (anything else, a TLS ClientHello included). A client that sends
//! nothing within the detection timeout is taken for a server-first protocol (MySQL, a
//! Postgres server's greeting…), so it is carried as TCP rather than left hanging.

use std::time::Duration;
use tokio::net::TcpStream;

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// HTTP/1.1 or HTTP/2 with prior knowledge.
    Http,
    /// Anything else.
    Opaque,
    /// The client closed (or failed) before sending anything.
    Closed,
}

/// Ports whose traffic is carried as TCP without looking: protocols where the server speaks
/// first or that are never HTTP (SMTP, MySQL, Galera, Postgres, Redis, Elasticsearch's
/// transport, memcached), the list Linkerd skips detection for.
pub const DEFAULT_OPAQUE_PORTS: [u16; 8] = [25, 587, 3306, 4444, 5432, 6379, 9300, 11211];

/// How long a client may take to send its first bytes before it is taken for a server-first
/// protocol.
pub const DEFAULT_DETECTION_TIMEOUT: Duration = Duration::from_millis(500);

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"HEAD ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"CONNECT ",
    b"OPTIONS ",
    b"TRACE ",
    b"PATCH ",
];

/// Decides from the first bytes; none while they could still start either.
pub fn classify(bytes: &[u8]) -> Option<Detected> {
    let mut undecided = false;
    for start in METHODS.iter().copied().chain([PREFACE]) {
        if bytes.starts_with(start) {
            return Some(Detected::Http);
        }
        undecided |= start.starts_with(bytes);
    }
    (!undecided).then_some(Detected::Opaque)
}

/// Looks at `stream`'s first bytes, within `within`.
pub async fn detect(stream: &TcpStream, within: Duration) -> Detected {
    let deadline = tokio::time::Instant::now() + within;
    let mut buf = [0u8; PREFACE.len()];
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Err(_) => return Detected::Opaque,
            Ok(Err(_) | Ok(0)) => return Detected::Closed,
            Ok(Ok(n)) => n,
        };
        if let Some(found) = classify(&buf[..n]) {
            return found;
        }
        // A start cut short (a method split across segments): the rest is normally a moment
        // behind. Peeking again at once would see the same bytes, so wait a little.
        let pause = tokio::time::sleep(Duration::from_millis(2));
        if tokio::time::timeout_at(deadline, pause).await.is_err() {
            return Detected::Opaque;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn first_bytes_decide() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http));
        assert_eq!(classify(b"OPTIONS * HTTP/1.1"), Some(Detected::Http));
        assert_eq!(classify(PREFACE), Some(Detected::Http));
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(b"GE"), None);
        assert_eq!(classify(b"GETX"), Some(Detected::Opaque));
        // A TLS ClientHello, a Postgres startup message, a Redis command.
        assert_eq!(classify(&[0x16, 0x03, 0x01, 0x02]), Some(Detected::Opaque));
        assert_eq!(
            classify(&[0, 0, 0, 8, 4, 210, 22, 47]),
            Some(Detected::Opaque)
        );
        assert_eq!(classify(b"*1\r\n$4\r\nPING\r\n"), Some(Detected::Opaque));
        assert_eq!(classify(b"get / http/1.1"), Some(Detected::Opaque));
    }

    #[tokio::test]
    async fn a_silent_client_is_opaque_and_a_split_method_is_waited_for() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let silent = TcpStream::connect(addr).await.expect("connect");
        let (accepted, _) = listener.accept().await.expect("accept");
        let within = Duration::from_millis(50);
        assert_eq!(detect(&accepted, within).await, Detected::Opaque);
        drop(silent);
        assert_eq!(detect(&accepted, within).await, Detected::Closed);

        let mut split = TcpStream::connect(addr).await.expect("connect");
        split.set_nodelay(true).expect("nodelay");
        let (accepted, _) = listener.accept().await.expect("accept");
        split.write_all(b"PO").await.expect("write");
        let later = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            split
                .write_all(b"ST /charge HTTP/1.1\r\n")
                .await
                .expect("write");
            split
        });
        assert_eq!(
            detect(&accepted, Duration::from_secs(5)).await,
            Detected::Http
        );
        drop(later.await);
    }
}
