//! Command-line parsing and the commands themselves.

mod plugin_check;
mod plugin_precompile;
mod sidecar;
mod simulate;

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
    /// Work with plugin artifacts.
    #[command(subcommand)]
    Plugin(PluginCommand),
    /// Run the sidecar proxy beside a service instance.
    Sidecar(sidecar::Args),
    /// Run the seed scenario (orders -> payments v1 95% / v2 5%, retries, outlier ejection,
    /// telemetry) through the real built-in plugin chain against simulated payments pods.
    Simulate(simulate::Args),
}

#[derive(Debug, Subcommand)]
enum PluginCommand {
    /// Load a plugin as a sidecar would: verify, compile, configure; print what it declares.
    Check(plugin_check::Args),
    /// Compile a component (stdin) for a sidecar's engine (stdout); run by the sidecar itself.
    #[command(hide = true)]
    Precompile(plugin_precompile::Args),
}

/// Runs the parsed command.
pub fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Plugin(PluginCommand::Check(args)) => plugin_check::run(args),
        Command::Plugin(PluginCommand::Precompile(args)) => plugin_precompile::run(args),
        Command::Simulate(args) => simulate::run(args),
        Command::Sidecar(args) => sidecar::run(args),
    }
}
