//! `weft describe`: send one call through a sidecar as its app would, and show why it went
//! where it went — the destination the plugins chose, what each plugin did, every attempt (the
//! endpoint, the ejected endpoints passed over, the outcome, each plugin's retry verdict). The
//! control plane says where the sidecar's admin endpoint is; its `/describe` sends the call
//! with the sidecar's debug token.

use super::operator::Conn;
use bytes::Bytes;
use http::Method;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Arguments of `weft describe`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The call, as the app makes it (`http://payments/charge`).
    url: String,
    /// The calling service, whose sidecar sends the call (its first connected sidecar).
    #[arg(long)]
    from: String,
    /// The method.
    #[arg(short = 'X', long, default_value = "GET")]
    method: String,
    /// `text` or `json`.
    #[arg(short = 'o', long, default_value = "text")]
    output: String,
    #[command(flatten)]
    conn: Conn,
}

fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The explanation as lines of text.
fn text(v: &serde_json::Value) -> String {
    let e = &v["explanation"];
    let s = |x: &serde_json::Value| x.as_str().unwrap_or("-").to_string();
    let mut out = vec![
        format!("status {}", v["status"]),
        format!("service {} -> {}", s(&e["service"]), s(&e["destination"])),
    ];
    for p in e["plugins"].as_array().into_iter().flatten() {
        out.push(format!("  plugin {}: {}", s(&p[0]), s(&p[1])));
    }
    for a in e["attempts"].as_array().into_iter().flatten() {
        let mut line = format!(
            "attempt {}: endpoint {} -> {} in {} ms",
            a["number"],
            s(&a["endpoint"]),
            s(&a["outcome"]),
            a["ms"]
        );
        let ejected: Vec<String> = a["ejected"]
            .as_array()
            .into_iter()
            .flatten()
            .map(&s)
            .collect();
        if !ejected.is_empty() {
            line.push_str(&format!(" (ejected, passed over: {})", ejected.join(", ")));
        }
        out.push(line);
        for p in a["verdicts"].as_array().into_iter().flatten() {
            out.push(format!("  {}: {}", s(&p[0]), s(&p[1])));
        }
    }
    out.join("\n")
}

/// Runs `weft describe`.
pub fn run(args: Args) -> anyhow::Result<()> {
    anyhow::ensure!(
        matches!(args.output.as_str(), "text" | "json"),
        "-o {:?}: choose text or json",
        args.output
    );
    Method::from_bytes(args.method.as_bytes())
        .map_err(|_| anyhow::anyhow!("-X {:?} is not a method", args.method))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let status = args
            .conn
            .call(Method::GET, "/v1/status", Bytes::new())
            .await?;
        let admin = status["sidecars"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|s| s["connected"] == true && s["service"] == args.from.as_str())
            .find_map(|s| s["admin"].as_str().map(str::to_string))
            .ok_or_else(|| anyhow::anyhow!("no connected sidecar of {:?}", args.from))?;
        let uri: http::Uri = format!(
            "http://{admin}/describe?method={}&url={}",
            encode(&args.method),
            encode(&args.url)
        )
        .parse()?;
        let client: Client<_, Empty<Bytes>> = Client::builder(TokioExecutor::new()).build_http();
        let resp = client.get(uri).await?;
        let ok = resp.status().is_success();
        let body = resp.into_body().collect().await?.to_bytes();
        anyhow::ensure!(ok, "{admin}: {}", String::from_utf8_lossy(&body).trim());
        let v: serde_json::Value = serde_json::from_slice(&body)?;
        if args.output == "json" {
            println!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            println!("{}", text(&v));
        }
        Ok(())
    })
}
