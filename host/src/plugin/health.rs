//! The seam between plugins and the proxy's endpoint health: plugins eject, the load balancer
//! skips. The proxy implements [`EndpointHealth`]; tests give their own.

use std::time::Duration;

/// An endpoint and how long it stays ejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointState {
    /// Stable id for its address.
    pub id: u64,
    /// Its address.
    pub address: String,
    /// Time left of its ejection; zero when serving.
    pub ejected_for: Duration,
}

/// Endpoint health as plugins see and drive it.
pub trait EndpointHealth: Send + Sync + 'static {
    /// Every endpoint of the service `endpoint` belongs to.
    fn pool(&self, endpoint: u64) -> Vec<EndpointState>;
    /// Ejects an endpoint for a while; false if unknown.
    fn eject(&self, endpoint: u64, duration: Duration) -> bool;
}

/// No endpoints at all: for runtimes used outside a proxy.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEndpoints;

impl EndpointHealth for NoEndpoints {
    fn pool(&self, _endpoint: u64) -> Vec<EndpointState> {
        Vec::new()
    }

    fn eject(&self, _endpoint: u64, _duration: Duration) -> bool {
        false
    }
}
