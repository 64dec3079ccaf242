//! Where components are compiled: in this process, or in a child `weft plugin precompile`
//! process whose compiled code this process then only loads.
//!
//! Compiling a component touches Cranelift's code and grows the heap by megabytes that glibc
//! keeps afterwards: measured, a sidecar that compiled the four built-ins sat at 31 MiB RSS,
//! one that loaded the same code compiled elsewhere at 15 MiB. A child process also keeps a
//! compiler crash or blow-up on a hostile artifact out of the proxy.

use super::engine::{self, PoolSizes};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// How the runtime compiles a component it has not compiled before.
#[derive(Debug, Clone, Default)]
pub enum Compiler {
    /// With this process's engine.
    #[default]
    InProcess,
    /// By running this executable as `EXE plugin precompile` (the `weft` binary).
    Subprocess(PathBuf),
}

/// What a child compile produced.
pub(crate) enum ChildOutcome {
    /// Serialized code for an engine configured as ours.
    Compiled(Vec<u8>),
    /// The compiler refused the artifact, in its words.
    Refused(String),
    /// No child could be run; compile here instead.
    Unavailable(String),
}

/// The arguments that make the child's engine match ours.
fn pool_args(pool: PoolSizes) -> [String; 4] {
    [
        "--instances".into(),
        pool.instances.to_string(),
        "--max-memory-bytes".into(),
        pool.max_memory_bytes.to_string(),
    ]
}

/// Compiles `wasm` in a child process.
pub(crate) fn compile_in_child(exe: &PathBuf, pool: PoolSizes, wasm: &[u8]) -> ChildOutcome {
    let child = Command::new(exe)
        .args(["plugin", "precompile"])
        .args(pool_args(pool))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => return ChildOutcome::Unavailable(format!("cannot run {}: {e}", exe.display())),
    };
    // Written from a thread: a child that fails early stops reading, and the pipe must not
    // block us while its output waits to be read.
    let stdin = child.stdin.take();
    let input = wasm.to_vec();
    let writer = std::thread::spawn(move || {
        if let Some(mut s) = stdin {
            let _ = s.write_all(&input);
        }
    });
    let output = child.wait_with_output();
    let _ = writer.join();
    match output {
        Ok(out) if out.status.success() => ChildOutcome::Compiled(out.stdout),
        Ok(out) if out.status.code() == Some(REFUSED) => {
            ChildOutcome::Refused(String::from_utf8_lossy(&out.stderr).trim().to_string())
        }
        Ok(out) => ChildOutcome::Refused(format!(
            "the compiler process failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
        Err(e) => ChildOutcome::Unavailable(format!("waiting for the compiler process: {e}")),
    }
}

/// The exit code of a child whose artifact the compiler refused.
pub const REFUSED: i32 = 3;

/// The child's side: compiles a component read from `input` with an engine configured by
/// `pool` and writes the serialized code to `output`. A refusal is an `Err` with the reason.
pub fn precompile(
    pool: PoolSizes,
    input: &mut impl Read,
    output: &mut impl Write,
) -> Result<(), String> {
    let mut wasm = Vec::new();
    input
        .read_to_end(&mut wasm)
        .map_err(|e| format!("reading the component: {e}"))?;
    let (engine, _) = engine::build(pool).map_err(|e| e.to_string())?;
    let code = engine
        .precompile_component(&wasm)
        .map_err(|e| format!("{e:#}"))?;
    output
        .write_all(&code)
        .and_then(|()| output.flush())
        .map_err(|e| format!("writing the compiled code: {e}"))
}
