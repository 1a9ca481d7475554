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
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{bounded, select, Receiver, Sender, TrySendError};
use mio::Waker;
use redis::Value;

use super::conn::{self, Stream};
use super::envelope::{Envelope, NodeId};
use super::nodes::{NodeRecord, NodeRegistry};
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

/// Reads this node's figures and channels for its [`NodeRecord`] (at most
/// the given number of channels); `None` while the engine is not there.
/// Called on a bridge thread, never on a worker.
pub type NodeReporter = Box<dyn Fn(usize) -> Option<NodeRecord> + Send + Sync>;

/// The worker index of requests no worker waits for (the bridge's own,
/// such as node records): their replies are counted and dropped.
const NO_WORKER: usize = usize::MAX;

struct Shared {
    settings: BrokerSettings,
    /// The other nodes' latest records (filled by shard 0's subscriber
    /// reader).
    nodes: Mutex<NodeRegistry>,
    /// Set once by the engine ([`Broker::set_reporter`]).
    reporter: OnceLock<NodeReporter>,
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
            nodes: Mutex::new(NodeRegistry::for_interval(settings.node_info_interval)),
            reporter: OnceLock::new(),
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
                    .spawn(move || subscriber::subscriber_loop(sh, i, irx, st))?,
            );
            let (sh, st) = (shared.clone(), stop_rx.clone());
            threads.push(
                std::thread::Builder::new()
                    .name(format!("redis-cmd-{i}"))
                    .spawn(move || command::command_loop(sh, i, orx, st))?,
            );
        }
        let (sh, st) = (shared.clone(), stop_rx.clone());
        threads.push(
            std::thread::Builder::new()
                .name("redis-nodes".to_string())
                .spawn(move || heartbeat::heartbeat_loop(sh, st))?,
        );
        let ports = event_rxs
            .into_iter()
            .enumerate()
            .map(|(worker, (events, replies))| {
                BrokerPort::new(worker, shared.clone(), events, replies)
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

    /// Gives the bridge what it publishes about this node every
    /// `redis_node_info_interval` (until set, nothing is published). A
    /// second call is ignored.
    pub fn set_reporter(&self, reporter: NodeReporter) {
        let _ = self.shared.reporter.set(reporter);
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

mod command;
mod heartbeat;
mod port;
mod subscriber;

pub use port::BrokerPort;
