//! Who connects where: the connection plan of a scenario, split over the
//! worker threads, and the topology figures needed for loss accounting.

use crate::addr::Target;
use std::net::IpAddr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Echo,
    Fanout,
    Connect,
    Churn,
    PubSub,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Echo => "echo",
            Kind::Fanout => "fanout",
            Kind::Connect => "connect",
            Kind::Churn => "churn",
            Kind::PubSub => "pubsub",
        }
    }
}

/// An open-loop or closed-loop sender on one connection.
#[derive(Clone, Debug, PartialEq)]
pub struct PubPlan {
    pub id: u32,
    /// Nanoseconds between this publisher's messages; 0: closed loop.
    pub interval_ns: f64,
    /// Offset of its first message from the start of the load, so that
    /// all publishers together send evenly spaced messages.
    pub offset_ns: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// Index over all connections of the run (picks the source address).
    pub global: u32,
    /// Node (index into the run's targets) this connection opens to.
    pub node: u16,
    pub path: String,
    pub room: u32,
    pub publisher: Option<PubPlan>,
    /// Checks, sequences and times the messages it receives.
    pub tracks: bool,
    /// Churn slot: connect, one message, close, again.
    pub churn: bool,
    /// pubsub: channel indexes this client subscribes to.
    pub channels: Vec<u32>,
}

/// Everything the workers share, read-only.
#[derive(Clone, Debug)]
pub struct Setup {
    pub kind: Kind,
    /// The nodes (one unless several `--url`s); each plan names its own.
    pub targets: Vec<Target>,
    pub sources: Vec<IpAddr>,
    pub size: usize,
    pub format: crate::payload::Format,
    pub threads: usize,
    /// Publisher p belongs to room p % rooms and is tracked at index
    /// p / rooms by the subscribers of that room.
    pub rooms: u32,
    pub pubs_per_room: usize,
    /// Tracked receivers per room: each message sent to room r is
    /// expected subs_in_room[r] times.
    pub subs_in_room: Vec<u32>,
    pub n_pubs: usize,
    /// Receivers ignore their own publisher id (all-publish fanout).
    pub skip_own: bool,
    pub in_flight: usize,
    pub connect_interval_ns: u64,
    pub connect_concurrency: usize,
    pub connect_timeout_ns: u64,
    pub close_timeout_ns: u64,
    pub fin_wait_ns: u64,
    /// Open-loop sends are batched: at most one publisher pass per tick.
    pub tick_ns: u64,
    pub warmup_ns: u64,
    pub duration_ns: u64,
    pub cpus: Vec<usize>,
    /// Plans per thread.
    pub plans: Vec<Vec<Plan>>,
    /// Message (churn: cycle) budget per thread; u64::MAX: unlimited.
    pub budgets: Vec<u64>,
    pub planned: usize,
    /// The pubsub scenario's settings.
    pub ps: Option<std::sync::Arc<PsSetup>>,
    /// `wss://`: the TLS client configuration.
    pub tls: Option<crate::transport::TlsClient>,
    /// `--deflate`: offer permessage-deflate.
    pub deflate: bool,
    /// Several nodes: per-node accounting (None with one node).
    pub nodes: Option<NodesSetup>,
}

/// Several nodes: what per-node accounting needs.
#[derive(Clone, Debug)]
pub struct NodesSetup {
    /// Publisher id → node it publishes on.
    pub pub_node: std::sync::Arc<Vec<u16>>,
    /// Fanout: tracked receivers per node and room ([node][room]).
    pub subs_in_room: Vec<Vec<u32>>,
}

/// pubsub: what the workers need besides the plans.
#[derive(Debug)]
pub struct PsSetup {
    pub cfg: std::sync::Arc<crate::pubsub::client::PsConfig>,
    pub subscribers: usize,
    pub publishers: usize,
    /// Periodic drops: every this long (0: off), this fraction of each
    /// worker's subscribers, away this long.
    pub reconnect_every_ns: u64,
    pub reconnect_fraction: f64,
    pub reconnect_away_ns: u64,
    /// Recovery burst: publications per channel per publisher while all
    /// subscribers are away.
    pub burst: Option<u64>,
}

/// Splits `total` over threads in proportion to their sender counts.
pub fn split_budget(total: Option<u64>, senders: &[usize]) -> Vec<u64> {
    let Some(total) = total else {
        return vec![u64::MAX; senders.len()];
    };
    let all: usize = senders.iter().sum();
    if all == 0 {
        return vec![0; senders.len()];
    }
    let mut out: Vec<u64> = senders
        .iter()
        .map(|&s| (total as u128 * s as u128 / all as u128) as u64)
        .collect();
    let mut left = total - out.iter().sum::<u64>();
    for (i, &s) in senders.iter().enumerate().cycle() {
        if left == 0 {
            break;
        }
        if s > 0 {
            out[i] += 1;
            left -= 1;
        }
    }
    out
}

/// Deals plans out to threads round-robin.
pub fn deal(all: Vec<Plan>, threads: usize) -> Vec<Vec<Plan>> {
    let mut per: Vec<Vec<Plan>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, p) in all.into_iter().enumerate() {
        per[i % threads].push(p);
    }
    per
}

pub fn senders_per_thread(plans: &[Vec<Plan>]) -> Vec<usize> {
    plans
        .iter()
        .map(|v| {
            v.iter()
                .filter(|p| p.publisher.is_some() || p.churn)
                .count()
        })
        .collect()
}

/// Echo: connection g is its own room, its own publisher and subscriber.
pub fn echo_plans(c: usize, rate: Option<f64>, path: &str) -> Vec<Plan> {
    (0..c)
        .map(|g| Plan {
            global: g as u32,
            node: 0,
            path: path.to_string(),
            room: g as u32,
            publisher: Some(PubPlan {
                id: g as u32,
                interval_ns: rate.map_or(0.0, |r| 1e9 * c as f64 / r),
                offset_ns: rate.map_or(0, |r| (g as f64 * 1e9 / r) as u64),
            }),
            tracks: true,
            churn: false,
            channels: Vec::new(),
        })
        .collect()
}

pub struct FanoutPlan {
    pub plans: Vec<Plan>,
    pub subs_in_room: Vec<u32>,
    pub pubs_per_room: usize,
    pub n_pubs: usize,
}

/// Fanout: subscribers then publishers (or members), round-robin over
/// rooms `/rooms/<prefix>-<i>`.
pub fn fanout_plans(
    subs: usize,
    pubs: usize,
    rooms: usize,
    rate: f64,
    prefix: &str,
    roles: bool,
    all_publish: bool,
) -> FanoutPlan {
    let rooms = rooms.max(1);
    let room_path = |r: usize, role: &str| {
        let q = if roles && !role.is_empty() {
            format!("?role={role}")
        } else {
            String::new()
        };
        format!("/rooms/{prefix}-{r}{q}")
    };
    let mut plans = Vec::new();
    let mut subs_in_room = vec![0u32; rooms];
    let n_pubs = if all_publish { subs } else { pubs };
    let pub_plan = |k: usize| PubPlan {
        id: k as u32,
        interval_ns: 1e9 * n_pubs as f64 / rate,
        offset_ns: (k as f64 * 1e9 / rate) as u64,
    };
    if all_publish {
        for m in 0..subs {
            let r = m % rooms;
            subs_in_room[r] += 1;
            plans.push(Plan {
                global: m as u32,
                node: 0,
                path: room_path(r, ""),
                room: r as u32,
                publisher: Some(pub_plan(m)),
                tracks: true,
                churn: false,
                channels: Vec::new(),
            });
        }
    } else {
        for j in 0..subs {
            let r = j % rooms;
            subs_in_room[r] += 1;
            plans.push(Plan {
                global: j as u32,
                node: 0,
                path: room_path(r, "sub"),
                room: r as u32,
                publisher: None,
                tracks: true,
                churn: false,
                channels: Vec::new(),
            });
        }
        for k in 0..pubs {
            let r = k % rooms;
            plans.push(Plan {
                global: (subs + k) as u32,
                node: 0,
                path: room_path(r, "pub"),
                room: r as u32,
                publisher: Some(pub_plan(k)),
                tracks: false,
                churn: false,
                channels: Vec::new(),
            });
        }
    }
    if all_publish {
        // A member's messages are expected by the other members.
        for n in subs_in_room.iter_mut() {
            *n = n.saturating_sub(1);
        }
    }
    FanoutPlan {
        plans,
        subs_in_room,
        pubs_per_room: n_pubs.div_ceil(rooms),
        n_pubs,
    }
}

pub fn idle_plans(c: usize, path: &str, churn: bool) -> Vec<Plan> {
    (0..c)
        .map(|g| Plan {
            global: g as u32,
            node: 0,
            path: path.to_string(),
            room: 0,
            publisher: None,
            tracks: false,
            churn,
            channels: Vec::new(),
        })
        .collect()
}

pub struct PubSubPlan {
    pub plans: Vec<Plan>,
}

/// pubsub: `conns` subscribers, each on `subs` of the `channels` channels
/// (subscriber i takes channels i*subs .. i*subs+subs-1 modulo the count,
/// so every channel gets the same share), then `pubs` publishers at
/// `rate` msgs/s in total, each over all channels in turn.
pub fn pubsub_plans(
    conns: usize,
    subs: usize,
    channels: usize,
    pubs: usize,
    rate: f64,
    path: &str,
) -> PubSubPlan {
    let channels = channels.max(1);
    let subs = subs.min(channels);
    let mut plans = Vec::with_capacity(conns + pubs);
    for i in 0..conns {
        let chans: Vec<u32> = (0..subs)
            .map(|j| ((i * subs + j) % channels) as u32)
            .collect();
        plans.push(Plan {
            global: i as u32,
            node: 0,
            path: path.to_string(),
            room: 0,
            publisher: None,
            tracks: false,
            churn: false,
            channels: chans,
        });
    }
    for k in 0..pubs {
        plans.push(Plan {
            global: (conns + k) as u32,
            node: 0,
            path: path.to_string(),
            room: 0,
            publisher: Some(PubPlan {
                id: k as u32,
                interval_ns: 1e9 * pubs as f64 / rate,
                offset_ns: (k as f64 * 1e9 / rate) as u64,
            }),
            tracks: false,
            churn: false,
            channels: Vec::new(),
        });
    }
    PubSubPlan { plans }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budgets_are_exact_and_proportional() {
        assert_eq!(split_budget(None, &[1, 2]), vec![u64::MAX, u64::MAX]);
        let b = split_budget(Some(10), &[1, 1, 1]);
        assert_eq!(b.iter().sum::<u64>(), 10);
        assert_eq!(split_budget(Some(10), &[0, 2]), vec![0, 10]);
        assert_eq!(split_budget(Some(7), &[0, 0]), vec![0, 0]);
        let b = split_budget(Some(1000), &[1, 3]);
        assert_eq!(b, vec![250, 750]);
    }

    #[test]
    fn fanout_topology() {
        let f = fanout_plans(5, 3, 2, 1000.0, "t", false, false);
        assert_eq!(f.plans.len(), 8);
        assert_eq!(f.subs_in_room, vec![3, 2]);
        assert_eq!(f.pubs_per_room, 2);
        // Publisher 2 is in room 0 at tracker index 1.
        let p2 = &f.plans[7];
        assert_eq!(p2.room, 0);
        assert_eq!(p2.path, "/rooms/t-0");
        let pp = p2.publisher.as_ref().unwrap();
        assert_eq!(pp.id, 2);
        assert_eq!(pp.id % 2, p2.room);
        assert_eq!(pp.interval_ns, 3e6);
        assert_eq!(pp.offset_ns, 2_000_000);
        let r = fanout_plans(2, 1, 1, 10.0, "t", true, false);
        assert_eq!(r.plans[0].path, "/rooms/t-0?role=sub");
        assert_eq!(r.plans[2].path, "/rooms/t-0?role=pub");
        let a = fanout_plans(10, 0, 5, 100.0, "t", true, true);
        assert!(a.plans.iter().all(|p| p.tracks && p.publisher.is_some()));
        assert_eq!(a.n_pubs, 10);
        assert_eq!(a.subs_in_room, vec![1; 5]);
        assert_eq!(a.plans[3].path, "/rooms/t-3");
    }

    #[test]
    fn pubsub_topology() {
        let p = pubsub_plans(6, 2, 4, 2, 1000.0, "/connection/websocket");
        assert_eq!(p.plans.len(), 8);
        assert_eq!(p.plans[0].channels, vec![0, 1]);
        assert_eq!(p.plans[1].channels, vec![2, 3]);
        assert_eq!(p.plans[2].channels, vec![0, 1]);
        let mut per = [0; 4];
        for k in p.plans.iter().flat_map(|p| &p.channels) {
            per[*k as usize] += 1;
        }
        assert_eq!(per, [3, 3, 3, 3]);
        let pb = p.plans[7].publisher.as_ref().unwrap();
        assert_eq!((pb.id, pb.interval_ns, pb.offset_ns), (1, 2e6, 1_000_000));
        assert!(p.plans[7].channels.is_empty());
        // More subscriptions than channels: each channel once.
        let p = pubsub_plans(1, 9, 3, 1, 1.0, "/");
        assert_eq!(p.plans[0].channels, vec![0, 1, 2]);
    }

    #[test]
    fn dealing_spreads_every_role() {
        let f = fanout_plans(4, 2, 1, 1.0, "t", false, false);
        let per = deal(f.plans, 2);
        assert_eq!(senders_per_thread(&per), vec![1, 1]);
        let e = echo_plans(3, Some(300.0), "/echo");
        assert_eq!(e[2].publisher.as_ref().unwrap().interval_ns, 1e7);
        assert_eq!(e[2].publisher.as_ref().unwrap().offset_ns, 6_666_666);
    }
}
