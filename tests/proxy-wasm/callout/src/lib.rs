//! Authorization with an HTTP callout, shaped like the SDK's `http_auth_random` example: each
//! request is paused while an auth service is asked (`/status/200` when the request carries
//! `x-allow: yes`, else `/status/403`); a 200 lets it on with the auth service's name in
//! `x-auth-by`, anything else (or no answer) is refused with 403. `pluginConfig.upstream`
//! names the auth service (default `auth`).
//!
//! With `pluginConfig.refresh: true` it asks from its root context instead, on a 100 ms tick
//! (as filters refresh keys or policy), keeps the answer's `x-app` in shared data, and stamps
//! it on requests as `x-refreshed-by` without asking per request.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { upstream: "auth".into(), refresh: false, asking: false })
    });
}}

struct Root {
    upstream: String,
    refresh: bool,
    asking: bool,
}

impl Context for Root {
    fn on_http_call_response(&mut self, _: u32, _: usize, _: usize, _: usize) {
        self.asking = false;
        if self.get_http_call_response_header(":status").as_deref() == Some("200")
            && let Some(by) = self.get_http_call_response_header("x-app")
        {
            let _ = self.set_shared_data("refreshed-by", Some(by.as_bytes()), None);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _: usize) -> bool {
        let config = self
            .get_plugin_configuration()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .unwrap_or_default();
        if let Some(upstream) = config["upstream"].as_str() {
            self.upstream = upstream.to_string();
        }
        self.refresh = config["refresh"].as_bool().unwrap_or(false);
        if self.refresh {
            self.set_tick_period(Duration::from_millis(100));
        }
        true
    }

    fn on_tick(&mut self) {
        if self.asking {
            return;
        }
        self.asking = self
            .dispatch_http_call(
                &self.upstream,
                vec![(":method", "GET"), (":path", "/status/200")],
                None,
                vec![],
                Duration::from_secs(2),
            )
            .is_ok();
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Callout {
            upstream: self.upstream.clone(),
            refresh: self.refresh,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Callout {
    upstream: String,
    refresh: bool,
}

impl Context for Callout {
    fn on_http_call_response(&mut self, _: u32, _: usize, _: usize, _: usize) {
        if self.get_http_call_response_header(":status").as_deref() == Some("200") {
            let by = self
                .get_http_call_response_header("x-app")
                .unwrap_or_else(|| "?".into());
            self.set_http_request_header("x-auth-by", Some(&by));
            self.resume_http_request();
            return;
        }
        self.send_http_response(
            403,
            vec![("x-denied-by", "pw-callout")],
            Some(b"denied by auth\n"),
        );
    }
}

impl HttpContext for Callout {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if self.refresh {
            let by = self.get_shared_data("refreshed-by").0.unwrap_or_default();
            self.set_http_request_header("x-refreshed-by", Some(&String::from_utf8_lossy(&by)));
            return Action::Continue;
        }
        let path = if self.get_http_request_header("x-allow").as_deref() == Some("yes") {
            "/status/200"
        } else {
            "/status/403"
        };
        match self.dispatch_http_call(
            &self.upstream,
            vec![(":method", "GET"), (":path", path)],
            None,
            vec![],
            Duration::from_secs(2),
        ) {
            Ok(_) => Action::Pause,
            Err(_) => {
                self.send_http_response(503, vec![], Some(b"auth unavailable\n"));
                Action::Pause
            }
        }
    }
}
