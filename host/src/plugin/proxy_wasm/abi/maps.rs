//! Header maps: the request and response heads (pseudo-headers included), what a stream kept
//! of them, the request and response trailers, and a callout's answer.

use super::{
    CALL_RESPONSE_HEADERS, CALL_RESPONSE_TRAILERS, Call, REQUEST_HEADERS, REQUEST_TRAILERS,
    RESPONSE_HEADERS, RESPONSE_TRAILERS, bad, clip,
};
use crate::plugin::host_impl::{MAX_HEADERS, set_authority, set_header, set_path};
use crate::plugin::proxy_wasm::ctx::{Headers, Phase, ProxyCtx};
use crate::plugin::proxy_wasm::guest::{self, status};
use http::{Method, StatusCode};
use wasmtime::Linker;

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
    /// A map with nothing in it here (trailers outside their callback, or a head outside
    /// its call).
    Empty,
    /// The headers or trailers of the callout answer being delivered.
    Answer(bool),
    /// The request or response trailers being filtered.
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
            | Phase::RequestTrailers
            | Phase::ResponseHeaders
            | Phase::ResponseBody
            | Phase::ResponseTrailers
            | Phase::Log,
        ) => MapAt::RequestKept,
        (RESPONSE_HEADERS, Phase::ResponseHeaders) => MapAt::ResponseLive,
        (RESPONSE_HEADERS, Phase::ResponseBody | Phase::ResponseTrailers | Phase::Log) => {
            MapAt::ResponseKept
        }
        (RESPONSE_TRAILERS, Phase::ResponseTrailers)
        | (REQUEST_TRAILERS, Phase::RequestTrailers) => MapAt::TrailersLive,
        _ => MapAt::Empty,
    }
}

/// Header names and values, borrowed.
type Pairs<'a> = Vec<(&'a [u8], &'a [u8])>;

/// The map's pairs as the ABI lists them (pseudo-headers first, as Envoy does), borrowed
/// from the call: serializing them for the guest is their only copy.
fn pairs(ctx: &ProxyCtx, map: i32) -> Pairs<'_> {
    let (pseudo, regular): (Pairs<'_>, Vec<(&str, &[u8])>) = match map_at(ctx, map) {
        MapAt::RequestLive => (
            vec![
                (&b":authority"[..], ctx.request.authority.as_bytes()),
                (&b":path"[..], ctx.request.path.as_bytes()),
                (&b":method"[..], ctx.request.method.as_str().as_bytes()),
                (&b":scheme"[..], &b"http"[..]),
            ],
            ctx.request.headers.each(),
        ),
        MapAt::RequestKept => (
            vec![
                (&b":authority"[..], ctx.kept.authority.as_bytes()),
                (&b":path"[..], ctx.kept.path.as_bytes()),
                (&b":method"[..], ctx.kept.method.as_bytes()),
                (&b":scheme"[..], &b"http"[..]),
            ],
            ctx.kept.request_headers.each(),
        ),
        MapAt::ResponseLive => (
            vec![(&b":status"[..], ctx.response.status.as_str().as_bytes())],
            ctx.response.headers.each(),
        ),
        MapAt::ResponseKept => (
            (ctx.kept.status.as_ref())
                .map(|s| vec![(&b":status"[..], s.as_str().as_bytes())])
                .unwrap_or_default(),
            ctx.kept.response_headers.each(),
        ),
        MapAt::TrailersLive => (Vec::new(), ctx.trailers.each()),
        MapAt::Answer(trailers) => return answer_pairs(ctx, trailers),
        MapAt::Empty => return Vec::new(),
    };
    pseudo
        .into_iter()
        .chain(regular.into_iter().map(|(n, v)| (n.as_bytes(), v)))
        .collect()
}

fn answer_pairs(ctx: &ProxyCtx, trailers: bool) -> Pairs<'_> {
    let Some(a) = &ctx.answer else {
        return Vec::new();
    };
    let list = if trailers { &a.trailers } else { &a.headers };
    list.iter()
        .map(|(k, v)| (k.as_bytes(), v.as_slice()))
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
        (MapAt::ResponseKept, ":status") => {
            (ctx.kept.status.as_ref()).map(|s| s.as_str().as_bytes().to_vec())
        }
        (MapAt::RequestLive, _) => first(&ctx.request.headers),
        (MapAt::RequestKept, _) => first(&ctx.kept.request_headers),
        (MapAt::ResponseLive, _) => first(&ctx.response.headers),
        (MapAt::ResponseKept, _) => first(&ctx.kept.response_headers),
        (MapAt::TrailersLive, _) => first(&ctx.trailers),
        (MapAt::Answer(trailers), _) => answer_pairs(ctx, trailers)
            .into_iter()
            .find(|(k, _)| *k == key.as_bytes())
            .map(|(_, v)| v.to_vec()),
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
            if let Err(why) = set_path(&mut ctx.request, text()) {
                refuse(ctx, why);
            }
        }
        (MapAt::RequestLive, ":authority") if how != Edit::Remove => {
            if let Err(why) = set_authority(&mut ctx.request, text()) {
                refuse(ctx, why);
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
            format!("map type {map} is not available here (trailers only in their own callback)"),
        ),
    }
}

pub(super) fn add(linker: &mut Linker<ProxyCtx>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Call<'_>, map: i32, ret_ptr: i32, ret_len: i32| -> wasmtime::Result<i32> {
            let bytes = guest::serialize_pairs(pairs(c.data(), map).into_iter());
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
