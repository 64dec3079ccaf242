//! Authorization with an HTTP callout, as the SDK's `http_auth_random` example does it: asks
//! an auth service before letting the request on. Weft refuses it at load (no callouts yet).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Callout))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Callout;

impl Context for Callout {
    fn on_http_call_response(&mut self, _: u32, _: usize, _: usize, _: usize) {
        match self.get_http_call_response_header(":status").as_deref() {
            Some("200") => self.resume_http_request(),
            _ => self.send_http_response(403, vec![], Some(b"denied\n")),
        }
    }
}

impl HttpContext for Callout {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        match self.dispatch_http_call(
            "auth",
            vec![
                (":method", "GET"),
                (":path", "/check"),
                (":authority", "auth"),
            ],
            None,
            vec![],
            Duration::from_secs(1),
        ) {
            Ok(_) => Action::Pause,
            Err(_) => Action::Continue,
        }
    }
}
