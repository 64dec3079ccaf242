//! `weft plugin precompile`: the child a sidecar runs to compile a component, so the proxy
//! itself only loads compiled code (see `plugin::Compiler`). Component in on stdin, compiled
//! code out on stdout; a refusal exits with `PRECOMPILE_REFUSED` and the reason on stderr.

use weft::plugin::{PRECOMPILE_REFUSED, PoolSizes, precompile};

/// Arguments: the engine settings of the parent, so the code fits its engine.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// The parent's instance pool size (0: on-demand allocation).
    #[arg(long)]
    instances: u32,
    /// The parent's largest plugin memory.
    #[arg(long)]
    max_memory_bytes: usize,
}

/// Runs it; exits the process on refusal with the agreed code.
pub fn run(args: Args) -> anyhow::Result<()> {
    let pool = PoolSizes {
        instances: args.instances,
        max_memory_bytes: args.max_memory_bytes,
    };
    let mut stdin = std::io::stdin().lock();
    let mut stdout = std::io::stdout().lock();
    if let Err(reason) = precompile(pool, &mut stdin, &mut stdout) {
        eprintln!("{reason}");
        std::process::exit(PRECOMPILE_REFUSED);
    }
    Ok(())
}
