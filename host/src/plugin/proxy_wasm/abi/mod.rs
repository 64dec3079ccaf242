//! The proxy-wasm v0.2.1 host functions (module `env`) Weft provides, one module per kind:
//! header maps (`maps`), buffers (`buffers`), the stream (local replies, resuming, HTTP
//! callouts: `stream`), and what outlives a call (properties, shared data, queues, metrics:
//! `state`); logging, time and ticks here.
//!
//! What is not linked here (gRPC callouts, foreign functions) is linked as a stub that fails
//! the call naming itself (see `UNSUPPORTED` in the parent module). The Rust SDK panics on a
//! status it does not expect, so each function answers only the statuses the ABI documents
//! for it; a filter's misuse that has no status (an invalid header name) fails the call as a
//! passed host bound instead.

mod buffers;
mod maps;
mod state;
mod stream;

use super::ctx::ProxyCtx;
use super::guest::{self, BadArgument, status};
pub(super) use crate::plugin::host_impl::clip;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wasmtime::{Caller, Linker};

type Call<'a> = Caller<'a, ProxyCtx>;

const REQUEST_HEADERS: i32 = 0;
const REQUEST_TRAILERS: i32 = 1;
const RESPONSE_HEADERS: i32 = 2;
const RESPONSE_TRAILERS: i32 = 3;
const REQUEST_BODY: i32 = 0;
const RESPONSE_BODY: i32 = 1;
const CALL_RESPONSE_BODY: i32 = 4;
const CALL_RESPONSE_HEADERS: i32 = 6;
const CALL_RESPONSE_TRAILERS: i32 = 7;

/// The most callouts one callback may dispatch.
const MAX_CALLOUTS: usize = 8;

/// The longest a callout may be given.
const MAX_CALLOUT_TIMEOUT: Duration = Duration::from_secs(60);
const PLUGIN_CONFIGURATION: i32 = 7;

/// The most bytes a filter may make a body by rewriting it.
const MAX_BODY: usize = 16 << 20;

/// The shortest tick period honoured: a filter asking for less gets this.
const MIN_TICK: Duration = Duration::from_millis(10);

pub(super) fn bad(_: BadArgument) -> i32 {
    status::BAD_ARGUMENT
}

fn log(ctx: &mut ProxyCtx, level: i32, message: String) {
    let message = crate::plugin::host_impl::log_line(message);
    let plugin = &*ctx.plugin;
    match level {
        0 => tracing::trace!(plugin, "{message}"),
        1 => tracing::debug!(plugin, "{message}"),
        2 => tracing::info!(plugin, "{message}"),
        3 => tracing::warn!(plugin, "{message}"),
        _ => tracing::error!(plugin, "{message}"),
    }
    if level >= 3 {
        ctx.last_complaint = Some(message);
    }
}

/// Links every host function Weft provides into `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<ProxyCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: Call<'_>, level: i32, ptr: i32, len: i32| -> i32 {
            match guest::read_text(&mut c, ptr, len) {
                Ok(message) => {
                    log(c.data_mut(), level, message);
                    status::OK
                }
                Err(e) => bad(e),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: Call<'_>, ret: i32| -> i32 {
            let level = if tracing::enabled!(tracing::Level::TRACE) {
                0
            } else if tracing::enabled!(tracing::Level::DEBUG) {
                1
            } else if tracing::enabled!(tracing::Level::INFO) {
                2
            } else if tracing::enabled!(tracing::Level::WARN) {
                3
            } else {
                4
            };
            guest::write_u32(&mut c, ret, level).map_or_else(bad, |()| status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Call<'_>, ret: i32| -> i32 {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
            guest::write_u64(&mut c, ret, now).map_or_else(bad, |()| status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: Call<'_>, period: i32| -> i32 {
            let ms = u64::from(period as u32);
            c.data_mut().tick = (ms > 0).then(|| Duration::from_millis(ms).max(MIN_TICK));
            status::OK
        },
    )?;
    maps::add(linker)?;
    buffers::add(linker)?;
    stream::add(linker)?;
    state::add_properties(linker)?;
    state::add_shared_data(linker)?;
    state::add_metrics(linker)?;
    state::add_queues(linker)?;
    Ok(())
}
