//! The end-of-run figures: a table on stdout and the same as JSON.

use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write;

/// A latency distribution in microseconds.
#[derive(Serialize, Default, Clone, Debug)]
pub struct Lat {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: f64,
    pub p90_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
}

impl Lat {
    pub fn from_hist(h: &Histogram<u64>) -> Lat {
        if h.is_empty() {
            return Lat::default();
        }
        let us = |ns: u64| ns as f64 / 1000.0;
        Lat {
            count: h.len(),
            mean_us: h.mean() / 1000.0,
            p50_us: us(h.value_at_quantile(0.50)),
            p90_us: us(h.value_at_quantile(0.90)),
            p99_us: us(h.value_at_quantile(0.99)),
            p999_us: us(h.value_at_quantile(0.999)),
            max_us: us(h.max()),
        }
    }
}

#[derive(Serialize, Default, Debug)]
pub struct Conns {
    pub planned: u64,
    pub attempted: u64,
    pub established: u64,
    pub failed: u64,
    pub failures: BTreeMap<String, u64>,
    /// Connections open when the load started.
    pub open_at_start: u64,
    /// Established connections that went away without us asking.
    pub lost: u64,
    pub lost_reasons: BTreeMap<String, u64>,
    pub closes_clean: u64,
    pub closes_unclean: u64,
    pub unclean_reasons: BTreeMap<String, u64>,
    /// Close handshakes that completed but the server left TCP open.
    pub close_without_server_fin: u64,
    /// Established connections per second during the connect phase.
    pub connect_rate_per_s: f64,
    pub connect_phase_s: f64,
    /// TCP connect start to the 101 response.
    pub handshake_latency: Lat,
}

#[derive(Serialize, Default, Debug)]
pub struct Msgs {
    pub size: usize,
    /// Over the whole run (warm-up and drain included).
    pub sent: u64,
    pub received: u64,
    /// Generated but still queued in the generator when the connection
    /// closed (the server had stopped reading); not counted as sent.
    pub unsent_at_end: u64,
    /// In the measured window (after warm-up, before sending stopped).
    pub sent_per_s: f64,
    pub received_per_s: f64,
    pub sent_bytes_per_s: f64,
    pub received_bytes_per_s: f64,
    /// Receipts not accounted: publishers' copies when rooms deliver to
    /// the sender (without --roles), members' own messages (all-publish).
    pub untracked_received: u64,
    /// Deliveries expected from what was sent, and how they fared.
    pub expected: u64,
    pub delivered_unique: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    pub corrupted: u64,
    pub misrouted: u64,
    /// (lost + duplicated + reordered + corrupted + misrouted) / expected.
    pub error_ratio: f64,
    pub pings_answered: u64,
}

#[derive(Serialize, Default, Debug)]
pub struct Churn {
    pub cycles: u64,
    pub cycles_per_s: f64,
    /// Connect start to the server's TCP close after the close handshake.
    pub cycle_latency: Lat,
}

/// The pubsub scenario's figures.
#[derive(Serialize, Default, Debug)]
pub struct PubSubReport {
    pub subscribers: usize,
    pub publishers: usize,
    pub channels: usize,
    /// Successful `connect` replies (reconnects included).
    pub connect_ok: u64,
    pub subscriptions_planned: u64,
    /// Subscriptions made in the connect phase (before the load).
    pub subscribe_ok: u64,
    pub subscriptions_per_channel_min: u64,
    pub subscriptions_per_channel_max: u64,
    pub publish_sent: u64,
    pub publish_ok: u64,
    pub publish_errors: u64,
    /// Publishes whose connection ended before the reply.
    pub publish_unacked: u64,
    /// Intended send time to the publish reply.
    pub ack_latency: Lat,
    /// Error replies by "method code message".
    pub errors: BTreeMap<String, u64>,
    /// Acknowledged publications × subscriptions of their channel.
    pub expected: u64,
    pub delivered_unique: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Generator data for another channel or an unknown publisher.
    pub misrouted: u64,
    /// Publication data that is not the generator's.
    pub foreign: u64,
    /// Offsets skipped / repeated within a subscription's stream.
    pub offset_gaps: u64,
    pub offset_repeats: u64,
    /// Publications in first subscribe replies (history of earlier runs).
    pub history_on_subscribe: u64,
    pub unknown_channel: u64,
    pub other_pushes: BTreeMap<String, u64>,
    pub bad_lines: u64,
    pub unexpected_replies: u64,
    pub pings_answered: u64,
    pub recovery: Option<Recovery>,
}

/// Reconnect modes: drops, resubscribes, what was recovered.
#[derive(Serialize, Default, Debug)]
pub struct Recovery {
    pub drops: u64,
    pub reconnects: u64,
    /// Failed or lost subscribers tried again (after 200 ms).
    pub retries: u64,
    pub resubscribed: u64,
    pub recovered_true: u64,
    pub recovered_false: u64,
    /// Publications delivered in subscribe replies.
    pub recovered_publications: u64,
    pub epoch_changes: u64,
    /// Reconnect start (TCP connect) to the last subscribe reply.
    pub resubscribe_latency: Lat,
    /// Recovery burst: publications per channel while everyone was away.
    pub burst_per_channel: Option<u64>,
    /// Recovery burst: from the moment all reconnect to the last one
    /// resubscribed.
    pub time_to_recover_all_s: Option<f64>,
}

#[derive(Serialize, Default, Debug)]
pub struct Generator {
    /// CPU time (user + sys) over wall time in the measured window, as a
    /// percentage of one core: near 100 × threads means the generator,
    /// not the server, may be the bottleneck.
    pub cpu_percent_of_one_core: f64,
    pub cpu_percent_whole_run: f64,
    pub cpu_s: f64,
    pub wall_s: f64,
    pub nofile_soft: u64,
    pub nofile_hard: u64,
}

#[derive(Serialize, Default, Debug, Clone)]
pub struct Second {
    /// End of this second, seconds since the load started.
    pub t_s: f64,
    /// Length of this interval (the last one may be shorter).
    pub dur_s: f64,
    pub sent: u64,
    pub received: u64,
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
    /// Part of the warm-up (excluded from the summary figures).
    pub warmup: bool,
}

#[derive(Serialize, Default, Debug)]
pub struct Summary {
    pub tool: String,
    pub scenario: String,
    pub params: serde_json::Value,
    pub url: String,
    pub threads: usize,
    pub warmup_s: f64,
    /// Length of the measured window.
    pub measured_s: f64,
    pub connections: Conns,
    pub messages: Msgs,
    /// Intended send time (open loop) or send time (closed loop) to
    /// receipt, for messages received after the warm-up.
    pub latency: Lat,
    /// How late the generator sent open-loop messages against their
    /// schedule (large values: the generator could not keep up).
    pub send_lag: Lat,
    pub churn: Option<Churn>,
    pub pubsub: Option<PubSubReport>,
    /// Several `--url`s: figures per receiving node (absent with one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nodes: Option<NodesReport>,
    /// wss:// runs only.
    pub tls: Option<TlsReport>,
    pub bandwidth: Bandwidth,
    pub generator: Generator,
    pub per_second: Vec<Second>,
    pub pass: bool,
    pub problems: Vec<String>,
}

/// Several nodes: deliveries per receiving node, and the latency of
/// publications received on their publisher's node against another's.
#[derive(Serialize, Default, Debug)]
pub struct NodesReport {
    pub nodes: Vec<NodeReport>,
    /// Publisher and subscriber on the same node (no broker hop).
    pub same_node_latency: Lat,
    /// Publisher and subscriber on different nodes (through the broker).
    pub cross_node_latency: Lat,
    /// The measured window on the wall clock (Unix seconds), for reading
    /// server CPU (/proc) or Redis INFO over exactly this window.
    pub window_unix_s: [f64; 2],
}

/// One node's figures (as a receiver; `publishers` connect there).
#[derive(Serialize, Default, Debug)]
pub struct NodeReport {
    pub url: String,
    /// Connections planned on it, of which receivers (subscribers,
    /// members) and publishers.
    pub connections: u64,
    pub receivers: u64,
    pub publishers: u64,
    /// Messages received there in the measured window, per second.
    pub received_per_s: f64,
    /// Over the run (warm-up and drain included), as `messages`.
    pub received: u64,
    pub expected: u64,
    pub delivered_unique: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub reordered: u64,
    /// Publisher's intended send time → receipt here, after the warm-up.
    pub latency: Lat,
}

/// wss:// handshakes.
#[derive(Serialize, Default, Debug)]
pub struct TlsReport {
    /// `ca-file` or `insecure` (no verification).
    pub verification: String,
    /// --tls-resume: sessions resumed from the client's cache.
    pub resumption: bool,
    pub handshakes_full: u64,
    pub handshakes_resumed: u64,
    /// Connections whose TLS handshake did not complete (refused
    /// certificate, alert, server gone): also counted in `failed`.
    pub handshake_failures: u64,
    /// TCP connect start to the completed TLS handshake (the connections'
    /// `handshake_latency` goes on to the WebSocket `101`).
    pub handshake_latency: Lat,
}

/// Bytes on the wire against payload bytes, and permessage-deflate, over
/// the whole run (connect phase, warm-up and drain included).
#[derive(Serialize, Default, Debug)]
pub struct Bandwidth {
    /// --deflate was given (we offered permessage-deflate).
    pub deflate_offered: bool,
    /// Connections that opened with it, and without it.
    pub deflate_negotiated: u64,
    pub deflate_not_negotiated: u64,
    /// Socket bytes: TLS records, HTTP handshakes, frame headers, all.
    pub wire_in_bytes: u64,
    pub wire_out_bytes: u64,
    /// Data message payloads: received after inflation, sent before
    /// compression.
    pub payload_in_bytes: u64,
    pub payload_out_bytes: u64,
    pub messages_in: u64,
    pub messages_out: u64,
    /// Of those, how many travelled compressed (RSV1).
    pub compressed_in: u64,
    pub compressed_out: u64,
    /// Compressed messages received byte-identical to one the same worker
    /// had just inflated (the server compresses a broadcast once): the
    /// inflated result was reused (all checks still ran on it).
    pub inflate_reused: u64,
    /// wire ÷ payload (below 1: compression saved more than framing and
    /// TLS cost; 0 when nothing moved).
    pub wire_per_payload_in: f64,
    pub wire_per_payload_out: f64,
}

pub fn si(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

pub fn us(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.2}ms", v / 1e3)
    } else {
        format!("{v:.1}µs")
    }
}

fn lat_row(out: &mut String, name: &str, l: &Lat) {
    if l.count == 0 {
        let _ = writeln!(out, "  {name:<22} (none)");
        return;
    }
    let _ = writeln!(
        out,
        "  {name:<22} p50 {}  p90 {}  p99 {}  p99.9 {}  max {}  (n={})",
        us(l.p50_us),
        us(l.p90_us),
        us(l.p99_us),
        us(l.p999_us),
        us(l.max_us),
        l.count
    );
}

fn reasons(out: &mut String, title: &str, m: &BTreeMap<String, u64>) {
    for (k, v) in m {
        let _ = writeln!(out, "    {title}: {k}: {v}");
    }
}

fn pubsub_table(o: &mut String, p: &PubSubReport) {
    let _ = writeln!(
        o,
        "pubsub ({} subscribers, {} publishers, {} channels)",
        p.subscribers, p.publishers, p.channels
    );
    let _ = writeln!(
        o,
        "  {:<22} {} connect ok; {} of {} subscriptions ({}..{} per channel)",
        "setup",
        p.connect_ok,
        p.subscribe_ok,
        p.subscriptions_planned,
        p.subscriptions_per_channel_min,
        p.subscriptions_per_channel_max
    );
    let _ = writeln!(
        o,
        "  {:<22} {} sent, {} ok, {} errors, {} unacknowledged",
        "publish", p.publish_sent, p.publish_ok, p.publish_errors, p.publish_unacked
    );
    lat_row(o, "publish ack", &p.ack_latency);
    reasons(o, "error", &p.errors);
    let _ = writeln!(
        o,
        "  {:<22} expected {}  delivered {}  lost {}  dup {}  reordered {}  misrouted {}  foreign {}",
        "delivery",
        p.expected,
        p.delivered_unique,
        p.lost,
        p.duplicated,
        p.reordered,
        p.misrouted,
        p.foreign
    );
    let _ = writeln!(
        o,
        "  {:<22} {} gaps, {} repeats{}",
        "offsets",
        p.offset_gaps,
        p.offset_repeats,
        if p.history_on_subscribe > 0 {
            format!(
                " ({} old publications in first subscribe replies)",
                p.history_on_subscribe
            )
        } else {
            String::new()
        }
    );
    if let Some(r) = &p.recovery {
        let _ = writeln!(
            o,
            "  {:<22} {} drops, {} reconnects ({} retries), {} resubscribed; recovered true {} / false {}; {} publications recovered; {} epoch changes",
            "recovery",
            r.drops,
            r.reconnects,
            r.retries,
            r.resubscribed,
            r.recovered_true,
            r.recovered_false,
            r.recovered_publications,
            r.epoch_changes
        );
        lat_row(o, "resubscribe", &r.resubscribe_latency);
        if let (Some(n), Some(t)) = (r.burst_per_channel, r.time_to_recover_all_s) {
            let _ = writeln!(
                o,
                "  {:<22} {n} publications per channel missed; all {} back in {}",
                "recovery burst",
                r.resubscribed,
                us(t * 1e6)
            );
        }
    }
    let _ = writeln!(
        o,
        "  {:<22} {} pings answered, {} unreadable lines, {} unexpected replies, {} pubs for unknown channels",
        "protocol", p.pings_answered, p.bad_lines, p.unexpected_replies, p.unknown_channel
    );
    reasons(o, "push", &p.other_pushes);
}

fn nodes_table(o: &mut String, n: &NodesReport) {
    let _ = writeln!(o, "nodes ({})", n.nodes.len());
    for (i, r) in n.nodes.iter().enumerate() {
        let _ = writeln!(
            o,
            "  node {} {}: {} connections ({} receivers, {} publishers); received {}/s",
            i + 1,
            r.url,
            r.connections,
            r.receivers,
            r.publishers,
            si(r.received_per_s)
        );
        let _ = writeln!(
            o,
            "    {:<20} expected {}  delivered {}  lost {}  dup {}  reordered {}",
            "integrity", r.expected, r.delivered_unique, r.lost, r.duplicated, r.reordered
        );
        lat_row(o, "  latency", &r.latency);
    }
    lat_row(o, "same-node latency", &n.same_node_latency);
    lat_row(o, "cross-node latency", &n.cross_node_latency);
}

impl Summary {
    pub fn table(&self) -> String {
        let mut o = String::new();
        let c = &self.connections;
        let m = &self.messages;
        let _ = writeln!(
            o,
            "wsrelay-load {} → {}  ({} thread{}, measured {:.2}s{})",
            self.scenario,
            self.url,
            self.threads,
            if self.threads == 1 { "" } else { "s" },
            self.measured_s,
            if self.warmup_s > 0.0 {
                format!(" after {:.0}s warm-up", self.warmup_s)
            } else {
                String::new()
            }
        );
        let _ = writeln!(o, "connections");
        let _ = writeln!(
            o,
            "  {:<22} {} planned, {} attempted, {} established, {} failed",
            "connect", c.planned, c.attempted, c.established, c.failed
        );
        reasons(&mut o, "failed", &c.failures);
        let _ = writeln!(
            o,
            "  {:<22} {}/s over {:.2}s",
            "connect rate",
            si(c.connect_rate_per_s),
            c.connect_phase_s
        );
        lat_row(&mut o, "handshake", &c.handshake_latency);
        let _ = writeln!(
            o,
            "  {:<22} {} lost during the run, {} clean closes, {} unclean",
            "lifetime", c.lost, c.closes_clean, c.closes_unclean
        );
        reasons(&mut o, "lost", &c.lost_reasons);
        reasons(&mut o, "unclean", &c.unclean_reasons);
        if c.close_without_server_fin > 0 {
            let _ = writeln!(
                o,
                "    server left TCP open after the close handshake: {}",
                c.close_without_server_fin
            );
        }
        if let Some(ch) = &self.churn {
            let _ = writeln!(o, "churn");
            let _ = writeln!(
                o,
                "  {:<22} {} cycles, {}/s",
                "cycles",
                ch.cycles,
                si(ch.cycles_per_s)
            );
            lat_row(&mut o, "cycle", &ch.cycle_latency);
        }
        if let Some(p) = &self.pubsub {
            pubsub_table(&mut o, p);
        }
        if let Some(n) = &self.nodes {
            nodes_table(&mut o, n);
        }
        if m.sent > 0 || m.received > 0 {
            if self.pubsub.is_some() {
                let _ = writeln!(o, "messages (publications)");
            } else {
                let _ = writeln!(o, "messages ({} B)", m.size);
            }
            let _ = writeln!(
                o,
                "  {:<22} {}/s  {}B/s  ({} in total)",
                "sent",
                si(m.sent_per_s),
                si(m.sent_bytes_per_s),
                m.sent
            );
            let _ = writeln!(
                o,
                "  {:<22} {}/s  {}B/s  ({} in total)",
                "received",
                si(m.received_per_s),
                si(m.received_bytes_per_s),
                m.received
            );
            if m.unsent_at_end > 0 {
                let _ = writeln!(
                    o,
                    "  {:<22} {} (queued in the generator at the end: the server stopped reading)",
                    "unsent", m.unsent_at_end
                );
            }
            if m.untracked_received > 0 {
                let _ = writeln!(
                    o,
                    "  {:<22} {} (senders' own copies, not accounted)",
                    "untracked received", m.untracked_received
                );
            }
            let _ = writeln!(
                o,
                "  {:<22} expected {}  delivered {}  lost {}  dup {}  reordered {}  corrupted {}  misrouted {}  (error ratio {:.3e})",
                "integrity",
                m.expected,
                m.delivered_unique,
                m.lost,
                m.duplicated,
                m.reordered,
                m.corrupted,
                m.misrouted,
                m.error_ratio
            );
            lat_row(&mut o, "latency", &self.latency);
            lat_row(&mut o, "send lag (generator)", &self.send_lag);
        }
        if let Some(t) = &self.tls {
            let _ = writeln!(
                o,
                "tls\n  {:<22} {} full, {} resumed, {} failed (verification: {}; resumption {})",
                "handshakes",
                t.handshakes_full,
                t.handshakes_resumed,
                t.handshake_failures,
                t.verification,
                if t.resumption { "on" } else { "off" }
            );
            lat_row(&mut o, "tls handshake", &t.handshake_latency);
        }
        let b = &self.bandwidth;
        if b.wire_in_bytes + b.wire_out_bytes > 0 {
            let _ = writeln!(o, "bandwidth (whole run)");
            if b.deflate_offered {
                let _ = writeln!(
                    o,
                    "  {:<22} negotiated on {} connections, not on {}",
                    "permessage-deflate", b.deflate_negotiated, b.deflate_not_negotiated
                );
            }
            let _ = writeln!(
                o,
                "  {:<22} {}B on the wire for {}B of payload (×{:.3}); {} of {} messages compressed{}",
                "in",
                si(b.wire_in_bytes as f64),
                si(b.payload_in_bytes as f64),
                b.wire_per_payload_in,
                b.compressed_in,
                b.messages_in,
                if b.inflate_reused > 0 {
                    format!(" ({} byte-identical copies: inflation reused)", b.inflate_reused)
                } else {
                    String::new()
                }
            );
            let _ = writeln!(
                o,
                "  {:<22} {}B on the wire for {}B of payload (×{:.3}); {} of {} messages compressed",
                "out",
                si(b.wire_out_bytes as f64),
                si(b.payload_out_bytes as f64),
                b.wire_per_payload_out,
                b.compressed_out,
                b.messages_out
            );
        }
        let g = &self.generator;
        let _ = writeln!(
            o,
            "generator\n  {:<22} {:.0}% of one core in the window ({:.0}% over the run; {:.2}s CPU / {:.2}s wall)",
            "cpu", g.cpu_percent_of_one_core, g.cpu_percent_whole_run, g.cpu_s, g.wall_s
        );
        let _ = writeln!(
            o,
            "  {:<22} soft {} / hard {}",
            "open files limit", g.nofile_soft, g.nofile_hard
        );
        if self.pass {
            let _ = writeln!(o, "result: PASS");
        } else {
            let _ = writeln!(o, "result: FAIL");
            for p in &self.problems {
                let _ = writeln!(o, "  - {p}");
            }
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_summary_and_formatting() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 100_000_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 1000).unwrap();
        }
        let l = Lat::from_hist(&h);
        assert_eq!(l.count, 1000);
        assert!((l.p50_us - 500.0).abs() < 1.0);
        assert!((l.p99_us - 990.0).abs() < 1.0);
        assert!((l.max_us - 1000.0).abs() < 1.0);
        assert_eq!(Lat::from_hist(&Histogram::new(3).unwrap()).count, 0);
        assert_eq!(si(2_500_000.0), "2.50M");
        assert_eq!(us(1500.0), "1.50ms");
        let s = Summary {
            scenario: "echo".into(),
            pass: false,
            problems: vec!["3 connections failed".into()],
            ..Default::default()
        };
        let t = s.table();
        assert!(t.contains("FAIL") && t.contains("3 connections failed"));
        let j = serde_json::to_value(&s).unwrap();
        assert_eq!(j["scenario"], "echo");
        assert!(j["latency"]["p99_us"].is_number());
    }
}
