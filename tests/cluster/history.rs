//! History, recovery and presence across nodes (phase 2): offsets and
//! epochs come from Redis, so a client recovers on any node, presence
//! lists every node's clients, and a Redis restarted empty changes the
//! epoch (clients told `recovered: false`, nothing replayed twice).

use super::support::*;
use super::JL;
use serde_json::{json, Value};
use std::time::Duration;

/// A namespace with history and recovery, and one with presence.
const NS: &str = "[[namespaces]]\nname = \"hist\"\nhistory_size = 100\nhistory_ttl = \"5m\"\n\
    force_recovery = true\nallow_subscribe_for_client = true\nallow_subscribe_for_anonymous = true\n\
    allow_publish_for_client = true\nallow_publish_for_anonymous = true\n\
    allow_history_for_subscriber = true\nallow_history_for_client = true\n\
    [[namespaces]]\nname = \"pres\"\npresence = true\nallow_subscribe_for_client = true\n\
    allow_subscribe_for_anonymous = true\nallow_presence_for_client = true\n";

fn nodes() -> Option<(RedisServer, Vec<Node>)> {
    nodes_with("")
}

/// Three nodes with these top-level keys too.
fn nodes_with(keys: &str) -> Option<(RedisServer, Vec<Node>)> {
    if !have_redis() {
        return None;
    }
    let redis = RedisServer::start();
    let extra = format!("{keys}{JL}{NS}");
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&redis.url(), &extra)).collect();
    for n in &nodes {
        n.wait_health("ok");
    }
    Some((redis, nodes))
}

fn subscribe(c: &mut Client, channel: &str, recover: Option<(u64, &str)>) -> Value {
    let mut req = json!({"channel": channel});
    if let Some((offset, epoch)) = recover {
        req["recover"] = json!(true);
        req["offset"] = json!(offset);
        req["epoch"] = json!(epoch);
    }
    let r = c.call(json!({ "subscribe": req }));
    assert!(r.get("subscribe").is_some(), "{r}");
    r["subscribe"].clone()
}

fn publish(c: &mut Client, channel: &str, data: &str) {
    let r = c.call(json!({"publish": {"channel": channel, "data": data}}));
    assert_eq!(r.get("publish"), Some(&json!({})), "{r}");
}

/// (offset, data) of pub objects.
fn seen(pubs: &[Value]) -> Vec<(u64, String)> {
    pubs.iter()
        .map(|p| {
            (
                p["offset"].as_u64().unwrap_or(0),
                p["data"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

fn expect(range: std::ops::RangeInclusive<u64>) -> Vec<(u64, String)> {
    range.map(|i| (i, format!("m{i}"))).collect()
}

#[test]
fn a_client_recovers_on_another_node_every_publication_in_order_once() {
    let Some((_redis, nodes)) = nodes() else {
        return;
    };
    let (a, b, c) = (nodes[0].addr, nodes[1].addr, nodes[2].addr);
    let ch = "hist:feed";
    let mut publisher = Client::connected(a);
    // A subscriber on the origin too: it gets the node's own publications
    // once (they come back from Redis, the only way they are delivered).
    let mut local = Client::connected(a);
    let s = subscribe(&mut local, ch, None);
    assert_eq!(s["recoverable"], true, "{s}");
    let mut sub = Client::connected(b);
    let s = subscribe(&mut sub, ch, None);
    let epoch = s["epoch"].as_str().unwrap().to_string();
    assert!(!epoch.is_empty(), "{s}");
    assert_eq!(s["offset"].as_u64().unwrap_or(0), 0, "{s}");
    for i in 1..=3 {
        publish(&mut publisher, ch, &format!("m{i}"));
    }
    let live = sub.pub_objects(ch, 3, Duration::from_secs(5));
    assert_eq!(seen(&live), expect(1..=3));
    // Dropped; meanwhile five more, by a client and by the API.
    drop(sub);
    for i in 4..=6 {
        publish(&mut publisher, ch, &format!("m{i}"));
    }
    for i in 7..=8 {
        let (status, r) = api(
            a,
            "publish",
            &json!({"channel": ch, "data": format!("m{i}")}),
        );
        // Answered once Redis kept it, with its position.
        assert_eq!(status, 200, "{r}");
        assert_eq!(r["result"]["offset"], i, "{r}");
        assert_eq!(r["result"]["epoch"], json!(epoch), "{r}");
    }
    // Back on node 3, recovering from offset 3.
    let mut back = Client::connected(c);
    let s = subscribe(&mut back, ch, Some((3, &epoch)));
    assert_eq!(s["recovered"], true, "{s}");
    assert_eq!(s["epoch"], json!(epoch), "{s}");
    assert_eq!(s["offset"].as_u64(), Some(8), "{s}");
    let recovered: Vec<Value> = s["publications"].as_array().cloned().unwrap_or_default();
    assert_eq!(seen(&recovered), expect(4..=8));
    // Then live from there, once.
    publish(&mut publisher, ch, "m9");
    let live = back.pub_objects(ch, 2, Duration::from_secs(2));
    assert_eq!(seen(&live), expect(9..=9), "nothing replayed twice");
    // The origin's subscriber saw all nine, in order, once.
    let mine = local.pub_objects(ch, 10, Duration::from_secs(2));
    assert_eq!(seen(&mine), expect(1..=9));
    // `history` from any node reads the same stream.
    let r = back.call(json!({"history": {"channel": ch, "limit": -1}}));
    let h = &r["history"];
    assert_eq!(h["offset"].as_u64(), Some(9), "{r}");
    let all: Vec<Value> = h["publications"].as_array().cloned().unwrap_or_default();
    assert_eq!(seen(&all), expect(1..=9));
    let r = back.call(json!({"history": {"channel": ch, "limit": 2, "reverse": true}}));
    let last: Vec<Value> = r["history"]["publications"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(seen(&last), vec![(9, "m9".into()), (8, "m8".into())], "{r}");
    let r =
        back.call(json!({"history": {"channel": ch, "since": {"offset": 1, "epoch": "other"}}}));
    assert_eq!(r["error"]["code"], 112, "{r}");
    // The server API reads the same stream from any node (answered once
    // Redis answered), alone and in a batch.
    let (status, r) = api(
        nodes[1].addr,
        "history",
        &json!({"channel": ch, "limit": 3, "reverse": true}),
    );
    assert_eq!(status, 200, "{r}");
    assert_eq!(r["result"]["offset"], 9, "{r}");
    assert_eq!(r["result"]["epoch"], json!(epoch), "{r}");
    let offsets = |v: &Value| -> Vec<u64> {
        v.as_array()
            .map(|a| a.iter().filter_map(|p| p["offset"].as_u64()).collect())
            .unwrap_or_default()
    };
    assert_eq!(offsets(&r["result"]["publications"]), [9, 8, 7], "{r}");
    assert_eq!(r["result"]["publications"][0]["data"], "m9", "{r}");
    let (status, r) = api(
        nodes[2].addr,
        "batch",
        &json!({"commands": [
            {"history": {"channel": ch, "limit": -1, "since": {"offset": 7, "epoch": epoch}}},
            {"history": {"channel": "nohist", "limit": 1}},
            {"history": {"channel": ch, "since": {"offset": 1, "epoch": "other"}}},
        ]}),
    );
    assert_eq!(status, 200, "{r}");
    let replies = &r["replies"];
    assert_eq!(
        offsets(&replies[0]["history"]["publications"]),
        [8, 9],
        "{r}"
    );
    assert_eq!(replies[1]["error"]["code"], 108, "{r}");
    assert_eq!(replies[2]["error"]["code"], 112, "{r}");
}

#[test]
fn many_publications_while_subscribing_are_neither_lost_nor_doubled() {
    let Some((_redis, nodes)) = nodes() else {
        return;
    };
    let ch = "hist:busy";
    let mut publisher = Client::connected(nodes[0].addr);
    // Subscribers join on node 2 while publications flow from node 1:
    // each gets a position and then every later publication exactly once.
    let mut subs = Vec::new();
    let total = 60;
    for i in 1..=total {
        let r = publisher.call(json!({"publish": {"channel": ch, "data": format!("m{i}")}}));
        assert_eq!(r.get("publish"), Some(&json!({})), "{r}");
        if i % 15 == 0 {
            let mut c = Client::connected(nodes[1].addr);
            let s = subscribe(&mut c, ch, None);
            let at = s["offset"].as_u64().unwrap_or(0);
            subs.push((c, at));
        }
    }
    for (mut c, at) in subs {
        let want = (total as u64 - at) as usize;
        let got = c.pub_objects(ch, want + 1, Duration::from_millis(want as u64 * 20 + 1500));
        assert_eq!(
            seen(&got),
            expect(at + 1..=total as u64),
            "subscribed at {at}"
        );
    }
}

#[test]
fn presence_lists_clients_of_every_node_and_forgets_those_that_left() {
    let Some((_redis, nodes)) = nodes() else {
        return;
    };
    let ch = "pres:lobby";
    let mut clients: Vec<Client> = nodes.iter().map(|n| Client::connected(n.addr)).collect();
    for c in &mut clients {
        subscribe(c, ch, None);
    }
    let ids = |v: &Value| {
        let mut ids: Vec<String> = v["presence"]["presence"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        ids.sort();
        ids
    };
    let mut want: Vec<String> = clients.iter().map(|c| c.id.clone()).collect();
    want.sort();
    let r = clients[0].call(json!({"presence": {"channel": ch}}));
    assert_eq!(ids(&r), want, "{r}");
    let r = clients[2].call(json!({"presence_stats": {"channel": ch}}));
    assert_eq!(r["presence_stats"]["num_clients"], 3, "{r}");
    assert_eq!(r["presence_stats"]["num_users"], 1, "{r}");
    // The server API on any node says the same.
    let (status, r) = api(nodes[1].addr, "presence", &json!({"channel": ch}));
    assert_eq!(status, 200, "{r}");
    let mut listed: Vec<String> = r["result"]["presence"]
        .as_object()
        .map(|m| m.keys().cloned().collect())
        .unwrap_or_default();
    listed.sort();
    assert_eq!(listed, want, "{r}");
    let (_, r) = api(nodes[2].addr, "presence_stats", &json!({"channel": ch}));
    assert_eq!(r["result"]["num_clients"], 3, "{r}");
    // One unsubscribes, one disconnects: gone from presence everywhere.
    let r = clients[1].call(json!({"unsubscribe": {"channel": ch}}));
    assert!(r.get("unsubscribe").is_some(), "{r}");
    let gone = clients.pop().unwrap().id;
    want.retain(|id| *id != clients[1].id && *id != gone);
    let mut last = Value::Null;
    for _ in 0..50 {
        last = clients[0].call(json!({"presence": {"channel": ch}}));
        if ids(&last) == want {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(ids(&last), want, "{last}");
}

#[test]
fn redis_restarted_empty_gives_a_new_epoch_and_recovered_false() {
    let Some((redis, nodes)) = nodes() else {
        return;
    };
    let ch = "hist:restart";
    let mut publisher = Client::connected(nodes[0].addr);
    let mut sub = Client::connected(nodes[1].addr);
    let s = subscribe(&mut sub, ch, None);
    let epoch = s["epoch"].as_str().unwrap().to_string();
    publish(&mut publisher, ch, "m1");
    publish(&mut publisher, ch, "m2");
    assert_eq!(
        seen(&sub.pub_objects(ch, 2, Duration::from_secs(5))),
        expect(1..=2)
    );
    // While Redis is down: publishing and subscribing fail fast (100).
    redis.shutdown();
    for n in &nodes {
        n.wait_health("degraded: broker down (cross-node delivery stopped)");
    }
    let r = publisher.call(json!({"publish": {"channel": ch, "data": "lost"}}));
    assert_eq!(r["error"]["code"], 100, "{r}");
    let mut other = Client::connected(nodes[2].addr);
    let r = other.call(json!({"subscribe": {"channel": ch}}));
    assert_eq!(r["error"]["code"], 100, "{r}");
    // Back, empty.
    redis.launch();
    for n in &nodes {
        n.wait_health("ok");
    }
    // The subscriber is sent to recover (its subscription may have
    // missed publications while the node was disconnected).
    let push = sub
        .channel_push("unsubscribe", ch, Duration::from_secs(5))
        .expect("unsubscribe push after the broker reconnected");
    assert_eq!(push["unsubscribe"]["code"], 2500, "{push}");
    publish(&mut publisher, ch, "n1");
    // It recovers from its old position: another epoch, not recovered,
    // nothing of the old stream replayed.
    let s = subscribe(&mut sub, ch, Some((2, &epoch)));
    assert_eq!(s["was_recovering"], true, "{s}");
    assert_ne!(s["recovered"], true, "omitted when false: {s}");
    assert_ne!(s["epoch"], json!(epoch), "{s}");
    assert_eq!(s["offset"].as_u64(), Some(1), "{s}");
    assert!(
        s["publications"].as_array().is_none_or(|p| p.is_empty()),
        "{s}"
    );
    publish(&mut publisher, ch, "n2");
    let live = sub.pub_objects(ch, 3, Duration::from_secs(2));
    assert_eq!(seen(&live), vec![(2, "n2".to_string())]);
}

fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(b"cluster-secret").unwrap(),
    )
    .unwrap()
}

#[test]
fn server_side_subscriptions_wait_for_redis_and_recover_on_another_node() {
    let Some((_redis, nodes)) = nodes() else {
        return;
    };
    let (ch, room) = ("hist:inbox", "pres:room");
    let t = token(json!({"sub": "bob", "channels": [ch, room]}));
    let (mut bob, r) = Client::connect_with(nodes[1].addr, json!({"token": t}));
    let subs = &r["connect"]["subs"];
    assert_eq!(subs[ch]["recoverable"], true, "{r}");
    let epoch = subs[ch]["epoch"].as_str().unwrap_or_default().to_string();
    assert!(!epoch.is_empty(), "{r}");
    assert!(subs[room].is_object(), "{r}");
    // Its presence is in Redis once the connect reply is out.
    let mut watcher = Client::connected(nodes[0].addr);
    let p = watcher.call(json!({"presence": {"channel": room}}));
    assert_eq!(p["presence"]["presence"][&bob.id]["user"], "bob", "{p}");
    let mut publisher = Client::connected(nodes[0].addr);
    for i in 1..=3 {
        publish(&mut publisher, ch, &format!("m{i}"));
    }
    assert_eq!(
        seen(&bob.pub_objects(ch, 3, Duration::from_secs(5))),
        expect(1..=3)
    );
    drop(bob);
    publish(&mut publisher, ch, "m4");
    // Reconnecting elsewhere with its position: the missed ones, in the
    // connect reply.
    let sub = json!({ ch: {"recover": true, "offset": 3, "epoch": epoch} });
    let (mut again, r) = Client::connect_with(nodes[2].addr, json!({"token": t, "subs": sub}));
    let s = &r["connect"]["subs"][ch];
    assert_eq!(s["recovered"], true, "{r}");
    let got: Vec<Value> = s["publications"].as_array().cloned().unwrap_or_default();
    assert_eq!(seen(&got), expect(4..=4));
    publish(&mut publisher, ch, "m5");
    assert_eq!(
        seen(&again.pub_objects(ch, 2, Duration::from_secs(2))),
        expect(5..=5)
    );
}

#[test]
fn presence_is_refreshed_while_clients_stay_and_expires_when_their_node_dies() {
    // presence_ttl 1 s: entries live 1 s unless refreshed (every 333 ms).
    let Some((_redis, mut nodes)) = nodes_with("presence_ttl = \"1s\"\n") else {
        return;
    };
    let ch = "pres:ttl";
    let mut stays = Client::connected(nodes[1].addr);
    subscribe(&mut stays, ch, None);
    let mut doomed = Client::connected(nodes[2].addr);
    subscribe(&mut doomed, ch, None);
    let mut watcher = Client::connected(nodes[0].addr);
    let listed = |w: &mut Client| {
        let r = w.call(json!({"presence": {"channel": ch}}));
        let mut ids: Vec<String> = r["presence"]["presence"]
            .as_object()
            .map(|m| m.keys().cloned().collect())
            .unwrap_or_default();
        ids.sort();
        ids
    };
    let mut both = vec![stays.id.clone(), doomed.id.clone()];
    both.sort();
    // Well past the TTL, both are still there: refreshed.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(listed(&mut watcher), both);
    // Node 3 dies without a word: its client is gone after the TTL.
    drop(nodes.pop());
    std::thread::sleep(Duration::from_millis(2000));
    assert_eq!(listed(&mut watcher), vec![stays.id.clone()]);
    drop(doomed);
}
