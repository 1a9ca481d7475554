//! Cluster-wide server API `info` and `channels`: every node publishes a
//! record about itself on `P.nodes` every `redis_node_info_interval`
//! (200ms here); any node answers for all live nodes, and a node that
//! died drops out after three intervals.

use super::support::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

const INTERVAL: &str = "redis_node_info_interval = \"200ms\"\n";

/// `info` on `node`: name → num_clients of every node listed.
fn clients_by_node(node: &Node) -> BTreeMap<String, u64> {
    let (status, r) = api(node.addr, "info", &json!({}));
    assert_eq!(status, 200, "{r}");
    r["result"]["nodes"]
        .as_array()
        .unwrap_or_else(|| panic!("no nodes: {r}"))
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap_or_default().to_string(),
                n["num_clients"].as_u64().unwrap_or(u64::MAX),
            )
        })
        .collect()
}

/// `channels` on `node` (with `pattern` if given): name → num_clients.
fn channels(node: &Node, pattern: Option<&str>) -> BTreeMap<String, u64> {
    let body = pattern.map_or(json!({}), |p| json!({ "pattern": p }));
    let (status, r) = api(node.addr, "channels", &body);
    assert_eq!(status, 200, "{r}");
    r["result"]["channels"]
        .as_object()
        .unwrap_or_else(|| panic!("no channels: {r}"))
        .iter()
        .map(|(c, v)| (c.clone(), v["num_clients"].as_u64().unwrap_or(u64::MAX)))
        .collect()
}

/// Asks `f` until it returns `want` (records arrive every interval), for
/// at most 10 s; returns the last answer either way.
fn eventually<T: PartialEq + std::fmt::Debug>(want: &T, mut f: impl FnMut() -> T) -> T {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let got = f();
        if &got == want || Instant::now() >= until {
            return got;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn name(n: &Node) -> String {
    format!("wsrelay@{}", n.addr)
}

#[test]
fn info_and_channels_answer_for_every_live_node() {
    if !have_redis() {
        return;
    }
    let redis = RedisServer::start();
    // Node 3 publishes only its busiest channel.
    let extras = [
        INTERVAL.to_string(),
        INTERVAL.to_string(),
        format!("{INTERVAL}redis_node_channels_max = 1\n"),
    ];
    let mut nodes: Vec<Node> = extras
        .iter()
        .map(|e| Node::start(&redis.url(), e))
        .collect();
    for n in &nodes {
        n.wait_health("ok");
    }
    // Node 1: one client subscribed to nothing. Node 2: two subscribers
    // of `shared`. Node 3: three of `shared`, one of `only3`.
    let mut clients = vec![Client::connected(nodes[0].addr)];
    for (node, channel) in [
        (1, "shared"),
        (1, "shared"),
        (2, "shared"),
        (2, "shared"),
        (2, "shared"),
        (2, "only3"),
    ] {
        let mut c = Client::connected(nodes[node].addr);
        let r = c.call(json!({"subscribe": {"channel": channel}}));
        assert!(r.get("subscribe").is_some(), "{r}");
        clients.push(c);
    }

    let want: BTreeMap<String, u64> = [
        (name(&nodes[0]), 1),
        (name(&nodes[1]), 2),
        (name(&nodes[2]), 4),
    ]
    .into_iter()
    .collect();
    assert_eq!(eventually(&want, || clients_by_node(&nodes[0])), want);
    // Every node lists the same nodes, with distinct uids and figures.
    let (_, r) = api(nodes[2].addr, "info", &json!({}));
    let listed: &Vec<Value> = r["result"]["nodes"].as_array().unwrap();
    assert_eq!(listed.len(), 3, "{r}");
    let mut uids: Vec<&str> = listed.iter().filter_map(|n| n["uid"].as_str()).collect();
    uids.sort();
    uids.dedup();
    assert_eq!(uids.len(), 3, "{r}");
    let third = listed
        .iter()
        .find(|n| n["name"] == name(&nodes[2]))
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(
        (
            &third["num_channels"],
            &third["num_subs"],
            &third["num_users"]
        ),
        (&json!(2), &json!(4), &json!(1)),
        "{r}"
    );

    // Node 1 has no subscriber: `shared` is summed over nodes 2 and 3;
    // `only3` is left out of node 3's record (redis_node_channels_max 1,
    // its busiest channel is `shared`).
    let want: BTreeMap<String, u64> = [("shared".to_string(), 5)].into_iter().collect();
    assert_eq!(eventually(&want, || channels(&nodes[0], None)), want);
    assert_eq!(channels(&nodes[0], Some("sh*")), want);
    assert!(channels(&nodes[0], Some("only*")).is_empty());
    // Node 3 knows its own channels live, and node 2's from its record.
    let want: BTreeMap<String, u64> = [("shared".to_string(), 5), ("only3".to_string(), 1)]
        .into_iter()
        .collect();
    assert_eq!(eventually(&want, || channels(&nodes[2], None)), want);

    let seen = || metric(&nodes[0].metrics(), "wsrelay_broker_nodes");
    assert_eq!(eventually(&2.0, seen), 2.0);

    // Subscriber connections killed: `P.nodes` is subscribed again (node
    // 2's new client reaches node 1 only in a record sent afterwards).
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed.trim(), "3", "one subscriber connection per node");
    clients.push(Client::connected(nodes[1].addr));
    let want: BTreeMap<String, u64> = [
        (name(&nodes[0]), 1),
        (name(&nodes[1]), 3),
        (name(&nodes[2]), 4),
    ]
    .into_iter()
    .collect();
    assert_eq!(eventually(&want, || clients_by_node(&nodes[0])), want);
    assert!(metric(&nodes[0].metrics(), "wsrelay_broker_reconnects_total") >= 1.0);

    // Node 3 dies (SIGKILL): gone from `info` and `channels` after three
    // intervals without its record.
    let killed = name(&nodes[2]);
    clients.truncate(3); // node 1's client and node 2's first two
    drop(nodes.pop());
    let want: BTreeMap<String, u64> = [(name(&nodes[0]), 1), (name(&nodes[1]), 2)]
        .into_iter()
        .collect();
    let got = eventually(&want, || clients_by_node(&nodes[0]));
    assert_eq!(got, want, "{killed} still listed");
    let seen = || metric(&nodes[0].metrics(), "wsrelay_broker_nodes");
    assert_eq!(eventually(&1.0, seen), 1.0);
    let want: BTreeMap<String, u64> = [("shared".to_string(), 2)].into_iter().collect();
    assert_eq!(eventually(&want, || channels(&nodes[0], None)), want);
}
