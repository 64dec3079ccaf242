//! The admin endpoint: `/metrics` (Prometheus text), `/ready`, `/config` (the snapshot in force),
//! `/endpoints` (every endpoint with its requests in flight and ejection time left), `/tap`
//! (live calls, see [`super::tap`]);
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
            "weft admin: /metrics, /ready, /config, /endpoints, /tap\n",
        ),
    };
    Ok(resp)
}
