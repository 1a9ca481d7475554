//! What this node says about itself: its figures and its channels with
//! subscriber counts, for the server API's `info` and `channels` and, with
//! `broker = "redis"`, for the [`NodeRecord`] the bridge publishes to the
//! other nodes every `redis_node_info_interval`.

use super::directory::RoomShared;
use super::Shared;
use crate::broker::NodeRecord;
use crate::pubsub::api::NodeInfo;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

/// This node's `info` entry, from its live figures.
pub fn own_info(shared: &Shared) -> NodeInfo {
    let rooms = subscribed_rooms(shared);
    let hub = &shared.hub;
    NodeInfo {
        uid: hub.node_id.clone(),
        name: node_name(shared.config.listen, hostname()),
        version: super::client::VERSION.to_string(),
        num_clients: hub.clients() as u64,
        num_users: hub.users() as u64,
        num_channels: rooms.len() as u64,
        num_subs: rooms.iter().map(|r| u64::from(r.subscribers())).sum(),
        uptime: hub.uptime_secs(),
    }
}

/// `wsrelay@<listen>`; with an unspecified listen address (`0.0.0.0`,
/// `[::]`: every node of a cluster alike) the host name instead, so the
/// nodes in `info` can be told apart (Centrifugo: host name and port).
fn node_name(listen: SocketAddr, host: Option<&str>) -> String {
    match host {
        Some(h) if listen.ip().is_unspecified() => format!("wsrelay@{h}:{}", listen.port()),
        _ => format!("wsrelay@{listen}"),
    }
}

/// The machine's host name, read once.
fn hostname() -> Option<&'static str> {
    static HOST: OnceLock<Option<String>> = OnceLock::new();
    HOST.get_or_init(|| {
        let mut buf = [0u8; 256];
        // SAFETY: gethostname writes at most `buf.len()` bytes into `buf`,
        // which we own for the duration of the call.
        let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
        if rc != 0 {
            return None;
        }
        let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
        let name = std::str::from_utf8(&buf[..end]).ok()?;
        (!name.is_empty()).then(|| name.to_string())
    })
    .as_deref()
}

/// Rooms with at least one protocol subscriber on this node.
pub fn subscribed_rooms(shared: &Shared) -> Vec<Arc<RoomShared>> {
    let mut rooms = shared.directory.names();
    rooms.retain(|r| r.subscribers() > 0);
    rooms
}

/// The record this node publishes: its `info` and at most `max_channels`
/// of its channels, those with the most subscribers when it has more
/// (then marked truncated).
pub fn record(shared: &Shared, max_channels: usize) -> NodeRecord {
    let info = own_info(shared);
    // Counts read once: they change under our feet, and selecting needs a
    // stable order.
    let channels = subscribed_rooms(shared)
        .iter()
        .map(|r| (r.name.to_string(), r.subscribers()))
        .collect();
    let (channels, truncated) = busiest(channels, max_channels);
    NodeRecord {
        node: Default::default(),
        info,
        channels,
        truncated,
    }
}

/// The `max` channels with the most subscribers (in no order) and whether
/// any were left out; channels without subscribers are dropped.
fn busiest(mut channels: Vec<(String, u32)>, max: usize) -> (Vec<(String, u32)>, bool) {
    channels.retain(|(_, n)| *n > 0);
    let truncated = channels.len() > max;
    if truncated {
        if max > 0 {
            channels.select_nth_unstable_by(max - 1, |a, b| b.1.cmp(&a.1));
        }
        channels.truncate(max);
    }
    (channels, truncated)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_name_is_the_listen_address_or_the_host_name_on_all_addresses() {
        let a = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(
            node_name(a("10.0.0.5:8000"), Some("web-1")),
            "wsrelay@10.0.0.5:8000"
        );
        assert_eq!(
            node_name(a("0.0.0.0:8000"), Some("web-1")),
            "wsrelay@web-1:8000"
        );
        assert_eq!(
            node_name(a("[::]:8000"), Some("web-1")),
            "wsrelay@web-1:8000"
        );
        assert_eq!(node_name(a("0.0.0.0:8000"), None), "wsrelay@0.0.0.0:8000");
    }

    #[test]
    fn busiest_keeps_the_channels_with_most_subscribers() {
        let all: Vec<(String, u32)> = [("a", 3), ("b", 0), ("c", 9), ("d", 1), ("e", 5)]
            .iter()
            .map(|(c, n)| (c.to_string(), *n))
            .collect();
        let sorted = |(mut v, t): (Vec<(String, u32)>, bool)| {
            v.sort();
            (v, t)
        };
        let names = |v: &[&str]| v.iter().map(|c| c.to_string()).collect::<Vec<_>>();
        let (v, t) = sorted(busiest(all.clone(), 2));
        assert!(t);
        assert_eq!(
            v.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>(),
            names(&["c", "e"])
        );
        // Four with subscribers: a bound of 4 keeps them all, untruncated.
        let (v, t) = sorted(busiest(all.clone(), 4));
        assert!(!t);
        assert_eq!(
            v.iter().map(|(c, _)| c.clone()).collect::<Vec<_>>(),
            names(&["a", "c", "d", "e"])
        );
        let (v, t) = busiest(all, 0);
        assert!(t && v.is_empty());
    }
}
