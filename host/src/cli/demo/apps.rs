//! The demo's services: small HTTP apps standing in for the payments pods (whose health the
//! story changes) and for orders' own app. Each answers with its pod name and version, so the
//! caller can tell where a call landed. In captured mode each runs as a process of its own in
//! a `weft run` pod (`weft demo-app`), its health read from a file the story writes.

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

impl Health {
    /// Its word in a health file.
    pub fn word(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Flaky => "flaky",
            Health::Broken => "broken",
        }
    }

    fn from_word(word: &str) -> Option<Health> {
        [Health::Healthy, Health::Flaky, Health::Broken]
            .into_iter()
            .find(|h| h.word() == word)
    }
}

impl Pod {
    /// Starts a pod app on a loopback port.
    pub async fn start(name: &str, version: &str) -> std::io::Result<Pod> {
        Pod::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), name, version).await
    }

    /// Starts a pod app on `bind`.
    pub async fn start_on(bind: SocketAddr, name: &str, version: &str) -> std::io::Result<Pod> {
        let listener = TcpListener::bind(bind).await?;
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

/// Options of `weft demo-app`: one payments pod's app, run by the demo inside a pod.
#[derive(Debug, clap::Args)]
pub struct AppArgs {
    /// The pod's name (`payments-v1-a`).
    #[arg(long)]
    name: String,
    /// Its version label.
    #[arg(long)]
    version: String,
    /// Where it listens.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// A file holding `healthy`, `flaky` or `broken`, read every 100 ms.
    #[arg(long)]
    health_file: std::path::PathBuf,
}

/// Runs `weft demo-app` until SIGTERM or Ctrl-C.
pub fn run_app(args: AppArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let pod = Pod::start_on(args.listen, &args.name, &args.version).await?;
        println!("demo-app {} listening on {}", args.name, pod.addr);
        let watch = async {
            loop {
                if let Ok(text) = std::fs::read_to_string(&args.health_file)
                    && let Some(h) = Health::from_word(text.trim())
                {
                    pod.set(h);
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            () = watch => {}
            () = crate::cli::wait_for_signal() => {}
        }
        Ok(())
    })
}

/// Options of `weft demo-driver`: orders' app in captured mode, calling payments by name.
#[derive(Debug, clap::Args)]
pub struct DriverArgs {
    /// What every call asks for.
    #[arg(long, default_value = "http://payments/charge")]
    url: String,
    /// Calls per second.
    #[arg(long, default_value_t = 200)]
    rate: u32,
}

/// Runs `weft demo-driver`: calls at the rate until SIGTERM or Ctrl-C, one line per call on
/// stdout (`call <version> <ok> <microseconds> <new-build>`), which the demo reads.
pub fn run_driver(args: DriverArgs) -> anyhow::Result<()> {
    use std::io::Write as _;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let record: super::Record = Arc::new(|version, ok, took, marked| {
            let line = format!(
                "call {version} {} {} {}\n",
                u8::from(ok),
                took.as_micros(),
                u8::from(marked)
            );
            // The demo went away: nothing left to report to.
            if std::io::stdout().lock().write_all(line.as_bytes()).is_err() {
                std::process::exit(0);
            }
        });
        let target = super::Target::Url(args.url.clone());
        let workers = super::drive(target, args.rate, record, stop.clone());
        crate::cli::wait_for_signal().await;
        stop.store(true, Ordering::Relaxed);
        for w in workers {
            w.abort();
        }
        Ok(())
    })
}
