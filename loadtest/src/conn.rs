//! One client connection's protocol state and its receive path, free of
//! sockets so that `selftest-decode` can drive it with canned bytes.
//!
//! The receive path works in place on a buffer the worker owns: frames
//! are decoded and unmasked where they lie, a complete single-frame
//! message is a borrow of that buffer, and nothing is allocated per
//! message. Replies (pongs, close answers, the next closed-loop message)
//! are appended to the connection's outbound Vec, which the worker
//! writes until WouldBlock.

use crate::deflate::Compressor;
use crate::payload::{self, Format};
use crate::plan::Plan;
use crate::tracker::{Seen, SeqTracker};
use hdrhistogram::Histogram;
use wsrelay::protocol::deflate::Inflater;
use wsrelay::protocol::{
    encode_client_frame, ClientHandshake, CloseCode, Event, FrameDecoder, Inflate, MaskRng,
    MessageAssembler, MessageKind, OpCode, Role,
};

/// Largest frame or message accepted from the server.
pub const MAX_MESSAGE: usize = 64 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Connecting,
    Handshake,
    Open,
}

/// Why a connection went away.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removal {
    /// Never opened: connect or handshake failure.
    Failed(String),
    /// Was open and went away without us asking.
    Lost(String),
    /// We sent close, the server answered and closed TCP.
    Clean,
    /// We sent close, but the handshake did not finish in time.
    Unclean(String),
    /// Still connecting when the run ended.
    Abandoned,
    /// pubsub reconnect modes: we dropped TCP on purpose (no close frame).
    Dropped,
}

/// A sender on this connection (open or closed loop).
#[derive(Clone, Debug)]
pub struct Sender {
    pub id: u32,
    pub seq: u64,
    pub interval_ns: f64,
    pub offset_ns: u64,
    pub start_ns: u64,
    /// Waiting for the outbound buffer to drain.
    pub blocked: bool,
}

impl Sender {
    #[inline]
    pub fn intended(&self, seq: u64) -> u64 {
        self.start_ns + (seq as f64 * self.interval_ns) as u64
    }
    pub fn closed_loop(&self) -> bool {
        self.interval_ns == 0.0
    }
}

pub struct ConnCore {
    pub state: State,
    pub gen: u32,
    pub global: u32,
    /// Node this connection is open to (index into the run's targets).
    pub node: u16,
    pub room: u32,
    pub tracks: bool,
    pub churn: bool,
    pub hs: Option<ClientHandshake>,
    /// Bytes of an incomplete frame (or handshake response) kept between
    /// reads.
    pub partial: Vec<u8>,
    pub out: Vec<u8>,
    pub out_pos: usize,
    pub in_dirty: bool,
    pub asm: MessageAssembler,
    pub sender: Option<Sender>,
    pub trackers: Vec<SeqTracker>,
    pub started_ns: u64,
    /// Connect/handshake or close deadline; 0: none.
    pub deadline_ns: u64,
    pub close_sent: bool,
    pub close_recv: bool,
    /// We started the close handshake.
    pub we_closed: bool,
    /// Set when the server closed an open connection on its own.
    pub lost_reason: Option<String>,
    /// Churn: this connection's cycle was counted.
    pub cycle_done: bool,
    /// pubsub: the protocol client (its subscriptions outlive the
    /// connection; the worker parks it while reconnecting).
    pub ps: Option<Box<crate::pubsub::client::PsClient>>,
    /// permessage-deflate was negotiated.
    pub z: bool,
    /// The server keeps its deflate context between messages: this
    /// connection inflates with its own inflater (else the worker's).
    pub own_inflater: Option<Box<Inflater>>,
}

impl ConnCore {
    pub fn new(plan: &Plan, gen: u32, pubs_per_room: usize, now: u64) -> ConnCore {
        ConnCore {
            state: State::Connecting,
            gen,
            global: plan.global,
            node: plan.node,
            room: plan.room,
            tracks: plan.tracks,
            churn: plan.churn,
            hs: None,
            partial: Vec::new(),
            out: Vec::new(),
            out_pos: 0,
            in_dirty: false,
            asm: MessageAssembler::new(MAX_MESSAGE),
            sender: plan.publisher.as_ref().map(|p| Sender {
                id: p.id,
                seq: 0,
                interval_ns: p.interval_ns,
                offset_ns: p.offset_ns,
                start_ns: 0,
                blocked: false,
            }),
            trackers: if plan.tracks {
                vec![SeqTracker::default(); pubs_per_room.max(1)]
            } else {
                Vec::new()
            },
            started_ns: now,
            deadline_ns: 0,
            close_sent: false,
            close_recv: false,
            we_closed: false,
            lost_reason: None,
            cycle_done: false,
            ps: None,
            z: false,
            own_inflater: None,
        }
    }

    pub fn pending_out(&self) -> usize {
        self.out.len() - self.out_pos
    }

    /// Queues our close frame (code 1000) and starts the close deadline.
    pub fn start_close(&mut self, rng: &mut MaskRng, now: u64, timeout_ns: u64) {
        if self.close_sent {
            return;
        }
        let code = CloseCode::NORMAL.0.to_be_bytes();
        encode_client_frame(true, OpCode::Close, &code, rng.mask_key(), &mut self.out);
        self.close_sent = true;
        self.we_closed = true;
        self.deadline_ns = now + timeout_ns;
    }
}

/// Counters of one worker (summed over workers at the end).
#[derive(Clone, Copy, Debug, Default)]
pub struct Stats {
    /// Data messages sent, and their payload bytes.
    pub sent: u64,
    pub sent_bytes: u64,
    /// Tracked messages received (duplicates included) and their bytes.
    pub recv: u64,
    pub recv_bytes: u64,
    /// Tracked messages that were new (not duplicates).
    pub delivered: u64,
    /// Messages received by connections that do not track (publishers'
    /// own copies without --roles; idle connections).
    pub other_recv: u64,
    pub corrupted: u64,
    /// Valid messages from a publisher of another room.
    pub misrouted: u64,
    pub pings: u64,
    /// Deliveries expected from what this worker's publishers sent.
    pub expected: u64,
    pub attempted: u64,
    pub established: u64,
    pub failed: u64,
    pub lost_conns: u64,
    pub open_now: u64,
    pub closes_clean: u64,
    pub closes_unclean: u64,
    pub cycles: u64,
    /// pubsub: publish replies (ok or error).
    pub pub_acked: u64,
    /// pubsub: reconnected clients that finished resubscribing.
    pub resubscribed: u64,
    /// pubsub: connections dropped on purpose (reconnect modes).
    pub dropped: u64,
    /// Connections opened with and without permessage-deflate (with
    /// --deflate; without it every connection counts as without).
    pub deflate_conns: u64,
    pub plain_conns: u64,
    /// Bytes read from and written to the sockets (TLS records, frame
    /// headers, handshakes and all).
    pub wire_in: u64,
    pub wire_out: u64,
    /// Data message payloads received (after inflation) and sent (before
    /// compression), every message kind (pubsub commands included).
    pub payload_in: u64,
    pub payload_out: u64,
    /// Data messages received and sent compressed (RSV1).
    pub compressed_in: u64,
    pub compressed_out: u64,
    /// Compressed messages whose inflation was reused (see
    /// [`InflateCache`]).
    pub inflate_reused: u64,
    /// Data messages received and sent in all.
    pub data_in: u64,
    pub data_out: u64,
    /// TLS handshakes completed (full and resumed) and failed.
    pub tls_full: u64,
    pub tls_resumed: u64,
    pub tls_failed: u64,
}

/// The per-thread state the receive path needs besides the connection.
pub struct Tls {
    pub decoder: FrameDecoder,
    /// The decoder of connections that negotiated deflate (RSV1 allowed).
    pub decoder_z: FrameDecoder,
    /// Shared by every deflate connection of the worker whose server does
    /// not take its context over.
    pub inflater: Inflater,
    /// With --deflate: compresses what deflate connections send.
    pub zc: Option<Compressor>,
    pub zcache: InflateCache,
    pub rng: MaskRng,
    pub template: Vec<u8>,
    pub format: Format,
    pub stats: Stats,
    /// Latency of messages received in the current second.
    pub hist: Histogram<u64>,
    pub handshake: Histogram<u64>,
    /// TCP connect start to the completed TLS handshake (wss://).
    pub tls_handshake: Histogram<u64>,
    pub rooms: u32,
    pub subs_in_room: Vec<u32>,
    /// All-publish fanout: a member's own messages are not accounted
    /// (relays differ on whether the sender gets its own copy).
    pub skip_own: bool,
    /// Sending allowed now (running, before the end, budget left).
    pub may_send: bool,
    pub send_end: u64,
    pub budget: u64,
    pub close_timeout_ns: u64,
    /// After the close handshake, how long to wait for the server to
    /// close TCP before closing it ourselves (RFC 6455 §7.1.1).
    pub fin_wait_ns: u64,
    /// The pubsub scenario's per-worker state.
    pub ps: Option<crate::pubsub::client::PsTls>,
    /// Several nodes: accounting per receiving node.
    pub nodes: Option<crate::nodes::NodeTrack>,
}

pub fn new_hist() -> Histogram<u64> {
    // 1 ns .. 100 s at 3 significant digits.
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("histogram bounds")
}

impl Tls {
    pub fn new(size: usize, rooms: u32, subs_in_room: Vec<u32>, close_timeout_ns: u64) -> Tls {
        Tls {
            decoder: FrameDecoder::new(Role::Client, MAX_MESSAGE),
            decoder_z: FrameDecoder::new(Role::Client, MAX_MESSAGE).with_allowed_rsv(0x4),
            inflater: Inflater::new(),
            zc: None,
            zcache: InflateCache::default(),
            rng: MaskRng::new(),
            template: payload::template(size),
            format: Format::Binary,
            stats: Stats::default(),
            hist: new_hist(),
            handshake: new_hist(),
            tls_handshake: new_hist(),
            rooms: rooms.max(1),
            subs_in_room,
            skip_own: false,
            may_send: false,
            send_end: 0,
            budget: u64::MAX,
            close_timeout_ns,
            fin_wait_ns: close_timeout_ns,
            ps: None,
            nodes: None,
        }
    }

    /// Switches to printable payloads (`--text`).
    pub fn set_format(&mut self, format: Format) {
        self.format = format;
        self.template = format.template(self.template.len());
    }

    /// Offers permessage-deflate (`--deflate`).
    pub fn enable_deflate(&mut self) {
        self.zc = Some(Compressor::new());
    }

    /// Appends one data message to `out` (compressed on a connection
    /// that negotiated deflate: `z`).
    #[inline]
    pub fn send(
        &mut self,
        out: &mut Vec<u8>,
        z: bool,
        publisher: u32,
        seq: u64,
        room: u32,
        at_ns: u64,
    ) {
        self.format.write(&mut self.template, publisher, seq, at_ns);
        let opcode = if self.format.is_text() {
            OpCode::Text
        } else {
            OpCode::Binary
        };
        data_frame(
            opcode,
            &self.template,
            z,
            &mut self.zc,
            &mut self.rng,
            &mut self.stats,
            out,
        );
        self.stats.sent += 1;
        self.stats.sent_bytes += self.template.len() as u64;
        self.stats.expected += self.subs_in_room.get(room as usize).copied().unwrap_or(0) as u64;
        self.budget = self.budget.saturating_sub(1);
        if self.budget == 0 {
            self.may_send = false;
        }
    }
}

/// Appends one data message (one frame), compressed when the connection
/// negotiated deflate (`z`) and that makes it smaller; counts it.
#[inline]
pub fn data_frame(
    opcode: OpCode,
    payload: &[u8],
    z: bool,
    zc: &mut Option<Compressor>,
    rng: &mut MaskRng,
    stats: &mut Stats,
    out: &mut Vec<u8>,
) {
    stats.data_out += 1;
    stats.payload_out += payload.len() as u64;
    match zc.as_mut() {
        Some(zc) if z => {
            if zc.frame(opcode, payload, rng, out) {
                stats.compressed_out += 1;
            }
        }
        _ => encode_client_frame(true, opcode, payload, rng.mask_key(), out),
    }
}

/// Compressed single-frame messages a worker inflated lately, and what
/// they inflated to.
///
/// A server without context takeover compresses each broadcast once and
/// sends the same compressed bytes to every subscriber; inflating them is
/// a pure function of those bytes (a fresh window every message), so the
/// worker inflates each distinct payload once and reuses the result for
/// byte-identical copies. Every copy is still compared byte for byte with
/// the cached input (a copy that differs in any byte is inflated on its
/// own) and every copy's plaintext still goes through all the checks. This
/// keeps the generator's receive cost per delivery near the uncompressed
/// one, so fan-out measures the server rather than the generator's
/// inflater (about 1 µs per 512-byte message, which caps one core near
/// 1M deliveries/s). Only for the shared inflater (no context takeover).
///
/// Sized for fan-out backlogs: each subscriber's read returns a run of
/// messages, so the distinct messages in flight are about rate × latency;
/// [`INFLATE_CACHE`] entries of at most [`INFLATE_CACHE_MAX`] bytes each
/// way (at most 32 MiB), replaced oldest first.
#[derive(Default)]
pub struct InflateCache {
    entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// Hash of an entry's input -> its index.
    index: std::collections::HashMap<u64, usize>,
    next: usize,
}

const INFLATE_CACHE: usize = 1024;
const INFLATE_CACHE_MAX: usize = 16 << 10;

impl InflateCache {
    /// The entry whose compressed input is exactly `input`.
    fn find(&self, input: &[u8]) -> Option<usize> {
        let &i = self.index.get(&payload::hash(input))?;
        (self.entries[i].0.as_slice() == input).then_some(i)
    }

    fn insert(&mut self, input: &[u8], output: &[u8]) {
        if input.len() > INFLATE_CACHE_MAX || output.len() > INFLATE_CACHE_MAX {
            return;
        }
        let h = payload::hash(input);
        if self.entries.len() < INFLATE_CACHE {
            self.index.insert(h, self.entries.len());
            self.entries.push((input.to_vec(), output.to_vec()));
            return;
        }
        let slot = self.next;
        self.next = (self.next + 1) % INFLATE_CACHE;
        let (i, o) = &mut self.entries[slot];
        let old = payload::hash(i);
        if self.index.get(&old) == Some(&slot) {
            self.index.remove(&old);
        }
        i.clear();
        i.extend_from_slice(input);
        o.clear();
        o.extend_from_slice(output);
        self.index.insert(h, slot);
    }
}

/// Result of feeding bytes to a connection.
pub struct Fed {
    /// Bytes used; the rest is an incomplete frame to keep.
    pub consumed: usize,
    pub opened: bool,
    /// A close frame arrived (the close handshake is complete if we had
    /// sent ours).
    pub closed: bool,
    pub remove: Option<Removal>,
}

/// Feeds received bytes (handshake response, then frames) to `c`.
pub fn feed(c: &mut ConnCore, buf: &mut [u8], now: u64, t: &mut Tls) -> Fed {
    let mut pos = 0;
    let mut opened = false;
    let mut closed = false;
    if c.state == State::Handshake {
        let hs = c.hs.as_ref().expect("handshake state without handshake");
        match hs.parse_response(buf) {
            Ok(None) => {
                return Fed {
                    consumed: 0,
                    opened,
                    closed,
                    remove: None,
                }
            }
            Ok(Some(resp)) => {
                match crate::deflate::parse_answer(&buf[..resp.head_len], t.zc.is_some()) {
                    Ok(Some(agreed)) => {
                        c.z = true;
                        if agreed.server_takeover {
                            c.own_inflater = Some(Box::new(Inflater::new()));
                        }
                        t.stats.deflate_conns += 1;
                    }
                    Ok(None) => t.stats.plain_conns += 1,
                    Err(e) => {
                        return Fed {
                            consumed: 0,
                            opened,
                            closed,
                            remove: Some(Removal::Failed(format!("handshake: {e}"))),
                        }
                    }
                }
                c.hs = None;
                c.state = State::Open;
                c.deadline_ns = 0;
                opened = true;
                pos = resp.head_len;
                t.stats.established += 1;
                t.stats.open_now += 1;
                t.handshake
                    .saturating_record(now.saturating_sub(c.started_ns).max(1));
            }
            Err(e) => {
                return Fed {
                    consumed: 0,
                    opened,
                    closed,
                    remove: Some(Removal::Failed(format!("handshake: {e}"))),
                }
            }
        }
    }
    while pos < buf.len() {
        let decoder = if c.z { &t.decoder_z } else { &t.decoder };
        let f = match decoder.decode(&mut buf[pos..]) {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(e) => return protocol_error(c, t, pos, opened, e),
        };
        let (start, end) = (pos + f.payload.start, pos + f.payload.end);
        pos += f.consumed;
        if c.close_recv {
            continue;
        }
        let h = &f.header;
        let compressed = h.rsv & 0x4 != 0;
        if compressed {
            t.stats.compressed_in += 1;
        }
        let whole = h.fin && matches!(h.opcode, OpCode::Text | OpCode::Binary);
        let cacheable = compressed && whole && c.own_inflater.is_none() && !c.asm.in_message();
        // A byte-identical copy of a message inflated lately: its result,
        // taken out of the cache while in use.
        let mut hit: Option<(usize, Vec<u8>)> = None;
        if cacheable {
            if let Some(i) = t.zcache.find(&buf[start..end]) {
                hit = Some((i, std::mem::take(&mut t.zcache.entries[i].1)));
                t.stats.inflate_reused += 1;
            }
        }
        let ev = if let Some((_, out)) = &hit {
            Ok(Event::Message {
                kind: MessageKind::Binary,
                data: out.as_slice(),
            })
        } else if whole && !compressed && !c.asm.in_message() {
            // Fast path: a whole message in one frame, a borrow of the read
            // buffer. Text is not UTF-8 checked here: load payloads are
            // binary, and some peers relay them as text frames (gorilla's
            // chat example); the checksum catches any damage.
            Ok(Event::Message {
                kind: MessageKind::Binary,
                data: &buf[start..end],
            })
        } else if c.z {
            let inflate = match c.own_inflater.as_deref_mut() {
                Some(own) => Inflate {
                    inflater: own,
                    context_takeover: true,
                },
                None => Inflate {
                    inflater: &mut t.inflater,
                    context_takeover: false,
                },
            };
            c.asm.on_frame_with(h, &buf[start..end], Some(inflate))
        } else {
            c.asm.on_frame(h, &buf[start..end])
        };
        if let Ok(Event::Message { data, .. }) = &ev {
            t.stats.data_in += 1;
            t.stats.payload_in += data.len() as u64;
            if cacheable && hit.is_none() {
                t.zcache.insert(&buf[start..end], data);
            }
        }
        match ev {
            Ok(Event::Message { data, .. }) if c.ps.is_some() => {
                if let Some(ps) = c.ps.as_mut() {
                    if !c.close_sent {
                        ps.on_message(data, now, t, &mut c.out);
                    }
                }
            }
            Ok(Event::Message { data, .. }) => {
                // (Captures the connection's fields one by one, so it can
                // run while `data` still borrows the assembler.)
                let mut on_data = |piece: &[u8], t: &mut Tls| {
                    if c.tracks {
                        let own = c.sender.as_ref().map(|s| s.id);
                        on_tracked(c.room, c.node, own, &mut c.trackers, piece, now, t);
                        // Closed loop: one message back, one more out.
                        if let Some(s) = c.sender.as_mut() {
                            if s.closed_loop() && t.may_send && !c.close_sent && now < t.send_end {
                                t.send(&mut c.out, c.z, s.id, s.seq, c.room, now);
                                s.seq += 1;
                            }
                        }
                    } else if c.churn {
                        t.stats.recv += 1;
                        t.stats.recv_bytes += piece.len() as u64;
                        if t.format.check(piece).is_err() {
                            t.stats.corrupted += 1;
                        }
                        if !c.close_sent {
                            let code = CloseCode::NORMAL.0.to_be_bytes();
                            let key = t.rng.mask_key();
                            encode_client_frame(true, OpCode::Close, &code, key, &mut c.out);
                            c.close_sent = true;
                            c.we_closed = true;
                            c.deadline_ns = now + t.close_timeout_ns;
                        }
                    } else {
                        t.stats.other_recv += 1;
                    }
                };
                if t.format == Format::Text && data.contains(&b'\n') {
                    // Peers that join queued messages with '\n'.
                    for piece in data.split(|&b| b == b'\n') {
                        on_data(piece, t);
                    }
                } else {
                    on_data(data, t);
                }
            }
            Ok(Event::Fragment) | Ok(Event::Pong(_)) => {}
            Ok(Event::Ping(p)) => {
                t.stats.pings += 1;
                if !c.close_sent {
                    encode_client_frame(true, OpCode::Pong, p, t.rng.mask_key(), &mut c.out);
                }
            }
            Ok(Event::Close { code, reason }) => {
                c.close_recv = true;
                if !c.close_sent {
                    // Answer with the same code (RFC 6455 §5.5.1).
                    let bytes;
                    let body: &[u8] = match code {
                        Some(code) => {
                            bytes = code.0.to_be_bytes();
                            &bytes
                        }
                        None => &[],
                    };
                    encode_client_frame(true, OpCode::Close, body, t.rng.mask_key(), &mut c.out);
                    c.close_sent = true;
                    let code = code.map_or("no code".to_string(), |c| c.0.to_string());
                    let reason = if reason.is_empty() {
                        String::new()
                    } else {
                        format!(" ({})", reason.chars().take(40).collect::<String>())
                    };
                    c.lost_reason = Some(format!("server sent close {code}{reason}"));
                }
                // The server closes TCP next; do not wait forever.
                c.deadline_ns = now + t.fin_wait_ns;
                closed = true;
            }
            Err(e) => return protocol_error(c, t, pos, opened, e),
        }
        if let Some((i, out)) = hit {
            t.zcache.entries[i].1 = out;
        }
    }
    Fed {
        consumed: pos,
        opened,
        closed,
        remove: None,
    }
}

fn protocol_error(
    c: &mut ConnCore,
    t: &mut Tls,
    pos: usize,
    opened: bool,
    e: wsrelay::protocol::ProtocolError,
) -> Fed {
    if !c.close_sent {
        let code = e.close_code().0.to_be_bytes();
        encode_client_frame(true, OpCode::Close, &code, t.rng.mask_key(), &mut c.out);
        c.close_sent = true;
    }
    Fed {
        consumed: pos,
        opened,
        closed: false,
        remove: Some(Removal::Lost(format!("protocol error: {}", e.reason()))),
    }
}

/// A message received by a tracking connection: integrity, routing,
/// sequence and latency.
#[inline]
fn on_tracked(
    room: u32,
    node: u16,
    own: Option<u32>,
    trackers: &mut [SeqTracker],
    data: &[u8],
    now: u64,
    t: &mut Tls,
) {
    let h = match t.format.check(data) {
        Ok(h) => h,
        Err(_) => {
            t.stats.corrupted += 1;
            return;
        }
    };
    if t.skip_own && own == Some(h.publisher) {
        t.stats.other_recv += 1;
        return;
    }
    let idx = (h.publisher / t.rooms) as usize;
    if h.publisher % t.rooms != room || idx >= trackers.len() {
        t.stats.misrouted += 1;
        return;
    }
    t.stats.recv += 1;
    t.stats.recv_bytes += data.len() as u64;
    let new = trackers[idx].record(h.seq) != Seen::Duplicate;
    t.stats.delivered += new as u64;
    if let Some(n) = t.nodes.as_mut() {
        n.record(node, h.publisher, new, now, h.sent_ns);
    }
    t.hist
        .saturating_record(now.saturating_sub(h.sent_ns).max(1));
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsrelay::protocol::encode_frame;

    fn sub_conn() -> ConnCore {
        let plan = Plan {
            global: 0,
            node: 0,
            path: "/rooms/x".into(),
            room: 0,
            publisher: None,
            tracks: true,
            churn: false,
            channels: Vec::new(),
        };
        let mut c = ConnCore::new(&plan, 1, 2, 0);
        c.state = State::Open;
        c
    }

    fn msg(publisher: u32, seq: u64, sent: u64) -> Vec<u8> {
        let mut m = payload::template(64);
        payload::write(&mut m, publisher, seq, sent);
        let mut f = Vec::new();
        encode_frame(true, OpCode::Binary, &m, &mut f);
        f
    }

    #[test]
    fn frames_split_anywhere_are_accounted_once() {
        let mut wire = Vec::new();
        for seq in 0..10 {
            wire.extend(msg(0, seq, 5));
            wire.extend(msg(1, seq, 5));
        }
        wire.extend([0x89, 0x02, b'h', b'i']); // ping
        for cut in [1usize, 7, 70, 71, 100, wire.len() - 1] {
            let mut c = sub_conn();
            let mut t = Tls::new(64, 1, vec![1], 1);
            let mut buf = wire[..cut].to_vec();
            let fed = feed(&mut c, &mut buf, 10, &mut t);
            assert!(fed.remove.is_none());
            let mut rest = buf[fed.consumed..].to_vec();
            rest.extend_from_slice(&wire[cut..]);
            let fed2 = feed(&mut c, &mut rest, 10, &mut t);
            assert_eq!(fed2.consumed, rest.len(), "cut {cut}");
            assert_eq!(t.stats.recv, 20);
            assert_eq!(t.stats.delivered, 20);
            assert_eq!(t.stats.pings, 1);
            assert_eq!(c.trackers[0].unique, 10);
            assert_eq!(c.trackers[1].unique, 10);
            assert_eq!(t.hist.len(), 20);
            assert_eq!(t.hist.max(), 5);
            // Pong queued, masked.
            assert_eq!(c.out[0], 0x8a);
            assert_eq!(c.out[1], 0x82);
        }
    }

    /// Compressed server messages (RSV1, as the relay compresses a
    /// broadcast) are inflated before the checks; a byte-identical copy on
    /// another connection reuses the inflation, a copy differing in one
    /// byte does not (and fails its checks), and connections that did not
    /// negotiate deflate refuse RSV1.
    #[test]
    fn compressed_messages_are_inflated_checked_and_copies_reused() {
        use wsrelay::protocol::deflate::{compress_frames, Deflater};
        let mut d = Deflater::new(1, 15);
        let mut plain = msg(0, 0, 3);
        plain.extend(msg(0, 1, 3));
        let wire = compress_frames(&plain, &mut d, 0, &mut Default::default()).unwrap();
        assert_eq!(wire[0] & 0x40, 0x40, "compressed");
        let mut t = Tls::new(64, 1, vec![2], 1);
        let mut a = sub_conn();
        a.z = true;
        let mut b = sub_conn();
        b.z = true;
        let fed = feed(&mut a, &mut wire.clone(), 5, &mut t);
        assert!(fed.remove.is_none());
        let fed = feed(&mut b, &mut wire.clone(), 5, &mut t);
        assert!(fed.remove.is_none());
        assert_eq!(
            (t.stats.recv, t.stats.delivered, t.stats.corrupted),
            (4, 4, 0)
        );
        assert_eq!(t.stats.compressed_in, 4);
        assert_eq!(t.stats.inflate_reused, 2);
        assert_eq!(t.stats.payload_in, 4 * 64);
        assert_eq!(a.trackers[0].unique, 2);
        assert_eq!(b.trackers[0].unique, 2);

        // One byte changed in the first message's compressed payload: not
        // the cached input, so inflated on its own, and caught.
        let mut c = sub_conn();
        c.z = true;
        let mut bad = wire.clone();
        // (A byte in the middle: the last one holds padding bits.)
        let first_len = 2 + (bad[1] & 0x7f) as usize;
        bad[first_len / 2] ^= 0x01;
        let fed = feed(&mut c, &mut bad, 5, &mut t);
        assert_eq!(t.stats.inflate_reused, 3, "only the intact second message");
        assert!(
            fed.remove.is_some() || t.stats.corrupted == 1,
            "{:?}",
            fed.remove
        );

        // Without deflate negotiated, RSV1 is a protocol error.
        let mut p = sub_conn();
        let fed = feed(&mut p, &mut wire.clone(), 5, &mut t);
        assert!(matches!(fed.remove, Some(Removal::Lost(_))));
    }

    /// The inflation cache stays within its bounds, replaces oldest first,
    /// and never answers for an input it does not hold byte for byte.
    #[test]
    fn inflate_cache_is_bounded_and_exact() {
        let mut c = InflateCache::default();
        let key = |n: usize| format!("compressed-{n}").into_bytes();
        for n in 0..INFLATE_CACHE + 10 {
            c.insert(&key(n), &n.to_le_bytes());
        }
        assert_eq!(c.entries.len(), INFLATE_CACHE);
        assert!(c.index.len() <= INFLATE_CACHE);
        for n in 0..10 {
            assert_eq!(c.find(&key(n)), None, "{n} was replaced");
        }
        for n in 10..INFLATE_CACHE + 10 {
            let i = c.find(&key(n)).unwrap();
            assert_eq!(c.entries[i].1, n.to_le_bytes());
        }
        assert_eq!(c.find(b"compressed-"), None);
        // Too large to keep: not cached.
        let big = vec![7u8; INFLATE_CACHE_MAX + 1];
        c.insert(&big, b"x");
        assert_eq!(c.find(&big), None);
    }

    #[test]
    fn corruption_misrouting_and_duplicates() {
        let mut c = sub_conn();
        let mut t = Tls::new(64, 2, vec![1, 1], 1);
        let mut wire = msg(0, 0, 1);
        wire.extend(msg(0, 0, 1)); // duplicate
        wire.extend(msg(1, 0, 1)); // publisher 1 is in room 1
        let mut bad = msg(2, 0, 1);
        let n = bad.len();
        bad[n - 1] ^= 0xff;
        wire.extend(bad);
        let fed = feed(&mut c, &mut wire, 2, &mut t);
        assert!(fed.remove.is_none());
        assert_eq!(t.stats.recv, 2);
        assert_eq!(t.stats.delivered, 1);
        assert_eq!(c.trackers[0].dup, 1);
        assert_eq!(t.stats.misrouted, 1);
        assert_eq!(t.stats.corrupted, 1);
    }

    #[test]
    fn server_close_is_answered_and_protocol_errors_fail() {
        let mut c = sub_conn();
        let mut t = Tls::new(64, 1, vec![1], 1);
        let mut wire = vec![0x88, 0x02, 0x03, 0xe9]; // close 1001
        let fed = feed(&mut c, &mut wire, 1, &mut t);
        assert!(fed.remove.is_none());
        assert!(c.close_recv && c.close_sent && !c.we_closed);
        assert_eq!(c.out[0], 0x88);
        assert!(c.lost_reason.as_deref().unwrap().contains("1001"));
        let mut c = sub_conn();
        let mut wire = vec![0x82, 0x81, 0, 0, 0, 0, 0]; // masked from server
        let fed = feed(&mut c, &mut wire, 1, &mut t);
        assert!(matches!(fed.remove, Some(Removal::Lost(_))));
        assert_eq!(&c.out[..1], &[0x88]);
    }

    #[test]
    fn text_payloads_joined_with_newlines_are_split() {
        let mut c = sub_conn();
        let mut t = Tls::new(80, 1, vec![1], 1);
        t.set_format(Format::Text);
        let mut joined = Vec::new();
        for seq in 0..3 {
            let mut m = Format::Text.template(80);
            Format::Text.write(&mut m, 1, seq, 1);
            if seq > 0 {
                joined.push(b'\n');
            }
            joined.extend_from_slice(&m);
        }
        let mut wire = Vec::new();
        // Fragmented text frame, as gorilla writes a joined queue.
        encode_frame(false, OpCode::Text, &joined[..100], &mut wire);
        encode_frame(true, OpCode::Continuation, &joined[100..], &mut wire);
        let fed = feed(&mut c, &mut wire, 2, &mut t);
        assert!(fed.remove.is_none());
        assert_eq!(t.stats.recv, 3);
        assert_eq!(c.trackers[1].unique, 3);
        assert_eq!(t.stats.corrupted, 0);
        // What we send is a text frame.
        let mut out = Vec::new();
        t.send(&mut out, false, 0, 0, 0, 1);
        assert_eq!(out[0], 0x81);
    }

    #[test]
    fn closed_loop_sends_one_per_echo() {
        let plan = Plan {
            global: 3,
            node: 0,
            path: "/echo".into(),
            room: 3,
            publisher: Some(crate::plan::PubPlan {
                id: 3,
                interval_ns: 0.0,
                offset_ns: 0,
            }),
            tracks: true,
            churn: false,
            channels: Vec::new(),
        };
        let mut c = ConnCore::new(&plan, 1, 1, 0);
        c.state = State::Open;
        let mut t = Tls::new(64, 4, vec![1; 4], 1);
        t.may_send = true;
        t.send_end = u64::MAX;
        t.budget = 1;
        let mut wire = msg(3, 0, 1);
        wire.extend(msg(3, 1, 1));
        feed(&mut c, &mut wire, 5, &mut t);
        assert_eq!(t.stats.recv, 2);
        // Budget of one: one new message, then no more.
        assert_eq!(t.stats.sent, 1);
        assert_eq!(c.sender.as_ref().unwrap().seq, 1);
        assert!(!t.may_send);
        let mut dec = c.out.clone();
        let d = FrameDecoder::new(Role::Server, 1 << 20)
            .decode(&mut dec)
            .unwrap()
            .unwrap();
        let h = payload::check(&dec[d.payload]).unwrap();
        assert_eq!((h.publisher, h.seq, h.sent_ns), (3, 0, 5));
    }
}
