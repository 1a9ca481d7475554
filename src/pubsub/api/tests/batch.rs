//! `batch`, the legacy `POST /api` endpoint and payload writing.

use super::*;

// ---- batch ----------------------------------------------------------------

#[test]
fn batch_runs_in_order_with_per_command_replies() {
    let mut e = Fake {
        positioned: true,
        fail_channel: Some(("nope:x", ErrorCode::UnknownChannel)),
        ..Fake::default()
    };
    let body = r#"{"commands":[
        {"publish":{"channel":"a","data":1}},
        {"publish":{"channel":"nope:x","data":2}},
        {"history_remove":{"channel":""}},
        {"subscribe":{"user":"u","channel":"a"}},
        {},
        null,
        {"info":{}},
        {"presence_stats":{"channel":"a"}},
        {"info":null,"presence":{"channel":"p"}},
        {"channels":{},"publish":{"channel":"b","data":3}}
    ],"parallel":true}"#;
    let (status, text) = call(&mut e, "batch", body);
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        v,
        json!({"replies": [
            {"publish": {"offset": 1, "epoch": "ep"}},
            {"error": {"code": 102, "message": "unknown channel"}},
            {"error": {"code": 107, "message": "bad request"}},
            {"error": {"code": 104, "message": "not found"}},
            {"error": {"code": 104, "message": "not found"}},
            {"error": {"code": 104, "message": "not found"}},
            {"info": {"nodes": [{"uid": "", "name": "", "version": "", "num_clients": 0,
                                 "num_users": 0, "num_channels": 0, "num_subs": 0}]}},
            {"presence_stats": {"num_clients": 3, "num_users": 2}},
            {"presence": {"presence": {}}},
            {"publish": {"offset": 3, "epoch": "ep"}},
        ]})
    );
    assert_eq!(e.calls.len(), 6);
    assert!(matches!(&e.calls[5], Rec::Publish { channel, .. } if channel == "b"));
}

#[test]
fn batch_decodes_everything_before_running_anything() {
    let mut e = Fake::default();
    let body = r#"{"commands":[{"publish":{"channel":"a","data":1}},{"history":{"limit":"x"}}]}"#;
    let (status, _) = call(&mut e, "batch", body);
    assert_eq!(status, 400);
    assert!(e.calls.is_empty());
    for body in [r#"{"commands":{}}"#, r#"{"commands":[1]}"#, "[]"] {
        assert_eq!(call(&mut e, "batch", body).0, 400, "{body}");
    }
    // Empty batches answer an empty list.
    for body in ["", "{}", r#"{"commands":[]}"#, r#"{"commands":null}"#] {
        assert_eq!(
            call(&mut e, "batch", body),
            (200, r#"{"replies":[]}"#.into())
        );
    }
}

#[test]
fn batch_is_bounded() {
    let mut e = Fake::default();
    let command = r#"{"info":{}}"#;
    let body = |n: usize| format!(r#"{{"commands":[{}]}}"#, vec![command; n].join(","));
    let (status, text) = call(&mut e, "batch", &body(MAX_BATCH_COMMANDS));
    assert_eq!(status, 200);
    let v: Value = serde_json::from_str(&text).expect("json");
    assert_eq!(
        v["replies"].as_array().map(Vec::len),
        Some(MAX_BATCH_COMMANDS)
    );
    e.calls.clear();
    assert_eq!(call(&mut e, "batch", &body(MAX_BATCH_COMMANDS + 1)).0, 400);
    assert!(e.calls.is_empty());
}

// ---- legacy POST /api -------------------------------------------------------

#[test]
fn legacy_commands_reply_per_line() {
    let mut e = Fake {
        positioned: true,
        ..Fake::default()
    };
    let body = concat!(
        r#"{"id":1,"method":"publish","params":{"channel":"a","data":{"x":1}}}"#,
        "\n",
        r#"{"method":"PRESENCE_STATS","params":{"channel":"a"}} "#,
        r#"{"id":3,"method":6,"params":{"channel":"a","limit":-1}}"#,
        "\n\n",
        r#"{"id":4,"method":99,"params":{}}"#,
        r#"{"id":5,"method":"history","params":{"channel":5}}"#,
        r#"{"id":6,"method":"info"}"#,
        r#"{"id":7,"params":{"channel":"b","data":2}}"#,
        r#"{"id":8,"method":"publish"}"#,
        r#"{"id":9,"method":"disconnect","params":null}"#,
    );
    let (status, text) = call(&mut e, "", body);
    assert_eq!(status, 200);
    let lines: Vec<&str> = text.split('\n').collect();
    assert_eq!(
        lines,
        [
            r#"{"id":1,"result":{"offset":1,"epoch":"ep"}}"#,
            r#"{"result":{"num_clients":3,"num_users":2}}"#,
            r#"{"id":3,"result":{"publications":[],"epoch":"e0","offset":0}}"#,
            r#"{"id":4,"error":{"code":104,"message":"not found"}}"#,
            r#"{"id":5,"error":{"code":107,"message":"bad request"}}"#,
            concat!(
                r#"{"id":6,"result":{"nodes":[{"uid":"","name":"","version":"","#,
                r#""num_clients":0,"num_users":0,"num_channels":0,"num_subs":0}]}}"#
            ),
            r#"{"id":7,"result":{"offset":2,"epoch":"ep"}}"#,
            r#"{"id":8,"error":{"code":107,"message":"bad request"}}"#,
            r#"{"id":9,"error":{"code":107,"message":"bad request"}}"#,
        ]
    );
    assert_eq!(e.calls.len(), 5);
}

#[test]
fn legacy_request_errors_are_400() {
    let mut e = Fake::default();
    for body in [
        "",
        " \n",
        "{",
        "[]",
        r#"{"method":"nope","params":{}}"#,
        r#"{"method":"subscribe","params":{}}"#,
        r#"{"method":-1}"#,
        r#"{"method":"info"} 5"#,
        r#"{"method":"publish","params":{"channel":"a","data":1}} {"method":"bogus"}"#,
    ] {
        let (status, _) = call(&mut e, "", body);
        assert_eq!(status, 400, "{body:?}");
    }
    // Nothing ran, not even the good command before the bad one.
    assert!(e.calls.is_empty());
    let many = r#"{"method":"info"}"#.repeat(MAX_BATCH_COMMANDS + 1);
    assert_eq!(call(&mut e, "", &many).0, 400);
    assert!(e.calls.is_empty());
    // Auth applies as everywhere.
    let r = ApiRequest {
        api_key: None,
        ..req("", r#"{"method":"info"}"#)
    };
    assert_eq!(handle(&r, KEY, &mut e).status, 401);
}

// ---- payload writing -------------------------------------------------------

#[test]
fn write_payload_keeps_json_and_quotes_the_rest() {
    let cases: [(&[u8], &str); 8] = [
        (br#"{"a":1}"#, r#"{"a":1}"#),
        (b"  [1, 2] \n", "[1, 2]"),
        (b"null", "null"),
        (b"", r#""""#),
        (b"hello", r#""hello""#),
        (b"1 2", r#""1 2""#),
        (b"\"unterminated", r#""\"unterminated""#),
        (b"\xc3\x28", "\"\u{fffd}(\""),
    ];
    for (payload, want) in cases {
        let mut out = Vec::new();
        write_payload(payload, &mut out);
        assert_eq!(String::from_utf8_lossy(&out), want, "{payload:?}");
        serde_json::from_slice::<Value>(&out).expect("valid JSON");
    }
}
