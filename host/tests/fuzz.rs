//! Mutation fuzzing of every parser that reads outside input: Istio YAML (through validation
//! and compilation to the snapshot a sidecar receives), bootstrap JSON, snapshot JSON, Istio
//! durations, request paths and SPIFFE ids. Each target starts from real inputs and applies
//! random edits (byte flips, splices of the grammar's own tokens, cuts, repeats); no input may
//! panic, and what one stage accepts the next must accept too.
//!
//! The suite runs a bounded number of cases per target. A longer run is one command:
//!
//! ```text
//! WEFT_FUZZ_ITERS=200000 WEFT_FUZZ_SEED=7 cargo test --release -p weft --test fuzz
//! ```
//!
//! A failing case is written to `target/fuzz-failures/<target>-<seed>-<case>` and named in the
//! panic message, so it can be replayed.

use std::collections::BTreeMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use weft::control::compile::{self, Workload};
use weft::control::istio;
use weft::proxy::path::{Normalization, normalize};
use weft::snapshot::{Snapshot, parse_duration};

/// Cases per target unless `WEFT_FUZZ_ITERS` says otherwise.
const DEFAULT_ITERS: u64 = 20_000;

fn iterations() -> u64 {
    std::env::var("WEFT_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_ITERS)
}

fn seed() -> u64 {
    std::env::var("WEFT_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x5eed)
}

/// xorshift64*: deterministic for a seed, so every failure replays.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

/// One random edit of `input`, drawing tokens from `dict`.
fn mutate(rng: &mut Rng, input: &mut Vec<u8>, dict: &[&str]) {
    let len = input.len();
    match rng.below(8) {
        0 if len > 0 => {
            let i = rng.below(len);
            input[i] ^= 1 << rng.below(8);
        }
        1 => {
            let i = rng.below(len + 1);
            input.insert(i, rng.next() as u8);
        }
        2 if len > 0 => {
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(16));
            input.drain(i..i + n);
        }
        3 if len > 0 => {
            // Repeat a slice: grows nesting and lists.
            let i = rng.below(len);
            let n = 1 + rng.below((len - i).min(64));
            let piece = input[i..i + n].to_vec();
            let at = rng.below(len + 1);
            input.splice(at..at, piece);
        }
        4 if len > 0 => input.truncate(rng.below(len)),
        5 if len > 0 => {
            // Overwrite with a token: keeps the text close to the grammar.
            let token = dict[rng.below(dict.len())].as_bytes();
            let i = rng.below(len);
            let end = (i + token.len()).min(len);
            input.splice(i..end, token.iter().copied());
        }
        _ => {
            let token = dict[rng.below(dict.len())].as_bytes();
            let i = rng.below(len + 1);
            input.splice(i..i, token.iter().copied());
        }
    }
}

/// Runs `check` on `cases` mutants of the seeds (1–4 edits each, every seed also as is);
/// a panic is saved to a file and reported with the input.
fn fuzz(target: &str, seeds: &[String], dict: &[&str], check: impl Fn(&str)) {
    let seed = seed();
    let mut rng = Rng::new(seed ^ target.len() as u64);
    for s in seeds {
        check(s);
    }
    for case in 0..iterations() {
        let mut input = seeds[rng.below(seeds.len())].clone().into_bytes();
        for _ in 0..1 + rng.below(4) {
            mutate(&mut rng, &mut input, dict);
        }
        let text = String::from_utf8_lossy(&input).into_owned();
        if catch_unwind(AssertUnwindSafe(|| check(&text))).is_err() {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("../fuzz-failures");
            let file = dir.join(format!("{target}-{seed}-{case}"));
            let saved = std::fs::create_dir_all(&dir)
                .and_then(|()| std::fs::write(&file, &text))
                .map(|()| file.display().to_string())
                .unwrap_or_else(|e| format!("(not saved: {e})"));
            panic!("{target}: case {case} (seed {seed}) panicked; input in {saved}:\n{text:?}");
        }
    }
}

fn read(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Splits a multi-document YAML file into its documents, each a seed of its own too.
fn with_documents(text: String) -> Vec<String> {
    let mut out: Vec<String> = text
        .split("\n---")
        .filter(|d| !d.trim().is_empty())
        .map(str::to_string)
        .collect();
    out.push(text);
    out
}

fn workloads() -> Vec<Workload> {
    let w = |service: &str, version: &str, address: &str| Workload {
        service: service.into(),
        namespace: "default".into(),
        labels: BTreeMap::from([("version".to_string(), version.to_string())]),
        address: address.into(),
    };
    vec![
        w("orders", "v1", "198.18.0.1:15006"),
        w("payments", "v1", "198.18.0.2:15006"),
        w("payments", "v2", "198.18.0.3:15006"),
        w("reviews", "v1", "198.18.0.4:15006"),
        Workload {
            namespace: "shop".into(),
            ..w("payments", "v1", "198.18.0.5:15006")
        },
    ]
}

const YAML_TOKENS: &[&str] = &[
    "\n",
    "\n  ",
    "\n    - ",
    ": ",
    "- ",
    "{",
    "}",
    "[",
    "]",
    ",",
    "&a ",
    "*a",
    "<<: *a",
    "!!str ",
    "'",
    "\"",
    "#",
    "|\n  ",
    ">-\n  ",
    "~",
    "null",
    "true",
    "0",
    "-1",
    "100",
    "1e300s",
    "9999999999h",
    "0.5s",
    "2s",
    "6s",
    "30s",
    "weight: ",
    "attempts: ",
    "perTryTimeout: ",
    "timeout: ",
    "retryOn: ",
    "5xx,reset",
    "subset: ",
    "host: ",
    "hosts: [payments]",
    "match:\n  - ",
    "headers: ",
    "exact: ",
    "prefix: /",
    "regex: .*",
    "uri: ",
    "fault:",
    "delay:",
    "abort:",
    "percentage: {value: 50}",
    "httpStatus: 503",
    "fixedDelay: 7s",
    "consecutive5xxErrors: 5",
    "baseEjectionTime: 30s",
    "labels: {version: v2}",
    "mtls: {mode: STRICT}",
    "action: DENY",
    "paths: [\"/admin*\"]",
    "principals: [\"*\"]",
    "kind: VirtualService",
    "kind: DestinationRule",
    "kind: WasmPlugin",
    "kind: AuthorizationPolicy",
    "kind: PeerAuthentication",
    "apiVersion: networking.istio.io/v1",
    "\n---\n",
    "\u{feff}",
    "\u{0}",
    "é",
];

#[test]
fn istio_yaml_never_panics_and_what_validates_compiles_to_a_snapshot_sidecars_accept() {
    let mut seeds = with_documents(read("examples/payments/payments.yaml"));
    seeds.extend(with_documents(read("host/tests/data/istio/features.yaml")));
    let workloads = workloads();
    fuzz("istio-yaml", &seeds, YAML_TOKENS, |text| {
        let Ok(resources) = istio::parse_yaml(text, "fuzz.yaml") else {
            return;
        };
        if compile::validate(&resources, &|_| true).is_err() {
            return;
        }
        for me in &workloads {
            let snapshot = compile::snapshot_for(&resources, &workloads, me);
            let json = serde_json::to_string(&snapshot).expect("a snapshot serializes");
            let back = Snapshot::from_json(&json)
                .unwrap_or_else(|e| panic!("the control plane made unreadable JSON: {e}"));
            if let Err(e) = back.validate() {
                panic!(
                    "accepted at apply, refused by the sidecar ({}): {e}",
                    me.service
                );
            }
        }
    });
}

#[test]
fn bootstrap_json_never_panics() {
    let seeds = vec![
        r#"{"service": "orders", "outbound": "127.0.0.1:15001", "inbound": "127.0.0.1:15006",
            "admin": "127.0.0.1:15000", "app": "127.0.0.1:8080", "snapshot": "s.json"}"#
            .to_string(),
        r#"{"service": "orders", "outbound": "127.0.0.1:15001", "inbound": "127.0.0.1:15006",
            "admin": "127.0.0.1:15000", "app": "127.0.0.1:8080", "labels": {"version": "v1"},
            "advertise": "198.18.0.1:15006", "replayLimit": 65536, "drainTimeout": "5s",
            "pluginDeadline": "10ms", "timeouts": {"requestHeaders": "2s", "idle": "1m",
            "maxConnectionDuration": "1h", "streamIdle": "30s", "request": "1m30s"},
            "cacheDir": "cache", "mtls": "STRICT", "pathNormalization": "MERGE_SLASHES",
            "controlPlane": {"address": "127.0.0.1:15010", "token": "t", "caFile": "ca.pem"}}"#
            .to_string(),
    ];
    let dict = &[
        "\"",
        ":",
        ",",
        "{",
        "}",
        "[",
        "]",
        "null",
        "0",
        "-1",
        "1e300",
        "\"0s\"",
        "\"1e300s\"",
        "\"\"",
        "\"PERMISSIVE\"",
        "\"NONE\"",
        "\"DECODE_AND_MERGE_SLASHES\"",
        "\"[::1]:0\"",
        "\"../..\"",
        "\\u0000",
        "\\ud800",
        "18446744073709551616",
    ];
    fuzz("bootstrap", &seeds, dict, |text| {
        let _ = weft::bootstrap::parse(text, Path::new("/etc/weft"));
    });
}

#[test]
fn snapshot_json_never_panics() {
    let resources = istio::parse_yaml(&read("examples/payments/payments.yaml"), "seed")
        .expect("the example parses");
    let workloads = workloads();
    let mut seeds: Vec<String> = workloads
        .iter()
        .map(|me| {
            serde_json::to_string(&compile::snapshot_for(&resources, &workloads, me))
                .expect("serializes")
        })
        .collect();
    seeds.push(r#"{"version":"1","inbound":{"peerAuthentication":"DISABLE"}}"#.to_string());
    let dict = &[
        "\"",
        ":",
        ",",
        "{",
        "}",
        "[",
        "]",
        "null",
        "0",
        "-1",
        "1e300",
        "4294967296",
        "\"\"",
        "\"0s\"",
        "\"1e300s\"",
        "\"-5s\"",
        "\"retry\"",
        "\"canary\"",
        "\"routes\":[\"\"]",
        "\"weight\":",
        "\"sha256\":\"",
        "\\u0000",
    ];
    fuzz("snapshot", &seeds, dict, |text| {
        if let Ok(s) = Snapshot::from_json(text) {
            let _ = s.validate();
        }
    });
}

#[test]
fn durations_never_panic_and_read_as_istio_writes_them() {
    let seeds: Vec<String> = [
        "6s", "250ms", "1.5s", "2m", "1h", "0s", "100us", "1h30m", "3ns",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let dict = &[
        "s",
        "ms",
        "us",
        "µs",
        "ns",
        "m",
        "h",
        "d",
        ".",
        "-",
        "+",
        "e",
        "1e300",
        "9",
        "0",
        "18446744073709551615",
        " ",
    ];
    fuzz("duration", &seeds, dict, |text| {
        let _ = parse_duration(text);
    });
    // Whole numbers of seconds read exactly up to Go's limit (an i64 of nanoseconds, as
    // Istio's own durations), and past it are refused rather than wrapped.
    let limit = i64::MAX as u64 / 1_000_000_000;
    let mut rng = Rng::new(seed());
    for _ in 0..iterations() {
        let n = rng.next() >> rng.below(64);
        let parsed = parse_duration(&format!("{n}s"));
        if n <= limit {
            assert_eq!(parsed.ok(), Some(std::time::Duration::from_secs(n)), "{n}s");
        } else {
            assert!(parsed.is_err(), "{n}s is past Go's limit: {parsed:?}");
        }
    }
}

#[test]
fn request_paths_never_panic_and_normalize_once() {
    let seeds: Vec<String> = [
        "/",
        "/a/b/../c?x=1",
        "/public/../admin",
        "/./admin",
        "//a//b",
        "/a%2Fb",
        "/a%5cb",
        "/%7Euser",
        "/a/%2e%2e/b",
        "/q?../..",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let dict = &[
        "/", "..", ".", "%", "%2e", "%2F", "%5C", "%00", "%7e", "?", "#", "\\", "%%",
    ];
    let modes = [
        Normalization::None,
        Normalization::Base,
        Normalization::MergeSlashes,
        Normalization::DecodeAndMergeSlashes,
    ];
    fuzz("path", &seeds, dict, |text| {
        for mode in modes {
            if let Ok(once) = normalize(text, mode) {
                // What the app receives must be a fixed point: normalizing it again changes
                // nothing, or authorization and the app could read two different paths.
                let twice = normalize(&once, mode).unwrap_or_else(|e| {
                    panic!("{mode:?}: {once:?} refused on the second pass: {e}")
                });
                assert_eq!(once, twice, "{mode:?}: not idempotent for {text:?}");
            }
        }
    });
}

#[test]
fn spiffe_ids_never_panic_and_print_as_read() {
    let seeds: Vec<String> = [
        "spiffe://weft.local/ns/default/sa/orders",
        "spiffe://evil.example/ns/default/sa/orders",
        "spiffe://a.b-c/ns/x/sa/y",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let dict = &[
        "/", "//", "spiffe:", ":", "@", "%", "ns", "sa", ".", "..", "A", "\u{0}",
    ];
    fuzz("spiffe", &seeds, dict, |text| {
        if let Ok(id) = weft::identity::SpiffeId::parse(text) {
            assert_eq!(id.to_string(), text, "an accepted id prints as it was read");
        }
    });
}
