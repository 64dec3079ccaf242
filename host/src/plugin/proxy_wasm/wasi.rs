//! The WASI preview 1 a proxy-wasm filter gets: what the SDKs' standard libraries import
//! (stdout and stderr, clocks, randomness, an empty environment and argument list, exit),
//! as Envoy provides it. No files (every descriptor but 1 and 2 is `EBADF`), no sockets; a
//! module importing any other WASI function is refused at load, naming it.

use super::ctx::ProxyCtx;
use super::guest;
use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use wasmtime::{Caller, Linker};

type Call<'a> = Caller<'a, ProxyCtx>;

const MODULE: &str = "wasi_snapshot_preview1";
const SUCCESS: i32 = 0;
const BADF: i32 = 8;
const FAULT: i32 = 21;
const INVAL: i32 = 28;
const NOTSUP: i32 = 58;

/// The most bytes of one write logged.
const MAX_LINE: usize = 4096;

fn monotonic_ns() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    u64::try_from(START.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// Links the preview 1 functions Weft provides into `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<ProxyCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        MODULE,
        "fd_write",
        |mut c: Call<'_>, fd: i32, iovs: i32, count: i32, ret: i32| -> i32 {
            if fd != 1 && fd != 2 {
                return BADF;
            }
            let Ok(table) = guest::read(&mut c, iovs, count.saturating_mul(8)) else {
                return FAULT;
            };
            let mut text = Vec::new();
            let mut total: u32 = 0;
            for iov in table.chunks_exact(8) {
                let ptr = i32::from_le_bytes([iov[0], iov[1], iov[2], iov[3]]);
                let len = i32::from_le_bytes([iov[4], iov[5], iov[6], iov[7]]);
                let Ok(bytes) = guest::read(&mut c, ptr, len) else {
                    return FAULT;
                };
                total = total.saturating_add(bytes.len() as u32);
                let room = MAX_LINE.saturating_sub(text.len());
                text.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
            let plugin = c.data().plugin.clone();
            let line = String::from_utf8_lossy(&text);
            let stream = if fd == 1 { "stdout" } else { "stderr" };
            tracing::info!(plugin = %plugin, stream, "{}", line.trim_end());
            if guest::write_u32(&mut c, ret, total).is_err() {
                return FAULT;
            }
            SUCCESS
        },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_read",
        |_c: Call<'_>, _fd: i32, _iovs: i32, _n: i32, _ret: i32| -> i32 { BADF },
    )?;
    linker.func_wrap(MODULE, "fd_close", |_c: Call<'_>, _fd: i32| -> i32 { BADF })?;
    linker.func_wrap(
        MODULE,
        "fd_seek",
        |_c: Call<'_>, _fd: i32, _off: i64, _whence: i32, _ret: i32| -> i32 { BADF },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_fdstat_get",
        |_c: Call<'_>, _fd: i32, _ret: i32| -> i32 { BADF },
    )?;
    // No preopened directories: EBADF ends a libc's walk over them.
    linker.func_wrap(
        MODULE,
        "fd_prestat_get",
        |_c: Call<'_>, _fd: i32, _ret: i32| -> i32 { BADF },
    )?;
    linker.func_wrap(
        MODULE,
        "fd_prestat_dir_name",
        |_c: Call<'_>, _fd: i32, _ptr: i32, _len: i32| -> i32 { BADF },
    )?;
    let empty_sizes = |mut c: Call<'_>, count: i32, size: i32| -> i32 {
        match guest::write_u32(&mut c, count, 0).and_then(|()| guest::write_u32(&mut c, size, 0)) {
            Ok(()) => SUCCESS,
            Err(_) => FAULT,
        }
    };
    linker.func_wrap(MODULE, "environ_sizes_get", empty_sizes)?;
    linker.func_wrap(MODULE, "args_sizes_get", empty_sizes)?;
    linker.func_wrap(
        MODULE,
        "environ_get",
        |_c: Call<'_>, _a: i32, _b: i32| -> i32 { SUCCESS },
    )?;
    linker.func_wrap(
        MODULE,
        "args_get",
        |_c: Call<'_>, _a: i32, _b: i32| -> i32 { SUCCESS },
    )?;
    linker.func_wrap(
        MODULE,
        "clock_time_get",
        |mut c: Call<'_>, id: i32, _precision: i64, ret: i32| -> i32 {
            let now = match id {
                0 => SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)),
                1 => monotonic_ns(),
                _ => return INVAL,
            };
            guest::write_u64(&mut c, ret, now).map_or(FAULT, |()| SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "clock_res_get",
        |mut c: Call<'_>, id: i32, ret: i32| -> i32 {
            if !(0..=1).contains(&id) {
                return INVAL;
            }
            guest::write_u64(&mut c, ret, 1_000).map_or(FAULT, |()| SUCCESS)
        },
    )?;
    linker.func_wrap(
        MODULE,
        "random_get",
        |mut c: Call<'_>, ptr: i32, len: i32| -> i32 {
            let len = len as u32 as usize;
            if len > guest::MAX_READ {
                return INVAL;
            }
            let mut bytes = vec![0u8; len];
            for chunk in bytes.chunks_mut(8) {
                let r = crate::random::fast_u64().to_le_bytes();
                chunk.copy_from_slice(&r[..chunk.len()]);
            }
            guest::write(&mut c, ptr, &bytes).map_or(FAULT, |()| SUCCESS)
        },
    )?;
    linker.func_wrap(MODULE, "sched_yield", |_c: Call<'_>| -> i32 { SUCCESS })?;
    linker.func_wrap(
        MODULE,
        "poll_oneoff",
        |_c: Call<'_>, _a: i32, _b: i32, _n: i32, _ret: i32| -> i32 { NOTSUP },
    )?;
    linker.func_wrap(
        MODULE,
        "proc_exit",
        |_c: Call<'_>, code: i32| -> wasmtime::Result<()> {
            wasmtime::bail!("the filter exited (proc_exit({code}))")
        },
    )?;
    Ok(())
}
