//! A one-shot HTTP/1.1 client for what the control plane fetches: a connection per request
//! (fetches are rare and pooling would only keep sockets open), TLS for `https` with the
//! server's certificate checked against the system's trust store, bodies bounded, and GET
//! redirects followed a few times (registries send blobs to storage elsewhere), dropping the
//! `Authorization` header when the host changes.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

/// Connecting, and each exchange, gets this long.
const TIMEOUT: Duration = Duration::from_secs(30);

/// Redirects followed at most.
const MAX_REDIRECTS: usize = 5;

/// An answer.
#[derive(Debug)]
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body, whole.
    pub body: Bytes,
}

impl Reply {
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// The TLS config for `https`: the system's roots.
fn tls() -> Result<Arc<rustls::ClientConfig>, String> {
    static CONFIG: OnceLock<Result<Arc<rustls::ClientConfig>, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let roots = crate::identity::system_roots::system_roots()?;
            let config = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
            Ok(Arc::new(config))
        })
        .clone()
}

/// Sends one request to `url`, reading at most `limit` bytes of the answer.
pub async fn send(
    method: Method,
    url: &Uri,
    headers: &[(HeaderName, HeaderValue)],
    body: Bytes,
    limit: usize,
) -> Result<Reply, String> {
    let https = match url.scheme_str() {
        Some("https") => true,
        Some("http") => false,
        _ => return Err(format!("{url}: not an http or https URL")),
    };
    let host = url.host().ok_or_else(|| format!("{url}: no host"))?;
    let port = url.port_u16().unwrap_or(if https { 443 } else { 80 });
    let exchange = async {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = tokio::net::TcpStream::connect((bare, port))
            .await
            .map_err(|e| format!("connecting to {host}:{port}: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let mut req = Request::builder().method(method).uri(
            url.path_and_query()
                .map_or("/", |p| p.as_str())
                .parse::<Uri>()
                .map_err(|e| e.to_string())?,
        );
        let authority = url.authority().map_or(host, |a| a.as_str());
        req = req.header(http::header::HOST, authority);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| format!("{url}: {e}"))?;
        let resp = if https {
            let name = ServerName::try_from(bare.to_string())
                .map_err(|_| format!("{host}: not a server name"))?;
            let stream = tokio_rustls::TlsConnector::from(tls()?)
                .connect(name, tcp)
                .await
                .map_err(|e| format!("TLS with {host}: {e}"))?;
            exchange(TokioIo::new(stream), req).await?
        } else {
            exchange(TokioIo::new(tcp), req).await?
        };
        let (parts, incoming) = resp.into_parts();
        let body = http_body_util::Limited::new(incoming, limit)
            .collect()
            .await
            .map_err(|e| format!("reading the answer from {host}: {e}"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    };
    tokio::time::timeout(TIMEOUT, exchange)
        .await
        .map_err(|_| format!("{url}: no answer within {TIMEOUT:?}"))?
}

async fn exchange<IO>(
    io: IO,
    req: Request<Full<Bytes>>,
) -> Result<http::Response<hyper::body::Incoming>, String>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io)
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}

/// GETs `url`, following redirects.
pub async fn get(
    url: &Uri,
    headers: &[(HeaderName, HeaderValue)],
    limit: usize,
) -> Result<Reply, String> {
    let mut url = url.clone();
    let mut headers = headers.to_vec();
    for _ in 0..=MAX_REDIRECTS {
        let reply = send(Method::GET, &url, &headers, Bytes::new(), limit).await?;
        if !reply.status.is_redirection() {
            return Ok(reply);
        }
        let location = reply
            .header("location")
            .ok_or_else(|| format!("{url}: {} without a Location", reply.status))?;
        let next = resolve(&url, location)?;
        if next.authority() != url.authority() {
            headers.retain(|(k, _)| k != http::header::AUTHORIZATION);
        }
        url = next;
    }
    Err(format!("{url}: more than {MAX_REDIRECTS} redirects"))
}

/// `location` (absolute, or a path on `base`'s server) as a URL.
pub fn resolve(base: &Uri, location: &str) -> Result<Uri, String> {
    if location.starts_with("http://") || location.starts_with("https://") {
        return location
            .parse()
            .map_err(|e| format!("Location {location:?}: {e}"));
    }
    let scheme = base.scheme_str().unwrap_or("http");
    let authority = base.authority().map_or("", |a| a.as_str());
    format!("{scheme}://{authority}{location}")
        .parse()
        .map_err(|e| format!("Location {location:?}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_relative_location_stays_on_the_server() {
        let base: Uri = "http://127.0.0.1:5000/v2/x/blobs/uploads/"
            .parse()
            .expect("uri");
        assert_eq!(
            resolve(&base, "/v2/x/blobs/uploads/abc?_state=1")
                .expect("resolves")
                .to_string(),
            "http://127.0.0.1:5000/v2/x/blobs/uploads/abc?_state=1"
        );
        assert_eq!(
            resolve(&base, "https://cdn.example.com/blob")
                .expect("resolves")
                .to_string(),
            "https://cdn.example.com/blob"
        );
    }
}
