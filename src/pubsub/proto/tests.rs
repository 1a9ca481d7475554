//! Codec tests. Golden strings are written by hand from `client.proto` and the
//! field-omission rules of Centrifugo's JSON encoder, not from our output.

mod encode;

use super::*;

const L: Limits = Limits {
    max_frame_bytes: 1024,
    max_command_bytes: 512,
    max_commands_per_frame: 4,
};

pub(super) fn one(frame: &str) -> Command<'_> {
    let mut all = parse_frame_all(frame.as_bytes(), &L).unwrap();
    assert_eq!(all.len(), 1, "{frame}");
    all.pop().unwrap()
}

fn err(frame: &str) -> ProtoError {
    parse_frame_all(frame.as_bytes(), &L).unwrap_err()
}

pub(super) fn raw(json: &str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).unwrap()
}

#[test]
fn connect_with_everything() {
    let c = one(
        r#"{"id":1,"connect":{"token":"t.k.n","data":{"a": [1, 2]},"name":"js","version":"5.0.0","subs":{"news":{"recover":true,"offset":7,"epoch":"ab"}},"headers":{"X-A":"b"},"flag":3}}"#,
    );
    assert_eq!(c.id, 1);
    let CommandBody::Connect(r) = c.body else {
        panic!("{c:?}")
    };
    assert_eq!(r.token, "t.k.n");
    assert_eq!(r.data.unwrap().get(), r#"{"a": [1, 2]}"#);
    assert_eq!((&*r.name, &*r.version), ("js", "5.0.0"));
    let s = &r.subs["news"];
    assert!(s.recover);
    assert_eq!((s.offset, &*s.epoch), (7, "ab"));
    assert_eq!(r.headers["X-A"], "b");
    assert!(matches!(r.token, Cow::Borrowed(_)), "no escapes: borrowed");
}

#[test]
fn subscribe_all_fields() {
    let c = one(
        r#"{"id":2,"subscribe":{"channel":"chat:a","token":"x","recover":true,"epoch":"e","offset":18446744073709551615,"data":"s","positioned":true,"recoverable":true,"join_leave":true,"delta":"fossil"}}"#,
    );
    let CommandBody::Subscribe(s) = c.body else {
        panic!()
    };
    assert_eq!(
        (&*s.channel, &*s.token, &*s.epoch, &*s.delta),
        ("chat:a", "x", "e", "fossil")
    );
    assert_eq!(s.offset, u64::MAX);
    assert!(s.recover && s.positioned && s.recoverable && s.join_leave);
    assert_eq!(s.data.unwrap().get(), r#""s""#);
    // Minimal subscribe: every field defaults.
    let CommandBody::Subscribe(s) = one(r#"{"id":3,"subscribe":{"channel":"c"}}"#).body else {
        panic!()
    };
    assert!(!s.recover && s.offset == 0 && s.data.is_none() && s.token.is_empty());
}

#[test]
fn channel_commands() {
    for (method, frame) in [
        ("unsubscribe", r#"{"id":4,"unsubscribe":{"channel":"c"}}"#),
        ("presence", r#"{"id":4,"presence":{"channel":"c"}}"#),
        (
            "presence_stats",
            r#"{"id":4,"presence_stats":{"channel":"c"}}"#,
        ),
    ] {
        let c = one(frame);
        assert_eq!((c.id, c.body.method()), (4, method));
        match c.body {
            CommandBody::Unsubscribe(r)
            | CommandBody::Presence(r)
            | CommandBody::PresenceStats(r) => {
                assert_eq!(r.channel, "c")
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn publish_history_refresh_rpc_send_ping() {
    let CommandBody::Publish(p) =
        one(r#"{"id":5,"publish":{"channel":"c","data":{"x":"\u00e9"}}}"#).body
    else {
        panic!()
    };
    assert_eq!(p.channel, "c");
    assert_eq!(
        p.data.unwrap().get(),
        r#"{"x":"\u00e9"}"#,
        "raw bytes, escapes kept"
    );

    let c = one(
        r#"{"id":6,"history":{"channel":"c","limit":-1,"since":{"offset":3,"epoch":"ep"},"reverse":true}}"#,
    );
    let CommandBody::History(h) = c.body else {
        panic!()
    };
    assert_eq!((h.limit, h.reverse), (-1, true));
    assert_eq!(
        h.since,
        Some(StreamPosition {
            offset: 3,
            epoch: "ep".into()
        })
    );
    let CommandBody::History(h) = one(r#"{"id":6,"history":{"channel":"c"}}"#).body else {
        panic!()
    };
    assert_eq!((h.limit, h.since, h.reverse), (0, None, false));

    let CommandBody::Refresh(r) = one(r#"{"id":7,"refresh":{"token":"nt"}}"#).body else {
        panic!()
    };
    assert_eq!(r.token, "nt");
    let CommandBody::SubRefresh(r) =
        one(r#"{"id":8,"sub_refresh":{"channel":"c","token":"st"}}"#).body
    else {
        panic!()
    };
    assert_eq!((&*r.channel, &*r.token), ("c", "st"));
    let CommandBody::Rpc(r) = one(r#"{"id":9,"rpc":{"method":"m","data":[1]}}"#).body else {
        panic!()
    };
    assert_eq!((&*r.method, r.data.unwrap().get()), ("m", "[1]"));

    let c = one(r#"{"send":{"data":"hi"}}"#);
    assert_eq!(c.id, 0, "send needs no id");
    let CommandBody::Send(s) = c.body else {
        panic!()
    };
    assert_eq!(s.data.unwrap().get(), r#""hi""#);
    assert!(matches!(
        one(r#"{"id":10,"send":{}}"#).body,
        CommandBody::Send(_)
    ));

    assert!(matches!(
        one(r#"{"id":11,"ping":{}}"#),
        Command {
            id: 11,
            body: CommandBody::Ping
        }
    ));
}

#[test]
fn empty_command_is_pong() {
    for frame in ["{}", "{}\n", " { } ", r#"{"id":0}"#, r#"{"connect":null}"#] {
        let c = one(frame);
        assert!(
            matches!(
                c,
                Command {
                    id: 0,
                    body: CommandBody::Pong
                }
            ),
            "{frame}"
        );
        assert_eq!(c.body.method(), "");
    }
}

#[test]
fn escaped_strings_are_decoded() {
    let CommandBody::Subscribe(s) = one(r#"{"id":1,"subscribe":{"channel":"a\"b\u0041"}}"#).body
    else {
        panic!()
    };
    assert_eq!(s.channel, "a\"bA");
    assert!(matches!(s.channel, Cow::Owned(_)));
}

#[test]
fn multi_command_frames_and_trailing_newline() {
    let frame = "{\"id\":1,\"connect\":{}}\n{\"id\":2,\"subscribe\":{\"channel\":\"a\"}}\n{}\n";
    let all = parse_frame_all(frame.as_bytes(), &L).unwrap();
    let got: Vec<_> = all.iter().map(|c| (c.id, c.body.method())).collect();
    assert_eq!(got, [(1, "connect"), (2, "subscribe"), (0, "")]);
    // \r\n also works: \r is JSON whitespace.
    assert_eq!(parse_frame_all(b"{}\r\n{}", &L).unwrap().len(), 2);
    // Lazily parsed: good commands before a bad one are still yielded.
    let mut it = parse_frame(b"{\"id\":1,\"ping\":{}}\nnope\n{}", &L).unwrap();
    assert!(it.next().unwrap().is_ok());
    assert!(matches!(it.next(), Some(Err(ProtoError::Malformed(_)))));
    assert!(it.next().is_none(), "stops after the first error");
}

#[test]
fn bad_frames_map_to_bad_request() {
    for frame in [
        "",
        "\n",
        "{}\n\n",
        "{}\n\n{}",
        "not json",
        "[]",
        "[1,{}]",
        "null",
        "{\"id\":1,\"connect\":{}",
        "{\"id\":-1,\"ping\":{}}",
        "{\"id\":4294967296,\"ping\":{}}",
        "{\"id\":\"1\",\"ping\":{}}",
        "{\"id\":1,\"subscribe\":{\"channel\":5}}",
        "{\"id\":1,\"subscribe\":{\"offset\":-1}}",
        "{\"id\":1,\"id\":2,\"ping\":{}}",
        "{\"id\":1,\"publish\":{\"data\":{\"a\":}}}",
        "{\"id\":1,\"ping\":{}} trailing",
    ] {
        let e = err(frame);
        assert_eq!(e.disconnect(), DisconnectCode::BadRequest, "{frame:?}: {e}");
    }
    assert_eq!(err(""), ProtoError::Empty);
    assert!(matches!(err("{}\n\n"), ProtoError::Empty));
    assert!(matches!(
        parse_frame_all(b"{\"id\":1,\xff}", &L),
        Err(ProtoError::Malformed(_))
    ));
}

#[test]
fn id_and_method_rules() {
    assert_eq!(
        err(r#"{"subscribe":{"channel":"c"}}"#),
        ProtoError::MissingId
    );
    assert_eq!(err(r#"{"id":0,"connect":{}}"#), ProtoError::MissingId);
    assert_eq!(err(r#"{"id":3}"#), ProtoError::UnknownMethod);
    assert_eq!(
        err(r#"{"id":3,"frobnicate":{}}"#),
        ProtoError::UnknownMethod
    );
    assert_eq!(
        err(r#"{"id":3,"ping":{},"publish":{}}"#),
        ProtoError::MultipleMethods
    );
    for e in [
        ProtoError::MissingId,
        ProtoError::UnknownMethod,
        ProtoError::MultipleMethods,
    ] {
        assert_eq!(e.disconnect(), DisconnectCode::BadRequest);
    }
    // Unknown fields are ignored, at every level, as Centrifugo does.
    let c = one(r#"{"id":3,"future":[1],"subscribe":{"channel":"c","tf":{"op":"and"}}}"#);
    assert_eq!(c.body.method(), "subscribe");
}

#[test]
fn limits() {
    let big = format!(
        "{{\"id\":1,\"publish\":{{\"data\":\"{}\"}}}}",
        "x".repeat(600)
    );
    let e = err(&big);
    assert!(
        matches!(e, ProtoError::CommandTooLarge { max: 512, .. }),
        "{e:?}"
    );
    assert_eq!(e.disconnect(), DisconnectCode::MessageTooBig);
    let huge = "{}\n".repeat(400);
    let e = err(&huge);
    assert_eq!(
        e,
        ProtoError::FrameTooLarge {
            len: 1200,
            max: 1024
        }
    );
    assert_eq!(e.disconnect().code(), 1009);
    let e = err("{}\n{}\n{}\n{}\n{}\n");
    assert_eq!(e, ProtoError::TooManyCommands { count: 5, max: 4 });
    assert_eq!(e.disconnect(), DisconnectCode::TooManyRequests);
    assert_eq!(parse_frame_all(b"{}\n{}\n{}\n{}\n", &L).unwrap().len(), 4);
    // Exactly at the limits is accepted.
    let at = format!(
        "{{\"id\":1,\"publish\":{{\"data\":\"{}\"}}}}",
        "x".repeat(512 - 30)
    );
    assert_eq!(at.len(), 512);
    assert!(parse_frame_all(at.as_bytes(), &L).is_ok());
    let d = Limits::default();
    assert_eq!(
        (
            d.max_frame_bytes,
            d.max_command_bytes,
            d.max_commands_per_frame
        ),
        (65536, 65536, 256)
    );
}
