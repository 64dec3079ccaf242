//! Splicing two connections: bytes copied both ways until both sides are done or nothing has
//! passed either way for the idle timeout, counted as they pass when counters are given.

use super::metrics::ConnectionCounters;
use prometheus::IntCounter;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Instant;

/// Copies both ways until both sides are done, or until no byte has passed for `idle`.
pub(crate) async fn splice<A, B>(
    client: A,
    upstream: B,
    idle: Duration,
    counters: Option<&ConnectionCounters>,
) where
    A: AsyncRead + AsyncWrite + Unpin,
    B: AsyncRead + AsyncWrite + Unpin,
{
    let start = Instant::now();
    let last = Arc::new(AtomicU64::new(0));
    let mut client = Metered {
        io: client,
        read: counters.map(|c| c.received.clone()),
        last: last.clone(),
        start,
    };
    let mut upstream = Metered {
        io: upstream,
        read: counters.map(|c| c.sent.clone()),
        last: last.clone(),
        start,
    };
    let watchdog = async {
        loop {
            let quiet_since = start + Duration::from_millis(last.load(Ordering::Relaxed));
            let due = quiet_since + idle;
            if Instant::now() >= due {
                return;
            }
            tokio::time::sleep_until(due).await;
        }
    };
    tokio::select! {
        copied = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {
            if let Err(e) = copied {
                tracing::debug!("TCP connection ended: {e}");
            }
        }
        () = watchdog => tracing::debug!(?idle, "TCP connection closed: idle"),
    }
}

/// A stream whose reads are counted (when it has a counter) and timed as they happen, so a
/// long-lived connection's bytes show before it closes and its idleness is known.
struct Metered<S> {
    io: S,
    read: Option<IntCounter>,
    /// Milliseconds from `start` to the last read that brought bytes, shared by both sides.
    last: Arc<AtomicU64>,
    start: Instant,
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = buf.filled().len() - before;
        if n > 0 {
            if let Some(c) = &self.read {
                c.inc_by(n as u64);
            }
            let now = self.start.elapsed().as_millis() as u64;
            self.last.store(now, Ordering::Relaxed);
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_pass_both_ways_and_a_quiet_connection_is_closed() {
        let (client, mut app_side) = tokio::io::duplex(1024);
        let (upstream, mut server_side) = tokio::io::duplex(1024);
        let spliced = tokio::spawn(splice(client, upstream, Duration::from_millis(200), None));
        app_side.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        server_side.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"ping");
        server_side.write_all(b"pong").await.expect("write");
        app_side.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"pong");
        // Then nothing: the splice ends and both ends see the connection closed.
        tokio::time::timeout(Duration::from_secs(10), spliced)
            .await
            .expect("the idle timeout ends the splice")
            .expect("splice task");
        assert_eq!(app_side.read(&mut buf).await.expect("eof"), 0);
        assert_eq!(server_side.read(&mut buf).await.expect("eof"), 0);
    }
}
