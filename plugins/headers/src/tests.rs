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
