//! One protocol client (subscriber or publisher), sans-IO: fed the text of
//! each WebSocket message, it appends the frames to send. Its
//! subscriptions (stream positions, sequence trackers) outlive the
//! connection, so a reconnect resubscribes with `recover` from where it
//! left off.

use super::proto::{self, Line, PubData, Reply};
use super::track::{Got, SubTrack};
use crate::conn::{new_hist, Tls};
use hdrhistogram::Histogram;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use wsrelay::protocol::{MaskRng, OpCode};

/// What every client of a run shares, read-only.
#[derive(Debug)]
pub struct PsConfig {
    /// Channel names, index k = the `k` in publication data.
    pub channels: Vec<String>,
    pub publishers: u32,
    /// Publication data padded to at least this many bytes.
    pub pad_to: usize,
    pub token: TokenMode,
}

#[derive(Clone, Debug)]
pub enum TokenMode {
    /// Anonymous connect (no token).
    None,
    /// One token for every connection.
    Fixed(String),
    /// HS256 tokens minted per connection, `sub` = `load-<i>`.
    Hmac(String),
}

/// Mints an HS256 connection token with `sub` and a one-day `exp` (the
/// relay disconnects at `exp` unless the client refreshes, which the
/// generator does not do).
pub fn mint_hs256(secret: &str, sub: &str) -> Result<String, String> {
    #[derive(serde::Serialize)]
    struct Claims<'a> {
        sub: &'a str,
        exp: u64,
        iat: u64,
    }
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let key = jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())
        .map_err(|e| format!("HMAC key: {e}"))?;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &Claims {
            sub,
            exp: now + 86_400,
            iat: now,
        },
        &key,
    )
    .map_err(|e| format!("minting a token: {e}"))
}

/// Counters of one worker's clients (summed at the end).
#[derive(Clone, Debug, Default)]
pub struct PsStats {
    pub connect_ok: u64,
    pub subscribe_ok: u64,
    pub resubscribe_ok: u64,
    pub publish_ok: u64,
    pub publish_err: u64,
    /// Publishes whose connection ended before the reply.
    pub publish_unacked: u64,
    pub pings: u64,
    pub other_pushes: BTreeMap<String, u64>,
    /// Lines that are not protocol JSON.
    pub bad_lines: u64,
    /// Replies with an id we were not waiting for, or of the wrong kind.
    pub unexpected_replies: u64,
    /// Publications for a channel this client is not subscribed to.
    pub unknown_channel: u64,
    /// Error replies: "method code message" → count.
    pub errors: BTreeMap<String, u64>,
    /// Connections dropped on purpose (reconnect modes) and reopened.
    pub drops: u64,
    pub reconnects: u64,
    /// Reconnect modes: failed or lost subscribers tried again.
    pub retries: u64,
    /// Latest moment a reconnected client finished resubscribing.
    pub last_resub_ns: u64,
}

/// The per-worker pubsub state next to `Tls`.
pub struct PsTls {
    pub cfg: Arc<PsConfig>,
    /// Per channel: subscriptions made during the connect phase (over
    /// all workers); each acknowledged publication is owed to them.
    pub subs_count: Arc<Vec<AtomicU64>>,
    /// Several nodes: the same per node, index node × channels + channel.
    pub subs_count_node: Option<Arc<Vec<AtomicU64>>>,
    /// Still in the connect phase: successful subscribes are counted.
    pub initial: bool,
    pub st: PsStats,
    /// Intended send time to the publish reply.
    pub ack: Histogram<u64>,
    /// Reconnect start to the last subscribe reply.
    pub resub: Histogram<u64>,
    /// Clients of the connect phase not ready yet.
    pub setting_up: u64,
    scratch: Vec<u8>,
}

impl PsTls {
    pub fn new(cfg: Arc<PsConfig>, subs_count: Arc<Vec<AtomicU64>>) -> PsTls {
        PsTls {
            cfg,
            subs_count,
            subs_count_node: None,
            initial: true,
            st: PsStats::default(),
            ack: new_hist(),
            resub: new_hist(),
            setting_up: 0,
            scratch: Vec::with_capacity(256),
        }
    }
}

fn bump(m: &mut BTreeMap<String, u64>, k: String) {
    *m.entry(k).or_insert(0) += 1;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// WebSocket not open yet.
    Idle,
    Connecting,
    Subscribing,
    Ready,
    /// Connect refused: nothing more to do on this connection.
    Failed,
}

#[derive(Clone, Copy, Debug)]
enum Pending {
    Connect,
    Subscribe { j: usize, recovering: bool },
    Publish { k: u32, at: u64 },
}

pub struct PsClient {
    pub phase: Phase,
    /// Publisher id, for publishers.
    pub publisher: Option<u32>,
    pub subs: Vec<SubTrack>,
    pub token: Option<String>,
    next_id: u32,
    pending: HashMap<u32, Pending>,
    waiting: usize,
    /// Counted in `PsTls::setting_up` until ready.
    pub setup_pending: bool,
    /// When the current reconnect started (0: first connection).
    pub reconnect_ns: u64,
    /// Publisher: per channel, publications sent and acknowledged.
    pub sent_k: Vec<u64>,
    pub acked_k: Vec<u64>,
    /// Publisher: publications left (recovery burst); u64::MAX: no limit.
    pub budget: u64,
    /// The current connection negotiated permessage-deflate.
    pub z: bool,
    /// Node this client connects to (several `--url`s).
    pub node: u16,
}

impl PsClient {
    pub fn new(
        cfg: &PsConfig,
        channels: &[u32],
        publisher: Option<u32>,
        token: Option<String>,
    ) -> PsClient {
        let n = cfg.channels.len();
        PsClient {
            phase: Phase::Idle,
            publisher,
            subs: channels
                .iter()
                .map(|&k| SubTrack::new(k, cfg.publishers as usize))
                .collect(),
            token,
            next_id: 1,
            pending: HashMap::new(),
            waiting: 0,
            setup_pending: false,
            reconnect_ns: 0,
            sent_k: if publisher.is_some() {
                vec![0; n]
            } else {
                Vec::new()
            },
            acked_k: if publisher.is_some() {
                vec![0; n]
            } else {
                Vec::new()
            },
            budget: u64::MAX,
            z: false,
            node: 0,
        }
    }

    pub fn ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    fn id(&mut self) -> u32 {
        let id = self.next_id;
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        id
    }

    /// The WebSocket opened: send `connect`.
    pub fn start(&mut self, t: &mut Tls, out: &mut Vec<u8>) {
        let Some(ps) = t.ps.as_mut() else { return };
        self.phase = Phase::Connecting;
        let id = self.id();
        self.pending.insert(id, Pending::Connect);
        ps.scratch.clear();
        proto::connect(&mut ps.scratch, id, self.token.as_deref());
        frame(
            &ps.scratch,
            self.z,
            &mut t.zc,
            &mut t.rng,
            &mut t.stats,
            out,
        );
    }

    /// The connection ended: what was in flight will not be answered.
    pub fn reset(&mut self, t: &mut Tls) {
        let unacked = self
            .pending
            .values()
            .filter(|p| matches!(p, Pending::Publish { .. }))
            .count() as u64;
        self.pending.clear();
        self.waiting = 0;
        self.phase = Phase::Idle;
        for s in &mut self.subs {
            s.subscribed = false;
        }
        if let Some(ps) = t.ps.as_mut() {
            ps.st.publish_unacked += unacked;
            if self.setup_pending {
                self.setup_pending = false;
                ps.setting_up = ps.setting_up.saturating_sub(1);
            }
        }
    }

    /// Publishes message `seq` of this publisher (intended at `at`): it
    /// goes to channel (p + seq) mod C as that channel's number seq / C.
    pub fn publish(&mut self, seq: u64, at: u64, t: &mut Tls, out: &mut Vec<u8>) -> bool {
        let (Some(p), Some(ps)) = (self.publisher, t.ps.as_mut()) else {
            return false;
        };
        if self.phase != Phase::Ready || self.budget == 0 {
            return false;
        }
        let c = ps.cfg.channels.len() as u64;
        let k = ((p as u64 + seq) % c) as u32;
        let d = PubData {
            p,
            k,
            s: seq / c,
            t: at,
        };
        let id = self.id();
        self.pending.insert(id, Pending::Publish { k, at });
        ps.scratch.clear();
        proto::publish(
            &mut ps.scratch,
            id,
            &ps.cfg.channels[k as usize],
            d,
            ps.cfg.pad_to,
        );
        frame(
            &ps.scratch,
            self.z,
            &mut t.zc,
            &mut t.rng,
            &mut t.stats,
            out,
        );
        self.sent_k[k as usize] += 1;
        self.budget = self.budget.saturating_sub(1);
        t.stats.sent += 1;
        t.stats.sent_bytes += ps.scratch.len() as u64;
        t.budget = t.budget.saturating_sub(1);
        if t.budget == 0 {
            t.may_send = false;
        }
        true
    }

    /// One WebSocket message from the server.
    pub fn on_message(&mut self, msg: &[u8], now: u64, t: &mut Tls, out: &mut Vec<u8>) {
        for line in proto::lines(msg) {
            self.on_line(line, now, t, out);
        }
    }

    fn on_line(&mut self, line: &[u8], now: u64, t: &mut Tls, out: &mut Vec<u8>) {
        let Some(ps) = t.ps.as_mut() else { return };
        match proto::decode(line) {
            Line::Ping => {
                ps.st.pings += 1;
                t.stats.pings += 1;
                ps.scratch.clear();
                proto::pong(&mut ps.scratch);
                frame(
                    &ps.scratch,
                    self.z,
                    &mut t.zc,
                    &mut t.rng,
                    &mut t.stats,
                    out,
                );
            }
            Line::Pub {
                channel,
                publication,
            } => {
                let cfg = &ps.cfg;
                let found = self.subs.iter_mut().find(|s| {
                    cfg.channels
                        .get(s.k as usize)
                        .is_some_and(|n| n.as_bytes() == channel)
                });
                let Some(sub) = found else {
                    ps.st.unknown_channel += 1;
                    return;
                };
                let got = sub.on_pub(&publication);
                t.stats.recv += 1;
                t.stats.recv_bytes += line.len() as u64;
                match got {
                    Got::New(d) | Got::Reordered(d) => {
                        t.stats.delivered += 1;
                        t.hist.saturating_record(now.saturating_sub(d.t).max(1));
                        if let Some(n) = t.nodes.as_mut() {
                            n.record(self.node, d.p, true, now, d.t);
                        }
                    }
                    Got::Duplicate => {
                        if let Some(a) = t
                            .nodes
                            .as_mut()
                            .and_then(|n| n.per.get_mut(self.node as usize))
                        {
                            a.received += 1;
                        }
                    }
                    Got::Misrouted => t.stats.misrouted += 1,
                    Got::Foreign => t.stats.corrupted += 1,
                }
            }
            Line::Push(kind) => bump(&mut ps.st.other_pushes, kind),
            Line::Bad => ps.st.bad_lines += 1,
            Line::Reply { id, reply } => {
                let Some(p) = self.pending.remove(&id) else {
                    ps.st.unexpected_replies += 1;
                    return;
                };
                self.on_reply(p, reply, now, t, out);
            }
        }
    }

    fn on_reply(&mut self, p: Pending, reply: Reply, now: u64, t: &mut Tls, out: &mut Vec<u8>) {
        let Some(ps) = t.ps.as_mut() else { return };
        match (p, reply) {
            (p, Reply::Error { code, message }) => {
                let method = match p {
                    Pending::Connect => "connect",
                    Pending::Subscribe { .. } => "subscribe",
                    Pending::Publish { .. } => "publish",
                };
                bump(&mut ps.st.errors, format!("{method} {code} {message}"));
                match p {
                    Pending::Connect => {
                        self.phase = Phase::Failed;
                        self.became_ready(now, t, false);
                    }
                    Pending::Subscribe { .. } => self.one_subscribed(now, t),
                    Pending::Publish { at, .. } => {
                        ps.st.publish_err += 1;
                        ps.ack.saturating_record(now.saturating_sub(at).max(1));
                        t.stats.pub_acked += 1;
                    }
                }
            }
            (Pending::Connect, Reply::Connect { .. }) => {
                ps.st.connect_ok += 1;
                self.phase = Phase::Subscribing;
                if self.subs.is_empty() {
                    self.phase = Phase::Ready;
                    self.became_ready(now, t, true);
                    return;
                }
                // All subscribes in one frame, joined by '\n'.
                ps.scratch.clear();
                for j in 0..self.subs.len() {
                    let id = self.id();
                    let s = &self.subs[j];
                    let recover = if self.reconnect_ns > 0 {
                        s.recover_from()
                    } else {
                        None
                    };
                    self.pending.insert(
                        id,
                        Pending::Subscribe {
                            j,
                            recovering: recover.is_some(),
                        },
                    );
                    if j > 0 {
                        ps.scratch.push(b'\n');
                    }
                    proto::subscribe(&mut ps.scratch, id, &ps.cfg.channels[s.k as usize], recover);
                }
                self.waiting = self.subs.len();
                frame(
                    &ps.scratch,
                    self.z,
                    &mut t.zc,
                    &mut t.rng,
                    &mut t.stats,
                    out,
                );
            }
            (Pending::Subscribe { j, recovering }, Reply::Subscribe(r)) => {
                let Some(sub) = self.subs.get_mut(j) else {
                    return;
                };
                if ps.initial && !recovering && self.reconnect_ns == 0 {
                    if let Some(c) = ps.subs_count.get(sub.k as usize) {
                        c.fetch_add(1, Relaxed);
                    }
                    if let Some(per) = &ps.subs_count_node {
                        let i = self.node as usize * ps.cfg.channels.len() + sub.k as usize;
                        if let Some(c) = per.get(i) {
                            c.fetch_add(1, Relaxed);
                        }
                    }
                }
                ps.st.subscribe_ok += 1;
                let stats = &mut t.stats;
                sub.on_subscribed(&r, recovering, |g| {
                    stats.recv += 1;
                    match g {
                        Got::New(_) | Got::Reordered(_) => stats.delivered += 1,
                        Got::Misrouted => stats.misrouted += 1,
                        Got::Foreign => stats.corrupted += 1,
                        Got::Duplicate => {}
                    }
                });
                self.one_subscribed(now, t);
            }
            (Pending::Publish { k, at }, Reply::Publish) => {
                ps.st.publish_ok += 1;
                ps.ack.saturating_record(now.saturating_sub(at).max(1));
                if let Some(a) = self.acked_k.get_mut(k as usize) {
                    *a += 1;
                }
                t.stats.pub_acked += 1;
                t.stats.expected += ps.subs_count.get(k as usize).map_or(0, |c| c.load(Relaxed));
            }
            (_, _) => ps.st.unexpected_replies += 1,
        }
    }

    fn one_subscribed(&mut self, now: u64, t: &mut Tls) {
        self.waiting = self.waiting.saturating_sub(1);
        if self.waiting == 0 && self.phase == Phase::Subscribing {
            self.phase = Phase::Ready;
            self.became_ready(now, t, true);
        }
    }

    fn became_ready(&mut self, now: u64, t: &mut Tls, ok: bool) {
        let Some(ps) = t.ps.as_mut() else { return };
        if self.setup_pending {
            self.setup_pending = false;
            ps.setting_up = ps.setting_up.saturating_sub(1);
        }
        if ok && self.reconnect_ns > 0 {
            ps.st.resubscribe_ok += 1;
            ps.resub
                .saturating_record(now.saturating_sub(self.reconnect_ns).max(1));
            ps.st.last_resub_ns = ps.st.last_resub_ns.max(now);
            t.stats.resubscribed += 1;
        }
    }
}

/// Appends one masked text frame (compressed with deflate: `z`).
fn frame(
    payload: &[u8],
    z: bool,
    zc: &mut Option<crate::deflate::Compressor>,
    rng: &mut MaskRng,
    stats: &mut crate::conn::Stats,
    out: &mut Vec<u8>,
) {
    crate::conn::data_frame(OpCode::Text, payload, z, zc, rng, stats, out);
}
