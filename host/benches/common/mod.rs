//! What the benchmarks share.

use http::{HeaderValue, Method};
use weft::plugin::{Destination, RequestHead};

/// A request as an app sends it: ten headers.
pub fn request() -> RequestHead {
    let mut head = RequestHead {
        method: Method::POST,
        path: "/charge?order=8842".into(),
        authority: "payments".into(),
        destination: Destination {
            service: "payments".into(),
            subset: None,
        },
        ..RequestHead::default()
    };
    for (name, value) in [
        ("host", "payments"),
        ("user-agent", "orders/1.4.2"),
        ("accept", "application/json"),
        ("content-type", "application/json"),
        ("content-length", "187"),
        ("x-request-id", "5f8d0c3e-7b1a-4c2e-9d4f-2a6b8e1c0d93"),
        (
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        ),
        ("x-user", "user-2231"),
        ("x-tenant", "acme"),
        ("authorization", "Bearer eyJhbGciOiJIUzI1NiJ9.e30.sig"),
    ] {
        head.headers.insert(name, HeaderValue::from_static(value));
    }
    head
}
