//! A protocol client's command execution, sans-IO: frames in, replies
//! out, against a real hub (history, presence, tokens) and a worker's rooms.

use super::*;
use crate::config::{Config, Namespace};
use serde_json::{json, Value};
use std::time::Duration;

const NOW: u64 = 1_700_000_000;

fn hub(limit: usize) -> Hub {
    let mut c = Config {
        token_hmac_secret_key: "secret".into(),
        allow_anonymous_connect_without_token: true,
        allow_subscribe_for_client: true,
        allow_subscribe_for_anonymous: true,
        client_channel_limit: limit,
        max_message_bytes: 4096,
        max_frame_bytes: 4096,
        ..Config::default()
    };
    c.namespaces = vec![Namespace {
        name: "chat".into(),
        options: ChannelOptions {
            history_size: 5,
            history_ttl: Duration::from_secs(60),
            force_recovery: true,
            presence: true,
            allow_subscribe_for_client: true,
            allow_subscribe_for_anonymous: true,
            allow_publish_for_subscriber: true,
            allow_publish_for_anonymous: true,
            allow_history_for_subscriber: true,
            allow_presence_for_subscriber: true,
            ..ChannelOptions::default()
        },
    }];
    Hub::new(&c).unwrap()
}

struct World {
    hub: Hub,
    directory: RoomDirectory,
    rooms: LocalRooms,
    metrics: WorkerMetrics,
    awaiting: crate::server::awaiting::Awaiting,
}

impl World {
    fn new(limit: usize) -> World {
        World {
            hub: hub(limit),
            directory: RoomDirectory::new(100),
            rooms: LocalRooms::new(0, 1 << 20, false),
            metrics: WorkerMetrics::default(),
            awaiting: Default::default(),
        }
    }

    /// Runs one frame; returns the reply lines and the disconnect, if any.
    fn frame(&mut self, client: &mut Client, frame: &str) -> (Vec<Value>, Option<DisconnectCode>) {
        let mut x = Exec {
            hub: &self.hub,
            rooms: &mut self.rooms,
            directory: &self.directory,
            key: 1,
            ping_secs: 25,
            now_secs: NOW,
            metrics: &self.metrics,
            awaiting: &mut self.awaiting,
        };
        let mut out = Vec::new();
        let r = client.handle_frame(frame.as_bytes(), &mut x, &mut out);
        let lines = out
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .map(|l| serde_json::from_slice(l).unwrap())
            .collect();
        (lines, r.err())
    }
}

fn connected(w: &mut World) -> Client {
    let mut c = Client::new();
    let (r, e) = w.frame(&mut c, r#"{"id":1,"connect":{}}"#);
    assert_eq!(e, None);
    assert_eq!(r[0]["connect"]["ping"], 25);
    c
}

#[test]
fn nothing_but_connect_or_a_pong_comes_first() {
    let mut w = World::new(8);
    let mut c = Client::new();
    assert_eq!(w.frame(&mut c, "{}").1, None, "an early pong is harmless");
    let (r, e) = w.frame(&mut c, r#"{"id":1,"subscribe":{"channel":"a"}}"#);
    assert!(r.is_empty());
    assert_eq!(e, Some(DisconnectCode::BadRequest));
}

#[test]
fn replies_follow_the_commands_of_a_frame_and_stop_at_a_bad_one() {
    let mut w = World::new(8);
    let mut c = connected(&mut w);
    let (r, e) = w.frame(
        &mut c,
        "{\"id\":2,\"subscribe\":{\"channel\":\"a\"}}\n{\"id\":3,\"ping\":{}}\nnot json\n{\"id\":4,\"ping\":{}}",
    );
    assert_eq!(e, Some(DisconnectCode::BadRequest));
    let ids: Vec<&Value> = r.iter().map(|v| &v["id"]).collect();
    assert_eq!(
        ids,
        [&json!(2), &json!(3)],
        "nothing after the bad line runs"
    );
}

#[test]
fn limits_map_to_the_protocol_codes() {
    let mut w = World::new(2);
    let mut c = connected(&mut w);
    let big = format!(
        r#"{{"id":2,"publish":{{"channel":"a","data":"{}"}}}}"#,
        "x".repeat(5000)
    );
    assert_eq!(w.frame(&mut c, &big).1, Some(DisconnectCode::MessageTooBig));
    let mut c = connected(&mut w);
    for (i, ch) in ["a", "b"].iter().enumerate() {
        let (r, _) = w.frame(
            &mut c,
            &format!(r#"{{"id":{},"subscribe":{{"channel":"{ch}"}}}}"#, i + 2),
        );
        assert!(r[0].get("subscribe").is_some(), "{r:?}");
    }
    let (r, e) = w.frame(&mut c, r#"{"id":9,"subscribe":{"channel":"c"}}"#);
    assert_eq!(e, None);
    assert_eq!(r[0]["error"]["code"], 106, "client_channel_limit");
    assert_eq!(c.subs.len(), 2);
}

#[test]
fn recovery_answers_from_history_with_positions() {
    let mut w = World::new(8);
    let mut c = connected(&mut w);
    let (r, _) = w.frame(&mut c, r#"{"id":2,"subscribe":{"channel":"chat:x"}}"#);
    let epoch = r[0]["subscribe"]["epoch"].as_str().unwrap().to_string();
    assert_eq!(r[0]["subscribe"]["recoverable"], true);
    for n in 1..=3 {
        w.hub.history.publish(
            "chat:x",
            format!(r#"{{"data":{n}}}"#).as_bytes().into(),
            w.hub.now_ms(),
            Hub::stream_options(&w.hub.options("chat:x").unwrap()),
        );
    }
    let mut d = connected(&mut w);
    let (r, _) = w.frame(
        &mut d,
        &format!(r#"{{"id":2,"subscribe":{{"channel":"chat:x","recover":true,"offset":1,"epoch":"{epoch}"}}}}"#),
    );
    let s = &r[0]["subscribe"];
    assert_eq!(s["recovered"], true, "{s}");
    assert_eq!(s["offset"], 3);
    assert_eq!(
        s["publications"],
        json!([{"data": 2, "offset": 2}, {"data": 3, "offset": 3}])
    );
    // Presence lists both; history is readable by subscribers.
    let (r, _) = w.frame(&mut d, r#"{"id":3,"presence_stats":{"channel":"chat:x"}}"#);
    assert_eq!(r[0]["presence_stats"]["num_clients"], 2);
    let (r, _) = w.frame(
        &mut d,
        r#"{"id":4,"history":{"channel":"chat:x","limit":1,"reverse":true}}"#,
    );
    assert_eq!(r[0]["history"]["publications"][0]["offset"], 3);
    // Unsubscribing leaves presence at once.
    w.frame(&mut c, r#"{"id":5,"unsubscribe":{"channel":"chat:x"}}"#);
    let (r, _) = w.frame(&mut d, r#"{"id":6,"presence_stats":{"channel":"chat:x"}}"#);
    assert_eq!(r[0]["presence_stats"]["num_clients"], 1);
}

#[test]
fn tokens_and_refusals() {
    let mut w = World::new(8);
    let token = |claims: Value| {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"secret").unwrap(),
        )
        .unwrap()
    };
    let mut c = Client::new();
    let t = token(json!({"sub": "alice", "exp": NOW + 60}));
    let (r, e) = w.frame(
        &mut c,
        &format!(r#"{{"id":1,"connect":{{"token":"{t}"}}}}"#),
    );
    assert_eq!(e, None);
    assert_eq!(r[0]["connect"]["expires"], true);
    assert_eq!(r[0]["connect"]["ttl"], 60);
    assert_eq!(&*c.user, "alice");
    // A refresh with another user's token is an invalid token (3500).
    let other = token(json!({"sub": "mallory", "exp": NOW + 60}));
    let (_, e) = w.frame(
        &mut c,
        &format!(r#"{{"id":2,"refresh":{{"token":"{other}"}}}}"#),
    );
    assert_eq!(e, Some(DisconnectCode::InvalidToken));
    // An expired connection token is error 109 (the SDK fetches a new one).
    let mut d = Client::new();
    let old = token(json!({"sub": "bob", "exp": NOW - 1}));
    let (r, e) = w.frame(
        &mut d,
        &format!(r#"{{"id":1,"connect":{{"token":"{old}"}}}}"#),
    );
    assert_eq!(e, None);
    assert_eq!(r[0]["error"]["code"], 109);
    assert!(!d.connected);
    // rpc is not available; send ends the connection (3508).
    let mut e1 = connected(&mut w);
    let (r, _) = w.frame(&mut e1, r#"{"id":2,"rpc":{"method":"m"}}"#);
    assert_eq!(r[0]["error"]["code"], 108);
    assert_eq!(
        w.frame(&mut e1, r#"{"send":{"data":1}}"#).1,
        Some(DisconnectCode::NotAvailable)
    );
}

#[test]
fn a_subscription_stays_small() {
    // Ten per connection at 10k+ connections: every byte counts.
    assert!(std::mem::size_of::<Subscription>() <= 24);
}
