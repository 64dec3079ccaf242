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

pub mod mesh;
pub mod netns;
pub mod postgres;

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

/// A loopback sidecar config for tests: plugin calls get 1 s rather than 10 ms, because the
/// deadline is wall-clock and a test machine running several sidecars on 2 cores can preempt
/// a call past 10 ms; tests about the deadline set their own.
pub fn sidecar_config(service: &str, app: SocketAddr) -> weft::proxy::SidecarConfig {
    let mut c = weft::proxy::SidecarConfig::local(service, app);
    c.plugin_limits.deadline = Duration::from_secs(1);
    c
}

/// How an app answers besides its paths.
#[derive(Clone, Default)]
pub enum Behaviour {
    /// By path (see [`App`]).
    #[default]
    Paths,
    /// Every request gets this status.
    Always(u16),
    /// A share of requests (`percent`, drawn at random from a seeded generator) get `status`;
    /// the rest are answered by path.
    Flaky {
        percent: u32,
        status: u16,
        seed: u64,
    },
    /// Every request is passed on to `via` (its own sidecar's outbound listener, set once the
    /// sidecar runs) with `Host: host`; the answer's status comes back.
    Relay {
        via: Arc<std::sync::OnceLock<SocketAddr>>,
        host: String,
    },
}

/// A test app: `/echo` echoes, `/status/N` answers N, `/slow/MS[/N]` waits (then answers N), `/big/N` sends N bytes,
/// `/hang` never answers, `/stall` sends its head and one chunk then nothing more, `/drain`
/// reads the whole body and records whether it arrived.
/// Every response carries `x-app: <name>`.
pub struct App {
    pub addr: SocketAddr,
    pub name: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// Requests answered with the failure status of `Always` or `Flaky`.
    pub failed: Arc<std::sync::atomic::AtomicUsize>,
}

impl App {
    pub async fn start(name: &str) -> App {
        App::start_with(name, Behaviour::Paths).await
    }

    pub async fn start_with(name: &str, behaviour: Behaviour) -> App {
        App::start_bound(name, behaviour, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// An app answering paths, listening on `bind` (an address of a test's own interface).
    pub async fn start_on(name: &str, bind: SocketAddr) -> App {
        App::start_bound(name, Behaviour::Paths, bind).await
    }

    async fn start_bound(name: &str, behaviour: Behaviour, bind: SocketAddr) -> App {
        let listener = TcpListener::bind(bind).await.expect("bind app");
        let addr = listener.local_addr().expect("addr");
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let (n, s) = (name.to_string(), seen.clone());
        let rng = Arc::new(Mutex::new(match &behaviour {
            Behaviour::Flaky { seed, .. } => (*seed).max(1),
            _ => 1,
        }));
        let client = h1_client();
        let failed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let f = failed.clone();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                let (n, s) = (n.clone(), s.clone());
                let (b, rng, client) = (behaviour.clone(), rng.clone(), client.clone());
                let f = f.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let (n, s, b, rng, client) =
                            (n.clone(), s.clone(), b.clone(), rng.clone(), client.clone());
                        let f = f.clone();
                        async move {
                            match b {
                                Behaviour::Paths => answer(n, s, req).await,
                                Behaviour::Always(status) => {
                                    record(&s, &req);
                                    f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                    Ok(status_response(&n, status))
                                }
                                Behaviour::Flaky {
                                    percent, status, ..
                                } => {
                                    let fail = {
                                        let mut x = rng.lock();
                                        // xorshift64: reproducible draws for a seeded test.
                                        *x ^= *x << 13;
                                        *x ^= *x >> 7;
                                        *x ^= *x << 17;
                                        (*x % 100) < u64::from(percent)
                                    };
                                    if fail {
                                        record(&s, &req);
                                        f.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                                        Ok(status_response(&n, status))
                                    } else {
                                        answer(n, s, req).await
                                    }
                                }
                                Behaviour::Relay { via, host } => {
                                    record(&s, &req);
                                    Ok(relay(&n, &client, &via, &host, req.uri().path()).await)
                                }
                            }
                        }
                    });
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
            failed,
        }
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().clone()
    }
}

fn record(seen: &Mutex<Vec<Seen>>, req: &Request<Incoming>) {
    seen.lock().push(Seen {
        path: req.uri().path().to_string(),
        headers: req.headers().clone(),
        body_complete: None,
    });
}

fn status_response(name: &str, status: u16) -> Response<Body> {
    let mut r = Response::new(full(format!("{name} answers {status}")));
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    r.headers_mut()
        .insert("x-app", http::HeaderValue::from_str(name).expect("ascii"));
    r
}

async fn relay(
    name: &str,
    client: &Client<HttpConnector, Body>,
    via: &std::sync::OnceLock<SocketAddr>,
    host: &str,
    path: &str,
) -> Response<Body> {
    let Some(to) = via.get() else {
        return status_response(name, 599);
    };
    let req = Request::builder()
        .uri(format!("http://{to}{path}"))
        .header("host", host)
        .body(full(""))
        .expect("request");
    match client.request(req).await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let _ = read(resp).await;
            status_response(name, status)
        }
        Err(_) => status_response(name, 502),
    }
}

/// An endpoint that accepts TCP connections and resets each one (RST) once a request starts
/// arriving; counts the connections.
pub struct Resetter {
    pub addr: SocketAddr,
    pub connections: Arc<std::sync::atomic::AtomicUsize>,
}

impl Resetter {
    pub async fn start() -> Resetter {
        use std::sync::atomic::Ordering;
        use tokio::io::AsyncReadExt;
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind resetter");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = connections.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    let _ = stream.read(&mut buf).await;
                    // Linger 0: close sends RST, not FIN.
                    let _ = stream.set_zero_linger();
                    drop(stream);
                });
            }
        });
        Resetter { addr, connections }
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
        // The body back; its trailers, if any, as `x-trailer-<name>` headers.
        "echo" => {
            let (trailers, body) = match req.into_body().collect().await {
                Ok(c) => (c.trailers().cloned().unwrap_or_default(), c.to_bytes()),
                Err(_) => Default::default(),
            };
            let mut r = Response::new(full(body));
            for (name, value) in &trailers {
                if let Ok(n) = http::HeaderName::try_from(format!("x-trailer-{name}")) {
                    r.headers_mut().append(n, value.clone());
                }
            }
            r
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
        // `/slow/MS` waits MS and answers 200; `/slow/MS/N` answers N.
        "slow" => {
            let (ms, status) = arg.split_once('/').unwrap_or((arg, "200"));
            tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(100))).await;
            let mut r = Response::new(full("slow"));
            *r.status_mut() = status
                .parse::<u16>()
                .ok()
                .and_then(|s| StatusCode::from_u16(s).ok())
                .unwrap_or(StatusCode::OK);
            r
        }
        "big" => {
            let n: usize = arg.parse().unwrap_or(0);
            Response::new(full(vec![b'x'; n]))
        }
        "hang" => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Response::new(full(""))
        }
        "stall" => Response::new(Stall(Some(Bytes::from_static(b"first"))).boxed_unsync()),
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

/// A body that sends one chunk, then never another and never ends.
struct Stall(Option<Bytes>);

impl http_body::Body for Stall {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        match self.0.take() {
            Some(b) => std::task::Poll::Ready(Some(Ok(http_body::Frame::data(b)))),
            None => std::task::Poll::Pending,
        }
    }
}

/// A GET of `path` to `payments` through the listener at `to`, with extra `headers`.
pub fn get(to: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Request<Body> {
    let mut b = Request::builder()
        .uri(format!("http://{to}{path}"))
        .header("host", "payments");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(full("")).expect("request")
}

/// An HTTP/1.1 client.
pub fn h1_client() -> Client<HttpConnector, Body> {
    Client::builder(TokioExecutor::new()).build(HttpConnector::new())
}

/// An HTTP/2 (prior knowledge, h2c) client.
/// An HTTP/2 connection with prior knowledge to `addr` (h2c), as an app speaking gRPC opens
/// one to its sidecar; requests name the service in `:authority`.
pub async fn h2_connection(
    addr: std::net::SocketAddr,
) -> hyper::client::conn::http2::SendRequest<Body> {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
            .await
            .expect("h2 handshake");
    tokio::spawn(conn);
    sender
}

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

/// The sum of the series of `name` on the admin listener `admin` whose labels include every
/// one of `labels` (each written `key="value"`); 0 when none does.
pub async fn metric_sum(admin: SocketAddr, name: &str, labels: &[&str]) -> f64 {
    let req = Request::get(format!("http://{admin}/metrics"))
        .body(full(""))
        .expect("request");
    let (_, _, body) = read(h1_client().request(req).await.expect("scrape")).await;
    String::from_utf8_lossy(&body)
        .lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A sidecar's `/metrics` text.
pub async fn scrape(sidecar: &weft::proxy::Sidecar) -> String {
    let resp = h1_client()
        .request(
            Request::builder()
                .uri(format!("http://{}/metrics", sidecar.admin))
                .body(full(""))
                .expect("request"),
        )
        .await
        .expect("metrics");
    String::from_utf8_lossy(&read(resp).await.2).into_owned()
}

/// A CA named `ca_name` and a certificate it signed for 127.0.0.1: (CA, certificate, key), PEM.
pub fn loopback_tls(ca_name: &str) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().expect("key");
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, ca_name);
    let ca_cert = ca.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().expect("key");
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .expect("params")
        .signed_by(&key, &issuer)
        .expect("leaf");
    (ca_cert.pem(), leaf.pem(), key.serialize_pem())
}

/// `python3 -m http.server` (Debian's) serving a directory on loopback, killed on drop.
pub struct WebServer {
    child: std::process::Child,
    /// Its loopback port.
    pub port: u16,
}

impl WebServer {
    /// Serves `dir`; returns once it takes connections.
    pub async fn start(dir: &std::path::Path) -> WebServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server = WebServer {
            child: std::process::Command::new(netns::DEBIAN_PYTHON)
                .args([
                    "-m",
                    "http.server",
                    &port.to_string(),
                    "--bind",
                    "127.0.0.1",
                ])
                .arg("--directory")
                .arg(dir)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .expect("start python3 -m http.server"),
            port,
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            assert!(
                std::time::Instant::now() < deadline,
                "the web server never answered"
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        server
    }

    /// Stops it now.
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        self.stop();
    }
}
