//! Test fixtures: a real HTTP app on loopback, clients, and sidecars wired to it.

#![allow(dead_code)]

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, combinators::UnsyncBoxBody};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use parking_lot::Mutex;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

pub type Body = UnsyncBoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

/// What the app saw of one request.
#[derive(Debug, Clone)]
pub struct Seen {
    pub path: String,
    pub headers: http::HeaderMap,
    /// For `/drain`: whether the body arrived whole.
    pub body_complete: Option<bool>,
}

/// A test app: `/echo` echoes, `/status/N` answers N, `/slow/MS` waits, `/big/N` sends N bytes,
/// `/hang` never answers, `/drain` reads the whole body and records whether it arrived.
/// Every response carries `x-app: <name>`.
pub struct App {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
}

impl App {
    pub async fn start(name: &str) -> App {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind app");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (n, s) = (name.to_string(), seen.clone());
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (n, s) = (n.clone(), s.clone());
                tokio::spawn(async move {
                    let svc = service_fn(move |req| answer(n.clone(), s.clone(), req));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        App {
            addr,
            name: name.to_string(),
            seen,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

async fn answer(
    name: String,
    seen: Arc<Mutex<Vec<Seen>>>,
    req: Request<Incoming>,
) -> Result<Response<Body>, std::convert::Infallible> {
    let path = req.uri().path().to_string();
    let headers = req.headers().clone();
    let index = {
        let mut s = seen.lock();
        s.push(Seen {
            path: path.clone(),
            headers,
            body_complete: None,
        });
        s.len() - 1
    };
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let (verb, arg) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let mut resp = match verb {
        "echo" => {
            let body = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            Response::new(full(body))
        }
        "status" => {
            let mut r = Response::new(full(format!("status {arg}")));
            *r.status_mut() = arg
                .parse::<u16>()
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::OK);
            r
        }
        "slow" => {
            tokio::time::sleep(Duration::from_millis(arg.parse().unwrap_or(100))).await;
            Response::new(full("slow"))
        }
        "big" => {
            let n: usize = arg.parse().unwrap_or(0);
            Response::new(full(vec![b'x'; n]))
        }
        "hang" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Response::new(full(""))
        }
        "drain" => {
            let complete = req.into_body().collect().await.is_ok();
            seen.lock()[index].body_complete = Some(complete);
            Response::new(full("drained"))
        }
        _ => Response::new(full(format!("hello from {name}"))),
    };
    resp.headers_mut()
        .insert("x-app", http::HeaderValue::from_str(&name).expect("ascii"));
    Ok(resp)
}

/// An HTTP/1.1 client.
pub fn h1_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// An HTTP/2 (prior knowledge, h2c) client.
pub fn h2_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build(HttpConnector::new())
}

/// Reads a whole response.
pub async fn read(resp: Response<Incoming>) -> (StatusCode, http::HeaderMap, Bytes) {
    let (parts, body) = resp.into_parts();
    let bytes = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    (parts.status, parts.headers, bytes)
}
