//! Per-worker counters, summed only when read.
//!
//! Each worker owns one [`WorkerMetrics`] and is its only writer, so an
//! increment is a plain load and store on a cache line no other core
//! writes (no `lock` prefix, no contention on the message path). Readers
//! (the stats line, `/metrics`) load every worker's counters and sum them.

use crate::protocol::RejectReason;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A counter with a single writer.
#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        // Single writer: load + store is enough and avoids a locked RMW.
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_add(n),
            Ordering::Relaxed,
        );
    }
    #[inline]
    pub fn inc(&self) {
        self.add(1)
    }
    #[inline]
    pub fn sub(&self, n: u64) {
        self.0.store(
            self.0.load(Ordering::Relaxed).wrapping_sub(n),
            Ordering::Relaxed,
        );
    }
    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Close codes counted individually; anything else is "other".
pub const CLOSE_CODES: [u16; 14] = [
    1000, 1001, 1002, 1003, 1005, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014, 0,
];

/// Index into the close-code arrays (last slot: other codes).
pub fn close_code_index(code: u16) -> usize {
    CLOSE_CODES[..CLOSE_CODES.len() - 1]
        .iter()
        .position(|&c| c == code)
        .unwrap_or(CLOSE_CODES.len() - 1)
}

/// Counters of one worker.
#[derive(Default, Debug)]
#[repr(align(128))]
pub struct WorkerMetrics {
    /// WebSocket connections open now (gauge).
    pub connections_open: Counter,
    /// TCP connections accepted on the public listener (admin ones are not counted).
    pub connections_accepted: Counter,
    /// WebSocket upgrades completed.
    pub upgrades: Counter,
    /// TLS connections that ended before the handshake completed, by
    /// [`TlsFailure`] (not a ClientHello, no shared version or cipher, a
    /// client alert, EOF, the handshake deadline).
    pub tls_handshake_failures: [Counter; TlsFailure::ALL.len()],
    /// Established TLS connections failed by a TLS error (an alert from
    /// the peer, a record that does not decrypt), by [`TlsFailure`].
    pub tls_errors: [Counter; TlsFailure::ALL.len()],
    pub handshake_rejections: [Counter; RejectReason::ALL.len()],
    pub messages_in: Counter,
    pub bytes_in: Counter,
    pub messages_out: Counter,
    pub bytes_out: Counter,
    /// Relayed messages enqueued to room members (local deliveries).
    pub fanout_deliveries: Counter,
    /// Messages handed to other workers.
    pub fanout_remote: Counter,
    /// Messages dropped for slow consumers (`slow_consumer = "drop"`).
    pub drops: Counter,
    pub slow_consumer_closes: Counter,
    pub rate_limited: Counter,
    pub ping_timeouts: Counter,
    pub close_sent: [Counter; CLOSE_CODES.len()],
    pub close_received: [Counter; CLOSE_CODES.len()],
    pub http_requests: Counter,
    pub publish_requests: Counter,
    /// Times a full cross-worker queue paused publishers.
    pub fanout_backpressure: Counter,
    /// Subscriptions ended with "insufficient state" (a hole in a stream).
    pub pubsub_insufficient: Counter,
    /// Protocol `connect` commands accepted.
    pub pubsub_connects: Counter,
    /// Protocol connections refused at `connect` (token, anonymous).
    pub pubsub_connect_refusals: Counter,
    /// Per channel namespace (slot 0: no namespace; see `Hub::namespace_slot`).
    pub namespaces: [NamespaceCounters; NAMESPACE_SLOTS],
    /// Connections refused for their PROXY header, by [`ProxyRefusal`].
    pub proxy_refusals: [Counter; ProxyRefusal::ALL.len()],
    /// Client addresses taken from a trusted proxy, by [`ForwardedSource`].
    pub forwarded_clients: [Counter; ForwardedSource::ALL.len()],
    /// permessage-deflate counters.
    pub deflate: DeflateCounters,
}

/// permessage-deflate: what was inflated and what compression saved.
#[derive(Default, Debug)]
pub struct DeflateCounters {
    /// Compressed messages received and inflated.
    pub messages_in: Counter,
    /// Compressed messages refused: corrupt deflate data (1007) or
    /// inflated past `max_message_bytes` (1009).
    pub inflate_failures: Counter,
    /// Messages compressed for sending: once per encoding made (a
    /// broadcast batch's messages once per worker, however many
    /// subscribers share the copy; a reply once).
    pub messages_out: Counter,
    /// Payload bytes of those messages before compression.
    pub bytes_before: Counter,
    /// Their payload bytes after compression (what is sent).
    pub bytes_after: Counter,
    /// Messages at or above `compression_min_bytes` sent uncompressed
    /// because compression would not have made them smaller.
    pub incompressible: Counter,
}

/// Why a connection on a `proxy_protocol` listener was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyRefusal {
    /// The TCP peer is not in `trusted_proxies` (answered 403).
    UntrustedPeer,
    /// The bytes are not a valid PROXY header (answered 400).
    InvalidHeader,
    /// No complete header within `proxy_header_timeout` (closed).
    Timeout,
    /// The peer closed after part of a header (closed).
    Truncated,
}

impl ProxyRefusal {
    pub const ALL: [ProxyRefusal; 4] = [
        ProxyRefusal::UntrustedPeer,
        ProxyRefusal::InvalidHeader,
        ProxyRefusal::Timeout,
        ProxyRefusal::Truncated,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ProxyRefusal::UntrustedPeer => "untrusted_peer",
            ProxyRefusal::InvalidHeader => "invalid_header",
            ProxyRefusal::Timeout => "timeout",
            ProxyRefusal::Truncated => "truncated",
        }
    }
}

/// Why a TLS connection failed: a bounded label set (rustls' errors are
/// folded into these few kinds; never logged per connection above debug).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// Bytes that are not TLS records (garbage, plain HTTP to the TLS
    /// port) or a malformed message.
    NotTls,
    /// No version, cipher suite, group, signature scheme or protocol in
    /// common with the client.
    Incompatible,
    /// The client sent a fatal alert (e.g. it does not trust our
    /// certificate).
    Alert,
    /// A protocol violation or a record that does not decrypt.
    Misbehaved,
    /// The client closed the connection mid-handshake.
    Eof,
    /// The server ended it: `handshake_timeout` (a client that stalls, or
    /// never sends a ClientHello), or shutdown.
    Timeout,
}

impl TlsFailure {
    pub const ALL: [TlsFailure; 6] = [
        TlsFailure::NotTls,
        TlsFailure::Incompatible,
        TlsFailure::Alert,
        TlsFailure::Misbehaved,
        TlsFailure::Eof,
        TlsFailure::Timeout,
    ];

    pub fn label(self) -> &'static str {
        match self {
            TlsFailure::NotTls => "not_tls",
            TlsFailure::Incompatible => "incompatible",
            TlsFailure::Alert => "alert",
            TlsFailure::Misbehaved => "misbehaved",
            TlsFailure::Eof => "eof",
            TlsFailure::Timeout => "timeout",
        }
    }

    /// The kind of a rustls error.
    pub fn of(e: &rustls::Error) -> TlsFailure {
        use rustls::Error as E;
        match e {
            E::InvalidMessage(_) | E::InappropriateMessage { .. } => TlsFailure::NotTls,
            E::InappropriateHandshakeMessage { .. } => TlsFailure::Misbehaved,
            E::PeerIncompatible(_) | E::NoApplicationProtocol | E::NoCertificatesPresented => {
                TlsFailure::Incompatible
            }
            E::AlertReceived(_) => TlsFailure::Alert,
            _ => TlsFailure::Misbehaved,
        }
    }
}

/// Where a trusted proxy told us the client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ForwardedSource {
    ProxyProtocol,
    XForwardedFor,
    Forwarded,
}

impl ForwardedSource {
    pub const ALL: [ForwardedSource; 3] = [
        ForwardedSource::ProxyProtocol,
        ForwardedSource::XForwardedFor,
        ForwardedSource::Forwarded,
    ];

    pub fn label(self) -> &'static str {
        match self {
            ForwardedSource::ProxyProtocol => "proxy_protocol",
            ForwardedSource::XForwardedFor => "x_forwarded_for",
            ForwardedSource::Forwarded => "forwarded",
        }
    }
}

/// Namespaces with counters of their own; configured namespaces beyond
/// the first `NAMESPACE_SLOTS - 2` share the last slot ("other"), so the
/// metric's cardinality is bounded whatever the configuration.
pub const NAMESPACE_SLOTS: usize = 32;

/// One namespace's pub/sub counters (on one worker).
#[derive(Default, Debug)]
pub struct NamespaceCounters {
    pub subscribes: Counter,
    pub unsubscribes: Counter,
    /// Publications from protocol clients, raw members, HTTP and the API.
    pub publications: Counter,
    pub recovered: Counter,
    pub not_recovered: Counter,
    /// Subscriptions refused: permission (103), token (109 / 3500), other.
    pub refused_permission: Counter,
    pub refused_token: Counter,
    pub refused_other: Counter,
}

impl WorkerMetrics {
    pub fn tls_handshake_failure(&self, why: TlsFailure) -> &Counter {
        &self.tls_handshake_failures[why as usize]
    }

    pub fn tls_error(&self, why: TlsFailure) -> &Counter {
        &self.tls_errors[why as usize]
    }

    pub fn proxy_refusal(&self, why: ProxyRefusal) -> &Counter {
        &self.proxy_refusals[why as usize]
    }

    pub fn forwarded(&self, source: ForwardedSource) -> &Counter {
        &self.forwarded_clients[source as usize]
    }

    pub fn rejection(&self, reason: RejectReason) -> &Counter {
        let i = RejectReason::ALL
            .iter()
            .position(|&r| r == reason)
            .unwrap_or(0);
        &self.handshake_rejections[i]
    }
}

/// Totals over all workers, for the stats line.
#[derive(Default, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub connections_open: u64,
    pub connections_accepted: u64,
    pub messages_in: u64,
    pub bytes_in: u64,
    pub messages_out: u64,
    pub bytes_out: u64,
    pub fanout_deliveries: u64,
    pub drops: u64,
    pub slow_consumer_closes: u64,
    pub ping_timeouts: u64,
}

pub fn totals<'a>(workers: impl IntoIterator<Item = &'a WorkerMetrics>) -> Totals {
    let mut t = Totals::default();
    for w in workers {
        t.connections_open += w.connections_open.get();
        t.connections_accepted += w.connections_accepted.get();
        t.messages_in += w.messages_in.get();
        t.bytes_in += w.bytes_in.get();
        t.messages_out += w.messages_out.get();
        t.bytes_out += w.bytes_out.get();
        t.fanout_deliveries += w.fanout_deliveries.get();
        t.drops += w.drops.get();
        t.slow_consumer_closes += w.slow_consumer_closes.get();
        t.ping_timeouts += w.ping_timeouts.get();
    }
    t
}

/// Process-wide gauges read at scrape time.
pub struct Gauges<'a> {
    pub rooms_open: usize,
    /// Messages waiting in each worker's cross-worker queue.
    pub queue_depths: &'a [usize],
    pub accepting: bool,
    /// Pub/sub state, when rendered.
    pub pubsub: Option<PubSubGauges<'a>>,
}

/// Pub/sub figures read at scrape time.
pub struct PubSubGauges<'a> {
    /// Label of each namespace slot ("" = no namespace).
    pub namespaces: &'a [String],
    pub history_bytes: u64,
    pub history_publications: u64,
    pub history_streams: u64,
    pub history_cap_evictions: u64,
    pub presence_entries: u64,
}

fn render_pubsub(o: &mut String, workers: &[&WorkerMetrics], g: &PubSubGauges<'_>) {
    for (name, help, v) in [
        (
            "wsrelay_pubsub_connects_total",
            "Protocol connects accepted.",
            sum(workers, |w| &w.pubsub_connects),
        ),
        (
            "wsrelay_pubsub_connect_refusals_total",
            "Protocol connects refused (token, anonymous).",
            sum(workers, |w| &w.pubsub_connect_refusals),
        ),
        (
            "wsrelay_pubsub_insufficient_state_total",
            "Subscriptions ended with insufficient state (hole in a stream).",
            sum(workers, |w| &w.pubsub_insufficient),
        ),
        (
            "wsrelay_pubsub_history_cap_evictions_total",
            "Publications evicted by history_max_bytes.",
            g.history_cap_evictions,
        ),
    ] {
        family(o, name, "counter", help);
        let _ = writeln!(o, "{name} {v}");
    }
    for (name, help, v) in [
        (
            "wsrelay_pubsub_history_bytes",
            "Bytes held by channel histories (bounded by history_max_bytes).",
            g.history_bytes,
        ),
        (
            "wsrelay_pubsub_history_publications",
            "Publications held by channel histories.",
            g.history_publications,
        ),
        (
            "wsrelay_pubsub_history_streams",
            "Channels with a history stream.",
            g.history_streams,
        ),
        (
            "wsrelay_pubsub_presence_entries",
            "Presence entries (subscribers of channels with presence).",
            g.presence_entries,
        ),
    ] {
        family(o, name, "gauge", help);
        let _ = writeln!(o, "{name} {v}");
    }
    let per_ns = |slot: usize, f: fn(&NamespaceCounters) -> &Counter| -> u64 {
        workers.iter().map(|w| f(&w.namespaces[slot]).get()).sum()
    };
    family(
        o,
        "wsrelay_pubsub_subscriptions",
        "gauge",
        "Protocol subscriptions now, by namespace.",
    );
    for (slot, ns) in g.namespaces.iter().enumerate() {
        let v = per_ns(slot, |n| &n.subscribes).saturating_sub(per_ns(slot, |n| &n.unsubscribes));
        let _ = writeln!(o, "wsrelay_pubsub_subscriptions{{namespace=\"{ns}\"}} {v}");
    }
    type NsFamily = (
        &'static str,
        &'static str,
        &'static str,
        fn(&NamespaceCounters) -> &Counter,
    );
    let families: [NsFamily; 6] = [
        (
            "wsrelay_pubsub_publications_total",
            "",
            "Publications, by namespace.",
            |n| &n.publications,
        ),
        (
            "wsrelay_pubsub_recoveries_total",
            "result=\"recovered\"",
            "Subscriptions with recovery, by namespace and result.",
            |n| &n.recovered,
        ),
        (
            "wsrelay_pubsub_recoveries_total",
            "result=\"not_recovered\"",
            "",
            |n| &n.not_recovered,
        ),
        (
            "wsrelay_pubsub_subscribe_refusals_total",
            "reason=\"permission\"",
            "Subscriptions refused, by namespace and reason.",
            |n| &n.refused_permission,
        ),
        (
            "wsrelay_pubsub_subscribe_refusals_total",
            "reason=\"token\"",
            "",
            |n| &n.refused_token,
        ),
        (
            "wsrelay_pubsub_subscribe_refusals_total",
            "reason=\"other\"",
            "",
            |n| &n.refused_other,
        ),
    ];
    for (name, label, help, f) in families {
        if !help.is_empty() {
            family(o, name, "counter", help);
        }
        for (slot, ns) in g.namespaces.iter().enumerate() {
            let sep = if label.is_empty() { "" } else { "," };
            let _ = writeln!(
                o,
                "{name}{{namespace=\"{ns}\"{sep}{label}}} {}",
                per_ns(slot, f)
            );
        }
    }
}

fn sum(workers: &[&WorkerMetrics], f: impl Fn(&WorkerMetrics) -> &Counter) -> u64 {
    workers.iter().map(|w| f(w).get()).sum()
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Renders Prometheus text exposition format 0.0.4.
pub fn render_prometheus(workers: &[&WorkerMetrics], gauges: &Gauges<'_>) -> String {
    let mut o = String::with_capacity(8 * 1024);
    type Family = (
        &'static str,
        &'static str,
        &'static str,
        fn(&WorkerMetrics) -> &Counter,
    );
    let simple: [Family; 15] = [
        ("wsrelay_connections_open", "gauge", "WebSocket connections open now.", |w| &w.connections_open),
        ("wsrelay_connections_accepted_total", "counter", "TCP connections accepted on the public listener.", |w| &w.connections_accepted),
        ("wsrelay_upgrades_total", "counter", "WebSocket upgrades completed.", |w| &w.upgrades),
        ("wsrelay_messages_in_total", "counter", "Data messages received from clients.", |w| &w.messages_in),
        ("wsrelay_bytes_in_total", "counter", "Bytes read from sockets.", |w| &w.bytes_in),
        ("wsrelay_messages_out_total", "counter", "Data messages queued to clients.", |w| &w.messages_out),
        ("wsrelay_bytes_out_total", "counter", "Bytes written to sockets.", |w| &w.bytes_out),
        ("wsrelay_fanout_deliveries_total", "counter", "Relayed messages enqueued to room members.", |w| &w.fanout_deliveries),
        ("wsrelay_fanout_remote_total", "counter", "Relayed messages handed to other workers.", |w| &w.fanout_remote),
        ("wsrelay_dropped_messages_total", "counter", "Messages dropped for slow consumers (slow_consumer = drop) or rate limits (rate_limit_policy = drop).", |w| &w.drops),
        ("wsrelay_slow_consumer_closes_total", "counter", "Connections closed with 1008 for exceeding max_outbound_bytes.", |w| &w.slow_consumer_closes),
        ("wsrelay_rate_limited_total", "counter", "Messages over a connection's rate limit.", |w| &w.rate_limited),
        ("wsrelay_ping_timeouts_total", "counter", "Connections closed for not answering a ping.", |w| &w.ping_timeouts),
        ("wsrelay_http_requests_total", "counter", "Plain HTTP requests served.", |w| &w.http_requests),
        ("wsrelay_publish_requests_total", "counter", "Accepted POST /publish requests.", |w| &w.publish_requests),
    ];
    for (name, kind, help, f) in simple {
        family(&mut o, name, kind, help);
        let _ = writeln!(o, "{name} {}", sum(workers, f));
    }
    let deflate: [Family; 6] = [
        ("wsrelay_deflate_messages_in_total", "counter", "Compressed (permessage-deflate) messages received and inflated.", |w| &w.deflate.messages_in),
        ("wsrelay_deflate_inflate_failures_total", "counter", "Compressed messages refused: corrupt deflate data (1007) or inflated past max_message_bytes (1009).", |w| &w.deflate.inflate_failures),
        ("wsrelay_deflate_messages_out_total", "counter", "Messages compressed for sending, once per encoding (a broadcast batch once per worker, shared by its compressing subscribers).", |w| &w.deflate.messages_out),
        ("wsrelay_deflate_bytes_before_total", "counter", "Payload bytes of the messages compressed for sending, before compression.", |w| &w.deflate.bytes_before),
        ("wsrelay_deflate_bytes_after_total", "counter", "Payload bytes of the messages compressed for sending, after compression.", |w| &w.deflate.bytes_after),
        ("wsrelay_deflate_incompressible_total", "counter", "Messages of at least compression_min_bytes sent uncompressed because deflate would not shrink them.", |w| &w.deflate.incompressible),
    ];
    for (name, kind, help, f) in deflate {
        family(&mut o, name, kind, help);
        let _ = writeln!(o, "{name} {}", sum(workers, f));
    }
    family(
        &mut o,
        "wsrelay_handshake_rejections_total",
        "counter",
        "Requests refused at handshake, by reason.",
    );
    for (i, r) in RejectReason::ALL.iter().enumerate() {
        let v: u64 = workers
            .iter()
            .map(|w| w.handshake_rejections[i].get())
            .sum();
        let _ = writeln!(
            o,
            "wsrelay_handshake_rejections_total{{reason=\"{}\",status=\"{}\"}} {v}",
            r.label(),
            r.status()
        );
    }
    family(
        &mut o,
        "wsrelay_tls_handshake_failures_total",
        "counter",
        "TLS connections closed before their TLS handshake completed, by reason (not_tls: not a ClientHello; incompatible: nothing in common; alert: the client's alert; misbehaved; eof; timeout: handshake_timeout or shutdown).",
    );
    for r in TlsFailure::ALL {
        let v: u64 = workers
            .iter()
            .map(|w| w.tls_handshake_failure(r).get())
            .sum();
        let _ = writeln!(
            o,
            "wsrelay_tls_handshake_failures_total{{reason=\"{}\"}} {v}",
            r.label()
        );
    }
    family(
        &mut o,
        "wsrelay_tls_errors_total",
        "counter",
        "Established TLS connections failed by a TLS error, by reason (alert: the peer's fatal alert; misbehaved: a record that does not decrypt or breaks the protocol; not_tls: a malformed record).",
    );
    for r in [
        TlsFailure::NotTls,
        TlsFailure::Alert,
        TlsFailure::Misbehaved,
    ] {
        let v: u64 = workers.iter().map(|w| w.tls_error(r).get()).sum();
        let _ = writeln!(
            o,
            "wsrelay_tls_errors_total{{reason=\"{}\"}} {v}",
            r.label()
        );
    }
    family(
        &mut o,
        "wsrelay_proxy_protocol_refusals_total",
        "counter",
        "Connections refused on a proxy_protocol listener, by reason.",
    );
    for r in ProxyRefusal::ALL {
        let v: u64 = workers.iter().map(|w| w.proxy_refusal(r).get()).sum();
        let _ = writeln!(
            o,
            "wsrelay_proxy_protocol_refusals_total{{reason=\"{}\"}} {v}",
            r.label()
        );
    }
    family(
        &mut o,
        "wsrelay_forwarded_clients_total",
        "counter",
        "Client addresses taken from a trusted proxy (PROXY headers, and requests with X-Forwarded-For or Forwarded), by source.",
    );
    for f in ForwardedSource::ALL {
        let v: u64 = workers.iter().map(|w| w.forwarded(f).get()).sum();
        let _ = writeln!(
            o,
            "wsrelay_forwarded_clients_total{{source=\"{}\"}} {v}",
            f.label()
        );
    }
    for (name, help, pick) in [
        (
            "wsrelay_close_codes_sent_total",
            "Close frames sent, by code (0 = other).",
            true,
        ),
        (
            "wsrelay_close_codes_received_total",
            "Close frames received, by code (1005 = no status, 0 = other).",
            false,
        ),
    ] {
        family(&mut o, name, "counter", help);
        for (i, code) in CLOSE_CODES.iter().enumerate() {
            let v: u64 = workers
                .iter()
                .map(|w| {
                    if pick {
                        w.close_sent[i].get()
                    } else {
                        w.close_received[i].get()
                    }
                })
                .sum();
            let label = if *code == 0 {
                "other".to_string()
            } else {
                code.to_string()
            };
            let _ = writeln!(o, "{name}{{code=\"{label}\"}} {v}");
        }
    }
    family(
        &mut o,
        "wsrelay_rooms_open",
        "gauge",
        "Rooms with at least one member.",
    );
    let _ = writeln!(o, "wsrelay_rooms_open {}", gauges.rooms_open);
    family(
        &mut o,
        "wsrelay_fanout_queue_depth",
        "gauge",
        "Messages waiting in each worker's cross-worker queue.",
    );
    for (i, d) in gauges.queue_depths.iter().enumerate() {
        let _ = writeln!(o, "wsrelay_fanout_queue_depth{{worker=\"{i}\"}} {d}");
    }
    family(
        &mut o,
        "wsrelay_fanout_backpressure_total",
        "counter",
        "Times a full cross-worker queue paused reading from publishers.",
    );
    let _ = writeln!(
        o,
        "wsrelay_fanout_backpressure_total {}",
        sum(workers, |w| &w.fanout_backpressure)
    );
    family(
        &mut o,
        "wsrelay_accepting",
        "gauge",
        "1 while accepting connections, 0 once shutdown began.",
    );
    let _ = writeln!(o, "wsrelay_accepting {}", u8::from(gauges.accepting));
    if let Some(p) = &gauges.pubsub {
        render_pubsub(&mut o, workers, p);
    }
    o
}

/// Appends the Redis broker's families (`broker = "redis"`,
/// docs/cluster.md) to a rendered page.
pub fn render_broker(o: &mut String, m: &crate::broker::BrokerMetrics, shards: usize) {
    use crate::broker::BrokerMetrics as B;
    let up = B::get(&m.shards_up);
    type Row = (&'static str, &'static str, &'static str, u64);
    let rows: [Row; 14] = [
        ("wsrelay_broker_up", "gauge", "1 while every Redis shard's connections are up; 0: degraded (cross-node delivery stopped, local delivery goes on).", u64::from(up == shards as u64)),
        ("wsrelay_broker_shards_up", "gauge", "Redis shards whose subscriber and command connections are both up.", up),
        ("wsrelay_broker_reconnects_total", "counter", "Redis connections made again after a loss.", B::get(&m.reconnects)),
        ("wsrelay_broker_connect_errors_total", "counter", "Failed Redis connection attempts.", B::get(&m.connect_errors)),
        ("wsrelay_broker_publish_errors_total", "counter", "Local publications not handed to Redis (refused at once or failed later): other nodes did not get them.", B::get(&m.publish_errors)),
        ("wsrelay_broker_request_errors_total", "counter", "Broker requests answered with an error (of which timeouts below).", B::get(&m.request_errors)),
        ("wsrelay_broker_timeouts_total", "counter", "Broker requests unanswered within redis_publish_timeout.", B::get(&m.timeouts)),
        ("wsrelay_broker_inflight", "gauge", "Broker requests queued or in flight.", B::get(&m.inflight)),
        ("wsrelay_broker_messages_in_total", "counter", "Envelopes received from Redis.", B::get(&m.messages_in)),
        ("wsrelay_broker_dropped_total", "counter", "Envelopes dropped because a worker's broker inbox was full (missed by its subscribers).", B::get(&m.inbox_dropped)),
        ("wsrelay_broker_decode_errors_total", "counter", "Payloads on wsrelay's Redis channels that are not envelopes (or node records).", B::get(&m.decode_errors)),
        ("wsrelay_broker_channels", "gauge", "Redis channels this node is subscribed (or subscribing) to.", B::get(&m.channels)),
        ("wsrelay_broker_subscribe_pending", "gauge", "SUBSCRIBEs sent and not yet confirmed (subscription lag).", B::get(&m.subscribe_pending)),
        ("wsrelay_broker_nodes", "gauge", "Other nodes heard within 3 redis_node_info_interval (server API info lists them).", B::get(&m.nodes)),
    ];
    for (name, kind, help, v) in rows {
        family(o, name, kind, help);
        let _ = writeln!(o, "{name} {v}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_sum_across_workers_and_render() {
        let a = WorkerMetrics::default();
        let b = WorkerMetrics::default();
        a.messages_in.add(3);
        b.messages_in.add(4);
        a.close_sent[close_code_index(1008)].inc();
        b.close_sent[close_code_index(4000)].inc();
        b.rejection(RejectReason::NotFound).inc();
        a.connections_open.inc();
        a.connections_open.inc();
        a.connections_open.sub(1);
        let text = render_prometheus(
            &[&a, &b],
            &Gauges {
                rooms_open: 2,
                queue_depths: &[0, 5],
                accepting: true,
                pubsub: Some(PubSubGauges {
                    namespaces: &["".into(), "chat".into()],
                    history_bytes: 10,
                    history_publications: 1,
                    history_streams: 1,
                    history_cap_evictions: 0,
                    presence_entries: 2,
                }),
            },
        );
        assert!(text
            .contains("# TYPE wsrelay_messages_in_total counter\nwsrelay_messages_in_total 7\n"));
        assert!(text.contains("wsrelay_connections_open 1\n"));
        assert!(text.contains("wsrelay_close_codes_sent_total{code=\"1008\"} 1\n"));
        assert!(text.contains("wsrelay_close_codes_sent_total{code=\"other\"} 1\n"));
        assert!(text.contains(
            "wsrelay_handshake_rejections_total{reason=\"not_found\",status=\"404\"} 1\n"
        ));
        assert!(text.contains("wsrelay_fanout_queue_depth{worker=\"1\"} 5\n"));
        assert!(text.contains("wsrelay_rooms_open 2\n"));
        a.namespaces[1].subscribes.add(3);
        b.namespaces[1].unsubscribes.add(1);
        b.namespaces[1].recovered.inc();
        let text = render_prometheus(
            &[&a, &b],
            &Gauges {
                rooms_open: 2,
                queue_depths: &[0, 5],
                accepting: true,
                pubsub: Some(PubSubGauges {
                    namespaces: &["".into(), "chat".into()],
                    history_bytes: 10,
                    history_publications: 1,
                    history_streams: 1,
                    history_cap_evictions: 0,
                    presence_entries: 2,
                }),
            },
        );
        assert!(text.contains("wsrelay_pubsub_subscriptions{namespace=\"chat\"} 2\n"));
        assert!(text.contains(
            "wsrelay_pubsub_recoveries_total{namespace=\"chat\",result=\"recovered\"} 1\n"
        ));
        assert!(text.contains("wsrelay_pubsub_history_bytes 10\n"));
        // Every sample line belongs to a family announced with HELP and TYPE.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
        assert_eq!(totals([&a, &b]).messages_in, 7);
    }

    #[test]
    fn broker_families_render_up_and_degraded() {
        use std::sync::atomic::Ordering;
        let m = crate::broker::BrokerMetrics::default();
        m.shards_up.store(1, Ordering::Relaxed);
        m.publish_errors.store(3, Ordering::Relaxed);
        m.inbox_dropped.store(2, Ordering::Relaxed);
        let mut text = String::new();
        render_broker(&mut text, &m, 2);
        assert!(text.contains("# TYPE wsrelay_broker_up gauge\nwsrelay_broker_up 0\n"));
        assert!(text.contains("wsrelay_broker_shards_up 1\n"));
        assert!(text.contains("wsrelay_broker_publish_errors_total 3\n"));
        assert!(text.contains("wsrelay_broker_dropped_total 2\n"));
        let mut text = String::new();
        render_broker(&mut text, &m, 1);
        assert!(text.contains("wsrelay_broker_up 1\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&format!("# HELP {name} ")), "{name}");
        }
    }
}
