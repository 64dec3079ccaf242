//! `weft tap`: live calls from every sidecar of the mesh, like `linkerd viz tap`. The control
//! plane says where each connected sidecar's admin endpoint is; each is asked for its `/tap`
//! stream (filtered there, so only matching calls cross), and the lines are printed as they
//! come, until `--max` calls or `--duration` have passed.

use super::operator::Conn;
use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Arguments of `weft tap`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only calls to this service: its callers' outbound side and its own inbound side.
    service: Option<String>,
    /// Only paths starting with this.
    #[arg(long)]
    path: Option<String>,
    /// Only failed calls (status 5xx, or none).
    #[arg(long)]
    errors: bool,
    /// Stop after this many calls.
    #[arg(long, default_value_t = 100)]
    max: usize,
    /// Stop after this long (`30s`, `5m`).
    #[arg(long, default_value = "30s", value_parser = weft::snapshot::parse_duration)]
    duration: Duration,
    /// `text` (a line per call) or `json` (the sidecars' JSON lines).
    #[arg(short = 'o', long, default_value = "text")]
    output: String,
    #[command(flatten)]
    conn: Conn,
}

/// One call as a line of text.
fn text(v: &serde_json::Value) -> String {
    let s = |k: &str| v[k].as_str().unwrap_or("-").to_string();
    let to = match v["subset"].as_str() {
        Some(subset) => format!("{}/{subset}", s("destination")),
        None => s("destination"),
    };
    format!(
        "{} {:<8} {} -> {to} {} {}{} {} {}ms attempts={} flags={} route={} upstream={} id={}",
        s("start_time"),
        s("direction"),
        s("source"),
        s("method"),
        s("authority"),
        s("path"),
        v["response_code"],
        v["duration"],
        v["attempts"],
        s("response_flags"),
        s("route_name"),
        s("upstream_host"),
        s("request_id"),
    )
}

/// Runs `weft tap`.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(args.output.as_str(), "text" | "json"),
        "-o {:?}: choose text or json",
        args.output
    );
    anyhow::ensure!((1..=10_000).contains(&args.max), "--max: from 1 to 10000");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let status = args
            .conn
            .call(Method::GET, "/v1/status", Bytes::new())
            .await?;
        let admins: Vec<String> = status["sidecars"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["connected"] == true)
            .filter_map(|s| s["admin"].as_str().map(str::to_string))
            .collect();
        anyhow::ensure!(!admins.is_empty(), "no connected sidecar to tap");
        let mut query = format!(
            "max={}&seconds={}",
            args.max,
            args.duration.as_secs().clamp(1, 3600)
        );
        if let Some(s) = &args.service {
            query.push_str(&format!("&service={s}"));
        }
        if let Some(p) = &args.path {
            query.push_str(&format!("&path={p}"));
        }
        if args.errors {
            query.push_str("&errors=1");
        }
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<String>(256);
        let mut watching = 0;
        for admin in &admins {
            let uri: http::Uri = match format!("http://{admin}/tap?{query}").parse() {
                Ok(u) => u,
                Err(e) => {
                    eprintln!("weft tap: {admin}: {e}");
                    continue;
                }
            };
            let resp = match client.get(uri).await {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => {
                    eprintln!("weft tap: {admin} answered {}", r.status());
                    continue;
                }
                Err(e) => {
                    eprintln!("weft tap: {admin}: {e}");
                    continue;
                }
            };
            watching += 1;
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut body = resp.into_body();
                let mut pending = Vec::new();
                while let Some(Ok(frame)) = body.frame().await {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    pending.extend_from_slice(&data);
                    while let Some(end) = pending.iter().position(|b| *b == b'\n') {
                        let line: Vec<u8> = pending.drain(..=end).collect();
                        let line = String::from_utf8_lossy(&line).trim().to_string();
                        if tx.send(line).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
        drop(tx);
        anyhow::ensure!(watching > 0, "no sidecar could be tapped");
        eprintln!("weft tap: watching {watching} sidecar(s)");
        let mut shown = 0;
        let deadline = tokio::time::sleep(args.duration);
        tokio::pin!(deadline);
        while shown < args.max {
            let line = tokio::select! {
                l = rx.recv() => match l { Some(l) => l, None => break },
                () = &mut deadline => break,
                () = super::wait_for_signal() => break,
            };
            if args.output == "json" {
                println!("{line}");
            } else if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                println!("{}", text(&v));
            }
            shown += 1;
        }
        Ok(())
    })
}
