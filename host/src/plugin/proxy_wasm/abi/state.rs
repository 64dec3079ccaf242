//! What outlives a callback: properties, shared data, shared queues and metrics.

use super::{Call, bad, clip};
use crate::plugin::metrics::{Kind, MetricDef};
use crate::plugin::proxy_wasm::ctx::ProxyCtx;
use crate::plugin::proxy_wasm::guest::{self, status};
use crate::plugin::proxy_wasm::properties::{self, Property};
use crate::plugin::state::StateWriteError;
use wasmtime::Linker;

pub(super) fn add_queues(linker: &mut Linker<ProxyCtx>) -> wasmtime::Result<()> {
    use crate::plugin::proxy_wasm::queues::QueueError;
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

pub(super) fn add_properties(linker: &mut Linker<ProxyCtx>) -> wasmtime::Result<()> {
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

pub(super) fn add_shared_data(linker: &mut Linker<ProxyCtx>) -> wasmtime::Result<()> {
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
fn prometheus_name(name: &str) -> String {
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

pub(super) fn add_metrics(linker: &mut Linker<ProxyCtx>) -> wasmtime::Result<()> {
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
}
