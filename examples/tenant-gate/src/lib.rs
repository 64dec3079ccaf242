//! The example plugin of `sdk/README.md`, kept compiling and tested.

use serde::Deserialize;
use weft_sdk::{Filter, Hooks, LocalResponse, Request, RequestAction, export_filter};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
/// Configuration.
pub struct Config {
    /// Tenants allowed through; everyone else gets 403.
    allow: Vec<String>,
}

/// The plugin.
pub struct TenantGate {
    allow: Vec<String>,
}

impl Filter for TenantGate {
    type Config = Config;

    fn new(config: Config) -> Result<Self, String> {
        if config.allow.is_empty() {
            return Err("allow: name at least one tenant".into());
        }
        Ok(TenantGate {
            allow: config.allow,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn on_request(&self, _call_id: u64, req: &mut Request<'_>) -> RequestAction {
        match req.header_str("x-tenant") {
            Some(t) if self.allow.contains(&t) => RequestAction::Continue,
            _ => RequestAction::Respond(LocalResponse::text(403, "tenant not allowed\n")),
        }
    }
}

export_filter!(TenantGate);

#[cfg(test)]
mod tests {
    use super::*;
    use weft_sdk::testing::{Harness, TestRequest};

    #[test]
    fn only_allowed_tenants_pass() {
        let mut h = Harness::<TenantGate>::new(r#"{"allow":["acme"]}"#).unwrap();
        let mut ok = TestRequest::get("payments", "/").with_header("x-tenant", "acme");
        assert_eq!(h.on_request(&mut ok).1, RequestAction::Continue);
        let mut no = TestRequest::get("payments", "/").with_header("x-tenant", "evil");
        assert!(matches!(h.on_request(&mut no).1, RequestAction::Respond(r) if r.status == 403));
    }
}
