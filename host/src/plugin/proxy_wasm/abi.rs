//! The proxy-wasm v0.2.1 host functions (module `env`) Weft provides: logging, time, tick
//! timers, header maps, buffers (the plugin configuration), local replies, properties,
//! shared data with compare-and-swap, and metrics.
//!
//! What is not linked here (HTTP and gRPC callouts, shared queues, foreign functions) refuses
//! a module that imports it when it is loaded, naming the import (see [`super::unsupported`]).
//! The Rust SDK panics on a status it does not expect, so each function answers only the
//! statuses the ABI documents for it; a filter's misuse that has no status (an invalid header
//! name) fails the call as a passed host bound instead.

use super::ctx::{Headers, Phase, ProxyCtx};
use super::guest::{self, BadArgument, status};
use super::properties::{self, Property};
use crate::plugin::bindings::weft::filter::types::LocalResponse;
use crate::plugin::host_impl::{MAX_HEADERS, check_reply, set_header};
use crate::plugin::metrics::{Kind, MetricDef};
use crate::plugin::state::StateWriteError;
use http::{Method, StatusCode};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use wasmtime::{Caller, Linker};

type Call<'a> = Caller<'a, ProxyCtx>;

const REQUEST_HEADERS: i32 = 0;
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

/// Whether buffer type `buffer` is the body this callback was given.
fn is_body(ctx: &ProxyCtx, buffer: i32) -> bool {
    matches!(
        (buffer, ctx.phase),
        (REQUEST_BODY, Phase::RequestBody) | (RESPONSE_BODY, Phase::ResponseBody)
    )
}

/// The most bytes of one log line kept.
const MAX_LOG_BYTES: usize = 4096;

/// The most bytes a filter may make a body by rewriting it.
const MAX_BODY: usize = 16 << 20;

/// The shortest tick period honoured: a filter asking for less gets this.
pub(crate) const MIN_TICK: Duration = Duration::from_millis(10);

fn bad(_: BadArgument) -> i32 {
    status::BAD_ARGUMENT
}

/// Which header map a map type names at this point of the call.
enum MapAt {
    /// The request head being filtered.
    RequestLive,
    /// What the stream kept of its request (read-only: it has gone upstream).
    RequestKept,
    /// The response head being filtered.
    ResponseLive,
    /// What the stream kept of its response.
    ResponseKept,
    /// A map with nothing in it here (trailers, or a head outside its call).
    Empty,
    /// The headers or trailers of the callout answer being delivered.
    Answer(bool),
    /// The response trailers being filtered.
    TrailersLive,
}

fn map_at(ctx: &ProxyCtx, map: i32) -> MapAt {
    if ctx.answer.is_some() && (map == CALL_RESPONSE_HEADERS || map == CALL_RESPONSE_TRAILERS) {
        return MapAt::Answer(map == CALL_RESPONSE_TRAILERS);
    }
    match (map, ctx.phase) {
        (REQUEST_HEADERS, Phase::RequestHeaders) => MapAt::RequestLive,
        (
            REQUEST_HEADERS,
            Phase::RequestBody
            | Phase::ResponseHeaders
            | Phase::ResponseBody
            | Phase::ResponseTrailers
            | Phase::Log,
        ) => MapAt::RequestKept,
        (RESPONSE_HEADERS, Phase::ResponseHeaders) => MapAt::ResponseLive,
        (RESPONSE_HEADERS, Phase::ResponseBody | Phase::ResponseTrailers | Phase::Log) => {
            MapAt::ResponseKept
        }
        (RESPONSE_TRAILERS, Phase::ResponseTrailers) => MapAt::TrailersLive,
        _ => MapAt::Empty,
    }
}

/// The map's pairs as the ABI lists them: pseudo-headers first, as Envoy does.
fn pairs(ctx: &ProxyCtx, map: i32) -> Vec<(Vec<u8>, Vec<u8>)> {
    let regular = |h: &dyn Headers| {
        h.each()
            .into_iter()
            .map(|(n, v)| (n.as_bytes().to_vec(), v.to_vec()))
            .collect::<Vec<_>>()
    };
    let request = |method: &str, path: &str, authority: &str, h: &dyn Headers| {
        let mut out = vec![
            (b":authority".to_vec(), authority.as_bytes().to_vec()),
            (b":path".to_vec(), path.as_bytes().to_vec()),
            (b":method".to_vec(), method.as_bytes().to_vec()),
            (b":scheme".to_vec(), b"http".to_vec()),
        ];
        out.extend(regular(h));
        out
    };
    let response = |status: u16, h: &dyn Headers| {
        let mut out = vec![(b":status".to_vec(), status.to_string().into_bytes())];
        out.extend(regular(h));
        out
    };
    match map_at(ctx, map) {
        MapAt::RequestLive => request(
            ctx.request.method.as_str(),
            &ctx.request.path,
            &ctx.request.authority,
            &ctx.request.headers,
        ),
        MapAt::RequestKept => request(
            &ctx.kept.method,
            &ctx.kept.path,
            &ctx.kept.authority,
            &ctx.kept.request_headers,
        ),
        MapAt::ResponseLive => response(ctx.response.status.as_u16(), &ctx.response.headers),
        MapAt::ResponseKept => response(ctx.kept.status, &ctx.kept.response_headers),
        MapAt::Answer(trailers) => answer_pairs(ctx, trailers).to_vec(),
        MapAt::TrailersLive => regular(&ctx.trailers),
        MapAt::Empty => Vec::new(),
    }
}

fn answer_pairs(ctx: &ProxyCtx, trailers: bool) -> Vec<(Vec<u8>, Vec<u8>)> {
    let Some(a) = &ctx.answer else {
        return Vec::new();
    };
    let list = if trailers { &a.trailers } else { &a.headers };
    list.iter()
        .map(|(k, v)| (k.as_bytes().to_vec(), v.clone()))
        .collect()
}

/// One value of the map (the first, for a repeated header), pseudo-headers included.
fn value(ctx: &ProxyCtx, map: i32, key: &str) -> Option<Vec<u8>> {
    let first = |h: &dyn Headers| h.first(key).map(<[u8]>::to_vec);
    let owned = |s: &str| Some(s.as_bytes().to_vec());
    match (map_at(ctx, map), key) {
        (MapAt::RequestLive, ":path") => owned(&ctx.request.path),
        (MapAt::RequestLive, ":authority") => owned(&ctx.request.authority),
        (MapAt::RequestLive, ":method") => owned(ctx.request.method.as_str()),
        (MapAt::RequestKept, ":path") => owned(&ctx.kept.path),
        (MapAt::RequestKept, ":authority") => owned(&ctx.kept.authority),
        (MapAt::RequestKept, ":method") => owned(&ctx.kept.method),
        (MapAt::RequestLive | MapAt::RequestKept, ":scheme") => owned("http"),
        (MapAt::ResponseLive, ":status") => owned(ctx.response.status.as_str()),
        (MapAt::ResponseKept, ":status") => Some(ctx.kept.status.to_string().into_bytes()),
        (MapAt::RequestLive, _) => first(&ctx.request.headers),
        (MapAt::RequestKept, _) => first(&ctx.kept.request_headers),
        (MapAt::ResponseLive, _) => first(&ctx.response.headers),
        (MapAt::ResponseKept, _) => first(&ctx.kept.response_headers),
        (MapAt::TrailersLive, _) => first(&ctx.trailers),
        (MapAt::Answer(trailers), _) => answer_pairs(ctx, trailers)
            .into_iter()
            .find(|(k, _)| k == key.as_bytes())
            .map(|(_, v)| v),
        (MapAt::Empty, _) => None,
    }
}

/// How a header edit changes a map.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Edit {
    Add,
    Replace,
    Remove,
}

/// Applies an edit to the live head of `map`; edits of a head that has already gone on
/// change nothing (as in Envoy). A filter's invalid edit fails the call.
fn edit(ctx: &mut ProxyCtx, map: i32, key: &str, value: &[u8], how: Edit) {
    let refuse = |ctx: &mut ProxyCtx, why: String| {
        ctx.violation.get_or_insert(why);
    };
    let text = || String::from_utf8_lossy(value).into_owned();
    match (map_at(ctx, map), key) {
        (MapAt::RequestLive, ":path") if how != Edit::Remove => {
            let path = text();
            match http::uri::PathAndQuery::from_maybe_shared(path.clone()) {
                Ok(p) if p.as_str().starts_with('/') => ctx.request.path = path,
                _ => refuse(ctx, format!("invalid :path {:?}", clip(&path))),
            }
        }
        (MapAt::RequestLive, ":authority") if how != Edit::Remove => {
            let authority = text();
            match http::uri::Authority::from_maybe_shared(authority.clone()) {
                Ok(a) if !a.as_str().contains('@') => ctx.request.authority = authority,
                _ => refuse(ctx, format!("invalid :authority {:?}", clip(&authority))),
            }
        }
        (MapAt::RequestLive, ":method") if how != Edit::Remove => match Method::from_bytes(value) {
            Ok(m) => ctx.request.method = m,
            Err(_) => refuse(ctx, format!("invalid :method {:?}", clip(&text()))),
        },
        (MapAt::ResponseLive, ":status") if how != Edit::Remove => {
            match std::str::from_utf8(value)
                .ok()
                .and_then(|s| s.parse::<u16>().ok())
            {
                Some(code) if (100..=999).contains(&code) => {
                    ctx.response.status = StatusCode::from_u16(code).unwrap_or(ctx.response.status);
                }
                _ => refuse(ctx, format!("invalid :status {:?}", clip(&text()))),
            }
        }
        (MapAt::RequestLive | MapAt::ResponseLive, k) if k.starts_with(':') => {
            refuse(
                ctx,
                format!("the pseudo-header {k} cannot be removed or changed so"),
            );
        }
        (MapAt::RequestLive | MapAt::ResponseLive | MapAt::TrailersLive, _) => {
            let headers = match map_at(ctx, map) {
                MapAt::RequestLive => &mut ctx.request.headers,
                MapAt::TrailersLive => &mut ctx.trailers,
                _ => &mut ctx.response.headers,
            };
            if how == Edit::Remove {
                headers.remove(key);
                return;
            }
            let mut violation = None;
            if let Err(why) = set_header(headers, key, value, how == Edit::Add, &mut violation) {
                refuse(ctx, violation.unwrap_or(why));
            }
        }
        (MapAt::RequestKept | MapAt::ResponseKept, _) => {}
        (MapAt::Answer(_), _) => refuse(ctx, "a callout's answer cannot be edited".into()),
        (MapAt::Empty, _) => refuse(
            ctx,
            format!(
                "map type {map} is not available here (request trailers are not given to proxy-wasm filters yet)"
            ),
        ),
    }
}

fn clip(text: &str) -> &str {
    let mut cut = text.len().min(64);
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    &text[..cut]
}

fn log(ctx: &mut ProxyCtx, level: i32, mut message: String) {
    if message.len() > MAX_LOG_BYTES {
        let mut cut = MAX_LOG_BYTES;
        while !message.is_char_boundary(cut) {
            cut -= 1;
        }
        message.truncate(cut);
    }
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

/// A local reply from `proxy_send_local_response`'s arguments. A gRPC status (≥ 0) makes it
/// a trailers-only gRPC answer, the message carried in `grpc-message`, as Envoy sends it.
fn local_reply(
    status: u32,
    body: Vec<u8>,
    headers: Vec<(Vec<u8>, Vec<u8>)>,
    grpc: i32,
) -> LocalResponse {
    let mut headers: Vec<(String, Vec<u8>)> = headers
        .into_iter()
        .map(|(k, v)| (String::from_utf8_lossy(&k).to_ascii_lowercase(), v))
        .collect();
    let status = u16::try_from(status).unwrap_or(500);
    if grpc >= 0 {
        headers.push(("content-type".into(), b"application/grpc".to_vec()));
        headers.push(("grpc-status".into(), grpc.to_string().into_bytes()));
        if !body.is_empty() {
            headers.push(("grpc-message".into(), body));
        }
        return LocalResponse {
            status: 200,
            headers,
            body: Vec::new(),
        };
    }
    LocalResponse {
        status,
        headers,
        body,
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
    add_maps(linker)?;
    add_buffers(linker)?;
    add_stream(linker)?;
    add_properties(linker)?;
    add_shared_data(linker)?;
    add_metrics(linker)?;
    add_queues(linker)?;
    Ok(())
}

fn add_queues(linker: &mut Linker<ProxyCtx>) -> wasmtime::Result<()> {
    use super::queues::QueueError;
    linker.func_wrap(
        "env",
        "proxy_register_shared_queue",
        |mut c: Call<'_>, ptr: i32, len: i32, ret: i32| -> i32 {
            let name = match guest::read_text(&mut c, ptr, len) {
                Ok(n) => n,
                Err(e) => return bad(e),
            };
            let ctx = c.data_mut();
            let owner = ctx.queue_owner.clone();
            match ctx.services.queues.register("", &name, owner.clone()) {
                Ok(id) => {
                    if let Some(w) = owner.waker.upgrade() {
                        w.note_registered();
                    }
                    guest::write_u32(&mut c, ret, id).map_or_else(bad, |()| status::OK)
                }
                Err(_) => {
                    ctx.violation
                        .get_or_insert("shared queues: the sidecar's bound is reached".into());
                    status::OK
                }
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_resolve_shared_queue",
        |mut c: Call<'_>, vm_ptr: i32, vm_len: i32, ptr: i32, len: i32, ret: i32| -> i32 {
            let (Ok(vm_id), Ok(name)) = (
                guest::read_text(&mut c, vm_ptr, vm_len),
                guest::read_text(&mut c, ptr, len),
            ) else {
                return status::BAD_ARGUMENT;
            };
            match c.data().services.queues.resolve(&vm_id, &name) {
                Some(id) => guest::write_u32(&mut c, ret, id).map_or_else(bad, |()| status::OK),
                None => status::NOT_FOUND,
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_enqueue_shared_queue",
        |mut c: Call<'_>, id: i32, ptr: i32, len: i32| -> i32 {
            let item = match guest::read(&mut c, ptr, len) {
                Ok(i) => i,
                Err(e) => return bad(e),
            };
            let ctx = c.data_mut();
            match ctx.services.queues.enqueue(id as u32, item) {
                Ok(()) => status::OK,
                Err(QueueError::NotFound) => status::NOT_FOUND,
                Err(QueueError::Full) => {
                    ctx.violation
                        .get_or_insert(format!("shared queue {id} is full"));
                    status::OK
                }
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_dequeue_shared_queue",
        |mut c: Call<'_>, id: i32, ret_ptr: i32, ret_len: i32| -> wasmtime::Result<i32> {
            match c.data().services.queues.dequeue(id as u32) {
                Ok(Some(item)) => guest::give(&mut c, &item, ret_ptr, ret_len),
                Ok(None) => Ok(status::EMPTY),
                Err(_) => Ok(status::NOT_FOUND),
            }
        },
    )?;
    Ok(())
}

fn add_maps(linker: &mut Linker<ProxyCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Call<'_>, map: i32, ret_ptr: i32, ret_len: i32| -> wasmtime::Result<i32> {
            let pairs = pairs(c.data(), map);
            let bytes =
                guest::serialize_pairs(pairs.iter().map(|(k, v)| (k.as_slice(), v.as_slice())));
            guest::give(&mut c, &bytes, ret_ptr, ret_len)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: Call<'_>, map: i32, ret: i32| -> i32 {
            let size: usize = pairs(c.data(), map)
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum();
            guest::write_u32(&mut c, ret, size as u32).map_or_else(bad, |()| status::OK)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Call<'_>,
         map: i32,
         kptr: i32,
         klen: i32,
         ret_ptr: i32,
         ret_len: i32|
         -> wasmtime::Result<i32> {
            let key = match guest::read_text(&mut c, kptr, klen) {
                Ok(k) => k.to_ascii_lowercase(),
                Err(e) => return Ok(bad(e)),
            };
            match value(c.data(), map, &key) {
                Some(v) => guest::give(&mut c, &v, ret_ptr, ret_len),
                None => Ok(status::NOT_FOUND),
            }
        },
    )?;
    let edit_fn = |how: Edit| {
        move |mut c: Call<'_>, map: i32, kptr: i32, klen: i32, vptr: i32, vlen: i32| -> i32 {
            let key = match guest::read_text(&mut c, kptr, klen) {
                Ok(k) => k.to_ascii_lowercase(),
                Err(e) => return bad(e),
            };
            let value = match guest::read(&mut c, vptr, vlen) {
                Ok(v) => v,
                Err(e) => return bad(e),
            };
            edit(c.data_mut(), map, &key, &value, how);
            status::OK
        }
    };
    linker.func_wrap("env", "proxy_add_header_map_value", edit_fn(Edit::Add))?;
    linker.func_wrap(
        "env",
        "proxy_replace_header_map_value",
        edit_fn(Edit::Replace),
    )?;
    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Call<'_>, map: i32, kptr: i32, klen: i32| -> i32 {
            match guest::read_text(&mut c, kptr, klen) {
                Ok(k) => {
                    edit(
                        c.data_mut(),
                        map,
                        &k.to_ascii_lowercase(),
                        &[],
                        Edit::Remove,
                    );
                    status::OK
                }
                Err(e) => bad(e),
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Call<'_>, map: i32, ptr: i32, len: i32| -> i32 {
            let Some(new) = guest::read(&mut c, ptr, len)
                .ok()
                .and_then(|b| guest::deserialize_pairs(&b))
            else {
                return status::BAD_ARGUMENT;
            };
            if new.len() > MAX_HEADERS {
                c.data_mut()
                    .violation
                    .get_or_insert(format!("more than {MAX_HEADERS} headers"));
                return status::OK;
            }
            let ctx = c.data_mut();
            // The regular headers are replaced whole; pseudo-headers given are set.
            match map_at(ctx, map) {
                MapAt::RequestLive => ctx.request.headers.clear(),
                MapAt::ResponseLive => ctx.response.headers.clear(),
                MapAt::TrailersLive => ctx.trailers.clear(),
                _ => {}
            }
            for (k, v) in new {
                let key = String::from_utf8_lossy(&k).to_ascii_lowercase();
                edit(ctx, map, &key, &v, Edit::Add);
            }
            status::OK
        },
    )?;
    Ok(())
}

fn add_buffers(linker: &mut Linker<ProxyCtx>) -> wasmtime::Result<()> {
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

fn add_stream(linker: &mut Linker<ProxyCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Call<'_>,
         code: i32,
         _details_ptr: i32,
         _details_len: i32,
         body_ptr: i32,
         body_len: i32,
         headers_ptr: i32,
         headers_len: i32,
         grpc: i32|
         -> i32 {
            let body = match guest::read(&mut c, body_ptr, body_len) {
                Ok(b) => b,
                Err(e) => return bad(e),
            };
            let Some(headers) = guest::read(&mut c, headers_ptr, headers_len)
                .ok()
                .and_then(|b| guest::deserialize_pairs(&b))
            else {
                return status::BAD_ARGUMENT;
            };
            let ctx = c.data_mut();
            if !matches!(
                ctx.phase,
                Phase::RequestHeaders
                    | Phase::ResponseHeaders
                    | Phase::RequestBody
                    | Phase::ResponseBody
            ) {
                ctx.violation.get_or_insert(
                    "a local response outside a request or response headers callback: Weft does not hold paused streams yet".into(),
                );
                return status::OK;
            }
            let reply = local_reply(code as u32, body, headers, grpc);
            match check_reply(&reply) {
                Ok(()) => ctx.reply = Some(reply),
                Err(why) => {
                    ctx.violation.get_or_insert(why);
                }
            }
            status::OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: Call<'_>, _stream: i32| -> i32 {
            let ctx = c.data_mut();
            if matches!(ctx.phase, Phase::RequestHeaders | Phase::ResponseHeaders) {
                ctx.resumed = true;
            }
            status::OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_close_stream",
        |mut c: Call<'_>, _stream: i32| -> i32 {
            c.data_mut().violation.get_or_insert(
                "proxy_close_stream: Weft does not reset streams for proxy-wasm filters yet".into(),
            );
            status::OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |_c: Call<'_>, _context: i32| -> i32 {
            // Each callback runs in its own context already, and no stream stays paused
            // between callbacks for a root context to act on.
            status::OK
        },
    )?;
    linker.func_wrap("env", "proxy_done", |_c: Call<'_>| -> i32 { status::OK })?;
    linker.func_wrap(
        "env",
        "proxy_http_call",
        |mut c: Call<'_>,
         up_ptr: i32,
         up_len: i32,
         h_ptr: i32,
         h_len: i32,
         b_ptr: i32,
         b_len: i32,
         _t_ptr: i32,
         _t_len: i32,
         timeout_ms: i32,
         ret_token: i32|
         -> i32 {
            let upstream = match guest::read_text(&mut c, up_ptr, up_len) {
                Ok(u) => u,
                Err(e) => return bad(e),
            };
            let Some(headers) = guest::read(&mut c, h_ptr, h_len)
                .ok()
                .and_then(|b| guest::deserialize_pairs(&b))
            else {
                return status::BAD_ARGUMENT;
            };
            let body = match guest::read(&mut c, b_ptr, b_len) {
                Ok(b) => b,
                Err(e) => return bad(e),
            };
            let ctx = c.data_mut();
            if ctx.phase != Phase::RequestHeaders {
                ctx.violation.get_or_insert(
                    "dispatch_http_call outside a request headers callback (or a callout's answer): not supported yet".into(),
                );
                return status::INTERNAL_FAILURE;
            }
            if ctx.callouts.len() >= MAX_CALLOUTS {
                ctx.violation
                    .get_or_insert(format!("more than {MAX_CALLOUTS} callouts from one callback"));
                return status::INTERNAL_FAILURE;
            }
            let token = ctx.next_token;
            ctx.next_token = ctx.next_token.checked_add(1).unwrap_or(1);
            let timeout = Duration::from_millis(u64::from(timeout_ms as u32)).min(MAX_CALLOUT_TIMEOUT);
            ctx.callouts.push(crate::plugin::types::Callout {
                token,
                upstream,
                headers: headers
                    .into_iter()
                    .map(|(k, v)| (String::from_utf8_lossy(&k).to_ascii_lowercase(), v))
                    .collect(),
                body: body.into(),
                timeout: if timeout.is_zero() { MAX_CALLOUT_TIMEOUT } else { timeout },
            });
            guest::write_u32(&mut c, ret_token, token).map_or_else(bad, |()| status::OK)
        },
    )?;
    Ok(())
}

fn add_properties(linker: &mut Linker<ProxyCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Call<'_>, ptr: i32, len: i32, ret_ptr: i32, ret_len: i32| -> wasmtime::Result<i32> {
            let path = match guest::read_text(&mut c, ptr, len) {
                Ok(p) => p,
                Err(e) => return Ok(bad(e)),
            };
            let segments: Vec<&str> = path.trim_end_matches('\0').split('\0').collect();
            let dotted = segments.join(".");
            if let Some((_, v)) = c.data().kept.properties.iter().find(|(k, _)| *k == dotted) {
                let v = v.clone();
                return guest::give(&mut c, &v, ret_ptr, ret_len);
            }
            match properties::lookup(c.data(), &segments) {
                Property::Found(v) => guest::give(&mut c, &v, ret_ptr, ret_len),
                Property::Absent => Ok(status::NOT_FOUND),
                Property::Unsupported => {
                    let ctx = c.data_mut();
                    if ctx.absent_logged.len() < 64 && ctx.absent_logged.insert(dotted.clone()) {
                        tracing::info!(
                            plugin = %ctx.plugin,
                            property = %dotted,
                            "a proxy-wasm filter asked for a property Weft does not provide; it gets NotFound"
                        );
                    }
                    Ok(status::NOT_FOUND)
                }
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: Call<'_>, ptr: i32, len: i32, vptr: i32, vlen: i32| -> i32 {
            let (Ok(path), Ok(value)) = (
                guest::read_text(&mut c, ptr, len),
                guest::read(&mut c, vptr, vlen),
            ) else {
                return status::BAD_ARGUMENT;
            };
            let dotted = path.trim_end_matches('\0').replace('\0', ".");
            let kept = &mut c.data_mut().kept.properties;
            let at = kept.iter().position(|(k, _)| *k == dotted);
            match at {
                Some(i) => kept[i].1 = value,
                None if kept.len() < 64 => kept.push((dotted, value)),
                None => {
                    c.data_mut()
                        .violation
                        .get_or_insert("more than 64 properties set on one stream".into());
                }
            }
            status::OK
        },
    )?;
    Ok(())
}

fn add_shared_data(linker: &mut Linker<ProxyCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Call<'_>,
         kptr: i32,
         klen: i32,
         ret_ptr: i32,
         ret_len: i32,
         ret_cas: i32|
         -> wasmtime::Result<i32> {
            let key = match guest::read_text(&mut c, kptr, klen) {
                Ok(k) => k,
                Err(e) => return Ok(bad(e)),
            };
            let ctx = c.data();
            let Some((value, version)) = ctx.services.state.get(ctx.key, &key) else {
                return Ok(status::NOT_FOUND);
            };
            // The ABI's CAS is 32 bits: versions compare modulo 2^32, never 0.
            let cas = (version as u32).max(1);
            if guest::write_u32(&mut c, ret_cas, cas).is_err() {
                return Ok(status::BAD_ARGUMENT);
            }
            guest::give(&mut c, &value, ret_ptr, ret_len)
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Call<'_>, kptr: i32, klen: i32, vptr: i32, vlen: i32, cas: i32| -> i32 {
            let (Ok(key), Ok(value)) = (
                guest::read_text(&mut c, kptr, klen),
                guest::read(&mut c, vptr, vlen),
            ) else {
                return status::BAD_ARGUMENT;
            };
            let ctx = c.data_mut();
            let cas = cas as u32;
            let expected = if cas == 0 {
                None
            } else {
                // The full version whose low 32 bits the filter holds: the current one, if
                // they match; otherwise a version that cannot match.
                match ctx.services.state.get(ctx.key, &key) {
                    Some((_, v)) if (v as u32).max(1) == cas => Some(v),
                    Some(_) => return status::CAS_MISMATCH,
                    None => return status::CAS_MISMATCH,
                }
            };
            match ctx.services.state.set(ctx.key, &key, &value, expected, 0) {
                Ok(_) => status::OK,
                Err(StateWriteError::Conflict(_)) => status::CAS_MISMATCH,
                Err(StateWriteError::TooLarge) => {
                    ctx.violation.get_or_insert(format!(
                        "shared data {:?}: value over the bound",
                        clip(&key)
                    ));
                    status::OK
                }
                Err(StateWriteError::Full) => {
                    ctx.violation
                        .get_or_insert("shared data: the key bound is reached".into());
                    status::OK
                }
            }
        },
    )?;
    Ok(())
}

/// A proxy-wasm metric name as a Prometheus name: characters outside `[a-zA-Z0-9_:]` become
/// `_` (Envoy's stat names use dots), and a leading digit gets a `_` before it.
pub(crate) fn prometheus_name(name: &str) -> String {
    let mut out: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.starts_with(|c: char| c.is_ascii_digit()) || out.is_empty() {
        out.insert(0, '_');
    }
    out
}

fn add_metrics(linker: &mut Linker<ProxyCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Call<'_>, kind: i32, ptr: i32, len: i32, ret: i32| -> i32 {
            let name = match guest::read_text(&mut c, ptr, len) {
                Ok(n) => prometheus_name(&n),
                Err(e) => return bad(e),
            };
            let kind = match kind {
                0 => Kind::Counter,
                1 => Kind::Gauge,
                2 => Kind::Histogram,
                _ => return status::BAD_ARGUMENT,
            };
            let ctx = c.data_mut();
            let def = MetricDef {
                kind,
                name: &name,
                help: "",
                labels: &[],
                buckets: &[],
            };
            let metrics = &ctx.services.metrics;
            let series = metrics
                .define(ctx.key, &ctx.plugin, def)
                .and_then(|m| metrics.series(ctx.key, m, Vec::new()));
            match series {
                Ok(id) => guest::write_u32(&mut c, ret, id).map_or_else(bad, |()| status::OK),
                Err(why) => {
                    tracing::warn!(plugin = %ctx.plugin, "proxy_define_metric {name}: {why}");
                    ctx.last_complaint = Some(format!("metric {name}: {why}"));
                    status::BAD_ARGUMENT
                }
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: Call<'_>, id: i32, offset: i64| -> i32 {
            let ctx = c.data();
            if ctx.services.metrics.add(ctx.key, id as u32, offset as f64) {
                status::OK
            } else {
                status::NOT_FOUND
            }
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |c: Call<'_>, id: i32, value: i64| -> i32 {
            let ctx = c.data();
            let value = value as u64 as f64;
            if !ctx.services.metrics.known(ctx.key, id as u32) {
                return status::NOT_FOUND;
            }
            ctx.services
                .metrics
                .record(ctx.key, std::iter::once((id as u32, value)));
            status::OK
        },
    )?;
    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: Call<'_>, id: i32, ret: i32| -> i32 {
            let ctx = c.data();
            match ctx.services.metrics.value(ctx.key, id as u32) {
                Some(v) => guest::write_u64(&mut c, ret, v.max(0.0) as u64)
                    .map_or_else(bad, |()| status::OK),
                None => status::NOT_FOUND,
            }
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envoy_stat_names_become_prometheus_names() {
        assert_eq!(prometheus_name("my_filter.requests"), "my_filter_requests");
        assert_eq!(prometheus_name("1xx-count"), "_1xx_count");
        assert_eq!(prometheus_name(""), "_");
    }

    #[test]
    fn a_grpc_local_reply_is_trailers_only_with_its_message() {
        let r = local_reply(403, b"denied".to_vec(), Vec::new(), 7);
        assert_eq!(r.status, 200);
        assert!(r.body.is_empty());
        assert!(r.headers.contains(&("grpc-status".into(), b"7".to_vec())));
        assert!(
            r.headers
                .contains(&("grpc-message".into(), b"denied".to_vec()))
        );
        let plain = local_reply(
            403,
            b"no".to_vec(),
            vec![(b"X-A".to_vec(), b"1".to_vec())],
            -1,
        );
        assert_eq!(plain.status, 403);
        assert_eq!(plain.headers, vec![("x-a".to_string(), b"1".to_vec())]);
    }
}
