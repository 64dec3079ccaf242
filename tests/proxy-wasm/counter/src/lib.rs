//! Per-request counting, shaped like the SDK examples that keep state across workers: a
//! counter metric on the host, a count of every request in shared data (compare-and-swap, so
//! no increment is lost however many VMs run), a tick timer counting its firings, and the
//! VM that served each call named in the response; and a shared queue: each request enqueues
//! an item, and the root context that registered the queue counts what it dequeues.

use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel, MetricType};
use std::time::Duration;

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> {
        Box::new(Root { metric: 0, ticks: 0, vm: 0, queue: 0 })
    });
}}

struct Root {
    metric: u32,
    ticks: u32,
    vm: u64,
    queue: u32,
}

/// Adds one to a shared-data counter, retrying on a CAS mismatch; answers the new count.
fn bump(ctx: &dyn Context, key: &str) -> u64 {
    loop {
        let (value, cas) = ctx.get_shared_data(key);
        let n = value
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0)
            + 1;
        match ctx.set_shared_data(key, Some(&n.to_le_bytes()), cas) {
            Ok(()) => return n,
            Err(_) => continue,
        }
    }
}

impl Context for Root {}

impl RootContext for Root {
    fn on_vm_start(&mut self, _: usize) -> bool {
        // The VM's own name: a number drawn once per VM, as the filter's randomness.
        self.vm = self
            .get_current_time()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0)
            ^ (&self.vm as *const u64 as u64);
        true
    }

    fn on_configure(&mut self, _: usize) -> bool {
        let Ok(metric) = hostcalls::define_metric(MetricType::Counter, "pw_requests_total") else {
            return false;
        };
        self.metric = metric;
        self.ticks = hostcalls::define_metric(MetricType::Gauge, "pw.ticks").unwrap_or(0);
        // Created once, before any request: the ABI's CAS cannot say "only if absent", so
        // the first increment must find a value. VMs are configured one after another.
        self.queue = self.register_shared_queue("requests");
        for key in ["requests", "ticks", "dequeued"] {
            if self.get_shared_data(key).0.is_none() {
                let _ = self.set_shared_data(key, Some(&0u64.to_le_bytes()), None);
            }
        }
        self.set_tick_period(Duration::from_millis(50));
        true
    }

    fn on_queue_ready(&mut self, queue: u32) {
        while let Ok(Some(_)) = self.dequeue_shared_queue(queue) {
            bump(self, "dequeued");
        }
    }

    fn on_tick(&mut self) {
        bump(self, "ticks");
        let _ = hostcalls::increment_metric(self.ticks, 1);
    }

    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Count {
            metric: self.metric,
            vm: self.vm,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct Count {
    metric: u32,
    vm: u64,
}

impl Context for Count {}

impl HttpContext for Count {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        let _ = hostcalls::increment_metric(self.metric, 1);
        let n = bump(self, "requests");
        if let Some(queue) = self.resolve_shared_queue("", "requests") {
            let _ = self.enqueue_shared_queue(queue, Some(b"1"));
        }
        self.set_http_request_header("x-pw-count", Some(&n.to_string()));
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _: usize, _: bool) -> Action {
        let ticks = self
            .get_shared_data("ticks")
            .0
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0);
        self.set_http_response_header("x-pw-ticks", Some(&ticks.to_string()));
        let dequeued = self
            .get_shared_data("dequeued")
            .0
            .and_then(|b| <[u8; 8]>::try_from(b.as_slice()).ok())
            .map(u64::from_le_bytes)
            .unwrap_or(0);
        self.set_http_response_header("x-pw-dequeued", Some(&dequeued.to_string()));
        self.set_http_response_header("x-pw-vm", Some(&self.vm.to_string()));
        Action::Continue
    }
}
