//! Several relay nodes (a cluster sharing one broker) in one run: which
//! node each connection opens to, and the accounting per receiving node.
//!
//! Both ends of every message live in this process, so a publication sent
//! on node 1 and received on node 3 is timed on one clock: the latency per
//! receiving node, and same-node against cross-node, is the broker hop's
//! cost measured end to end.

use crate::addr::{parse_url, Target};
use crate::conn::new_hist;
use crate::plan::Plan;
use crate::tracker::SeqTracker;
use hdrhistogram::Histogram;
use std::sync::Arc;

/// Where the connections of a run go.
#[derive(Clone, Debug, PartialEq)]
pub struct Placement {
    /// Every node: the `--url`s in order, then any `--publish-url` that is
    /// none of them (a node that only receives publishers).
    pub targets: Vec<Target>,
    /// How many of `targets` came from `--url` (receivers go there).
    pub receiving: usize,
    /// Node of each `--publish-url` (default: the first `--url`);
    /// publisher k publishes on `publish[k % len]`.
    pub publish: Vec<u16>,
    /// `--split`: receivers per `--url`, in order (None: round robin).
    pub split: Option<Vec<usize>>,
}

impl Placement {
    pub fn several(&self) -> bool {
        self.targets.len() > 1
    }
}

/// Most nodes in one run (node indexes are u16; a run this size is far
/// beyond one machine anyway).
const MAX_NODES: usize = 256;

fn same_node(a: &Target, b: &Target) -> bool {
    a.addr == b.addr && a.prefix == b.prefix
}

/// Parses `--url` (one or more), `--publish-url` and `--split`.
pub fn parse_placement(
    urls: &[String],
    publish: &[String],
    split: Option<&str>,
) -> Result<Placement, String> {
    if urls.is_empty() {
        return Err("at least one --url is needed".into());
    }
    let mut targets: Vec<Target> = Vec::new();
    for u in urls {
        let t = parse_url(u)?;
        if targets.iter().any(|o| same_node(o, &t)) {
            return Err(format!("--url {u:?} is given twice"));
        }
        targets.push(t);
    }
    let receiving = targets.len();
    let mut pubs = Vec::new();
    for u in publish {
        let t = parse_url(u)?;
        let i = match targets.iter().position(|o| same_node(o, &t)) {
            Some(i) => i,
            None => {
                targets.push(t);
                targets.len() - 1
            }
        };
        pubs.push(i as u16);
    }
    if pubs.is_empty() {
        pubs.push(0);
    }
    if targets.len() > MAX_NODES {
        return Err(format!(
            "at most {MAX_NODES} nodes (--url and --publish-url)"
        ));
    }
    let first = &targets[0];
    // One TLS client (server name) and one route set serve every node.
    if let Some(t) = targets.iter().find(|t| {
        t.tls != first.tls || t.prefix != first.prefix || (t.tls && t.hostname != first.hostname)
    }) {
        return Err(format!(
            "every --url and --publish-url needs the same scheme and path, and with wss:// the \
             same host name (they differ in {}://{}{}); nodes differ by port or loopback address",
            if t.tls { "wss" } else { "ws" },
            t.host,
            t.prefix
        ));
    }
    let split = match split {
        None => None,
        Some(s) => {
            let v = s
                .split(',')
                .map(|x| x.trim().parse::<usize>())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| format!("bad --split {s:?} (example: 1000,1000,1000)"))?;
            if v.len() != receiving {
                return Err(format!(
                    "--split has {} entries for {receiving} --url(s): one count per --url",
                    v.len()
                ));
            }
            Some(v)
        }
    };
    Ok(Placement {
        targets,
        receiving,
        publish: pubs,
        split,
    })
}

/// A connection that only sends (a publisher without subscriptions): it
/// goes to a publish node; every other connection is a receiver.
fn sends_only(p: &Plan) -> bool {
    p.publisher.is_some() && !p.tracks && p.channels.is_empty()
}

/// Sets each plan's node. Receivers, in plan order, are dealt round robin
/// in groups of `group` (the i-th receiver goes to node ⌊i / group⌋ mod N:
/// with `group` = rooms, every room gets members on every node), or in
/// blocks by `--split`; publisher k goes to its publish node.
pub fn assign(plans: &mut [Plan], place: &Placement, group: usize) -> Result<(), String> {
    let group = group.max(1);
    let receivers = plans.iter().filter(|p| !sends_only(p)).count();
    if let Some(split) = &place.split {
        let sum: usize = split.iter().sum();
        if sum != receivers {
            return Err(format!(
                "--split adds up to {sum} but the run has {receivers} receiving connections"
            ));
        }
    }
    let mut j = 0usize;
    for p in plans.iter_mut() {
        if sends_only(p) {
            let k = p.publisher.as_ref().map_or(0, |s| s.id as usize);
            p.node = place.publish[k % place.publish.len()];
            continue;
        }
        p.node = match &place.split {
            Some(split) => {
                let mut left = j;
                let mut node = 0;
                for (n, &c) in split.iter().enumerate() {
                    if left < c {
                        node = n;
                        break;
                    }
                    left -= c;
                }
                node as u16
            }
            None => ((j / group) % place.receiving) as u16,
        };
        j += 1;
    }
    Ok(())
}

/// One receiving node's figures in one worker.
pub struct NodeAcc {
    /// Tracked messages received (duplicates included) and new ones.
    pub received: u64,
    pub delivered: u64,
    /// Received inside the measured window (for the rate).
    pub window_received: u64,
    /// Latency of messages received after the warm-up.
    pub hist: Histogram<u64>,
    /// Unique deliveries per publisher (fanout: by publisher id; pubsub:
    /// by publisher × channel), folded in when a connection ends.
    pub unique: Vec<u64>,
    pub dup: u64,
    pub reordered: u64,
}

impl NodeAcc {
    fn new(slots: usize) -> NodeAcc {
        NodeAcc {
            received: 0,
            delivered: 0,
            window_received: 0,
            hist: new_hist(),
            unique: vec![0; slots],
            dup: 0,
            reordered: 0,
        }
    }

    /// Folds in one connection's (or subscription's) sequence trackers;
    /// tracker i counts for slot `slot(i)`.
    pub fn fold(&mut self, trackers: &[SeqTracker], slot: impl Fn(usize) -> usize) {
        for (i, tr) in trackers.iter().enumerate() {
            if let Some(u) = self.unique.get_mut(slot(i)) {
                *u += tr.unique;
            }
            self.dup += tr.dup;
            self.reordered += tr.reordered;
        }
    }
}

/// A worker's per-node accounting (only with several nodes: a one-node
/// run pays nothing for it).
pub struct NodeTrack {
    /// Publisher id → the node it publishes on.
    pub pub_node: Arc<Vec<u16>>,
    /// Measured window: latency samples from `from_ns`, rate inside
    /// [`from_ns`, `to_ns`).
    pub from_ns: u64,
    pub to_ns: u64,
    pub per: Vec<NodeAcc>,
    /// Latency where the publisher's node is the receiver's, and where
    /// it is another (the broker hop).
    pub same: Histogram<u64>,
    pub cross: Histogram<u64>,
}

impl NodeTrack {
    pub fn new(nodes: usize, pub_node: Arc<Vec<u16>>, slots: usize) -> NodeTrack {
        NodeTrack {
            pub_node,
            from_ns: u64::MAX,
            to_ns: u64::MAX,
            per: (0..nodes).map(|_| NodeAcc::new(slots)).collect(),
            same: new_hist(),
            cross: new_hist(),
        }
    }

    /// One tracked message received on `node` from `publisher`, sent
    /// (intended) at `sent_ns`.
    #[inline]
    pub fn record(&mut self, node: u16, publisher: u32, new: bool, now: u64, sent_ns: u64) {
        let Some(a) = self.per.get_mut(node as usize) else {
            return;
        };
        a.received += 1;
        a.delivered += new as u64;
        if now < self.from_ns {
            return;
        }
        a.window_received += (now < self.to_ns) as u64;
        let lat = now.saturating_sub(sent_ns).max(1);
        a.hist.saturating_record(lat);
        let same = self.pub_node.get(publisher as usize) == Some(&node);
        if same {
            self.same.saturating_record(lat);
        } else {
            self.cross.saturating_record(lat);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{fanout_plans, pubsub_plans};

    fn urls(ports: &[u16]) -> Vec<String> {
        ports
            .iter()
            .map(|p| format!("ws://127.0.0.1:{p}"))
            .collect()
    }

    #[test]
    fn urls_publish_urls_and_split_are_parsed() {
        let p = parse_placement(&urls(&[1, 2, 3]), &[], None).unwrap();
        assert_eq!((p.targets.len(), p.receiving), (3, 3));
        assert_eq!(p.publish, vec![0]);
        assert!(p.several() && p.split.is_none());
        // A publish URL that is one of the nodes is that node; another one
        // is a node of its own that receives nobody.
        let p = parse_placement(&urls(&[1, 2]), &urls(&[2, 9, 1]), Some("3, 4")).unwrap();
        assert_eq!(p.publish, vec![1, 2, 0]);
        assert_eq!((p.targets.len(), p.receiving), (3, 2));
        assert_eq!(p.targets[2].addr.port(), 9);
        assert_eq!(p.split, Some(vec![3, 4]));
        let one = parse_placement(&urls(&[1]), &[], None).unwrap();
        assert!(!one.several());
        let err =
            |u: &[String], pu: &[String], s: Option<&str>| parse_placement(u, pu, s).unwrap_err();
        assert!(err(&urls(&[1, 1]), &[], None).contains("twice"));
        assert!(err(&urls(&[1, 2]), &[], Some("1")).contains("one count per --url"));
        assert!(err(&urls(&[1, 2]), &[], Some("1,x")).contains("bad --split"));
        assert!(err(&[], &[], None).contains("--url"));
        let mixed = vec!["ws://127.0.0.1:1".to_string(), "wss://127.0.0.1:2".into()];
        assert!(err(&mixed, &[], None).contains("same scheme"));
        let names = vec!["wss://localhost:1".to_string(), "wss://127.0.0.1:2".into()];
        assert!(err(&names, &[], None).contains("same host name"));
        let prefixed = vec!["ws://127.0.0.1:1/a".to_string(), "ws://127.0.0.1:2".into()];
        assert!(err(&prefixed, &[], None).contains("same scheme"));
        assert!(err(&urls(&[1]), &["ws://10.0.0.1:2".into()], None).contains("loopback"));
        // Different loopback addresses, same port: different nodes.
        let p = parse_placement(
            &["ws://127.0.0.1:5".into(), "ws://127.0.0.2:5".into()],
            &[],
            None,
        )
        .unwrap();
        assert_eq!(p.receiving, 2);
    }

    #[test]
    fn receivers_round_robin_per_room_and_publishers_on_publish_nodes() {
        // 6 subscribers in 3 rooms over 3 nodes, 4 publishers on nodes 2, 3.
        let mut f = fanout_plans(6, 4, 3, 100.0, "t", false, false).plans;
        let p = parse_placement(&urls(&[1, 2, 3]), &urls(&[2, 3]), None).unwrap();
        assert_eq!(p.publish, vec![1, 2]);
        assign(&mut f, &p, 3).unwrap();
        let subs: Vec<(u32, u16)> = f[..6].iter().map(|p| (p.room, p.node)).collect();
        // Every room has a member on node 0 and on node 1 (not all of a
        // room on one node, which plain j % 3 would do here).
        assert_eq!(subs, vec![(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 1)]);
        let pubs: Vec<u16> = f[6..].iter().map(|p| p.node).collect();
        assert_eq!(pubs, vec![1, 2, 1, 2]);
        // One room: plain round robin.
        let mut f = fanout_plans(5, 1, 1, 100.0, "t", false, false).plans;
        let p = parse_placement(&urls(&[1, 2, 3]), &[], None).unwrap();
        assign(&mut f, &p, 1).unwrap();
        let nodes: Vec<u16> = f.iter().map(|p| p.node).collect();
        assert_eq!(nodes, vec![0, 1, 2, 0, 1, 0]);
    }

    #[test]
    fn explicit_split_in_blocks_and_must_add_up() {
        let p = parse_placement(&urls(&[1, 2, 3]), &[], Some("1,0,3")).unwrap();
        let mut ps = pubsub_plans(4, 1, 2, 1, 10.0, "/").plans;
        assign(&mut ps, &p, 2).unwrap();
        let nodes: Vec<u16> = ps.iter().map(|p| p.node).collect();
        assert_eq!(nodes, vec![0, 2, 2, 2, 0]);
        let mut ps = pubsub_plans(5, 1, 2, 1, 10.0, "/").plans;
        assert!(assign(&mut ps, &p, 2).unwrap_err().contains("adds up to 4"));
        // All-publish members are receivers (they subscribe too).
        let mut f = fanout_plans(4, 0, 1, 10.0, "t", false, true).plans;
        let p = parse_placement(&urls(&[1, 2]), &[], Some("1,3")).unwrap();
        assign(&mut f, &p, 1).unwrap();
        let nodes: Vec<u16> = f.iter().map(|p| p.node).collect();
        assert_eq!(nodes, vec![0, 1, 1, 1]);
    }

    #[test]
    fn per_node_records_split_same_and_cross_node_after_the_warmup() {
        // Publisher 0 on node 0, publisher 1 on node 1.
        let mut t = NodeTrack::new(2, Arc::new(vec![0, 1]), 2);
        t.from_ns = 1_000;
        t.to_ns = 2_000;
        // Warm-up: counted, not timed.
        t.record(0, 0, true, 500, 400);
        t.record(0, 0, true, 1_500, 1_000); // same node, 500 ns, in window
        t.record(1, 0, true, 1_600, 1_000); // cross node, 600 ns
        t.record(1, 0, false, 2_500, 1_000); // duplicate, after the window
        t.record(1, 1, true, 2_100, 2_000); // same node on node 1
        t.record(7, 0, true, 1_500, 0); // unknown node: ignored
        assert_eq!((t.per[0].received, t.per[0].delivered), (2, 2));
        assert_eq!((t.per[1].received, t.per[1].delivered), (3, 2));
        assert_eq!((t.per[0].window_received, t.per[1].window_received), (1, 1));
        assert_eq!((t.per[0].hist.len(), t.per[1].hist.len()), (1, 3));
        assert_eq!((t.same.len(), t.cross.len()), (2, 2));
        assert_eq!(t.cross.min(), 600);
        assert_eq!(t.same.max(), 500);

        let mut trs = [SeqTracker::default(), SeqTracker::default()];
        for s in [0, 1, 1, 3, 2] {
            trs[1].record(s);
        }
        trs[0].record(0);
        t.per[1].fold(&trs, |i| i);
        assert_eq!(t.per[1].unique, vec![1, 4]);
        assert_eq!((t.per[1].dup, t.per[1].reordered), (1, 1));
    }
}
