//! The pub/sub protocol over real sockets (`/connection/websocket`):
//! commands and replies, channels shared with raw rooms, history with
//! offsets across workers, recovery, presence, join/leave, tokens and
//! refusals. The official SDK is exercised by `tests/sdk/` (Node).

use crate::support::*;
use serde_json::{json, Value};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::{Duration, Instant};
use tungstenite::Message;
use wsrelay::config::{ChannelOptions, Config, Namespace};

const SECRET: &str = "pubsub-test-secret";

fn chat_options() -> ChannelOptions {
    ChannelOptions {
        history_size: 10,
        history_ttl: Duration::from_secs(300),
        force_recovery: true,
        presence: true,
        join_leave: true,
        allow_subscribe_for_client: true,
        allow_subscribe_for_anonymous: true,
        allow_publish_for_subscriber: true,
        allow_publish_for_client: true,
        allow_publish_for_anonymous: true,
        allow_history_for_subscriber: true,
        allow_presence_for_subscriber: true,
        ..ChannelOptions::default()
    }
}

fn config() -> Config {
    let mut c = test_config();
    c.token_hmac_secret_key = SECRET.into();
    c.allow_anonymous_connect_without_token = true;
    c.allow_subscribe_for_client = true;
    c.allow_subscribe_for_anonymous = true;
    c.allow_publish_for_subscriber = true;
    c.allow_publish_for_anonymous = true;
    c.publish_token = "pub-token".into();
    c.namespaces = vec![
        Namespace {
            name: "chat".into(),
            options: chat_options(),
        },
        Namespace {
            name: "secret".into(),
            options: ChannelOptions::default(),
        },
    ];
    c
}

fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()).unwrap(),
    )
    .unwrap()
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A protocol client: sends commands, sorts replies from pushes.
struct Client {
    ws: Ws,
    next_id: u32,
    pushes: VecDeque<Value>,
    replies: VecDeque<Value>,
}

impl Client {
    fn open(addr: SocketAddr) -> Client {
        Client {
            ws: ws_connect(addr, "/connection/websocket"),
            next_id: 1,
            pushes: VecDeque::new(),
            replies: VecDeque::new(),
        }
    }

    fn connected(addr: SocketAddr, token: Option<&str>) -> Client {
        let mut c = Client::open(addr);
        let r = c.call(json!({"connect": {"token": token.unwrap_or("")}}));
        assert!(r.get("connect").is_some(), "connect failed: {r}");
        c
    }

    fn send_raw(&mut self, text: &str) {
        self.ws.send(Message::text(text)).unwrap();
    }

    /// Reads one frame and files its lines; false on timeout.
    fn pump(&mut self, timeout: Duration) -> bool {
        let Some(m) = ws_read(&mut self.ws, timeout) else {
            return false;
        };
        if let Message::Text(t) = m {
            for line in t.as_str().split('\n').filter(|l| !l.is_empty()) {
                let v: Value = serde_json::from_str(line).unwrap();
                if v.get("push").is_some() {
                    self.pushes.push_back(v["push"].clone());
                } else if v.get("id").is_some() {
                    self.replies.push_back(v);
                } else if v == json!({}) {
                    self.send_raw("{}");
                }
            }
        }
        true
    }

    /// Sends `body` as a command with the next id; returns its reply.
    fn call(&mut self, mut body: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        body["id"] = json!(id);
        self.send_raw(&body.to_string());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(i) = self.replies.iter().position(|r| r["id"] == json!(id)) {
                return self.replies.remove(i).unwrap();
            }
            assert!(Instant::now() < deadline, "no reply to command {id}");
            self.pump(Duration::from_millis(200));
        }
    }

    fn subscribe(&mut self, channel: &str, extra: Value) -> Value {
        let mut req = json!({"channel": channel});
        if let Value::Object(m) = extra {
            for (k, v) in m {
                req[k] = v;
            }
        }
        self.call(json!({ "subscribe": req }))
    }

    fn publish(&mut self, channel: &str, data: Value) -> Value {
        self.call(json!({"publish": {"channel": channel, "data": data}}))
    }

    /// The next push matching `pred`, within 5 s.
    fn push_where(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(i) = self.pushes.iter().position(&pred) {
                return self.pushes.remove(i).unwrap();
            }
            assert!(
                Instant::now() < deadline,
                "push not received; have {:?}",
                self.pushes
            );
            self.pump(Duration::from_millis(200));
        }
    }

    fn next_pub(&mut self, channel: &str) -> Value {
        let p = self.push_where(|p| p["channel"] == channel && p.get("pub").is_some());
        p["pub"].clone()
    }

    /// No push within the quiet window.
    fn assert_no_pub(&mut self) {
        let deadline = Instant::now() + QUIET;
        while Instant::now() < deadline {
            self.pump(Duration::from_millis(100));
        }
        assert!(
            !self.pushes.iter().any(|p| p.get("pub").is_some()),
            "unexpected publications: {:?}",
            self.pushes
        );
    }
}

#[test]
fn connect_reply_announces_the_heartbeat() {
    let h = start(config());
    let mut c = Client::open(h.local_addr());
    let r = c.call(json!({"connect": {}}));
    let r = &r["connect"];
    assert!(r["client"].as_str().is_some_and(|s| !s.is_empty()));
    assert_eq!(r["ping"], 30);
    assert_eq!(r["pong"], true);
    // An explicit ping command gets its empty reply.
    let p = c.call(json!({"ping": {}}));
    assert_eq!(p["ping"], json!({}));
}

#[test]
fn several_commands_in_one_frame_get_replies_in_one_frame() {
    let h = start(config());
    let mut c = Client::connected(h.local_addr(), None);
    c.send_raw("{\"id\":7,\"subscribe\":{\"channel\":\"a\"}}\n{\"id\":8,\"subscribe\":{\"channel\":\"b\"}}");
    let Message::Text(t) = ws_expect_data(&mut c.ws) else {
        panic!("not text")
    };
    let lines: Vec<Value> = t
        .as_str()
        .split('\n')
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2, "{t}");
    assert_eq!(lines[0]["id"], 7);
    assert_eq!(lines[1]["id"], 8);
    assert!(lines[1].get("subscribe").is_some());
}

#[test]
fn publications_reach_subscribers_on_every_worker_and_the_publisher() {
    let h = start(config());
    let addr = h.local_addr();
    let mut subs: Vec<Client> = (0..6).map(|_| Client::connected(addr, None)).collect();
    for s in &mut subs {
        assert!(s.subscribe("news", json!({})).get("subscribe").is_some());
    }
    let mut publisher = Client::connected(addr, None);
    publisher.subscribe("news", json!({}));
    let r = publisher.publish("news", json!({"text": "hello"}));
    assert_eq!(r["publish"], json!({}), "{r}");
    for s in subs.iter_mut().chain(std::iter::once(&mut publisher)) {
        let p = s.next_pub("news");
        assert_eq!(p["data"], json!({"text": "hello"}));
        assert!(p["info"]["client"].is_string(), "{p}");
        assert!(p.get("offset").is_none(), "no history, no offset: {p}");
    }
}

#[test]
fn raw_members_and_protocol_subscribers_share_a_channel() {
    let h = start(config());
    let addr = h.local_addr();
    let mut raw = ws_connect(addr, "/rooms/chat:lobby");
    let mut c = Client::connected(addr, None);
    c.subscribe("chat:lobby", json!({}));
    // Protocol publication -> raw member gets the data as its frame.
    c.publish("chat:lobby", json!({"n": 1}));
    match ws_expect_data(&mut raw) {
        Message::Text(t) => assert_eq!(t.as_str(), r#"{"n":1}"#),
        m => panic!("unexpected {m:?}"),
    }
    assert_eq!(c.next_pub("chat:lobby")["data"], json!({"n": 1}));
    // Raw message -> pub push; JSON stays JSON, other text becomes a string.
    raw.send(Message::text(r#"{"n":2}"#)).unwrap();
    let p = c.next_pub("chat:lobby");
    assert_eq!(p["data"], json!({"n": 2}));
    assert_eq!(p["offset"], 2, "the channel has history: {p}");
    raw.send(Message::text("plain words")).unwrap();
    assert_eq!(c.next_pub("chat:lobby")["data"], json!("plain words"));
    // HTTP publish reaches both.
    let body = r#"{"n":3}"#;
    let req = format!(
        "POST /publish/chat:lobby HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer pub-token\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    assert_eq!(status_of(&http_raw(addr, req.as_bytes())), 202);
    assert_eq!(c.next_pub("chat:lobby")["data"], json!({"n": 3}));
    loop {
        match ws_expect_data(&mut raw) {
            Message::Text(t) if t.as_str() == body => break,
            Message::Text(_) => continue,
            m => panic!("unexpected {m:?}"),
        }
    }
}

#[test]
fn raw_members_need_an_open_namespace() {
    let h = start(config());
    let (status, _) = upgrade_status(h.local_addr(), "/rooms/secret:x", "");
    assert_eq!(status, 403);
    let (status, _) = upgrade_status(h.local_addr(), "/rooms/nope:x", "");
    assert_eq!(status, 404);
}

#[test]
fn history_offsets_stay_contiguous_with_publishers_on_every_worker() {
    let h = start(config());
    let addr = h.local_addr();
    let mut sub = Client::connected(addr, None);
    let r = sub.subscribe("chat:busy", json!({}));
    assert_eq!(r["subscribe"]["recoverable"], true, "{r}");
    let mut publishers: Vec<Client> = (0..6).map(|_| Client::connected(addr, None)).collect();
    let per = 15;
    for round in 0..per {
        for (i, p) in publishers.iter_mut().enumerate() {
            // Fire without waiting for the reply, so publishers overlap.
            p.send_raw(
                &json!({"id": 1000 + round, "publish": {"channel": "chat:busy", "data": {"p": i, "n": round}}})
                    .to_string(),
            );
        }
    }
    let total = per * publishers.len();
    let mut last = 0u64;
    let mut per_publisher = vec![0usize; publishers.len()];
    for _ in 0..total {
        let p = sub.next_pub("chat:busy");
        let offset = p["offset"].as_u64().unwrap();
        assert_eq!(
            offset,
            last + 1,
            "offsets must arrive in order without gaps"
        );
        last = offset;
        let who = p["data"]["p"].as_u64().unwrap() as usize;
        assert_eq!(p["data"]["n"], per_publisher[who], "per-publisher order");
        per_publisher[who] += 1;
    }
}

#[test]
fn recovery_returns_exactly_the_missed_publications() {
    let h = start(config());
    let addr = h.local_addr();
    let mut a = Client::connected(addr, None);
    let r = a.subscribe("chat:rec", json!({}));
    let epoch = r["subscribe"]["epoch"].as_str().unwrap().to_string();
    let mut p = Client::connected(addr, None);
    for n in 1..=3 {
        p.publish("chat:rec", json!({ "n": n }));
    }
    assert_eq!(a.next_pub("chat:rec")["offset"], 1);
    drop(a);
    for n in 4..=6 {
        p.publish("chat:rec", json!({ "n": n }));
    }
    // Back from offset 1: 2..=6 are missed and all still kept.
    let mut b = Client::connected(addr, None);
    let r = b.subscribe(
        "chat:rec",
        json!({"recover": true, "offset": 1, "epoch": epoch}),
    );
    let s = &r["subscribe"];
    assert_eq!(s["recovered"], true, "{r}");
    assert_eq!(s["was_recovering"], true);
    let offsets: Vec<u64> = s["publications"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["offset"].as_u64().unwrap())
        .collect();
    assert_eq!(offsets, [2, 3, 4, 5, 6]);
    // Live publications continue after the recovered ones, once each.
    p.publish("chat:rec", json!({"n": 7}));
    assert_eq!(b.next_pub("chat:rec")["offset"], 7);
    b.assert_no_pub();
    // Too far behind (history keeps 10): not recovered, never a partial
    // set presented as complete.
    for n in 8..=30 {
        p.publish("chat:rec", json!({ "n": n }));
    }
    let mut c = Client::connected(addr, None);
    let r = c.subscribe(
        "chat:rec",
        json!({"recover": true, "offset": 1, "epoch": epoch}),
    );
    // (false fields are omitted, as Centrifugo's JSON encoder does)
    assert_ne!(r["subscribe"]["recovered"], true, "{r}");
    assert_eq!(
        r["subscribe"]["publications"][0]["offset"], 21,
        "the newest, ending at the top"
    );
    // A wrong epoch is never recovered.
    let r = c.call(json!({"history": {"channel": "chat:rec", "limit": 2, "since": {"offset": 1, "epoch": "other"}}}));
    assert_eq!(r["error"]["code"], 112, "{r}");
}

#[test]
fn history_presence_and_join_leave() {
    let h = start(config());
    let addr = h.local_addr();
    let alice_token = token(json!({"sub": "alice", "info": {"name": "Alice"}}));
    let mut a = Client::connected(addr, Some(&alice_token));
    a.subscribe("chat:room", json!({}));
    let mut b = Client::connected(addr, None);
    b.subscribe("chat:room", json!({}));
    let join = a.push_where(|p| p.get("join").is_some());
    assert_eq!(join["channel"], "chat:room");
    b.publish("chat:room", json!("one"));
    b.publish("chat:room", json!("two"));
    let r = a.call(json!({"history": {"channel": "chat:room", "limit": -1}}));
    let pubs = r["history"]["publications"].as_array().unwrap().clone();
    assert_eq!(pubs.len(), 2, "{r}");
    assert_eq!(pubs[1]["data"], "two");
    assert_eq!(pubs[1]["offset"], 2);
    let r = b.call(json!({"presence": {"channel": "chat:room"}}));
    let presence = r["presence"]["presence"].as_object().unwrap();
    assert_eq!(presence.len(), 2, "{r}");
    assert!(presence
        .values()
        .any(|c| c["user"] == "alice" && c["conn_info"]["name"] == "Alice"));
    let r = b.call(json!({"presence_stats": {"channel": "chat:room"}}));
    assert_eq!(r["presence_stats"]["num_clients"], 2);
    assert_eq!(r["presence_stats"]["num_users"], 2);
    drop(b);
    let leave = a.push_where(|p| p.get("leave").is_some());
    assert_eq!(leave["leave"]["info"]["user"], "");
    assert!(eventually(Duration::from_secs(5), || {
        let r = a.call(json!({"presence_stats": {"channel": "chat:room"}}));
        r["presence_stats"]["num_clients"] == 1
    }));
}

#[test]
fn refusals_use_the_protocol_codes() {
    let h = start(config());
    let addr = h.local_addr();
    let mut c = Client::connected(addr, None);
    // Namespace without client subscribe: permission denied.
    assert_eq!(c.subscribe("secret:x", json!({}))["error"]["code"], 103);
    // Unknown namespace.
    assert_eq!(c.subscribe("nope:x", json!({}))["error"]["code"], 102);
    // A subscription token for the channel lets the client in; an expired
    // one is 109 (the SDK refreshes it), a wrong one 103.
    let good = token(json!({"sub": "", "channel": "secret:x", "exp": unix_now() + 60}));
    assert!(c
        .subscribe("secret:x", json!({ "token": good }))
        .get("subscribe")
        .is_some());
    let expired = token(json!({"sub": "", "channel": "secret:y", "exp": unix_now() - 60}));
    assert_eq!(
        c.subscribe("secret:y", json!({ "token": expired }))["error"]["code"],
        109
    );
    assert_eq!(
        c.subscribe("secret:z", json!({"token": "not-a-jwt"}))["error"]["code"],
        103
    );
    // Already subscribed.
    c.subscribe("news", json!({}));
    assert_eq!(c.subscribe("news", json!({}))["error"]["code"], 105);
    // Publishing where it is not allowed.
    assert_eq!(
        c.publish("secret:x", json!(1))["error"]["code"],
        103,
        "secret: does not allow publishing"
    );
    // rpc is not available.
    assert_eq!(
        c.call(json!({"rpc": {"method": "x"}}))["error"]["code"],
        108
    );
}

#[test]
fn malformed_input_gets_the_bad_request_disconnect() {
    let h = start(config());
    let addr = h.local_addr();
    for bad in [
        "not json",
        "{\"id\":1,\"connect\":{}",
        "[1,2]",
        "{\"id\":1}",
    ] {
        let mut c = Client::open(addr);
        c.send_raw(bad);
        assert_eq!(
            ws_expect_close(&mut c.ws, Duration::from_secs(5)).0,
            3501,
            "{bad}"
        );
    }
    // A command before connect.
    let mut c = Client::open(addr);
    c.send_raw(r#"{"id":1,"subscribe":{"channel":"a"}}"#);
    assert_eq!(ws_expect_close(&mut c.ws, Duration::from_secs(5)).0, 3501);
    // A bad token is terminal (3500); no token without anonymous: 3501.
    let mut c = Client::open(addr);
    c.send_raw(r#"{"id":1,"connect":{"token":"x.y.z"}}"#);
    assert_eq!(ws_expect_close(&mut c.ws, Duration::from_secs(5)).0, 3500);
    let mut strict = config();
    strict.allow_anonymous_connect_without_token = false;
    let h2 = start(strict);
    let mut c = Client::open(h2.local_addr());
    c.send_raw(r#"{"id":1,"connect":{}}"#);
    assert_eq!(ws_expect_close(&mut c.ws, Duration::from_secs(5)).0, 3501);
    // Binary frames are not the JSON codec.
    let mut c = Client::connected(addr, None);
    c.ws.send(Message::binary(vec![1u8, 2])).unwrap();
    assert_eq!(ws_expect_close(&mut c.ws, Duration::from_secs(5)).0, 3506);
}

#[test]
fn protobuf_subprotocol_is_refused_cleanly() {
    let h = start(config());
    let (status, _) = upgrade_status(
        h.local_addr(),
        "/connection/websocket",
        "Sec-WebSocket-Protocol: centrifuge-protobuf\r\n",
    );
    assert_eq!(status, 400);
}

#[test]
fn connection_token_channels_are_server_side_subscriptions() {
    let h = start(config());
    let addr = h.local_addr();
    let t = token(json!({"sub": "bob", "channels": ["chat:inbox"]}));
    let mut c = Client::open(addr);
    let r = c.call(json!({"connect": {"token": t}}));
    assert!(r["connect"]["subs"]["chat:inbox"].is_object(), "{r}");
    let mut p = Client::connected(addr, None);
    p.publish("chat:inbox", json!({"hi": "bob"}));
    assert_eq!(c.next_pub("chat:inbox")["data"], json!({"hi": "bob"}));
}

#[test]
fn unsubscribe_stops_delivery() {
    let h = start(config());
    let addr = h.local_addr();
    let mut c = Client::connected(addr, None);
    c.subscribe("news", json!({}));
    let mut other = Client::connected(addr, None);
    other.subscribe("news", json!({}));
    let r = c.call(json!({"unsubscribe": {"channel": "news"}}));
    assert_eq!(r["unsubscribe"], json!({}));
    other.publish("news", json!(1));
    assert_eq!(other.next_pub("news")["data"], 1);
    c.assert_no_pub();
    // Resubscribing works (the old slot was cleaned up).
    c.subscribe("news", json!({}));
    other.publish("news", json!(2));
    assert_eq!(c.next_pub("news")["data"], 2);
}

fn api(addr: SocketAddr, method: &str, key: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let req = format!(
        "POST /api/{method} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: {key}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let resp = http_raw(addr, req.as_bytes());
    let status = status_of(&resp);
    let json = resp
        .split("\r\n\r\n")
        .nth(1)
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status, json)
}

#[test]
fn server_api_publishes_and_reads() {
    let mut c = config();
    c.api_key = "api-secret".into();
    let h = start(c);
    let addr = h.local_addr();
    let mut sub = Client::connected(addr, Some(&token(json!({"sub": "carol"}))));
    sub.subscribe("chat:api", json!({}));
    sub.subscribe("news", json!({}));
    // With history: the answer carries the position.
    let (status, r) = api(
        addr,
        "publish",
        "api-secret",
        &json!({"channel": "chat:api", "data": {"x": 1}}),
    );
    assert_eq!(status, 200);
    assert_eq!(r["result"]["offset"], 1, "{r}");
    assert!(r["result"]["epoch"].is_string());
    let p = sub.next_pub("chat:api");
    assert_eq!(p["data"], json!({"x": 1}));
    assert_eq!(p["offset"], 1);
    // Without history: no position.
    let (_, r) = api(
        addr,
        "publish",
        "api-secret",
        &json!({"channel": "news", "data": "n"}),
    );
    assert_eq!(r["result"], json!({}), "{r}");
    assert_eq!(sub.next_pub("news")["data"], "n");
    // Broadcast.
    let (_, r) = api(
        addr,
        "broadcast",
        "api-secret",
        &json!({"channels": ["news", "chat:api"], "data": 2}),
    );
    assert_eq!(r["result"]["responses"].as_array().unwrap().len(), 2, "{r}");
    assert_eq!(sub.next_pub("news")["data"], 2);
    assert_eq!(sub.next_pub("chat:api")["offset"], 2);
    // skip_history: delivered live, no offset, not kept.
    let (_, r) = api(
        addr,
        "publish",
        "api-secret",
        &json!({"channel": "chat:api", "data": "live", "skip_history": true}),
    );
    assert_eq!(r["result"], json!({}), "{r}");
    let p = sub.next_pub("chat:api");
    assert_eq!(p["data"], "live");
    assert!(p.get("offset").is_none(), "{p}");
    // History returns the data as published.
    let (_, r) = api(
        addr,
        "history",
        "api-secret",
        &json!({"channel": "chat:api", "limit": 10}),
    );
    let pubs = r["result"]["publications"].as_array().unwrap();
    assert_eq!(pubs.len(), 2, "the skipped one is not kept: {r}");
    assert_eq!(pubs[0]["data"], json!({"x": 1}), "{r}");
    assert_eq!(pubs[1]["offset"], 2);
    // Presence, channels, info.
    let (_, r) = api(
        addr,
        "presence",
        "api-secret",
        &json!({"channel": "chat:api"}),
    );
    assert!(
        r["result"]["presence"]
            .as_object()
            .unwrap()
            .values()
            .any(|c| c["user"] == "carol"),
        "{r}"
    );
    let (_, r) = api(
        addr,
        "channels",
        "api-secret",
        &json!({"pattern": "chat:*"}),
    );
    assert_eq!(r["result"]["channels"]["chat:api"]["num_clients"], 1, "{r}");
    assert!(r["result"]["channels"].get("news").is_none());
    let (_, r) = api(addr, "info", "api-secret", &json!({}));
    assert_eq!(r["result"]["nodes"][0]["num_clients"], 1, "{r}");
    // Without a broker: this node alone.
    assert_eq!(
        r["result"]["nodes"].as_array().map(Vec::len),
        Some(1),
        "{r}"
    );
    // Errors: unknown namespace, no history, wrong key.
    let (_, r) = api(
        addr,
        "publish",
        "api-secret",
        &json!({"channel": "nope:x", "data": 1}),
    );
    assert_eq!(r["error"]["code"], 102);
    let (_, r) = api(addr, "history", "api-secret", &json!({"channel": "news"}));
    assert_eq!(r["error"]["code"], 108);
    assert_eq!(api(addr, "info", "wrong", &json!({})).0, 401);
    // history_remove keeps the position: recovery from 0 is not complete.
    api(
        addr,
        "history_remove",
        "api-secret",
        &json!({"channel": "chat:api"}),
    );
    let (_, r) = api(
        addr,
        "history",
        "api-secret",
        &json!({"channel": "chat:api", "limit": 10}),
    );
    assert_eq!(r["result"]["publications"], json!([]));
    assert_eq!(r["result"]["offset"], 2);
    // Unsubscribe and disconnect reach the connection on its worker.
    api(
        addr,
        "unsubscribe",
        "api-secret",
        &json!({"user": "carol", "channel": "news"}),
    );
    let u = sub.push_where(|p| p.get("unsubscribe").is_some());
    assert_eq!(u["channel"], "news");
    assert_eq!(u["unsubscribe"]["code"], 2000);
    api(addr, "disconnect", "api-secret", &json!({"user": "carol"}));
    assert_eq!(ws_expect_close(&mut sub.ws, Duration::from_secs(5)).0, 3503);
}

#[test]
fn server_api_is_off_without_a_key() {
    let h = start(config());
    assert_eq!(api(h.local_addr(), "info", "", &json!({})).0, 404);
}

#[test]
fn demo_serves_its_page_and_tokens() {
    let mut c = config();
    c.demo = true;
    let h = start(c);
    let addr = h.local_addr();
    let page = http_get(addr, "/demo");
    assert_eq!(page.status, 200);
    assert!(page.text().contains("/demo/chat.js"));
    let t = http_get(addr, "/demo/token?user=alice");
    assert_eq!(t.status, 200);
    let v: Value = serde_json::from_str(&t.text()).unwrap();
    let mut a = Client::connected(addr, v["token"].as_str());
    let r = a.subscribe("demo:lobby", json!({}));
    assert_eq!(r["subscribe"]["recoverable"], true, "{r}");
    let r = a.call(json!({"presence": {"channel": "demo:lobby"}}));
    assert!(r["presence"]["presence"]
        .as_object()
        .unwrap()
        .values()
        .any(|c| c["user"] == "alice"));
    assert_eq!(http_get(addr, "/demo/token?user=no%20spaces").status, 400);
    // Off by default.
    let h2 = start(config());
    assert_eq!(http_get(h2.local_addr(), "/demo").status, 404);
}

/// With one-message cross-worker queues, publishers on both workers
/// overflow all the time and a worker can receive a channel's
/// publications out of order. A subscriber must then see every offset
/// once, in order: live, or after an "insufficient state" unsubscribe
/// (2500) through its recovery — never a gap or a duplicate.
#[test]
fn overflow_reordering_is_recovered_never_skipped() {
    let mut c = config();
    c.fanout_queue_len = 1;
    c.namespaces[0].options.history_size = 10_000;
    let h = start(c);
    let addr = h.local_addr();
    let mut sub = Client::connected(addr, None);
    let r = sub.subscribe("chat:storm", json!({}));
    let mut epoch = r["subscribe"]["epoch"].as_str().unwrap().to_string();
    let mut publishers: Vec<Client> = (0..8).map(|_| Client::connected(addr, None)).collect();
    let rounds = 50;
    for round in 0..rounds {
        for p in publishers.iter_mut() {
            p.send_raw(
                &json!({"id": 10_000 + round, "publish": {"channel": "chat:storm", "data": round}})
                    .to_string(),
            );
        }
    }
    let total = (rounds * publishers.len()) as u64;
    let mut last = 0u64;
    let mut resubscribed = 0;
    let deadline = Instant::now() + Duration::from_secs(20);
    while last < total {
        assert!(
            Instant::now() < deadline,
            "stuck at offset {last} of {total}"
        );
        if sub.pushes.is_empty() {
            sub.pump(Duration::from_millis(200));
            continue;
        }
        let p = sub.pushes.pop_front().unwrap();
        if let Some(publication) = p.get("pub") {
            let offset = publication["offset"].as_u64().unwrap();
            assert_eq!(offset, last + 1, "a gap or a duplicate");
            last = offset;
        } else if let Some(u) = p.get("unsubscribe") {
            assert_eq!(u["code"], 2500, "{p}");
            resubscribed += 1;
            let r = sub.subscribe(
                "chat:storm",
                json!({"recover": true, "offset": last, "epoch": epoch}),
            );
            let s = &r["subscribe"];
            assert_eq!(s["recovered"], true, "{r}");
            epoch = s["epoch"].as_str().unwrap().to_string();
            for publication in s["publications"].as_array().cloned().unwrap_or_default() {
                let offset = publication["offset"].as_u64().unwrap();
                assert_eq!(offset, last + 1, "recovery must continue the stream");
                last = offset;
            }
        }
    }
    sub.assert_no_pub();
    eprintln!("resubscribed {resubscribed} times");
}

/// A protocol subscriber that stops reading is disconnected with 3008
/// "slow" even where raw members' policy is to drop messages: a pub/sub
/// client never loses publications silently. What it had received is a
/// gap-free prefix.
#[test]
fn a_stalled_protocol_subscriber_is_disconnected_with_3008() {
    use socket2::{Domain, Socket, Type};
    let mut c = config();
    c.max_outbound_bytes = 64 << 10;
    c.slow_consumer = wsrelay::config::SlowConsumerPolicy::Drop;
    c.close_timeout = Duration::from_secs(10);
    let h = start(c);
    let addr = h.local_addr();
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let mut slow = Client {
        ws: ws_over(s.into(), addr, "/connection/websocket"),
        next_id: 1,
        pushes: VecDeque::new(),
        replies: VecDeque::new(),
    };
    slow.call(json!({"connect": {}}));
    slow.subscribe("chat:flood", json!({}));
    let mut publisher = ws_connect(addr, "/rooms/chat:flood?role=pub");
    let text = "x".repeat(1000);
    let mut sent = 0u64;
    while sum(&h, |m| m.slow_consumer_closes.get()) == 0 {
        for _ in 0..64 {
            sent += 1;
            publisher
                .send(Message::text(format!(
                    "{{\"n\":{sent},\"pad\":\"{text}\"}}"
                )))
                .unwrap();
        }
        assert!(sent < 100_000, "never judged slow");
        std::thread::sleep(Duration::from_millis(5));
    }
    // The subscriber reads again: publications 1.. in order, then 3008.
    let mut next = 1u64;
    let code = loop {
        match ws_read(&mut slow.ws, Duration::from_secs(10)) {
            Some(Message::Text(t)) => {
                for line in t.as_str().split('\n') {
                    let v: Value = serde_json::from_str(line).unwrap();
                    if let Some(n) = v["push"]["pub"]["data"]["n"].as_u64() {
                        assert_eq!(n, next, "gap in what the slow subscriber got");
                        next += 1;
                    }
                }
            }
            Some(Message::Close(Some(f))) => break u16::from(f.code),
            Some(_) => {}
            None => panic!("no close after {next} publications"),
        }
    };
    assert_eq!(code, 3008);
    assert!(next <= sent);
}
