//! The bridge: per Redis shard, a subscriber connection (a reader thread
//! blocking on the socket, a control thread writing SUBSCRIBE/UNSUBSCRIBE
//! from the [`Subscriptions`] state) and a command connection (a writer
//! thread pipelining requests from a bounded outbox, a reader thread
//! routing replies back in order). Workers reach it only through their
//! [`BrokerPort`]: every call enqueues without blocking and answers fail
//! fast; what comes back arrives in bounded per-worker queues and wakes
//! the worker's mio `Poll` through its `Waker`, with the same
//! sleeping-flag handshake as [`crate::server::mesh`].
//!
//! Nothing on the message path sleeps or polls: the readers block in
//! `read`, the writers in a channel receive (with a timeout only to expire
//! requests and to pace reconnects).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{self, Write};
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender, TrySendError};
use mio::Waker;
use redis::Value;

use super::conn::{self, Stream};
use super::envelope::{Envelope, NodeId};
use super::scripts::{self, Script};
use super::subscriptions::{SubCommand, Subscriptions};
use super::types::{BrokerError, BrokerMetrics, HistoryReply, PresenceEntry, Reply, Token};
use super::{shard_of, BrokerSettings};
use crate::pubsub::history::StreamOptions;

/// What the bridge tells a worker (besides replies).
#[derive(Clone, Debug)]
pub enum BrokerEvent {
    /// An envelope from Redis for a channel this worker has interest in:
    /// from another node, or from this one when it carries a position
    /// (publications with history are delivered *only* this way, on every
    /// node including the origin, so all nodes see the same offset
    /// order). With a position it goes to every interested worker (each
    /// sequences its own subscribers); without, to one: the lowest
    /// interested worker, whose room batch reaches the node's others
    /// through the mesh (encoded once per node).
    Message(Arc<Envelope>),
    /// Redis confirmed the subscription to `channel`: live messages flow
    /// from now on. `resubscribed`: it follows a lost connection (or a
    /// subscription made while Redis was down), so publications may have
    /// been missed: recover the channel's subscribers from history (or
    /// tell them they could not).
    Subscribed { channel: String, resubscribed: bool },
    /// This worker's inbox was full and messages of `channel` were dropped
    /// for it: recover as for `resubscribed`.
    Missed { channel: String },
}

/// One worker's queues from the bridge, and its waker.
struct WorkerLink {
    events: Sender<BrokerEvent>,
    replies: Sender<(Token, Result<Reply, BrokerError>)>,
    /// Channels whose messages were dropped for this worker.
    missed: Mutex<HashSet<String>>,
    waker: Arc<Waker>,
    sleeping: AtomicBool,
}

impl WorkerLink {
    fn notify(&self) {
        fence(Ordering::SeqCst);
        if self.sleeping.load(Ordering::SeqCst) && self.sleeping.swap(false, Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
    }
}

/// A request in a shard's outbox.
struct Request {
    worker: usize,
    token: Token,
    deadline: Instant,
    kind: ReplyKind,
    cmd: Vec<u8>,
}

#[derive(Clone, Copy, Debug)]
enum ReplyKind {
    Published,
    Position,
    History,
    Presence,
    Done,
}

/// A worker's change of interest in a channel.
struct Interest {
    channel: String,
    worker: usize,
    on: bool,
}

/// What the subscriber side shares with its reader thread.
struct SubState {
    subs: Subscriptions,
    /// Channels whose next confirmation is a resubscription.
    resubscribed: HashSet<String>,
    /// Channels whose SUBSCRIBE awaits its confirmation.
    unconfirmed: HashSet<String>,
    /// Channels whose subscription Redis confirmed (and no UNSUBSCRIBE
    /// was sent since): a worker joining one is told at once.
    confirmed: HashSet<String>,
}

struct ShardShared {
    interest: Sender<Interest>,
    outbox: Sender<Request>,
    cmd_up: AtomicBool,
    sub_up: AtomicBool,
    /// Clones of the live sockets, to unblock their readers at shutdown.
    sub_socket: Mutex<Option<Stream>>,
    cmd_socket: Mutex<Option<Stream>>,
}

struct Shared {
    settings: BrokerSettings,
    shards: Vec<ShardShared>,
    workers: Vec<WorkerLink>,
    metrics: Arc<BrokerMetrics>,
    stop: AtomicBool,
    /// Capacity of each worker's reply queue (bounds its requests).
    reply_cap: usize,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn reply(&self, worker: usize, token: Token, r: Result<Reply, BrokerError>) {
        match &r {
            Ok(_) => BrokerMetrics::inc(&self.metrics.requests_ok),
            Err(e) => {
                BrokerMetrics::inc(&self.metrics.request_errors);
                if *e == BrokerError::Timeout {
                    BrokerMetrics::inc(&self.metrics.timeouts);
                }
            }
        }
        self.metrics.inflight.fetch_sub(1, Ordering::Relaxed);
        if let Some(w) = self.workers.get(worker) {
            // Never full: the port keeps its outstanding requests under
            // the queue's capacity.
            let _ = w.replies.try_send((token, r));
            w.notify();
        }
    }

    fn shard_up(&self, shard: usize) -> bool {
        let s = &self.shards[shard];
        s.cmd_up.load(Ordering::SeqCst) && s.sub_up.load(Ordering::SeqCst)
    }

    fn set_up(&self, flag: &AtomicBool, up: bool, other: &AtomicBool) {
        let was = flag.swap(up, Ordering::SeqCst);
        if was != up && other.load(Ordering::SeqCst) {
            if up {
                self.metrics.shards_up.fetch_add(1, Ordering::SeqCst);
            } else {
                self.metrics.shards_up.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// The running bridge. Dropping it (or [`Broker::shutdown`]) stops and
/// joins its threads.
pub struct Broker {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    /// Dropped to stop the threads' waits.
    stop_tx: Option<Sender<()>>,
}

impl Broker {
    /// Starts the threads of every shard; returns one port per waker
    /// (worker), in order. Connections are made in the background: until
    /// they are up, requests fail with [`BrokerError::Unavailable`] and
    /// interest is remembered.
    pub fn start(
        settings: BrokerSettings,
        wakers: Vec<Arc<Waker>>,
    ) -> io::Result<(Broker, Vec<BrokerPort>)> {
        assert!(wakers.len() <= 64, "at most 64 workers");
        let metrics = Arc::new(BrokerMetrics::default());
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let reply_cap = settings.outbox_len.saturating_mul(2).max(16);
        let mut event_rxs = Vec::new();
        let mut workers = Vec::new();
        for waker in wakers {
            let (etx, erx) = bounded(settings.inbox_len.max(1));
            let (rtx, rrx) = bounded(reply_cap);
            workers.push(WorkerLink {
                events: etx,
                replies: rtx,
                missed: Mutex::new(HashSet::new()),
                waker,
                sleeping: AtomicBool::new(false),
            });
            event_rxs.push((erx, rrx));
        }
        let mut shards = Vec::new();
        let mut shard_rx = Vec::new();
        for _ in &settings.targets {
            let (itx, irx) = bounded(settings.outbox_len.max(64));
            let (otx, orx) = bounded(settings.outbox_len.max(1));
            shards.push(ShardShared {
                interest: itx,
                outbox: otx,
                cmd_up: AtomicBool::new(false),
                sub_up: AtomicBool::new(false),
                sub_socket: Mutex::new(None),
                cmd_socket: Mutex::new(None),
            });
            shard_rx.push((irx, orx));
        }
        let shared = Arc::new(Shared {
            settings,
            shards,
            workers,
            metrics,
            stop: AtomicBool::new(false),
            reply_cap,
        });
        let mut threads = Vec::new();
        for (i, (irx, orx)) in shard_rx.into_iter().enumerate() {
            let (sh, st) = (shared.clone(), stop_rx.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("redis-sub-{i}"))
                    .spawn(move || subscriber_loop(sh, i, irx, st))?,
            );
            let (sh, st) = (shared.clone(), stop_rx.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("redis-cmd-{i}"))
                    .spawn(move || command_loop(sh, i, orx, st))?,
            );
        }
        let ports = event_rxs
            .into_iter()
            .enumerate()
            .map(|(worker, (events, replies))| BrokerPort {
                worker,
                shared: shared.clone(),
                events,
                replies,
                pending_interest: HashMap::new(),
                pending_order: VecDeque::new(),
                outstanding: 0,
                next_token: 1,
            })
            .collect();
        Ok((
            Broker {
                shared,
                threads,
                stop_tx: Some(stop_tx),
            },
            ports,
        ))
    }

    pub fn metrics(&self) -> &Arc<BrokerMetrics> {
        &self.shared.metrics
    }

    /// This node's id (the origin of its envelopes).
    pub fn node(&self) -> NodeId {
        self.shared.settings.node
    }

    /// Every shard's connections are up (`/healthz`: degraded otherwise).
    pub fn is_up(&self) -> bool {
        (0..self.shared.shards.len()).all(|s| self.shared.shard_up(s))
    }

    /// Stops and joins the threads.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.stop_tx.take();
        for s in &self.shared.shards {
            for slot in [&s.sub_socket, &s.cmd_socket] {
                if let Some(sock) = lock(slot).take() {
                    sock.shutdown();
                }
            }
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Events handed to a worker per [`BrokerPort::recv_events`] call.
const EVENT_BATCH: usize = 4096;

/// One worker's end of the bridge. Every method returns at once.
pub struct BrokerPort {
    worker: usize,
    shared: Arc<Shared>,
    events: Receiver<BrokerEvent>,
    replies: Receiver<(Token, Result<Reply, BrokerError>)>,
    /// Interest changes not yet accepted by a full shard queue: latest
    /// state per channel (so bounded by the worker's channels).
    pending_interest: HashMap<String, bool>,
    pending_order: VecDeque<String>,
    /// Requests sent and replies not yet taken.
    outstanding: usize,
    next_token: Token,
}

impl BrokerPort {
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.shared.settings.node
    }

    /// The bridge's counters.
    pub fn metrics(&self) -> &BrokerMetrics {
        &self.shared.metrics
    }

    /// Whether the shard of `channel` is connected (requests into it would
    /// not fail with `Unavailable` right away).
    pub fn is_up(&self, channel: &str) -> bool {
        self.shared.shard_up(self.shard(channel))
    }

    fn shard(&self, channel: &str) -> usize {
        shard_of(channel, self.shared.shards.len())
    }

    /// This worker now has (`on`) or no longer has local subscribers in
    /// `channel`. Call on transitions only (first in, last out).
    pub fn interest(&mut self, channel: &str, on: bool) {
        if self.pending_interest.is_empty() && self.try_interest(channel, on) {
            return;
        }
        if self
            .pending_interest
            .insert(channel.to_string(), on)
            .is_none()
        {
            self.pending_order.push_back(channel.to_string());
        }
    }

    fn try_interest(&self, channel: &str, on: bool) -> bool {
        let s = &self.shared.shards[self.shard(channel)];
        match s.interest.try_send(Interest {
            channel: channel.to_string(),
            worker: self.worker,
            on,
        }) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => true,
            Err(TrySendError::Full(_)) => false,
        }
    }

    /// Retries interest changes a full queue refused; true when none is
    /// left. Call once per loop iteration while [`Self::has_pending`].
    pub fn flush_interest(&mut self) -> bool {
        while let Some(ch) = self.pending_order.front() {
            let on = self.pending_interest[ch];
            if !self.try_interest(ch, on) {
                return false;
            }
            self.pending_interest.remove(ch);
            self.pending_order.pop_front();
        }
        true
    }

    pub fn has_pending(&self) -> bool {
        !self.pending_order.is_empty()
    }

    fn submit(
        &mut self,
        channel: &str,
        kind: ReplyKind,
        cmd: Vec<u8>,
    ) -> Result<Token, BrokerError> {
        let shard = self.shard(channel);
        if !self.shared.shards[shard].cmd_up.load(Ordering::SeqCst) {
            BrokerMetrics::inc(&self.shared.metrics.request_errors);
            return Err(BrokerError::Unavailable);
        }
        if self.outstanding >= self.shared.reply_cap {
            BrokerMetrics::inc(&self.shared.metrics.request_errors);
            return Err(BrokerError::Overloaded);
        }
        let token = self.next_token;
        let req = Request {
            worker: self.worker,
            token,
            deadline: Instant::now() + self.shared.settings.publish_timeout,
            kind,
            cmd,
        };
        self.shared.metrics.inflight.fetch_add(1, Ordering::Relaxed);
        match self.shared.shards[shard].outbox.try_send(req) {
            Ok(()) => {
                self.next_token += 1;
                self.outstanding += 1;
                Ok(token)
            }
            Err(e) => {
                self.shared.metrics.inflight.fetch_sub(1, Ordering::Relaxed);
                BrokerMetrics::inc(&self.shared.metrics.request_errors);
                Err(match e {
                    TrySendError::Full(_) => BrokerError::Overloaded,
                    TrySendError::Disconnected(_) => BrokerError::Unavailable,
                })
            }
        }
    }

    fn script(&self, s: Script) -> redis::Cmd {
        let mut c = redis::cmd("EVALSHA");
        c.arg(scripts::sha1_hex(scripts::ALL[s as usize]));
        c
    }

    /// Publishes an envelope without history (the channel keeps none):
    /// every other node with interest receives it; this node does not
    /// (deliver it locally yourself). Reply: [`Reply::Published`].
    pub fn publish(&mut self, env: &Envelope) -> Result<Token, BrokerError> {
        let bytes = env
            .encode()
            .map_err(|e| BrokerError::Invalid(format!("{e:?}")))?;
        let cmd = redis::cmd("PUBLISH")
            .arg(self.shared.settings.pubsub_channel(&env.channel))
            .arg(bytes)
            .get_packed_command();
        self.submit(&env.channel, ReplyKind::Published, cmd)
    }

    /// Publishes into a channel with history, atomically in Redis: offset
    /// assigned, appended to the capped stream, published to every node
    /// with interest, this one included (deliver it from the
    /// [`BrokerEvent::Message`], not locally). `env.position` is ignored.
    /// Reply: [`Reply::Position`].
    pub fn publish_history(
        &mut self,
        env: &Envelope,
        opts: StreamOptions,
    ) -> Result<Token, BrokerError> {
        let (head, tail) = env
            .encode_parts()
            .map_err(|e| BrokerError::Invalid(format!("{e:?}")))?;
        let s = &self.shared.settings;
        let cmd = self
            .script(Script::Publish)
            .arg(2)
            .arg(s.key("meta", &env.channel))
            .arg(s.key("stream", &env.channel))
            .arg(s.pubsub_channel(&env.channel))
            .arg(head)
            .arg(tail)
            .arg(opts.size.max(1))
            .arg(opts.ttl_ms.max(1))
            .arg(new_epoch())
            .get_packed_command();
        self.submit(&env.channel, ReplyKind::Position, cmd)
    }

    /// Reads a channel's stream: its top, epoch, front and up to `limit`
    /// publications after `since` (`limit` 0: none, just the position;
    /// negative: all). A channel without a stream gets one (new epoch,
    /// offset 0) living `empty_ttl` unless published into. Reply:
    /// [`Reply::History`].
    pub fn history(
        &mut self,
        channel: &str,
        since: u64,
        limit: i64,
        empty_ttl: Duration,
    ) -> Result<Token, BrokerError> {
        let s = &self.shared.settings;
        let cmd = self
            .script(Script::History)
            .arg(2)
            .arg(s.key("meta", channel))
            .arg(s.key("stream", channel))
            .arg(since.min(1 << 53))
            .arg(limit)
            .arg(new_epoch())
            .arg((empty_ttl.as_millis() as u64).max(1))
            .get_packed_command();
        self.submit(channel, ReplyKind::History, cmd)
    }

    /// Removes a channel's stream and epoch. Reply: [`Reply::Done`].
    pub fn remove_history(&mut self, channel: &str) -> Result<Token, BrokerError> {
        let s = &self.shared.settings;
        let cmd = redis::cmd("DEL")
            .arg(s.key("meta", channel))
            .arg(s.key("stream", channel))
            .get_packed_command();
        self.submit(channel, ReplyKind::Done, cmd)
    }

    /// Adds or refreshes a presence entry; it expires after `presence_ttl`
    /// unless refreshed. Reply: [`Reply::Done`].
    pub fn presence_add(
        &mut self,
        channel: &str,
        entry: &PresenceEntry,
    ) -> Result<Token, BrokerError> {
        let s = &self.shared.settings;
        let cmd = self
            .script(Script::PresenceAdd)
            .arg(2)
            .arg(s.key("pz", channel))
            .arg(s.key("ph", channel))
            .arg((s.presence_ttl.as_millis() as u64).max(1))
            .arg(&entry.client)
            .arg(entry.encode_value())
            .get_packed_command();
        self.submit(channel, ReplyKind::Done, cmd)
    }

    /// Removes a presence entry. Reply: [`Reply::Done`].
    pub fn presence_remove(&mut self, channel: &str, client: &str) -> Result<Token, BrokerError> {
        let s = &self.shared.settings;
        let cmd = self
            .script(Script::PresenceRemove)
            .arg(2)
            .arg(s.key("pz", channel))
            .arg(s.key("ph", channel))
            .arg(client)
            .get_packed_command();
        self.submit(channel, ReplyKind::Done, cmd)
    }

    /// A channel's presence over every node (expired entries removed
    /// first). Reply: [`Reply::Presence`]; `presence_stats` counts it.
    pub fn presence(&mut self, channel: &str) -> Result<Token, BrokerError> {
        let s = &self.shared.settings;
        let cmd = self
            .script(Script::PresenceGet)
            .arg(2)
            .arg(s.key("pz", channel))
            .arg(s.key("ph", channel))
            .get_packed_command();
        self.submit(channel, ReplyKind::Presence, cmd)
    }

    /// Takes up to a batch of events (and the `Missed` markers).
    pub fn recv_events(&mut self, out: &mut Vec<BrokerEvent>) {
        {
            let mut missed = lock(&self.shared.workers[self.worker].missed);
            for channel in missed.drain() {
                out.push(BrokerEvent::Missed { channel });
            }
        }
        for _ in 0..EVENT_BATCH {
            match self.events.try_recv() {
                Ok(e) => out.push(e),
                Err(_) => return,
            }
        }
    }

    /// Takes every reply waiting.
    pub fn recv_replies(&mut self, out: &mut Vec<(Token, Result<Reply, BrokerError>)>) {
        while let Ok(r) = self.replies.try_recv() {
            self.outstanding -= 1;
            out.push(r);
        }
    }

    /// The worker is about to block in `poll`: false if it must not,
    /// because something is already waiting.
    pub fn prepare_sleep(&self) -> bool {
        let link = &self.shared.workers[self.worker];
        link.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !self.events.is_empty() || !self.replies.is_empty() || !lock(&link.missed).is_empty() {
            link.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// The worker woke up.
    pub fn awake(&self) {
        self.shared.workers[self.worker]
            .sleeping
            .store(false, Ordering::SeqCst);
    }
}

/// A new stream epoch, used by the scripts only when the stream has none.
fn new_epoch() -> String {
    use rand::RngCore;
    format!("{:016x}", rand::thread_rng().next_u64())
}

/// Reconnect backoff: 50 ms doubling up to the configured maximum.
struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    fn new(max: Duration) -> Backoff {
        Backoff {
            next: Duration::from_millis(50).min(max),
            max,
        }
    }
    fn failed(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        d
    }
    /// No failure since the last success (or start).
    fn is_fresh(&self) -> bool {
        self.next == Duration::from_millis(50).min(self.max)
    }
    fn reset(&mut self) {
        self.next = Duration::from_millis(50).min(self.max);
    }
}

// ---------------------------------------------------------------------
// Subscriber side.

fn subscriber_loop(
    shared: Arc<Shared>,
    shard: usize,
    interest: Receiver<Interest>,
    stop: Receiver<()>,
) {
    let st = &shared.settings;
    let state = Arc::new(Mutex::new(SubState {
        subs: Subscriptions::new(st.linger, st.batch),
        resubscribed: HashSet::new(),
        unconfirmed: HashSet::new(),
        confirmed: HashSet::new(),
    }));
    let me = &shared.shards[shard];
    let target = st.targets[shard].clone();
    let mut backoff = Backoff::new(st.reconnect_max_delay);
    let mut conn: Option<(Stream, Receiver<()>)> = None;
    let mut connected_once = false;
    let mut retry_at = Instant::now();
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        if conn.is_none() && Instant::now() >= retry_at {
            match conn::open(&target, st.connect_timeout, &[]) {
                Ok((stream, parser)) => {
                    backoff.reset();
                    if connected_once {
                        BrokerMetrics::inc(&shared.metrics.reconnects);
                    }
                    connected_once = true;
                    let _ = stream
                        .set_write_timeout(Some(st.publish_timeout.max(Duration::from_secs(1))));
                    let (dead_tx, dead_rx) = bounded(1);
                    match (stream.try_clone(), stream.try_clone()) {
                        (Ok(reader), Ok(closer)) => {
                            *lock(&me.sub_socket) = Some(closer);
                            {
                                let mut s = lock(&state);
                                s.subs.reset();
                                s.unconfirmed.clear();
                                s.confirmed.clear();
                                let mut all = Vec::new();
                                // Everything queued now is a resubscription
                                // (or a subscription made while down).
                                while let Some(c) = s.subs.next_command() {
                                    all.push(c);
                                }
                                for c in &all {
                                    if let SubCommand::Subscribe(v) = c {
                                        for ch in v {
                                            s.resubscribed.insert(ch.clone());
                                        }
                                    }
                                }
                                drop(s);
                                let (sh, stt) = (shared.clone(), state.clone());
                                let spawned = std::thread::Builder::new()
                                    .name(format!("redis-sub-read-{shard}"))
                                    .spawn(move || {
                                        subscriber_reader(sh, stt, reader, parser, dead_tx)
                                    });
                                if spawned.is_err() {
                                    retry_at = Instant::now() + backoff.failed();
                                    continue;
                                }
                                let mut stream = stream;
                                if send_sub_commands(&shared, &state, &mut stream, all).is_err() {
                                    stream.shutdown();
                                } else {
                                    shared.set_up(&me.sub_up, true, &me.cmd_up);
                                }
                                conn = Some((stream, dead_rx));
                            }
                        }
                        _ => retry_at = Instant::now() + backoff.failed(),
                    }
                }
                Err(e) => {
                    BrokerMetrics::inc(&shared.metrics.connect_errors);
                    // Warn once per failure streak (a wrong password or
                    // address must be visible), then debug. Never the URL:
                    // it may hold a password.
                    if backoff.is_fresh() {
                        log::warn!("redis {target:?}: subscriber connection failed: {e}; retrying");
                    } else {
                        log::debug!("redis {target:?}: subscriber connect: {e}");
                    }
                    retry_at = Instant::now() + backoff.failed();
                }
            }
        }
        // Send what the state machine wants, when connected.
        if let Some((stream, _)) = &mut conn {
            let mut cmds = Vec::new();
            {
                let mut s = lock(&state);
                while let Some(c) = s.subs.next_command() {
                    cmds.push(c);
                }
            }
            if !cmds.is_empty() && send_sub_commands(&shared, &state, stream, cmds).is_err() {
                stream.shutdown();
            }
        }
        let now = Instant::now();
        let mut wake_at = lock(&state).subs.poll_timeout();
        if conn.is_none() {
            wake_at = Some(wake_at.map_or(retry_at, |t| t.min(retry_at)));
        }
        let timeout = wake_at.map_or(Duration::from_secs(3600), |t| {
            t.saturating_duration_since(now)
        });
        let dead = conn
            .as_ref()
            .map(|(_, d)| d.clone())
            .unwrap_or_else(crossbeam_channel::never);
        select! {
            recv(stop) -> _ => {
                // Unblocks the reader of a connection made during shutdown.
                if let Some((stream, _)) = conn.take() {
                    stream.shutdown();
                }
                return;
            }
            recv(interest) -> m => {
                let Ok(first) = m else { return };
                let now = Instant::now();
                let mut s = lock(&state);
                let mut m = Some(first);
                let mut n = 0;
                let mut joined = Vec::new();
                while let Some(i) = m.take() {
                    let before = s.subs.workers(&i.channel);
                    s.subs.interest(&i.channel, i.worker, i.on, now);
                    // A worker joining a live subscription: no
                    // confirmation will come for it, so tell it now.
                    if i.on && before & (1 << (i.worker & 63)) == 0 && s.confirmed.contains(&i.channel) {
                        joined.push((i.worker, i.channel));
                    }
                    n += 1;
                    if n < 4096 {
                        m = interest.try_recv().ok();
                    }
                }
                shared.metrics.channels.store(s.subs.len() as u64, Ordering::Relaxed);
                drop(s);
                for (w, channel) in joined {
                    deliver(&shared, 1 << w, &channel, || BrokerEvent::Subscribed {
                        channel: channel.clone(),
                        resubscribed: false,
                    });
                }
            }
            recv(dead) -> _ => {
                if let Some((stream, _)) = conn.take() {
                    stream.shutdown();
                }
                shared.set_up(&me.sub_up, false, &me.cmd_up);
                lock(&me.sub_socket).take();
                retry_at = Instant::now() + backoff.failed();
            }
            default(timeout) => {
                let mut s = lock(&state);
                s.subs.advance(Instant::now());
                shared.metrics.channels.store(s.subs.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

fn send_sub_commands(
    shared: &Shared,
    state: &Mutex<SubState>,
    stream: &mut Stream,
    cmds: Vec<SubCommand>,
) -> io::Result<()> {
    let st = &shared.settings;
    let mut out = Vec::new();
    for c in cmds {
        let (name, list) = match c {
            SubCommand::Subscribe(v) => {
                BrokerMetrics::inc(&shared.metrics.subscribe_commands);
                let mut s = lock(state);
                for ch in &v {
                    s.unconfirmed.insert(ch.clone());
                }
                shared
                    .metrics
                    .subscribe_pending
                    .store(s.unconfirmed.len() as u64, Ordering::Relaxed);
                ("SUBSCRIBE", v)
            }
            SubCommand::Unsubscribe(v) => {
                BrokerMetrics::inc(&shared.metrics.unsubscribe_commands);
                let mut s = lock(state);
                for ch in &v {
                    s.confirmed.remove(ch);
                }
                drop(s);
                ("UNSUBSCRIBE", v)
            }
        };
        let mut cmd = redis::cmd(name);
        for ch in &list {
            cmd.arg(st.pubsub_channel(ch));
        }
        out.extend_from_slice(&cmd.get_packed_command());
    }
    stream.write_all(&out)
}

/// Blocks reading the subscriber connection until it fails.
fn subscriber_reader(
    shared: Arc<Shared>,
    state: Arc<Mutex<SubState>>,
    mut stream: Stream,
    mut parser: redis::Parser,
    dead: Sender<()>,
) {
    let prefix = format!("{}.ch.", shared.settings.prefix);
    let node = shared.settings.node;
    loop {
        let v = match conn::read_value(&mut parser, &mut stream) {
            Ok(v) => v,
            Err(e) => {
                if !shared.stop.load(Ordering::SeqCst) {
                    log::warn!("redis subscriber connection lost: {e}");
                }
                let _ = dead.try_send(());
                return;
            }
        };
        let items = match v {
            Value::Array(items) => items,
            Value::Push { data, .. } => data,
            _ => continue,
        };
        let kind = match items.first() {
            Some(Value::BulkString(b)) => b.as_slice(),
            Some(Value::SimpleString(s)) => s.as_bytes(),
            _ => continue,
        };
        let channel_of = |v: Option<&Value>| -> Option<String> {
            let Some(Value::BulkString(b)) = v else {
                return None;
            };
            let s = std::str::from_utf8(b).ok()?;
            s.strip_prefix(&prefix).map(str::to_string)
        };
        match kind {
            b"message" => {
                BrokerMetrics::inc(&shared.metrics.messages_in);
                let (Some(channel), Some(Value::BulkString(payload))) =
                    (channel_of(items.get(1)), items.get(2))
                else {
                    continue;
                };
                let env = match Envelope::decode(payload) {
                    Ok(e) if e.channel == channel => e,
                    _ => {
                        BrokerMetrics::inc(&shared.metrics.decode_errors);
                        continue;
                    }
                };
                // Own publications come back only when they carry a
                // position (history): the only way they are delivered.
                if env.origin == node && env.position.is_none() {
                    continue;
                }
                let mask = lock(&state).subs.workers(&channel);
                if mask == 0 {
                    continue;
                }
                BrokerMetrics::inc(&shared.metrics.messages_delivered);
                // Without a position, one worker (always the lowest with
                // interest, so one channel's envelopes stay in order) takes
                // it into its room batch, which reaches the node's other
                // workers through the mesh: encoded once per node, as a
                // local publication is. With a position (history, phase 2)
                // every worker sequences its own subscribers.
                let mask = if env.position.is_none() {
                    mask & mask.wrapping_neg()
                } else {
                    mask
                };
                let env = Arc::new(env);
                deliver(&shared, mask, &channel, || {
                    BrokerEvent::Message(env.clone())
                });
            }
            b"subscribe" => {
                let Some(channel) = channel_of(items.get(1)) else {
                    continue;
                };
                let (mask, resubscribed) = {
                    let mut s = lock(&state);
                    s.unconfirmed.remove(&channel);
                    s.confirmed.insert(channel.clone());
                    shared
                        .metrics
                        .subscribe_pending
                        .store(s.unconfirmed.len() as u64, Ordering::Relaxed);
                    (s.subs.workers(&channel), s.resubscribed.remove(&channel))
                };
                if mask != 0 {
                    deliver(&shared, mask, &channel, || BrokerEvent::Subscribed {
                        channel: channel.clone(),
                        resubscribed,
                    });
                }
            }
            _ => {}
        }
    }
}

/// Hands an event to every worker in `mask`; a full inbox drops it for
/// that worker and marks the channel missed there.
fn deliver(shared: &Shared, mut mask: u64, channel: &str, event: impl Fn() -> BrokerEvent) {
    while mask != 0 {
        let w = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        let Some(link) = shared.workers.get(w) else {
            continue;
        };
        if let Err(TrySendError::Full(_)) = link.events.try_send(event()) {
            BrokerMetrics::inc(&shared.metrics.inbox_dropped);
            lock(&link.missed).insert(channel.to_string());
        }
        link.notify();
    }
}

// ---------------------------------------------------------------------
// Command side.

struct InFlight {
    worker: usize,
    token: Token,
    kind: ReplyKind,
    deadline: Instant,
    /// Already answered (timed out): its reply is dropped.
    answered: bool,
}

/// The requests of one command connection awaiting replies, in order.
#[derive(Default)]
struct Pipeline {
    queue: VecDeque<InFlight>,
    /// The reader is gone: nothing more may be queued.
    closed: bool,
}

fn command_loop(shared: Arc<Shared>, shard: usize, outbox: Receiver<Request>, stop: Receiver<()>) {
    let st = &shared.settings;
    let me = &shared.shards[shard];
    let target = st.targets[shard].clone();
    let cap = st.outbox_len.max(1);
    let mut backoff = Backoff::new(st.reconnect_max_delay);
    let mut connected_once = false;
    let mut retry_at = Instant::now();
    let mut batch: Vec<Request> = Vec::with_capacity(st.batch);
    let mut buf = Vec::new();
    struct Conn {
        stream: Stream,
        pipeline: Arc<Mutex<Pipeline>>,
        dead: Receiver<()>,
        progress: Receiver<()>,
    }
    let mut conn: Option<Conn> = None;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        if conn.is_none() && Instant::now() >= retry_at {
            match conn::open(&target, st.connect_timeout, &scripts::ALL) {
                Ok((stream, parser)) => {
                    backoff.reset();
                    if connected_once {
                        BrokerMetrics::inc(&shared.metrics.reconnects);
                    }
                    connected_once = true;
                    let _ = stream.set_write_timeout(Some(st.publish_timeout));
                    let pipeline = Arc::new(Mutex::new(Pipeline::default()));
                    let (dead_tx, dead_rx) = bounded(1);
                    let (prog_tx, prog_rx) = bounded(1);
                    if let (Ok(reader), Ok(closer)) = (stream.try_clone(), stream.try_clone()) {
                        let (sh, pl) = (shared.clone(), pipeline.clone());
                        let spawned = std::thread::Builder::new()
                            .name(format!("redis-cmd-read-{shard}"))
                            .spawn(move || {
                                command_reader(sh, pl, reader, parser, dead_tx, prog_tx)
                            });
                        if spawned.is_ok() {
                            *lock(&me.cmd_socket) = Some(closer);
                            shared.set_up(&me.cmd_up, true, &me.sub_up);
                            conn = Some(Conn {
                                stream,
                                pipeline,
                                dead: dead_rx,
                                progress: prog_rx,
                            });
                        } else {
                            retry_at = Instant::now() + backoff.failed();
                        }
                    } else {
                        retry_at = Instant::now() + backoff.failed();
                    }
                }
                Err(e) => {
                    BrokerMetrics::inc(&shared.metrics.connect_errors);
                    // Warn once per failure streak (a wrong password or
                    // address must be visible), then debug. Never the URL:
                    // it may hold a password.
                    if backoff.is_fresh() {
                        log::warn!("redis {target:?}: command connection failed: {e}; retrying");
                    } else {
                        log::debug!("redis {target:?}: command connect: {e}");
                    }
                    retry_at = Instant::now() + backoff.failed();
                }
            }
        }
        let now = Instant::now();
        // Expire requests that waited too long for their reply.
        let mut next_deadline = None;
        let mut full = false;
        if let Some(c) = &conn {
            let mut p = lock(&c.pipeline);
            for f in p.queue.iter_mut() {
                if f.answered {
                    continue;
                }
                if f.deadline <= now {
                    f.answered = true;
                    shared.reply(f.worker, f.token, Err(BrokerError::Timeout));
                } else {
                    next_deadline = Some(f.deadline);
                    break;
                }
            }
            full = p.queue.len() >= cap;
        }
        let wake_at = match (&conn, next_deadline) {
            (None, _) => Some(retry_at),
            (Some(_), d) => d,
        };
        let timeout = wake_at.map_or(Duration::from_secs(3600), |t| {
            t.saturating_duration_since(now)
        });
        let dead = conn
            .as_ref()
            .map(|c| c.dead.clone())
            .unwrap_or_else(crossbeam_channel::never);
        let progress = conn
            .as_ref()
            .map(|c| c.progress.clone())
            .unwrap_or_else(crossbeam_channel::never);
        // While the pipeline is full (Redis is not keeping up), new
        // requests fail with Overloaded at once instead of waiting.
        let take = outbox.clone();
        select! {
            recv(stop) -> _ => {
                if let Some(c) = conn.take() {
                    c.stream.shutdown();
                }
                return;
            }
            recv(dead) -> _ => {
                if let Some(c) = conn.take() {
                    c.stream.shutdown();
                }
                shared.set_up(&me.cmd_up, false, &me.sub_up);
                lock(&me.cmd_socket).take();
                retry_at = Instant::now() + backoff.failed();
            }
            recv(progress) -> _ => {}
            recv(take) -> r => {
                let Ok(first) = r else { return };
                batch.push(first);
                while batch.len() < st.batch.max(1) {
                    match outbox.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                let Some(c) = &mut conn else {
                    for r in batch.drain(..) {
                        shared.reply(r.worker, r.token, Err(BrokerError::Unavailable));
                    }
                    continue;
                };
                buf.clear();
                let now = Instant::now();
                let mut p = lock(&c.pipeline);
                for r in batch.drain(..) {
                    if full || p.queue.len() >= cap {
                        full = true;
                        shared.reply(r.worker, r.token, Err(BrokerError::Overloaded));
                    } else if p.closed {
                        shared.reply(r.worker, r.token, Err(BrokerError::Unavailable));
                    } else if r.deadline <= now {
                        shared.reply(r.worker, r.token, Err(BrokerError::Timeout));
                    } else {
                        buf.extend_from_slice(&r.cmd);
                        p.queue.push_back(InFlight {
                            worker: r.worker,
                            token: r.token,
                            kind: r.kind,
                            deadline: r.deadline,
                            answered: false,
                        });
                    }
                }
                drop(p);
                if !buf.is_empty() && c.stream.write_all(&buf).is_err() {
                    // The reader sees the shutdown and fails the pipeline.
                    c.stream.shutdown();
                }
                if buf.capacity() > (1 << 20) {
                    buf = Vec::new();
                }
            }
            default(timeout) => {}
        }
        // Down: whatever waits in the outbox fails at once.
        if conn.is_none() {
            while let Ok(r) = outbox.try_recv() {
                shared.reply(r.worker, r.token, Err(BrokerError::Unavailable));
            }
        }
    }
}

fn command_reader(
    shared: Arc<Shared>,
    pipeline: Arc<Mutex<Pipeline>>,
    mut stream: Stream,
    mut parser: redis::Parser,
    dead: Sender<()>,
    progress: Sender<()>,
) {
    loop {
        let v = match conn::read_value(&mut parser, &mut stream) {
            Ok(v) => v,
            Err(e) => {
                if !shared.stop.load(Ordering::SeqCst) {
                    log::warn!("redis command connection lost: {e}");
                }
                break;
            }
        };
        let Some(f) = lock(&pipeline).queue.pop_front() else {
            log::warn!("redis: reply without a request");
            break;
        };
        let noscript = matches!(&v, Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript));
        if !f.answered {
            shared.reply(f.worker, f.token, parse_reply(f.kind, v));
        }
        let _ = progress.try_send(());
        if noscript {
            // Scripts flushed: a new connection loads them again.
            break;
        }
    }
    stream.shutdown();
    let mut p = lock(&pipeline);
    p.closed = true;
    for f in p.queue.drain(..) {
        if !f.answered {
            shared.reply(f.worker, f.token, Err(BrokerError::Unavailable));
        }
    }
    drop(p);
    let _ = dead.try_send(());
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn parse_reply(kind: ReplyKind, v: Value) -> Result<Reply, BrokerError> {
    if let Value::ServerError(e) = &v {
        return Err(BrokerError::Redis(format!(
            "{} {}",
            e.code(),
            e.details().unwrap_or("")
        )));
    }
    let bad =
        |v: &Value| BrokerError::Protocol(format!("{kind:?}: {v:?}").chars().take(200).collect());
    match kind {
        ReplyKind::Published => match v {
            Value::Int(_) => Ok(Reply::Published),
            v => Err(bad(&v)),
        },
        ReplyKind::Done => Ok(Reply::Done),
        ReplyKind::Position => match &v {
            Value::Array(a) if a.len() == 2 => match (as_u64(&a[0]), as_string(&a[1])) {
                (Some(offset), Some(epoch)) => Ok(Reply::Position { offset, epoch }),
                _ => Err(bad(&v)),
            },
            _ => Err(bad(&v)),
        },
        ReplyKind::History => {
            let Value::Array(a) = &v else {
                return Err(bad(&v));
            };
            let (Some(top), Some(epoch), Some(front), Some(Value::Array(entries))) = (
                a.first().and_then(as_u64),
                a.get(1).and_then(as_string),
                a.get(2).and_then(as_u64),
                a.get(3),
            ) else {
                return Err(bad(&v));
            };
            let mut publications = Vec::with_capacity(entries.len());
            for e in entries {
                let Value::BulkString(b) = e else {
                    return Err(bad(&v));
                };
                publications.push(
                    Envelope::decode(b)
                        .map_err(|e| BrokerError::Protocol(format!("history entry: {e}")))?,
                );
            }
            Ok(Reply::History(HistoryReply {
                top,
                epoch,
                front,
                publications,
            }))
        }
        ReplyKind::Presence => {
            let Value::Array(a) = &v else {
                return Err(bad(&v));
            };
            let mut out = Vec::with_capacity(a.len() / 2);
            for pair in a.chunks(2) {
                if let [Value::BulkString(k), Value::BulkString(val)] = pair {
                    if let Some(e) = PresenceEntry::decode(k, val) {
                        out.push(e);
                    }
                }
            }
            Ok(Reply::Presence(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(b: &[u8]) -> Value {
        Value::BulkString(b.to_vec())
    }

    #[test]
    fn replies_parse_and_unexpected_shapes_are_protocol_errors() {
        let pos = Value::Array(vec![Value::Int(7), bulk(b"ep")]);
        assert_eq!(
            parse_reply(ReplyKind::Position, pos),
            Ok(Reply::Position {
                offset: 7,
                epoch: "ep".into()
            })
        );
        let env = Envelope {
            kind: super::super::Kind::Publication,
            origin: NodeId([1; 16]),
            channel: "c".into(),
            position: Some((3, "ep".into())),
            info: None,
            payload: b"{}".to_vec(),
        };
        let hist = Value::Array(vec![
            Value::Int(3),
            bulk(b"ep"),
            Value::Int(3),
            Value::Array(vec![bulk(&env.encode().unwrap())]),
        ]);
        match parse_reply(ReplyKind::History, hist) {
            Ok(Reply::History(h)) => {
                assert_eq!((h.top, h.front, h.publications.len()), (3, 3, 1));
                assert_eq!(h.publications[0], env);
            }
            r => panic!("{r:?}"),
        }
        for (kind, v) in [
            (
                ReplyKind::Position,
                Value::Array(vec![Value::Int(-1), bulk(b"e")]),
            ),
            (ReplyKind::Position, Value::Nil),
            (ReplyKind::Published, Value::Okay),
            (ReplyKind::History, Value::Array(vec![Value::Int(1)])),
            (
                ReplyKind::History,
                Value::Array(vec![
                    Value::Int(1),
                    bulk(b"e"),
                    Value::Int(1),
                    Value::Array(vec![bulk(b"garbage")]),
                ]),
            ),
            (ReplyKind::Presence, Value::Int(3)),
        ] {
            assert!(
                matches!(parse_reply(kind, v.clone()), Err(BrokerError::Protocol(_))),
                "{kind:?} {v:?}"
            );
        }
        // Presence: malformed entries are skipped, good ones kept.
        let good = PresenceEntry {
            client: "c1".into(),
            user: "u".into(),
            conn_info: None,
            chan_info: None,
        };
        let v = Value::Array(vec![
            bulk(b"c1"),
            bulk(&good.encode_value()),
            bulk(b"c2"),
            bulk(b"\xff"),
            bulk(b"odd"),
        ]);
        assert_eq!(
            parse_reply(ReplyKind::Presence, v),
            Ok(Reply::Presence(vec![good]))
        );
    }
}
