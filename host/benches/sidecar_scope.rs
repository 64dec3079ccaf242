//! What a Sidecar resource saves: the snapshot one sidecar is given, and the control plane's
//! work compiling it, in a mesh of 200 services (each with a 95/5 VirtualService, a
//! DestinationRule with two subsets and two workloads) where the workload calls 3 of them,
//! with and without a Sidecar listing those 3.

#![allow(missing_docs)]
// A bench reports the sizes it measured beside the timings criterion prints.
#![allow(clippy::print_stderr)]

use criterion::{Criterion, criterion_group, criterion_main};
use std::collections::BTreeMap;
use std::hint::black_box;
use weft::control::compile::{Workload, compile};
use weft::control::istio::{Resource, parse_yaml};

const SERVICES: usize = 200;

fn mesh() -> (Vec<Resource>, Vec<Workload>) {
    let mut yaml = String::new();
    let mut workloads = Vec::new();
    for i in 0..SERVICES {
        let s = format!("svc-{i:03}");
        yaml.push_str(&format!(
            "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{ name: {s} }}
spec:
  hosts: [{s}]
  http:
  - route:
    - {{ destination: {{ host: {s}, subset: v1 }}, weight: 95 }}
    - {{ destination: {{ host: {s}, subset: v2 }}, weight: 5 }}
    retries: {{ attempts: 3, perTryTimeout: 2s, retryOn: 5xx }}
    timeout: 6s
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{ name: {s} }}
spec:
  host: {s}
  subsets: [{{ name: v1, labels: {{ version: v1 }} }}, {{ name: v2, labels: {{ version: v2 }} }}]
  trafficPolicy: {{ outlierDetection: {{ consecutive5xxErrors: 5, baseEjectionTime: 30s }} }}
---
"
        ));
        for (v, n) in [("v1", 1), ("v2", 2)] {
            workloads.push(Workload {
                service: s.clone(),
                namespace: "default".into(),
                labels: BTreeMap::from([("version".to_string(), v.to_string())]),
                address: format!("198.18.{}.{}:15006", i / 100, (i % 100) * 2 + n),
            });
        }
    }
    let resources = parse_yaml(&yaml, "mesh.yaml").expect("the mesh parses");
    (resources, workloads)
}

const SCOPE: &str = "apiVersion: networking.istio.io/v1
kind: Sidecar
metadata: { name: svc-000 }
spec:
  workloadSelector: { labels: { app: svc-000 } }
  egress:
  - hosts:
    - ./svc-001.default.svc.cluster.local
    - ./svc-002.default.svc.cluster.local
    - ./svc-003.default.svc.cluster.local
";

fn bench(c: &mut Criterion) {
    let (resources, workloads) = mesh();
    let mut scoped = resources.clone();
    scoped.extend(parse_yaml(SCOPE, "sidecar.yaml").expect("the Sidecar parses"));
    let me = workloads[0].clone();
    for (name, rs) in [("whole mesh", &resources), ("Sidecar egress: 3", &scoped)] {
        let s = compile(rs, &workloads, &me).snapshot;
        let bytes = serde_json::to_vec(&s).expect("json").len();
        let plugins: usize = s.services.values().map(|v| v.plugins.len()).sum();
        eprintln!(
            "{name}: {} services, {} plugins in chains, {bytes} bytes of snapshot JSON",
            s.services.len(),
            plugins
        );
    }
    let mut g = c.benchmark_group("compile one sidecar's snapshot, 200 services");
    g.sample_size(10);
    g.bench_function("whole mesh", |b| {
        b.iter(|| black_box(compile(&resources, &workloads, &me)))
    });
    g.bench_function("Sidecar egress: 3", |b| {
        b.iter(|| black_box(compile(&scoped, &workloads, &me)))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
