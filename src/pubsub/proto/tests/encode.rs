//! Reply/push encoding: golden strings written by hand from `client.proto`
//! and Centrifugo's omit-defaults rule, plus JSON round trips.

use super::super::*;
use super::{one, raw};
use serde_json::Value;

/// Encodes with `f` into a fresh Vec, checks it parses as JSON, returns it.
fn enc(f: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut out = Vec::new();
    f(&mut out);
    let s = String::from_utf8(out).unwrap();
    serde_json::from_str::<Value>(&s).unwrap_or_else(|e| panic!("{s}: {e}"));
    s
}

#[test]
fn error_and_empty_replies() {
    assert_eq!(
        enc(|o| encode_error_reply(3, ErrorCode::PermissionDenied, o)),
        r#"{"id":3,"error":{"code":103,"message":"permission denied"}}"#
    );
    assert_eq!(
        enc(|o| encode_error_reply(4, ErrorCode::Internal, o)),
        r#"{"id":4,"error":{"code":100,"message":"internal server error","temporary":true}}"#
    );
    assert_eq!(
        enc(|o| encode_empty_reply(5, EmptyResult::Publish, o)),
        r#"{"id":5,"publish":{}}"#
    );
    assert_eq!(
        enc(|o| encode_empty_reply(6, EmptyResult::Unsubscribe, o)),
        r#"{"id":6,"unsubscribe":{}}"#
    );
    assert_eq!(
        enc(|o| encode_empty_reply(7, EmptyResult::Ping, o)),
        r#"{"id":7,"ping":{}}"#
    );
    assert_eq!(enc(encode_ping), "{}");
}

#[test]
fn connect_reply() {
    let data = raw(r#"{"motd": "hi"}"#);
    let r: ConnectResult<'_> = ConnectResult {
        client: "c-1",
        version: "wsrelay",
        expires: true,
        ttl: 60,
        data: Some(&data),
        subs: &[(
            "news",
            SubscribeResult {
                recoverable: true,
                epoch: "e",
                offset: 2,
                ..Default::default()
            },
        )],
        ping: 25,
        pong: true,
    };
    assert_eq!(
        enc(|o| encode_connect_reply(1, &r, o)),
        r#"{"id":1,"connect":{"client":"c-1","version":"wsrelay","expires":true,"ttl":60,"data":{"motd": "hi"},"subs":{"news":{"recoverable":true,"epoch":"e","offset":2}},"ping":25,"pong":true}}"#
    );
    let minimal: ConnectResult<'_> = ConnectResult {
        client: "c",
        ..Default::default()
    };
    assert_eq!(
        enc(|o| encode_connect_reply(2, &minimal, o)),
        r#"{"id":2,"connect":{"client":"c"}}"#
    );
}

#[test]
fn subscribe_reply() {
    let d1 = raw("1");
    let info = ClientInfo {
        user: "",
        client: "c9",
        ..Default::default()
    };
    let pubs = [
        Publication {
            data: &d1,
            info: Some(info),
            offset: 5,
            tags: &[],
        },
        Publication {
            data: &d1,
            info: None,
            offset: 0,
            tags: &[("k", "v")],
        },
    ];
    let sdata = raw(r#"{"s":1}"#);
    let r = SubscribeResult {
        expires: true,
        ttl: 30,
        recoverable: true,
        epoch: "xyz",
        publications: &pubs,
        recovered: true,
        offset: 6,
        positioned: true,
        data: Some(&sdata),
        was_recovering: true,
    };
    assert_eq!(
        enc(|o| encode_subscribe_reply(2, &r, o)),
        r#"{"id":2,"subscribe":{"expires":true,"ttl":30,"recoverable":true,"epoch":"xyz","publications":[{"data":1,"info":{"user":"","client":"c9"},"offset":5},{"data":1,"tags":{"k":"v"}}],"recovered":true,"offset":6,"positioned":true,"data":{"s":1},"was_recovering":true}}"#
    );
    assert_eq!(
        enc(|o| encode_subscribe_reply(3, &SubscribeResult::<'_, Publication<'_>>::default(), o)),
        r#"{"id":3,"subscribe":{}}"#
    );
}

#[test]
fn other_replies() {
    let d = raw(r#"["a"]"#);
    let pubs = [Publication {
        data: &d,
        info: None,
        offset: 9,
        tags: &[],
    }];
    let h = HistoryResult {
        publications: &pubs,
        epoch: "ep",
        offset: 9,
    };
    assert_eq!(
        enc(|o| encode_history_reply(1, &h, o)),
        r#"{"id":1,"history":{"publications":[{"data":["a"],"offset":9}],"epoch":"ep","offset":9}}"#
    );
    let ci = raw(r#"{"n":"A"}"#);
    let clients = [
        (
            "c1",
            ClientInfo {
                user: "u1",
                client: "c1",
                conn_info: Some(&ci),
                chan_info: Some(&ci),
            },
        ),
        (
            "c2",
            ClientInfo {
                user: "u2",
                client: "c2",
                ..Default::default()
            },
        ),
    ];
    assert_eq!(
        enc(|o| encode_presence_reply(2, &clients, o)),
        r#"{"id":2,"presence":{"presence":{"c1":{"user":"u1","client":"c1","conn_info":{"n":"A"},"chan_info":{"n":"A"}},"c2":{"user":"u2","client":"c2"}}}}"#
    );
    assert_eq!(
        enc(|o| encode_presence_reply(2, &[], o)),
        r#"{"id":2,"presence":{}}"#
    );
    assert_eq!(
        enc(|o| encode_presence_stats_reply(3, 4, 2, o)),
        r#"{"id":3,"presence_stats":{"num_clients":4,"num_users":2}}"#
    );
    let r = RefreshResult {
        client: "c",
        version: "v",
        expires: true,
        ttl: 120,
    };
    assert_eq!(
        enc(|o| encode_refresh_reply(4, &r, o)),
        r#"{"id":4,"refresh":{"client":"c","version":"v","expires":true,"ttl":120}}"#
    );
    assert_eq!(
        enc(|o| encode_sub_refresh_reply(5, true, 10, o)),
        r#"{"id":5,"sub_refresh":{"expires":true,"ttl":10}}"#
    );
    assert_eq!(
        enc(|o| encode_rpc_reply(6, Some(&d), o)),
        r#"{"id":6,"rpc":{"data":["a"]}}"#
    );
    assert_eq!(
        enc(|o| encode_rpc_reply(7, None, o)),
        r#"{"id":7,"rpc":{}}"#
    );
}

#[test]
fn pushes() {
    let d = raw(r#"{"text":"hi"}"#);
    let info = ClientInfo {
        user: "u",
        client: "c",
        ..Default::default()
    };
    let p = Publication {
        data: &d,
        info: Some(info),
        offset: 3,
        tags: &[],
    };
    assert_eq!(
        enc(|o| encode_pub_push("chat:a", &p, o)),
        r#"{"push":{"channel":"chat:a","pub":{"data":{"text":"hi"},"info":{"user":"u","client":"c"},"offset":3}}}"#
    );
    assert_eq!(
        enc(|o| encode_join_push("c", &info, o)),
        r#"{"push":{"channel":"c","join":{"info":{"user":"u","client":"c"}}}}"#
    );
    assert_eq!(
        enc(|o| encode_leave_push("c", &info, o)),
        r#"{"push":{"channel":"c","leave":{"info":{"user":"u","client":"c"}}}}"#
    );
    assert_eq!(
        enc(|o| encode_unsubscribe_push("c", UnsubscribeCode::Server, o)),
        r#"{"push":{"channel":"c","unsubscribe":{"code":2000,"reason":"server unsubscribe"}}}"#
    );
    assert_eq!(
        enc(|o| encode_disconnect_push(DisconnectCode::Shutdown, o)),
        r#"{"push":{"disconnect":{"code":3001,"reason":"shutdown"}}}"#
    );
}

#[test]
fn pub_push_is_shareable_and_appends() {
    let d = raw("1");
    let p = Publication {
        data: &d,
        info: None,
        offset: 0,
        tags: &[],
    };
    let mut shared = Vec::new();
    encode_pub_push("c", &p, &mut shared);
    // A connection's buffer with a reply already in it: separator + bytes.
    let mut conn = Vec::new();
    encode_empty_reply(1, EmptyResult::Publish, &mut conn);
    separate(&mut conn);
    conn.extend_from_slice(&shared);
    assert_eq!(
        conn,
        b"{\"id\":1,\"publish\":{}}\n{\"push\":{\"channel\":\"c\",\"pub\":{\"data\":1}}}"
    );
    let mut empty = Vec::new();
    separate(&mut empty);
    assert!(empty.is_empty());
}

#[test]
fn raw_data_round_trips_byte_for_byte() {
    // Whitespace, key order, escapes, big numbers: nothing is normalised.
    let payload = r#"{ "z" : 1.50e3, "a":[true,null , "\u2028\ud83d\ude00"], "big": 123456789012345678901234567890 }"#;
    let frame = format!(r#"{{"id":1,"publish":{{"channel":"c","data":{payload}}}}}"#);
    let CommandBody::Publish(p) = one(&frame).body else {
        panic!()
    };
    let data = p.data.unwrap();
    assert_eq!(data.get(), payload);
    let mut out = Vec::new();
    encode_pub_push(
        "c",
        &Publication {
            data,
            info: None,
            offset: 0,
            tags: &[],
        },
        &mut out,
    );
    let expected = format!(r#"{{"push":{{"channel":"c","pub":{{"data":{payload}}}}}}}"#);
    assert_eq!(String::from_utf8(out).unwrap(), expected);
}

#[test]
fn strings_are_escaped_and_round_trip() {
    let nasty = "q\"b\\s/\n\r\t\u{8}\u{c}\u{1}\u{1f}é😀\u{2028}";
    let info = ClientInfo {
        user: nasty,
        client: "c",
        ..Default::default()
    };
    let tags = [(nasty, nasty)];
    let d = raw("null");
    let p = Publication {
        data: &d,
        info: Some(info),
        offset: u64::MAX,
        tags: &tags,
    };
    let s = enc(|o| encode_pub_push(nasty, &p, o));
    assert!(
        s.contains(r#"\u0001\u001f"#) && s.contains(r#"\b\f"#),
        "{s}"
    );
    let v: Value = serde_json::from_str(&s).unwrap();
    assert_eq!(v["push"]["channel"], nasty);
    assert_eq!(v["push"]["pub"]["info"]["user"], nasty);
    assert_eq!(v["push"]["pub"]["tags"][nasty], nasty);
    assert_eq!(v["push"]["pub"]["offset"], u64::MAX);
    assert_eq!(v["push"]["pub"]["data"], Value::Null);
}
