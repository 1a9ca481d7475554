//! A worker thread: one mio Poll, its share of the connections, the
//! open-loop send schedule, and per-second reports to the coordinator.

use crate::clock::{now_ns, Timer, SEC};
use crate::conn::{feed, new_hist, ConnCore, Removal, State, Stats, Tls};
use crate::plan::{Kind, Plan, Setup};
use crate::sys::err_name;
use crate::transport::Stream;
use crossbeam_channel::Sender as ChanSender;
use hdrhistogram::Histogram;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering::*};
use std::sync::Arc;
use wsrelay::protocol::ClientHandshake;

mod connect;
mod pubsub;
mod readiness;
mod schedule;

pub use pubsub::PsResult;

pub const CONNECTING: u8 = 0;
pub const RUNNING: u8 = 1;
pub const DRAINING: u8 = 2;
pub const CLOSING: u8 = 3;

const TIMER: Token = Token(usize::MAX - 1);
/// Shared read buffer per worker; grows for frames larger than this.
const READ_BUF: usize = 256 << 10;
/// Reads per readiness event before other connections get a turn.
const MAX_READS: usize = 16;
/// A publisher stops generating while this much is queued unsent.
const OUT_CAP: usize = 1 << 20;
const SCAN_NS: u64 = 100_000_000;
const CHURN_BACKOFF_NS: u64 = 10_000_000;

/// Counters a worker publishes for the coordinator's progress lines.
#[repr(align(64))]
#[derive(Default)]
pub struct WorkerAtomics {
    pub sent: AtomicU64,
    pub sent_bytes: AtomicU64,
    pub recv: AtomicU64,
    pub recv_bytes: AtomicU64,
    pub delivered: AtomicU64,
    pub expected: AtomicU64,
    pub attempted: AtomicU64,
    pub established: AtomicU64,
    pub failed: AtomicU64,
    pub lost_conns: AtomicU64,
    pub open_now: AtomicU64,
    pub cycles: AtomicU64,
    pub pub_acked: AtomicU64,
    pub resubscribed: AtomicU64,
    pub dropped: AtomicU64,
}

impl WorkerAtomics {
    fn publish(&self, s: &Stats) {
        self.sent.store(s.sent, Relaxed);
        self.sent_bytes.store(s.sent_bytes, Relaxed);
        self.recv.store(s.recv, Relaxed);
        self.recv_bytes.store(s.recv_bytes, Relaxed);
        self.delivered.store(s.delivered, Relaxed);
        self.expected.store(s.expected, Relaxed);
        self.attempted.store(s.attempted, Relaxed);
        self.established.store(s.established, Relaxed);
        self.failed.store(s.failed, Relaxed);
        self.lost_conns.store(s.lost_conns, Relaxed);
        self.open_now.store(s.open_now, Relaxed);
        self.cycles.store(s.cycles, Relaxed);
        self.pub_acked.store(s.pub_acked, Relaxed);
        self.resubscribed.store(s.resubscribed, Relaxed);
        self.dropped.store(s.dropped, Relaxed);
    }
}

pub struct Shared {
    pub phase: AtomicU8,
    /// Start of the load (ns since epoch), set before RUNNING.
    pub t0: AtomicU64,
    /// When sending stops (t0 + warmup + duration).
    pub send_end: AtomicU64,
    /// Workers whose connect phase is over.
    pub ready: AtomicUsize,
    /// Workers that stopped sending (time or budget).
    pub done_sending: AtomicUsize,
    pub w: Vec<WorkerAtomics>,
    /// pubsub: subscriptions per channel made in the connect phase.
    pub ps_subs: Arc<Vec<AtomicU64>>,
    /// The same per node (index node × channels + channel); empty with
    /// one node.
    pub ps_subs_node: Arc<Vec<AtomicU64>>,
    /// pubsub recovery burst: when the dropped clients reconnect (0: not yet).
    pub reconnect_at: AtomicU64,
}

impl Shared {
    pub fn new(threads: usize, channels: usize, nodes: usize) -> Shared {
        let per_node = if nodes > 1 { nodes * channels } else { 0 };
        Shared {
            phase: AtomicU8::new(CONNECTING),
            t0: AtomicU64::new(0),
            send_end: AtomicU64::new(u64::MAX),
            ready: AtomicUsize::new(0),
            done_sending: AtomicUsize::new(0),
            w: (0..threads).map(|_| WorkerAtomics::default()).collect(),
            ps_subs: Arc::new((0..channels).map(|_| AtomicU64::new(0)).collect()),
            ps_subs_node: Arc::new((0..per_node).map(|_| AtomicU64::new(0)).collect()),
            reconnect_at: AtomicU64::new(0),
        }
    }

    pub fn sum(&self, f: impl Fn(&WorkerAtomics) -> &AtomicU64) -> u64 {
        self.w.iter().map(|w| f(w).load(Relaxed)).sum()
    }
}

/// One second (or the last part of one) of one worker.
pub struct Interval {
    pub idx: u32,
    pub end_ns: u64,
    pub sent: u64,
    pub recv: u64,
    pub hist: Histogram<u64>,
}

pub struct WorkerResult {
    pub stats: Stats,
    pub lag: Histogram<u64>,
    pub handshake: Histogram<u64>,
    pub tls_handshake: Histogram<u64>,
    pub cycle: Histogram<u64>,
    pub unique_by_pub: Vec<u64>,
    pub sent_by_pub: Vec<u64>,
    pub dup: u64,
    pub reordered: u64,
    pub close_no_fin: u64,
    /// Messages generated but still queued unsent when their connection
    /// ended (the server was not reading).
    pub unsent: u64,
    pub failures: BTreeMap<String, u64>,
    pub lost: BTreeMap<String, u64>,
    pub unclean: BTreeMap<String, u64>,
    pub first_attempt_ns: u64,
    pub last_open_ns: u64,
    pub ps: Option<PsResult>,
    /// Several nodes: per receiving node.
    pub nodes: Option<crate::nodes::NodeTrack>,
}

struct Conn {
    stream: Stream,
    plan: usize,
    core: ConnCore,
}

pub struct Worker {
    id: usize,
    setup: Arc<Setup>,
    shared: Arc<Shared>,
    tx: ChanSender<Interval>,
    poll: Poll,
    timer: Timer,
    plans: Vec<Plan>,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    gen: u32,
    queue: VecDeque<usize>,
    delayed: VecDeque<(u64, usize)>,
    next_connect: u64,
    pending: usize,
    heap: BinaryHeap<Reverse<(u64, usize, u32)>>,
    dirty: Vec<usize>,
    again: Vec<usize>,
    rbuf: Vec<u8>,
    t: Tls,
    lag: Histogram<u64>,
    cycle: Histogram<u64>,
    cycle_budget: u64,
    cycles_started: u64,
    unique_by_pub: Vec<u64>,
    sent_by_pub: Vec<u64>,
    dup: u64,
    reordered: u64,
    close_no_fin: u64,
    unsent: u64,
    failures: BTreeMap<String, u64>,
    lost: BTreeMap<String, u64>,
    unclean: BTreeMap<String, u64>,
    phase: u8,
    t0: u64,
    send_end: u64,
    next_interval: u64,
    interval_idx: u32,
    last_sent: u64,
    last_recv: u64,
    next_scan: u64,
    ready_signaled: bool,
    done_signaled: bool,
    close_deadline: u64,
    next_pub_pass: u64,
    first_attempt: u64,
    last_open: u64,
    now: u64,
    /// pubsub: clients parked while their connection is down (by plan).
    parked: Vec<Option<Box<crate::pubsub::client::PsClient>>>,
    /// pubsub: next periodic drop, rotating cursor, burst progress.
    next_drop: u64,
    drop_cursor: usize,
    burst_dropped: bool,
    burst_reconnected: bool,
}

fn bump(map: &mut BTreeMap<String, u64>, key: String) {
    *map.entry(key).or_insert(0) += 1;
}

impl Worker {
    pub fn new(
        id: usize,
        setup: Arc<Setup>,
        shared: Arc<Shared>,
        tx: ChanSender<Interval>,
    ) -> io::Result<Worker> {
        let poll = Poll::new()?;
        let timer = Timer::new(poll.registry(), TIMER)?;
        let plans = setup.plans[id].clone();
        let mut t = Tls::new(
            setup.size,
            setup.rooms,
            setup.subs_in_room.clone(),
            setup.close_timeout_ns,
        );
        let budget = setup.budgets[id];
        let (msg_budget, cycle_budget) = if setup.kind == Kind::Churn {
            (u64::MAX, budget)
        } else {
            (budget, u64::MAX)
        };
        t.budget = msg_budget;
        t.fin_wait_ns = setup.fin_wait_ns;
        t.skip_own = setup.skip_own;
        if setup.deflate {
            t.enable_deflate();
        }
        t.set_format(setup.format);
        if let Some(ps) = &setup.ps {
            let mut p = crate::pubsub::client::PsTls::new(ps.cfg.clone(), shared.ps_subs.clone());
            if setup.nodes.is_some() {
                p.subs_count_node = Some(shared.ps_subs_node.clone());
            }
            t.ps = Some(p);
        }
        if let Some(n) = &setup.nodes {
            // Tracker slots: publisher id (fanout), publisher × channel
            // (pubsub).
            let slots = match &setup.ps {
                Some(ps) => ps.publishers * ps.cfg.channels.len(),
                None => setup.n_pubs,
            };
            t.nodes = Some(crate::nodes::NodeTrack::new(
                setup.targets.len(),
                n.pub_node.clone(),
                slots,
            ));
        }
        let queue = if setup.kind == Kind::Churn {
            VecDeque::new()
        } else {
            (0..plans.len()).collect()
        };
        Ok(Worker {
            id,
            tx,
            poll,
            timer,
            conns: Vec::new(),
            free: Vec::new(),
            gen: 0,
            queue,
            delayed: VecDeque::new(),
            next_connect: 0,
            pending: 0,
            heap: BinaryHeap::new(),
            dirty: Vec::new(),
            again: Vec::new(),
            rbuf: vec![0; READ_BUF],
            t,
            lag: new_hist(),
            cycle: new_hist(),
            cycle_budget,
            cycles_started: 0,
            unique_by_pub: vec![0; setup.n_pubs],
            sent_by_pub: vec![0; setup.n_pubs],
            dup: 0,
            reordered: 0,
            close_no_fin: 0,
            unsent: 0,
            failures: BTreeMap::new(),
            lost: BTreeMap::new(),
            unclean: BTreeMap::new(),
            phase: CONNECTING,
            t0: 0,
            send_end: u64::MAX,
            next_interval: u64::MAX,
            interval_idx: 0,
            last_sent: 0,
            last_recv: 0,
            next_scan: 0,
            ready_signaled: false,
            done_signaled: false,
            close_deadline: u64::MAX,
            next_pub_pass: 0,
            first_attempt: 0,
            last_open: 0,
            now: now_ns(),
            parked: (0..plans.len()).map(|_| None).collect(),
            next_drop: u64::MAX,
            drop_cursor: 0,
            burst_dropped: false,
            burst_reconnected: false,
            plans,
            setup,
            shared,
        })
    }

    pub fn run(mut self) -> WorkerResult {
        if !self.setup.cpus.is_empty() {
            let cpu = self.setup.cpus[self.id % self.setup.cpus.len()];
            core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
        }
        let mut events = Events::with_capacity(1024);
        loop {
            let now = now_ns();
            self.now = now;
            let phase = self.shared.phase.load(Acquire);
            if phase != self.phase {
                self.on_phase(phase, now);
            }
            self.start_connects(now);
            if now >= self.next_scan {
                self.scan_deadlines(now);
                self.next_scan = now
                    + if self.setup.kind == Kind::Churn {
                        SCAN_NS / 10
                    } else {
                        SCAN_NS
                    };
            }
            while self.phase >= RUNNING && now >= self.next_interval {
                let end = self.next_interval;
                self.emit_interval(end);
                self.next_interval += SEC;
            }
            if self.setup.kind == Kind::PubSub {
                self.ps_tick(now);
            }
            if self.phase >= RUNNING && now >= self.next_pub_pass {
                self.run_publishers(now);
                self.next_pub_pass = now + self.setup.tick_ns;
            }
            let mut again = std::mem::take(&mut self.again);
            for &idx in &again {
                self.on_readable(idx, false);
            }
            // Connections that hit MAX_READS again meanwhile are in
            // self.again now: keep them (dropping them would leave data in
            // their socket with no edge to come, once the peer has sent
            // everything).
            again.clear();
            if self.again.is_empty() {
                self.again = again;
            }
            self.flush_dirty();
            self.signal(now);
            self.shared.w[self.id].publish(&self.t.stats);
            if self.phase == CLOSING && (self.live() == 0 || now >= self.close_deadline) {
                break;
            }
            // Look for events without blocking first: arming the timer
            // costs a syscall that is expensive on virtual machines, and
            // under load there is nearly always something to do.
            let mut timeout = Some(std::time::Duration::ZERO);
            let mut polled = false;
            if self.again.is_empty() && self.next_deadline() > now_ns() {
                if let Err(e) = self.poll.poll(&mut events, timeout) {
                    if e.kind() != io::ErrorKind::Interrupted {
                        eprintln!("worker {}: poll: {e}", self.id);
                        break;
                    }
                }
                polled = !events.is_empty();
                if !polled {
                    let next = self.next_deadline();
                    if next > now_ns() {
                        self.timer.arm(next);
                        timeout = Some(std::time::Duration::from_millis(250));
                    }
                }
            }
            if !polled {
                if let Err(e) = self.poll.poll(&mut events, timeout) {
                    if e.kind() != io::ErrorKind::Interrupted {
                        eprintln!("worker {}: poll: {e}", self.id);
                        break;
                    }
                }
            }
            for ev in events.iter() {
                let tok = ev.token();
                if tok == TIMER {
                    continue;
                }
                let idx = tok.0;
                let fail = ev.is_error();
                let hup = ev.is_read_closed();
                let readable = ev.is_readable() || hup;
                let writable = ev.is_writable() || ev.is_write_closed();
                self.on_event(idx, readable, writable, fail, hup);
            }
        }
        self.finish()
    }

    fn live(&self) -> usize {
        self.conns.len() - self.free.len()
    }

    fn next_deadline(&self) -> u64 {
        let mut next = self.next_scan;
        if self.phase >= RUNNING {
            next = next.min(self.next_interval);
        }
        if self.may_connect()
            && !self.queue.is_empty()
            && self.pending < self.setup.connect_concurrency
        {
            next = next.min(self.next_connect);
        }
        if let Some(&(at, _)) = self.delayed.front() {
            next = next.min(at);
        }
        if let Some(Reverse((at, _, _))) = self.heap.peek() {
            next = next.min((*at).max(self.next_pub_pass));
        }
        if self.phase == CLOSING {
            next = next.min(self.close_deadline);
        }
        if self.setup.kind == Kind::PubSub && self.phase >= RUNNING && self.phase < CLOSING {
            next = next.min(self.next_drop);
            if self.burst_dropped && !self.burst_reconnected {
                // Watch for the coordinator's go.
                next = next.min(self.now + 1_000_000);
            }
        }
        next
    }

    fn may_connect(&self) -> bool {
        match self.setup.kind {
            Kind::Churn => {
                self.phase == RUNNING && self.now < self.send_end && self.cycle_budget > 0
            }
            // Reconnects go on through the drain.
            Kind::PubSub => self.phase < CLOSING,
            _ => self.phase == CONNECTING,
        }
    }

    fn on_phase(&mut self, phase: u8, now: u64) {
        if phase >= RUNNING && self.phase < RUNNING {
            self.t0 = self.shared.t0.load(Acquire);
            self.send_end = self.shared.send_end.load(Acquire);
            self.t.send_end = self.send_end;
            if let Some(n) = self.t.nodes.as_mut() {
                n.from_ns = self.t0 + self.setup.warmup_ns;
                n.to_ns = self.send_end;
            }
            self.t.may_send = self.t.budget > 0
                && matches!(self.setup.kind, Kind::Echo | Kind::Fanout | Kind::PubSub)
                && self.send_end > self.t0;
            self.ps_start_running();
            self.next_interval = self.t0 + SEC;
            for idx in 0..self.conns.len() {
                self.schedule_sender(idx, false);
            }
            if self.setup.kind == Kind::Churn {
                self.queue = (0..self.plans.len()).collect();
                self.next_connect = self.t0;
            }
        }
        if phase >= CLOSING && self.phase < CLOSING {
            self.phase = phase;
            self.queue.clear();
            self.delayed.clear();
            self.t.may_send = false;
            for idx in 0..self.conns.len() {
                let Some(conn) = self.conns[idx].as_mut() else {
                    continue;
                };
                if conn.core.state != State::Open {
                    self.remove(idx, Removal::Abandoned);
                    continue;
                }
                if !conn.core.close_sent {
                    conn.core
                        .start_close(&mut self.t.rng, now, self.setup.close_timeout_ns);
                    self.mark_dirty(idx);
                }
            }
            self.close_deadline =
                now + self.setup.close_timeout_ns + self.setup.fin_wait_ns + 100_000_000;
        }
        self.phase = phase;
    }

    /// Puts an open connection's sender on the schedule.
    fn schedule_sender(&mut self, idx: usize, late: bool) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        let c = &mut conn.core;
        if c.state != State::Open {
            return;
        }
        let Some(s) = c.sender.as_mut() else {
            return;
        };
        s.start_ns = if late {
            self.now
        } else {
            self.t0 + s.offset_ns
        };
        self.heap.push(Reverse((s.intended(s.seq), idx, c.gen)));
    }

    fn signal(&mut self, now: u64) {
        if !self.ready_signaled
            && (self.phase >= RUNNING
                || self.setup.kind == Kind::Churn
                || (self.queue.is_empty()
                    && self.pending == 0
                    && self.t.ps.as_ref().is_none_or(|p| p.setting_up == 0)))
        {
            self.ready_signaled = true;
            self.shared.ready.fetch_add(1, AcqRel);
        }
        if !self.done_signaled && self.phase >= RUNNING {
            let exhausted = match self.setup.kind {
                Kind::Echo | Kind::Fanout | Kind::PubSub => self.t.budget == 0,
                Kind::Churn => self.cycle_budget == 0 && self.t.stats.cycles >= self.cycles_started,
                Kind::Connect => false,
            };
            if now >= self.send_end || exhausted {
                self.done_signaled = true;
                self.shared.done_sending.fetch_add(1, AcqRel);
            }
        }
    }

    fn remove(&mut self, idx: usize, removal: Removal) {
        let Some(mut conn) = self.conns.get_mut(idx).and_then(|c| c.take()) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.free.push(idx);
        readiness::account(&mut self.t, &mut conn.stream, conn.core.started_ns);
        if matches!(removal, Removal::Failed(_)) && conn.stream.tls_handshaking() {
            self.t.stats.tls_failed += 1;
        }
        let mut c = conn.core;
        let now = now_ns();
        if let Some(mut ps) = c.ps.take() {
            ps.reset(&mut self.t);
            self.parked[conn.plan] = Some(ps);
        }
        if c.state != State::Open {
            self.pending -= 1;
        } else {
            self.t.stats.open_now -= 1;
        }
        // 1: failed to open, 2: lost (pubsub reconnect modes retry both).
        let removal_kind = match &removal {
            Removal::Failed(_) => 1,
            Removal::Lost(_) => 2,
            _ => 0,
        };
        match removal {
            Removal::Failed(r) => {
                self.t.stats.failed += 1;
                bump(&mut self.failures, r);
            }
            Removal::Lost(r) => {
                self.t.stats.lost_conns += 1;
                bump(&mut self.lost, r);
            }
            Removal::Clean => self.t.stats.closes_clean += 1,
            Removal::Unclean(r) => {
                self.t.stats.closes_unclean += 1;
                bump(&mut self.unclean, r);
            }
            Removal::Abandoned => {}
            Removal::Dropped => self.t.stats.dropped += 1,
        }
        if let (Some(s), false) = (&c.sender, self.setup.kind == Kind::PubSub) {
            // Messages still queued here never reached the server: they
            // are not owed to anyone. All data frames of a run have one
            // size, so the queue's length tells how many there are
            // (compressed frames are smaller: with --deflate this count
            // is a lower bound).
            let size = self.t.template.len();
            let frame = size
                + if size < 126 {
                    6
                } else if size < 65536 {
                    8
                } else {
                    14
                };
            let unsent = (c.pending_out() / frame) as u64;
            self.unsent += unsent;
            if let Some(v) = self.sent_by_pub.get_mut(s.id as usize) {
                *v += s.seq.saturating_sub(unsent);
            }
        }
        let rooms = self.setup.rooms as usize;
        if let Some(a) = self
            .t
            .nodes
            .as_mut()
            .and_then(|n| n.per.get_mut(c.node as usize))
        {
            let room = c.room as usize;
            a.fold(&c.trackers, |i| i * rooms + room);
        }
        for (i, tr) in c.trackers.iter().enumerate() {
            let p = i * rooms + c.room as usize;
            if let Some(v) = self.unique_by_pub.get_mut(p) {
                *v += tr.unique;
            }
            self.dup += tr.dup;
            self.reordered += tr.reordered;
        }
        if c.churn && !c.cycle_done {
            self.retry_churn(conn.plan, now);
        }
        if matches!(removal_kind, 1 | 2) {
            self.ps_retry(conn.plan, now);
        }
    }

    fn emit_interval(&mut self, end: u64) {
        let s = &self.t.stats;
        let hist = std::mem::replace(&mut self.t.hist, new_hist());
        let iv = Interval {
            idx: self.interval_idx,
            end_ns: end,
            sent: s.sent - self.last_sent,
            recv: s.recv - self.last_recv,
            hist,
        };
        self.last_sent = s.sent;
        self.last_recv = s.recv;
        self.interval_idx += 1;
        let _ = self.tx.send(iv);
    }

    fn finish(mut self) -> WorkerResult {
        for idx in 0..self.conns.len() {
            if let Some(conn) = self.conns[idx].as_ref() {
                let r = if conn.core.state != State::Open {
                    Removal::Abandoned
                } else if conn.core.we_closed {
                    Removal::Unclean("close timeout at exit".into())
                } else {
                    Removal::Lost("still open at exit".into())
                };
                self.remove(idx, r);
            }
        }
        if self.phase >= RUNNING {
            let now = now_ns();
            self.emit_interval(now);
        }
        self.shared.w[self.id].publish(&self.t.stats);
        let ps = self.ps_result();
        WorkerResult {
            ps,
            nodes: self.t.nodes.take(),
            stats: self.t.stats,
            lag: self.lag,
            handshake: self.t.handshake,
            tls_handshake: self.t.tls_handshake,
            cycle: self.cycle,
            unique_by_pub: self.unique_by_pub,
            sent_by_pub: self.sent_by_pub,
            dup: self.dup,
            reordered: self.reordered,
            close_no_fin: self.close_no_fin,
            unsent: self.unsent,
            failures: self.failures,
            lost: self.lost,
            unclean: self.unclean,
            first_attempt_ns: self.first_attempt,
            last_open_ns: self.last_open,
        }
    }
}
