//! The properties a proxy-wasm filter reads with `get_property`: the subset of Envoy's and
//! Istio's attributes filters read most, encoded as Envoy encodes them (strings as their
//! bytes, integers as 8-byte little-endian, booleans as one byte).
//!
//! The list is documented in `docs/writing-plugins.md`; a path not on it is `NotFound`, and
//! the VM logs the first time each is asked for, so a filter author sees what is missing.

use super::ctx::{Headers, Phase, ProxyCtx};

/// What a property lookup found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Property {
    /// Its value, encoded.
    Found(Vec<u8>),
    /// Weft provides it, but it has no value at this point of the call.
    Absent,
    /// Weft does not provide it.
    Unsupported,
}

fn text(s: &str) -> Property {
    Property::Found(s.as_bytes().to_vec())
}

fn int(n: i64) -> Property {
    Property::Found(n.to_le_bytes().to_vec())
}

fn header(headers: &dyn Headers, name: &str) -> Property {
    match headers.first(name) {
        Some(v) => Property::Found(v.to_vec()),
        None => Property::Absent,
    }
}

/// The property at `path` (its segments, as the filter split them).
pub(crate) fn lookup(ctx: &ProxyCtx, path: &[&str]) -> Property {
    match path {
        ["plugin_name"] => text(&ctx.plugin),
        ["plugin_root_id"] => text(&ctx.root_id),
        ["plugin_vm_id"] => text(""),
        ["node", "id"] => text(&ctx.node.id),
        ["node", "metadata", "NAME"] | ["node", "metadata", "WORKLOAD_NAME"] => {
            text(&ctx.node.name)
        }
        ["node", "metadata", "NAMESPACE"] => text(&ctx.node.namespace),
        ["request", rest @ ..] => request(ctx, rest),
        ["response", rest @ ..] => response(ctx, rest),
        ["source", "principal"] => match source(ctx) {
            "" => Property::Absent,
            s => text(s),
        },
        ["destination", "principal"] => {
            let id = ctx.summary.map_or(0, |s| s.destination_identity);
            match ctx.services.names.name(id) {
                Some(name) => text(&name),
                None => Property::Absent,
            }
        }
        ["connection", "mtls"] => {
            // The downstream connection: a peer sidecar over mutual TLS on the server side
            // (the caller's identity is a peer's), the app in plain text on the client side.
            let s = source(ctx);
            let peer = !s.is_empty() && s != ctx.node.identity;
            Property::Found(vec![u8::from(peer)])
        }
        _ => Property::Unsupported,
    }
}

fn source(ctx: &ProxyCtx) -> &str {
    match ctx.phase {
        Phase::RequestHeaders => &ctx.request.source,
        _ => &ctx.kept.source,
    }
}

fn request(ctx: &ProxyCtx, rest: &[&str]) -> Property {
    let live = ctx.phase == Phase::RequestHeaders;
    if !live && ctx.phase == Phase::Root {
        return match rest {
            [
                "path" | "url_path" | "query" | "host" | "method" | "scheme" | "id" | "useragent"
                | "referer" | "duration" | "size" | "total_size",
            ]
            | ["headers", _] => Property::Absent,
            _ => Property::Unsupported,
        };
    }
    let (method, path, authority, headers): (_, _, _, &dyn Headers) = if live {
        (
            ctx.request.method.as_str(),
            ctx.request.path.as_str(),
            ctx.request.authority.as_str(),
            &ctx.request.headers,
        )
    } else {
        (
            ctx.kept.method.as_str(),
            ctx.kept.path.as_str(),
            ctx.kept.authority.as_str(),
            &ctx.kept.request_headers,
        )
    };
    match rest {
        ["path"] => text(path),
        ["url_path"] => text(path.split('?').next().unwrap_or(path)),
        ["query"] => text(path.split_once('?').map_or("", |(_, q)| q)),
        ["host"] => text(authority),
        ["method"] => text(method),
        ["scheme"] => text("http"),
        ["id"] => header(headers, "x-request-id"),
        ["useragent"] => header(headers, "user-agent"),
        ["referer"] => header(headers, "referer"),
        ["headers", name] => header(headers, &name.to_ascii_lowercase()),
        ["duration"] => match ctx.summary {
            // Envoy encodes a duration as nanoseconds.
            Some(s) => int(i64::try_from(s.duration_us.saturating_mul(1000)).unwrap_or(i64::MAX)),
            None => Property::Absent,
        },
        ["size"] | ["total_size"] => match ctx.summary {
            Some(s) => int(i64::try_from(s.request_bytes).unwrap_or(i64::MAX)),
            None => Property::Absent,
        },
        _ => Property::Unsupported,
    }
}

fn response(ctx: &ProxyCtx, rest: &[&str]) -> Property {
    let (status, headers): (_, Option<&dyn Headers>) = match ctx.phase {
        Phase::ResponseHeaders => (ctx.response.status.as_u16(), Some(&ctx.response.headers)),
        Phase::ResponseBody | Phase::ResponseTrailers | Phase::Log => (
            ctx.summary
                .map(|s| s.status)
                .or(ctx.kept.status.map(|s| s.as_u16()))
                .unwrap_or(0),
            Some(&ctx.kept.response_headers),
        ),
        _ => (0, None),
    };
    match rest {
        ["code"] if status != 0 => int(i64::from(status)),
        ["code"] => Property::Absent,
        ["headers", name] => match headers {
            Some(h) => header(h, &name.to_ascii_lowercase()),
            None => Property::Absent,
        },
        ["size"] | ["total_size"] => match ctx.summary {
            Some(s) => int(i64::try_from(s.response_bytes).unwrap_or(i64::MAX)),
            None => Property::Absent,
        },
        _ => Property::Unsupported,
    }
}
