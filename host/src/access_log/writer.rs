//! The access-log writer: lines go through a bounded queue to a thread that writes them to
//! stdout in batches, at most [`FLUSH_INTERVAL`] after the first line of a batch arrived (as
//! Envoy flushes its access logs on an interval): between batches the thread sleeps rather
//! than waits on the queue, so a busy sidecar pays no wake-up per line. A full queue drops
//! the line and counts it (`weft_access_log_dropped_total`): a call never waits for the log.

use prometheus::{IntCounter, Registry};
use std::io::Write as _;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

/// Lines waiting to be written, at most.
const QUEUE: usize = 32_768;

/// How long a line may wait to be written (Envoy's default is 1 s).
pub const FLUSH_INTERVAL: std::time::Duration = std::time::Duration::from_millis(100);

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
                // Lines are gathered here and written with one call per batch: stdout's own
                // buffer is line-buffered, a write per line.
                let mut batch: Vec<u8> = Vec::with_capacity(64 << 10);
                const BATCH: usize = 1 << 20;
                while let Ok(first) = lines.recv() {
                    // The rest of the batch gathers meanwhile, without waking anyone.
                    std::thread::sleep(FLUSH_INTERVAL);
                    let mut next = Some(first);
                    // Everything waiting goes out, in writes of up to 1 MiB.
                    loop {
                        batch.clear();
                        if let Some(line) = next.take() {
                            batch.extend_from_slice(line.as_bytes());
                            batch.push(b'\n');
                        }
                        while batch.len() < BATCH
                            && let Ok(more) = lines.try_recv()
                        {
                            batch.extend_from_slice(more.as_bytes());
                            batch.push(b'\n');
                        }
                        if batch.is_empty() {
                            break;
                        }
                        let mut out = stdout.lock();
                        // Nobody reads stdout any more: stop writing; the queue fills and drops.
                        if out.write_all(&batch).is_err() || out.flush().is_err() {
                            return;
                        }
                        if batch.len() < BATCH {
                            break;
                        }
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
