//! The broker between nodes: with `broker = "redis"`, many wsrelay nodes
//! share channels, history and presence through Redis (docs/cluster.md).
//!
//! - [`envelope`]: the binary message one node publishes for the others;
//! - [`subscriptions`]: subscribe on demand with linger (sans-IO);
//! - [`scripts`]: the Lua scripts (publish with history, history read,
//!   presence with expiry);
//! - [`sequence`]: gap detection on live publications (sans-IO);
//! - [`nodes`]: the record each node publishes about itself and the
//!   registry of the others' (cluster-wide `info` and `channels`);
//! - [`bridge`]: the threads per Redis shard and each worker's
//!   [`BrokerPort`], the way workers talk to them (bounded queues + mio
//!   wakers, like [`crate::server::mesh`]): no worker ever blocks on Redis.
//!
//! Several Redis URLs shard channels by [`shard_of`] (jump consistent hash
//! of the channel name): every node must list the same URLs in the same
//! order. `rediss://` URLs connect over TLS ([`tls`]).

pub mod bridge;
mod conn;
pub mod envelope;
pub mod nodes;
mod reader;
pub mod scripts;
pub mod sequence;
pub mod subscriptions;
mod tls;
mod types;

pub use bridge::{Broker, BrokerEvent, BrokerPort};
pub use envelope::{Envelope, Kind, NodeId};
pub use nodes::{NodeRecord, NodeRegistry};
pub use sequence::{LiveSequence, Step};
pub use subscriptions::{SubCommand, Subscriptions};
pub use types::{BrokerError, BrokerMetrics, HistoryReply, PresenceEntry, Reply, Token};

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Config;

/// Descriptors the bridge holds per Redis shard (`redis_url` entry), for
/// the open-files reserve: two connections (subscriber, command), each
/// one socket cloned twice (the writer's, the reader thread's, the clone
/// kept to unblock that reader at shutdown), plus one per connection for
/// a reader thread still letting go of the previous socket while a
/// reconnect opens the next.
pub const DESCRIPTORS_PER_SHARD: u64 = 2 * (3 + 1);

/// The descriptors `config`'s broker needs (0 with `broker = "memory"`).
pub fn descriptors(config: &Config) -> u64 {
    if config.broker == "redis" {
        config.redis_url.len() as u64 * DESCRIPTORS_PER_SHARD
    } else {
        0
    }
}

/// Whether `url` asks for TLS (`rediss://`, `valkeys://`).
pub fn is_tls_url(url: &str) -> bool {
    let scheme = url.split("://").next().unwrap_or("");
    scheme.eq_ignore_ascii_case("rediss") || scheme.eq_ignore_ascii_case("valkeys")
}

/// One Redis server, parsed from a `redis_url` entry.
#[derive(Clone)]
pub struct RedisTarget {
    pub url: String,
    pub(crate) info: redis::ConnectionInfo,
    /// `rediss://`: TLS, and to what.
    pub(crate) tls: Option<TlsTarget>,
}

/// TLS to one Redis server.
#[derive(Clone, Debug)]
pub(crate) struct TlsTarget {
    /// The URL host: the name (or IP address) the certificate must carry.
    pub name: rustls::pki_types::ServerName<'static>,
    /// From `redis_tls_*`, set by [`BrokerSettings::from_config`] (a
    /// URL alone is checked without reading files).
    pub config: Option<Arc<rustls::ClientConfig>>,
}

impl fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the password.
        let tls = if self.tls.is_some() { ", TLS" } else { "" };
        write!(f, "RedisTarget({:?}{tls})", self.info.addr())
    }
}

impl RedisTarget {
    /// `redis://[[user]:password@]host[:port][/db]`,
    /// `rediss://...` (TLS; `valkey://`, `valkeys://` alike) or
    /// `unix:///path[?db=N&pass=P]` (redis-rs' URL syntax).
    pub fn parse(url: &str) -> Result<RedisTarget, String> {
        use redis::IntoConnectionInfo;
        let tls = is_tls_url(url);
        // redis-rs parses rediss:// only with its own TLS features (which
        // we do not use): parse the same URL as redis://, TLS is ours.
        let plain = if tls {
            if url.contains('#') {
                return Err("certificate checks cannot be turned off (#insecure or any fragment); trust the server's CA with redis_tls_ca".to_string());
            }
            let rest = &url[url.find("://").map_or(0, |i| i + 3)..];
            format!("redis://{rest}")
        } else {
            url.to_string()
        };
        let info = plain
            .as_str()
            .into_connection_info()
            .map_err(|e| format!("not a Redis URL: {e}"))?;
        let tls = match (info.addr(), tls) {
            (redis::ConnectionAddr::Tcp(host, _), true) => Some(TlsTarget {
                name: tls::server_name(host)?,
                config: None,
            }),
            (redis::ConnectionAddr::Tcp(..) | redis::ConnectionAddr::Unix(_), false) => None,
            _ => return Err("only redis://, rediss:// and unix:// URLs are supported".to_string()),
        };
        Ok(RedisTarget {
            url: url.to_string(),
            info,
            tls,
        })
    }

    /// Whether this server is reached over TLS.
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
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
    /// How often this node publishes its [`NodeRecord`].
    pub node_info_interval: Duration,
    /// Most channels a [`NodeRecord`] carries (sent and kept).
    pub node_channels_max: usize,
    /// This process' identity (random per start).
    pub node: NodeId,
}

impl BrokerSettings {
    /// `None` with `broker = "memory"`.
    pub fn from_config(c: &Config) -> Result<Option<BrokerSettings>, String> {
        if c.broker != "redis" {
            return Ok(None);
        }
        let mut targets = c
            .redis_url
            .iter()
            .map(|u| RedisTarget::parse(u))
            .collect::<Result<Vec<_>, _>>()?;
        if targets.iter().any(RedisTarget::is_tls) {
            // Read (and checked) once, at start: a bad file refuses start.
            let config = tls::client_config(&c.redis_tls_ca, &c.redis_tls_cert, &c.redis_tls_key)?;
            for t in &mut targets {
                if let Some(tls) = &mut t.tls {
                    tls.config = Some(config.clone());
                }
            }
        }
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
            node_info_interval: c.redis_node_info_interval,
            node_channels_max: c.redis_node_channels_max,
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

    /// The control Pub/Sub channel of node records (on shard 0).
    pub fn nodes_channel(&self) -> String {
        format!("{}.nodes", self.prefix)
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
        assert!(!u.is_tls() && !t.is_tls());
        assert!(RedisTarget::parse("http://h:1").is_err());
        assert!(RedisTarget::parse("nonsense").is_err());
    }

    #[test]
    fn tls_urls_parse_with_their_server_name() {
        use rustls::pki_types::ServerName;
        let t = RedisTarget::parse("rediss://:pw@redis.example:6380/4").unwrap();
        assert!(t.is_tls());
        assert_eq!(t.info.redis_settings().db(), 4);
        assert_eq!(t.info.redis_settings().password(), Some("pw"));
        assert!(
            matches!(t.info.addr(), redis::ConnectionAddr::Tcp(h, 6380) if h == "redis.example")
        );
        let name = &t.tls.as_ref().unwrap().name;
        assert_eq!(name, &ServerName::try_from("redis.example").unwrap());
        let s = format!("{t:?}");
        assert!(s.contains("TLS") && !s.contains("pw"), "{s}");
        // IP literals (v4, v6) become IP server names.
        for (url, ip) in [
            ("valkeys://10.0.0.7:6379", "10.0.0.7"),
            ("rediss://[::1]:6379/0", "::1"),
        ] {
            let t = RedisTarget::parse(url).unwrap();
            let name = &t.tls.as_ref().unwrap().name;
            assert!(matches!(name, ServerName::IpAddress(_)), "{url}: {name:?}");
            assert_eq!(name, &ServerName::try_from(ip).unwrap());
        }
        assert!(is_tls_url("REDISS://h") && !is_tls_url("redis://h") && !is_tls_url("unix:///r"));
        let e = RedisTarget::parse("rediss://h:1/#insecure").unwrap_err();
        assert!(e.contains("cannot be turned off"), "{e}");
        assert!(RedisTarget::parse("rediss://:1").is_err());
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
        assert!(s.targets[0].tls.is_none());
        // TLS files are read at start: a missing CA refuses start, and
        // every TLS target gets the configuration (plain ones none).
        let c = Config {
            broker: "redis".to_string(),
            redis_url: vec![
                "rediss://127.0.0.1:1/0".to_string(),
                "redis://127.0.0.1:2/0".to_string(),
            ],
            redis_tls_ca: "/nonexistent/ca.pem".to_string(),
            ..Config::default()
        };
        let e = BrokerSettings::from_config(&c).unwrap_err();
        assert!(e.starts_with("redis_tls_ca \"/nonexistent/ca.pem\""), "{e}");
        let dir = std::env::temp_dir().join(format!("wsrelay-broker-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ca = dir.join("ca.pem");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
        std::fs::write(&ca, cert.cert.pem()).unwrap();
        let c = Config {
            redis_tls_ca: ca.to_str().unwrap().to_string(),
            ..c
        };
        let s = BrokerSettings::from_config(&c).unwrap().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(s.targets[0].tls.as_ref().unwrap().config.is_some());
        assert!(s.targets[1].tls.is_none());
    }

    #[test]
    fn the_open_files_reserve_counts_broker_connections() {
        let memory = Config::default();
        assert_eq!(descriptors(&memory), 0, "no broker, no descriptors");
        let c = Config {
            broker: "redis".to_string(),
            redis_url: vec!["redis://a:1".to_string(), "rediss://b:1".to_string()],
            ..Config::default()
        };
        // Two connections per shard, three descriptors each (tests/broker
        // counts them on a live bridge) and one spare each for a reconnect.
        assert_eq!(DESCRIPTORS_PER_SHARD, 8);
        assert_eq!(descriptors(&c), 16);
        let base = crate::server::nofile_overhead(4, true, 0);
        assert_eq!(
            crate::server::nofile_overhead(4, true, descriptors(&c)),
            base + 16
        );
        // And it is what decides the warning at the limit.
        let need = 1000 + base + 16;
        assert!(crate::logs::nofile_warning(need, need, 1000, base + 16).is_none());
        assert!(crate::logs::nofile_warning(need - 1, need, 1000, base + 16).is_some());
    }
}
