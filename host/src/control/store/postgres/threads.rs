//! The store's two long-lived connections besides the calls': the listener that wakes the
//! follower, and the singleton's lease.

use super::SINGLETON_LOCK;
use crate::control::store::StoreError;
use crate::control::store::tls::StoreTls;
use postgres::fallible_iterator::FallibleIterator;
use postgres::{Client, Config};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How often a lost connection is dialled again, and the lease looked at.
const RETRY: Duration = Duration::from_secs(1);

/// A connection, dialled every [`RETRY`] until one is made; none once `stop` is set.
fn dial(config: &Config, tls: &StoreTls, stop: &AtomicBool) -> Option<Client> {
    while !stop.load(Ordering::Relaxed) {
        match config.connect(tls.clone()) {
            Ok(client) => return Some(client),
            Err(_) => std::thread::sleep(RETRY),
        }
    }
    None
}

/// A thread that LISTENs for other replicas' writes and wakes the follower; it reconnects
/// after the database comes back.
pub(super) fn spawn_listener(
    config: Config,
    tls: StoreTls,
    changed: Arc<tokio::sync::Notify>,
    stop: Arc<AtomicBool>,
) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name("weft-store-listen".into())
        .spawn(move || {
            while let Some(mut client) = dial(&config, &tls, &stop) {
                if client.batch_execute("LISTEN weft").is_err() {
                    std::thread::sleep(RETRY);
                    continue;
                }
                // Whatever happened while it was not listening is looked at now.
                changed.notify_one();
                'listening: while !stop.load(Ordering::Relaxed) {
                    let mut notifications = client.notifications();
                    let mut waiting = notifications.timeout_iter(Duration::from_secs(1));
                    loop {
                        match waiting.next() {
                            Ok(Some(_)) => changed.notify_one(),
                            Ok(None) => break,
                            Err(_) => break 'listening,
                        }
                    }
                    drop(waiting);
                    drop(notifications);
                    if client.is_closed() {
                        break;
                    }
                }
            }
        })
        .map(drop)
        .map_err(|e| StoreError::Database(format!("starting the listener thread: {e}")))
}

/// A thread that holds the singleton lock while its connection lives; PostgreSQL releases
/// the lock when a replica dies, and another takes it at its next try.
pub(super) fn spawn_singleton(
    config: Config,
    tls: StoreTls,
    leader: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
) -> Result<(), StoreError> {
    std::thread::Builder::new()
        .name("weft-store-lease".into())
        .spawn(move || {
            while let Some(mut client) = dial(&config, &tls, &stop) {
                while !stop.load(Ordering::Relaxed) {
                    let held = if leader.load(Ordering::Relaxed) {
                        client.simple_query("SELECT 1").map(|_| true)
                    } else {
                        client
                            .query_one("SELECT pg_try_advisory_lock($1)", &[&SINGLETON_LOCK])
                            .map(|r| r.get::<_, bool>(0))
                    };
                    match held {
                        Ok(held) => {
                            if held && !leader.swap(true, Ordering::Relaxed) {
                                tracing::info!("this replica does the singleton work now");
                            }
                        }
                        Err(_) => {
                            if leader.swap(false, Ordering::Relaxed) {
                                tracing::warn!("lost the store: no longer the singleton");
                            }
                            break;
                        }
                    }
                    std::thread::sleep(RETRY);
                }
            }
            leader.store(false, Ordering::Relaxed);
        })
        .map(drop)
        .map_err(|e| StoreError::Database(format!("starting the lease thread: {e}")))
}
