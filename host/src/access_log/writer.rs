//! The access-log writer: lines go through a bounded queue to a thread that writes them, to
//! stdout or to their sink's file, in batches, at most [`FLUSH_INTERVAL`] after the first line
//! of a batch arrived (as Envoy flushes its access logs on an interval): between batches the
//! thread sleeps rather than waits on the queue, so a busy sidecar pays no wake-up per line. A
//! full queue drops the line and counts it (`weft_access_log_dropped_total`): a call never
//! waits for the log. A file is opened for appending (created 0644) at its first line; one that
//! cannot be opened or written drops its lines, counted, and is tried again a second later.

use prometheus::{IntCounter, Registry};
use std::collections::HashMap;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

/// Lines waiting to be written, at most.
const QUEUE: usize = 32_768;

/// How long a line may wait to be written (Envoy's default is 1 s).
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// The most bytes gathered for one write.
const BATCH: usize = 1 << 20;

/// A line and its file (none: stdout).
type Line = (Option<Arc<str>>, String);

/// Where log lines are sent.
#[derive(Clone)]
pub struct Writer {
    queue: SyncSender<Line>,
    dropped: IntCounter,
}

/// A file the thread writes to, or why it cannot, until when.
enum Out {
    Open(std::fs::File),
    Failed(Instant),
}

fn open(path: &str) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt as _;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o644)
        .open(path)
}

/// The thread: batches of lines, each written to its place.
fn run(lines: Receiver<Line>, dropped: IntCounter) {
    let stdout = std::io::stdout();
    // Lines are gathered here and written with one call per batch and place: stdout's own
    // buffer is line-buffered, a write per line.
    let mut batches: HashMap<Option<Arc<str>>, Vec<u8>> = HashMap::new();
    let mut files: HashMap<Arc<str>, Out> = HashMap::new();
    let mut stdout_gone = false;
    while let Ok(first) = lines.recv() {
        // The rest of the batch gathers meanwhile, without waking anyone.
        std::thread::sleep(FLUSH_INTERVAL);
        let mut next = Some(first);
        loop {
            let mut gathered = 0;
            while gathered < BATCH {
                let Some((place, line)) = next.take().or_else(|| lines.try_recv().ok()) else {
                    break;
                };
                gathered += line.len() + 1;
                let batch = batches.entry(place).or_default();
                batch.extend_from_slice(line.as_bytes());
                batch.push(b'\n');
            }
            if gathered == 0 {
                break;
            }
            for (place, batch) in batches.iter_mut().filter(|(_, b)| !b.is_empty()) {
                let lines_in = || batch.iter().filter(|b| **b == b'\n').count() as u64;
                let written = match place {
                    None if stdout_gone => false,
                    None => {
                        let mut out = stdout.lock();
                        let ok = out.write_all(batch).is_ok() && out.flush().is_ok();
                        // Nobody reads stdout any more: stop writing there.
                        stdout_gone = !ok;
                        ok
                    }
                    Some(path) => {
                        let out = files
                            .entry(path.clone())
                            .or_insert_with(|| match open(path) {
                                Ok(f) => Out::Open(f),
                                Err(e) => {
                                    tracing::warn!(%path, "access log file: {e}");
                                    Out::Failed(Instant::now())
                                }
                            });
                        if let Out::Failed(since) = out
                            && since.elapsed() >= Duration::from_secs(1)
                            && let Ok(f) = open(path)
                        {
                            *out = Out::Open(f);
                        }
                        match out {
                            Out::Open(f) => {
                                let ok = f.write_all(batch).is_ok();
                                if !ok {
                                    tracing::warn!(%path, "access log file: a write failed");
                                    *out = Out::Failed(Instant::now());
                                }
                                ok
                            }
                            Out::Failed(_) => false,
                        }
                    }
                };
                if !written {
                    dropped.inc_by(lines_in());
                }
                batch.clear();
            }
            if gathered < BATCH {
                break;
            }
        }
    }
}

impl Writer {
    /// Starts the writer thread and registers its counter.
    pub fn start(registry: &Registry) -> std::io::Result<Writer> {
        let dropped = IntCounter::new(
            "weft_access_log_dropped_total",
            "Access-log lines dropped because the writer was behind or could not write them.",
        )
        .map_err(std::io::Error::other)?;
        registry
            .register(Box::new(dropped.clone()))
            .map_err(std::io::Error::other)?;
        let (queue, lines) = sync_channel::<Line>(QUEUE);
        let counter = dropped.clone();
        std::thread::Builder::new()
            .name("weft-access-log".into())
            .spawn(move || run(lines, counter))?;
        Ok(Writer { queue, dropped })
    }

    /// Queues a line for `path` (none: stdout); drops it (counted) when the writer is behind.
    pub fn write(&self, path: Option<Arc<str>>, line: String) {
        match self.queue.try_send((path, line)) {
            Ok(()) => {}
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => self.dropped.inc(),
        }
    }
}
