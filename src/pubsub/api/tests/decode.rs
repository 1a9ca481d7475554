//! Request bodies: what is refused (400) and what is read leniently.

use super::*;

// ---- decoding -------------------------------------------------------------

#[test]
fn malformed_bodies_are_400_text() {
    let mut e = Fake::default();
    let cases = [
        ("publish", "{"),
        ("publish", "not json"),
        ("publish", "[]"),
        ("publish", "null"),
        ("publish", "{\"channel\":5,\"data\":1}"),
        ("publish", "{\"channel\":\"a\",\"data\":}"),
        ("publish", "{\"channel\":\"a\",\"data\":1} trailing"),
        (
            "publish",
            "{\"channel\":\"a\",\"tags\":{\"k\":1},\"data\":1}",
        ),
        (
            "publish",
            "{\"channel\":\"a\",\"skip_history\":\"yes\",\"data\":1}",
        ),
        ("broadcast", "{\"channels\":\"a\",\"data\":1}"),
        ("history", "{\"channel\":\"a\",\"limit\":1.5}"),
        ("history", "{\"channel\":\"a\",\"limit\":4294967296}"),
        ("history", "{\"channel\":\"a\",\"since\":{\"offset\":-1}}"),
        ("history", "{\"channel\":\"a\",\"since\":5}"),
        ("presence", "{\"channel\":[]}"),
        ("channels", "{\"pattern\":1}"),
        ("info", "[]"),
        (
            "disconnect",
            "{\"user\":\"u\",\"disconnect\":{\"code\":-1}}",
        ),
        ("disconnect", "{\"user\":\"u\",\"whitelist\":[1]}"),
        ("unsubscribe", "{\"user\":\"u\",\"channel\":{}}"),
        (
            "publish",
            "{\"channel\":\"a\",\"channel\":\"b\",\"data\":1}",
        ),
        ("publish", "\u{feff}{}"),
    ];
    for (method, body) in cases {
        let resp = handle(&req(method, body), KEY, &mut e);
        assert_eq!(resp.status, 400, "{method} {body}");
        assert!(resp.content_type.starts_with("text/plain"));
        let text = String::from_utf8(resp.body).expect("utf-8");
        assert!(text.starts_with("bad request: "), "{text}");
    }
    assert!(e.calls.is_empty());
}

#[test]
fn invalid_utf8_body_is_400() {
    let mut e = Fake::default();
    let r = ApiRequest {
        body: b"{\"channel\":\"\xff\",\"data\":1}",
        ..req("publish", "")
    };
    assert_eq!(handle(&r, KEY, &mut e).status, 400);
    assert!(e.calls.is_empty());
}

#[test]
fn empty_body_reads_as_empty_object() {
    let mut e = Fake::default();
    assert_eq!(
        call_json(&mut e, "info", "")["result"]["nodes"][0]["uid"],
        ""
    );
    assert_eq!(
        call_json(&mut e, "info", " \n")["result"]["nodes"][0]["uid"],
        ""
    );
    // An empty publish is then a 107, not a 400.
    assert_eq!(call_json(&mut e, "publish", ""), bad_request());
    assert_eq!(e.calls, [Rec::Info, Rec::Info]);
}

#[test]
fn nulls_and_unknown_fields_are_ignored() {
    let mut e = Fake::default();
    let body = r#"{"channel":"c","data":1,"tags":null,"skip_history":null,"b64data":null,
                   "idempotency_key":null,"delta":true,"future_field":{"x":[1,2]}}"#;
    assert_eq!(call_json(&mut e, "publish", body), json!({"result": {}}));
    assert_eq!(
        e.calls,
        [Rec::Publish {
            channel: "c".into(),
            payload: b"1".to_vec(),
            opts: PublishOptions::default(),
        }]
    );
}
