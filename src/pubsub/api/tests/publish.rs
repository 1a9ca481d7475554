//! `publish` and `broadcast`: arguments passed through, errors mapped.

use super::*;

// ---- publish --------------------------------------------------------------

#[test]
fn publish_positioned_and_not() {
    let mut e = Fake::default();
    let (status, body) = call(&mut e, "publish", r#"{"channel":"news","data":{"a":1}}"#);
    assert_eq!((status, body.as_str()), (200, r#"{"result":{}}"#));
    e.positioned = true;
    let (_, body) = call(&mut e, "publish", r#"{"channel":"news","data":{"a":2}}"#);
    assert_eq!(body, r#"{"result":{"offset":2,"epoch":"ep"}}"#);
    // skip_history: the fake answers unpositioned, as a relay must.
    let (_, body) = call(
        &mut e,
        "publish",
        r#"{"channel":"news","data":3,"skip_history":true}"#,
    );
    assert_eq!(body, r#"{"result":{}}"#);
}

#[test]
fn publish_passes_data_verbatim_and_options() {
    let mut e = Fake::default();
    let data = r#"{"text":"h\u00e9\"llo\n","n":[1,2.5e3,null,true],"s":"\ud83d\ude00"}"#;
    let body = format!(
        r#"{{"channel":"chat:room#42","data": {data} ,"skip_history":true,
            "tags":{{"k":"v","x":""}},"idempotency_key":"idem-1"}}"#
    );
    assert_eq!(call_json(&mut e, "publish", &body), json!({"result": {}}));
    let tags = [("k", "v"), ("x", "")]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    assert_eq!(
        e.calls,
        [Rec::Publish {
            channel: "chat:room#42".into(),
            payload: data.as_bytes().to_vec(),
            opts: PublishOptions {
                skip_history: true,
                tags,
                idempotency_key: "idem-1".into(),
            },
        }]
    );
}

#[test]
fn publish_data_null_is_data() {
    let mut e = Fake::default();
    assert_eq!(
        call_json(&mut e, "publish", r#"{"channel":"c","data":null}"#),
        json!({"result": {}})
    );
    assert!(matches!(&e.calls[..], [Rec::Publish { payload, .. }] if payload == b"null"));
}

#[test]
fn publish_data_scalars_and_escaped_channel() {
    let mut e = Fake::default();
    for (data, want) in [
        ("\"str\"", "\"str\""),
        ("0", "0"),
        ("[]", "[]"),
        ("false", "false"),
    ] {
        let body = format!(r#"{{"channel":"c\u0041","data":{data}}}"#);
        call_json(&mut e, "publish", &body);
        let Some(Rec::Publish {
            channel, payload, ..
        }) = e.calls.pop()
        else {
            panic!("no publish")
        };
        assert_eq!(channel, "cA");
        assert_eq!(payload, want.as_bytes());
    }
}

#[test]
fn publish_b64data() {
    let mut e = Fake::default();
    // "\x00\xffhi" in standard base64; it replaces `data`.
    let body = r#"{"channel":"c","data":{"ignored":1},"b64data":"AP9oaQ=="}"#;
    assert_eq!(call_json(&mut e, "publish", body), json!({"result": {}}));
    assert!(matches!(&e.calls[..], [Rec::Publish { payload, .. }] if payload == b"\x00\xffhi"));
    // An empty b64data falls back to data.
    e.calls.clear();
    call_json(
        &mut e,
        "publish",
        r#"{"channel":"c","data":7,"b64data":""}"#,
    );
    assert!(matches!(&e.calls[..], [Rec::Publish { payload, .. }] if payload == b"7"));
}

#[test]
fn publish_request_errors_are_107_and_skip_the_engine() {
    let mut e = Fake::default();
    for body in [
        r#"{"data":1}"#,
        r#"{"channel":"","data":1}"#,
        r#"{"channel":null,"data":1}"#,
        r#"{"channel":"c"}"#,
        r#"{"channel":"c","b64data":"not base64!"}"#,
        r#"{"channel":"c","b64data":"AP9oaQ"}"#,
        r#"{"channel":"c","b64data":"===="}"#,
    ] {
        assert_eq!(call_json(&mut e, "publish", body), bad_request(), "{body}");
    }
    assert!(e.calls.is_empty());
}

#[test]
fn publish_engine_errors() {
    let mut e = Fake {
        fail_channel: Some(("nope:x", ErrorCode::UnknownChannel)),
        ..Fake::default()
    };
    let body = r#"{"channel":"nope:x","data":1}"#;
    assert_eq!(
        call_json(&mut e, "publish", body),
        api_error(102, "unknown channel")
    );
    e.fail_all = Some(ErrorCode::Internal);
    // No `temporary` field in API errors.
    let (_, text) = call(&mut e, "publish", r#"{"channel":"a","data":1}"#);
    assert_eq!(
        text,
        r#"{"error":{"code":100,"message":"internal server error"}}"#
    );
}

#[test]
fn transport_error_mode() {
    let mut e = Fake::default();
    let cases = [
        (ErrorCode::UnknownChannel, 404),
        (ErrorCode::BadRequest, 400),
        (ErrorCode::NotAvailable, 400),
        (ErrorCode::UnrecoverablePosition, 416),
        (ErrorCode::Internal, 500),
        (ErrorCode::LimitExceeded, 500),
    ];
    for (code, status) in cases {
        e.fail_all = Some(code);
        let r = ApiRequest {
            transport_errors: true,
            ..req("history", r#"{"channel":"c"}"#)
        };
        let resp = handle(&r, KEY, &mut e);
        assert_eq!(resp.status, status, "{code:?}");
        assert_eq!(resp.content_type, "application/json");
        let body: Value = serde_json::from_slice(&resp.body).expect("json");
        assert_eq!(body, json!({"code": code.code(), "message": code.text()}));
    }
    // Errors found here (not by the engine) too.
    let r = ApiRequest {
        transport_errors: true,
        ..req("publish", r#"{"channel":"c"}"#)
    };
    let resp = handle(&r, KEY, &mut e);
    assert_eq!(resp.status, 400);
    assert_eq!(resp.body, br#"{"code":107,"message":"bad request"}"#);
    // Success is unchanged.
    e.fail_all = None;
    let r = ApiRequest {
        transport_errors: true,
        ..req("history_remove", r#"{"channel":"c"}"#)
    };
    let resp = handle(&r, KEY, &mut e);
    assert_eq!(
        (resp.status, resp.body.as_slice()),
        (200, &br#"{"result":{}}"#[..])
    );
}

// ---- broadcast ------------------------------------------------------------

#[test]
fn broadcast_answers_per_channel() {
    let mut e = Fake {
        positioned: true,
        fail_channel: Some(("bad:x", ErrorCode::UnknownChannel)),
        ..Fake::default()
    };
    let body = r#"{"channels":["a","","bad:x",null,"b"],"data":{"m":1},"tags":{"t":"1"}}"#;
    let (status, text) = call(&mut e, "broadcast", body);
    assert_eq!(status, 200);
    assert_eq!(
        text,
        concat!(
            r#"{"result":{"responses":["#,
            r#"{"result":{"offset":1,"epoch":"ep"}},"#,
            r#"{"error":{"code":107,"message":"bad request"}},"#,
            r#"{"error":{"code":102,"message":"unknown channel"}},"#,
            r#"{"error":{"code":107,"message":"bad request"}},"#,
            r#"{"result":{"offset":3,"epoch":"ep"}}"#,
            r#"]}}"#
        )
    );
    let published: Vec<_> = e
        .calls
        .iter()
        .map(|c| match c {
            Rec::Publish {
                channel,
                payload,
                opts,
            } => {
                assert_eq!(payload, br#"{"m":1}"#);
                assert_eq!(opts.tags.get("t").map(String::as_str), Some("1"));
                channel.as_str()
            }
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(published, ["a", "bad:x", "b"]);
}

#[test]
fn broadcast_request_errors() {
    let mut e = Fake::default();
    for body in [
        r#"{"channels":[],"data":1}"#,
        r#"{"data":1}"#,
        r#"{"channels":null,"data":1}"#,
        r#"{"channels":["a"]}"#,
        r#"{"channels":["a"],"b64data":"%%"}"#,
    ] {
        assert_eq!(
            call_json(&mut e, "broadcast", body),
            bad_request(),
            "{body}"
        );
    }
    assert!(e.calls.is_empty());
    let body = r#"{"channels":["a"],"b64data":"aGk="}"#;
    let v = call_json(&mut e, "broadcast", body);
    assert_eq!(v, json!({"result": {"responses": [{"result": {}}]}}));
    assert!(matches!(&e.calls[..], [Rec::Publish { payload, .. }] if payload == b"hi"));
}
