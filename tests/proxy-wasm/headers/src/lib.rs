//! Header manipulation, shaped like the proxy-wasm Rust SDK's `http_headers` example: adds a
//! header to each request and each response, the values from `pluginConfig`, and echoes a
//! request header and a few properties into the response.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { request: String::new(), response: String::new() })
    });
}}

struct Root {
    request: String,
    response: String,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let Some(bytes) = self.get_plugin_configuration() else {
            log::warn!("no configuration");
            return false;
        };
        let Ok(config) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
            log::warn!("the configuration is not JSON");
            return false;
        };
        self.request = config["request"].as_str().unwrap_or("").to_string();
        self.response = config["response"].as_str().unwrap_or("").to_string();
        true
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Headers {
            request: self.request.clone(),
            response: self.response.clone(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Headers {
    request: String,
    response: String,
}

impl Context for Headers {}

impl HttpContext for Headers {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        self.add_http_request_header("x-pw-request", &self.request);
        if let Some(path) = self.get_http_request_header(":path") {
            self.set_http_request_header("x-pw-saw-path", Some(&path));
        }
        self.set_http_request_header("x-strip-me", None);
        // What a plugin earlier in the chain did to the request is visible here.
        if let Some(tag) = self.get_http_request_header("x-chaos-tag") {
            self.set_http_request_header("x-pw-saw-chaos", Some(&tag));
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.add_http_response_header("x-pw-response", &self.response);
        // The request's headers are still readable while the response passes (as in Envoy).
        if let Some(v) = self.get_http_request_header("x-echo") {
            self.set_http_response_header("x-pw-echo", Some(&v));
        }
        let prop = |path: Vec<&str>| {
            self.get_property(path)
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|| "-".into())
        };
        let code = self
            .get_property(vec!["response", "code"])
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(|b| i64::from_le_bytes(b).to_string())
            .unwrap_or_else(|| "-".into());
        let mtls = self
            .get_property(vec!["connection", "mtls"])
            .map(|b| {
                if b.first() == Some(&1) {
                    "true"
                } else {
                    "false"
                }
            })
            .unwrap_or("-");
        let seen = format!(
            "plugin={};root={};ns={};code={};mtls={};source={}",
            prop(vec!["plugin_name"]),
            prop(vec!["plugin_root_id"]),
            prop(vec!["node", "metadata", "NAMESPACE"]),
            code,
            mtls,
            prop(vec!["source", "principal"]),
        );
        self.set_http_response_header("x-pw-properties", Some(&seen));
        Action::Continue
    }
}
