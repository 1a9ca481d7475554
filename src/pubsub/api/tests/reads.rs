//! The read methods: history, presence, channels, info.

use super::*;

// ---- history --------------------------------------------------------------

#[test]
fn history_arguments() {
    let mut e = Fake::default();
    let cases: [(&str, Option<usize>, Option<StreamPosition>, bool); 6] = [
        (r#"{"channel":"c"}"#, Some(0), None, false),
        (r#"{"channel":"c","limit":0}"#, Some(0), None, false),
        (
            r#"{"channel":"c","limit":10,"reverse":true}"#,
            Some(10),
            None,
            true,
        ),
        (r#"{"channel":"c","limit":-1}"#, None, None, false),
        (
            r#"{"channel":"c","limit":-7,"since":{"offset":5,"epoch":"xyz"}}"#,
            None,
            Some(pos(5, "xyz")),
            false,
        ),
        (
            r#"{"channel":"c","limit":2147483647,"since":{}}"#,
            Some(2147483647),
            Some(pos(0, "")),
            false,
        ),
    ];
    for (body, limit, since, reverse) in cases {
        call_json(&mut e, "history", body);
        assert_eq!(
            e.calls.pop(),
            Some(Rec::History {
                channel: "c".into(),
                since,
                limit,
                reverse,
            }),
            "{body}"
        );
    }
}

#[test]
fn history_answer_shape() {
    let mut e = Fake::default();
    // Empty stream: every field present, publications [].
    let (_, text) = call(&mut e, "history", r#"{"channel":"c"}"#);
    assert_eq!(
        text,
        r#"{"result":{"publications":[],"epoch":"e0","offset":0}}"#
    );
    e.history = Some(HistoryResult {
        publications: vec![
            publication(4, br#"{"a":[1,"x"]}"#),
            publication(5, b"plain text"),
            publication(6, b"\xff\x00bin"),
            publication(7, b" 12 "),
            publication(8, b"{\"a\":1} {\"b\":2}"),
        ],
        position: pos(8, "ep"),
    });
    let (_, text) = call(&mut e, "history", r#"{"channel":"c","limit":-1}"#);
    assert_eq!(
        text,
        concat!(
            r#"{"result":{"publications":["#,
            r#"{"data":{"a":[1,"x"]},"offset":4},"#,
            r#"{"data":"plain text","offset":5},"#,
            "{\"data\":\"\u{fffd}\\u0000bin\",\"offset\":6},",
            r#"{"data":12,"offset":7},"#,
            r#"{"data":"{\"a\":1} {\"b\":2}","offset":8}"#,
            r#"],"epoch":"ep","offset":8}}"#
        )
    );
}

#[test]
fn history_errors() {
    let mut e = Fake::default();
    assert_eq!(
        call_json(&mut e, "history", r#"{"limit":1}"#),
        bad_request()
    );
    assert!(e.calls.is_empty());
    for (code, want) in [
        (
            ErrorCode::UnrecoverablePosition,
            api_error(112, "unrecoverable position"),
        ),
        (ErrorCode::NotAvailable, api_error(108, "not available")),
        (ErrorCode::BadRequest, bad_request()),
    ] {
        e.fail_all = Some(code);
        let body = r#"{"channel":"c","since":{"offset":1,"epoch":"old"}}"#;
        assert_eq!(call_json(&mut e, "history", body), want);
    }
}

#[test]
fn history_remove() {
    let mut e = Fake::default();
    let (_, text) = call(&mut e, "history_remove", r#"{"channel":"c"}"#);
    assert_eq!(text, r#"{"result":{}}"#);
    assert_eq!(e.calls, [Rec::HistoryRemove("c".into())]);
    assert_eq!(call_json(&mut e, "history_remove", "{}"), bad_request());
    e.fail_all = Some(ErrorCode::NotAvailable);
    assert_eq!(
        call_json(&mut e, "history_remove", r#"{"channel":"c"}"#),
        api_error(108, "not available")
    );
    assert_eq!(e.calls.len(), 2);
}

// ---- presence -------------------------------------------------------------

#[test]
fn presence_answer_shape() {
    let mut e = Fake::default();
    let (_, text) = call(&mut e, "presence", r#"{"channel":"c"}"#);
    assert_eq!(text, r#"{"result":{"presence":{}}}"#);
    e.presence = vec![
        client("c2", "", None, None),
        client("c1", "u1", Some(br#"{"name":"Ann"}"#), Some(b"[1]")),
    ];
    let (_, text) = call(&mut e, "presence", r#"{"channel":"c"}"#);
    assert_eq!(
        text,
        concat!(
            r#"{"result":{"presence":{"#,
            r#""c1":{"user":"u1","client":"c1","conn_info":{"name":"Ann"},"chan_info":[1]},"#,
            r#""c2":{"user":"","client":"c2"}"#,
            r#"}}}"#
        )
    );
    assert_eq!(
        e.calls,
        [Rec::Presence("c".into()), Rec::Presence("c".into())]
    );
}

#[test]
fn presence_errors_and_stats() {
    let mut e = Fake::default();
    assert_eq!(call_json(&mut e, "presence", "{}"), bad_request());
    assert_eq!(
        call_json(&mut e, "presence_stats", r#"{"channel":""}"#),
        bad_request()
    );
    assert!(e.calls.is_empty());
    let (_, text) = call(&mut e, "presence_stats", r#"{"channel":"c"}"#);
    assert_eq!(text, r#"{"result":{"num_clients":3,"num_users":2}}"#);
    e.fail_all = Some(ErrorCode::NotAvailable);
    for method in ["presence", "presence_stats"] {
        assert_eq!(
            call_json(&mut e, method, r#"{"channel":"c"}"#),
            api_error(108, "not available")
        );
    }
}

// ---- channels -------------------------------------------------------------

#[test]
fn channels_with_and_without_pattern() {
    let mut e = Fake {
        channels: vec![
            ("chat:1".into(), 2),
            ("chat:2".into(), 0),
            ("news".into(), 5),
            ("chat:10".into(), 1),
        ],
        ..Fake::default()
    };
    let (_, text) = call(&mut e, "channels", "{}");
    assert_eq!(
        text,
        r#"{"result":{"channels":{"chat:1":{"num_clients":2},"chat:10":{"num_clients":1},"news":{"num_clients":5}}}}"#
    );
    let v = call_json(&mut e, "channels", r#"{"pattern":"chat:?"}"#);
    assert_eq!(
        v,
        json!({"result": {"channels": {"chat:1": {"num_clients": 2}}}})
    );
    let v = call_json(&mut e, "channels", r#"{"pattern":"nothing*"}"#);
    assert_eq!(v, json!({"result": {"channels": {}}}));
    let v = call_json(&mut e, "channels", r#"{"pattern":""}"#);
    assert_eq!(
        v["result"]["channels"].as_object().map(|m| m.len()),
        Some(3)
    );
    assert_eq!(
        e.calls,
        [
            Rec::Channels { pattern: false },
            Rec::Channels { pattern: true },
            Rec::Channels { pattern: true },
            Rec::Channels { pattern: false },
        ]
    );
}

#[test]
fn channels_bad_pattern_is_107() {
    let mut e = Fake::default();
    for pattern in ["[", "{a,b", "x\\\\\\", "[z-a]"] {
        let body = json!({ "pattern": pattern }).to_string();
        assert_eq!(
            call_json(&mut e, "channels", &body),
            bad_request(),
            "{pattern}"
        );
    }
    assert!(e.calls.is_empty());
    e.fail_all = Some(ErrorCode::Internal);
    assert_eq!(
        call_json(&mut e, "channels", "{}"),
        api_error(100, "internal server error")
    );
}

// ---- info -----------------------------------------------------------------

#[test]
fn info_answer_shape() {
    let mut e = Fake {
        info: NodeInfo {
            uid: "u-1".into(),
            name: "host:8000".into(),
            version: "0.1.0".into(),
            num_clients: 4,
            num_users: 3,
            num_channels: 2,
            num_subs: 6,
            uptime: 61,
        },
        ..Fake::default()
    };
    let (_, text) = call(&mut e, "info", "{}");
    assert_eq!(
        text,
        concat!(
            r#"{"result":{"nodes":[{"uid":"u-1","name":"host:8000","version":"0.1.0","#,
            r#""num_clients":4,"num_users":3,"num_channels":2,"uptime":61,"num_subs":6}]}}"#
        )
    );
    // Zero counters are written (cent reads them), zero uptime is not.
    e.info = NodeInfo::default();
    let (_, text) = call(&mut e, "info", r#"{"ignored":true}"#);
    assert_eq!(
        text,
        r#"{"result":{"nodes":[{"uid":"","name":"","version":"","num_clients":0,"num_users":0,"num_channels":0,"num_subs":0}]}}"#
    );
    e.fail_all = Some(ErrorCode::Internal);
    assert_eq!(
        call_json(&mut e, "info", "{}"),
        api_error(100, "internal server error")
    );
}
