//! What nodes know about each other, for the server API's cluster-wide
//! `info` and `channels`: every node publishes a [`NodeRecord`] about
//! itself every `redis_node_info_interval` on the control channel
//! `P.nodes` (shard 0), and keeps the others' latest records in a
//! [`NodeRegistry`] until they are `3 × interval` old (a node that died
//! drops out). Sans-IO: the registry takes `now` and never reads a clock.
//!
//! Record layout (binary, versioned, integers big-endian):
//!
//! ```text
//! u8   version (1)
//! [16] node id (the broker origin id, random per process start)
//! u8   length + uid, u8 length + name, u8 length + version (UTF-8)
//! u64  num_clients, num_users, num_channels, num_subs, uptime (seconds)
//! u8   flags: bit 0 = channels truncated (the node has more than it sent)
//! u32  channel count N
//! N ×  (u16 length + channel name, u32 subscribers)
//! ```
//!
//! Decoding never reads past its input, allocates at most the input's
//! size, keeps at most `max_channels` channels (more: the record is marked
//! truncated) and answers garbage with an error.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::envelope::NodeId;
use super::reader::{Reader, Truncated};
use crate::pubsub::api::NodeInfo;

/// Current record version.
pub const VERSION: u8 = 1;
/// Longest uid, name or version string a record carries (longer ones are
/// cut at a character boundary).
pub const MAX_TEXT_BYTES: usize = u8::MAX as usize;
/// Longest channel name a record carries (longer ones are left out and
/// the record marked truncated).
pub const MAX_CHANNEL_BYTES: usize = u16::MAX as usize;
/// Most nodes a registry keeps: records of further nodes are ignored
/// until some expire (a bound against a flood of made-up node ids).
pub const MAX_NODES: usize = 1024;
/// A node is gone after this many intervals without a record.
pub const EXPIRY_INTERVALS: u32 = 3;

const FLAG_TRUNCATED: u8 = 1;

/// One node's figures and channels, as it published them.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeRecord {
    /// The broker id of the node (its envelopes' origin).
    pub node: NodeId,
    /// What `info` answers for it.
    pub info: NodeInfo,
    /// Channels with subscribers there, and how many.
    pub channels: Vec<(String, u32)>,
    /// The node has more channels than `channels` holds (its
    /// `redis_node_channels_max`, or this node's on decoding).
    pub truncated: bool,
}

/// Why bytes are not a node record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    Truncated,
    Version(u8),
    Text,
    Flags(u8),
    Trailing,
}

impl From<Truncated> for DecodeError {
    fn from(_: Truncated) -> Self {
        DecodeError::Truncated
    }
}

/// A `u8`-length-prefixed UTF-8 text.
fn text(r: &mut Reader<'_>) -> Result<String, DecodeError> {
    let n = r.u8()? as usize;
    let b = r.take(n)?;
    Ok(std::str::from_utf8(b)
        .map_err(|_| DecodeError::Text)?
        .to_string())
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DecodeError::Truncated => write!(f, "truncated node record"),
            DecodeError::Version(v) => write!(f, "unknown node record version {v}"),
            DecodeError::Text => write!(f, "node record text is not UTF-8"),
            DecodeError::Flags(b) => write!(f, "unknown node record flags {b:#x}"),
            DecodeError::Trailing => write!(f, "bytes after the node record"),
        }
    }
}

impl std::error::Error for DecodeError {}

/// `s` cut to at most `max` bytes at a character boundary.
fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn put_text(out: &mut Vec<u8>, s: &str) {
    let s = cut(s, MAX_TEXT_BYTES);
    out.push(s.len() as u8);
    out.extend_from_slice(s.as_bytes());
}

impl NodeRecord {
    pub fn encode(&self) -> Vec<u8> {
        let names: usize = self.channels.iter().map(|(c, _)| c.len() + 6).sum();
        let mut out = Vec::with_capacity(80 + names);
        out.push(VERSION);
        out.extend_from_slice(&self.node.0);
        put_text(&mut out, &self.info.uid);
        put_text(&mut out, &self.info.name);
        put_text(&mut out, &self.info.version);
        for n in [
            self.info.num_clients,
            self.info.num_users,
            self.info.num_channels,
            self.info.num_subs,
            self.info.uptime,
        ] {
            out.extend_from_slice(&n.to_be_bytes());
        }
        let fits = |c: &&(String, u32)| c.0.len() <= MAX_CHANNEL_BYTES;
        let count = self.channels.iter().filter(fits).count();
        let count = count.min(u32::MAX as usize);
        let truncated = self.truncated || count < self.channels.len();
        out.push(if truncated { FLAG_TRUNCATED } else { 0 });
        out.extend_from_slice(&(count as u32).to_be_bytes());
        for (name, n) in self.channels.iter().filter(fits).take(count) {
            out.extend_from_slice(&(name.len() as u16).to_be_bytes());
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(&n.to_be_bytes());
        }
        out
    }

    /// Decodes one record (the input must be exactly one), keeping at
    /// most `max_channels` of its channels.
    pub fn decode(bytes: &[u8], max_channels: usize) -> Result<NodeRecord, DecodeError> {
        let mut r = Reader(bytes);
        let version = r.u8()?;
        if version != VERSION {
            return Err(DecodeError::Version(version));
        }
        let mut node = [0u8; 16];
        node.copy_from_slice(r.take(16)?);
        let uid = text(&mut r)?;
        let name = text(&mut r)?;
        let version = text(&mut r)?;
        let mut n = [0u64; 5];
        for v in &mut n {
            *v = r.u64()?;
        }
        let flags = r.u8()?;
        if flags & !FLAG_TRUNCATED != 0 {
            return Err(DecodeError::Flags(flags));
        }
        let count = r.u32()? as usize;
        // Each entry takes at least 6 bytes: the capacity never exceeds
        // what the input can hold.
        let mut channels = Vec::with_capacity(count.min(max_channels).min(r.0.len() / 6));
        for i in 0..count {
            let len = r.u16()? as usize;
            let name = r.take(len)?;
            let subscribers = r.u32()?;
            if i < max_channels {
                let name = std::str::from_utf8(name).map_err(|_| DecodeError::Text)?;
                channels.push((name.to_string(), subscribers));
            }
        }
        if !r.0.is_empty() {
            return Err(DecodeError::Trailing);
        }
        Ok(NodeRecord {
            node: NodeId(node),
            info: NodeInfo {
                uid,
                name,
                version,
                num_clients: n[0],
                num_users: n[1],
                num_channels: n[2],
                num_subs: n[3],
                uptime: n[4],
            },
            channels,
            truncated: flags & FLAG_TRUNCATED != 0 || count > max_channels,
        })
    }
}

/// The latest record of every other node heard within the expiry.
pub struct NodeRegistry {
    ttl: Duration,
    max_nodes: usize,
    nodes: HashMap<NodeId, (Instant, Arc<NodeRecord>)>,
}

impl NodeRegistry {
    /// Nodes expire `ttl` after their last record; at most `max_nodes`
    /// are kept.
    pub fn new(ttl: Duration, max_nodes: usize) -> NodeRegistry {
        NodeRegistry {
            ttl,
            max_nodes,
            nodes: HashMap::new(),
        }
    }

    /// For nodes publishing every `interval`.
    pub fn for_interval(interval: Duration) -> NodeRegistry {
        NodeRegistry::new(interval * EXPIRY_INTERVALS, MAX_NODES)
    }

    /// Keeps `record` as its node's latest, heard at `now`. False when
    /// refused: a new node while `max_nodes` live ones are kept.
    pub fn heard(&mut self, record: NodeRecord, now: Instant) -> bool {
        if !self.nodes.contains_key(&record.node) && self.nodes.len() >= self.max_nodes {
            self.expire(now);
            if self.nodes.len() >= self.max_nodes {
                return false;
            }
        }
        self.nodes.insert(record.node, (now, Arc::new(record)));
        true
    }

    /// Forgets nodes not heard within the expiry.
    pub fn expire(&mut self, now: Instant) {
        let ttl = self.ttl;
        self.nodes
            .retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
    }

    /// The records of nodes heard within the expiry, by uid.
    pub fn live(&self, now: Instant) -> Vec<Arc<NodeRecord>> {
        let mut v: Vec<Arc<NodeRecord>> = self
            .nodes
            .values()
            .filter(|(at, _)| now.saturating_duration_since(*at) < self.ttl)
            .map(|(_, r)| r.clone())
            .collect();
        v.sort_by(|a, b| a.info.uid.cmp(&b.info.uid));
        v
    }

    /// Nodes kept (live or not yet expired by [`Self::expire`]).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: u8) -> NodeRecord {
        NodeRecord {
            node: NodeId([id; 16]),
            info: NodeInfo {
                uid: format!("uid-{id}"),
                name: "wsrelay@127.0.0.1:8080".into(),
                version: "1.2.3".into(),
                num_clients: 7,
                num_users: 3,
                num_channels: 2,
                num_subs: 9,
                uptime: 61,
            },
            channels: vec![("news".into(), 5), ("chat:é".into(), 4)],
            truncated: false,
        }
    }

    #[test]
    fn round_trips() {
        for truncated in [false, true] {
            let r = NodeRecord {
                truncated,
                ..sample(1)
            };
            assert_eq!(NodeRecord::decode(&r.encode(), 100), Ok(r));
        }
        let empty = NodeRecord {
            channels: Vec::new(),
            ..sample(2)
        };
        assert_eq!(NodeRecord::decode(&empty.encode(), 0), Ok(empty));
    }

    #[test]
    fn more_channels_than_the_bound_are_cut_and_marked_truncated() {
        let mut r = sample(1);
        r.channels = (0..10).map(|i| (format!("c{i}"), i)).collect();
        let d = NodeRecord::decode(&r.encode(), 4).unwrap();
        assert!(d.truncated);
        assert_eq!(d.channels, r.channels[..4].to_vec());
        assert_eq!(d.info, r.info);
        // Exactly at the bound: whole, not truncated.
        let d = NodeRecord::decode(&r.encode(), 10).unwrap();
        assert!(!d.truncated);
        assert_eq!(d.channels.len(), 10);
    }

    #[test]
    fn long_texts_are_cut_at_a_character_boundary_and_long_names_left_out() {
        let mut r = sample(1);
        r.info.name = "é".repeat(200); // 400 bytes
        r.channels.push(("x".repeat(MAX_CHANNEL_BYTES + 1), 1));
        let d = NodeRecord::decode(&r.encode(), 100).unwrap();
        assert_eq!(d.info.name, "é".repeat(127));
        assert_eq!(d.channels, sample(1).channels);
        assert!(d.truncated, "a channel left out marks the record truncated");
    }

    #[test]
    fn every_truncation_and_any_trailing_byte_is_an_error() {
        let b = sample(1).encode();
        for n in 0..b.len() {
            assert!(NodeRecord::decode(&b[..n], 100).is_err(), "prefix of {n}");
        }
        let mut long = b.clone();
        long.push(0);
        assert_eq!(NodeRecord::decode(&long, 100), Err(DecodeError::Trailing));
        // Also when channels beyond the bound are skipped.
        assert_eq!(NodeRecord::decode(&long, 1), Err(DecodeError::Trailing));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert_eq!(NodeRecord::decode(&[], 10), Err(DecodeError::Truncated));
        assert_eq!(NodeRecord::decode(&[2], 10), Err(DecodeError::Version(2)));
        // An envelope on the control channel is not a record.
        let env = crate::broker::Envelope {
            kind: crate::broker::Kind::RawText,
            origin: NodeId([1; 16]),
            channel: "c".into(),
            position: None,
            info: None,
            payload: b"x".to_vec(),
        };
        assert!(NodeRecord::decode(&env.encode().unwrap(), 10).is_err());
        // Unknown flags, bad UTF-8.
        let mut b = sample(1).encode();
        // From the end: "news" and "chat:é" entries, the count, the flags.
        let flags_at = b.len() - (2 + 4 + 4) - (2 + 7 + 4) - 4 - 1;
        b[flags_at] = 0x80;
        assert_eq!(NodeRecord::decode(&b, 10), Err(DecodeError::Flags(0x80)));
        let mut b = sample(1).encode();
        b[18] = 0xff; // first byte of the uid
        assert_eq!(NodeRecord::decode(&b, 10), Err(DecodeError::Text));
        // A huge declared count allocates nothing: a truncation.
        let mut b = sample(1).encode();
        let count_at = flags_at + 1;
        b[count_at..count_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            NodeRecord::decode(&b, usize::MAX),
            Err(DecodeError::Truncated)
        );
        // Pseudo-random bytes never panic.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for len in 0..2000usize {
            let mut bytes: Vec<u8> = (0..len % 151)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            if let Some(v) = bytes.first_mut() {
                *v = VERSION;
            }
            let _ = NodeRecord::decode(&bytes, 16);
        }
    }

    #[test]
    fn registry_keeps_the_latest_record_and_expires_after_three_intervals() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut reg = NodeRegistry::for_interval(s);
        assert!(reg.heard(sample(1), t0));
        assert!(reg.heard(sample(2), t0 + s));
        let mut newer = sample(1);
        newer.info.num_clients = 100;
        assert!(reg.heard(newer, t0 + 2 * s));
        let live = reg.live(t0 + 2 * s);
        assert_eq!(live.len(), 2);
        assert_eq!(
            (live[0].info.uid.as_str(), live[0].info.num_clients),
            ("uid-1", 100)
        );
        // Node 2, last heard at 1s, is gone at 4s (3 intervals); node 1,
        // heard at 2s, lives until just before 5s.
        let uids = |reg: &NodeRegistry, at| {
            reg.live(at)
                .iter()
                .map(|r| r.info.uid.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(uids(&reg, t0 + 4 * s - Duration::from_millis(1)).len(), 2);
        assert_eq!(uids(&reg, t0 + 4 * s), vec!["uid-1"]);
        assert!(uids(&reg, t0 + 5 * s).is_empty());
        // `live` leaves expired entries in place; `expire` drops them.
        assert_eq!(reg.len(), 2);
        reg.expire(t0 + 4 * s);
        assert_eq!(reg.len(), 1);
        reg.expire(t0 + 5 * s);
        assert!(reg.is_empty());
    }

    #[test]
    fn registry_is_bounded_and_makes_room_from_expired_nodes() {
        let t0 = Instant::now();
        let ttl = Duration::from_secs(3);
        let mut reg = NodeRegistry::new(ttl, 2);
        assert!(reg.heard(sample(1), t0));
        assert!(reg.heard(sample(2), t0 + Duration::from_secs(1)));
        assert!(!reg.heard(sample(3), t0 + Duration::from_secs(2)), "full");
        // A known node is always updated.
        assert!(reg.heard(sample(2), t0 + Duration::from_secs(2)));
        // Once node 1 expired, node 3 takes its place.
        assert!(reg.heard(sample(3), t0 + ttl));
        let live = reg.live(t0 + ttl);
        let uids: Vec<_> = live.iter().map(|r| r.info.uid.as_str()).collect();
        assert_eq!(uids, ["uid-2", "uid-3"]);
    }
}
