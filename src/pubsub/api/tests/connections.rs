//! `disconnect` and `unsubscribe`: what reaches the engine.

use super::*;

// ---- disconnect / unsubscribe ----------------------------------------------

#[test]
fn disconnect_variants() {
    let mut e = Fake::default();
    let (_, text) = call(&mut e, "disconnect", r#"{"user":"42"}"#);
    assert_eq!(text, r#"{"result":{}}"#);
    call_json(
        &mut e,
        "disconnect",
        r#"{"user":"42","client":"c-1","whitelist":["c-2","c-3"],
            "disconnect":{"code":4000,"reason":"bye"}}"#,
    );
    call_json(&mut e, "disconnect", r#"{}"#);
    assert_eq!(
        e.calls,
        [
            Rec::Disconnect {
                user: "42".into(),
                client: None,
                whitelist: vec![],
                code: 3503,
                reason: "force disconnect".into(),
            },
            Rec::Disconnect {
                user: "42".into(),
                client: Some("c-1".into()),
                whitelist: vec!["c-2".into(), "c-3".into()],
                code: 4000,
                reason: "bye".into(),
            },
            Rec::Disconnect {
                user: "".into(),
                client: None,
                whitelist: vec![],
                code: 3503,
                reason: "force disconnect".into(),
            },
        ]
    );
}

#[test]
fn disconnect_checks_code_and_reason_and_ignores_sessions() {
    let mut e = Fake::default();
    let long = "r".repeat(MAX_DISCONNECT_REASON_BYTES + 1);
    for d in [
        json!({"code": 0}),
        json!({"reason": "no code"}),
        json!({"code": 1000}),
        json!({"code": 2999}),
        json!({"code": 5000}),
        json!({"code": 4000, "reason": long}),
    ] {
        let body = json!({"user": "u", "disconnect": d}).to_string();
        assert_eq!(
            call_json(&mut e, "disconnect", &body),
            bad_request(),
            "{body}"
        );
    }
    assert!(e.calls.is_empty());
    let ok = "r".repeat(MAX_DISCONNECT_REASON_BYTES);
    for code in [3000, 4999] {
        let body = json!({"user": "u", "disconnect": {"code": code, "reason": ok}}).to_string();
        assert_eq!(
            call_json(&mut e, "disconnect", &body),
            json!({"result": {}})
        );
    }
    assert_eq!(e.calls.len(), 2);
    // A session matches no wsrelay connection: success, engine untouched.
    let body = r#"{"user":"u","session":"s-1"}"#;
    assert_eq!(call_json(&mut e, "disconnect", body), json!({"result": {}}));
    assert_eq!(e.calls.len(), 2);
    e.fail_all = Some(ErrorCode::Internal);
    assert_eq!(
        call_json(&mut e, "disconnect", r#"{"user":"u"}"#),
        api_error(100, "internal server error")
    );
}

#[test]
fn unsubscribe_variants() {
    let mut e = Fake::default();
    let (_, text) = call(&mut e, "unsubscribe", r#"{"user":"42","channel":"chat:1"}"#);
    assert_eq!(text, r#"{"result":{}}"#);
    call_json(
        &mut e,
        "unsubscribe",
        r#"{"user":"42","channel":"chat:1","client":"c-9"}"#,
    );
    call_json(&mut e, "unsubscribe", r#"{"channel":"chat:1","client":""}"#);
    assert_eq!(
        e.calls,
        [
            Rec::Unsubscribe {
                user: "42".into(),
                channel: "chat:1".into(),
                client: None,
            },
            Rec::Unsubscribe {
                user: "42".into(),
                channel: "chat:1".into(),
                client: Some("c-9".into()),
            },
            Rec::Unsubscribe {
                user: "".into(),
                channel: "chat:1".into(),
                client: None,
            },
        ]
    );
    e.calls.clear();
    assert_eq!(
        call_json(&mut e, "unsubscribe", r#"{"user":"42"}"#),
        bad_request()
    );
    let body = r#"{"user":"42","channel":"c","session":"s"}"#;
    assert_eq!(
        call_json(&mut e, "unsubscribe", body),
        json!({"result": {}})
    );
    assert!(e.calls.is_empty());
    e.fail_channel = Some(("nope:c", ErrorCode::UnknownChannel));
    assert_eq!(
        call_json(&mut e, "unsubscribe", r#"{"user":"42","channel":"nope:c"}"#),
        api_error(102, "unknown channel")
    );
}
