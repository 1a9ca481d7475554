//! Values crossing between workers and the bridge.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};

use super::envelope::Envelope;

/// Names a request; its reply carries the same token.
pub type Token = u64;

/// Why a broker request failed. Every request gets exactly one reply,
/// this error or a [`Reply`], after at most `redis_publish_timeout`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BrokerError {
    /// Redis is down or not yet connected: failed at once. Also the answer
    /// to requests in flight when the connection broke (those may have
    /// been applied).
    Unavailable,
    /// The shard's outbox is full (Redis slower than the publishers):
    /// failed at once.
    Overloaded,
    /// No answer within `redis_publish_timeout`. The command may still
    /// have been applied (a publish may be delivered).
    Timeout,
    /// Redis answered with an error.
    Redis(String),
    /// Redis answered something this bridge does not understand.
    Protocol(String),
    /// The request cannot be encoded (a channel name over 64 KiB, ...).
    Invalid(String),
}

impl fmt::Display for BrokerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BrokerError::Unavailable => write!(f, "broker unavailable"),
            BrokerError::Overloaded => write!(f, "broker overloaded"),
            BrokerError::Timeout => write!(f, "broker timeout"),
            BrokerError::Redis(e) => write!(f, "redis error: {e}"),
            BrokerError::Protocol(e) => write!(f, "unexpected redis reply: {e}"),
            BrokerError::Invalid(e) => write!(f, "invalid broker request: {e}"),
        }
    }
}

impl std::error::Error for BrokerError {}

/// A successful answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    /// A publication without history went out (PUBLISH).
    Published,
    /// A publication with history got this position (and went out).
    Position {
        offset: u64,
        epoch: String,
    },
    History(HistoryReply),
    /// Presence entries of a channel (expired ones removed).
    Presence(Vec<PresenceEntry>),
    /// Presence added/removed, history removed.
    Done,
}

/// Answer to a history read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryReply {
    /// The stream's top offset and epoch.
    pub top: u64,
    pub epoch: String,
    /// Oldest retained offset (`top + 1` when nothing is retained).
    pub front: u64,
    /// Publications after the requested offset, in offset order.
    pub publications: Vec<Envelope>,
}

impl HistoryReply {
    /// Whether everything after (`offset`, `epoch`) is still retained:
    /// same epoch, and nothing between `offset` and the front was lost.
    pub fn covers(&self, offset: u64, epoch: &str) -> bool {
        epoch == self.epoch && offset <= self.top && offset.saturating_add(1) >= self.front
    }
}

/// One presence entry (Centrifugo's ClientInfo).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PresenceEntry {
    pub client: String,
    pub user: String,
    pub conn_info: Option<Vec<u8>>,
    pub chan_info: Option<Vec<u8>>,
}

impl From<PresenceEntry> for crate::pubsub::presence::ClientInfo {
    fn from(e: PresenceEntry) -> Self {
        crate::pubsub::presence::ClientInfo {
            client: e.client.into(),
            user: e.user.into(),
            conn_info: e.conn_info.map(Into::into),
            chan_info: e.chan_info.map(Into::into),
        }
    }
}

impl PresenceEntry {
    /// `presence_stats` of a channel from its entries: (clients, distinct
    /// users).
    pub fn stats(entries: &[PresenceEntry]) -> (usize, usize) {
        let users: std::collections::HashSet<&str> =
            entries.iter().map(|e| e.user.as_str()).collect();
        (entries.len(), users.len())
    }

    /// The hash value (the client id is the hash field): u16 user length,
    /// user, then two optional u32-length-prefixed blobs (flag byte first).
    pub(crate) fn encode_value(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 + self.user.len());
        let user = &self.user.as_bytes()[..self.user.len().min(u16::MAX as usize)];
        v.extend_from_slice(&(user.len() as u16).to_be_bytes());
        v.extend_from_slice(user);
        for blob in [&self.conn_info, &self.chan_info] {
            match blob {
                None => v.push(0),
                Some(b) => {
                    let b = &b[..b.len().min(u32::MAX as usize)];
                    v.push(1);
                    v.extend_from_slice(&(b.len() as u32).to_be_bytes());
                    v.extend_from_slice(b);
                }
            }
        }
        v
    }

    pub(crate) fn decode(client: &[u8], value: &[u8]) -> Option<PresenceEntry> {
        fn take<'a>(b: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
            if b.len() < n {
                return None;
            }
            let (x, rest) = b.split_at(n);
            *b = rest;
            Some(x)
        }
        let mut b = value;
        let n = take(&mut b, 2)?;
        let n = u16::from_be_bytes([n[0], n[1]]) as usize;
        let user = std::str::from_utf8(take(&mut b, n)?).ok()?.to_string();
        let mut blobs = [None, None];
        for slot in &mut blobs {
            if take(&mut b, 1)?[0] == 1 {
                let n = take(&mut b, 4)?;
                let n = u32::from_be_bytes([n[0], n[1], n[2], n[3]]) as usize;
                *slot = Some(take(&mut b, n)?.to_vec());
            }
        }
        if !b.is_empty() {
            return None;
        }
        let [conn_info, chan_info] = blobs;
        Some(PresenceEntry {
            client: std::str::from_utf8(client).ok()?.to_string(),
            user,
            conn_info,
            chan_info,
        })
    }
}

/// Counters and gauges of the bridge, for /metrics and /healthz (plain
/// atomics: the engine reads them when it renders its pages).
#[derive(Debug, Default)]
pub struct BrokerMetrics {
    /// Redis shards whose two connections are up now (gauge); the broker
    /// is up when this equals the number of shards.
    pub shards_up: AtomicU64,
    /// Successful connections after the first one, per connection.
    pub reconnects: AtomicU64,
    /// Failed connection attempts.
    pub connect_errors: AtomicU64,
    /// Requests answered with an error (any [`BrokerError`]).
    pub request_errors: AtomicU64,
    /// Of which timeouts.
    pub timeouts: AtomicU64,
    /// Requests answered with a [`Reply`].
    pub requests_ok: AtomicU64,
    /// Requests queued or in flight now (gauge).
    pub inflight: AtomicU64,
    /// Envelopes received from Redis (own ones included).
    pub messages_in: AtomicU64,
    /// Of which delivered to at least one worker.
    pub messages_delivered: AtomicU64,
    /// Per-worker deliveries dropped because the worker's inbox was full
    /// (the worker is told the channel may have missed publications).
    pub inbox_dropped: AtomicU64,
    /// Payloads on our channels that are not envelopes (or, on
    /// `P.nodes`, node records).
    pub decode_errors: AtomicU64,
    /// Channels this node is subscribed to or subscribing (gauge).
    pub channels: AtomicU64,
    /// Other nodes heard on `P.nodes` within the expiry (gauge).
    pub nodes: AtomicU64,
    /// Channels whose SUBSCRIBE is sent but not yet confirmed (gauge):
    /// the subscription lag.
    pub subscribe_pending: AtomicU64,
    /// SUBSCRIBE / UNSUBSCRIBE commands sent (each up to `redis_batch`
    /// channels).
    pub subscribe_commands: AtomicU64,
    pub unsubscribe_commands: AtomicU64,
    /// Local publications the engine could not hand to the broker
    /// (refused at once, or failed later): they reached this node only.
    pub publish_errors: AtomicU64,
}

impl BrokerMetrics {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }

    pub(crate) fn inc(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presence_entries_round_trip_and_garbage_is_refused() {
        let e = PresenceEntry {
            client: "c1".into(),
            user: "alice".into(),
            conn_info: Some(b"{\"a\":1}".to_vec()),
            chan_info: None,
        };
        let v = e.encode_value();
        assert_eq!(PresenceEntry::decode(b"c1", &v), Some(e));
        for n in 0..v.len() {
            assert_eq!(PresenceEntry::decode(b"c1", &v[..n]), None);
        }
        assert_eq!(PresenceEntry::decode(b"c1", &[0, 0, 7]), None);
        let mut other = PresenceEntry::decode(b"c1", &v).unwrap();
        other.client = "c2".into();
        let third = PresenceEntry {
            client: "c3".into(),
            user: "bob".into(),
            conn_info: None,
            chan_info: None,
        };
        let all = [PresenceEntry::decode(b"c1", &v).unwrap(), other, third];
        assert_eq!(PresenceEntry::stats(&all), (3, 2));
    }

    #[test]
    fn history_covers_only_contiguous_positions_of_its_epoch() {
        let h = HistoryReply {
            top: 10,
            epoch: "e".into(),
            front: 6,
            publications: vec![],
        };
        assert!(h.covers(5, "e") && h.covers(10, "e"));
        assert!(!h.covers(4, "e"), "offset 5 was trimmed");
        assert!(!h.covers(5, "other"));
        assert!(!h.covers(11, "e"), "ahead of the stream");
    }
}
