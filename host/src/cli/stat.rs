//! `weft stat`: success rate, requests per second and latency percentiles per destination
//! service and subset, like `linkerd viz stat`, from every sidecar's metrics as the control
//! plane reads them (`GET /v1/stats`), over a window between two readings.

use super::operator::Conn;
use bytes::Bytes;
use http::Method;
use std::io::{IsTerminal as _, Write as _};
use std::time::Instant;
use weft::control::stats::{Reading, Row, window};
use weft::snapshot::parse_duration;

/// Arguments of `weft stat`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// Only this destination service.
    service: Option<String>,
    /// The window the rates and percentiles cover (`2s`, `1m`).
    #[arg(long, default_value = "2s")]
    window: String,
    /// Keep printing, one window after another, until Ctrl-C.
    #[arg(short, long)]
    watch: bool,
    /// `text` or `json`.
    #[arg(short = 'o', long, default_value = "text")]
    output: String,
    #[command(flatten)]
    conn: Conn,
}

async fn reading(conn: &Conn) -> anyhow::Result<Reading> {
    let answer = conn.call(Method::GET, "/v1/stats", Bytes::new()).await?;
    if let Some(list) = answer["unreachable"].as_array()
        && !list.is_empty()
    {
        eprintln!(
            "weft stat: {} sidecar(s) did not answer: {list:?}",
            list.len()
        );
    }
    Ok(serde_json::from_value(answer["reading"].clone())?)
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.1}ms"))
}

fn print(rows: &[Row], json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(rows)?);
        return Ok(());
    }
    println!(
        "{:<16} {:<10} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "SERVICE", "SUBSET", "SUCCESS", "RPS", "P50", "P95", "P99"
    );
    for r in rows {
        println!(
            "{:<16} {:<10} {:>9} {:>9.1} {:>9} {:>9} {:>9}",
            r.service,
            r.subset,
            r.success_rate
                .map_or_else(|| "-".to_string(), |s| format!("{s:.2}%")),
            r.rps,
            ms(r.p50_ms),
            ms(r.p95_ms),
            ms(r.p99_ms)
        );
    }
    Ok(())
}

/// Runs `weft stat`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let json = match args.output.as_str() {
        "json" => true,
        "text" => false,
        other => anyhow::bail!("-o {other:?}: choose text or json"),
    };
    let span = parse_duration(&args.window).map_err(|e| anyhow::anyhow!("--window: {e}"))?;
    anyhow::ensure!(!span.is_zero(), "--window must be above zero");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let mut before = reading(&args.conn).await?;
        let mut taken = Instant::now();
        loop {
            let tick = tokio::time::sleep(span);
            if args.watch {
                tokio::select! {
                    _ = tick => {}
                    _ = super::wait_for_signal() => return Ok(()),
                }
            } else {
                tick.await;
            }
            let after = reading(&args.conn).await?;
            let now = Instant::now();
            let mut rows = window(&before, &after, (now - taken).as_secs_f64());
            if let Some(only) = &args.service {
                rows.retain(|r| &r.service == only);
            }
            if args.watch && !json && std::io::stdout().is_terminal() {
                print!("\x1b[H\x1b[2J");
            }
            print(&rows, json)?;
            let _ = std::io::stdout().flush();
            if !args.watch {
                return Ok(());
            }
            (before, taken) = (after, now);
        }
    })
}
