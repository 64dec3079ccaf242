//! Body inspection, shaped like a WAF: buffers the whole request body (but on a call marked
//! `x-stream: yes` passes each piece of both bodies on as it comes), refuses one that
//! contains `forbidden` with 403 and masks `secret` in one that passes; buffers the response
//! body and appends a line to it (but a gRPC response's, whose framing it leaves alone); adds
//! a response trailer saying what `grpc-status` it saw. On request trailers: refuses a request
//! whose `x-deny` trailer is `yes` with 403, and adds a trailer saying what `x-checksum` it saw.
//! Tells the request on (`x-pw-end-of-stream`) whether its headers ended it. As filters written
//! for Envoy do, it removes the response's `content-length` before it changes the body's length
//! (but leaves it on a call marked `x-keep-length: yes`, a filter's mistake).

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Body {
            grpc: false,
            stream: false,
            keep_length: false,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Body {
    grpc: bool,
    stream: bool,
    keep_length: bool,
}

impl Context for Body {}

const SUFFIX: &[u8] = b"\n-- filtered by pw-body";

impl HttpContext for Body {
    fn on_http_request_headers(&mut self, _: usize, end_of_stream: bool) -> Action {
        let end = if end_of_stream { "true" } else { "false" };
        self.add_http_request_header("x-pw-end-of-stream", end);
        self.stream = self.get_http_request_header("x-stream").as_deref() == Some("yes");
        self.keep_length = self.get_http_request_header("x-keep-length").as_deref() == Some("yes");
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if self.stream {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        let Some(body) = self.get_http_request_body(0, size) else {
            return Action::Continue;
        };
        let text = String::from_utf8_lossy(&body);
        if text.contains("forbidden") {
            self.send_http_response(
                403,
                vec![("x-refused-by", "pw-body")],
                Some(b"body refused\n"),
            );
            return Action::Pause;
        }
        if text.contains("secret") {
            let masked = text.replace("secret", "******");
            self.set_http_request_body(0, size, masked.as_bytes());
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _: usize) -> Action {
        if self.get_http_request_trailer("x-deny").as_deref() == Some("yes") {
            self.send_http_response(
                403,
                vec![("x-refused-by", "pw-body")],
                Some(b"trailers refused\n"),
            );
            return Action::Pause;
        }
        let checksum = self
            .get_http_request_trailer("x-checksum")
            .unwrap_or_else(|| "-".into());
        self.add_http_request_trailer("x-pw-request-trailer", &format!("saw {checksum}"));
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _: usize) -> Action {
        let status = self
            .get_http_response_trailer("grpc-status")
            .unwrap_or_else(|| "-".into());
        self.add_http_response_trailer("x-pw-trailer", &format!("saw grpc-status {status}"));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        self.grpc = self
            .get_http_response_header("content-type")
            .is_some_and(|t| t.starts_with("application/grpc"));
        if !self.grpc && !self.stream && !self.keep_length {
            // The body will grow: its length must not be promised.
            self.set_http_response_header("content-length", None);
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        if self.grpc || self.stream {
            return Action::Continue;
        }
        if !end_of_stream {
            return Action::Pause;
        }
        self.set_http_response_body(size, 0, SUFFIX);
        Action::Continue
    }
}
