//! The workspace's Wasm guests, built from source by this crate's build script.
//!
//! Built-in plugins are embedded (`CANARY`, `RETRY`, `OUTLIER`, `TELEMETRY`, `FAULT`, `HEADERS`); every
//! guest, test plugins included, is also named by path (`CHAOS_PATH`, ...).

include!(concat!(env!("OUT_DIR"), "/guests.rs"));
