//! Authorization, shaped like the proxy-wasm Rust SDK's `http_auth_random` example but deciding
//! locally: a request without `authorization: Bearer <token>` (the token from `pluginConfig`)
//! is refused with 403 before it reaches the app. A configuration without a token is refused.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { token: String::new() })
    });
}}

struct Root {
    token: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self
            .get_plugin_configuration()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        match config.as_ref().and_then(|c| c["token"].as_str()) {
            Some(token) if !token.is_empty() => {
                self.token = token.to_string();
                true
            }
            _ => {
                log::error!("pluginConfig.token is required");
                false
            }
        }
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Auth {
            expected: format!("Bearer {}", self.token),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Auth {
    expected: String,
}

impl Context for Auth {}

impl HttpContext for Auth {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if self.get_http_request_header("authorization").as_deref() == Some(&self.expected) {
            return Action::Continue;
        }
        log::info!("access forbidden");
        self.send_http_response(
            403,
            vec![("x-denied-by", "pw-auth"), ("content-type", "text/plain")],
            Some(b"Access forbidden.\n"),
        );
        Action::Pause
    }
}
