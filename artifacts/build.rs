//! Builds the workspace's Wasm guests (built-in plugins and test plugins) with a nested
//! `cargo build --target wasm32-wasip2`, and the proxy-wasm test filters (their own workspace,
//! `tests/proxy-wasm`) with `cargo build --target wasm32-wasip1`, then generates constants
//! naming each.
//!
//! The nested build gets its own target directory under OUT_DIR, or it would wait forever on
//! the lock the outer build holds; and it sheds the outer build's flags (RUSTFLAGS for the host
//! target, clippy's wrapper), which do not apply to a Wasm guest.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

const TARGET: &str = "wasm32-wasip2";
const PROFILE: &str = "wasm-guest";

/// (constant name, package, directory relative to the workspace root, embedded in the binary)
const GUESTS: &[(&str, &str, &str, bool)] = &[
    ("CANARY", "weft-plugin-canary", "plugins/canary", true),
    ("RETRY", "weft-plugin-retry", "plugins/retry", true),
    ("OUTLIER", "weft-plugin-outlier", "plugins/outlier", true),
    (
        "TELEMETRY",
        "weft-plugin-telemetry",
        "plugins/telemetry",
        true,
    ),
    ("FAULT", "weft-plugin-fault", "plugins/fault", true),
    ("HEADERS", "weft-plugin-headers", "plugins/headers", true),
    ("CHAOS", "weft-guest-chaos", "tests/guests/chaos", false),
    (
        "NOT_A_FILTER",
        "weft-guest-not-a-filter",
        "tests/guests/not-a-filter",
        false,
    ),
    (
        "TWO_HEADERS",
        "weft-guest-two-headers",
        "tests/guests/two-headers",
        false,
    ),
    ("NOOP", "weft-guest-noop", "tests/guests/noop", false),
    (
        "SET_HEADER",
        "weft-guest-set-header",
        "tests/guests/set-header",
        false,
    ),
    ("TENANT_GATE", "tenant-gate", "examples/tenant-gate", false),
];

/// The proxy-wasm filters: (constant name, package), built from `tests/proxy-wasm`.
const PROXY_WASM: &[(&str, &str)] = &[
    ("PW_HEADERS", "pw-headers"),
    ("PW_AUTH", "pw-auth"),
    ("PW_COUNTER", "pw-counter"),
    ("PW_HOSTILE", "pw-hostile"),
    ("PW_SET_HEADER", "pw-set-header"),
    ("PW_CALLOUT", "pw-callout"),
    ("PW_BODY", "pw-body"),
];

/// The target proxy-wasm filters are built for, as Envoy and Istio users build them.
const PROXY_WASM_TARGET: &str = "wasm32-wasip1";

fn main() {
    let manifest_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir
        .parent()
        .expect("artifacts/ sits in the workspace root")
        .to_path_buf();
    let out_dir = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));

    println!("cargo:rerun-if-changed=build.rs");
    for dir in ["wit", "sdk", "Cargo.lock", "Cargo.toml"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    for (_, _, dir, _) in GUESTS {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    let filters = root.join("tests/proxy-wasm");
    for file in ["Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", filters.join(file).display());
    }
    for (_, package) in PROXY_WASM {
        let dir = filters.join(package.trim_start_matches("pw-"));
        println!("cargo:rerun-if-changed={}", dir.join("src").display());
        println!(
            "cargo:rerun-if-changed={}",
            dir.join("Cargo.toml").display()
        );
    }

    ensure_target(TARGET);
    ensure_target(PROXY_WASM_TARGET);
    let target_dir = out_dir.join("guests");
    build_guests(&root, &target_dir);
    let filters_dir = out_dir.join("proxy-wasm");
    build_proxy_wasm(&filters, &filters_dir);
    write_constants(&out_dir, &target_dir, &filters_dir);
}

/// Builds the proxy-wasm filters' own workspace.
fn build_proxy_wasm(manifest_dir: &Path, target_dir: &Path) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(manifest_dir)
        .args([
            "build",
            "--locked",
            "--release",
            "--target",
            PROXY_WASM_TARGET,
        ])
        .arg("--target-dir")
        .arg(target_dir);
    shed_outer_build(&mut cmd);
    let status = cmd
        .status()
        .expect("failed to run the nested cargo build of the proxy-wasm filters");
    assert!(
        status.success(),
        "building the proxy-wasm filters failed ({status}); run `cargo build --target {PROXY_WASM_TARGET} --release` in tests/proxy-wasm to see why"
    );
}

/// Removes the outer build's settings, which do not apply to a Wasm guest.
fn shed_outer_build(cmd: &mut Command) {
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "CARGO_BUILD_RUSTFLAGS",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "CARGO_PRIMARY_PACKAGE",
        "CARGO_MANIFEST_DIR",
        "CARGO_MANIFEST_PATH",
    ] {
        cmd.env_remove(var);
    }
}

/// Installs the Wasm target if rustup is how this toolchain came; `rust-toolchain.toml`
/// alone skips a missing target silently. Idempotent and quick when already installed.
fn ensure_target(target: &str) {
    let sysroot = Command::new(env::var("RUSTC").unwrap_or_else(|_| "rustc".into()))
        .args(["--print", "sysroot"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    if Path::new(&sysroot)
        .join("lib/rustlib")
        .join(target)
        .exists()
    {
        return;
    }
    let status = Command::new("rustup")
        .args(["target", "add", target])
        .status();
    match status {
        Ok(s) if s.success() => {}
        other => panic!(
            "the {target} target is missing and `rustup target add {target}` failed ({other:?}); \
             install it with `rustup target add {target}` and build again"
        ),
    }
}

fn build_guests(root: &Path, target_dir: &Path) {
    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(root)
        .args([
            "build",
            "--locked",
            "--target",
            TARGET,
            "--profile",
            PROFILE,
        ])
        .arg("--target-dir")
        .arg(target_dir);
    for (_, package, _, _) in GUESTS {
        cmd.args(["-p", package]);
    }
    shed_outer_build(&mut cmd);
    let status = cmd
        .status()
        .expect("failed to run the nested cargo build of the Wasm guests");
    assert!(
        status.success(),
        "building the Wasm guests failed ({status}); run `cargo build --target {TARGET} --profile {PROFILE} -p <guest>` to see why"
    );
}

fn write_constants(out_dir: &Path, target_dir: &Path, filters_dir: &Path) {
    let mut code = String::new();
    let mut all =
        String::from("/// Every guest: (name, path).\npub const ALL: &[(&str, &str)] = &[\n");
    for (name, package, _, embed) in GUESTS {
        let file = target_dir
            .join(TARGET)
            .join(PROFILE)
            .join(format!("{}.wasm", package.replace('-', "_")));
        assert!(
            file.exists(),
            "the guest build produced no {}",
            file.display()
        );
        let path = file.display().to_string();
        writeln!(code, "/// Path of the `{package}` component.").ok();
        writeln!(code, "pub const {name}_PATH: &str = {path:?};").ok();
        if *embed {
            writeln!(code, "/// The `{package}` component's bytes.").ok();
            writeln!(code, "pub const {name}: &[u8] = include_bytes!({path:?});").ok();
        }
        writeln!(all, "    ({:?}, {path:?}),", package).ok();
    }
    for (name, package) in PROXY_WASM {
        let file = filters_dir
            .join(PROXY_WASM_TARGET)
            .join("release")
            .join(format!("{}.wasm", package.replace('-', "_")));
        assert!(
            file.exists(),
            "the proxy-wasm build produced no {}",
            file.display()
        );
        let path = file.display().to_string();
        writeln!(
            code,
            "/// Path of the `{package}` proxy-wasm filter (a core module)."
        )
        .ok();
        writeln!(code, "pub const {name}_PATH: &str = {path:?};").ok();
    }
    all.push_str("];\n");
    code.push_str(&all);
    std::fs::write(out_dir.join("guests.rs"), code).expect("write guests.rs");
}
