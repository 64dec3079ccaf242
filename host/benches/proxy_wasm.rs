//! The per-call cost of a minimal proxy-wasm filter (sets one request header) next to the
//! same filter as a `weft:filter` component, both through the real runtime and a one-plugin
//! chain, on a request of ten headers; with the native edit as the floor.

#![allow(missing_docs)]

mod common;

use common::request;
use criterion::{Criterion, criterion_group, criterion_main};
use http::HeaderValue;
use prometheus::Registry;
use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use weft::plugin::*;

fn summary(call_id: u64) -> CallSummary {
    CallSummary {
        call_id,
        status: 200,
        attempts: 1,
        duration_us: 1_200,
        request_bytes: 187,
        response_bytes: 512,
        endpoint: 7,
        service: 0,
        subset: 0,
        source: 0,
        destination_identity: 0,
        source_workload: 0,
        destination_workload: 0,
        protocol: Protocol::Http1,
        response_flags: ResponseFlags::empty(),
        grpc_status: None,
    }
}

fn chain(rt: &PluginRuntime, name: &str, path: &str) -> Chain {
    let plugin = rt
        .plugin(
            Artifact::File(Path::new(path)),
            None,
            PluginSpec::new(name, "{}"),
        )
        .expect("plugin");
    Chain::new(vec![plugin])
}

fn compare(c: &mut Criterion) {
    let rt = PluginRuntime::new(
        RuntimeConfig::default(),
        &Registry::new(),
        Arc::new(NoEndpoints),
    )
    .expect("runtime");
    let component = chain(&rt, "set-header", weft_artifacts::SET_HEADER_PATH);
    let proxy_wasm = chain(&rt, "pw-set-header", weft_artifacts::PW_SET_HEADER_PATH);
    let ids = AtomicU64::new(1);
    // One head throughout, as the hook benchmarks do: after the first call the header is
    // there and each call replaces it, so no call pays for the map growing.
    let mut head = request();

    let mut g = c.benchmark_group("set-header");
    // The floor: the same edit in native code.
    g.bench_function("native/per-call", |b| {
        b.iter(|| {
            head.headers
                .insert("x-bench", HeaderValue::from_static("1"));
            black_box(&head);
        })
    });
    // A whole call: the request hook, and the end of the call (a proxy-wasm filter's stream
    // context is created on the first and deleted on the last; the component asked for no
    // on-done, so its chain skips it).
    for (name, chain) in [("component", &component), ("proxy-wasm", &proxy_wasm)] {
        g.bench_function(format!("{name}/per-call"), |b| {
            b.iter(|| {
                let id = ids.fetch_add(1, Ordering::Relaxed);
                black_box(chain.on_request(id, &mut head));
                black_box(chain.on_done(&summary(id), RouteId::NONE));
            })
        });
    }
    // The request hook alone, on a call whose stream context exists already.
    for (name, chain) in [("component", &component), ("proxy-wasm", &proxy_wasm)] {
        g.bench_function(format!("{name}/on-request"), |b| {
            b.iter(|| black_box(chain.on_request(0, &mut head)))
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(3));
    targets = compare
}
criterion_main!(benches);
