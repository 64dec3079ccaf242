//! TLS to PostgreSQL with rustls (ring), so replicas on other hosts reach the database
//! encrypted without OpenSSL. The server is verified against the roots the operator gives
//! (`--store-ca-file`), else the system's, and by the host name in the store URL. Whether TLS
//! is used is the URL's `sslmode`: `prefer` (the default) uses it when the server offers it,
//! `require` refuses a server that does not, `disable` never asks. A server offering TLS is
//! always verified, in every mode: stricter than libpq, whose `prefer` and `require` take any
//! certificate.

use postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Makes TLS connections to the database.
#[derive(Clone)]
pub struct StoreTls {
    config: Arc<ClientConfig>,
}

impl StoreTls {
    /// Verifying against the PEM roots in `ca` (the operator's), else the system's.
    pub fn new(ca: Option<&[u8]>) -> Result<StoreTls, String> {
        use crate::identity::system_roots;
        let roots = match ca {
            Some(pem) => system_roots::roots_from_pem(pem)?,
            // A database reached without TLS needs no roots: their absence is told only when
            // a server offers TLS and cannot be verified.
            None => system_roots::system_roots().unwrap_or_else(|e| {
                tracing::warn!("no system roots to verify the database's TLS with: {e}");
                rustls::RootCertStore::empty()
            }),
        };
        let config = ClientConfig::builder_with_provider(crate::identity::tls::provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(StoreTls {
            config: Arc::new(config),
        })
    }
}

/// One connection's TLS set-up, for the host the URL names.
pub struct Connect {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
}

impl<S> MakeTlsConnect<S> for StoreTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type TlsConnect = Connect;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> Result<Connect, io::Error> {
        let name = ServerName::try_from(domain.to_string()).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{domain:?} is not a server name"),
            )
        })?;
        Ok(Connect {
            config: self.config.clone(),
            name,
        })
    }
}

impl<S> TlsConnect<S> for Connect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Stream<S>, io::Error>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.config);
        Box::pin(async move {
            connector
                .connect(self.name, stream)
                .await
                .map(|s| Stream(Box::new(s)))
        })
    }
}

/// A TLS connection to the database.
pub struct Stream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM without channel binding: the server was verified by its certificate already.
        ChannelBinding::none()
    }
}
