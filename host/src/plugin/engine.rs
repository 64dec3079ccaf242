//! The wasmtime engines of a process: component model, pooling allocator, and epoch
//! interruption driven by a ticker thread so every hook call can be given a deadline.
//!
//! Code is compiled in one of two tiers. Optimized (Cranelift) is what plugins run on. Baseline
//! (Winch, a single-pass compiler) compiles a 12-18 MB scripting-language component about 5x
//! faster into code that runs slower; the control plane uses it so a plugin fetched at apply is
//! in effect within seconds, while the optimized code is compiled behind it.

use super::error::PluginError;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Duration;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, OptLevel, PoolingAllocationConfig, Strategy,
};

/// How often the epoch advances; deadlines are whole ticks.
pub const EPOCH_TICK: Duration = Duration::from_millis(1);

/// Sizes of the instance pool.
#[derive(Debug, Clone, Copy)]
pub struct PoolSizes {
    /// Component instances alive at once, across every plugin and worker; 0 allocates each
    /// instance on demand instead of from a pool.
    pub instances: u32,
    /// Largest memory any plugin may be configured to use.
    pub max_memory_bytes: usize,
}

impl Default for PoolSizes {
    fn default() -> Self {
        PoolSizes {
            // A chain of a few plugins on a few workers needs tens of instances; swaps briefly
            // double that. Each memory slot reserves ~4 GiB of address space, so keep this modest.
            instances: 256,
            max_memory_bytes: 256 << 20,
        }
    }
}

/// Which compiler an engine compiles with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Cranelift, optimizing: what plugins are meant to run on.
    Optimized,
    /// Winch, single-pass: quick to compile, slower to run; replaced by optimized code.
    Baseline,
}

impl Tier {
    /// Its name in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Optimized => "optimized",
            Tier::Baseline => "baseline",
        }
    }
}

/// Builds an engine of `tier` and starts its epoch ticker (which stops when the engine is dropped);
/// returns the pool sizes in force (`instances: 0` when it fell back to on-demand).
///
/// The pooling allocator reserves address space for every slot up front (terabytes of it, never
/// touched); where that reservation is refused — a `ulimit -v`, some sandboxes, valgrind — the
/// engine falls back to allocating instances on demand, which is slower to instantiate but runs
/// the same code.
pub(crate) fn build(pool: PoolSizes, tier: Tier) -> Result<(Engine, PoolSizes), PluginError> {
    let mut config = Config::new();
    config.wasm_component_model(true);
    config.epoch_interruption(true);
    match tier {
        Tier::Optimized => config.cranelift_opt_level(OptLevel::Speed),
        Tier::Baseline => config.strategy(Strategy::Winch),
    };
    let on_demand = PoolSizes {
        instances: 0,
        ..pool
    };
    let built = if pool.instances == 0 {
        Engine::new(&config).map(|e| (e, on_demand))
    } else {
        let mut pooled = config.clone();
        pooled.allocation_strategy(InstanceAllocationStrategy::Pooling(pooling(pool)));
        Engine::new(&pooled).map(|e| (e, pool)).or_else(|e| {
            tracing::warn!(
                "plugin instance pool unavailable ({e:#}); allocating instances on demand"
            );
            Engine::new(&config).map(|e| (e, on_demand))
        })
    };
    let (engine, pool) = built.map_err(|e| PluginError::Engine(format!("{e:#}")))?;
    start_ticker(&engine);
    Ok((engine, pool))
}

fn pooling(pool: PoolSizes) -> PoolingAllocationConfig {
    let mut pooling = PoolingAllocationConfig::default();
    pooling
        .total_component_instances(pool.instances)
        // A Rust component holds a few core instances and one or two memories; leave room for
        // componentized scripting runtimes, which hold more.
        .total_core_instances(pool.instances.saturating_mul(4))
        .total_memories(pool.instances.saturating_mul(2))
        .total_tables(pool.instances.saturating_mul(4))
        .max_memory_size(pool.max_memory_bytes);
    pooling
}

fn start_ticker(engine: &Engine) {
    let weak = engine.weak();
    let spawned = std::thread::Builder::new()
        .name("weft-epoch".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        });
    if let Err(e) = spawned {
        // Without the ticker no deadline fires; say so loudly rather than fail every plugin.
        tracing::error!("cannot start the plugin epoch ticker, plugin deadlines are off: {e}");
    }
}

/// Ticks needed to cover `deadline`.
pub(crate) fn deadline_ticks(deadline: Duration) -> u64 {
    let tick = EPOCH_TICK.as_nanos().max(1);
    (deadline.as_nanos().div_ceil(tick) as u64).max(1)
}

/// Identifies the engine's compiled-code format, so cached code is only reused by an engine
/// that can run it.
pub(crate) fn fingerprint(engine: &Engine) -> String {
    let mut h = DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    format!("{:016x}", h.finish())
}
