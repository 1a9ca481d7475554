//! Command line.

use crate::clock::parse_duration;
use clap::{ArgAction, Args, Parser, Subcommand};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

fn secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// One URL serializes as a string (as before several were allowed), more
/// as a list.
fn one_or_many<S: serde::Serializer>(v: &[String], s: S) -> Result<S::Ok, S::Error> {
    match v {
        [one] => s.serialize_str(one),
        many => serde::Serialize::serialize(many, s),
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "wsrelay-load",
    version,
    about = "WebSocket load generator for wsrelay (loopback only)",
    long_about = "WebSocket load generator for wsrelay and the reference peers: mio event loops, \
                  one per --threads, the wsrelay protocol core in client mode. Targets loopback \
                  only; every run is bounded by --duration (and --max-messages) and stops by itself. \
                  See docs/loadtest.md."
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct Common {
    /// Worker threads, each with its own mio Poll and share of connections.
    #[arg(long, global = true, default_value_t = 1)]
    pub threads: usize,
    /// Server base URL (loopback only): ws:// or wss:// (TLS: needs
    /// --ca-file or --insecure); a path here prefixes every route.
    /// Repeat for several nodes of a cluster: receiving connections are
    /// spread over them (round robin per room/channel, or --split), and
    /// the report gains a per-node section.
    #[arg(long, global = true, default_value = "ws://127.0.0.1:9001", action = ArgAction::Append)]
    #[serde(serialize_with = "one_or_many")]
    pub url: Vec<String>,
    /// fanout, pubsub: node(s) the publishers connect to (repeatable;
    /// publisher k uses the (k mod n)-th); default: the first --url. A URL
    /// that is not a --url is a node that only gets publishers.
    #[arg(long, global = true, action = ArgAction::Append)]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub publish_url: Vec<String>,
    /// With several --url: receiving connections per --url, in order,
    /// e.g. `1000,1000,1000` (must add up to the receivers); default:
    /// round robin.
    #[arg(long, global = true)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub split: Option<String>,
    /// wss://: trust the server certificates this CA (PEM file) signed.
    /// The server name checked (and sent as SNI) is the URL's host.
    #[arg(long, global = true)]
    pub ca_file: Option<PathBuf>,
    /// wss://: accept ANY server certificate, unverified. FOR TESTS ONLY
    /// (self-signed test certificates): it defeats what TLS is for.
    #[arg(long, global = true, conflicts_with = "ca_file")]
    pub insecure: bool,
    /// wss://: resume TLS sessions (tickets) from an in-memory cache shared
    /// by all workers (up to 4,096 tickets per server), so reconnects
    /// (churn) make abbreviated handshakes. Off by default: every
    /// connection makes a full handshake.
    #[arg(long, global = true)]
    pub tls_resume: bool,
    /// Offer permessage-deflate (client_no_context_takeover;
    /// server_no_context_takeover) on every connection; compress what we
    /// send and inflate what we receive where the server accepted. The
    /// report counts connections with and without it, and wire bytes
    /// against payload bytes.
    #[arg(long, global = true)]
    pub deflate: bool,
    /// How long load is applied (after --warmup).
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "secs")]
    pub duration: Duration,
    /// Cap on messages sent in total (churn: on cycles); stops early.
    #[arg(long, global = true)]
    pub max_messages: Option<u64>,
    /// Pause between the connect phase and the load. For clusters: a
    /// node subscribes to the broker asynchronously when a channel gets
    /// its first local member, so publications sent before the broker
    /// confirmed reach only the publisher's node (counted as lost).
    #[arg(long, global = true, default_value = "0s", value_parser = parse_duration)]
    #[serde(serialize_with = "secs", skip_serializing_if = "Duration::is_zero")]
    pub settle: Duration,
    /// Load applied before measuring starts; excluded from the figures.
    #[arg(long, global = true, default_value = "0s", value_parser = parse_duration)]
    #[serde(serialize_with = "secs")]
    pub warmup: Duration,
    /// Grace period after sending stops for in-flight messages, before
    /// counting loss (ends early once everything expected arrived).
    #[arg(long, global = true, default_value = "1s", value_parser = parse_duration)]
    #[serde(serialize_with = "secs")]
    pub drain: Duration,
    /// Write every figure as JSON to this file.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// Write an SVG chart of received msgs/s and p99 per second.
    #[arg(long, global = true)]
    pub plot: Option<PathBuf>,
    /// Source addresses to bind before connecting, spread round-robin:
    /// `127.0.0.1-127.0.0.16` or a comma list. Needed past ~28k
    /// connections to one server address (ephemeral ports).
    #[arg(long, global = true)]
    pub source: Option<String>,
    /// New connections per second, per thread (paces the handshakes so
    /// the server's accept backlog is not overrun).
    #[arg(long, global = true, default_value_t = 2000.0)]
    pub connect_rate: f64,
    /// Most connection attempts in progress at once, per thread.
    #[arg(long, global = true, default_value_t = 512)]
    pub connect_concurrency: usize,
    /// Time allowed for TCP connect plus the WebSocket handshake.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "secs")]
    pub connect_timeout: Duration,
    /// Time allowed for the server's answer to our close frame.
    #[arg(long, global = true, default_value = "5s", value_parser = parse_duration)]
    #[serde(serialize_with = "secs")]
    pub close_timeout: Duration,
    /// After the close handshake, time allowed for the server to close
    /// TCP before we do (RFC 6455 §7.1.1: the server closes first).
    #[arg(long, global = true, default_value = "200ms", value_parser = parse_duration)]
    #[serde(serialize_with = "secs")]
    pub fin_wait: Duration,
    /// Open-loop send granularity: messages due within one tick leave in
    /// one pass (one write per connection). Smaller is more exact (see
    /// the send-lag figure) but costs timer syscalls.
    #[arg(long, global = true, default_value = "50us", value_parser = parse_duration)]
    #[serde(serialize_with = "secs")]
    pub tick: Duration,
    /// Exit non-zero when (lost + duplicated + reordered + corrupted) /
    /// expected exceeds this ratio.
    #[arg(long, global = true, default_value_t = 0.0)]
    pub max_loss: f64,
    /// Pin worker i to CPU cpus[i % len], e.g. `--cpus 1` or `--cpus 2,3`.
    #[arg(long, global = true)]
    pub cpus: Option<String>,
    /// Printable text payloads (hex header, letters, no newlines) sent as
    /// text frames, for peers that relay only text or rewrite whitespace;
    /// received messages are also split at '\n' (joined queues).
    #[arg(long, global = true, conflicts_with = "payload")]
    pub text: bool,
    /// Payload kind: `binary` (default), `text` (as --text) or `json`
    /// (market-data-like JSON quotes with fresh values per message, text
    /// frames; at least 91 bytes; for realistic compression figures).
    #[arg(long, global = true, value_enum)]
    pub payload: Option<PayloadKind>,
    /// No per-second progress lines on stderr.
    #[arg(long, short = 'q', global = true)]
    pub quiet: bool,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadKind {
    Binary,
    Text,
    Json,
}

#[derive(Subcommand, Debug, Clone, Serialize)]
pub enum Cmd {
    /// C connections to /echo, each with K messages in flight (closed
    /// loop), or an open-loop total --rate.
    Echo(EchoArgs),
    /// Subscribers and publishers over rooms /rooms/<prefix>-<i>;
    /// publishers send at a fixed total rate (open loop).
    Fanout(FanoutArgs),
    /// Open C connections and hold them idle for --duration.
    Connect(ConnectArgs),
    /// Connect, exchange one message, close; over -c concurrent slots.
    Churn(ChurnArgs),
    /// Centrifugo client protocol v2 (JSON) at /connection/websocket:
    /// subscribers on channels, publishers sending acknowledged publish
    /// commands at a fixed total rate (open loop); loss, duplicates,
    /// order, offsets, recovery after reconnects.
    #[command(name = "pubsub")]
    PubSub(PubSubArgs),
    /// Feed pre-encoded server frames through the receive path (no
    /// sockets) and print the receive capacity of one core.
    #[command(hide = true, name = "selftest-decode")]
    SelftestDecode(SelftestArgs),
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct EchoArgs {
    /// Connections.
    #[arg(short = 'c', long = "connections", default_value_t = 10)]
    pub connections: usize,
    /// Messages kept in flight per connection (closed loop).
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// Message size in bytes (at least 32, the header).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Open loop: total messages/s spread over the connections;
    /// latency is measured from each message's intended send time.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Route to connect to.
    #[arg(long, default_value = "/echo")]
    pub path: String,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct FanoutArgs {
    /// Subscribers (with --all-publish: members, each also publishing).
    #[arg(long, default_value_t = 4)]
    pub subscribers: usize,
    /// Publishers (ignored with --all-publish).
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Rooms; subscribers and publishers are spread round-robin.
    #[arg(long, default_value_t = 1)]
    pub rooms: usize,
    /// Total messages/s over all publishers (open loop).
    #[arg(long, default_value_t = 10000.0)]
    pub rate: f64,
    /// Message size in bytes (at least 32, the header).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Room names are /rooms/<prefix>-<i>.
    #[arg(long, default_value = "load")]
    pub room_prefix: String,
    /// Append ?role=pub / ?role=sub (only for relays that support roles;
    /// without it publishers also receive and those receipts are counted
    /// apart).
    #[arg(long)]
    pub roles: bool,
    /// Every member publishes (and subscribes): --subscribers members.
    #[arg(long)]
    pub all_publish: bool,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct ConnectArgs {
    /// Connections to open (one process holds up to ~19,000 under a
    /// 20,000 open-files limit; run several processes for more).
    #[arg(short = 'c', long = "connections", default_value_t = 1000)]
    pub connections: usize,
    /// Route to connect to.
    #[arg(long, default_value = "/echo")]
    pub path: String,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct ChurnArgs {
    /// Concurrent slots, each looping connect → message → close.
    #[arg(short = 'c', long = "connections", default_value_t = 10)]
    pub connections: usize,
    /// Message size in bytes (at least 32).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// Route to connect to.
    #[arg(long, default_value = "/echo")]
    pub path: String,
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct PubSubArgs {
    /// Subscriber connections (each sends connect, then its subscribes).
    #[arg(long, default_value_t = 100)]
    pub conns: usize,
    /// Subscriptions per subscriber connection, spread evenly over the
    /// channels.
    #[arg(long, default_value_t = 1)]
    pub subs: usize,
    /// Channels, named `<namespace>:c<k>` (`c<k>` without --namespace).
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Publisher connections (connect only, no subscriptions); each
    /// publishes to every channel in turn.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Publications per second over all publishers (open loop).
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Channel namespace (`chat` → channels `chat:c0`, `chat:c1`, ...).
    #[arg(long)]
    pub namespace: Option<String>,
    /// One connection token (JWT) for every connection.
    #[arg(long, conflicts_with = "hmac_secret")]
    #[serde(skip)]
    pub token: Option<String>,
    /// Mint an HS256 connection token per connection (`sub` = `load-<i>`,
    /// one-day `exp`) with this secret. Without --token or this:
    /// anonymous connect (no token).
    #[arg(long)]
    #[serde(skip)]
    pub hmac_secret: Option<String>,
    /// Pad publication data to at least this many bytes (0: no padding,
    /// about 60 bytes).
    #[arg(long, default_value_t = 0)]
    pub size: usize,
    /// Reconnect mode: every this long, drop the TCP connection (no close
    /// frame) of --reconnect-fraction of the subscribers; they come back
    /// after --reconnect-away and resubscribe with recover from the last
    /// publication they saw.
    #[arg(long, value_parser = parse_duration)]
    #[serde(serialize_with = "opt_secs")]
    pub reconnect_every: Option<Duration>,
    /// Share of the subscribers dropped each --reconnect-every.
    #[arg(long, default_value_t = 0.1)]
    pub reconnect_fraction: f64,
    /// How long dropped subscribers stay away.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    #[serde(serialize_with = "secs")]
    pub reconnect_away: Duration,
    /// One-shot recovery benchmark: all subscribers connect and subscribe,
    /// all drop, each publisher publishes exactly N per channel (at
    /// --rate, acknowledged), then all reconnect at once with recover;
    /// reports the time until all are resubscribed, gaps, duplicates and
    /// recovered flags. Channels need history of at least N × publishers.
    #[arg(long, conflicts_with = "reconnect_every")]
    pub recover_burst: Option<u64>,
}

fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_f64(d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

#[derive(Args, Debug, Clone, Serialize)]
pub struct SelftestArgs {
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// The pubsub receive path instead (JSON pub pushes in text frames).
    #[arg(long)]
    pub pubsub: bool,
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    #[serde(serialize_with = "secs")]
    pub time: Duration,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn globals_after_the_subcommand() {
        let c = Cli::try_parse_from([
            "x",
            "fanout",
            "--subscribers",
            "3",
            "--threads",
            "2",
            "--duration",
            "2s",
        ])
        .unwrap();
        assert_eq!(c.common.threads, 2);
        assert_eq!(c.common.duration, Duration::from_secs(2));
        match c.cmd {
            Cmd::Fanout(f) => assert_eq!(f.subscribers, 3),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn tls_deflate_and_payload_flags() {
        let c = Cli::try_parse_from([
            "x",
            "echo",
            "--url",
            "wss://localhost:9443",
            "--ca-file",
            "ca.pem",
            "--tls-resume",
            "--deflate",
            "--payload",
            "json",
        ])
        .unwrap();
        assert_eq!(c.common.ca_file, Some(PathBuf::from("ca.pem")));
        assert!(c.common.tls_resume && c.common.deflate && !c.common.insecure);
        assert_eq!(c.common.payload, Some(PayloadKind::Json));
        let j = serde_json::to_value(&c.common).unwrap();
        assert_eq!(j["payload"], "json");
        assert_eq!(j["deflate"], true);
        // Verification off and a CA at once make no sense.
        assert!(Cli::try_parse_from(["x", "echo", "--insecure", "--ca-file", "a"]).is_err());
        assert!(Cli::try_parse_from(["x", "echo", "--text", "--payload", "json"]).is_err());
        assert!(Cli::try_parse_from(["x", "echo", "--payload", "xml"]).is_err());
        let c = Cli::try_parse_from(["x", "churn", "--insecure"]).unwrap();
        assert!(c.common.insecure && !c.common.deflate && c.common.payload.is_none());
        // --help says loudly what --insecure is for.
        let help = Cli::command().render_long_help().to_string();
        assert!(help.contains("FOR TESTS ONLY"), "{help}");
    }

    #[test]
    fn several_urls_publish_urls_and_split() {
        let c = Cli::try_parse_from(["x", "fanout"]).unwrap();
        assert_eq!(c.common.url, vec!["ws://127.0.0.1:9001".to_string()]);
        let j = serde_json::to_value(&c.common).unwrap();
        // One URL: the JSON is as it always was.
        assert_eq!(j["url"], "ws://127.0.0.1:9001");
        assert!(j.get("publish_url").is_none() && j.get("split").is_none());
        let c = Cli::try_parse_from([
            "x",
            "--url",
            "ws://127.0.0.1:1",
            "--url",
            "ws://127.0.0.1:2",
            "fanout",
            "--publish-url",
            "ws://127.0.0.1:2",
            "--split",
            "2,2",
        ])
        .unwrap();
        assert_eq!(c.common.url.len(), 2);
        assert_eq!(c.common.publish_url, vec!["ws://127.0.0.1:2".to_string()]);
        let j = serde_json::to_value(&c.common).unwrap();
        assert_eq!(j["url"][1], "ws://127.0.0.1:2");
        assert_eq!(j["split"], "2,2");
    }

    #[test]
    fn pubsub_flags() {
        let c = Cli::try_parse_from([
            "x",
            "pubsub",
            "--conns",
            "10",
            "--hmac-secret",
            "s",
            "--reconnect-every",
            "2s",
            "--namespace",
            "chat",
        ])
        .unwrap();
        match &c.cmd {
            Cmd::PubSub(a) => {
                assert_eq!(a.conns, 10);
                assert_eq!(a.reconnect_every, Some(Duration::from_secs(2)));
                // Secrets stay out of the JSON report.
                let j = serde_json::to_value(a).unwrap();
                assert!(j.get("hmac_secret").is_none() && j.get("token").is_none());
                assert_eq!(j["reconnect_every"], 2.0);
            }
            other => panic!("{other:?}"),
        }
        assert!(
            Cli::try_parse_from(["x", "pubsub", "--token", "t", "--hmac-secret", "s"]).is_err()
        );
        assert!(Cli::try_parse_from([
            "x",
            "pubsub",
            "--recover-burst",
            "100",
            "--reconnect-every",
            "1s"
        ])
        .is_err());
    }
}
