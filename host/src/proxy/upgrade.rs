//! HTTP/1.1 upgrades (WebSocket) through the sidecars: the request is routed like any other
//! (plugins, subsets, retries before the switch), but sent on a connection of its own rather
//! than a pooled one, and once the next hop answers `101 Switching Protocols` the two
//! upgraded connections are spliced, byte for byte, until either side closes or nothing
//! passes for the connection idle timeout.

use super::body::ProxyBody;
use http::header::{CONNECTION, UPGRADE};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;

/// An upgrade the caller asked for, taken from its request before the hop-by-hop headers go.
pub struct Pending {
    protocol: HeaderValue,
    downstream: OnUpgrade,
}

/// The caller's upgrade, when its HTTP/1.1 request asks for one (`Connection: upgrade` and an
/// `Upgrade` protocol).
pub fn take(parts: &mut http::request::Parts) -> Option<Pending> {
    if parts.version != Version::HTTP_11 {
        return None;
    }
    let protocol = parts.headers.get(UPGRADE)?.clone();
    let asked = parts.headers.get_all(CONNECTION).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
        })
    });
    if !asked {
        return None;
    }
    let downstream = parts.extensions.remove::<OnUpgrade>()?;
    Some(Pending {
        protocol,
        downstream,
    })
}

impl Pending {
    /// Puts the upgrade back on the request for the next hop.
    pub fn ask_again(&self, headers: &mut HeaderMap) {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(UPGRADE, self.protocol.clone());
    }

    /// Completes the switch when the next hop agreed (`101`): the response keeps its upgrade
    /// headers, and the two connections are spliced once the caller has it. Any other answer
    /// is left as it is.
    pub fn complete(self, response: &mut Response<Incoming>, idle: std::time::Duration) {
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            return;
        }
        let upstream = hyper::upgrade::on(&mut *response);
        let protocol = response
            .headers()
            .get(UPGRADE)
            .cloned()
            .unwrap_or(self.protocol);
        let downstream = self.downstream;
        tokio::spawn(async move {
            let (Ok(up), Ok(down)) = (upstream.await, downstream.await) else {
                return;
            };
            super::tcp::splice(TokioIo::new(down), TokioIo::new(up), idle, None).await;
        });
        // Written after the hop-by-hop headers are stripped, so the caller sees the switch.
        response.extensions_mut().insert(Switch(protocol));
    }
}

/// The protocol a `101` switches to, restored on the response after hop-by-hop stripping.
#[derive(Clone)]
struct Switch(HeaderValue);

/// Restores a switching response's upgrade headers (stripped with the other hop-by-hop ones).
pub fn restore_response_headers(parts: &mut http::response::Parts) {
    if let Some(Switch(protocol)) = parts.extensions.get::<Switch>().cloned() {
        parts
            .headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        parts.headers.insert(UPGRADE, protocol);
    }
}

/// Sends an upgrade request to `addr` (an app: the local one, or a passthrough destination)
/// on a connection of its own, completing the switch if it agrees.
pub async fn to_addr(
    inputs: &super::Inputs,
    addr: std::net::SocketAddr,
    req: Request<ProxyBody>,
    pending: Pending,
) -> Result<Response<Incoming>, String> {
    let io = super::tcp::dial(addr, inputs.settings.proxy_mark)
        .await
        .map_err(|e| e.to_string())?;
    let mut resp = send(TokioIo::new(io), req)
        .await
        .map_err(|e| e.to_string())?;
    pending.complete(&mut resp, inputs.settings.timeouts.connection.idle);
    Ok(resp)
}

/// Sends `req` on `io`, a connection of its own that an upgrade (or a `CONNECT`) may take
/// over.
pub async fn send<IO>(io: IO, req: Request<ProxyBody>) -> Result<Response<Incoming>, hyper::Error>
where
    IO: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(io).await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("upgrade connection ended: {e}");
        }
    });
    sender.send_request(req).await
}
