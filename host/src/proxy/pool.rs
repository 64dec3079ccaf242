//! Upstream connection pools' statistics: a connector that counts connections opened, open
//! now and failed, per pool (`peers`, `app`), around hyper-util's `HttpConnector`.

use hyper::rt::{Read, ReadBufCursor, Write};
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use prometheus::{IntCounter, IntGauge};
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// Connection counts of one pool.
#[derive(Clone)]
pub struct PoolStats {
    /// Connections opened.
    pub opened: IntCounter,
    /// Connections open now.
    pub open: IntGauge,
    /// Connection attempts that failed.
    pub failed: IntCounter,
}

/// `HttpConnector`, counting.
#[derive(Clone)]
pub struct CountingConnector {
    inner: HttpConnector,
    stats: PoolStats,
}

impl CountingConnector {
    /// Wraps `inner`.
    pub fn new(inner: HttpConnector, stats: PoolStats) -> Self {
        CountingConnector { inner, stats }
    }
}

/// A connection that leaves the open count when it closes.
pub struct Counted<T> {
    inner: T,
    open: IntGauge,
}

impl<T> Drop for Counted<T> {
    fn drop(&mut self) {
        self.open.dec();
    }
}

type Inner = <HttpConnector as tower_service::Service<http::Uri>>::Response;
type InnerError = <HttpConnector as tower_service::Service<http::Uri>>::Error;

impl tower_service::Service<http::Uri> for CountingConnector {
    type Response = Counted<Inner>;
    type Error = InnerError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.inner.call(uri);
        let stats = self.stats.clone();
        Box::pin(async move {
            match connecting.await {
                Ok(inner) => {
                    stats.opened.inc();
                    stats.open.inc();
                    Ok(Counted {
                        inner,
                        open: stats.open,
                    })
                }
                Err(e) => {
                    stats.failed.inc();
                    Err(e)
                }
            }
        })
    }
}

impl<T: Read + Unpin> Read for Counted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: Write + Unpin> Write for Counted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
}

impl<T: Connection> Connection for Counted<T> {
    fn connected(&self) -> Connected {
        self.inner.connected()
    }
}
