//! Sets one request header per call: the benchmark runs it next to the same filter written
//! against proxy-wasm (`tests/proxy-wasm/set-header`).

use weft_sdk::{Filter, Hooks, Request, RequestAction, export_filter};

/// The plugin.
pub struct SetHeader;

impl Filter for SetHeader {
    type Config = serde::de::IgnoredAny;

    fn new(_: serde::de::IgnoredAny) -> Result<Self, String> {
        Ok(SetHeader)
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn on_request(&self, _call_id: u64, req: &mut Request<'_>) -> RequestAction {
        let _ = req.set_header("x-bench", b"1");
        RequestAction::Continue
    }
}

export_filter!(SetHeader);
