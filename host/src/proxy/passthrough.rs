//! Calls to destinations the mesh does not know, captured on their way out: sent on to where
//! the app was sending them, as Istio's `PassthroughCluster` does under its default
//! `outboundTrafficPolicy` (`ALLOW_ANY`). No plugin runs and no mesh header is added: the
//! call is the app's own, only carried.

use super::body::ProxyBody;
use super::outbound::OUTBOUND;
use super::{Inputs, headers, local_response};
use http::uri::Authority;
use http::{Request, Response, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use std::time::Instant;

/// The service label of passthrough calls in the sidecar's metrics (Istio's cluster name).
pub const PASSTHROUGH: &str = "PassthroughCluster";

/// Sends the request on to `dst` over HTTP/1.1 and streams the answer back.
pub async fn forward(
    inputs: &Inputs,
    mut parts: http::request::Parts,
    body: Incoming,
    dst: &Authority,
    start: Instant,
    upgrade: Option<super::upgrade::Pending>,
) -> Response<ProxyBody> {
    headers::strip_hop_by_hop(&mut parts.headers);
    if let Some(u) = &upgrade {
        u.ask_again(&mut parts.headers);
    }
    let mut uri = http::uri::Parts::default();
    uri.scheme = Some(http::uri::Scheme::HTTP);
    uri.authority = Some(dst.clone());
    uri.path_and_query = Some(
        parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| http::uri::PathAndQuery::from_static("/")),
    );
    let Ok(uri) = http::Uri::from_parts(uri) else {
        return local_response(StatusCode::BAD_REQUEST, "weft: invalid request path\n");
    };
    parts.uri = uri;
    parts.version = Version::HTTP_11;
    let (body, _) = inputs.bound_request(body, start, OUTBOUND);
    let upstream = Request::from_parts(parts, body.boxed_unsync());
    // Resolved at the first passthrough call, so a sidecar that never makes one shows none.
    let metrics = inputs
        .passthrough_metrics
        .get_or_init(|| inputs.metrics.handles("outbound", PASSTHROUGH));
    let answered = match upgrade {
        None => inputs
            .app
            .request(upstream)
            .await
            .map_err(|e| e.to_string()),
        Some(u) => match dst.as_str().parse() {
            Ok(addr) => super::upgrade::to_addr(inputs, addr, upstream, u).await,
            Err(e) => Err(format!("{dst}: {e}")),
        },
    };
    match answered {
        Ok(resp) => {
            metrics.request(resp.status().as_u16());
            let (mut parts, incoming) = resp.into_parts();
            headers::strip_hop_by_hop(&mut parts.headers);
            super::upgrade::restore_response_headers(&mut parts);
            Response::from_parts(
                parts,
                inputs.bound_response(incoming, OUTBOUND).boxed_unsync(),
            )
        }
        Err(e) => {
            tracing::debug!(%dst, "passthrough call failed: {e}");
            metrics.request(502);
            local_response(
                StatusCode::BAD_GATEWAY,
                format!("weft: {dst} (not a mesh service) did not answer\n"),
            )
        }
    }
}
