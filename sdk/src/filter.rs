//! The trait a plugin implements.

use crate::{
    Attempt, AttemptAction, CallSummary, Hooks, Request, RequestAction, Response, ResponseAction,
};
use serde::de::DeserializeOwned;

/// A filter plugin: built once per instance from its configuration, then called on the hooks it
/// names. Hooks take `&self`: anything a plugin must remember across calls or share with its
/// other instances goes through [`crate::host::state`].
pub trait Filter: Sized + 'static {
    /// The plugin's configuration, parsed from the JSON the host passes (`{}` when none).
    type Config: DeserializeOwned;

    /// Builds the filter, or says why the configuration is wrong.
    fn new(config: Self::Config) -> Result<Self, String>;

    /// The hooks the host should call; it calls no others.
    fn hooks(&self) -> Hooks;

    /// A request head arrived: pick a destination, edit headers, bound timeouts, or answer.
    fn on_request(&self, _call_id: u64, _req: &mut Request<'_>) -> RequestAction {
        RequestAction::Continue
    }

    /// An upstream attempt ended: ask for a retry, or observe (outlier detection).
    fn on_attempt_end(&self, _attempt: &Attempt) -> AttemptAction {
        AttemptAction::Done
    }

    /// The response head is ready: edit headers, or replace the response.
    fn on_response(&self, _call_id: u64, _resp: &mut Response<'_>) -> ResponseAction {
        ResponseAction::Continue
    }

    /// The call is over: record telemetry.
    fn on_done(&self, _summary: &CallSummary) {}
}

/// Parses a JSON configuration into a filter. Shared by the Wasm export and the test double
/// so both reject the same configurations with the same words.
pub(crate) fn build<F: Filter>(config: &str) -> Result<F, String> {
    let text = if config.trim().is_empty() {
        "{}"
    } else {
        config
    };
    let parsed: F::Config =
        serde_json::from_str(text).map_err(|e| format!("invalid configuration: {e}"))?;
    F::new(parsed)
}
