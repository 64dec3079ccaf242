//! The demo's services: small HTTP apps standing in for the payments pods (whose health the
//! story changes) and for orders' own app. Each answers with its pod name and version, so the
//! caller can tell where a call landed.

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use tokio::net::TcpListener;

/// The response header naming the subset version that answered.
pub const VERSION_HEADER: &str = "x-demo-version";

/// How a pod answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Health {
    /// 200 to every call.
    Healthy = 0,
    /// 503 to 30% of calls.
    Flaky = 1,
    /// 503 to every call.
    Broken = 2,
}

/// One running pod app.
pub struct Pod {
    /// Its name (`payments-v1-a`).
    pub name: String,
    /// Its version label.
    pub version: String,
    /// Where it listens.
    pub addr: SocketAddr,
    health: Arc<AtomicU8>,
    task: tokio::task::JoinHandle<()>,
}

impl Pod {
    /// Starts a pod app on a loopback port.
    pub async fn start(name: &str, version: &str) -> std::io::Result<Pod> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let health = Arc::new(AtomicU8::new(Health::Healthy as u8));
        let calls = Arc::new(AtomicU64::new(0));
        let body = Bytes::from(format!("payments {version} ({name})\n"));
        let version_value = http::HeaderValue::from_str(version)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        let (h, n) = (health.clone(), calls.clone());
        let task = tokio::spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            while let Ok((stream, _)) = listener.accept().await {
                let (h, n, body, v) = (h.clone(), n.clone(), body.clone(), version_value.clone());
                let svc = service_fn(move |_req| {
                    let call = n.fetch_add(1, Ordering::Relaxed);
                    let fail = match h.load(Ordering::Relaxed) {
                        x if x == Health::Broken as u8 => true,
                        // Every 10 calls, 3 fail: deterministic, so a short run shows it.
                        x if x == Health::Flaky as u8 => call % 10 < 3,
                        _ => false,
                    };
                    let mut resp = if fail {
                        Response::new(Full::new(Bytes::from_static(b"unavailable\n")))
                    } else {
                        Response::new(Full::new(body.clone()))
                    };
                    if fail {
                        *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                    }
                    resp.headers_mut().insert(VERSION_HEADER, v.clone());
                    std::future::ready(Ok::<_, std::convert::Infallible>(resp))
                });
                let conn = builder
                    .serve_connection(TokioIo::new(stream), svc)
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        Ok(Pod {
            name: name.to_string(),
            version: version.to_string(),
            addr,
            health,
            task,
        })
    }

    /// Changes how it answers from the next call on.
    pub fn set(&self, health: Health) {
        self.health.store(health as u8, Ordering::Relaxed);
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.task.abort();
    }
}
