//! Relay configuration: built-in defaults, overlaid by a TOML file
//! (`--config FILE`), by `WSRELAY_<KEY>` environment variables, and by
//! command-line flags, in that order of precedence (flags win).
//!
//! Every key is declared once, in [`keys`]: name, Rust type, value kind,
//! default, range and one-line help. The `Config` struct, the TOML reader,
//! the flags (`max_frame_bytes` ⇔ `--max-frame-bytes`), the environment
//! variables (`max_frame_bytes` ⇔ `WSRELAY_MAX_FRAME_BYTES`), `--help`,
//! `--print-config` and the reference table in `docs/configuration.md` are
//! generated from that table. Value syntax (same in all three sources):
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
//! Errors are a single line naming the offending key (both keys for a
//! conflict) so that `main` can print them verbatim and exit with
//! [`ConfigError::exit_code`].

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use toml::{Spanned, Value};

mod cli;
#[cfg(test)]
mod docs;
mod keys;
mod namespaces;
#[cfg(test)]
mod tests;
mod values;

pub use cli::{parse_args, parse_args_with_env};
pub use keys::Config;
pub use namespaces::{ChannelOptions, Namespace};
pub use values::{format_duration, format_size, parse_duration, parse_size};

/// Upper bound for `workers`: more event loops than this is a typo, not a
/// deployment (and each one costs a thread plus its buffers).
pub const MAX_WORKERS: usize = 64;
/// Upper bound for `max_room_name_bytes`: room names are copied into every
/// routing table entry and log line.
pub const MAX_ROOM_NAME_LIMIT: usize = 1024;
/// Accepted `log_level` values, least to most verbose.
pub const LOG_LEVELS: [&str; 5] = ["error", "warn", "info", "debug", "trace"];
/// Accepted `log_format` values.
pub const LOG_FORMATS: [&str; 2] = ["text", "json"];
/// Route groups `public_routes` may keep on the public listener when
/// `admin_listen` is set (WebSocket routes always stay there).
pub const PUBLIC_ROUTE_GROUPS: [&str; 4] = ["health", "metrics", "publish", "api"];
/// Prefix of the environment variables that set keys (`WSRELAY_WORKERS`).
pub const ENV_PREFIX: &str = "WSRELAY_";

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

    fn help(text: String) -> ConfigError {
        ConfigError(ErrorKind::Help(text))
    }

    fn key(key: &str, msg: impl fmt::Display) -> ConfigError {
        ConfigError::invalid(format!("key \"{key}\": {msg}"))
    }

    /// A conflict between two keys; the message names both.
    fn keys(key: &str, other: &str, msg: impl fmt::Display) -> ConfigError {
        ConfigError::invalid(format!(
            "key \"{key}\" conflicts with key \"{other}\": {msg}"
        ))
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

    /// The configuration as TOML (with a help comment per key) that
    /// [`Config::from_toml_str`] parses back into an identical `Config`.
    /// `workers` is printed as stored (0 stays 0), not resolved.
    pub fn to_toml(&self) -> String {
        let mut out = String::from(
            "# wsrelay configuration (generated by --print-config).\n\
             # Durations: 30s, 500ms, 2m, 1h, 0. Sizes: 512, 64KiB, 1MiB, 1MB.\n",
        );
        for ((key, value), info) in self.entries().into_iter().zip(keys::key_infos()) {
            out.push_str(&format!(
                "\n# {} (range: {})\n{key} = {value}\n",
                info.help,
                info.range.replace('`', "")
            ));
        }
        out
    }

    /// Parses TOML file contents over the defaults. `origin` (usually the file
    /// path) is only used in error messages. Does not call [`Config::validate`],
    /// because the environment and flags may still override an out-of-range
    /// file value.
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
            match self.set_toml(&key, value.get_ref()) {
                Some(Ok(())) => {}
                None => {
                    let hint = match suggest(&key) {
                        Some(k) => format!("; did you mean \"{k}\"?"),
                        None => String::new(),
                    };
                    return Err(ConfigError::invalid(format!(
                        "unknown key \"{key}\" in {origin} ({at}{hint})"
                    )));
                }
                Some(Err(msg)) => {
                    return Err(ConfigError::invalid(format!(
                        "key \"{key}\" in {origin} ({at}): {msg}"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Range checks (declared with each key in the key table), then
    /// cross-key checks. The error names the key at fault, or both keys.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.check_keys()?;
        self.check_cross_keys()
    }

    /// Rules that involve two keys (documented in docs/configuration.md,
    /// "Rules between keys").
    fn check_cross_keys(&self) -> Result<(), ConfigError> {
        let size = |n: usize| format_size(n);
        if self.max_frame_bytes > self.max_message_bytes {
            return Err(ConfigError::keys(
                "max_frame_bytes",
                "max_message_bytes",
                format!(
                    "a {} frame could never be accepted into a message of at most {}; raise max_message_bytes or lower max_frame_bytes",
                    size(self.max_frame_bytes),
                    size(self.max_message_bytes)
                ),
            ));
        }
        if self.rate_limit_bytes != 0 && self.rate_limit_bytes < self.max_message_bytes {
            return Err(ConfigError::keys(
                "rate_limit_bytes",
                "max_message_bytes",
                format!(
                    "the byte bucket holds {} (one second's worth), so a message of up to {} could never pass; make rate_limit_bytes at least max_message_bytes",
                    size(self.rate_limit_bytes),
                    size(self.max_message_bytes)
                ),
            ));
        }
        if !self.ping_interval.is_zero() && self.pong_timeout.is_zero() {
            return Err(ConfigError::keys(
                "pong_timeout",
                "ping_interval",
                "must be greater than 0 while heartbeats are on (set ping_interval = 0 to turn them off)",
            ));
        }
        ChannelOptions::of(self)
            .check()
            .map_err(|m| ConfigError::keys("history_size", "history_ttl", m))?;
        if self.proxy_protocol && self.trusted_proxies.is_empty() {
            return Err(ConfigError::keys(
                "proxy_protocol",
                "trusted_proxies",
                "PROXY headers are accepted only from trusted_proxies, which is empty, so every connection would be refused; list the proxies' addresses",
            ));
        }
        if self.proxy_protocol && self.proxy_header_timeout > self.handshake_timeout {
            return Err(ConfigError::keys(
                "proxy_header_timeout",
                "handshake_timeout",
                format!(
                    "is {} but the whole handshake (PROXY header included) must finish within handshake_timeout ({}); lower it or raise handshake_timeout",
                    format_duration(self.proxy_header_timeout),
                    format_duration(self.handshake_timeout)
                ),
            ));
        }
        if let Some(admin) = self.admin_listen {
            if admin == self.listen && admin.port() != 0 {
                return Err(ConfigError::keys(
                    "admin_listen",
                    "listen",
                    format!("both are {admin}; the admin listener needs an address of its own (e.g. 127.0.0.1:9002)"),
                ));
            }
        } else if !self.public_routes.is_empty() {
            return Err(ConfigError::keys(
                "public_routes",
                "admin_listen",
                "has no effect without admin_listen (one listener then serves every route); set admin_listen or remove public_routes",
            ));
        }
        if self.tls_listen.is_some() {
            for (key, v) in [("tls_cert", &self.tls_cert), ("tls_key", &self.tls_key)] {
                if v.is_empty() {
                    return Err(ConfigError::keys(
                        "tls_listen",
                        key,
                        format!("is set but {key} is empty; give the PEM file paths of the certificate chain and its key"),
                    ));
                }
            }
            if self.tls_listen == Some(self.listen) && self.listen.port() != 0 {
                return Err(ConfigError::keys(
                    "tls_listen",
                    "listen",
                    format!("both are {}; the TLS listener needs an address of its own (e.g. 0.0.0.0:443)", self.listen),
                ));
            }
        }
        if self.redis_tls_cert.is_empty() != self.redis_tls_key.is_empty() {
            let (set, empty) = if self.redis_tls_key.is_empty() {
                ("redis_tls_cert", "redis_tls_key")
            } else {
                ("redis_tls_key", "redis_tls_cert")
            };
            return Err(ConfigError::keys(
                set,
                empty,
                format!("is set but {empty} is empty; a client certificate for Redis needs both the chain and its key"),
            ));
        }
        if self.broker == "redis"
            && self.redis_tls_ca.is_empty()
            && self.redis_url.iter().any(|u| crate::broker::is_tls_url(u))
        {
            return Err(ConfigError::keys(
                "redis_url",
                "redis_tls_ca",
                "has a rediss:// URL but redis_tls_ca is empty; give the PEM file of the CA that signed the Redis server's certificate (the system's certificate store is not used)",
            ));
        }
        if self.rate_limit_burst != 0 && self.rate_limit_messages == 0 {
            return Err(ConfigError::keys(
                "rate_limit_burst",
                "rate_limit_messages",
                format!(
                    "is {} but rate_limit_messages is 0 (off); set rate_limit_messages too",
                    self.rate_limit_burst
                ),
            ));
        }
        Ok(())
    }
}

/// "line L column C" for a byte offset, 1-based, for file error messages.
fn position(text: &str, offset: usize) -> String {
    let before = text.get(..offset.min(text.len())).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("line {line} column {column}")
}

/// Closest known key to a misspelled one (`-` read as `_`, any case), if it
/// is plausibly a typo: at most 3 edits (Damerau-Levenshtein, so a swap of
/// two letters is one edit).
fn suggest(unknown: &str) -> Option<&'static str> {
    let normalized = unknown.replace('-', "_").to_ascii_lowercase();
    keys::KEY_NAMES
        .iter()
        .map(|k| (strsim::damerau_levenshtein(&normalized, k), *k))
        .filter(|(d, _)| *d <= 3)
        .min()
        .map(|(_, k)| k)
}
