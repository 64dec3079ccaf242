//! The stream: local replies, resuming, closing, and HTTP callouts.

use super::{Call, MAX_CALLOUT_TIMEOUT, MAX_CALLOUTS, bad};
use crate::plugin::bindings::weft::filter::types::LocalResponse;
use crate::plugin::host_impl::check_reply;
use crate::plugin::proxy_wasm::ctx::{Phase, ProxyCtx};
use crate::plugin::proxy_wasm::guest::{self, status};
use std::time::Duration;
use wasmtime::Linker;

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

pub(super) fn add(linker: &mut Linker<ProxyCtx>) -> wasmtime::Result<()> {
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
                    | Phase::RequestTrailers
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
            if !matches!(ctx.phase, Phase::RequestHeaders | Phase::Root) {
                ctx.violation.get_or_insert(
                    "dispatch_http_call from a response or body callback: not supported yet".into(),
                );
                return status::INTERNAL_FAILURE;
            }
            if ctx.callouts.len() >= MAX_CALLOUTS {
                ctx.violation.get_or_insert(format!(
                    "more than {MAX_CALLOUTS} callouts from one callback"
                ));
                return status::INTERNAL_FAILURE;
            }
            let token = ctx.next_token;
            ctx.next_token = ctx.next_token.checked_add(1).unwrap_or(1);
            let timeout =
                Duration::from_millis(u64::from(timeout_ms as u32)).min(MAX_CALLOUT_TIMEOUT);
            ctx.callouts.push(crate::plugin::types::Callout {
                token,
                upstream,
                headers: headers
                    .into_iter()
                    .map(|(k, v)| (String::from_utf8_lossy(&k).to_ascii_lowercase(), v))
                    .collect(),
                body: body.into(),
                timeout: if timeout.is_zero() {
                    MAX_CALLOUT_TIMEOUT
                } else {
                    timeout
                },
            });
            guest::write_u32(&mut c, ret_token, token).map_or_else(bad, |()| status::OK)
        },
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
