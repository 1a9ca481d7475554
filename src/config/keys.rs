//! The one table of configuration keys. Each key is declared once, with its
//! Rust type, value kind, default, range and help; the `Config` struct, its
//! `Default`, the TOML reader, the flags, the `WSRELAY_*` variables,
//! `--print-config` and the docs table are all generated from it.

use ipnet::IpNet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use toml::Value;

use super::namespaces::{Namespace, Namespaces};
use super::values::{
    Addr, Check, Cidrs, Count, Dur, Flag, Kind, Level, List, OptAddr, Policy, Size, Text,
};
use super::PUBLIC_ROUTE_GROUPS;
use super::{ConfigError, RateLimitPolicy, SlowConsumerPolicy, LOG_FORMATS, LOG_LEVELS};
use super::{MAX_ROOM_NAME_LIMIT, MAX_WORKERS};

const KIB: usize = 1 << 10;
const MIB: usize = 1 << 20;
/// Upper bound of byte sizes: far above any sane frame, buffer or queue,
/// and small enough that sums such as head + message + chunk cannot overflow.
const GIB: usize = 1 << 30;
/// Upper bound of counts of connections and rooms.
const TEN_MILLION: usize = 10_000_000;
const fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}
/// Upper bound of durations: keeps `now + timeout` far from overflow in the
/// engine's millisecond clock.
const DAY: Duration = Duration::from_secs(86_400);

/// One key as data, for help text and the docs table.
pub(crate) struct KeyInfo {
    pub name: &'static str,
    pub help: &'static str,
    #[cfg_attr(not(test), allow(dead_code))] // read by the docs table (tests)
    pub type_name: &'static str,
    pub value_name: &'static str,
    pub switch: bool,
    pub default: String,
    pub range: String,
}

macro_rules! config_keys {
    ($( $name:ident : $ty:ty as $kind:ty = $default:expr, $check:expr, $help:literal; )*) => {
        /// Effective relay configuration. All fields are public; build one
        /// with [`Config::default`], [`Config::from_toml_str`] or
        /// [`parse_args`](super::parse_args), then call [`Config::validate`].
        /// Each field's text is its one-line help (docs/configuration.md
        /// has the ranges and the longer notes).
        #[derive(Clone, Debug, PartialEq, Eq)]
        pub struct Config {
            $( #[doc = $help] pub $name: $ty, )*
        }

        impl Default for Config {
            fn default() -> Config {
                Config { $( $name: $default, )* }
            }
        }

        /// Every key, in table (file and print) order.
        pub(crate) const KEY_NAMES: &[&str] = &[$( stringify!($name) ),*];

        pub(crate) fn key_infos() -> Vec<KeyInfo> {
            let d = Config::default();
            vec![$(
                KeyInfo {
                    name: stringify!($name),
                    help: $help,
                    type_name: <$kind as Kind>::TYPE,
                    value_name: <$kind as Kind>::VALUE_NAME,
                    switch: <$kind as Kind>::SWITCH,
                    default: <$kind as Kind>::show(&d.$name),
                    range: {
                        let c: Check<$ty> = $check;
                        c.describe(<$kind as Kind>::show, <$kind as Kind>::CHOICES)
                    },
                },
            )*]
        }

        impl Config {
            /// Sets one key from a TOML value; `None` = unknown key.
            pub(crate) fn set_toml(&mut self, key: &str, v: &Value) -> Option<Result<(), String>> {
                match key {
                    $( stringify!($name) => Some(<$kind as Kind>::from_toml(v).map(|x| self.$name = x)), )*
                    _ => None,
                }
            }

            /// Sets one key from flag or environment text; `None` = unknown key.
            pub(crate) fn set_text(&mut self, key: &str, s: &str) -> Option<Result<(), String>> {
                match key {
                    $( stringify!($name) => Some(<$kind as Kind>::parse(s).map(|x| self.$name = x)), )*
                    _ => None,
                }
            }

            /// Key/value pairs in table order, in canonical TOML form.
            pub(crate) fn entries(&self) -> Vec<(&'static str, Value)> {
                vec![$( (stringify!($name), <$kind as Kind>::to_toml(&self.$name)), )*]
            }

            /// The per-key range checks, in table order.
            pub(crate) fn check_keys(&self) -> Result<(), ConfigError> {
                $({
                    let c: Check<$ty> = $check;
                    c.check(&self.$name, <$kind as Kind>::show)
                        .map_err(|m| ConfigError::key(stringify!($name), m))?;
                })*
                Ok(())
            }
        }
    };
}

use Check::{Any, OffOr, Range, Rule};

config_keys! {
    listen: SocketAddr as Addr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9001), Any,
        "Address every worker binds (each worker has its own SO_REUSEPORT listener)";
    workers: usize as Count<usize> = 0, Range(0, MAX_WORKERS),
        "Worker event loops; 0 = one per CPU core";
    pin_cores: bool as Flag = false, Any,
        "Pin each worker thread to its own core";
    max_connections: usize as Count<usize> = 100_000, Range(1, TEN_MILLION),
        "Max open connections, counted from accept (HTTP and WebSocket); beyond -> 503 and close";
    max_connections_per_ip: usize as Count<usize> = 0, Range(0, TEN_MILLION),
        "Max open connections per client IP, counted from accept (IPv6: per ipv6_prefix_len prefix); 0 = unlimited; beyond -> 429 and close";
    ipv6_prefix_len: u8 as Count<u8> = 64, Range(1, 128),
        "Per-IP limits group IPv6 clients by this prefix length (64 = one /64 per client)";
    trusted_proxies: Vec<IpNet> as Cidrs = Vec::new(), Any,
        "Proxies (CIDRs, comma-separated) whose X-Forwarded-For / Forwarded / PROXY header names the client; empty = trust none";
    proxy_protocol: bool as Flag = false, Any,
        "Every connection must start with a PROXY protocol v1 or v2 header, from a trusted_proxies address; otherwise it is refused";
    proxy_header_timeout: Duration as Dur = Duration::from_secs(5), Range(ms(1), DAY),
        "Time a connection has to send its PROXY header (proxy_protocol); then it is closed";
    max_request_head_bytes: usize as Size = 8 * KIB, Range(1, MIB),
        "Max HTTP request head size; beyond -> 431";
    max_request_headers: usize as Count<usize> = 64, Range(1, 1024),
        "Max number of request headers; beyond -> 431";
    max_frame_bytes: usize as Size = MIB, Range(1, GIB),
        "Max frame payload; beyond -> close 1009";
    max_message_bytes: usize as Size = MIB, Range(1, GIB),
        "Max message size; beyond -> close 1009 (POST /publish body -> 413)";
    max_outbound_bytes: usize as Size = MIB, Range(1, GIB),
        "Memory a connection's outbound queue may hold (buffers + entries); an empty queue always takes one message; beyond -> slow_consumer policy";
    compression: bool as Flag = false, Any,
        "permessage-deflate (RFC 7692) for clients that offer it: on or off";
    compression_level: u32 as Count<u32> = 1, Range(1, 9),
        "Deflate level for outgoing messages (1 = fastest, 9 = smallest)";
    compression_min_bytes: usize as Size = 64, Range(0, GIB),
        "Outgoing messages shorter than this are sent uncompressed";
    slow_consumer: SlowConsumerPolicy as Policy<SlowConsumerPolicy> = SlowConsumerPolicy::Close, Any,
        "When the outbound queue is full: close the connection, or drop the message for it";
    fanout_queue_len: usize as Count<usize> = 4096, Range(1, 1 << 20),
        "Capacity (messages) of each cross-worker fan-out channel";
    read_buffer_bytes: usize as Size = 64 * KIB, Range(1, GIB),
        "Size of pooled read buffers";
    read_budget_bytes: usize as Size = 256 * KIB, Range(1, GIB),
        "Max bytes read from one connection per wake-up (fairness)";
    buffer_pool_size: usize as Count<usize> = 1024, Range(0, 1 << 20),
        "Max idle buffers kept per worker";
    send_buffer_bytes: usize as Size = 0, Range(0, GIB),
        "SO_SNDBUF per connection; 0 = kernel autotuning";
    handshake_timeout: Duration as Dur = Duration::from_secs(10), Range(ms(1), DAY),
        "Time allowed to send a complete request (head and body); also the keep-alive idle time";
    close_timeout: Duration as Dur = Duration::from_secs(5), Range(Duration::ZERO, DAY),
        "Time to wait for the peer's close frame before dropping the TCP connection";
    ping_interval: Duration as Dur = Duration::from_secs(30), OffOr(ms(100), DAY),
        "Heartbeat ping interval (idle time before a ping); 0 = heartbeats off";
    pong_timeout: Duration as Dur = Duration::from_secs(10), OffOr(ms(1), DAY),
        "Time to wait for a pong before closing; must be > 0 while heartbeats are on";
    shutdown_timeout: Duration as Dur = Duration::from_secs(5), Range(Duration::ZERO, DAY),
        "Graceful shutdown: time connections get to close";
    stats_interval: Duration as Dur = Duration::from_secs(10), OffOr(ms(100), DAY),
        "Interval between stats log lines; 0 = off";
    echo_self: bool as Flag = false, Any,
        "Deliver a client's own messages back to it";
    subprotocols: Vec<String> as List = Vec::new(), Rule(check_subprotocols, "RFC 6455 tokens, no duplicates"),
        "Supported subprotocols, server preference order (comma-separated)";
    allowed_origins: Vec<String> as List = Vec::new(), Rule(check_origins, "origins such as `https://example.com`"),
        "Allowed Origin values (comma-separated); empty = any origin";
    max_rooms: usize as Count<usize> = 100_000, Range(1, TEN_MILLION),
        "Max number of rooms";
    max_room_name_bytes: usize as Size = 128, Range(1, MAX_ROOM_NAME_LIMIT),
        "Max room name length in bytes";
    rate_limit_messages: u32 as Count<u32> = 0, Range(0, 10_000_000),
        "Messages per second per connection; 0 = off";
    rate_limit_burst: u32 as Count<u32> = 0, Range(0, 10_000_000),
        "Message burst allowance; 0 = same as rate_limit_messages";
    rate_limit_bytes: usize as Size = 0, Range(0, GIB),
        "Bytes per second per connection (also the byte burst); 0 = off";
    rate_limit_policy: RateLimitPolicy as Policy<RateLimitPolicy> = RateLimitPolicy::Close, Any,
        "When a rate limit is exceeded: close the connection, or drop the excess messages";
    publish_token: String as Text = String::new(), Rule(check_token, "no control characters, no surrounding spaces"),
        "Bearer token for POST /publish; empty = endpoint disabled (404)";
    metrics: bool as Flag = true, Any,
        "Serve GET /metrics";
    admin_listen: Option<SocketAddr> as OptAddr = None, Any,
        "Private admin listener (e.g. 127.0.0.1:9002) for /metrics, /healthz, /readyz, POST /publish and the server API; never WebSockets; empty = one listener serves everything";
    tls_listen: Option<SocketAddr> as OptAddr = None, Any,
        "TLS listener (wss://, e.g. 0.0.0.0:443) beside `listen`, serving the same routes; needs tls_cert and tls_key; empty = no TLS";
    tls_cert: String as Text = String::new(), Any,
        "With tls_listen: path of the PEM certificate chain (leaf first, then intermediates)";
    tls_key: String as Text = String::new(), Any,
        "With tls_listen: path of the PEM private key of tls_cert (RSA, ECDSA or Ed25519; PKCS#8, PKCS#1 or SEC1)";
    public_routes: Vec<String> as List = Vec::new(), Rule(check_public_routes, "any of `health`, `metrics`, `publish`, `api`"),
        "With admin_listen: HTTP routes the public listener keeps besides the WebSocket routes (comma-separated); the others answer 404 there";
    log_level: String as Level = "info".to_string(), Rule(check_log_level, "`error`, `warn`, `info`, `debug`, `trace`"),
        "Log level; the RUST_LOG variable, when set, overrides it";
    log_format: String as Text = "text".to_string(), Rule(check_log_format, "`text`, `json`"),
        "Log line format: `text` (human) or `json` (one object per line: ts, level, target, msg)";
    token_hmac_secret_key: String as Text = String::new(), Rule(check_token, "no control characters, no surrounding spaces"),
        "Pub/sub: HMAC secret of HS256/384/512 connection and subscription tokens (Centrifugo key); empty = HMAC tokens refused";
    token_rsa_public_key: String as Text = String::new(), Any,
        "Pub/sub: RSA public key for RS256/384/512 tokens: PEM text, or the path of a PEM file";
    token_ecdsa_public_key: String as Text = String::new(), Any,
        "Pub/sub: ECDSA public key for ES256/384 tokens: PEM text, or the path of a PEM file";
    token_audience: String as Text = String::new(), Any,
        "Pub/sub: when set, tokens must carry this `aud`";
    token_issuer: String as Text = String::new(), Any,
        "Pub/sub: when set, tokens must carry this `iss`";
    allow_anonymous_connect_without_token: bool as Flag = false, Any,
        "Pub/sub: a connect without a token gets an anonymous connection (empty user) instead of disconnect 3501";
    disallow_anonymous_connection_tokens: bool as Flag = false, Any,
        "Pub/sub: refuse connection tokens with an empty `sub` (disconnect 3507)";
    client_channel_limit: usize as Count<usize> = 128, Range(1, 100_000),
        "Pub/sub: max subscriptions per connection; beyond -> error 106 (limit exceeded)";
    client_stale_close_delay: Duration as Dur = Duration::from_secs(10), Range(ms(1), DAY),
        "Pub/sub: time a protocol connection has to send `connect`; then disconnect 3502 (stale)";
    client_expired_close_delay: Duration as Dur = Duration::from_secs(25), Range(Duration::ZERO, DAY),
        "Pub/sub: time after a connection token's expiry to refresh it before disconnect 3005";
    client_expired_sub_close_delay: Duration as Dur = Duration::from_secs(25), Range(Duration::ZERO, DAY),
        "Pub/sub: time after a subscription token's expiry to refresh it before unsubscribe 2501";
    history_max_bytes: usize as Size = 256 * MIB, Range(0, 64 * GIB),
        "Pub/sub: memory all channel histories may hold; beyond, the oldest publications are evicted; 0 = unbounded";
    presence_max_clients: usize as Count<usize> = 1_000_000, Range(1, TEN_MILLION),
        "Pub/sub: max presence entries in total (each channel with presence: at most one per subscriber)";
    api_key: String as Text = String::new(), Rule(check_token, "no control characters, no surrounding spaces"),
        "Pub/sub: key of the server API (`POST /api/<method>`, `X-API-Key` or `Authorization: apikey`); empty = API off (404)";
    max_api_body_bytes: usize as Size = MIB + 64 * KIB, Range(1, 2 * GIB),
        "Pub/sub: max server API request body; beyond -> 413 (room for one max_message_bytes publication plus its envelope)";
    demo: bool as Flag = false, Any,
        "Serve the demo chat at /demo and its namespace `demo:` (/demo/token mints a connection token for any user name: never on a public server)";
    history_size: usize as Count<usize> = 0, Range(0, 1_000_000),
        "Channel option (no namespace): publications kept per channel; 0 = no history";
    history_ttl: Duration as Dur = Duration::ZERO, Range(Duration::ZERO, DAY * 365),
        "Channel option (no namespace): how long a channel's history lives after its last publication; required with history_size";
    force_recovery: bool as Flag = false, Any,
        "Channel option (no namespace): subscriptions are recoverable even if the client did not ask";
    force_positioning: bool as Flag = false, Any,
        "Channel option (no namespace): subscriptions are positioned (offset/epoch tracked) even if the client did not ask";
    presence: bool as Flag = false, Any,
        "Channel option (no namespace): keep presence (who is subscribed)";
    join_leave: bool as Flag = false, Any,
        "Channel option (no namespace): send join/leave pushes to subscribers";
    allow_subscribe_for_client: bool as Flag = false, Any,
        "Channel option (no namespace): authenticated clients may subscribe without a subscription token";
    allow_subscribe_for_anonymous: bool as Flag = false, Any,
        "Channel option (no namespace): anonymous clients may subscribe without a subscription token";
    allow_publish_for_subscriber: bool as Flag = false, Any,
        "Channel option (no namespace): subscribers may publish";
    allow_publish_for_client: bool as Flag = false, Any,
        "Channel option (no namespace): any client may publish, subscribed or not";
    allow_publish_for_anonymous: bool as Flag = false, Any,
        "Channel option (no namespace): anonymous clients may publish where publishing is allowed";
    allow_history_for_subscriber: bool as Flag = false, Any,
        "Channel option (no namespace): subscribers may read history";
    allow_history_for_client: bool as Flag = false, Any,
        "Channel option (no namespace): any client may read history";
    allow_presence_for_subscriber: bool as Flag = false, Any,
        "Channel option (no namespace): subscribers may read presence";
    allow_presence_for_client: bool as Flag = false, Any,
        "Channel option (no namespace): any client may read presence";
    allow_user_limited_channels: bool as Flag = false, Any,
        "Channel option (no namespace): `#` user-limited channels (`dialog#alice,bob`) may be subscribed by the users listed";
    namespaces: Vec<Namespace> as Namespaces = Vec::new(), Any,
        "Channel namespaces (`name:` prefix): a list of tables, each `name` plus any channel option key above";
    broker: String as Text = "memory".to_string(), Rule(check_broker, "`memory`, `redis`"),
        "Broker between nodes: `memory` (one node, nothing else to run) or `redis` (many nodes share rooms and channels, with their history, recovery and presence, through redis_url; docs/cluster.md)";
    redis_url: Vec<String> as List = vec!["redis://127.0.0.1:6379/0".to_string()], Rule(check_redis_urls, "`redis://[user:password@]host:port/db`, `rediss://...` (TLS) or `unix:///path?db=N` URLs, no duplicates"),
        "With broker = redis: Redis URLs (comma-separated); `rediss://` (or `valkeys://`) = TLS, see redis_tls_ca; several = channels sharded over them by jump consistent hash of the channel name (same list, same order on every node)";
    redis_prefix: String as Text = "wsrelay".to_string(), Rule(check_redis_prefix, "1-64 bytes, no spaces or control characters"),
        "With broker = redis: prefix of every Redis key and Pub/Sub channel wsrelay uses (several clusters can share one Redis)";
    redis_publish_timeout: Duration as Dur = ms(300), Range(ms(1), Duration::from_secs(60)),
        "With broker = redis: a publish (or history/presence call) not answered within this fails with `broker unavailable`; Redis down or the outbox full fails at once";
    redis_connect_timeout: Duration as Dur = Duration::from_secs(1), Range(ms(1), Duration::from_secs(60)),
        "With broker = redis: time allowed to connect, finish the TLS handshake and authenticate to Redis";
    redis_tls_ca: String as Text = String::new(), Any,
        "With rediss:// (or valkeys://) URLs: path of the PEM file of the CA certificate(s) that signed the Redis servers' certificates (required: the system's store is not used); the URL host must be named in the certificate";
    redis_tls_cert: String as Text = String::new(), Any,
        "With rediss:// URLs and Redis requiring client certificates (tls-auth-clients yes): path of this node's PEM certificate chain; needs redis_tls_key; empty = no client certificate";
    redis_tls_key: String as Text = String::new(), Any,
        "With redis_tls_cert: path of the PEM private key of redis_tls_cert (RSA, ECDSA or Ed25519; PKCS#8, PKCS#1 or SEC1)";
    redis_reconnect_max_delay: Duration as Dur = Duration::from_secs(2), Range(ms(1), Duration::from_secs(600)),
        "With broker = redis: reconnect backoff doubles from 50ms up to this";
    redis_subscribe_linger: Duration as Dur = Duration::from_secs(5), Range(Duration::ZERO, DAY),
        "With broker = redis: a node stays subscribed to a channel this long after its last local subscriber left (churn does not thrash Redis)";
    redis_outbox_len: usize as Count<usize> = 8192, Range(1, 1 << 20),
        "With broker = redis: requests (publishes, history, presence) queued or in flight per Redis shard; beyond, requests fail at once";
    redis_inbox_len: usize as Count<usize> = 16_384, Range(1, 1 << 20),
        "With broker = redis: capacity (events) of each worker's queue from the broker; a full queue drops the message for that worker and tells it the channel may have missed publications";
    redis_batch: usize as Count<usize> = 512, Range(1, 1 << 16),
        "With broker = redis: max channels per SUBSCRIBE/UNSUBSCRIBE command and commands per pipelined write";
    redis_node_info_interval: Duration as Dur = Duration::from_secs(3), Range(ms(10), Duration::from_secs(600)),
        "With broker = redis: every node publishes its figures and channels (server API `info`, `channels`) this often; a node silent for 3 intervals is gone (same value on every node)";
    redis_node_channels_max: usize as Count<usize> = 10_000, Range(0, 1 << 20),
        "With broker = redis: most channels (those with the most subscribers) a node publishes for the server API `channels` of the others; beyond, `channels` is incomplete for that node";
    presence_ttl: Duration as Dur = Duration::from_secs(60), Range(Duration::from_secs(1), DAY),
        "With broker = redis: presence entries not refreshed within this expire (a node that dies leaves no ghosts); nodes refresh at a third of it";
}

/// RFC 7230 `tchar`, the alphabet of a subprotocol token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[allow(clippy::ptr_arg)] // Check::Rule takes fn(&T), T being the field type
fn check_subprotocols(list: &Vec<String>) -> Result<(), String> {
    for (i, p) in list.iter().enumerate() {
        if p.is_empty() || !p.bytes().all(is_tchar) {
            return Err(format!(
                "{p:?} is not a valid subprotocol token (RFC 6455 §4.1)"
            ));
        }
        if list[..i].contains(p) {
            return Err(format!("{p:?} is listed twice"));
        }
    }
    Ok(())
}

#[allow(clippy::ptr_arg)] // Check::Rule takes fn(&T), T being the field type
fn check_origins(list: &Vec<String>) -> Result<(), String> {
    for o in list {
        if o.is_empty()
            || o.chars()
                .any(|c| c.is_whitespace() || c.is_control() || c == ',')
        {
            return Err(format!(
                "{o:?} is not a valid origin (expected e.g. \"https://example.com\")"
            ));
        }
    }
    Ok(())
}

/// Header values are trimmed and cannot carry control characters, so such
/// a token could never match and would silently disable publishing.
#[allow(clippy::ptr_arg)] // Check::Rule takes fn(&T), T being the field type
fn check_token(token: &String) -> Result<(), String> {
    if token.chars().any(char::is_control) || token.trim() != token {
        return Err(
            "must not contain control characters or leading/trailing whitespace".to_string(),
        );
    }
    Ok(())
}

#[allow(clippy::ptr_arg)] // Check::Rule takes fn(&T), T being the field type
fn check_public_routes(list: &Vec<String>) -> Result<(), String> {
    for (i, r) in list.iter().enumerate() {
        if !PUBLIC_ROUTE_GROUPS.contains(&r.as_str()) {
            return Err(format!(
                "unknown route group {r:?} (expected any of {}; WebSocket routes always stay public)",
                PUBLIC_ROUTE_GROUPS.join(", ")
            ));
        }
        if list[..i].contains(r) {
            return Err(format!("{r:?} is listed twice"));
        }
    }
    Ok(())
}

#[allow(clippy::ptr_arg)] // Check::Rule takes fn(&T), T being the field type
fn check_log_format(format: &String) -> Result<(), String> {
    if LOG_FORMATS.contains(&format.as_str()) {
        Ok(())
    } else {
        Err(format!(
            "invalid log format {format:?} (expected one of {})",
            LOG_FORMATS.join(", ")
        ))
    }
}

#[allow(clippy::ptr_arg)] // Check::Rule takes fn(&T), T being the field type
fn check_log_level(level: &String) -> Result<(), String> {
    if LOG_LEVELS.contains(&level.as_str()) {
        Ok(())
    } else {
        Err(format!(
            "invalid level {level:?} (expected one of {})",
            LOG_LEVELS.join(", ")
        ))
    }
}

#[allow(clippy::ptr_arg)] // Check::Rule takes fn(&T), T being the field type
fn check_broker(b: &String) -> Result<(), String> {
    match b.as_str() {
        "memory" | "redis" => Ok(()),
        _ => Err(format!("unknown broker {b:?} (expected memory or redis)")),
    }
}

#[allow(clippy::ptr_arg)] // Check::Rule takes fn(&T), T being the field type
fn check_redis_urls(list: &Vec<String>) -> Result<(), String> {
    if list.is_empty() {
        return Err("at least one Redis URL is needed".to_string());
    }
    for (i, u) in list.iter().enumerate() {
        crate::broker::RedisTarget::parse(u).map_err(|e| format!("{u:?}: {e}"))?;
        if list[..i].contains(u) {
            return Err(format!("{u:?} is listed twice"));
        }
    }
    Ok(())
}

#[allow(clippy::ptr_arg)] // Check::Rule takes fn(&T), T being the field type
fn check_redis_prefix(p: &String) -> Result<(), String> {
    if p.is_empty() || p.len() > 64 || p.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("must be 1-64 bytes without spaces or control characters".to_string());
    }
    Ok(())
}
