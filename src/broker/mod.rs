//! The broker between nodes: with `broker = "redis"`, many wsrelay nodes
//! share channels, history and presence through Redis (docs/cluster.md).
//!
//! - [`envelope`]: the binary message one node publishes for the others;
//! - [`subscriptions`]: subscribe on demand with linger (sans-IO);
//! - [`scripts`]: the Lua scripts (publish with history, history read,
//!   presence with expiry);
//! - [`sequence`]: gap detection on live publications (sans-IO);
//! - [`bridge`]: the threads per Redis shard and each worker's
//!   [`BrokerPort`], the way workers talk to them (bounded queues + mio
//!   wakers, like [`crate::server::mesh`]): no worker ever blocks on Redis.
//!
//! Several Redis URLs shard channels by [`shard_of`] (jump consistent hash
//! of the channel name): every node must list the same URLs in the same
//! order.

pub mod bridge;
mod conn;
pub mod envelope;
pub mod scripts;
pub mod sequence;
pub mod subscriptions;
mod types;

pub use bridge::{Broker, BrokerEvent, BrokerPort};
pub use envelope::{Envelope, Kind, NodeId};
pub use sequence::{LiveSequence, Step};
pub use subscriptions::{SubCommand, Subscriptions};
pub use types::{BrokerError, BrokerMetrics, HistoryReply, PresenceEntry, Reply, Token};

use std::fmt;
use std::time::Duration;

use crate::config::Config;

/// One Redis server, parsed from a `redis_url` entry.
#[derive(Clone)]
pub struct RedisTarget {
    pub url: String,
    pub(crate) info: redis::ConnectionInfo,
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password.
        write!(f, "RedisTarget({:?})", self.info.addr())
    }
}

impl RedisTarget {
    /// `redis://[[user]:password@]host[:port][/db]` or
    /// `unix:///path[?db=N&pass=P]` (redis-rs' URL syntax); TLS
    /// (`rediss://`) is not supported by the bridge.
    pub fn parse(url: &str) -> Result<RedisTarget, String> {
        use redis::IntoConnectionInfo;
        if url.starts_with("rediss://") || url.starts_with("valkeys://") {
            return Err("TLS to Redis (rediss://) is not supported".to_string());
        }
        let info = url
            .into_connection_info()
            .map_err(|e| format!("not a Redis URL: {e}"))?;
        match info.addr() {
            redis::ConnectionAddr::Tcp(..) | redis::ConnectionAddr::Unix(_) => {}
            _ => return Err("only redis:// and unix:// URLs are supported".to_string()),
        }
        Ok(RedisTarget {
            url: url.to_string(),
            info,
        })
    }
}

/// Everything the bridge needs, from the configuration.
#[derive(Clone, Debug)]
pub struct BrokerSettings {
    pub targets: Vec<RedisTarget>,
    pub prefix: String,
    pub publish_timeout: Duration,
    pub connect_timeout: Duration,
    pub reconnect_max_delay: Duration,
    pub linger: Duration,
    pub outbox_len: usize,
    pub inbox_len: usize,
    pub batch: usize,
    pub presence_ttl: Duration,
    /// This process' identity (random per start).
    pub node: NodeId,
}

impl BrokerSettings {
    /// `None` with `broker = "memory"`.
    pub fn from_config(c: &Config) -> Result<Option<BrokerSettings>, String> {
        if c.broker != "redis" {
            return Ok(None);
        }
        let targets = c
            .redis_url
            .iter()
            .map(|u| RedisTarget::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(BrokerSettings {
            targets,
            prefix: c.redis_prefix.clone(),
            publish_timeout: c.redis_publish_timeout,
            connect_timeout: c.redis_connect_timeout,
            reconnect_max_delay: c.redis_reconnect_max_delay,
            linger: c.redis_subscribe_linger,
            outbox_len: c.redis_outbox_len,
            inbox_len: c.redis_inbox_len,
            batch: c.redis_batch,
            presence_ttl: c.presence_ttl,
            node: NodeId::random(),
        }))
    }

    /// Settings for one Redis URL, other values at their defaults.
    pub fn for_url(url: &str) -> Result<BrokerSettings, String> {
        let c = Config {
            broker: "redis".to_string(),
            redis_url: vec![url.to_string()],
            ..Config::default()
        };
        Ok(BrokerSettings::from_config(&c)?.expect("broker is redis"))
    }

    /// The Redis Pub/Sub channel of `channel`.
    pub fn pubsub_channel(&self, channel: &str) -> String {
        format!("{}.ch.{channel}", self.prefix)
    }

    pub(crate) fn key(&self, kind: &str, channel: &str) -> String {
        format!("{}.{kind}.{channel}", self.prefix)
    }
}

/// FNV-1a, 64 bits: a hash every node computes the same (unlike std's
/// `DefaultHasher`, whose algorithm may change between Rust versions).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// Jump consistent hash (Lamping & Veach, 2014): `key` to a bucket in
/// `0..buckets`; growing from n to n+1 buckets moves only 1/(n+1) keys.
pub fn jump_hash(mut key: u64, buckets: usize) -> usize {
    let buckets = buckets.max(1) as i64;
    let (mut b, mut j): (i64, i64) = (-1, 0);
    while j < buckets {
        b = j;
        key = key.wrapping_mul(2_862_933_555_777_941_757).wrapping_add(1);
        j = ((b + 1) as f64 * ((1u64 << 31) as f64 / ((key >> 33) + 1) as f64)) as i64;
    }
    b as usize
}

/// The Redis shard (index into `redis_url`) that owns `channel`.
pub fn shard_of(channel: &str, shards: usize) -> usize {
    if shards <= 1 {
        return 0;
    }
    jump_hash(fnv1a(channel.as_bytes()), shards)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_or_say_why() {
        let t = RedisTarget::parse("redis://:pw@10.0.0.1:6380/3").unwrap();
        assert_eq!(t.info.redis_settings().db(), 3);
        assert_eq!(t.info.redis_settings().password(), Some("pw"));
        assert!(!format!("{t:?}").contains("pw"), "password never printed");
        let u = RedisTarget::parse("unix:///tmp/r.sock?db=2").unwrap();
        assert_eq!(u.info.redis_settings().db(), 2);
        assert!(matches!(u.info.addr(), redis::ConnectionAddr::Unix(_)));
        assert!(RedisTarget::parse("rediss://h:1").is_err());
        assert!(RedisTarget::parse("http://h:1").is_err());
        assert!(RedisTarget::parse("nonsense").is_err());
    }

    #[test]
    fn sharding_is_stable_balanced_and_consistent() {
        // Fixed values: every node and every build must agree.
        assert_eq!(shard_of("news", 1), 0);
        let names: Vec<String> = (0..10_000).map(|i| format!("ch{i}")).collect();
        let mut counts = [0usize; 4];
        for n in &names {
            counts[shard_of(n, 4)] += 1;
        }
        for c in counts {
            assert!((2_000..3_000).contains(&c), "unbalanced: {counts:?}");
        }
        // 4 -> 5 shards moves about a fifth of the channels, all to shard 4.
        let moved: Vec<&String> = names
            .iter()
            .filter(|n| shard_of(n, 4) != shard_of(n, 5))
            .collect();
        assert!((1_500..2_500).contains(&moved.len()), "{}", moved.len());
        assert!(moved.iter().all(|n| shard_of(n, 5) == 4));
        // Pinned values: a change of algorithm would move channels.
        assert_eq!(jump_hash(0, 1), 0);
        assert_eq!(jump_hash(1, 100), 55);
        assert_eq!(jump_hash(0xdead_beef, 1000), jump_hash(0xdead_beef, 1000));
    }

    #[test]
    fn settings_come_from_the_config() {
        assert!(BrokerSettings::from_config(&Config::default())
            .unwrap()
            .is_none());
        let s = BrokerSettings::for_url("redis://127.0.0.1:1/0").unwrap();
        assert_eq!(s.pubsub_channel("a:b"), "wsrelay.ch.a:b");
        assert_eq!(s.key("meta", "x"), "wsrelay.meta.x");
    }
}
