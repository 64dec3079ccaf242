//! Shared state for plugins: versioned bytes and counters, private to each plugin name, seen
//! by every instance on every worker, and kept when a plugin is swapped for a new build.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Bounds on what one plugin may keep.
#[derive(Debug, Clone, Copy)]
pub struct StateLimits {
    /// Keys per plugin.
    pub max_keys: usize,
    /// Bytes per value.
    pub max_value_bytes: usize,
}

impl Default for StateLimits {
    fn default() -> Self {
        StateLimits {
            max_keys: 100_000,
            max_value_bytes: 64 * 1024,
        }
    }
}

/// Why a write did not happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateWriteError {
    /// Version mismatch; the current version (0: absent).
    Conflict(u64),
    /// Value over the size bound.
    TooLarge,
    /// Key bound reached.
    Full,
}

struct Entry {
    value: Vec<u8>,
    version: u64,
    expires_at: Option<Instant>,
}

impl Entry {
    fn live(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|t| t > now)
    }
}

#[derive(Default)]
struct Space {
    entries: HashMap<String, Entry>,
}

impl Space {
    fn live_mut(&mut self, key: &str, now: Instant) -> Option<&mut Entry> {
        if self.entries.get(key).is_some_and(|e| !e.live(now)) {
            self.entries.remove(key);
        }
        self.entries.get_mut(key)
    }

    fn make_room(&mut self, limits: &StateLimits, now: Instant) -> Result<(), StateWriteError> {
        if self.entries.len() < limits.max_keys {
            return Ok(());
        }
        self.entries.retain(|_, e| e.live(now));
        if self.entries.len() < limits.max_keys {
            Ok(())
        } else {
            Err(StateWriteError::Full)
        }
    }
}

struct Counter {
    value: i64,
    expires_at: Option<Instant>,
}

/// The state of every plugin, keyed by the plugin's interned name.
pub struct SharedState {
    // One lock: each operation is a hash lookup and a small copy, far shorter than the Wasm
    // call around it; shard it if profiles ever say otherwise.
    spaces: Mutex<HashMap<u32, Space>>,
    counters: Mutex<HashMap<(u32, u64), Counter>>,
    next_version: std::sync::atomic::AtomicU64,
    limits: StateLimits,
}

fn expiry(now: Instant, ttl_ms: u32) -> Option<Instant> {
    (ttl_ms > 0).then(|| now + Duration::from_millis(u64::from(ttl_ms)))
}

impl SharedState {
    /// Empty state with these bounds.
    pub fn new(limits: StateLimits) -> Self {
        SharedState {
            spaces: Mutex::new(HashMap::new()),
            counters: Mutex::new(HashMap::new()),
            next_version: std::sync::atomic::AtomicU64::new(1),
            limits,
        }
    }

    fn version(&self) -> u64 {
        self.next_version
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads a key: value and version.
    pub fn get(&self, plugin: u32, key: &str) -> Option<(Vec<u8>, u64)> {
        let now = Instant::now();
        let mut spaces = self.spaces.lock();
        let e = spaces.get_mut(&plugin)?.live_mut(key, now)?;
        Some((e.value.clone(), e.version))
    }

    /// Writes a key, optionally only at an expected version (0: only when absent).
    pub fn set(
        &self,
        plugin: u32,
        key: &str,
        value: &[u8],
        if_version: Option<u64>,
        ttl_ms: u32,
    ) -> Result<u64, StateWriteError> {
        if value.len() > self.limits.max_value_bytes || key.len() > self.limits.max_value_bytes {
            return Err(StateWriteError::TooLarge);
        }
        let now = Instant::now();
        let version = self.version();
        let mut spaces = self.spaces.lock();
        let space = spaces.entry(plugin).or_default();
        let current = space.live_mut(key, now).map(|e| e.version).unwrap_or(0);
        if let Some(expected) = if_version
            && expected != current
        {
            return Err(StateWriteError::Conflict(current));
        }
        if current == 0 {
            space.make_room(&self.limits, now)?;
        }
        space.entries.insert(
            key.to_string(),
            Entry {
                value: value.to_vec(),
                version,
                expires_at: expiry(now, ttl_ms),
            },
        );
        Ok(version)
    }

    /// Adds to a little-endian i64 counter, creating it at 0; returns the new value.
    pub fn add(
        &self,
        plugin: u32,
        key: &str,
        delta: i64,
        ttl_ms: u32,
    ) -> Result<i64, StateWriteError> {
        let now = Instant::now();
        let version = self.version();
        let mut spaces = self.spaces.lock();
        let space = spaces.entry(plugin).or_default();
        if let Some(e) = space.live_mut(key, now) {
            let current = <[u8; 8]>::try_from(e.value.as_slice())
                .map(i64::from_le_bytes)
                .unwrap_or(0);
            let next = current.wrapping_add(delta);
            e.value.clear();
            e.value.extend_from_slice(&next.to_le_bytes());
            e.version = version;
            return Ok(next);
        }
        if key.len() > self.limits.max_value_bytes {
            return Err(StateWriteError::TooLarge);
        }
        space.make_room(&self.limits, now)?;
        space.entries.insert(
            key.to_string(),
            Entry {
                value: delta.to_le_bytes().to_vec(),
                version,
                expires_at: expiry(now, ttl_ms),
            },
        );
        Ok(delta)
    }

    /// Adds to a numeric-keyed counter, creating it at 0; returns the new value. Past the key
    /// bound (one bound for every plugin's counters together), expired counters are swept;
    /// still full, a new counter is not kept and the call returns `delta` as if it were.
    pub fn counter_add(&self, plugin: u32, key: u64, delta: i64, ttl_ms: u32) -> i64 {
        let now = Instant::now();
        let mut counters = self.counters.lock();
        if let Some(c) = counters.get_mut(&(plugin, key)) {
            if c.expires_at.is_none_or(|t| t > now) {
                c.value = c.value.wrapping_add(delta);
                return c.value;
            }
            c.value = delta;
            c.expires_at = expiry(now, ttl_ms);
            return delta;
        }
        if counters.len() >= self.limits.max_keys {
            counters.retain(|_, c| c.expires_at.is_none_or(|t| t > now));
        }
        if counters.len() >= self.limits.max_keys {
            // Counters are soft state (failure runs, budget windows): losing one under
            // pressure is better than refusing to count.
            return delta;
        }
        counters.insert(
            (plugin, key),
            Counter {
                value: delta,
                expires_at: expiry(now, ttl_ms),
            },
        );
        delta
    }

    /// Removes a numeric-keyed counter.
    pub fn counter_reset(&self, plugin: u32, key: u64) {
        self.counters.lock().remove(&(plugin, key));
    }

    /// Removes a key.
    pub fn delete(&self, plugin: u32, key: &str) {
        if let Some(space) = self.spaces.lock().get_mut(&plugin) {
            space.entries.remove(key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_and_set_by_version() {
        let s = SharedState::new(StateLimits::default());
        let v1 = s.set(1, "k", b"a", Some(0), 0).expect("absent");
        assert_eq!(
            s.set(1, "k", b"b", Some(0), 0),
            Err(StateWriteError::Conflict(v1))
        );
        let v2 = s.set(1, "k", b"b", Some(v1), 0).expect("matching version");
        assert!(v2 > v1);
        assert_eq!(s.get(1, "k"), Some((b"b".to_vec(), v2)));
        assert_eq!(s.get(2, "k"), None, "state is private to each plugin");
    }

    #[test]
    fn counters_add_and_expire() {
        let s = SharedState::new(StateLimits::default());
        assert_eq!(s.add(1, "c", 2, 0), Ok(2));
        assert_eq!(s.add(1, "c", -5, 0), Ok(-3));
        assert_eq!(s.add(1, "t", 1, 1), Ok(1));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(
            s.add(1, "t", 1, 1),
            Ok(1),
            "expired key starts again from 0"
        );
    }

    #[test]
    fn numeric_counters_add_reset_and_stay_private() {
        let s = SharedState::new(StateLimits::default());
        assert_eq!(s.counter_add(1, 7, 1, 0), 1);
        assert_eq!(s.counter_add(1, 7, 1, 0), 2);
        assert_eq!(
            s.counter_add(2, 7, 1, 0),
            1,
            "another plugin's counter 7 is its own"
        );
        s.counter_reset(1, 7);
        assert_eq!(s.counter_add(1, 7, 0, 0), 0);
    }

    #[test]
    fn bounds_keys_and_values() {
        let s = SharedState::new(StateLimits {
            max_keys: 2,
            max_value_bytes: 4,
        });
        assert_eq!(
            s.set(1, "a", b"12345", None, 0),
            Err(StateWriteError::TooLarge)
        );
        s.set(1, "a", b"1", None, 0).expect("room");
        s.set(1, "b", b"1", None, 0).expect("room");
        assert_eq!(s.set(1, "c", b"1", None, 0), Err(StateWriteError::Full));
        s.set(1, "a", b"2", None, 0)
            .expect("overwriting needs no room");
    }
}
