use super::*;
use proptest::prelude::*;
use serde_json::{json, Value};
use std::sync::Arc;

const KEY: &str = "secret-key";

/// What the fake engine was asked to do.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Rec {
    Publish {
        channel: String,
        payload: Vec<u8>,
        opts: PublishOptions,
    },
    History {
        channel: String,
        since: Option<StreamPosition>,
        limit: Option<usize>,
        reverse: bool,
    },
    HistoryRemove(String),
    Presence(String),
    PresenceStats(String),
    Channels {
        pattern: bool,
    },
    Info,
    Disconnect {
        user: String,
        client: Option<String>,
        whitelist: Vec<String>,
        code: u32,
        reason: String,
    },
    Unsubscribe {
        user: String,
        channel: String,
        client: Option<String>,
    },
}

/// A relay stand-in: records calls, answers from its fields.
#[derive(Default)]
struct Fake {
    calls: Vec<Rec>,
    /// Every call on this channel fails with this code.
    fail_channel: Option<(&'static str, ErrorCode)>,
    /// Every call fails with this code.
    fail_all: Option<ErrorCode>,
    /// Publishes return positions (offset = publish count, epoch "ep").
    positioned: bool,
    history: Option<HistoryResult>,
    presence: Vec<ClientInfo>,
    channels: Vec<(String, u64)>,
    info: NodeInfo,
}

impl Fake {
    fn check(&self, channel: &str) -> Result<(), ErrorCode> {
        if let Some(code) = self.fail_all {
            return Err(code);
        }
        match self.fail_channel {
            Some((ch, code)) if ch == channel => Err(code),
            _ => Ok(()),
        }
    }
}

impl ApiEngine for Fake {
    fn publish(
        &mut self,
        channel: &str,
        payload: &[u8],
        opts: &PublishOptions,
    ) -> Result<Option<StreamPosition>, ErrorCode> {
        self.calls.push(Rec::Publish {
            channel: channel.into(),
            payload: payload.to_vec(),
            opts: opts.clone(),
        });
        self.check(channel)?;
        let n = self
            .calls
            .iter()
            .filter(|c| matches!(c, Rec::Publish { .. }))
            .count();
        Ok((self.positioned && !opts.skip_history).then(|| pos(n as u64, "ep")))
    }

    fn history(
        &mut self,
        channel: &str,
        since: Option<&StreamPosition>,
        limit: Option<usize>,
        reverse: bool,
    ) -> Result<HistoryResult, ErrorCode> {
        self.calls.push(Rec::History {
            channel: channel.into(),
            since: since.cloned(),
            limit,
            reverse,
        });
        self.check(channel)?;
        Ok(self.history.clone().unwrap_or(HistoryResult {
            publications: Vec::new(),
            position: pos(0, "e0"),
        }))
    }

    fn history_remove(&mut self, channel: &str) -> Result<(), ErrorCode> {
        self.calls.push(Rec::HistoryRemove(channel.into()));
        self.check(channel)
    }

    fn presence(&mut self, channel: &str) -> Result<Vec<ClientInfo>, ErrorCode> {
        self.calls.push(Rec::Presence(channel.into()));
        self.check(channel)?;
        Ok(self.presence.clone())
    }

    fn presence_stats(&mut self, channel: &str) -> Result<PresenceStats, ErrorCode> {
        self.calls.push(Rec::PresenceStats(channel.into()));
        self.check(channel)?;
        Ok(PresenceStats {
            num_clients: 3,
            num_users: 2,
        })
    }

    fn channels(&mut self, pattern: Option<&Glob>) -> Result<Vec<(String, u64)>, ErrorCode> {
        self.calls.push(Rec::Channels {
            pattern: pattern.is_some(),
        });
        self.check("")?;
        Ok(self
            .channels
            .iter()
            .filter(|(ch, _)| pattern.is_none_or(|g| g.matches(ch)))
            .cloned()
            .collect())
    }

    fn info(&mut self) -> Result<NodeInfo, ErrorCode> {
        self.calls.push(Rec::Info);
        self.check("")?;
        Ok(self.info.clone())
    }

    fn disconnect(&mut self, t: &DisconnectTarget<'_>) -> Result<(), ErrorCode> {
        self.calls.push(Rec::Disconnect {
            user: t.user.into(),
            client: t.client.map(Into::into),
            whitelist: t.whitelist.to_vec(),
            code: t.code,
            reason: t.reason.into(),
        });
        self.check("")
    }

    fn unsubscribe(
        &mut self,
        user: &str,
        channel: &str,
        client: Option<&str>,
    ) -> Result<(), ErrorCode> {
        self.calls.push(Rec::Unsubscribe {
            user: user.into(),
            channel: channel.into(),
            client: client.map(Into::into),
        });
        self.check(channel)
    }
}

fn pos(offset: u64, epoch: &str) -> StreamPosition {
    StreamPosition {
        offset,
        epoch: EpochId::from(epoch),
    }
}

fn req<'a>(method: &'a str, body: &'a str) -> ApiRequest<'a> {
    ApiRequest {
        method,
        api_key: Some(KEY),
        transport_errors: false,
        body: body.as_bytes(),
    }
}

/// Calls `method` with a good key; returns (status, body text).
fn call(engine: &mut Fake, method: &str, body: &str) -> (u16, String) {
    let resp = handle(&req(method, body), KEY, engine);
    (
        resp.status,
        String::from_utf8(resp.body).expect("utf-8 body"),
    )
}

/// Calls `method` and parses the 200 JSON answer.
fn call_json(engine: &mut Fake, method: &str, body: &str) -> Value {
    let resp = handle(&req(method, body), KEY, engine);
    assert_eq!(resp.status, 200, "{method} {body}: {:?}", resp);
    assert_eq!(resp.content_type, "application/json");
    serde_json::from_slice(&resp.body).expect("JSON body")
}

fn api_error(code: u32, message: &str) -> Value {
    json!({"error": {"code": code, "message": message}})
}

fn bad_request() -> Value {
    api_error(107, "bad request")
}

// ---- auth -----------------------------------------------------------------

#[test]
fn api_key_from_headers_variants() {
    assert_eq!(api_key_from_headers(Some("k1"), None), Some("k1"));
    assert_eq!(api_key_from_headers(None, Some("apikey k2")), Some("k2"));
    assert_eq!(api_key_from_headers(None, Some("ApiKey   k2 ")), Some("k2"));
    assert_eq!(api_key_from_headers(None, Some("APIKEY\tk2")), Some("k2"));
    // X-API-Key wins, even over a right Authorization.
    assert_eq!(
        api_key_from_headers(Some("wrong"), Some("apikey right")),
        Some("wrong")
    );
    // An empty X-API-Key is as if absent.
    assert_eq!(
        api_key_from_headers(Some(""), Some("apikey k3")),
        Some("k3")
    );
    for bad in [
        "Bearer k",
        "apikey",
        "apikey a b",
        "",
        "   ",
        "apikeyk",
        "basic apikey",
    ] {
        assert_eq!(api_key_from_headers(None, Some(bad)), None, "{bad:?}");
    }
    assert_eq!(api_key_from_headers(None, None), None);
}

#[test]
fn keys_compare_exactly() {
    assert!(keys_equal(b"abc", b"abc"));
    assert!(keys_equal(b"", b""));
    for other in [&b"abd"[..], b"ab", b"abcd", b"", b"ABC", b"abc\0"] {
        assert!(!keys_equal(other, b"abc"), "{other:?}");
        assert!(!keys_equal(b"abc", other), "{other:?}");
    }
}

#[test]
fn api_off_when_key_not_configured() {
    let mut e = Fake::default();
    for key in [None, Some(""), Some("anything")] {
        let r = ApiRequest {
            api_key: key,
            ..req("info", "{}")
        };
        let resp = handle(&r, "", &mut e);
        assert_eq!(resp.status, 404, "{key:?}");
        assert!(resp.body.is_empty());
    }
    assert!(e.calls.is_empty());
}

#[test]
fn wrong_or_missing_key_is_401_before_anything_else() {
    let mut e = Fake::default();
    let prefix = &KEY[..KEY.len() - 1];
    let longer = format!("{KEY}x");
    for key in [
        None,
        Some(""),
        Some("nope"),
        Some(prefix),
        Some(longer.as_str()),
    ] {
        for method in ["publish", "info", "no_such_method", "batch"] {
            let r = ApiRequest {
                api_key: key,
                ..req(method, "{\"channel\":\"a\",\"data\":1}")
            };
            let resp = handle(&r, KEY, &mut e);
            assert_eq!(resp.status, 401, "{key:?} {method}");
            assert!(resp.body.is_empty());
        }
    }
    // Even a malformed body: auth is checked first.
    let r = ApiRequest {
        api_key: None,
        ..req("publish", "{{{")
    };
    assert_eq!(handle(&r, KEY, &mut e).status, 401);
    assert!(e.calls.is_empty());
}

#[test]
fn unknown_and_unimplemented_methods_are_404() {
    let mut e = Fake::default();
    for method in [
        "/",
        "batch/x",
        "nope",
        "Publish",
        "subscribe",
        "refresh",
        "rpc",
        "publish/x",
        "connections",
    ] {
        let (status, body) = call(&mut e, method, "{}");
        assert_eq!(status, 404, "{method:?}");
        assert!(body.is_empty());
    }
    assert!(e.calls.is_empty());
}

#[test]
fn works_with_a_trait_object() {
    let mut fake = Fake::default();
    let engine: &mut dyn ApiEngine = &mut fake;
    let resp = handle(&req("presence_stats", r#"{"channel":"c"}"#), KEY, engine);
    assert_eq!(resp.body, br#"{"result":{"num_clients":3,"num_users":2}}"#);
    assert_eq!(fake.calls, [Rec::PresenceStats("c".into())]);
}

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

// ---- history --------------------------------------------------------------

fn publication(offset: u64, payload: &[u8]) -> crate::pubsub::history::Publication {
    crate::pubsub::history::Publication {
        offset,
        payload: payload.into(),
    }
}

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

fn client(id: &str, user: &str, conn: Option<&[u8]>, chan: Option<&[u8]>) -> ClientInfo {
    ClientInfo {
        client: id.into(),
        user: user.into(),
        conn_info: conn.map(Arc::from),
        chan_info: chan.map(Arc::from),
    }
}

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

// ---- glob -----------------------------------------------------------------

fn glob_matches(pattern: &str, name: &str) -> bool {
    Glob::new(pattern)
        .unwrap_or_else(|e| panic!("{pattern}: {e}"))
        .matches(name)
}

#[test]
fn glob_syntax() {
    let yes = [
        ("", ""),
        ("abc", "abc"),
        ("*", ""),
        ("*", "any:thing/at#all"),
        ("**", "a:b"),
        ("chat:*", "chat:"),
        ("chat:*", "chat:room#1,2"),
        ("*:*", "a:b"),
        ("?", "é"),
        ("a?c", "abc"),
        ("[abc]", "b"),
        ("[a-c]x", "cx"),
        ("[!a-c]", "d"),
        ("[!abc]", "-"),
        ("[a-]", "-"),
        ("[\\]]", "]"),
        ("{news,chat}:*", "chat:1"),
        ("{news,chat}:*", "news:"),
        ("{a,{b,c}d}", "cd"),
        ("{,x}y", "y"),
        ("{a}", "a"),
        ("\\*", "*"),
        ("\\{a,b\\}", "{a,b}"),
        ("a,b}", "a,b}"),
        ("a]", "a]"),
        ("*a*a*a*a*a*a*b", "aaaaaaaaaaaaaaaaaab"),
    ];
    for (p, n) in yes {
        assert!(glob_matches(p, n), "{p:?} should match {n:?}");
    }
    let no = [
        ("", "a"),
        ("abc", "abcd"),
        ("abc", "ab"),
        ("chat:*", "chat"),
        ("chat:*", "xchat:1"),
        ("?", ""),
        ("?", "ab"),
        ("[abc]", "d"),
        ("[!a-c]", "b"),
        ("{news,chat}:*", "new:1"),
        ("{a,{b,c}d}", "d"),
        ("\\*", "a"),
        (
            "*a*a*a*a*a*a*b",
            "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaac",
        ),
    ];
    for (p, n) in no {
        assert!(!glob_matches(p, n), "{p:?} should not match {n:?}");
    }
}

#[test]
fn glob_rejects_bad_patterns() {
    let long = "a".repeat(glob::MAX_PATTERN_BYTES + 1);
    let deep = "{".repeat(glob::MAX_NESTING + 1);
    let cases = [
        ("[", GlobError::BadClass),
        ("[]", GlobError::BadClass),
        ("[!]", GlobError::BadClass),
        ("[abc", GlobError::BadClass),
        ("[a\\", GlobError::BadClass),
        ("[z-a]", GlobError::BadRange),
        ("{a,b", GlobError::UnclosedBrace),
        ("{", GlobError::UnclosedBrace),
        ("abc\\", GlobError::TrailingEscape),
        (long.as_str(), GlobError::TooLong),
        (deep.as_str(), GlobError::TooDeep),
    ];
    for (p, want) in cases {
        assert_eq!(Glob::new(p).err(), Some(want), "{p:?}");
    }
    let ok_depth = format!(
        "{}x{}",
        "{".repeat(glob::MAX_NESTING),
        "}".repeat(glob::MAX_NESTING)
    );
    assert!(glob_matches(&ok_depth, "x"));
}

/// Backtracking reference matcher for `*`, `?`, `[..]` (plain sets) and
/// non-nested `{a,b}`: slow but obviously right.
fn reference(p: &[char], n: &[char]) -> bool {
    match p.first() {
        None => n.is_empty(),
        Some('*') => (0..=n.len()).any(|i| reference(&p[1..], &n[i..])),
        Some('?') => !n.is_empty() && reference(&p[1..], &n[1..]),
        Some('[') => {
            let close = p.iter().position(|&c| c == ']').expect("closed");
            let set = &p[1..close];
            !n.is_empty() && set.contains(&n[0]) && reference(&p[close + 1..], &n[1..])
        }
        Some('{') => {
            let close = p.iter().position(|&c| c == '}').expect("closed");
            p[1..close].split(|&c| c == ',').any(|alt| {
                let mut q = alt.to_vec();
                q.extend_from_slice(&p[close + 1..]);
                reference(&q, n)
            })
        }
        Some(&c) => n.first() == Some(&c) && reference(&p[1..], &n[1..]),
    }
}

fn pattern_strategy() -> impl Strategy<Value = String> {
    let atom = prop_oneof![
        4 => "[ab:]".prop_map(String::from),
        2 => Just("*".to_string()),
        2 => Just("?".to_string()),
        1 => "\\[[ab]{1,2}\\]".prop_map(String::from),
        1 => "\\{[ab]{0,2}(,[ab*?]{0,2}){0,2}\\}".prop_map(String::from),
    ];
    prop::collection::vec(atom, 0..8).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn glob_agrees_with_reference(p in pattern_strategy(), n in "[ab:]{0,10}") {
        let pc: Vec<char> = p.chars().collect();
        let nc: Vec<char> = n.chars().collect();
        prop_assert_eq!(glob_matches(&p, &n), reference(&pc, &nc), "{} vs {}", p, n);
    }

    #[test]
    fn glob_never_panics(p in "[\\PC\\\\*?\\[\\]{},!-]{0,40}", n in "\\PC{0,30}") {
        if let Ok(g) = Glob::new(&p) {
            let _ = g.matches(&n);
        }
    }
}

// ---- fuzz: no input panics, every answer is well-formed --------------------

const METHODS: [&str; 12] = [
    "",
    "publish",
    "broadcast",
    "history",
    "history_remove",
    "presence",
    "presence_stats",
    "channels",
    "info",
    "disconnect",
    "unsubscribe",
    "batch",
];

const SEEDS: [&str; 12] = [
    r#"{"id":1,"method":"publish","params":{"channel":"a","data":1}}
{"id":2,"method":8,"params":{"pattern":"a*"}} {"method":"history","params":{"channel":"c","limit":3}}"#,
    r#"{"channel":"chat:1","data":{"a":[1,"x",null]},"tags":{"k":"v"},"skip_history":true}"#,
    r#"{"channels":["a","b",""],"data":"x","b64data":"aGk=","idempotency_key":"k"}"#,
    r#"{"channel":"c","limit":-1,"since":{"offset":3,"epoch":"e"},"reverse":true}"#,
    r#"{"channel":"c"}"#,
    r#"{"channel":"c"}"#,
    r#"{"channel":"c"}"#,
    r#"{"pattern":"{chat,news}:*[0-9]?"}"#,
    r#"{}"#,
    r#"{"user":"u","client":"c","whitelist":["x"],"disconnect":{"code":4000,"reason":"r"}}"#,
    r#"{"user":"u","channel":"c","client":"c1","session":""}"#,
    r#"{"commands":[{"publish":{"channel":"a","data":1}},{"history":{"channel":"c","limit":2}},{"channels":{"pattern":"*"}}],"parallel":false}"#,
];

/// A fake whose answers exercise every writer path.
fn rich_fake() -> Fake {
    Fake {
        positioned: true,
        history: Some(HistoryResult {
            publications: vec![publication(1, b"{\"x\":1}"), publication(2, b"\xffraw")],
            position: pos(2, "ep"),
        }),
        presence: vec![client("c1", "u", Some(b"{}"), Some(b"not json"))],
        channels: vec![("chat:1".into(), 1), ("news:22".into(), 2)],
        fail_channel: Some(("b", ErrorCode::NotAvailable)),
        ..Fake::default()
    }
}

/// Checks the invariants of an authorised call to a known method.
fn check_answer(method: &str, body: &[u8], transport: bool) -> Result<(), TestCaseError> {
    let mut e = rich_fake();
    let r = ApiRequest {
        method,
        api_key: Some(KEY),
        transport_errors: transport,
        body,
    };
    let resp = handle(&r, KEY, &mut e);
    match resp.status {
        400 if resp.content_type.starts_with("text/plain") => {
            // Transport-mode 400s carry JSON; decode 400s never call in.
            prop_assert!(e.calls.is_empty());
        }
        200 if method.is_empty() => {
            // Legacy: one reply object per line.
            prop_assert_eq!(resp.content_type, "application/json");
            let text = std::str::from_utf8(&resp.body)
                .map_err(|err| TestCaseError::fail(err.to_string()))?;
            for line in text.split('\n') {
                let v: Value = serde_json::from_str(line)
                    .map_err(|err| TestCaseError::fail(format!("{err}: {line}")))?;
                let obj = v
                    .as_object()
                    .ok_or_else(|| TestCaseError::fail("not an object"))?;
                prop_assert!(obj.contains_key("result") != obj.contains_key("error"));
                prop_assert!(obj.len() <= 2);
            }
        }
        200 | 400 | 404 | 416 | 500 => {
            prop_assert_eq!(resp.content_type, "application/json");
            let v: Value = serde_json::from_slice(&resp.body)
                .map_err(|err| TestCaseError::fail(format!("{err}: {:?}", resp.body)))?;
            let obj = v
                .as_object()
                .ok_or_else(|| TestCaseError::fail("not an object"))?;
            if resp.status != 200 {
                prop_assert!(transport);
                prop_assert!(obj.contains_key("code") && obj.contains_key("message"));
            } else if method == "batch" {
                prop_assert!(obj.len() == 1 && obj["replies"].is_array());
            } else {
                prop_assert_eq!(obj.len(), 1);
                prop_assert!(obj.contains_key("result") || obj.contains_key("error"));
            }
        }
        other => prop_assert!(false, "status {other}"),
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Edit {
    Flip(usize, u8),
    Insert(usize, u8),
    Delete(usize),
    Truncate(usize),
}

fn edit_strategy() -> impl Strategy<Value = Edit> {
    let byte = prop_oneof![
        prop::sample::select(b"{}[]\":,-0123456789.eEtrufalsn\\ ".to_vec()),
        any::<u8>(),
    ];
    prop_oneof![
        (any::<usize>(), byte.clone()).prop_map(|(i, b)| Edit::Flip(i, b)),
        (any::<usize>(), byte).prop_map(|(i, b)| Edit::Insert(i, b)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Truncate),
    ]
}

fn apply(seed: &str, edits: &[Edit]) -> Vec<u8> {
    let mut b = seed.as_bytes().to_vec();
    for edit in edits {
        let n = b.len();
        match *edit {
            Edit::Flip(i, x) if n > 0 => b[i % n] = x,
            Edit::Insert(i, x) => b.insert(i % (n + 1), x),
            Edit::Delete(i) if n > 0 => {
                b.remove(i % n);
            }
            Edit::Truncate(i) => b.truncate(i % (n + 1)),
            _ => {}
        }
    }
    b
}

/// Arbitrary JSON values, to put type confusion into known fields.
fn json_strategy() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        "[a-z:#*?{},\\[\\]\\\\=+/]{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(
                prop_oneof![
                    Just("channel".to_string()),
                    Just("data".to_string()),
                    Just("offset".to_string()),
                    Just("epoch".to_string()),
                    Just("code".to_string()),
                    Just("publish".to_string()),
                    "[a-z_]{1,8}".prop_map(String::from),
                ],
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: [&str; 22] = [
    "channel",
    "channels",
    "data",
    "b64data",
    "skip_history",
    "tags",
    "idempotency_key",
    "delta",
    "limit",
    "since",
    "reverse",
    "pattern",
    "user",
    "client",
    "session",
    "whitelist",
    "disconnect",
    "commands",
    "parallel",
    "publish",
    "history",
    "info",
];

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn mutated_bodies_never_panic(
        which in 0..METHODS.len(),
        seed in 0..SEEDS.len(),
        edits in prop::collection::vec(edit_strategy(), 0..6),
        transport in any::<bool>(),
    ) {
        let body = apply(SEEDS[seed], &edits);
        check_answer(METHODS[which], &body, transport)?;
    }

    #[test]
    fn random_bytes_never_panic(which in 0..METHODS.len(), body in prop::collection::vec(any::<u8>(), 0..64)) {
        check_answer(METHODS[which], &body, false)?;
    }

    #[test]
    fn typed_fields_with_any_values_never_panic(
        which in 0..METHODS.len(),
        fields in prop::collection::btree_map(0..FIELDS.len(), json_strategy(), 0..5),
        transport in any::<bool>(),
    ) {
        let obj: serde_json::Map<String, Value> =
            fields.into_iter().map(|(i, v)| (FIELDS[i].to_string(), v)).collect();
        let body = Value::Object(obj).to_string();
        check_answer(METHODS[which], body.as_bytes(), transport)?;
        // The same values wrapped as one batch command of each method.
        let batch = json!({"commands": [{ METHODS[which]: serde_json::from_str::<Value>(&body).unwrap_or(Value::Null) }]});
        check_answer("batch", batch.to_string().as_bytes(), false)?;
    }
}
