//! What the binary says in its log, as pure functions (the binary only
//! writes them): the start-up line, the open-files warning, whether a
//! periodic stats line is worth printing, and the `log_format = "json"`
//! line format.

use crate::config::{format_duration, format_size, Config};
use crate::metrics::Totals;
use serde::Serialize;
use std::net::SocketAddr;

/// What the start-up line reports besides the configuration.
pub struct Started {
    pub version: &'static str,
    /// The public listener's bound address.
    pub addr: SocketAddr,
    /// The admin listener's bound address, if any.
    pub admin: Option<SocketAddr>,
    /// The TLS listener's bound address, if any (`tls_listen`).
    pub tls: Option<SocketAddr>,
    pub workers: usize,
    pub reuseport: bool,
}

/// The start-up line: where the relay listens, where its metrics are, how
/// to stop it, and the limits in force.
pub fn startup_line(s: &Started, c: &Config) -> String {
    let mut line = format!(
        "wsrelay {} listening on ws://{} ({} workers{}, {})",
        s.version,
        s.addr,
        s.workers,
        if c.pin_cores { ", pinned" } else { "" },
        if s.reuseport {
            "SO_REUSEPORT"
        } else {
            "shared listener"
        },
    );
    if let Some(tls) = s.tls {
        line.push_str(&format!(" and wss://{tls}"));
    }
    if c.compression {
        line.push_str(&format!(
            "; permessage-deflate offered (level {}, from {})",
            c.compression_level,
            format_size(c.compression_min_bytes)
        ));
    }
    // The admin listener always serves /metrics; the public one without
    // an admin listener, or when `public_routes` keeps it.
    let metrics_at = s.admin.unwrap_or(s.addr);
    if let Some(admin) = s.admin {
        line.push_str(&format!(
            "; admin (health, metrics, publish, API) on http://{admin}"
        ));
    }
    if c.metrics {
        line.push_str(&format!("; metrics at http://{metrics_at}/metrics"));
    } else {
        line.push_str("; metrics off");
    }
    line.push_str(&format!(
        "; stop with Ctrl-C or SIGTERM (connections get close 1001, up to shutdown_timeout={}; a second signal exits at once)",
        format_duration(c.shutdown_timeout)
    ));
    line.push_str(&format!(
        "; max_connections={} max_frame_bytes={} max_message_bytes={} max_outbound_bytes={} slow_consumer={} ping_interval={} pong_timeout={}",
        c.max_connections,
        format_size(c.max_frame_bytes),
        format_size(c.max_message_bytes),
        format_size(c.max_outbound_bytes),
        c.slow_consumer,
        format_duration(c.ping_interval),
        format_duration(c.pong_timeout),
    ));
    line
}

/// The warning when the open-files limit (`soft`, after raising it to
/// `hard`) cannot hold `max_connections` plus the relay's own descriptors
/// (`overhead`); `None` when it can. One line that says what to do.
pub fn nofile_warning(
    soft: u64,
    hard: u64,
    max_connections: usize,
    overhead: u64,
) -> Option<String> {
    let need = max_connections as u64 + overhead;
    if soft >= need {
        return None;
    }
    let room = soft.saturating_sub(overhead);
    let lower = if room > 0 {
        format!(" or lower max_connections to {room}")
    } else {
        String::new()
    };
    Some(format!(
        "open-files limit is {soft} (hard limit {hard}): room for about {room} connections, fewer than max_connections = {max_connections}; raise it to {need} (systemd: LimitNOFILE={need}; shell, as root: ulimit -n {need}){lower}"
    ))
}

/// What makes a stats line worth printing: connections, rooms and
/// messages. Bytes are left out on purpose: heartbeats and requests on
/// kept-alive connections (probes, scrapes) move them without anything
/// happening to the relay's clients.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Activity {
    connections_open: u64,
    connections_accepted: u64,
    rooms: usize,
    messages_in: u64,
    messages_out: u64,
    fanout_deliveries: u64,
    drops: u64,
    slow_consumer_closes: u64,
    ping_timeouts: u64,
}

impl Activity {
    pub fn of(t: &Totals, rooms: usize) -> Activity {
        Activity {
            connections_open: t.connections_open,
            connections_accepted: t.connections_accepted,
            rooms,
            messages_in: t.messages_in,
            messages_out: t.messages_out,
            fanout_deliveries: t.fanout_deliveries,
            drops: t.drops,
            slow_consumer_closes: t.slow_consumer_closes,
            ping_timeouts: t.ping_timeouts,
        }
    }
}

/// The periodic stats line over `secs` seconds from `prev` to `now`, or
/// `None` when nothing happened in between (see [`Activity`]): an idle
/// relay does not fill its log with identical lines.
pub fn stats_line(
    prev: &Totals,
    prev_rooms: usize,
    now: &Totals,
    rooms: usize,
    secs: f64,
) -> Option<String> {
    if Activity::of(prev, prev_rooms) == Activity::of(now, rooms) {
        return None;
    }
    let secs = secs.max(1e-3);
    let rate = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / secs;
    let (p, n) = (prev, now);
    Some(format!(
        "stats: connections={} rooms={} msgs_in/s={:.0} msgs_out/s={:.0} bytes_in/s={:.0} bytes_out/s={:.0} fanout_deliveries/s={:.0} drops={} slow_consumer_closes={} ping_timeouts={}",
        n.connections_open,
        rooms,
        rate(p.messages_in, n.messages_in),
        rate(p.messages_out, n.messages_out),
        rate(p.bytes_in, n.bytes_in),
        rate(p.bytes_out, n.bytes_out),
        rate(p.fanout_deliveries, n.fanout_deliveries),
        n.drops,
        n.slow_consumer_closes,
        n.ping_timeouts,
    ))
}

/// One log record as a JSON object, in this field order.
#[derive(Serialize)]
struct JsonRecord<'a> {
    ts: &'a str,
    level: &'a str,
    target: &'a str,
    msg: &'a str,
}

/// A log record as one line of JSON (`log_format = "json"`): `ts`
/// (RFC 3339, UTC), `level` (lower case, as `log_level` spells it),
/// `target` (the module) and `msg`. serde_json escapes newlines and
/// control characters, so a record is always exactly one line.
pub fn json_line(ts: &str, level: log::Level, target: &str, msg: &str) -> String {
    let level = level.as_str().to_ascii_lowercase();
    let record = JsonRecord {
        ts,
        level: &level,
        target,
        msg,
    };
    // Serializing a struct of strings cannot fail.
    serde_json::to_string(&record).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn started(admin: Option<&str>) -> Started {
        Started {
            version: "9.9.9",
            addr: "127.0.0.1:9001".parse().unwrap(),
            admin: admin.map(|a| a.parse().unwrap()),
            tls: None,
            workers: 2,
            reuseport: true,
        }
    }

    #[test]
    fn startup_line_says_where_metrics_are_and_how_to_stop() {
        let c = Config::default();
        let line = startup_line(&started(None), &c);
        assert!(
            line.starts_with(
                "wsrelay 9.9.9 listening on ws://127.0.0.1:9001 (2 workers, SO_REUSEPORT)"
            ),
            "{line}"
        );
        assert!(
            line.contains("metrics at http://127.0.0.1:9001/metrics"),
            "{line}"
        );
        assert!(
            line.contains("stop with Ctrl-C or SIGTERM (connections get close 1001, up to shutdown_timeout=5s"),
            "{line}"
        );
        assert!(line.contains("max_connections=100000"), "{line}");
        assert!(!line.contains('\n'));

        let line = startup_line(&started(Some("127.0.0.1:9002")), &c);
        assert!(
            line.contains("admin (health, metrics, publish, API) on http://127.0.0.1:9002"),
            "{line}"
        );
        assert!(
            line.contains("metrics at http://127.0.0.1:9002/metrics"),
            "{line}"
        );

        let c = Config {
            metrics: false,
            shutdown_timeout: Duration::from_secs(30),
            ..Config::default()
        };
        let line = startup_line(&started(None), &c);
        assert!(line.contains("; metrics off;"), "{line}");
        assert!(line.contains("shutdown_timeout=30s"), "{line}");
        assert!(
            !line.contains("wss://") && !line.contains("deflate"),
            "{line}"
        );

        let c = Config {
            compression: true,
            ..Config::default()
        };
        let s = Started {
            tls: Some("127.0.0.1:9443".parse().unwrap()),
            ..started(None)
        };
        let line = startup_line(&s, &c);
        assert!(
            line.starts_with(
                "wsrelay 9.9.9 listening on ws://127.0.0.1:9001 (2 workers, SO_REUSEPORT) and wss://127.0.0.1:9443;"
            ),
            "{line}"
        );
        assert!(
            line.contains("; permessage-deflate offered (level "),
            "{line}"
        );
    }

    #[test]
    fn nofile_warning_only_when_the_limit_bites() {
        assert_eq!(nofile_warning(20_000, 20_000, 10_000, 70), None);
        assert_eq!(nofile_warning(10_070, 10_070, 10_000, 70), None);
        let w = nofile_warning(10_069, 10_069, 10_000, 70).expect("one short");
        assert_eq!(
            w,
            "open-files limit is 10069 (hard limit 10069): room for about 9999 connections, fewer than max_connections = 10000; raise it to 10070 (systemd: LimitNOFILE=10070; shell, as root: ulimit -n 10070) or lower max_connections to 9999"
        );
        // No room at all: lowering max_connections is no advice.
        let w = nofile_warning(64, 64, 100_000, 70).unwrap();
        assert!(
            w.starts_with("open-files limit is 64 (hard limit 64): room for about 0 connections"),
            "{w}"
        );
        assert!(w.ends_with("ulimit -n 100070)"), "{w}");
    }

    fn totals(f: impl FnOnce(&mut Totals)) -> Totals {
        let mut t = Totals {
            connections_open: 10,
            connections_accepted: 12,
            messages_in: 100,
            messages_out: 1000,
            bytes_in: 5000,
            bytes_out: 50_000,
            ..Totals::default()
        };
        f(&mut t);
        t
    }

    #[test]
    fn stats_line_is_skipped_when_nothing_happened() {
        let prev = totals(|_| {});
        assert_eq!(stats_line(&prev, 3, &prev, 3, 10.0), None);
        // Heartbeats and kept-alive scrapes move bytes only: still quiet.
        let pings = totals(|t| {
            t.bytes_in += 60;
            t.bytes_out += 60;
        });
        assert_eq!(stats_line(&prev, 3, &pings, 3, 10.0), None);
        // Anything else is worth a line.
        let changes: [fn(&mut Totals); 8] = [
            |t| t.connections_open -= 1,
            |t| t.connections_accepted += 1,
            |t| t.messages_in += 1,
            |t| t.messages_out += 1,
            |t| t.fanout_deliveries += 1,
            |t| t.drops += 1,
            |t| t.slow_consumer_closes += 1,
            |t| t.ping_timeouts += 1,
        ];
        for change in changes {
            assert!(stats_line(&prev, 3, &totals(change), 3, 10.0).is_some());
        }
        assert!(
            stats_line(&prev, 3, &prev, 4, 10.0).is_some(),
            "a room opened"
        );
        let now = totals(|t| t.messages_in += 50);
        assert_eq!(
            stats_line(&prev, 3, &now, 3, 10.0).unwrap(),
            "stats: connections=10 rooms=3 msgs_in/s=5 msgs_out/s=0 bytes_in/s=0 bytes_out/s=0 fanout_deliveries/s=0 drops=0 slow_consumer_closes=0 ping_timeouts=0"
        );
    }

    #[test]
    fn json_lines_are_one_object_per_line() {
        let line = json_line(
            "2026-12-05T01:10:38.123Z",
            log::Level::Warn,
            "wsrelay::server::worker",
            "accept failed: \"too many\"\nsecond line\u{1}",
        );
        assert_eq!(
            line,
            r#"{"ts":"2026-12-05T01:10:38.123Z","level":"warn","target":"wsrelay::server::worker","msg":"accept failed: \"too many\"\nsecond line\u0001"}"#
        );
        assert!(!line.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["msg"], "accept failed: \"too many\"\nsecond line\u{1}");
        assert_eq!(v["level"], "warn");
    }
}
