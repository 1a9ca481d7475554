//! Three relay processes (the real binary) on one private redis-server
//! (`broker = "redis"`, docs/cluster.md): publications made on one node
//! through every entry point (protocol client, raw room member,
//! `POST /publish`, `/api/publish`) reach raw members and protocol
//! subscribers on every node, in order and once; Redis stopped while
//! traffic flows (local delivery goes on, publishes that need the broker
//! fail fast, `/healthz` and `/metrics` say degraded, cross-node delivery
//! resumes after the restart); `CLIENT KILL TYPE pubsub` (resubscribed);
//! join/leave pushes across nodes; subscription on demand; history,
//! recovery and presence across nodes (`history.rs`); cluster-wide
//! server API `info` and `channels` (`nodes.rs`).
//!
//! Skipped, with a message, only when redis-server is not installed
//! (`.ci/run` installs it).

mod history;
mod nodes;
mod support;

use serde_json::json;
use std::time::{Duration, Instant};
use support::*;

const CH: &str = "news";
const N: usize = 12;
/// A namespace with join/leave pushes (they need no presence).
pub(crate) const JL: &str = "[[namespaces]]\nname = \"jl\"\njoin_leave = true\n\
    allow_subscribe_for_client = true\nallow_subscribe_for_anonymous = true\n";

/// Starts Redis and three nodes; `None` (test skipped) without redis.
fn cluster() -> Option<(RedisServer, Vec<Node>)> {
    if !have_redis() {
        return None;
    }
    let redis = RedisServer::start();
    let nodes: Vec<Node> = (0..3).map(|_| Node::start(&redis.url(), JL)).collect();
    for n in &nodes {
        n.wait_health("ok");
    }
    Some((redis, nodes))
}

/// On every node: a raw member of `/rooms/news` and a protocol subscriber
/// of `news`; waits until the three nodes are subscribed in Redis.
fn receivers(redis: &RedisServer, nodes: &[Node]) -> Vec<(Ws, Client)> {
    let r = nodes
        .iter()
        .map(|n| {
            let raw = ws_connect(n.addr, &format!("/rooms/{CH}?role=sub"));
            let mut c = Client::connected(n.addr);
            let reply = c.call(json!({"subscribe": {"channel": CH}}));
            assert!(reply.get("subscribe").is_some(), "{reply}");
            (raw, c)
        })
        .collect();
    redis.wait_numsub(CH, 3);
    r
}

/// What each receiver got, as strings (every test payload is a JSON string).
fn collect(rx: &mut [(Ws, Client)], want: usize) -> Vec<(Vec<String>, Vec<String>)> {
    rx.iter_mut()
        .map(|(raw, c)| {
            let mut raws = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(5);
            while raws.len() < want && Instant::now() < deadline {
                if let Some(text) = ws_read_text(raw, Duration::from_millis(200)) {
                    raws.push(serde_json::from_str::<String>(&text).unwrap());
                }
            }
            let pubs = c.pubs(CH, want, Duration::from_secs(5));
            (
                raws,
                pubs.iter()
                    .map(|d| d.as_str().unwrap().to_string())
                    .collect(),
            )
        })
        .collect()
}

/// One source's messages (prefix `src-`) in a list, in order.
fn of(list: &[String], src: &str) -> Vec<usize> {
    list.iter()
        .filter_map(|s| s.strip_prefix(&format!("{src}-")))
        .map(|n| n.parse().unwrap())
        .collect()
}

#[test]
fn publications_on_one_node_reach_every_node_in_order_once() {
    let Some((redis, nodes)) = cluster() else {
        return;
    };
    let mut rx = receivers(&redis, &nodes);
    let a = nodes[0].addr;
    let mut publisher = Client::connected(a);
    let mut raw_pub = ws_connect(a, &format!("/rooms/{CH}?role=pub"));
    for i in 0..N {
        let r = publisher.call(json!({"publish": {"channel": CH, "data": format!("cli-{i}")}}));
        assert!(r.get("publish").is_some(), "{r}");
        ws_send_text(&mut raw_pub, &json!(format!("raw-{i}")).to_string());
        let (status, _) = http_publish(a, CH, &json!(format!("http-{i}")).to_string());
        assert_eq!(status, 202);
        let (status, r) = api(
            a,
            "publish",
            &json!({"channel": CH, "data": format!("api-{i}")}),
        );
        assert_eq!((status, &r["result"]), (200, &json!({})), "{r}");
    }
    let got = collect(&mut rx, 4 * N);
    let all: Vec<usize> = (0..N).collect();
    for (node, (raws, pubs)) in got.iter().enumerate() {
        for src in ["cli", "raw", "http", "api"] {
            assert_eq!(
                of(raws, src),
                all,
                "node {node}: raw member, {src}: {raws:?}"
            );
            assert_eq!(
                of(pubs, src),
                all,
                "node {node}: subscriber, {src}: {pubs:?}"
            );
        }
        // Raw members and subscribers of a receiving node see the same
        // messages in the same order (Redis's order, relayed by one
        // worker). Not on the origin: there each publisher's worker
        // delivers its own publications at once, so two receivers on
        // different workers may interleave publishers differently.
        if node > 0 {
            assert_eq!(raws, pubs, "node {node}");
        }
    }
    // Every node saw the Redis order: the same sequence everywhere but
    // on the origin, which delivered its own publications at once.
    assert_eq!(got[1].0, got[2].0);
    // Nothing more (no duplicate arrives late).
    for (node, (raw, c)) in rx.iter_mut().enumerate() {
        assert_eq!(
            ws_read_text(raw, Duration::from_millis(300)),
            None,
            "node {node}"
        );
        assert!(
            c.pubs(CH, 1, Duration::from_millis(300)).is_empty(),
            "node {node}"
        );
    }
    // The metrics agree: no publish errors, nothing dropped, broker up.
    for n in &nodes {
        let m = n.metrics();
        assert_eq!(metric(&m, "wsrelay_broker_up"), 1.0);
        assert_eq!(metric(&m, "wsrelay_broker_publish_errors_total"), 0.0);
        assert_eq!(metric(&m, "wsrelay_broker_dropped_total"), 0.0);
    }
}

#[test]
fn redis_down_local_delivery_goes_on_publishes_fail_fast_and_delivery_resumes() {
    let Some((redis, nodes)) = cluster() else {
        return;
    };
    let mut rx = receivers(&redis, &nodes);
    let a = nodes[0].addr;
    let mut publisher = Client::connected(a);
    let mut raw_pub = ws_connect(a, &format!("/rooms/{CH}?role=pub"));
    redis.shutdown();
    nodes[0].wait_health("degraded");
    // Local delivery goes on: a raw member's messages reach node 1's
    // members (and nobody elsewhere).
    for i in 0..N {
        ws_send_text(&mut raw_pub, &json!(format!("down-{i}")).to_string());
    }
    let got = collect(&mut rx[..1], N);
    assert_eq!(of(&got[0].0, "down"), (0..N).collect::<Vec<_>>());
    assert_eq!(got[0].0, got[0].1);
    // A client's publish gets 100 (temporary) at once, published nowhere.
    let t = Instant::now();
    let r = publisher.call(json!({"publish": {"channel": CH, "data": "lost"}}));
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(r["error"]["code"], 100, "{r}");
    assert_eq!(r["error"]["temporary"], true, "{r}");
    // HTTP: 503 + Retry-After; the API: error 100.
    let (status, head) = http_publish(a, CH, "\"lost\"");
    assert_eq!(status, 503, "{head}");
    assert!(
        head.to_ascii_lowercase().contains("retry-after: 1"),
        "{head}"
    );
    let (_, r) = api(a, "publish", &json!({"channel": CH, "data": "lost"}));
    assert_eq!(r["error"]["code"], 100, "{r}");
    let m = nodes[0].metrics();
    assert_eq!(metric(&m, "wsrelay_broker_up"), 0.0);
    assert!(metric(&m, "wsrelay_broker_publish_errors_total") >= (N + 3) as f64);
    let h = http_get(a, "/healthz");
    assert!(h.starts_with("HTTP/1.1 200"), "{h}");
    assert!(h.contains("degraded: broker down"), "{h}");
    for (node, (raw, c)) in rx.iter_mut().enumerate() {
        let quiet = node > 0;
        if quiet {
            assert_eq!(ws_read_text(raw, Duration::from_millis(300)), None);
        }
        assert!(
            c.pubs(CH, 1, Duration::from_millis(300)).is_empty(),
            "node {node}"
        );
    }
    // Redis back (empty): cross-node delivery resumes within 5 s.
    let t = Instant::now();
    redis.launch();
    let mut i = 0;
    loop {
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "no cross-node delivery 5 s after restart"
        );
        let r = publisher.call(json!({"publish": {"channel": CH, "data": format!("back-{i}")}}));
        i += 1;
        if r.get("publish").is_some() && !rx[1].1.pubs(CH, 1, Duration::from_millis(100)).is_empty()
        {
            break;
        }
    }
    nodes[0].wait_health("ok");
    // And in order again, everywhere (after what the probes left).
    for (_, c) in rx.iter_mut() {
        c.pubs(CH, usize::MAX, Duration::from_millis(300));
    }
    for (raw, _) in rx.iter_mut() {
        while ws_read_text(raw, Duration::from_millis(100)).is_some() {}
    }
    for i in 0..N {
        let r = publisher.call(json!({"publish": {"channel": CH, "data": format!("after-{i}")}}));
        assert!(r.get("publish").is_some(), "{r}");
    }
    for (node, (raws, pubs)) in collect(&mut rx, N).iter().enumerate() {
        assert_eq!(of(raws, "after"), (0..N).collect::<Vec<_>>(), "node {node}");
        assert_eq!(raws, pubs, "node {node}");
    }
    assert!(metric(&nodes[1].metrics(), "wsrelay_broker_reconnects_total") >= 1.0);
}

#[test]
fn killed_pubsub_connections_are_resubscribed() {
    let Some((redis, nodes)) = cluster() else {
        return;
    };
    let mut rx = receivers(&redis, &nodes);
    let mut publisher = Client::connected(nodes[0].addr);
    let killed: usize = redis
        .cli(&["CLIENT", "KILL", "TYPE", "pubsub"])
        .trim()
        .parse()
        .unwrap();
    assert!(killed >= 3, "{killed}");
    redis.wait_numsub(CH, 3);
    for i in 0..N {
        let r = publisher.call(json!({"publish": {"channel": CH, "data": format!("k-{i}")}}));
        assert!(r.get("publish").is_some(), "{r}");
    }
    for (node, (raws, pubs)) in collect(&mut rx, N).iter().enumerate() {
        assert_eq!(of(raws, "k"), (0..N).collect::<Vec<_>>(), "node {node}");
        assert_eq!(raws, pubs, "node {node}");
    }
    assert!(metric(&nodes[2].metrics(), "wsrelay_broker_reconnects_total") >= 1.0);
}

#[test]
fn interest_follows_local_members() {
    let Some((redis, nodes)) = cluster() else {
        return;
    };
    // Subscribed on demand: nobody anywhere, no Redis subscription.
    assert_eq!(redis.numsub("quiet"), 0);
    let raw = ws_connect(nodes[1].addr, "/rooms/quiet");
    redis.wait_numsub("quiet", 1);
    // A publication into it from another node reaches that member.
    let (status, _) = http_publish(nodes[2].addr, "quiet", "\"hello\"");
    assert_eq!(status, 202);
    let mut raw = raw;
    assert_eq!(
        ws_read_text(&mut raw, Duration::from_secs(5)).as_deref(),
        Some("\"hello\"")
    );
    drop(raw);
    // Unsubscribed after the last member left (linger: 200ms here).
    redis.wait_numsub("quiet", 0);
}

#[test]
fn join_and_leave_reach_other_nodes() {
    let Some((redis, nodes)) = cluster() else {
        return;
    };
    let mut watcher = Client::connected(nodes[1].addr);
    let r = watcher.call(json!({"subscribe": {"channel": "jl:room"}}));
    assert!(r.get("subscribe").is_some(), "{r}");
    redis.wait_numsub("jl:room", 1);
    let mut joiner = Client::connected(nodes[0].addr);
    let r = joiner.call(json!({"subscribe": {"channel": "jl:room"}}));
    assert!(r.get("subscribe").is_some(), "{r}");
    let id = joiner.id.clone();
    let join = watcher
        .push_of("join", &id, Duration::from_secs(5))
        .expect("join push");
    assert_eq!(join["channel"], "jl:room");
    let r = joiner.call(json!({"unsubscribe": {"channel": "jl:room"}}));
    assert!(r.get("unsubscribe").is_some(), "{r}");
    let leave = watcher
        .push_of("leave", &id, Duration::from_secs(5))
        .expect("leave push");
    assert_eq!(leave["channel"], "jl:room");
    // Once each: no second join or leave arrives.
    assert!(watcher
        .push_of("join", &id, Duration::from_millis(300))
        .is_none());
    assert!(watcher
        .push_of("leave", &id, Duration::from_millis(100))
        .is_none());
}
