//! Command-line parsing and the commands themselves.

mod capture;
mod control;
mod demo;
mod describe;
mod operator;
mod plugin_check;
mod plugin_precompile;
mod plugin_sign;
mod run;
mod sidecar;
mod simulate;
mod stat;
mod tap;
mod wait;

use clap::{Parser, Subcommand};

/// Weft: a service mesh whose traffic policies are WebAssembly plugins.
#[derive(Debug, Parser)]
#[command(name = "weft", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply Istio resources (VirtualService, DestinationRule, WasmPlugin, AuthorizationPolicy,
    /// PeerAuthentication YAML).
    Apply(operator::ApplyArgs),
    /// Install the rules that send this network namespace's TCP through its sidecar (the
    /// pod's init step); `--clean` removes them.
    Capture(capture::Args),
    /// Rotate the mesh CA's root in three steps, each a certificate renewal apart: `rotate`
    /// (stage a new root), `activate` (sign with it), `retire` (drop the old one).
    #[command(subcommand)]
    Ca(CaCommand),
    /// Run the control plane.
    Control(control::Args),
    /// Run the seed scenario end to end on real processes: control plane, sidecars, demo
    /// apps, traffic, and the story (canary, retries, ejection, reweighting, plugin swap).
    Demo(demo::Args),
    /// A payments app of `weft demo`'s captured mode (run inside a pod).
    #[command(hide = true)]
    DemoApp(demo::apps::AppArgs),
    /// Orders' app of `weft demo`'s captured mode (run inside a pod).
    #[command(hide = true)]
    DemoDriver(demo::apps::DriverArgs),
    /// Delete a resource.
    Delete(operator::DeleteArgs),
    /// Show resources.
    Get(operator::GetArgs),
    /// Work with plugin artifacts.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Show every sidecar: service, snapshot version, ACK state, last seen.
    Status(operator::StatusArgs),
    /// Success rate, requests/s and latency percentiles per service and subset, from every
    /// sidecar's metrics (like `linkerd viz stat`).
    Stat(stat::Args),
    /// Live calls from the sidecars (method, path, status, latency, subset, endpoint,
    /// attempts, flags), like `linkerd viz tap`.
    Tap(tap::Args),
    /// Send one call through a sidecar and show why it went where it went: the destination
    /// each plugin chose, every attempt, the ejected endpoints passed over.
    Describe(describe::Args),
    /// Print the bootstrap token for a service's sidecars.
    Token(operator::TokenArgs),
    /// Keep a registry credential for pulling private `oci://` plugins (a WasmPlugin's
    /// `imagePullSecret`); the password comes from standard input.
    PullSecret(operator::PullSecretArgs),
    /// Run an app as a pod on this machine: its own network namespace, a sidecar beside it,
    /// every TCP connection captured; all removed when the app exits.
    Run(run::Args),
    /// Run the sidecar proxy beside a service instance.
    Sidecar(sidecar::Args),
    /// Run the seed scenario (orders -> payments v1 95% / v2 5%, retries, outlier ejection,
    /// telemetry) through the real built-in plugin chain against simulated payments pods.
    Simulate(simulate::Args),
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Stage a new root: trusted from now on, signing after `activate`.
    Rotate(operator::ConnArgs),
    /// Sign with the staged root; the old one stays trusted until `retire`.
    Activate(operator::ConnArgs),
    /// Drop the old roots from the bundle: certificates they signed stop being trusted.
    Retire(operator::ConnArgs),
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Load a plugin as a sidecar would: verify, compile, configure; print what it declares.
    Check(plugin_check::Args),
    /// Upload a component to the control plane's artifact store (or an OCI registry); prints
    /// its sha256 (or image digest).
    Push(operator::PushArgs),
    /// Make an ed25519 key pair for signing plugins.
    Keygen(plugin_sign::KeygenArgs),
    /// Sign a component with a private key: writes `<file>.sig`.
    Sign(plugin_sign::SignArgs),
    /// Compile a component (stdin) for a sidecar's engine (stdout); run by the sidecar and the control plane themselves.
    #[command(hide = true)]
    Precompile(plugin_precompile::Args),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Apply(args) => operator::apply(args),
        Command::Capture(args) => capture::run(args),
        Command::Ca(CaCommand::Rotate(args)) => operator::ca(args, "rotate"),
        Command::Ca(CaCommand::Activate(args)) => operator::ca(args, "activate"),
        Command::Ca(CaCommand::Retire(args)) => operator::ca(args, "retire"),
        Command::Control(args) => control::run(args),
        Command::Demo(args) => demo::run(args),
        Command::DemoApp(args) => demo::apps::run_app(args),
        Command::DemoDriver(args) => demo::apps::run_driver(args),
        Command::Delete(args) => operator::delete(args),
        Command::Get(args) => operator::get(args),
        Command::Stat(args) => stat::run(args),
        Command::Tap(args) => tap::run(args),
        Command::Describe(args) => describe::run(args),
        Command::Status(args) => operator::status(args),
        Command::Token(args) => operator::token(args),
        Command::PullSecret(args) => operator::pull_secret(args),
        Command::Plugin(PluginCommand::Push(args)) => operator::push(args),
        Command::Plugin(PluginCommand::Check(args)) => plugin_check::run(args),
        Command::Plugin(PluginCommand::Keygen(args)) => plugin_sign::keygen(args),
        Command::Plugin(PluginCommand::Sign(args)) => plugin_sign::sign(args),
        Command::Plugin(PluginCommand::Precompile(args)) => plugin_precompile::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Run(args) => run::run(args),
        Command::Sidecar(args) => sidecar::run(args),
    }
}

/// Waits for SIGTERM or Ctrl-C.
async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
