//! Buffers: the plugin configuration, the body a body callback was given, and a callout's
//! answer body.

use super::{
    CALL_RESPONSE_BODY, Call, MAX_BODY, PLUGIN_CONFIGURATION, REQUEST_BODY, RESPONSE_BODY, bad,
};
use crate::plugin::proxy_wasm::ctx::{Phase, ProxyCtx};
use crate::plugin::proxy_wasm::guest::{self, status};
use wasmtime::Linker;

/// Whether buffer type `buffer` is the body this callback was given.
fn is_body(ctx: &ProxyCtx, buffer: i32) -> bool {
    matches!(
        (buffer, ctx.phase),
        (REQUEST_BODY, Phase::RequestBody) | (RESPONSE_BODY, Phase::ResponseBody)
    )
}

pub(super) fn add(linker: &mut Linker<ProxyCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Call<'_>,
         buffer: i32,
         start: i32,
         max: i32,
         ret_ptr: i32,
         ret_len: i32|
         -> wasmtime::Result<i32> {
            let bytes: Vec<u8> = if is_body(c.data(), buffer) {
                let body = &c.data().body;
                let start = (start as u32 as usize).min(body.len());
                let end = start.saturating_add(max as u32 as usize).min(body.len());
                body[start..end].to_vec()
            } else if buffer == CALL_RESPONSE_BODY && c.data().answer.is_some() {
                let body = c
                    .data()
                    .answer
                    .as_ref()
                    .map(|a| a.body.clone())
                    .unwrap_or_default();
                let start = (start as u32 as usize).min(body.len());
                let end = start.saturating_add(max as u32 as usize).min(body.len());
                body[start..end].to_vec()
            } else if buffer == PLUGIN_CONFIGURATION {
                let config = &c.data().config;
                let start = (start as u32 as usize).min(config.len());
                let end = start.saturating_add(max as u32 as usize).min(config.len());
                config[start..end].to_vec()
            } else {
                // The VM configuration, and bodies outside their callbacks: none.
                return Ok(status::NOT_FOUND);
            };
            if bytes.is_empty() {
                return Ok(status::NOT_FOUND);
            }
            guest::give(&mut c, &bytes, ret_ptr, ret_len)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_buffer_status",
        |mut c: Call<'_>, buffer: i32, ret_len: i32, ret_flags: i32| -> i32 {
            let len = if is_body(c.data(), buffer) {
                c.data().body.len() as u32
            } else if buffer == CALL_RESPONSE_BODY && c.data().answer.is_some() {
                c.data().answer.as_ref().map_or(0, |a| a.body.len()) as u32
            } else if buffer == PLUGIN_CONFIGURATION {
                c.data().config.len() as u32
            } else {
                return status::NOT_FOUND;
            };
            guest::write_u32(&mut c, ret_len, len)
                .and_then(|()| guest::write_u32(&mut c, ret_flags, 0))
                .map_or_else(bad, |()| status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Call<'_>, buffer: i32, start: i32, size: i32, ptr: i32, len: i32| -> i32 {
            if !is_body(c.data(), buffer) {
                c.data_mut().violation.get_or_insert(format!(
                    "buffer type {buffer} cannot be set here: only the body a body callback was given"
                ));
                return status::OK;
            }
            let data = match guest::read(&mut c, ptr, len) {
                Ok(d) => d,
                Err(e) => return bad(e),
            };
            // Envoy's semantics: `size` bytes from `start` are replaced by the data; start 0
            // and size 0 prepends, start at the end appends.
            let body = &mut c.data_mut().body;
            let start = (start as u32 as usize).min(body.len());
            let end = start.saturating_add(size as u32 as usize).min(body.len());
            if body.len() - (end - start) + data.len() > MAX_BODY {
                c.data_mut()
                    .violation
                    .get_or_insert(format!("a body over {MAX_BODY} bytes"));
                return status::OK;
            }
            body.splice(start..end, data);
            status::OK
        },
    )?;
    Ok(())
}
