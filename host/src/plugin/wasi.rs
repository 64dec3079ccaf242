//! The WASI a plugin gets: an empty context (no files, network, environment, arguments or
//! stdin), clocks and randomness, and stdout/stderr that go to `tracing`.
//!
//! wasmtime-wasi's synchronous `wasi:io` runs its blocking calls through `Handle::block_on`,
//! which panics on a Tokio worker — exactly where the proxy calls hooks. So `wasi:io` is
//! implemented here without blocking: every stream a plugin can reach is in memory and ready
//! at once, and a plugin cannot wait on anything (a sleep returns immediately).

use super::host_impl::PluginCtx;
use std::sync::Arc;
use wasmtime::component::{HasData, Linker, Resource, ResourceTable};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream, WasiCli, WasiCliView as _};
use wasmtime_wasi::clocks::{WasiClocks, WasiClocksView as _};
use wasmtime_wasi::filesystem::{WasiFilesystem, WasiFilesystemView as _};
use wasmtime_wasi::p2::bindings::sync::io::{poll, streams};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};
use wasmtime_wasi::random::WasiRandom;
use wasmtime_wasi::{WasiCtx, WasiCtxBuilder, WasiView};
use wasmtime_wasi_io::bindings::wasi::io::streams::{
    HostInputStream as AsyncIn, HostOutputStream as AsyncOut,
};
use wasmtime_wasi_io::poll::DynPollable;
use wasmtime_wasi_io::streams::{DynInputStream, DynOutputStream};

/// Most of a line a plugin may write to stdout/stderr before it is cut.
const MAX_LINE: usize = 4096;

/// Builds the empty WASI context for one instance of `plugin`.
pub(crate) fn context(plugin: &Arc<str>) -> WasiCtx {
    WasiCtxBuilder::new()
        .stdout(LogStream {
            plugin: plugin.clone(),
            stream: "stdout",
            line: Vec::new(),
        })
        .stderr(LogStream {
            plugin: plugin.clone(),
            stream: "stderr",
            line: Vec::new(),
        })
        .build()
}

/// Adds the WASI interfaces plugins may import to `linker`.
pub(crate) fn add_to_linker(linker: &mut Linker<PluginCtx>) -> wasmtime::Result<()> {
    use wasmtime_wasi::p2::bindings::{cli, clocks, filesystem, random};
    let l = linker;
    clocks::wall_clock::add_to_linker::<PluginCtx, WasiClocks>(l, |t| t.clocks())?;
    clocks::monotonic_clock::add_to_linker::<PluginCtx, WasiClocks>(l, |t| t.clocks())?;
    filesystem::preopens::add_to_linker::<PluginCtx, WasiFilesystem>(l, |t| t.filesystem())?;
    random::random::add_to_linker::<PluginCtx, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    random::insecure::add_to_linker::<PluginCtx, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    random::insecure_seed::add_to_linker::<PluginCtx, WasiRandom>(l, |t| t.ctx().ctx.random())?;
    cli::exit::add_to_linker::<PluginCtx, WasiCli>(l, |t| t.cli())?;
    cli::environment::add_to_linker::<PluginCtx, WasiCli>(l, |t| t.cli())?;
    cli::stdin::add_to_linker::<PluginCtx, WasiCli>(l, |t| t.cli())?;
    cli::stdout::add_to_linker::<PluginCtx, WasiCli>(l, |t| t.cli())?;
    cli::stderr::add_to_linker::<PluginCtx, WasiCli>(l, |t| t.cli())?;
    cli::terminal_input::add_to_linker::<PluginCtx, WasiCli>(l, |t| t.cli())?;
    cli::terminal_output::add_to_linker::<PluginCtx, WasiCli>(l, |t| t.cli())?;
    cli::terminal_stdin::add_to_linker::<PluginCtx, WasiCli>(l, |t| t.cli())?;
    cli::terminal_stdout::add_to_linker::<PluginCtx, WasiCli>(l, |t| t.cli())?;
    cli::terminal_stderr::add_to_linker::<PluginCtx, WasiCli>(l, |t| t.cli())?;
    wasmtime_wasi_io::bindings::wasi::io::error::add_to_linker::<PluginCtx, Io>(l, |t| {
        IoView(&mut t.table)
    })?;
    poll::add_to_linker::<PluginCtx, Io>(l, |t| IoView(&mut t.table))?;
    streams::add_to_linker::<PluginCtx, Io>(l, |t| IoView(&mut t.table))?;
    Ok(())
}

// === impl LogStream ===

/// A plugin's stdout or stderr: complete lines go to `tracing` under the plugin's name.
#[derive(Clone)]
struct LogStream {
    plugin: Arc<str>,
    stream: &'static str,
    line: Vec<u8>,
}

impl LogStream {
    fn emit(&self, bytes: &[u8]) {
        let text = String::from_utf8_lossy(&bytes[..bytes.len().min(MAX_LINE)]);
        tracing::info!(plugin = %self.plugin, stream = self.stream, "{}", text.trim_end());
    }
}

impl IsTerminal for LogStream {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogStream {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(tokio::io::sink())
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogStream {
    async fn ready(&mut self) {}
}

impl OutputStream for LogStream {
    fn write(&mut self, bytes: bytes::Bytes) -> StreamResult<()> {
        for &b in bytes.iter() {
            if b == b'\n' {
                self.emit(&self.line);
                self.line.clear();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        if !self.line.is_empty() {
            self.emit(&self.line);
            self.line.clear();
        }
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        Ok(64 * 1024)
    }
}

// === impl Io ===

struct Io;

impl HasData for Io {
    type Data<'a> = IoView<'a>;
}

/// `wasi:io` over the instance's resource table, never blocking.
struct IoView<'a>(&'a mut ResourceTable);

impl wasmtime_wasi_io::bindings::wasi::io::error::Host for IoView<'_> {}

impl wasmtime_wasi_io::bindings::wasi::io::error::HostError for IoView<'_> {
    fn to_debug_string(
        &mut self,
        err: Resource<wasmtime_wasi_io::streams::Error>,
    ) -> wasmtime::Result<String> {
        wasmtime_wasi_io::bindings::wasi::io::error::HostError::to_debug_string(self.0, err)
    }

    fn drop(&mut self, err: Resource<wasmtime_wasi_io::streams::Error>) -> wasmtime::Result<()> {
        wasmtime_wasi_io::bindings::wasi::io::error::HostError::drop(self.0, err)
    }
}

impl poll::Host for IoView<'_> {
    fn poll(&mut self, pollables: Vec<Resource<DynPollable>>) -> wasmtime::Result<Vec<u32>> {
        // Everything a plugin can reach is ready at once; a plugin cannot wait.
        Ok((0..pollables.len() as u32).collect())
    }
}

impl poll::HostPollable for IoView<'_> {
    fn ready(&mut self, _pollable: Resource<DynPollable>) -> wasmtime::Result<bool> {
        Ok(true)
    }

    fn block(&mut self, _pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        Ok(())
    }

    fn drop(&mut self, pollable: Resource<DynPollable>) -> wasmtime::Result<()> {
        self.0.drop_pollable(pollable)
    }
}

trait DropPollable {
    fn drop_pollable(&mut self, p: Resource<DynPollable>) -> wasmtime::Result<()>;
}

impl DropPollable for ResourceTable {
    fn drop_pollable(&mut self, p: Resource<DynPollable>) -> wasmtime::Result<()> {
        wasmtime_wasi_io::bindings::wasi::io::poll::HostPollable::drop(self, p)
    }
}

impl streams::Host for IoView<'_> {
    fn convert_stream_error(&mut self, err: StreamError) -> wasmtime::Result<streams::StreamError> {
        match err {
            StreamError::Closed => Ok(streams::StreamError::Closed),
            StreamError::LastOperationFailed(e) => {
                Ok(streams::StreamError::LastOperationFailed(self.0.push(e)?))
            }
            StreamError::Trap(e) => Err(e),
        }
    }
}

impl IoView<'_> {
    fn out(&mut self, stream: &Resource<DynOutputStream>) -> StreamResult<&mut DynOutputStream> {
        self.0
            .get_mut(stream)
            .map_err(|e| StreamError::Trap(e.into()))
    }
}

impl streams::HostOutputStream for IoView<'_> {
    fn drop(&mut self, stream: Resource<DynOutputStream>) -> wasmtime::Result<()> {
        let mut s = self.0.delete(stream)?;
        // Flush a trailing partial line; our streams never fail to flush.
        let _ = s.flush();
        Ok(())
    }

    fn check_write(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<u64> {
        AsyncOut::check_write(self.0, stream)
    }

    fn write(&mut self, stream: Resource<DynOutputStream>, bytes: Vec<u8>) -> StreamResult<()> {
        AsyncOut::write(self.0, stream, bytes)
    }

    fn blocking_write_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        bytes: Vec<u8>,
    ) -> StreamResult<()> {
        let s = self.out(&stream)?;
        s.write(bytes.into())?;
        s.flush()
    }

    fn blocking_write_zeroes_and_flush(
        &mut self,
        stream: Resource<DynOutputStream>,
        len: u64,
    ) -> StreamResult<()> {
        let s = self.out(&stream)?;
        s.write_zeroes(usize::try_from(len).unwrap_or(usize::MAX).min(64 * 1024))?;
        s.flush()
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynOutputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        AsyncOut::subscribe(self.0, stream)
    }

    fn write_zeroes(&mut self, stream: Resource<DynOutputStream>, len: u64) -> StreamResult<()> {
        AsyncOut::write_zeroes(self.0, stream, len)
    }

    fn flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        AsyncOut::flush(self.0, stream)
    }

    fn blocking_flush(&mut self, stream: Resource<DynOutputStream>) -> StreamResult<()> {
        self.out(&stream)?.flush()
    }

    fn splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        AsyncOut::splice(self.0, dst, src, len)
    }

    fn blocking_splice(
        &mut self,
        dst: Resource<DynOutputStream>,
        src: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<u64> {
        AsyncOut::splice(self.0, dst, src, len)
    }
}

impl streams::HostInputStream for IoView<'_> {
    fn drop(&mut self, stream: Resource<DynInputStream>) -> wasmtime::Result<()> {
        self.0.delete(stream)?;
        Ok(())
    }

    fn read(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<Vec<u8>> {
        AsyncIn::read(self.0, stream, len)
    }

    fn blocking_read(
        &mut self,
        stream: Resource<DynInputStream>,
        len: u64,
    ) -> StreamResult<Vec<u8>> {
        // stdin is empty and closed; nothing can block.
        AsyncIn::read(self.0, stream, len)
    }

    fn skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        AsyncIn::skip(self.0, stream, len)
    }

    fn blocking_skip(&mut self, stream: Resource<DynInputStream>, len: u64) -> StreamResult<u64> {
        AsyncIn::skip(self.0, stream, len)
    }

    fn subscribe(
        &mut self,
        stream: Resource<DynInputStream>,
    ) -> wasmtime::Result<Resource<DynPollable>> {
        AsyncIn::subscribe(self.0, stream)
    }
}
