//! Unit tests through `weft_sdk::testing`.

use super::*;
use weft_sdk::testing::{Harness, TestRequest, TestResponse};

fn harness(config: &str) -> Harness<Headers> {
    match Harness::<Headers>::new(config) {
        Ok(h) => h,
        Err(e) => panic!("config {config} rejected: {e}"),
    }
}

fn refused(config: &str) -> String {
    match Harness::<Headers>::new(config) {
        Ok(_) => panic!("config {config} accepted"),
        Err(e) => e,
    }
}

#[test]
fn request_operations_remove_then_set_then_add() {
    let mut h = harness(
        r#"{"request": {"remove": ["x-drop"], "set": {"x-env": "prod"}, "add": {"x-tag": "b"}}}"#,
    );
    let mut req = TestRequest::get("payments", "/charge");
    req.headers.push(("x-drop".into(), b"1".to_vec()));
    req.headers.push(("x-env".into(), b"dev".to_vec()));
    req.headers.push(("x-tag".into(), b"a".to_vec()));
    let (_, action) = h.on_request(&mut req);
    assert!(matches!(action, RequestAction::Continue));
    assert_eq!(req.header_text("x-drop"), None);
    assert_eq!(req.header_text("x-env").as_deref(), Some("prod"));
    let tags: Vec<&[u8]> = req
        .headers
        .iter()
        .filter(|(n, _)| n == "x-tag")
        .map(|(_, v)| v.as_slice())
        .collect();
    assert_eq!(tags, [&b"a"[..], &b"b"[..]]);
}

#[test]
fn response_operations_apply_on_the_way_back() {
    let h = harness(r#"{"response": {"set": {"x-served-by": "weft"}, "remove": ["server"]}}"#);
    let mut resp = TestResponse::new(200);
    resp.headers.push(("server".into(), b"app".to_vec()));
    h.on_response(1, &mut resp);
    assert_eq!(resp.header_text("x-served-by").as_deref(), Some("weft"));
    assert_eq!(resp.header_text("server"), None);
}

#[test]
fn a_direct_response_answers_locally_with_the_response_operations() {
    let mut h = harness(
        r#"{"directResponse": {"status": 503, "body": "down for maintenance"},
            "response": {"set": {"retry-after": "60"}}}"#,
    );
    let mut req = TestRequest::get("payments", "/charge");
    let (_, action) = h.on_request(&mut req);
    let RequestAction::Respond(reply) = action else {
        panic!("not answered locally")
    };
    assert_eq!(reply.status, 503);
    assert_eq!(reply.body, b"down for maintenance");
    assert_eq!(reply.headers, [("retry-after".to_string(), b"60".to_vec())]);
}

#[test]
fn a_redirect_keeps_what_it_does_not_replace() {
    let location = |config: &str, path: &str| {
        let mut h = harness(config);
        let mut req = TestRequest::get("payments", path);
        let (_, action) = h.on_request(&mut req);
        let RequestAction::Respond(reply) = action else {
            panic!("not answered locally")
        };
        let location = reply
            .headers
            .iter()
            .find(|(n, _)| n == "location")
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned());
        (reply.status, location.unwrap_or_default())
    };
    assert_eq!(
        location(r#"{"redirect": {"uri": "/v2/charge"}}"#, "/charge?id=7"),
        (301, "http://payments/v2/charge?id=7".to_string())
    );
    assert_eq!(
        location(
            r#"{"redirect": {"authority": "billing:8080", "scheme": "https", "redirectCode": 308}}"#,
            "/charge"
        ),
        (308, "https://billing:8080/charge".to_string())
    );
    assert_eq!(
        location(r#"{"redirect": {"uri": "/new?x=1"}}"#, "/old?y=2"),
        (301, "http://payments/new?x=1".to_string())
    );
}

#[test]
fn what_cannot_be_honoured_is_refused_naming_the_field() {
    for (config, words) in [
        (
            r#"{"request": {"set": {"bad name": "x"}}}"#,
            "request.bad name",
        ),
        (
            r#"{"response": {"remove": [":status"]}}"#,
            "response.remove",
        ),
        (
            r#"{"request": {"add": {"x": "a\nb"}}}"#,
            "control character",
        ),
        (
            r#"{"directResponse": {"status": 99}}"#,
            "directResponse.status",
        ),
        (
            r#"{"redirect": {"redirectCode": 200}}"#,
            "redirect.redirectCode",
        ),
        (r#"{"redirect": {"uri": "relative"}}"#, "redirect.uri"),
        (r#"{"redirect": {"scheme": "ftp"}}"#, "redirect.scheme"),
        (
            r#"{"redirect": {}, "directResponse": {"status": 200}}"#,
            "not both",
        ),
        (r#"{"request": {"sett": {}}}"#, "unknown field"),
    ] {
        let err = refused(config);
        assert!(err.contains(words), "{config}: {err}");
    }
}

#[test]
fn nothing_to_do_costs_no_hook() {
    let h = harness("{}");
    assert_eq!(h.hooks(), Hooks::NONE);
}

fn with_origin(method: &str, origin: &str, preflight: bool) -> TestRequest {
    let mut req = TestRequest::get("payments", "/charge");
    req.method = method.into();
    req.headers
        .push(("origin".into(), origin.as_bytes().to_vec()));
    if preflight {
        req.headers
            .push(("access-control-request-method".into(), b"PUT".to_vec()));
    }
    req
}

const CORS: &str = r#"{"cors": {"allowOrigins": [{"exact": "https://shop.example"}, {"regex": "https://.*[.]test"}],
    "allowMethods": ["GET", "PUT"], "allowHeaders": ["x-user"], "exposeHeaders": ["x-trace"],
    "maxAge": "24h", "allowCredentials": true}}"#;

#[test]
fn a_preflight_from_an_allowed_origin_is_answered_here() {
    let mut h = harness(CORS);
    let mut req = with_origin("OPTIONS", "https://a.test", true);
    let (_, action) = h.on_request(&mut req);
    let RequestAction::Respond(reply) = action else {
        panic!("a preflight goes no further")
    };
    assert_eq!(reply.status, 200);
    let get = |n: &str| {
        reply
            .headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(
        get("access-control-allow-origin").as_deref(),
        Some("https://a.test")
    );
    assert_eq!(
        get("access-control-allow-methods").as_deref(),
        Some("GET,PUT")
    );
    assert_eq!(
        get("access-control-allow-headers").as_deref(),
        Some("x-user")
    );
    assert_eq!(get("access-control-max-age").as_deref(), Some("86400"));
    assert_eq!(
        get("access-control-allow-credentials").as_deref(),
        Some("true")
    );
}

#[test]
fn an_actual_request_from_an_allowed_origin_gets_cors_headers_on_its_response() {
    let mut h = harness(CORS);
    let mut req = with_origin("GET", "https://shop.example", false);
    let (call, action) = h.on_request(&mut req);
    assert!(matches!(action, RequestAction::Continue));
    let mut resp = TestResponse::new(200);
    h.on_response(call, &mut resp);
    assert_eq!(
        resp.header_text("access-control-allow-origin").as_deref(),
        Some("https://shop.example")
    );
    assert_eq!(
        resp.header_text("access-control-expose-headers").as_deref(),
        Some("x-trace")
    );
    // Another origin: nothing added, and its preflight goes upstream.
    let mut req = with_origin("GET", "https://evil.example", false);
    let (call, _) = h.on_request(&mut req);
    let mut resp = TestResponse::new(200);
    h.on_response(call, &mut resp);
    assert_eq!(resp.header_text("access-control-allow-origin"), None);
    let mut req = with_origin("OPTIONS", "https://evil.example", true);
    assert!(matches!(h.on_request(&mut req).1, RequestAction::Continue));
}

#[test]
fn unmatched_preflights_can_be_answered_without_cors_headers() {
    let mut h = harness(
        r#"{"cors": {"allowOrigins": [{"exact": "https://shop.example"}], "unmatchedPreflights": "IGNORE"}}"#,
    );
    let mut req = with_origin("OPTIONS", "https://evil.example", true);
    let RequestAction::Respond(reply) = h.on_request(&mut req).1 else {
        panic!("answered here")
    };
    assert_eq!((reply.status, reply.headers.len()), (200, 0));
    let err = refused(r#"{"cors": {"allowOrigins": [{"regex": "("}]}}"#);
    assert!(err.contains("cors.allowOrigins[0].regex"), "{err}");
}

#[test]
fn a_destinations_operations_hold_for_the_calls_sent_there_before_the_entrys() {
    let mut h = harness(
        r#"{"request": {"set": {"x-env": "prod"}},
            "response": {"set": {"x-route": "entry"}},
            "route": [
              {"service": "payments", "subset": "v2", "headers": {
               "request": {"set": {"x-canary": "1", "x-env": "canary"}},
               "response": {"set": {"x-route": "v2", "x-served-by": "v2"}}}},
              {"service": "payments", "subset": "v1",
               "headers": {"request": {"set": {"x-canary": "0"}}}},
              {"service": "payments"}
            ]}"#,
    );
    // Sent to v2 (as the canary would): v2's operations, then the entry's, whose set wins.
    let mut req = TestRequest::get("payments", "/charge");
    req.destination.subset = Some("v2".into());
    let (call, _) = h.on_request(&mut req);
    assert_eq!(req.header_text("x-canary").as_deref(), Some("1"));
    assert_eq!(req.header_text("x-env").as_deref(), Some("prod"));
    let mut resp = TestResponse::new(200);
    h.on_response(call, &mut resp);
    assert_eq!(resp.header_text("x-served-by").as_deref(), Some("v2"));
    assert_eq!(resp.header_text("x-route").as_deref(), Some("entry"));
    // Sent to v1: v1's request operations only; nothing remembered for its response.
    let mut req = TestRequest::get("payments", "/charge");
    req.destination.subset = Some("v1".into());
    let (call, _) = h.on_request(&mut req);
    assert_eq!(req.header_text("x-canary").as_deref(), Some("0"));
    let mut resp = TestResponse::new(200);
    h.on_response(call, &mut resp);
    assert_eq!(resp.header_text("x-served-by"), None);
    // Sent elsewhere (the whole service): the entry's alone.
    let mut req = TestRequest::get("payments", "/charge");
    h.on_request(&mut req);
    assert_eq!(req.header_text("x-canary"), None);
    assert_eq!(req.header_text("x-env").as_deref(), Some("prod"));
}

#[test]
fn a_destination_listed_twice_is_refused() {
    let err = refused(
        r#"{"route": [{"service": "payments"},
                      {"service": "payments", "headers": {"request": {"set": {"a": "2"}}}}]}"#,
    );
    assert!(
        err.starts_with("route[1].headers: route[0] names the same destination (payments)"),
        "{err}"
    );
    // The same destination twice without operations is nothing to tell apart.
    harness(r#"{"route": [{"service": "payments"}, {"service": "payments"}]}"#);
    let err = refused(
        r#"{"route": [{"service": "payments", "headers": {"request": {"set": {"bad name": "1"}}}}]}"#,
    );
    assert!(
        err.starts_with("route[0].headers.request.bad name"),
        "{err}"
    );
}
