//! The Rust SDK for Weft filter plugins.
//!
//! A plugin is a type implementing [`Filter`], exported with [`export_filter!`], and built for
//! `wasm32-wasip2`. Every hook has a no-op default; a plugin overrides the ones it needs and
//! names them in [`Filter::hooks`], because the host calls nothing else.
//!
//! Built for the native target, the same code runs against [`testing`], an in-process double
//! of the host, so a plugin's logic is unit-tested with plain `cargo test`.

extern crate self as weft_sdk;

pub mod config;
mod filter;
pub mod host;
mod http;
#[cfg(feature = "matching")]
pub mod matching;
mod types;

#[cfg(not(target_arch = "wasm32"))]
pub mod testing;

#[cfg(target_arch = "wasm32")]
#[doc(hidden)]
pub mod wasm;

pub use filter::Filter;
pub use http::{Request, Response};
pub use types::*;

/// Exports a [`Filter`] implementation as the plugin's `weft:filter/filter` interface.
///
/// On the native target it expands to nothing, so the crate still builds and tests natively.
#[macro_export]
macro_rules! export_filter {
    ($ty:ty) => {
        #[cfg(target_arch = "wasm32")]
        #[doc(hidden)]
        type __WeftExportedFilter = $crate::wasm::Adapter<$ty>;
        #[cfg(target_arch = "wasm32")]
        $crate::wasm::__export_plugin!(__WeftExportedFilter with_types_in $crate::wasm::bindings);
    };
}
