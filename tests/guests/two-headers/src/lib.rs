//! Reads two headers per request (a user and a tenant), the typical cost of a header-matching
//! policy, so benchmarks measure exactly that.

use weft_sdk::{Filter, Hooks, Request, RequestAction, export_filter};

/// The plugin.
pub struct TwoHeaders;

impl Filter for TwoHeaders {
    type Config = serde::de::IgnoredAny;

    fn new(_: serde::de::IgnoredAny) -> Result<Self, String> {
        Ok(TwoHeaders)
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn on_request(&self, _call_id: u64, req: &mut Request<'_>) -> RequestAction {
        let user = req.header("x-user");
        let tenant = req.header("x-tenant");
        std::hint::black_box((user, tenant));
        RequestAction::Continue
    }
}

export_filter!(TwoHeaders);
