//! `weft plugin check`: load a plugin exactly as a sidecar would and report on it.

use prometheus::Registry;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use weft::plugin::{Artifact, Limits, NoEndpoints, PluginRuntime, PluginSpec, RuntimeConfig};

/// Arguments of `weft plugin check`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The component (`.wasm`).
    file: PathBuf,
    /// Its configuration, as JSON.
    #[arg(long, default_value = "{}")]
    config: String,
    /// The sha256 it must have.
    #[arg(long)]
    sha256: Option<String>,
    /// The name to load it under.
    #[arg(long, default_value = "plugin")]
    name: String,
    /// Memory cap per instance, in MiB.
    #[arg(long, default_value_t = 16)]
    memory_mib: usize,
    /// Deadline per hook call, in milliseconds.
    #[arg(long, default_value_t = 10)]
    deadline_ms: u64,
}

/// Runs `weft plugin check`.
pub fn run(args: Args) -> anyhow::Result<()> {
    let runtime = PluginRuntime::new(
        RuntimeConfig::default(),
        &Registry::new(),
        Arc::new(NoEndpoints),
    )?;
    let compiled = runtime.load(
        &args.name,
        Artifact::File(&args.file),
        args.sha256.as_deref(),
    )?;
    let mut spec = PluginSpec::new(args.name.clone(), args.config);
    spec.limits = Limits {
        deadline: Duration::from_millis(args.deadline_ms),
        memory_bytes: args.memory_mib << 20,
        ..Limits::default()
    };
    let plugin = runtime.prepare(&compiled, spec)?;
    let hooks = plugin.hooks();
    let declared: Vec<&str> = [
        (hooks.on_request, "on-request"),
        (hooks.on_attempt_end, "on-attempt-end"),
        (hooks.on_response, "on-response"),
        (hooks.on_done, "on-done"),
        (hooks.on_request_body, "request body"),
        (hooks.on_request_trailers, "request trailers"),
        (hooks.on_response_body, "response body"),
        (hooks.on_response_trailers, "response trailers"),
    ]
    .into_iter()
    .filter_map(|(on, name)| on.then_some(name))
    .collect();
    println!("plugin   {}", plugin.name());
    println!("file     {}", args.file.display());
    println!("sha256   {}", compiled.digest);
    println!("compiled in {:.1} ms", compiled.took.as_secs_f64() * 1e3);
    println!(
        "hooks    {}",
        if declared.is_empty() {
            "(none)".to_string()
        } else {
            declared.join(", ")
        }
    );
    if plugin.is_proxy_wasm() {
        println!("ok: a proxy-wasm filter (ABI 0.2.x) that accepts its configuration");
    } else {
        println!("ok: implements weft:filter@0.1.0 and accepts its configuration");
    }
    Ok(())
}
