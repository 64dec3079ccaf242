//! Where components are compiled: in this process, or in a child `weft plugin precompile`
//! process whose compiled code this process then only loads.
//!
//! Compiling a component touches Cranelift's code and grows the heap by megabytes that glibc
//! keeps afterwards: measured, a sidecar that compiled the four built-ins sat at 31 MiB RSS,
//! one that loaded the same code compiled elsewhere at 15 MiB. A child process also keeps a
//! compiler crash or blow-up on a hostile artifact out of the proxy.

use super::engine::{self, PoolSizes, Tier};
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
fn engine_args(pool: PoolSizes, tier: Tier, priority: Priority) -> Vec<String> {
    let mut args = vec![
        "--instances".into(),
        pool.instances.to_string(),
        "--max-memory-bytes".into(),
        pool.max_memory_bytes.to_string(),
    ];
    if tier == Tier::Baseline {
        args.push("--baseline".into());
    }
    if priority == Priority::Low {
        args.push("--low-priority".into());
    }
    args
}

/// How urgently a compile is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    /// Someone waits for it (an apply, a sidecar loading a snapshot).
    Now,
    /// Nobody waits (optimized code behind baseline code): the child yields the cores to the
    /// processes that serve calls and applies.
    Low,
}

/// Lowers this process's CPU priority to the least (nice 19), for a compile nobody waits on.
/// Called before the compiler starts its threads, which inherit it.
pub fn lower_priority() {
    if let Err(e) = rustix::process::setpriority_process(None, 19) {
        tracing::debug!("cannot lower the compiler's priority: {e}");
    }
}

/// Compiles `wasm` in a child process, for an engine of `tier`.
pub(crate) fn compile_in_child(
    exe: &PathBuf,
    pool: PoolSizes,
    (tier, priority): (Tier, Priority),
    wasm: &[u8],
) -> ChildOutcome {
    let child = Command::new(exe)
        .args(["plugin", "precompile"])
        .args(engine_args(pool, tier, priority))
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
    let output = wait_bounded(child, COMPILE_TIMEOUT);
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

/// Longest a child compile may take: a component that would take longer (or a compiler that
/// hangs on it) is refused rather than holding up every load behind it.
pub const COMPILE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

/// `wait_with_output`, but the child is killed once `limit` has passed.
fn wait_bounded(
    mut child: std::process::Child,
    limit: std::time::Duration,
) -> std::io::Result<std::process::Output> {
    // Drained from threads so a child writing a lot never blocks on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = std::time::Instant::now() + limit;
    // Polled from 1 ms up to 50 ms: a quick compile is not made to wait for a long tick.
    let mut tick = std::time::Duration::from_millis(1);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break status;
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(std::process::Output {
                status: timed_out_status(),
                stdout: Vec::new(),
                stderr: format!("compiling took longer than {limit:?}; stopped").into_bytes(),
            });
        }
        std::thread::sleep(tick);
        tick = (tick * 2).min(std::time::Duration::from_millis(50));
    };
    Ok(std::process::Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// The status of a child stopped for taking too long: refused, as the compiler refuses.
fn timed_out_status() -> std::process::ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    std::process::ExitStatus::from_raw(REFUSED << 8)
}

/// The exit code of a child whose artifact the compiler refused.
pub const REFUSED: i32 = 3;

/// The child's side: compiles a component read from `input` with an engine configured by
/// `pool` and `tier` and writes the serialized code to `output`. A refusal is an `Err` with
/// the reason.
pub fn precompile(
    pool: PoolSizes,
    tier: Tier,
    input: &mut impl Read,
    output: &mut impl Write,
) -> Result<(), String> {
    let mut wasm = Vec::new();
    input
        .read_to_end(&mut wasm)
        .map_err(|e| format!("reading the component: {e}"))?;
    let (engine, _) = engine::build(pool, tier).map_err(|e| e.to_string())?;
    // A core module is a proxy-wasm filter; anything else is compiled as a component and
    // refused by wasmtime if it is not one.
    let code = if super::artifact::is_core_module(&wasm) {
        engine.precompile_module(&wasm)
    } else {
        engine.precompile_component(&wasm)
    }
    .map_err(|e| format!("{e:#}"))?;
    output
        .write_all(&code)
        .and_then(|()| output.flush())
        .map_err(|e| format!("writing the compiled code: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn a_child_past_its_time_is_stopped_and_refused() {
        let child = Command::new("sleep")
            .arg("30")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sleep runs");
        let started = Instant::now();
        let out = wait_bounded(child, Duration::from_millis(200)).expect("waits");
        assert_eq!(out.status.code(), Some(REFUSED));
        assert!(String::from_utf8_lossy(&out.stderr).contains("longer than"));
        // Stopped, not waited out (30 s).
        assert!(started.elapsed() < Duration::from_secs(20));
    }

    #[test]
    fn a_quick_child_is_read_whole() {
        let child = Command::new("sh")
            .args(["-c", "head -c 200000 /dev/zero; echo done >&2"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("sh runs");
        let out = wait_bounded(child, Duration::from_secs(60)).expect("waits");
        assert!(out.status.success());
        assert_eq!(out.stdout.len(), 200_000);
        assert_eq!(String::from_utf8_lossy(&out.stderr).trim(), "done");
    }
}
