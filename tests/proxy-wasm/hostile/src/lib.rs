//! A hostile filter: on a request whose `x-attack` header says so it loops forever, grows its
//! memory without bound, or traps; other requests pass. The sandbox must contain each.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

proxy_wasm::main! {{
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;

impl Context for Root {}

impl RootContext for Root {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Hostile))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Hostile;

impl Context for Hostile {}

impl HttpContext for Hostile {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        match self.get_http_request_header("x-attack").as_deref() {
            Some("loop") => {
                let mut n: u64 = 0;
                loop {
                    n = std::hint::black_box(n.wrapping_add(1));
                }
            }
            Some("memory") => {
                let mut hoard: Vec<Vec<u8>> = Vec::new();
                loop {
                    hoard.push(vec![1u8; 1 << 20]);
                    std::hint::black_box(&hoard);
                }
            }
            Some("trap") => panic!("the filter was told to trap"),
            // A host function Weft does not provide yet: the call fails, naming it.
            Some("grpc") => {
                let _ = self.dispatch_grpc_call(
                    "grpc",
                    "service",
                    "method",
                    vec![],
                    None,
                    std::time::Duration::from_secs(1),
                );
                Action::Continue
            }
            _ => {
                self.set_http_request_header("x-hostile-passed", Some("1"));
                Action::Continue
            }
        }
    }
}
