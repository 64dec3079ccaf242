//! The admin endpoint: `/metrics` (Prometheus text), `/ready`, `/config` (the snapshot in force),
//! `/endpoints` (every endpoint with its requests in flight and ejection time left), `/tap`
//! (live calls, see [`super::tap`]), `/debug/token` (the token that asks for a call's
//! explanation) and `/describe` (one call sent through the outbound side, explained: see
//! [`super::explain`]);
//! and the stats endpoint, `/metrics` and `/ready` alone, for a listener on the pod's address
//! (Istio's 15090) where Prometheus scrapes it, since `/config` is for the machine's eyes only.

use super::body::{self, ProxyBody};
use super::{Inputs, local_response};
use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use std::sync::Arc;
use std::sync::atomic::Ordering;

/// Handles one stats request: `/metrics` and `/ready` only.
pub async fn handle_stats(
    inputs: Arc<Inputs>,
    req: Request<Incoming>,
    peer: Arc<super::Peer>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    match req.uri().path() {
        "/metrics" | "/ready" => handle(inputs, req, peer).await,
        _ => Ok(local_response(
            StatusCode::NOT_FOUND,
            "weft stats: /metrics, /ready\n",
        )),
    }
}

/// A JSON answer, or the reason it could not be made.
fn json(text: serde_json::Result<String>) -> Response<ProxyBody> {
    match text {
        Ok(json) => {
            let mut r = Response::new(body::full(json.into()));
            r.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            r
        }
        Err(e) => local_response(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

/// Handles one admin request (the peer's address is not used).
pub async fn handle(
    inputs: Arc<Inputs>,
    req: Request<Incoming>,
    _peer: Arc<super::Peer>,
) -> Result<Response<ProxyBody>, std::convert::Infallible> {
    let resp = match req.uri().path() {
        "/metrics" => {
            let encoder = prometheus::TextEncoder::new();
            match encoder.encode_to_string(&inputs.registry.gather()) {
                Ok(text) => {
                    let mut r = Response::new(body::full(text.into()));
                    r.headers_mut().insert(
                        http::header::CONTENT_TYPE,
                        http::HeaderValue::from_static("text/plain; version=0.0.4"),
                    );
                    r
                }
                Err(e) => local_response(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
            }
        }
        "/ready" => {
            let routes = inputs.routes.load();
            if inputs.draining.load(Ordering::Relaxed) {
                local_response(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
            } else if routes.snapshot.version.is_empty() {
                local_response(StatusCode::SERVICE_UNAVAILABLE, "no snapshot yet\n")
            } else {
                local_response(
                    StatusCode::OK,
                    format!("ready: snapshot {}\n", routes.snapshot.version),
                )
            }
        }
        "/config" => json(serde_json::to_string_pretty(&inputs.routes.load().snapshot)),
        "/debug/token" => local_response(StatusCode::OK, format!("{}\n", inputs.debug_token)),
        "/describe" => describe(&inputs, req.uri().query()).await,
        "/tap" => match super::tap::Watch::parse(req.uri().query()) {
            Ok(watch) => super::tap::stream(&inputs.tap, watch),
            Err(e) => local_response(StatusCode::BAD_REQUEST, format!("weft tap: {e}\n")),
        },
        "/endpoints" => {
            let now = std::time::Instant::now();
            let list: Vec<serde_json::Value> = inputs
                .table
                .all()
                .iter()
                .map(|e| {
                    serde_json::json!({
                        "service": &*e.service,
                        "address": &*e.address,
                        "labels": e.labels,
                        "outstanding": e.outstanding.load(Ordering::Relaxed),
                        "ejectedForMs": e.ejected_for(now).as_millis() as u64,
                    })
                })
                .collect();
            json(serde_json::to_string_pretty(&list))
        }
        _ => local_response(
            StatusCode::NOT_FOUND,
            "weft admin: /metrics, /ready, /config, /endpoints, /tap, /debug/token, /describe\n",
        ),
    };
    Ok(resp)
}

/// `/describe?url=http://payments/charge&method=GET`: the call sent through this sidecar's
/// outbound listener as its app would send it, with the debug token; the answer's status and
/// the explanation, as JSON.
async fn describe(inputs: &Inputs, query: Option<&str>) -> Response<ProxyBody> {
    let mut url = None;
    let mut method = http::Method::GET;
    for (k, v) in query
        .unwrap_or("")
        .split('&')
        .filter_map(|kv| kv.split_once('='))
    {
        let v = percent_decode(v);
        match k {
            "url" => url = Some(v),
            "method" => match http::Method::from_bytes(v.as_bytes()) {
                Ok(m) => method = m,
                Err(_) => return local_response(StatusCode::BAD_REQUEST, "bad method\n"),
            },
            _ => {}
        }
    }
    let Some(url) = url.and_then(|u| u.parse::<http::Uri>().ok()) else {
        return local_response(
            StatusCode::BAD_REQUEST,
            "weft describe: give url=http://<service>/<path>\n",
        );
    };
    let Some(host) = url.authority().map(|a| a.as_str().to_string()) else {
        return local_response(
            StatusCode::BAD_REQUEST,
            "weft describe: the url names no host\n",
        );
    };
    let path = url.path_and_query().map_or("/", |p| p.as_str());
    let Ok(req) = Request::builder()
        .method(method)
        .uri(format!("http://{}{path}", inputs.outbound_addr))
        .header(http::header::HOST, host)
        .header(super::explain::DEBUG, inputs.debug_token.as_str())
        .body(http_body_util::Empty::<bytes::Bytes>::new())
    else {
        return local_response(StatusCode::BAD_REQUEST, "weft describe: invalid request\n");
    };
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    let sent = tokio::time::timeout(std::time::Duration::from_secs(30), client.request(req)).await;
    match sent {
        Ok(Ok(resp)) => {
            let status = resp.status().as_u16();
            let info = resp
                .headers()
                .get(super::explain::DEBUG_INFO)
                .and_then(|v| serde_json::from_slice::<serde_json::Value>(v.as_bytes()).ok())
                .unwrap_or(serde_json::Value::Null);
            json(serde_json::to_string_pretty(
                &serde_json::json!({ "status": status, "explanation": info }),
            ))
        }
        Ok(Err(e)) => local_response(StatusCode::BAD_GATEWAY, format!("weft describe: {e}\n")),
        Err(_) => local_response(
            StatusCode::GATEWAY_TIMEOUT,
            "weft describe: no answer in 30 s\n",
        ),
    }
}

/// A query value's `%XX` escapes decoded (`+` is a space); an invalid escape is kept as is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let hex = |b: u8| (b as char).to_digit(16);
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) => hex(h).zip(hex(l)).map(|(h, l)| (h * 16 + l) as u8),
            _ => None,
        };
        match (escaped, bytes[i]) {
            (Some(b), _) => {
                out.push(b);
                i += 3;
                continue;
            }
            (None, b'+') => out.push(b' '),
            (None, b) => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn query_values_are_decoded() {
        assert_eq!(
            super::percent_decode("http%3A%2F%2Fpayments%2Fcharge%3Fa%3D1+b%zz"),
            "http://payments/charge?a=1 b%zz"
        );
    }
}
