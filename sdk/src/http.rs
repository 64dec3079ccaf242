//! The request and response heads lent to hooks.

#[cfg(not(target_arch = "wasm32"))]
use crate::testing::{TestRequest as RequestInner, TestResponse as ResponseInner};
#[cfg(target_arch = "wasm32")]
use crate::wasm::{RequestInner, ResponseInner};

use crate::Destination;
use std::time::Duration;

/// The caller's request head, lent to [`crate::Filter::on_request`].
pub struct Request<'a> {
    inner: &'a mut RequestInner,
}

/// The response head, lent to [`crate::Filter::on_response`].
pub struct Response<'a> {
    inner: &'a mut ResponseInner,
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX)
}

impl<'a> Request<'a> {
    pub(crate) fn new(inner: &'a mut RequestInner) -> Self {
        Request { inner }
    }

    /// The method (`GET`).
    pub fn method(&self) -> String {
        self.inner.method()
    }

    /// The path and query.
    pub fn path(&self) -> String {
        self.inner.path()
    }

    /// The authority the caller named.
    pub fn authority(&self) -> String {
        self.inner.authority()
    }

    /// The first value of a header, as bytes.
    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.inner.header(name)
    }

    /// The first value of a header, if it is UTF-8.
    pub fn header_str(&self, name: &str) -> Option<String> {
        self.header(name).and_then(|v| String::from_utf8(v).ok())
    }

    /// Every value of a header.
    pub fn header_all(&self, name: &str) -> Vec<Vec<u8>> {
        self.inner.header_all(name)
    }

    /// Every header, in order.
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        self.inner.headers()
    }

    /// Replaces every value of a header.
    pub fn set_header(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), String> {
        self.inner.set_header(name, value.as_ref())
    }

    /// Adds a value to a header.
    pub fn append_header(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), String> {
        self.inner.append_header(name, value.as_ref())
    }

    /// Removes every value of a header.
    pub fn remove_header(&mut self, name: &str) {
        self.inner.remove_header(name)
    }

    /// The caller's identity (SPIFFE ID), or empty.
    pub fn source(&self) -> String {
        self.inner.source()
    }

    /// Where the call goes now.
    pub fn destination(&self) -> Destination {
        self.inner.destination()
    }

    /// Sends the call to another service or subset.
    pub fn set_destination(&mut self, dest: Destination) {
        self.inner.set_destination(dest);
    }

    /// Sends the call to a subset of its current service.
    pub fn set_subset(&mut self, subset: &str) {
        self.inner.set_subset(Some(subset));
    }

    /// Bounds each upstream attempt (zero removes the bound).
    pub fn set_per_try_timeout(&mut self, timeout: Duration) {
        self.inner.set_per_try_timeout_ms(millis(timeout))
    }

    /// Bounds the whole call, retries included.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.inner.set_timeout_ms(millis(timeout))
    }

    /// Holds the call this long before its first upstream attempt, or before a local answer
    /// this hook gives (fault injection); the delay counts against the overall timeout.
    /// Zero removes a delay set earlier.
    pub fn set_delay(&mut self, delay: Duration) {
        self.inner.set_delay_ms(millis(delay))
    }

    /// Names the route (a VirtualService `http` entry) this call took: plugins scoped to other
    /// routes are skipped for the rest of the call. An empty name clears it.
    pub fn set_route(&mut self, name: &str) {
        self.inner.set_route(name)
    }

    /// Sends a copy of this call to `dest` too (a mirror), fire-and-forget: its answer never
    /// reaches or delays the caller. At most 4 per call.
    pub fn add_mirror(&mut self, dest: Destination) {
        self.inner.add_mirror(dest)
    }

    /// Replaces the path and query the call is sent upstream with (a rewrite); fails unless it
    /// is an absolute path a request line can carry.
    pub fn set_path(&mut self, path: &str) -> Result<(), String> {
        self.inner.set_path(path)
    }

    /// Replaces the authority the call is sent upstream with; fails unless it is valid.
    pub fn set_authority(&mut self, authority: &str) -> Result<(), String> {
        self.inner.set_authority(authority)
    }
}

impl<'a> Response<'a> {
    pub(crate) fn new(inner: &'a mut ResponseInner) -> Self {
        Response { inner }
    }

    /// The status code.
    pub fn status(&self) -> u16 {
        self.inner.status()
    }

    /// Upstream attempts made for this call, this response's included.
    pub fn attempts(&self) -> u32 {
        self.inner.attempts()
    }

    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<Vec<u8>> {
        self.inner.header(name)
    }

    /// Every header, in order.
    pub fn headers(&self) -> Vec<(String, Vec<u8>)> {
        self.inner.headers()
    }

    /// Replaces every value of a header.
    pub fn set_header(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), String> {
        self.inner.set_header(name, value.as_ref())
    }

    /// Adds a value to a header.
    pub fn append_header(&mut self, name: &str, value: impl AsRef<[u8]>) -> Result<(), String> {
        self.inner.append_header(name, value.as_ref())
    }

    /// Removes every value of a header.
    pub fn remove_header(&mut self, name: &str) {
        self.inner.remove_header(name)
    }
}
