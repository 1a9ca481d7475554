//! Relay configuration: built-in defaults, overlaid by a TOML file
//! (`--config FILE`), overlaid by command-line flags.
//!
//! Every file key is also a flag: `max_frame_bytes` ⇔ `--max-frame-bytes`.
//! Flag value syntax (kept identical to the file so users learn one format):
//!
//! * durations: `30s`, `500ms`, `2m`, `1h`, `1h30m`, `0` (a unit is required
//!   except for 0, so `ping_interval = 30` is rejected rather than guessed);
//! * sizes: `512`, `512B`, `64KiB`, `1MiB`, `1GiB`, `1KB` (=1000), `1MB`
//!   (=1,000,000); plain integers in TOML are bytes;
//! * booleans: `--echo-self` alone means true; `--echo-self=false` or
//!   `--echo-self false` sets it explicitly (true/false/yes/no/on/off/1/0);
//! * lists: comma-separated, `--subprotocols chat,superchat`; an empty value
//!   (`--allowed-origins ""`) clears the list;
//! * repeating a flag is allowed: the last occurrence wins.
//!
//! Errors are a single line naming the offending key so that `main` can
//! print them verbatim and exit with [`ConfigError::exit_code`].

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use clap::{CommandFactory, FromArgMatches, Parser};
use toml::{Spanned, Value};

/// Upper bound for `workers`: more event loops than this is a typo, not a
/// deployment (and each one costs a thread plus its buffers).
pub const MAX_WORKERS: usize = 64;
/// Upper bound for `max_room_name_bytes`: room names are copied into every
/// routing table entry and log line.
pub const MAX_ROOM_NAME_LIMIT: usize = 1024;
/// Accepted `log_level` values, least to most verbose.
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];

/// Effective relay configuration. All fields are public; build one with
/// [`Config::default`], [`Config::from_toml_str`] or [`parse_args`], then
/// call [`Config::validate`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Config {
    /// Address every worker binds (each worker has its own SO_REUSEPORT listener).
    pub listen: SocketAddr,
    /// Number of worker event loops; 0 = one per core (see [`Config::effective_workers`]).
    pub workers: usize,
    /// Pin each worker thread to its own core.
    pub pin_cores: bool,
    /// Total open connections; beyond this the handshake gets 503.
    pub max_connections: usize,
    /// Open connections per client IP; 0 = unlimited; beyond → 429.
    pub max_connections_per_ip: usize,
    /// Cap on the HTTP request head (upgrade or plain HTTP); beyond → 431.
    pub max_request_head_bytes: usize,
    /// Cap on the number of request headers; beyond → 431.
    pub max_request_headers: usize,
    /// Largest accepted frame payload; beyond → close 1009.
    pub max_frame_bytes: usize,
    /// Largest reassembled message; beyond → close 1009. Also caps POST /publish bodies (413).
    pub max_message_bytes: usize,
    /// Per-connection outbound queue bound; exceeding it triggers `slow_consumer`.
    pub max_outbound_bytes: usize,
    /// What to do with a connection whose outbound queue is full.
    pub slow_consumer: SlowConsumerPolicy,
    /// Capacity (in messages) of each bounded cross-worker fan-out channel.
    pub fanout_queue_len: usize,
    /// Size of each pooled read buffer.
    pub read_buffer_bytes: usize,
    /// Max bytes read from one connection per wake-up, so one busy peer cannot starve others.
    pub read_budget_bytes: usize,
    /// Max idle buffers a worker keeps for reuse.
    pub buffer_pool_size: usize,
    /// `SO_SNDBUF` of each accepted socket (0: kernel autotuning). A cap
    /// bounds the kernel memory a stalled reader pins on top of
    /// `max_outbound_bytes`, and so how soon it is detected as a slow
    /// consumer, at some cost in throughput (docs/configuration.md).
    pub send_buffer_bytes: usize,
    /// Time allowed to complete the HTTP upgrade.
    pub handshake_timeout: Duration,
    /// Time to wait for the peer's close frame before dropping the TCP connection.
    pub close_timeout: Duration,
    /// Heartbeat ping interval; zero disables heartbeats.
    pub ping_interval: Duration,
    /// Time to wait for a pong after a ping before closing the connection.
    pub pong_timeout: Duration,
    /// Graceful shutdown: how long connections get to close before exit.
    pub shutdown_timeout: Duration,
    /// Interval between stats log lines; zero disables them.
    pub stats_interval: Duration,
    /// Deliver a client's own messages back to it.
    pub echo_self: bool,
    /// Supported subprotocols, in server preference order.
    pub subprotocols: Vec<String>,
    /// Allowed `Origin` header values; empty = any origin.
    pub allowed_origins: Vec<String>,
    /// Max number of rooms that may exist at once.
    pub max_rooms: usize,
    /// Max room name length in bytes (1..=1024).
    pub max_room_name_bytes: usize,
    /// Messages per second per connection; 0 = no message rate limit.
    pub rate_limit_messages: u32,
    /// Message burst allowance; 0 = same as `rate_limit_messages` (see [`Config::effective_rate_limit_burst`]).
    pub rate_limit_burst: u32,
    /// Bytes per second per connection; 0 = no byte rate limit.
    pub rate_limit_bytes: usize,
    /// What to do with a connection that exceeds a rate limit.
    pub rate_limit_policy: RateLimitPolicy,
    /// Bearer token required by POST /publish; empty disables the endpoint (404).
    pub publish_token: String,
    /// Serve GET /metrics.
    pub metrics: bool,
    /// One of [`LOG_LEVELS`]; `RUST_LOG`, when set, takes precedence (handled by main).
    pub log_level: String,
}

impl Default for Config {
    fn default() -> Config {
        Config {
            listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 9001),
            workers: 0,
            pin_cores: false,
            max_connections: 100_000,
            max_connections_per_ip: 0,
            max_request_head_bytes: 8 * 1024,
            max_request_headers: 64,
            max_frame_bytes: 1024 * 1024,
            max_message_bytes: 1024 * 1024,
            max_outbound_bytes: 1024 * 1024,
            slow_consumer: SlowConsumerPolicy::Close,
            fanout_queue_len: 4096,
            read_buffer_bytes: 64 * 1024,
            read_budget_bytes: 256 * 1024,
            buffer_pool_size: 1024,
            send_buffer_bytes: 0,
            handshake_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(5),
            ping_interval: Duration::from_secs(30),
            pong_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(5),
            stats_interval: Duration::from_secs(10),
            echo_self: false,
            subprotocols: Vec::new(),
            allowed_origins: Vec::new(),
            max_rooms: 100_000,
            max_room_name_bytes: 128,
            rate_limit_messages: 0,
            rate_limit_burst: 0,
            rate_limit_bytes: 0,
            rate_limit_policy: RateLimitPolicy::Close,
            publish_token: String::new(),
            metrics: true,
            log_level: "info".to_string(),
        }
    }
}

/// Every configuration key, in file/print order, with the one-line help shown
/// by `--help` and as a comment by `--print-config`. Single source of truth for
/// "is this key known" and for the help text.
const KEYS: &[(&str, &str)] = &[
    ("listen", "Address every worker binds (SO_REUSEPORT)"),
    ("workers", "Worker event loops; 0 = one per CPU core"),
    ("pin_cores", "Pin each worker thread to its own core"),
    (
        "max_connections",
        "Max open connections; beyond -> 503 at handshake",
    ),
    (
        "max_connections_per_ip",
        "Max connections per client IP; 0 = unlimited; beyond -> 429",
    ),
    (
        "max_request_head_bytes",
        "Max HTTP request head size; beyond -> 431",
    ),
    (
        "max_request_headers",
        "Max number of request headers; beyond -> 431",
    ),
    ("max_frame_bytes", "Max frame payload; beyond -> close 1009"),
    (
        "max_message_bytes",
        "Max message size; beyond -> close 1009 (POST /publish body -> 413)",
    ),
    (
        "max_outbound_bytes",
        "Per-connection outbound queue bound; beyond -> slow_consumer policy",
    ),
    (
        "slow_consumer",
        "When the outbound queue is full: close | drop",
    ),
    (
        "fanout_queue_len",
        "Capacity (messages) of each cross-worker fan-out channel",
    ),
    ("read_buffer_bytes", "Size of pooled read buffers"),
    (
        "read_budget_bytes",
        "Max bytes read from one connection per wake-up (fairness)",
    ),
    ("buffer_pool_size", "Max idle buffers kept per worker"),
    (
        "send_buffer_bytes",
        "SO_SNDBUF per connection (0 = kernel autotuning)",
    ),
    (
        "handshake_timeout",
        "Time allowed to complete the HTTP upgrade",
    ),
    ("close_timeout", "Time to wait for the peer's close frame"),
    (
        "ping_interval",
        "Heartbeat ping interval; 0 = heartbeats off",
    ),
    ("pong_timeout", "Time to wait for a pong before closing"),
    (
        "shutdown_timeout",
        "Graceful shutdown: time connections get to close",
    ),
    (
        "stats_interval",
        "Interval between stats log lines; 0 = off",
    ),
    ("echo_self", "Deliver a client's own messages back to it"),
    (
        "subprotocols",
        "Supported subprotocols, server preference order (comma-separated)",
    ),
    (
        "allowed_origins",
        "Allowed Origin values (comma-separated); empty = any origin",
    ),
    ("max_rooms", "Max number of rooms"),
    (
        "max_room_name_bytes",
        "Max room name length in bytes (1..=1024)",
    ),
    (
        "rate_limit_messages",
        "Messages per second per connection; 0 = off",
    ),
    (
        "rate_limit_burst",
        "Message burst allowance; 0 = same as rate_limit_messages",
    ),
    (
        "rate_limit_bytes",
        "Bytes per second per connection; 0 = off",
    ),
    (
        "rate_limit_policy",
        "When a rate limit is exceeded: close | drop",
    ),
    (
        "publish_token",
        "Bearer token for POST /publish; empty = endpoint disabled",
    ),
    ("metrics", "Serve GET /metrics"),
    (
        "log_level",
        "error | warn | info | debug | trace (RUST_LOG overrides)",
    ),
];

fn is_key(name: &str) -> bool {
    KEYS.iter().any(|(k, _)| *k == name)
}

/// What to do with a connection whose outbound queue exceeds `max_outbound_bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlowConsumerPolicy {
    /// Close the connection (1008 policy violation); the client can reconnect and resync.
    Close,
    /// Drop the message for that connection only and keep it open.
    Drop,
}

/// What to do with a connection that exceeds a rate limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateLimitPolicy {
    /// Close the connection.
    Close,
    /// Silently drop the excess messages.
    Drop,
}

macro_rules! policy_enum_impls {
    ($ty:ident) => {
        impl $ty {
            /// The TOML/flag spelling.
            pub fn as_str(self) -> &'static str {
                match self {
                    $ty::Close => "close",
                    $ty::Drop => "drop",
                }
            }
        }
        impl FromStr for $ty {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s.trim().to_ascii_lowercase().as_str() {
                    "close" => Ok($ty::Close),
                    "drop" => Ok($ty::Drop),
                    _ => Err(format!(
                        "invalid policy {s:?} (expected \"close\" or \"drop\")"
                    )),
                }
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
policy_enum_impls!(SlowConsumerPolicy);
policy_enum_impls!(RateLimitPolicy);

/// What `main` should do, decided by [`parse_args`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Start the relay with this (validated) configuration.
    Run(Config),
    /// `--print-config`: print `config.to_toml()` to stdout and exit 0.
    PrintConfig(Config),
}

/// A configuration problem, or a `--help`/`--version` request.
///
/// `Display` is a single line (`config error: ...`) for real errors, and the
/// full help/version text when [`ConfigError::exit_code`] is 0. Intended use:
///
/// ```no_run
/// match wsrelay::config::parse_args(std::env::args_os()) {
///     Ok(cmd) => { /* run or print */ }
///     Err(e) if e.exit_code() == 0 => { println!("{e}"); std::process::exit(0) }
///     Err(e) => { eprintln!("{e}"); std::process::exit(e.exit_code()) }
/// }
/// ```
#[derive(Debug)]
pub struct ConfigError(ErrorKind);

#[derive(Debug)]
enum ErrorKind {
    /// Help or version text requested; not an error for the user.
    Help(String),
    /// A real problem; the message is one line without the "config error: " prefix.
    Invalid(String),
}

impl ConfigError {
    fn invalid(msg: impl Into<String>) -> ConfigError {
        // Guarantee the one-line contract even if a library message has newlines.
        let msg: String = msg.into();
        let one_line = msg
            .lines()
            .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        ConfigError(ErrorKind::Invalid(one_line))
    }

    fn key(key: &str, msg: impl fmt::Display) -> ConfigError {
        ConfigError::invalid(format!("key \"{key}\": {msg}"))
    }

    /// Process exit code: 0 for `--help`/`--version` (print Display to stdout),
    /// 2 for every real configuration error (print Display to stderr).
    pub fn exit_code(&self) -> i32 {
        match self.0 {
            ErrorKind::Help(_) => 0,
            ErrorKind::Invalid(_) => 2,
        }
    }

    /// True for `--help`/`--version`; same as `exit_code() == 0`.
    pub fn is_help(&self) -> bool {
        matches!(self.0, ErrorKind::Help(_))
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            ErrorKind::Help(text) => f.write_str(text),
            ErrorKind::Invalid(msg) => write!(f, "config error: {msg}"),
        }
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Worker count to actually start: `workers`, or the number of available
    /// cores when it is 0 (falls back to 1 if that cannot be determined).
    pub fn effective_workers(&self) -> usize {
        if self.workers != 0 {
            return self.workers;
        }
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .min(MAX_WORKERS)
    }

    /// Token-bucket capacity: `rate_limit_burst`, or `rate_limit_messages` when it is 0.
    pub fn effective_rate_limit_burst(&self) -> u32 {
        if self.rate_limit_burst == 0 {
            self.rate_limit_messages
        } else {
            self.rate_limit_burst
        }
    }

    /// The configuration as TOML (with a comment per key) that
    /// [`Config::from_toml_str`] parses back into an identical `Config`.
    /// `workers` is printed as stored (0 stays 0), not resolved.
    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# wsrelay configuration (generated by --print-config).\n\
             # Durations: 30s, 500ms, 2m, 1h, 0. Sizes: 512, 64KiB, 1MiB, 1MB.\n",
        );
        for ((key, value), (_, help)) in self.entries().into_iter().zip(KEYS) {
            out.push_str(&format!("\n# {help}\n{key} = {value}\n"));
        }
        out
    }

    /// Key/value pairs in [`KEYS`] order, in their canonical TOML form.
    fn entries(&self) -> Vec<(&'static str, Value)> {
        let s = |v: &str| Value::String(v.to_string());
        let dur = |d: Duration| Value::String(format_duration(d));
        let list = |v: &[String]| Value::Array(v.iter().map(|x| s(x)).collect());
        vec![
            ("listen", s(&self.listen.to_string())),
            ("workers", count_value(self.workers)),
            ("pin_cores", Value::Boolean(self.pin_cores)),
            ("max_connections", count_value(self.max_connections)),
            (
                "max_connections_per_ip",
                count_value(self.max_connections_per_ip),
            ),
            (
                "max_request_head_bytes",
                size_value(self.max_request_head_bytes),
            ),
            ("max_request_headers", count_value(self.max_request_headers)),
            ("max_frame_bytes", size_value(self.max_frame_bytes)),
            ("max_message_bytes", size_value(self.max_message_bytes)),
            ("max_outbound_bytes", size_value(self.max_outbound_bytes)),
            ("slow_consumer", s(self.slow_consumer.as_str())),
            ("fanout_queue_len", count_value(self.fanout_queue_len)),
            ("read_buffer_bytes", size_value(self.read_buffer_bytes)),
            ("read_budget_bytes", size_value(self.read_budget_bytes)),
            ("buffer_pool_size", count_value(self.buffer_pool_size)),
            ("send_buffer_bytes", size_value(self.send_buffer_bytes)),
            ("handshake_timeout", dur(self.handshake_timeout)),
            ("close_timeout", dur(self.close_timeout)),
            ("ping_interval", dur(self.ping_interval)),
            ("pong_timeout", dur(self.pong_timeout)),
            ("shutdown_timeout", dur(self.shutdown_timeout)),
            ("stats_interval", dur(self.stats_interval)),
            ("echo_self", Value::Boolean(self.echo_self)),
            ("subprotocols", list(&self.subprotocols)),
            ("allowed_origins", list(&self.allowed_origins)),
            ("max_rooms", count_value(self.max_rooms)),
            ("max_room_name_bytes", size_value(self.max_room_name_bytes)),
            (
                "rate_limit_messages",
                Value::Integer(self.rate_limit_messages.into()),
            ),
            (
                "rate_limit_burst",
                Value::Integer(self.rate_limit_burst.into()),
            ),
            ("rate_limit_bytes", size_value(self.rate_limit_bytes)),
            ("rate_limit_policy", s(self.rate_limit_policy.as_str())),
            ("publish_token", s(&self.publish_token)),
            ("metrics", Value::Boolean(self.metrics)),
            ("log_level", s(&self.log_level)),
        ]
    }

    /// Parses TOML file contents over the defaults. `origin` (usually the file
    /// path) is only used in error messages. Does not call [`Config::validate`],
    /// because flags may still override an out-of-range file value.
    pub fn from_toml_str(s: &str, origin: &str) -> Result<Config, ConfigError> {
        let mut cfg = Config::default();
        cfg.apply_toml(s, origin)?;
        Ok(cfg)
    }

    fn apply_toml(&mut self, text: &str, origin: &str) -> Result<(), ConfigError> {
        let table: BTreeMap<Spanned<String>, Spanned<Value>> =
            toml::from_str(text).map_err(|e| {
                let at = match e.span() {
                    Some(span) => format!(" {}", position(text, span.start)),
                    None => String::new(),
                };
                ConfigError::invalid(format!("invalid TOML in {origin}{at}: {}", e.message()))
            })?;
        // Report problems in file order, not alphabetical order.
        let mut items: Vec<_> = table.into_iter().collect();
        items.sort_by_key(|(k, _)| k.span().start);
        for (key, value) in items {
            let at = position(text, key.span().start);
            let key = key.into_inner();
            match self.set_from_toml(&key, value.into_inner()) {
                Ok(()) => {}
                Err(None) => {
                    let hint = match suggest(&key) {
                        Some(k) => format!("; did you mean \"{k}\"?"),
                        None => String::new(),
                    };
                    return Err(ConfigError::invalid(format!(
                        "unknown key \"{key}\" in {origin} ({at}{hint})"
                    )));
                }
                Err(Some(msg)) => {
                    return Err(ConfigError::invalid(format!(
                        "key \"{key}\" in {origin} ({at}): {msg}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Sets one key from a TOML value. `Err(None)` = unknown key,
    /// `Err(Some(msg))` = bad value.
    fn set_from_toml(&mut self, key: &str, v: Value) -> Result<(), Option<String>> {
        match key {
            "listen" => self.listen = parse_addr(&toml_str(&v)?)?,
            "workers" => self.workers = toml_count(&v)?,
            "pin_cores" => self.pin_cores = toml_bool(&v)?,
            "max_connections" => self.max_connections = toml_count(&v)?,
            "max_connections_per_ip" => self.max_connections_per_ip = toml_count(&v)?,
            "max_request_head_bytes" => self.max_request_head_bytes = toml_size(&v)?,
            "max_request_headers" => self.max_request_headers = toml_count(&v)?,
            "max_frame_bytes" => self.max_frame_bytes = toml_size(&v)?,
            "max_message_bytes" => self.max_message_bytes = toml_size(&v)?,
            "max_outbound_bytes" => self.max_outbound_bytes = toml_size(&v)?,
            "slow_consumer" => self.slow_consumer = toml_str(&v)?.parse()?,
            "fanout_queue_len" => self.fanout_queue_len = toml_count(&v)?,
            "read_buffer_bytes" => self.read_buffer_bytes = toml_size(&v)?,
            "read_budget_bytes" => self.read_budget_bytes = toml_size(&v)?,
            "buffer_pool_size" => self.buffer_pool_size = toml_count(&v)?,
            "send_buffer_bytes" => self.send_buffer_bytes = toml_size(&v)?,
            "handshake_timeout" => self.handshake_timeout = toml_duration(&v)?,
            "close_timeout" => self.close_timeout = toml_duration(&v)?,
            "ping_interval" => self.ping_interval = toml_duration(&v)?,
            "pong_timeout" => self.pong_timeout = toml_duration(&v)?,
            "shutdown_timeout" => self.shutdown_timeout = toml_duration(&v)?,
            "stats_interval" => self.stats_interval = toml_duration(&v)?,
            "echo_self" => self.echo_self = toml_bool(&v)?,
            "subprotocols" => self.subprotocols = toml_list(&v)?,
            "allowed_origins" => self.allowed_origins = toml_list(&v)?,
            "max_rooms" => self.max_rooms = toml_count(&v)?,
            "max_room_name_bytes" => self.max_room_name_bytes = toml_size(&v)?,
            "rate_limit_messages" => self.rate_limit_messages = toml_count(&v)?,
            "rate_limit_burst" => self.rate_limit_burst = toml_count(&v)?,
            "rate_limit_bytes" => self.rate_limit_bytes = toml_size(&v)?,
            "rate_limit_policy" => self.rate_limit_policy = toml_str(&v)?.parse()?,
            "publish_token" => self.publish_token = toml_str(&v)?,
            "metrics" => self.metrics = toml_bool(&v)?,
            "log_level" => self.log_level = parse_log_level(&toml_str(&v)?)?,
            _ => return Err(None),
        }
        Ok(())
    }

    /// Range and cross-field checks. The error names the key at fault.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.workers > MAX_WORKERS {
            return Err(ConfigError::key(
                "workers",
                format!(
                    "{} is too many (max {MAX_WORKERS}; 0 = one per core)",
                    self.workers
                ),
            ));
        }
        // Zero would make the relay reject everything; almost certainly a mistake.
        let at_least_one = [
            ("max_connections", self.max_connections),
            ("max_request_head_bytes", self.max_request_head_bytes),
            ("max_request_headers", self.max_request_headers),
            ("max_frame_bytes", self.max_frame_bytes),
            ("max_message_bytes", self.max_message_bytes),
            ("max_outbound_bytes", self.max_outbound_bytes),
            ("fanout_queue_len", self.fanout_queue_len),
            ("read_buffer_bytes", self.read_buffer_bytes),
            ("read_budget_bytes", self.read_budget_bytes),
            ("max_rooms", self.max_rooms),
            ("max_room_name_bytes", self.max_room_name_bytes),
        ];
        for (key, value) in at_least_one {
            if value == 0 {
                return Err(ConfigError::key(key, "must be at least 1 (got 0)"));
            }
        }
        if self.max_room_name_bytes > MAX_ROOM_NAME_LIMIT {
            return Err(ConfigError::key(
                "max_room_name_bytes",
                format!(
                    "{} is too large (max {MAX_ROOM_NAME_LIMIT})",
                    self.max_room_name_bytes
                ),
            ));
        }
        if self.handshake_timeout.is_zero() {
            return Err(ConfigError::key(
                "handshake_timeout",
                "must be greater than 0 (a stalled client would hold its slot forever)",
            ));
        }
        if !self.ping_interval.is_zero() && self.pong_timeout.is_zero() {
            return Err(ConfigError::key(
                "pong_timeout",
                "must be greater than 0 while heartbeats are on (set ping_interval = 0 to turn them off)",
            ));
        }
        if self.rate_limit_burst != 0 && self.rate_limit_messages == 0 {
            return Err(ConfigError::key(
                "rate_limit_burst",
                format!(
                    "is {} but rate_limit_messages is 0 (off); set rate_limit_messages too",
                    self.rate_limit_burst
                ),
            ));
        }
        for (i, p) in self.subprotocols.iter().enumerate() {
            if p.is_empty() || !p.bytes().all(is_tchar) {
                return Err(ConfigError::key(
                    "subprotocols",
                    format!("{p:?} is not a valid subprotocol token (RFC 6455 §4.1)"),
                ));
            }
            if self.subprotocols[..i].contains(p) {
                return Err(ConfigError::key(
                    "subprotocols",
                    format!("{p:?} is listed twice"),
                ));
            }
        }
        for o in &self.allowed_origins {
            if o.is_empty()
                || o.chars()
                    .any(|c| c.is_whitespace() || c.is_control() || c == ',')
            {
                return Err(ConfigError::key(
                    "allowed_origins",
                    format!("{o:?} is not a valid origin (expected e.g. \"https://example.com\")"),
                ));
            }
        }
        // Header values are trimmed and cannot carry control characters, so such
        // a token could never match and would silently disable publishing.
        if self.publish_token.chars().any(char::is_control)
            || self.publish_token.trim() != self.publish_token
        {
            return Err(ConfigError::key(
                "publish_token",
                "must not contain control characters or leading/trailing whitespace",
            ));
        }
        if !LOG_LEVELS.contains(&self.log_level.as_str()) {
            return Err(ConfigError::key(
                "log_level",
                format!(
                    "invalid level {:?} (expected one of {})",
                    self.log_level,
                    LOG_LEVELS.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

/// RFC 7230 `tchar`, the alphabet of a subprotocol token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// "line L column C" for a byte offset, 1-based, for file error messages.
fn position(text: &str, offset: usize) -> String {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line} column {column}")
}

/// Closest known key to a misspelled one, if it is plausibly a typo.
fn suggest(unknown: &str) -> Option<&'static str> {
    let normalized = unknown.replace('-', "_").to_ascii_lowercase();
    KEYS.iter()
        .map(|(k, _)| (edit_distance(&normalized, k), *k))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| k)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let sub = prev[j] + usize::from(ca != *cb);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

// ---- TOML value conversion -------------------------------------------------

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("string {s:?}"),
        Value::Integer(i) => format!("integer {i}"),
        Value::Float(f) => format!("float {f}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Datetime(d) => format!("datetime {d}"),
        Value::Array(_) => "an array".to_string(),
        Value::Table(_) => "a table".to_string(),
    }
}

fn toml_str(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(format!("expected a string, got {}", describe(other))),
    }
}

fn toml_bool(v: &Value) -> Result<bool, String> {
    match v {
        Value::Boolean(b) => Ok(*b),
        other => Err(format!("expected true or false, got {}", describe(other))),
    }
}

/// Non-negative integer. Digit strings are accepted too, so that values above
/// i64::MAX (TOML's integer range) still round-trip through `to_toml`.
fn toml_count<T: TryFrom<u64>>(v: &Value) -> Result<T, String> {
    match v {
        Value::Integer(i) => u64::try_from(*i)
            .ok()
            .and_then(|u| T::try_from(u).ok())
            .ok_or_else(|| format!("{i} is out of range (expected a non-negative integer)")),
        Value::String(s) => parse_int(s),
        other => Err(format!(
            "expected a non-negative integer, got {}",
            describe(other)
        )),
    }
}

fn toml_size(v: &Value) -> Result<usize, String> {
    match v {
        Value::Integer(i) => usize::try_from(*i)
            .map_err(|_| format!("invalid size {i} (must be a non-negative number of bytes)")),
        Value::String(s) => parse_size(s),
        other => Err(format!(
            "expected a size such as 1MiB or a number of bytes, got {}",
            describe(other)
        )),
    }
}

fn toml_duration(v: &Value) -> Result<Duration, String> {
    match v {
        Value::String(s) => parse_duration(s),
        Value::Integer(0) => Ok(Duration::ZERO),
        Value::Integer(i) => Err(format!(
            "invalid duration {i} (a unit is required except for 0; expected e.g. \"{i}s\", \"500ms\")"
        )),
        other => Err(format!(
            "expected a duration string such as \"30s\" or \"500ms\", got {}",
            describe(other)
        )),
    }
}

fn toml_list(v: &Value) -> Result<Vec<String>, String> {
    match v {
        Value::Array(items) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(format!(
                    "expected an array of strings, found {}",
                    describe(other)
                )),
            })
            .collect(),
        other => Err(format!(
            "expected an array of strings such as [\"a\", \"b\"], got {}",
            describe(other)
        )),
    }
}

/// TOML form of a count: an integer, or a digit string beyond TOML's i64 range.
fn count_value(n: usize) -> Value {
    match i64::try_from(n) {
        Ok(i) => Value::Integer(i),
        Err(_) => Value::String(n.to_string()),
    }
}

/// TOML form of a size: "1MiB"-style string, or a plain integer when no unit fits.
fn size_value(n: usize) -> Value {
    let s = format_size(n);
    match s.parse::<i64>() {
        Ok(i) => Value::Integer(i),
        Err(_) => Value::String(s),
    }
}

// ---- value syntax (shared by file and flags) --------------------------------

const DURATION_HINT: &str = "expected e.g. 30s, 500ms";
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses `30s`, `500ms`, `2m`, `1h`, `1d`, `250us`, `10ns`, compound `1h30m`,
/// or `0`. A unit is mandatory for non-zero values: a bare `30` is ambiguous
/// (seconds? milliseconds?) so it is rejected with a hint instead of guessed.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("invalid duration {s:?} ({why})");
    let t = s.trim();
    if t.is_empty() {
        return Err(bad(&format!("empty; {DURATION_HINT}")));
    }
    if t.starts_with('-') {
        return Err(bad("must not be negative"));
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return if t.bytes().all(|b| b == b'0') {
            Ok(Duration::ZERO)
        } else {
            Err(bad(&format!(
                "a unit is required except for 0; {DURATION_HINT}"
            )))
        };
    }
    let mut total: u128 = 0;
    let mut rest = t;
    while !rest.is_empty() {
        let digits_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits_end == 0 {
            return Err(bad(DURATION_HINT));
        }
        let number: u128 = rest[..digits_end].parse().map_err(|_| bad("too large"))?;
        rest = rest[digits_end..].trim_start();
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c.is_whitespace())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_end];
        let nanos_per_unit: u128 = match unit.to_ascii_lowercase().as_str() {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => NANOS_PER_SEC,
            "m" => 60 * NANOS_PER_SEC,
            "h" => 3600 * NANOS_PER_SEC,
            "d" => 86_400 * NANOS_PER_SEC,
            "" => return Err(bad(&format!("missing unit; {DURATION_HINT}"))),
            _ => return Err(bad(&format!("unknown unit {unit:?}; {DURATION_HINT}"))),
        };
        total = number
            .checked_mul(nanos_per_unit)
            .and_then(|n| total.checked_add(n))
            .ok_or_else(|| bad("too large"))?;
        rest = rest[unit_end..].trim_start();
    }
    let secs = u64::try_from(total / NANOS_PER_SEC).map_err(|_| bad("too large"))?;
    // The remainder is < 1e9, so it always fits.
    let nanos = (total % NANOS_PER_SEC) as u32;
    Ok(Duration::new(secs, nanos))
}

/// Formats with the largest unit that represents `d` exactly (`90s`, `2m`,
/// `1500us`), so [`parse_duration`] returns the identical value.
pub fn format_duration(d: Duration) -> String {
    let total = d.as_nanos();
    if total == 0 {
        return "0".to_string();
    }
    const UNITS: [(&str, u128); 7] = [
        ("d", 86_400 * NANOS_PER_SEC),
        ("h", 3600 * NANOS_PER_SEC),
        ("m", 60 * NANOS_PER_SEC),
        ("s", NANOS_PER_SEC),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    for (unit, per) in UNITS {
        if total % per == 0 {
            return format!("{}{unit}", total / per);
        }
    }
    unreachable!("every duration is a whole number of nanoseconds")
}

const SIZE_HINT: &str = "expected e.g. 512, 64KiB, 1MiB, 1MB";
const BINARY_UNITS: [(&str, u128); 4] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
];
const DECIMAL_UNITS: [(&str, u128); 4] = [
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
];

/// Parses a byte size: `512`, `512B`, `64KiB`, `1MiB`, `1GiB`, `1TiB` (powers of
/// 1024) or `1KB`, `1MB`, `1GB`, `1TB` (powers of 1000). Units are
/// case-insensitive; bare `K`/`M`/`G` are rejected as ambiguous.
pub fn parse_size(s: &str) -> Result<usize, String> {
    let bad = |why: &str| format!("invalid size {s:?} ({why})");
    let t = s.trim();
    if t.is_empty() {
        return Err(bad(&format!("empty; {SIZE_HINT}")));
    }
    if t.starts_with('-') {
        return Err(bad("must not be negative"));
    }
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err(bad(SIZE_HINT));
    }
    let number: u128 = t[..digits_end].parse().map_err(|_| bad("too large"))?;
    let unit = t[digits_end..].trim_start();
    let lower = unit.to_ascii_lowercase();
    let multiplier = if lower.is_empty() || lower == "b" {
        Some(1)
    } else {
        BINARY_UNITS
            .iter()
            .chain(DECIMAL_UNITS.iter())
            .find(|(name, _)| name.eq_ignore_ascii_case(&lower))
            .map(|(_, m)| *m)
    };
    let Some(multiplier) = multiplier else {
        let why = match lower.as_str() {
            "k" | "m" | "g" | "t" => {
                let u = lower.to_ascii_uppercase();
                format!(
                    "ambiguous unit {unit:?}: use {u}iB (powers of 1024) or {u}B (powers of 1000)"
                )
            }
            _ => format!("unknown unit {unit:?}; {SIZE_HINT}"),
        };
        return Err(bad(&why));
    };
    number
        .checked_mul(multiplier)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| bad("too large"))
}

/// Formats exactly: the largest binary unit that divides `n` (`1MiB`,
/// `64KiB`), else the largest decimal one (`1MB`), else plain bytes (`1500`).
pub fn format_size(n: usize) -> String {
    let n = n as u128;
    if n == 0 {
        return "0".to_string();
    }
    for (unit, per) in BINARY_UNITS.iter().chain(DECIMAL_UNITS.iter()) {
        if n % per == 0 {
            return format!("{}{unit}", n / per);
        }
    }
    n.to_string()
}

fn parse_int<T: TryFrom<u64>>(s: &str) -> Result<T, String> {
    let t = s.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid number {s:?} (expected a non-negative integer)"
        ));
    }
    t.parse::<u64>()
        .ok()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("invalid number {s:?} (too large)"))
}

fn parse_bool(s: &str) -> Result<bool, String> {
    match s.trim().to_ascii_lowercase().as_str() {
        "true" | "yes" | "on" | "1" => Ok(true),
        "false" | "no" | "off" | "0" => Ok(false),
        _ => Err(format!("invalid boolean {s:?} (expected true or false)")),
    }
}

fn parse_addr(s: &str) -> Result<SocketAddr, String> {
    s.trim().parse().map_err(|_| {
        format!("invalid socket address {s:?} (expected e.g. 127.0.0.1:9001 or [::]:9001)")
    })
}

fn parse_log_level(s: &str) -> Result<String, String> {
    let level = s.trim().to_ascii_lowercase();
    if LOG_LEVELS.contains(&level.as_str()) {
        Ok(level)
    } else {
        Err(format!(
            "invalid level {s:?} (expected one of {})",
            LOG_LEVELS.join(", ")
        ))
    }
}

/// A comma-separated flag value. A newtype (not `Vec`) so clap treats the
/// flag as taking one value rather than many.
#[derive(Clone, Debug)]
struct List(Vec<String>);

fn parse_list(s: &str) -> Result<List, String> {
    Ok(List(
        s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect(),
    ))
}

// ---- command line -------------------------------------------------------------

const AFTER_HELP: &str = "\
Precedence: flags > --config FILE > built-in defaults.
Durations: 30s, 500ms, 2m, 1h, 1h30m, 0 (a unit is required except for 0).
Sizes: 512, 64KiB, 1MiB, 1GiB (x1024) or 1KB, 1MB (x1000).
Booleans: --flag means true; --flag=false / --flag false to turn off.
Lists: comma-separated; an empty value clears the list.
RUST_LOG, when set, overrides --log-level.";

/// Flags mirror the file keys one to one; every key flag is an `Option` so a
/// flag only overrides the file when it was actually given.
#[derive(Parser, Debug)]
#[command(
    name = "wsrelay",
    version,
    about = "Standalone WebSocket relay: rooms, cross-core fan-out, backpressure",
    after_help = AFTER_HELP,
    args_override_self = true
)]
struct Cli {
    /// TOML configuration file (flags override its values)
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// Print the effective configuration as TOML and exit
    #[arg(long)]
    print_config: bool,

    #[arg(long, value_name = "ADDR", value_parser = parse_addr)]
    listen: Option<SocketAddr>,
    #[arg(long, value_name = "N", value_parser = parse_int::<usize>)]
    workers: Option<usize>,
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    pin_cores: Option<bool>,
    #[arg(long, value_name = "N", value_parser = parse_int::<usize>)]
    max_connections: Option<usize>,
    #[arg(long, value_name = "N", value_parser = parse_int::<usize>)]
    max_connections_per_ip: Option<usize>,
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_request_head_bytes: Option<usize>,
    #[arg(long, value_name = "N", value_parser = parse_int::<usize>)]
    max_request_headers: Option<usize>,
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_frame_bytes: Option<usize>,
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_message_bytes: Option<usize>,
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_outbound_bytes: Option<usize>,
    #[arg(long, value_name = "POLICY", value_parser = SlowConsumerPolicy::from_str)]
    slow_consumer: Option<SlowConsumerPolicy>,
    #[arg(long, value_name = "N", value_parser = parse_int::<usize>)]
    fanout_queue_len: Option<usize>,
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    read_buffer_bytes: Option<usize>,
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    read_budget_bytes: Option<usize>,
    #[arg(long, value_name = "N", value_parser = parse_int::<usize>)]
    buffer_pool_size: Option<usize>,
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    send_buffer_bytes: Option<usize>,
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    handshake_timeout: Option<Duration>,
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    close_timeout: Option<Duration>,
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    ping_interval: Option<Duration>,
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pong_timeout: Option<Duration>,
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    shutdown_timeout: Option<Duration>,
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    stats_interval: Option<Duration>,
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    echo_self: Option<bool>,
    #[arg(long, value_name = "LIST", value_parser = parse_list)]
    subprotocols: Option<List>,
    #[arg(long, value_name = "LIST", value_parser = parse_list)]
    allowed_origins: Option<List>,
    #[arg(long, value_name = "N", value_parser = parse_int::<usize>)]
    max_rooms: Option<usize>,
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    max_room_name_bytes: Option<usize>,
    #[arg(long, value_name = "N", value_parser = parse_int::<u32>)]
    rate_limit_messages: Option<u32>,
    #[arg(long, value_name = "N", value_parser = parse_int::<u32>)]
    rate_limit_burst: Option<u32>,
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    rate_limit_bytes: Option<usize>,
    #[arg(long, value_name = "POLICY", value_parser = RateLimitPolicy::from_str)]
    rate_limit_policy: Option<RateLimitPolicy>,
    #[arg(long, value_name = "TOKEN")]
    publish_token: Option<String>,
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true", value_parser = parse_bool)]
    metrics: Option<bool>,
    #[arg(long, value_name = "LEVEL", value_parser = parse_log_level)]
    log_level: Option<String>,
}

impl Cli {
    /// Overwrites exactly the keys that were given on the command line.
    fn apply(self, cfg: &mut Config) {
        macro_rules! set {
            ($($field:ident),* $(,)?) => {
                $( if let Some(v) = self.$field { cfg.$field = v; } )*
            };
        }
        set!(
            listen,
            workers,
            pin_cores,
            max_connections,
            max_connections_per_ip,
            max_request_head_bytes,
            max_request_headers,
            max_frame_bytes,
            max_message_bytes,
            max_outbound_bytes,
            slow_consumer,
            fanout_queue_len,
            read_buffer_bytes,
            read_budget_bytes,
            buffer_pool_size,
            send_buffer_bytes,
            handshake_timeout,
            close_timeout,
            ping_interval,
            pong_timeout,
            shutdown_timeout,
            stats_interval,
            echo_self,
            max_rooms,
            max_room_name_bytes,
            rate_limit_messages,
            rate_limit_burst,
            rate_limit_bytes,
            rate_limit_policy,
            publish_token,
            metrics,
            log_level,
        );
        if let Some(List(v)) = self.subprotocols {
            cfg.subprotocols = v;
        }
        if let Some(List(v)) = self.allowed_origins {
            cfg.allowed_origins = v;
        }
    }
}

/// The clap command with help text and defaults filled in from [`KEYS`] and
/// [`Config::default`], so `--help` cannot drift from the real defaults.
fn cli_command() -> clap::Command {
    let defaults = Config::default().entries();
    Cli::command().mut_args(|arg| {
        let id = arg.get_id().as_str().to_string();
        let Some((_, help)) = KEYS.iter().find(|(k, _)| *k == id) else {
            return arg;
        };
        let default = defaults
            .iter()
            .find(|(k, _)| *k == id)
            .map_or_else(String::new, |(_, v)| flag_display(v));
        // Let "-5s" or "-1" reach our parsers (which explain the problem)
        // instead of clap reporting an unknown flag. Boolean flags are
        // excluded so `--echo-self --metrics` still means two flags.
        let takes_hyphen_values = !matches!(arg.get_num_args(), Some(n) if n.min_values() == 0);
        arg.help(format!("{help} [default: {default}]"))
            .allow_hyphen_values(takes_hyphen_values)
    })
}

/// A TOML value as it would be typed on the command line.
fn flag_display(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    if s.is_empty() {
        "\"\"".to_string()
    } else {
        s
    }
}

/// Turns a clap error into a one-line [`ConfigError`] naming the key, or
/// into the help/version text (exit code 0).
fn from_clap(e: clap::Error) -> ConfigError {
    use clap::error::{ContextKind, ContextValue, ErrorKind as K};
    let ctx = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => v.first().cloned(),
        _ => None,
    };
    match e.kind() {
        K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand => {
            let text = e.render().to_string();
            return ConfigError(ErrorKind::Help(text.trim_end().to_string()));
        }
        K::ValueValidation => {
            // InvalidArg looks like "--ping-interval <DURATION>".
            let flag = ctx(ContextKind::InvalidArg)
                .and_then(|a| a.split_whitespace().next().map(str::to_string));
            let reason = std::error::Error::source(&e).map(|s| s.to_string());
            if let (Some(flag), Some(reason)) = (flag, reason) {
                let key = flag.trim_start_matches('-').replace('-', "_");
                if is_key(&key) {
                    return ConfigError::invalid(format!("key \"{key}\" (flag {flag}): {reason}"));
                }
                return ConfigError::invalid(format!("flag {flag}: {reason}"));
            }
        }
        K::UnknownArgument => {
            if let Some(arg) = ctx(ContextKind::InvalidArg) {
                let hint = match ctx(ContextKind::SuggestedArg) {
                    Some(s) => format!(" (did you mean {s}?)"),
                    None => " (see --help)".to_string(),
                };
                return ConfigError::invalid(format!("unexpected argument {arg}{hint}"));
            }
        }
        _ => {}
    }
    // Anything else: clap's own text minus usage/boilerplate, joined to one line.
    let text = e.render().to_string();
    let msg = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("; ");
    ConfigError::invalid(msg)
}

/// Parses the command line (`args` includes argv\[0\]), loads `--config FILE`
/// if given, applies flags over it, and validates the result.
///
/// `--help` and `--version` are returned as `Err(e)` with
/// `e.exit_code() == 0` and `e.to_string()` = the text to print on stdout;
/// this function never prints or exits by itself.
pub fn parse_args<I, T>(args: I) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let matches = cli_command()
        .try_get_matches_from(args)
        .map_err(from_clap)?;
    let cli = Cli::from_arg_matches(&matches).map_err(from_clap)?;

    let mut cfg = match &cli.config {
        Some(path) => {
            let origin = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::invalid(format!("cannot read config file {origin}: {e}"))
            })?;
            Config::from_toml_str(&text, &origin)?
        }
        None => Config::default(),
    };
    let print = cli.print_config;
    cli.apply(&mut cfg);
    cfg.validate()?;
    Ok(if print {
        Command::PrintConfig(cfg)
    } else {
        Command::Run(cfg)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn temp_file(contents: &str) -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "wsrelay-config-unit-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).expect("write temp config");
        path
    }

    fn args(extra: &[&str]) -> Vec<String> {
        std::iter::once("wsrelay")
            .chain(extra.iter().copied())
            .map(str::to_string)
            .collect()
    }

    fn run(extra: &[&str]) -> Result<Config, ConfigError> {
        match parse_args(args(extra))? {
            Command::Run(c) => Ok(c),
            Command::PrintConfig(_) => panic!("unexpected PrintConfig"),
        }
    }

    fn err(extra: &[&str]) -> String {
        let e = run(extra).expect_err("expected an error");
        assert_eq!(e.exit_code(), 2);
        let s = e.to_string();
        assert!(!s.contains('\n'), "error must be one line: {s}");
        assert!(s.starts_with("config error: "), "{s}");
        s
    }

    fn file_err(toml: &str) -> String {
        let e = Config::from_toml_str(toml, "/etc/wsrelay.toml").expect_err("expected an error");
        let s = e.to_string();
        assert!(!s.contains('\n'), "error must be one line: {s}");
        assert_eq!(e.exit_code(), 2);
        s
    }

    #[test]
    fn durations_parse() {
        let ok = [
            ("30s", Duration::from_secs(30)),
            ("500ms", Duration::from_millis(500)),
            ("2m", Duration::from_secs(120)),
            ("1h", Duration::from_secs(3600)),
            ("1d", Duration::from_secs(86_400)),
            ("0", Duration::ZERO),
            ("000", Duration::ZERO),
            ("0s", Duration::ZERO),
            ("1h30m", Duration::from_secs(5400)),
            ("1m 30s", Duration::from_secs(90)),
            (" 10 s ", Duration::from_secs(10)),
            ("250us", Duration::from_micros(250)),
            ("250µs", Duration::from_micros(250)),
            ("7ns", Duration::from_nanos(7)),
            ("10MS", Duration::from_millis(10)),
        ];
        for (s, want) in ok {
            assert_eq!(parse_duration(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn durations_reject_garbage() {
        for (s, needle) in [
            ("", "empty"),
            ("   ", "empty"),
            ("30", "a unit is required except for 0"),
            ("30x", "unknown unit \"x\""),
            ("-5s", "negative"),
            ("s", "expected e.g. 30s"),
            ("1.5s", "unknown unit"),
            ("abc", "expected e.g. 30s"),
            ("10s5", "missing unit"),
            ("99999999999999999999999999999999999999999h", "too large"),
            ("18446744073709551616s", "too large"),
            ("300000000000000000d", "too large"),
        ] {
            let e = parse_duration(s).expect_err(s);
            assert!(e.contains(needle), "{s:?}: {e}");
            assert!(e.starts_with("invalid duration"), "{e}");
        }
        assert_eq!(
            parse_duration("30x").unwrap_err(),
            "invalid duration \"30x\" (unknown unit \"x\"; expected e.g. 30s, 500ms)"
        );
    }

    #[test]
    fn durations_format_and_round_trip() {
        let cases = [
            (Duration::ZERO, "0"),
            (Duration::from_secs(30), "30s"),
            (Duration::from_secs(90), "90s"),
            (Duration::from_secs(120), "2m"),
            (Duration::from_secs(3600), "1h"),
            (Duration::from_secs(86_400 * 3), "3d"),
            (Duration::from_millis(1500), "1500ms"),
            (Duration::from_micros(1), "1us"),
            (Duration::new(1, 1), "1000000001ns"),
        ];
        for (d, s) in cases {
            assert_eq!(format_duration(d), s);
            assert_eq!(parse_duration(s), Ok(d));
        }
        assert_eq!(
            parse_duration(&format_duration(Duration::MAX)),
            Ok(Duration::MAX)
        );
    }

    #[test]
    fn sizes_parse() {
        let ok = [
            ("1MiB", 1 << 20),
            ("64KiB", 64 << 10),
            ("512", 512),
            ("512B", 512),
            ("1GiB", 1 << 30),
            ("1MB", 1_000_000),
            ("1KB", 1_000),
            ("0", 0),
            ("1 MiB", 1 << 20),
            ("2mib", 2 << 20),
            (" 8KiB ", 8192),
        ];
        for (s, want) in ok {
            assert_eq!(parse_size(s), Ok(want), "{s}");
        }
    }

    #[test]
    fn sizes_reject_garbage() {
        for (s, needle) in [
            ("", "empty"),
            ("-1", "negative"),
            ("-1MiB", "negative"),
            ("1M", "ambiguous"),
            ("1k", "ambiguous"),
            ("1.5MiB", "unknown unit"),
            ("abc", "expected e.g. 512"),
            ("MiB", "expected e.g. 512"),
            ("12 parsecs", "unknown unit"),
            ("999999999999999999999999999999999999999999", "too large"),
            ("17179869184GiB", "too large"),
        ] {
            let e = parse_size(s).expect_err(s);
            assert!(e.contains(needle), "{s:?}: {e}");
            assert!(e.starts_with("invalid size"), "{e}");
        }
    }

    #[test]
    fn sizes_format_and_round_trip() {
        let cases = [
            (0, "0"),
            (1500, "1500"),
            (1024, "1KiB"),
            (64 * 1024, "64KiB"),
            (1 << 20, "1MiB"),
            (1 << 30, "1GiB"),
            (1_000_000, "1MB"),
            (2000, "2KB"),
            (1_048_575, "1048575"),
        ];
        for (n, s) in cases {
            assert_eq!(format_size(n), s);
            assert_eq!(parse_size(s), Ok(n));
        }
        for n in [usize::MAX, usize::MAX - 1, 1 << 40, 3 * (1 << 40) + 1] {
            assert_eq!(parse_size(&format_size(n)), Ok(n), "{n}");
        }
    }

    #[test]
    fn defaults_are_valid_and_documented_values() {
        let c = Config::default();
        c.validate().expect("defaults validate");
        assert_eq!(c.listen, "127.0.0.1:9001".parse().unwrap());
        assert_eq!(c.max_request_head_bytes, 8192);
        assert_eq!(c.ping_interval, Duration::from_secs(30));
        assert!(c.metrics);
        assert_eq!(c.log_level, "info");
        assert!(c.effective_workers() >= 1);
        assert_eq!(run(&[]).unwrap(), c);
    }

    #[test]
    fn keys_table_matches_entries_and_flags() {
        let names: Vec<_> = Config::default()
            .entries()
            .iter()
            .map(|(k, _)| *k)
            .collect();
        let keys: Vec<_> = KEYS.iter().map(|(k, _)| *k).collect();
        assert_eq!(names, keys);
        let cmd = cli_command();
        for k in keys {
            let arg = cmd
                .get_arguments()
                .find(|a| a.get_id().as_str() == k)
                .unwrap_or_else(|| panic!("no flag for key {k}"));
            assert_eq!(arg.get_long(), Some(k.replace('_', "-").as_str()));
        }
    }

    #[test]
    fn toml_accepts_integers_and_strings_for_sizes() {
        let c = Config::from_toml_str(
            "max_frame_bytes = 1048576\nmax_message_bytes = \"2MiB\"\n",
            "t",
        )
        .unwrap();
        assert_eq!(c.max_frame_bytes, 1 << 20);
        assert_eq!(c.max_message_bytes, 2 << 20);
        let c = Config::from_toml_str("ping_interval = 0\nstats_interval = \"0\"", "t").unwrap();
        assert!(c.ping_interval.is_zero() && c.stats_interval.is_zero());
    }

    #[test]
    fn unknown_key_is_named_with_file_and_suggestion() {
        let e = file_err("workers = 2\npign_interval = \"30s\"\n");
        assert_eq!(
            e,
            "config error: unknown key \"pign_interval\" in /etc/wsrelay.toml (line 2 column 1; did you mean \"ping_interval\"?)"
        );
        let e = file_err("[server]\nlisten = \"0.0.0.0:80\"\n");
        assert!(e.contains("unknown key \"server\""), "{e}");
        let e = file_err("zzzzzzzzzzzzzz = 1");
        assert!(
            e.contains("unknown key \"zzzzzzzzzzzzzz\"") && !e.contains("did you mean"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_the_key() {
        let e = file_err("\n\nping_interval = \"30x\"\n");
        assert_eq!(
            e,
            "config error: key \"ping_interval\" in /etc/wsrelay.toml (line 3 column 1): invalid duration \"30x\" (unknown unit \"x\"; expected e.g. 30s, 500ms)"
        );
        for (toml, needles) in [
            (
                "ping_interval = 30",
                &["key \"ping_interval\"", "a unit is required"][..],
            ),
            (
                "max_frame_bytes = -1",
                &["key \"max_frame_bytes\"", "non-negative"],
            ),
            (
                "max_frame_bytes = \"1M\"",
                &["key \"max_frame_bytes\"", "ambiguous"],
            ),
            ("workers = \"four\"", &["key \"workers\"", "invalid number"]),
            ("workers = -3", &["key \"workers\"", "out of range"]),
            (
                "rate_limit_messages = 5000000000",
                &["key \"rate_limit_messages\"", "out of range"],
            ),
            (
                "echo_self = \"yes\"",
                &["key \"echo_self\"", "expected true or false"],
            ),
            (
                "slow_consumer = \"block\"",
                &["key \"slow_consumer\"", "\"close\" or \"drop\""],
            ),
            (
                "listen = \"localhost\"",
                &["key \"listen\"", "invalid socket address"],
            ),
            (
                "subprotocols = \"chat\"",
                &["key \"subprotocols\"", "array of strings"],
            ),
            ("subprotocols = [1]", &["key \"subprotocols\"", "integer 1"]),
            (
                "log_level = \"loud\"",
                &["key \"log_level\"", "error, warn, info"],
            ),
            (
                "handshake_timeout = 1.5",
                &["key \"handshake_timeout\"", "float"],
            ),
        ] {
            let e = file_err(toml);
            for n in needles {
                assert!(e.contains(n), "{toml}: {e}");
            }
        }
    }

    #[test]
    fn toml_syntax_error_is_one_line_with_position() {
        let e = file_err("workers = 2\nlisten = \n");
        assert!(
            e.starts_with("config error: invalid TOML in /etc/wsrelay.toml line 2"),
            "{e}"
        );
        let e = file_err("workers = 1\nworkers = 2\n");
        assert!(e.contains("invalid TOML"), "{e}");
    }

    #[test]
    fn precedence_flags_over_file_over_defaults() {
        let path = temp_file(
            "workers = 3\nping_interval = \"1m\"\nmax_frame_bytes = \"64KiB\"\necho_self = true\nsubprotocols = [\"a\", \"b\"]\n",
        );
        let p = path.to_str().unwrap();
        let c = run(&[
            "--config",
            p,
            "--workers",
            "5",
            "--echo-self=false",
            "--subprotocols",
            "c",
        ])
        .unwrap();
        assert_eq!(c.workers, 5); // flag beats file
        assert!(!c.echo_self); // flag beats file
        assert_eq!(c.subprotocols, vec!["c".to_string()]); // flag replaces list
        assert_eq!(c.ping_interval, Duration::from_secs(60)); // file beats default
        assert_eq!(c.max_frame_bytes, 64 * 1024); // file beats default
        assert_eq!(c.max_message_bytes, 1 << 20); // default
                                                  // Flag order relative to --config does not matter; last repeated flag wins.
        let c = run(&["--workers", "5", "--workers", "7", "-c", p]).unwrap();
        assert_eq!(c.workers, 7);
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn flags_fix_invalid_file_values() {
        let path = temp_file("workers = 5000\n");
        let p = path.to_str().unwrap();
        assert!(err(&["-c", p]).contains("key \"workers\""));
        assert_eq!(run(&["-c", p, "--workers", "8"]).unwrap().workers, 8);
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn bool_and_list_flag_forms() {
        assert!(run(&["--echo-self"]).unwrap().echo_self);
        assert!(run(&["--echo-self", "true"]).unwrap().echo_self);
        assert!(run(&["--echo-self=yes"]).unwrap().echo_self);
        assert!(!run(&["--metrics", "false"]).unwrap().metrics);
        assert!(!run(&["--metrics=off"]).unwrap().metrics);
        let c = run(&["--pin-cores", "--echo-self", "--metrics=0"]).unwrap();
        assert!(c.pin_cores && c.echo_self && !c.metrics);
        let c = run(&["--allowed-origins", "https://a.example, https://b.example"]).unwrap();
        assert_eq!(
            c.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        let path = temp_file("subprotocols = [\"x\"]\n");
        let c = run(&["-c", path.to_str().unwrap(), "--subprotocols", ""]).unwrap();
        assert!(c.subprotocols.is_empty());
        std::fs::remove_file(path).ok();
    }

    #[test]
    fn bad_flags_name_the_key() {
        assert_eq!(
            err(&["--ping-interval", "30x"]),
            "config error: key \"ping_interval\" (flag --ping-interval): invalid duration \"30x\" (unknown unit \"x\"; expected e.g. 30s, 500ms)"
        );
        assert!(err(&["--max-frame-bytes", "lots"]).contains("key \"max_frame_bytes\""));
        assert_eq!(
            err(&["--workers", "-1"]),
            "config error: key \"workers\" (flag --workers): invalid number \"-1\" (expected a non-negative integer)"
        );
        assert!(err(&["--ping-interval", "-5s"]).contains("must not be negative"));
        // A missing value is reported, not silently filled with the next flag.
        assert!(err(&["--workers", "--echo-self"]).contains("key \"workers\""));
        assert!(err(&["--echo-self=maybe"]).contains("key \"echo_self\""));
        assert!(err(&["--log-level", "loud"]).contains("key \"log_level\""));
        assert!(err(&["--slow-consumer", "block"]).contains("key \"slow_consumer\""));
        let e = err(&["--pign-interval", "30s"]);
        assert!(
            e.contains("--pign-interval") && e.contains("--ping-interval"),
            "{e}"
        );
        let e = err(&["--workers"]);
        assert!(e.contains("--workers"), "{e}");
        let e = err(&["stray"]);
        assert!(e.contains("stray"), "{e}");
        let e = err(&["--config", "/nonexistent/wsrelay-no-such.toml"]);
        assert!(
            e.contains("cannot read config file /nonexistent/wsrelay-no-such.toml"),
            "{e}"
        );
    }

    #[test]
    fn help_and_version_exit_zero() {
        for flag in ["--help", "-h", "--version", "-V"] {
            let e = parse_args(args(&[flag])).expect_err(flag);
            assert_eq!(e.exit_code(), 0, "{flag}");
            assert!(e.is_help());
            assert!(e.to_string().contains("wsrelay"), "{flag}: {e}");
        }
        let help = parse_args(args(&["--help"])).unwrap_err().to_string();
        assert!(help.contains("--max-frame-bytes <SIZE>"), "{help}");
        assert!(help.contains("[default: 1MiB]"), "{help}");
        assert!(help.contains("[default: 30s]"), "{help}");
        assert!(help.contains("Precedence"), "{help}");
    }

    #[test]
    fn validate_cross_field_checks() {
        let check = |f: &dyn Fn(&mut Config), key: &str| {
            let mut c = Config::default();
            f(&mut c);
            let e = c.validate().expect_err(key).to_string();
            assert!(e.contains(&format!("key \"{key}\"")), "{key}: {e}");
            assert!(!e.contains('\n'));
        };
        check(&|c| c.workers = MAX_WORKERS + 1, "workers");
        check(&|c| c.max_frame_bytes = 0, "max_frame_bytes");
        check(&|c| c.max_connections = 0, "max_connections");
        check(&|c| c.max_room_name_bytes = 0, "max_room_name_bytes");
        check(&|c| c.max_room_name_bytes = 1025, "max_room_name_bytes");
        check(
            &|c| c.handshake_timeout = Duration::ZERO,
            "handshake_timeout",
        );
        check(&|c| c.pong_timeout = Duration::ZERO, "pong_timeout");
        check(&|c| c.rate_limit_burst = 10, "rate_limit_burst");
        check(
            &|c| c.subprotocols = vec!["bad token".into()],
            "subprotocols",
        );
        check(
            &|c| c.subprotocols = vec!["a".into(), "a".into()],
            "subprotocols",
        );
        check(
            &|c| c.allowed_origins = vec![String::new()],
            "allowed_origins",
        );
        check(&|c| c.publish_token = " secret".into(), "publish_token");
        check(&|c| c.log_level = "verbose".into(), "log_level");

        let mut c = Config {
            workers: MAX_WORKERS,
            max_room_name_bytes: 1024,
            ping_interval: Duration::ZERO,
            pong_timeout: Duration::ZERO, // fine: heartbeats are off
            rate_limit_messages: 100,
            ..Config::default()
        };
        assert_eq!(c.effective_rate_limit_burst(), 100);
        c.rate_limit_burst = 10;
        assert_eq!(c.effective_rate_limit_burst(), 10);
        c.validate().unwrap();
    }

    fn non_default() -> Config {
        Config {
            listen: "[::1]:8080".parse().unwrap(),
            workers: 7,
            pin_cores: true,
            max_connections: 12_345,
            max_connections_per_ip: 17,
            max_request_head_bytes: 1500,
            max_request_headers: 33,
            max_frame_bytes: 2 << 20,
            max_message_bytes: 3_000_000,
            max_outbound_bytes: 1,
            slow_consumer: SlowConsumerPolicy::Drop,
            fanout_queue_len: 99,
            read_buffer_bytes: 16 << 10,
            read_budget_bytes: 1 << 30,
            buffer_pool_size: 0,
            send_buffer_bytes: 12_345,
            handshake_timeout: Duration::from_millis(2500),
            close_timeout: Duration::ZERO,
            ping_interval: Duration::from_secs(90),
            pong_timeout: Duration::from_micros(7),
            shutdown_timeout: Duration::from_secs(7200),
            stats_interval: Duration::ZERO,
            echo_self: true,
            subprotocols: vec!["chat.v2".into(), "json".into()],
            allowed_origins: vec!["https://a.example".into(), "http://b.example:8080".into()],
            max_rooms: 5,
            max_room_name_bytes: 1024,
            rate_limit_messages: 50,
            rate_limit_burst: 200,
            rate_limit_bytes: 1_000_000,
            rate_limit_policy: RateLimitPolicy::Drop,
            publish_token: "s3cr\"et\\'#".into(),
            metrics: false,
            log_level: "trace".into(),
        }
    }

    #[test]
    fn to_toml_round_trips() {
        for c in [Config::default(), non_default()] {
            let text = c.to_toml();
            assert_eq!(
                Config::from_toml_str(&text, "printed").unwrap(),
                c,
                "{text}"
            );
        }
        // Values beyond TOML's i64 range still round-trip (as strings).
        let c = Config {
            max_connections: usize::MAX,
            max_frame_bytes: usize::MAX,
            ..Config::default()
        };
        assert_eq!(Config::from_toml_str(&c.to_toml(), "printed").unwrap(), c);
        // Every field in non_default() differs from the default, so a key
        // missing from to_toml would fail the round trip above.
        let (d, n) = (Config::default().entries(), non_default().entries());
        for ((k, a), (_, b)) in d.iter().zip(&n) {
            assert_ne!(a, b, "non_default() must change {k}");
        }
    }

    #[test]
    fn print_config_command_round_trips() {
        let path = temp_file("ping_interval = \"45s\"\npublish_token = \"tok\"\n");
        let p = path.to_str().unwrap();
        let cmd = parse_args(args(&[
            "--print-config",
            "-c",
            p,
            "--max-frame-bytes",
            "64KiB",
        ]))
        .unwrap();
        let Command::PrintConfig(c) = cmd else {
            panic!("expected PrintConfig")
        };
        assert_eq!(c.workers, 0, "print-config keeps the stored workers value");
        assert_eq!(c.ping_interval, Duration::from_secs(45));
        assert_eq!(c.max_frame_bytes, 64 << 10);
        let text = c.to_toml();
        assert!(text.contains("max_frame_bytes = \"64KiB\""), "{text}");
        assert!(text.contains("ping_interval = \"45s\""), "{text}");
        assert_eq!(Config::from_toml_str(&text, "printed").unwrap(), c);
        std::fs::remove_file(path).ok();
    }
}
