//! The access-log writer: lines go through a bounded queue to a thread that writes them to
//! stdout, flushing whenever the queue runs dry. A full queue drops the line and counts it
//! (`weft_access_log_dropped_total`): a call never waits for the log.

use prometheus::{IntCounter, Registry};
use std::io::Write as _;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

/// Lines waiting to be written, at most.
const QUEUE: usize = 8192;

/// Where log lines are sent.
#[derive(Clone)]
pub struct Writer {
    queue: SyncSender<String>,
    dropped: IntCounter,
}

impl Writer {
    /// Starts the writer thread (to stdout) and registers its counter.
    pub fn stdout(registry: &Registry) -> std::io::Result<Writer> {
        let dropped = IntCounter::new(
            "weft_access_log_dropped_total",
            "Access-log lines dropped because the writer was behind.",
        )
        .map_err(std::io::Error::other)?;
        registry
            .register(Box::new(dropped.clone()))
            .map_err(std::io::Error::other)?;
        let (queue, lines) = sync_channel::<String>(QUEUE);
        std::thread::Builder::new()
            .name("weft-access-log".into())
            .spawn(move || {
                let stdout = std::io::stdout();
                while let Ok(line) = lines.recv() {
                    let mut out = stdout.lock();
                    let mut failed = writeln!(out, "{line}").is_err();
                    // Whatever else is waiting goes out in the same flush.
                    while let Ok(more) = lines.try_recv() {
                        failed |= writeln!(out, "{more}").is_err();
                    }
                    failed |= out.flush().is_err();
                    // Nobody reads stdout any more: stop writing, the queue will fill and drop.
                    if failed {
                        return;
                    }
                }
            })?;
        Ok(Writer { queue, dropped })
    }

    /// Queues a line; drops it (counted) when the writer is behind.
    pub fn write(&self, line: String) {
        match self.queue.try_send(line) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}
