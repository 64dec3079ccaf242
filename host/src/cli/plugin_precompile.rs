//! `weft plugin precompile`: the child a sidecar runs to compile a component, so the proxy
//! itself only loads compiled code (see `plugin::Compiler`). Component in on stdin, compiled
//! code out on stdout; a refusal exits with `PRECOMPILE_REFUSED` and the reason on stderr.

use weft::plugin::{PRECOMPILE_REFUSED, PoolSizes, Tier, precompile};

/// Arguments: the engine settings of the parent, so the code fits its engine.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The parent's instance pool size (0: on-demand allocation).
    #[arg(long)]
    instances: u32,
    /// The parent's largest plugin memory.
    #[arg(long)]
    max_memory_bytes: usize,
    /// Compile with the baseline compiler (quick to compile, slower to run).
    #[arg(long)]
    baseline: bool,
    /// Nobody waits for this compile: run at the lowest CPU priority.
    #[arg(long)]
    low_priority: bool,
}

/// Runs it; exits the process on refusal with the agreed code.
pub fn run(args: Args) -> anyhow::Result<()> {
    if args.low_priority {
        weft::plugin::lower_priority();
    }
    let pool = PoolSizes {
        instances: args.instances,
        max_memory_bytes: args.max_memory_bytes,
    };
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    let tier = if args.baseline {
        Tier::Baseline
    } else {
        Tier::Optimized
    };
    if let Err(reason) = precompile(pool, tier, &mut stdin, &mut stdout) {
        eprintln!("{reason}");
        std::process::exit(PRECOMPILE_REFUSED);
    }
    Ok(())
}
