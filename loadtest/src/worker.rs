//! A worker thread: one mio Poll, its share of the connections, the
//! open-loop send schedule, and per-second reports to the coordinator.

use crate::clock::{now_ns, Timer, SEC};
use crate::conn::{feed, new_hist, ConnCore, Removal, State, Stats, Tls};
use crate::plan::{Kind, Plan, Setup};
use crate::sys::err_name;
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
}

impl Shared {
    pub fn new(threads: usize) -> Shared {
        Shared {
            phase: AtomicU8::new(CONNECTING),
            t0: AtomicU64::new(0),
            send_end: AtomicU64::new(u64::MAX),
            ready: AtomicUsize::new(0),
            done_sending: AtomicUsize::new(0),
            w: (0..threads).map(|_| WorkerAtomics::default()).collect(),
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
}

struct Conn {
    stream: TcpStream,
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
        t.set_format(setup.format);
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
            if self.phase >= RUNNING && now >= self.next_pub_pass {
                self.run_publishers(now);
                self.next_pub_pass = now + self.setup.tick_ns;
            }
            let again = std::mem::take(&mut self.again);
            for &idx in &again {
                self.on_readable(idx, false);
            }
            self.again = again;
            self.again.clear();
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
        next
    }

    fn may_connect(&self) -> bool {
        match self.setup.kind {
            Kind::Churn => {
                self.phase == RUNNING && self.now < self.send_end && self.cycle_budget > 0
            }
            _ => self.phase == CONNECTING,
        }
    }

    fn on_phase(&mut self, phase: u8, now: u64) {
        if phase >= RUNNING && self.phase < RUNNING {
            self.t0 = self.shared.t0.load(Acquire);
            self.send_end = self.shared.send_end.load(Acquire);
            self.t.send_end = self.send_end;
            self.t.may_send = self.t.budget > 0
                && matches!(self.setup.kind, Kind::Echo | Kind::Fanout)
                && self.send_end > self.t0;
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
                || (self.queue.is_empty() && self.pending == 0))
        {
            self.ready_signaled = true;
            self.shared.ready.fetch_add(1, AcqRel);
        }
        if !self.done_signaled && self.phase >= RUNNING {
            let exhausted = match self.setup.kind {
                Kind::Echo | Kind::Fanout => self.t.budget == 0,
                Kind::Churn => self.cycle_budget == 0 && self.t.stats.cycles >= self.cycles_started,
                Kind::Connect => false,
            };
            if now >= self.send_end || exhausted {
                self.done_signaled = true;
                self.shared.done_sending.fetch_add(1, AcqRel);
            }
        }
    }

    fn start_connects(&mut self, now: u64) {
        while let Some(&(at, pi)) = self.delayed.front() {
            if at > now || !self.may_connect() {
                break;
            }
            self.delayed.pop_front();
            self.start_conn(pi, now);
        }
        let interval = self.setup.connect_interval_ns;
        while self.may_connect()
            && !self.queue.is_empty()
            && self.pending < self.setup.connect_concurrency
            && now >= self.next_connect
        {
            let pi = self.queue.pop_front().unwrap();
            self.start_conn(pi, now);
            // Pace from the schedule, not from now, but never bank more
            // than a few milliseconds of credit.
            self.next_connect = (self.next_connect + interval).max(now.saturating_sub(5_000_000));
        }
    }

    fn open_socket(&self, global: u32) -> io::Result<TcpStream> {
        let addr = self.setup.target.addr;
        let sources = &self.setup.sources;
        let stream = if sources.is_empty() {
            TcpStream::connect(addr)?
        } else {
            use socket2::{Domain, Protocol, Socket, Type};
            let src = sources[global as usize % sources.len()];
            let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            sock.set_nonblocking(true)?;
            if src.is_ipv4() {
                // Pick the port at connect time, per (source, destination)
                // pair, instead of reserving one at bind.
                let one: libc::c_int = 1;
                // SAFETY: valid fd and option value.
                unsafe {
                    use std::os::unix::io::AsRawFd;
                    libc::setsockopt(
                        sock.as_raw_fd(),
                        libc::IPPROTO_IP,
                        libc::IP_BIND_ADDRESS_NO_PORT,
                        &one as *const _ as *const libc::c_void,
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    );
                }
            }
            sock.bind(&SocketAddr::new(src, 0).into())?;
            match sock.connect(&addr.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => return Err(e),
            }
            TcpStream::from_std(sock.into())
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    fn start_conn(&mut self, pi: usize, now: u64) {
        if self.setup.kind == Kind::Churn {
            // --max-messages counts cycles started, so the cap is exact.
            self.cycles_started += 1;
            if self.cycle_budget != u64::MAX {
                self.cycle_budget -= 1;
            }
        }
        self.t.stats.attempted += 1;
        if self.first_attempt == 0 {
            self.first_attempt = now;
        }
        let global = self.plans[pi].global;
        let mut stream = match self.open_socket(global) {
            Ok(s) => s,
            Err(e) => {
                self.t.stats.failed += 1;
                bump(&mut self.failures, format!("connect: {}", err_name(&e)));
                self.retry_churn(pi, now);
                return;
            }
        };
        let idx = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(idx),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.free.push(idx);
            self.t.stats.failed += 1;
            bump(&mut self.failures, format!("register: {}", err_name(&e)));
            self.retry_churn(pi, now);
            return;
        }
        self.gen = self.gen.wrapping_add(1);
        let mut core = ConnCore::new(&self.plans[pi], self.gen, self.setup.pubs_per_room, now);
        core.deadline_ns = now + self.setup.connect_timeout_ns;
        self.conns[idx] = Some(Conn {
            stream,
            plan: pi,
            core,
        });
        self.pending += 1;
    }

    /// A churn cycle failed: give its budget back and retry after a
    /// short back-off.
    fn retry_churn(&mut self, pi: usize, now: u64) {
        if self.setup.kind != Kind::Churn {
            return;
        }
        self.cycles_started -= 1;
        self.cycle_budget = self.cycle_budget.saturating_add(1);
        if self.may_connect() {
            self.delayed.push_back((now + CHURN_BACKOFF_NS, pi));
        }
    }

    fn mark_dirty(&mut self, idx: usize) {
        if let Some(conn) = self.conns[idx].as_mut() {
            if !conn.core.in_dirty && conn.core.pending_out() > 0 {
                conn.core.in_dirty = true;
                self.dirty.push(idx);
            }
        }
    }

    fn on_event(&mut self, idx: usize, readable: bool, writable: bool, fail: bool, hup: bool) {
        let Some(conn) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
            return;
        };
        if conn.core.state == State::Connecting {
            match conn.stream.take_error() {
                Ok(Some(e)) | Err(e) => {
                    self.remove(idx, Removal::Failed(format!("connect: {}", err_name(&e))));
                    return;
                }
                Ok(None) => {}
            }
            match conn.stream.peer_addr() {
                Ok(_) => {
                    let plan = &self.plans[conn.plan];
                    let hs = ClientHandshake::new(&mut self.t.rng);
                    let req =
                        hs.request(&self.setup.target.host, &self.setup.target.path(&plan.path));
                    conn.core.out.extend_from_slice(&req);
                    conn.core.hs = Some(hs);
                    conn.core.state = State::Handshake;
                    self.flush(idx);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected && !fail => return,
                Err(e) => {
                    self.remove(idx, Removal::Failed(format!("connect: {}", err_name(&e))));
                    return;
                }
            }
        }
        if readable || fail {
            self.on_readable(idx, hup || fail);
        }
        if writable {
            self.flush(idx);
        }
    }

    /// Reads and processes until WouldBlock, a short read (the socket is
    /// drained: a later arrival raises a new edge), or MAX_READS. With
    /// `hup` (the peer's FIN is already queued) it reads on to EOF, as no
    /// further edge would come.
    fn on_readable(&mut self, idx: usize, hup: bool) {
        for round in 0.. {
            let Some(conn) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
                return;
            };
            let c = &mut conn.core;
            let plen = c.partial.len();
            if plen > 0 {
                // A frame bigger than the buffer: grow it to fit.
                let need = self.t.decoder.bytes_needed(&c.partial).unwrap_or(0);
                if need + READ_BUF / 2 > self.rbuf.len() {
                    self.rbuf.resize(need + READ_BUF, 0);
                }
                self.rbuf[..plen].copy_from_slice(&c.partial);
            }
            let res = conn.stream.read(&mut self.rbuf[plen..]);
            match res {
                Ok(0) => {
                    let c = &conn.core;
                    let removal = if c.state != State::Open {
                        Removal::Failed("handshake: server closed TCP".into())
                    } else if c.close_recv && c.we_closed {
                        Removal::Clean
                    } else if c.close_recv {
                        Removal::Lost(c.lost_reason.clone().unwrap_or_default())
                    } else if c.we_closed {
                        Removal::Unclean("TCP closed before the close answer".into())
                    } else {
                        Removal::Lost("server closed TCP without a close frame".into())
                    };
                    self.remove(idx, removal);
                    return;
                }
                Ok(n) => {
                    let total = plen + n;
                    let full = total == self.rbuf.len();
                    let now = now_ns();
                    c.partial.clear();
                    let fed = feed(c, &mut self.rbuf[..total], now, &mut self.t);
                    c.partial.extend_from_slice(&self.rbuf[fed.consumed..total]);
                    if fed.opened {
                        self.on_open(idx, now);
                    }
                    if fed.closed {
                        self.on_close_frame(idx, now);
                    }
                    self.mark_dirty(idx);
                    if let Some(r) = fed.remove {
                        self.flush(idx);
                        self.remove(idx, r);
                        return;
                    }
                    if !full && !hup {
                        return;
                    }
                    if round + 1 >= MAX_READS {
                        self.again.push(idx);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let c = &conn.core;
                    let name = err_name(&e);
                    let removal = if c.state != State::Open {
                        Removal::Failed(format!("handshake read: {name}"))
                    } else if c.we_closed && c.close_recv {
                        Removal::Clean
                    } else if c.we_closed {
                        Removal::Unclean(format!("read: {name}"))
                    } else {
                        Removal::Lost(format!("read: {name}"))
                    };
                    self.remove(idx, removal);
                    return;
                }
            }
        }
    }

    fn on_open(&mut self, idx: usize, now: u64) {
        self.pending -= 1;
        self.last_open = now;
        if self.setup.kind == Kind::Churn {
            let Some(conn) = self.conns[idx].as_mut() else {
                return;
            };
            let c = &mut conn.core;
            let seq = self.t.stats.cycles;
            self.t.send(&mut c.out, c.global, seq, 0, now);
            self.mark_dirty(idx);
        } else if self.phase >= RUNNING && self.phase < CLOSING {
            self.schedule_sender(idx, true);
        }
    }

    /// Churn: the cycle ends with the close handshake; the slot starts
    /// its next connection while this one waits for the server's FIN.
    fn on_close_frame(&mut self, idx: usize, now: u64) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        let c = &mut conn.core;
        if !(c.churn && c.we_closed) || c.cycle_done {
            return;
        }
        c.cycle_done = true;
        let plan = conn.plan;
        self.t.stats.cycles += 1;
        self.cycle
            .saturating_record(now.saturating_sub(c.started_ns).max(1));
        if self.may_connect() {
            self.start_conn(plan, now);
        }
    }

    fn flush(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
            return;
        };
        let c = &mut conn.core;
        while c.out_pos < c.out.len() {
            match conn.stream.write(&c.out[c.out_pos..]) {
                Ok(0) => break,
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let name = err_name(&e);
                    let removal = if c.state != State::Open {
                        Removal::Failed(format!("handshake write: {name}"))
                    } else if c.we_closed && c.close_recv {
                        Removal::Clean
                    } else if c.we_closed {
                        Removal::Unclean(format!("write: {name}"))
                    } else if let Some(r) = c.lost_reason.clone() {
                        Removal::Lost(r)
                    } else {
                        Removal::Lost(format!("write: {name}"))
                    };
                    self.remove(idx, removal);
                    return;
                }
            }
        }
        if c.out_pos == c.out.len() {
            c.out.clear();
            c.out_pos = 0;
        } else if c.out_pos >= OUT_CAP {
            c.out.drain(..c.out_pos);
            c.out_pos = 0;
        }
        if let Some(s) = c.sender.as_mut() {
            if s.blocked && c.out.len() - c.out_pos < OUT_CAP / 2 {
                s.blocked = false;
                let at = s.intended(s.seq);
                if at < self.send_end && self.t.may_send {
                    self.heap.push(Reverse((at, idx, c.gen)));
                }
            }
        }
    }

    fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &idx in &dirty {
            if let Some(conn) = self.conns[idx].as_mut() {
                conn.core.in_dirty = false;
                self.flush(idx);
            }
        }
        dirty.clear();
        self.dirty = dirty;
    }

    fn run_publishers(&mut self, now: u64) {
        let send_end = self.send_end;
        let in_flight = self.setup.in_flight;
        while let Some(&Reverse((due, idx, gen))) = self.heap.peek() {
            if due > now {
                break;
            }
            self.heap.pop();
            let Some(conn) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
                continue;
            };
            let c = &mut conn.core;
            if c.gen != gen || c.state != State::Open || c.close_sent {
                continue;
            }
            let Some(s) = c.sender.as_mut() else {
                continue;
            };
            if s.closed_loop() {
                for _ in 0..in_flight {
                    if !self.t.may_send || now >= send_end {
                        break;
                    }
                    self.t.send(&mut c.out, s.id, s.seq, c.room, now);
                    s.seq += 1;
                }
            } else {
                loop {
                    let at = s.intended(s.seq);
                    if at > now || at >= send_end || !self.t.may_send {
                        break;
                    }
                    if c.out.len() - c.out_pos >= OUT_CAP {
                        s.blocked = true;
                        break;
                    }
                    self.t.send(&mut c.out, s.id, s.seq, c.room, at);
                    self.lag.saturating_record((now - at).max(1));
                    s.seq += 1;
                }
                if !s.blocked && self.t.may_send {
                    let at = s.intended(s.seq);
                    if at < send_end {
                        self.heap.push(Reverse((at, idx, gen)));
                    }
                }
            }
            if !c.in_dirty && c.pending_out() > 0 {
                c.in_dirty = true;
                self.dirty.push(idx);
            }
        }
    }

    fn scan_deadlines(&mut self, now: u64) {
        for idx in 0..self.conns.len() {
            let Some(conn) = self.conns[idx].as_ref() else {
                continue;
            };
            let c = &conn.core;
            if c.deadline_ns == 0 || c.deadline_ns > now {
                continue;
            }
            let removal = match c.state {
                State::Connecting => Removal::Failed("connect timeout".into()),
                State::Handshake => Removal::Failed("handshake timeout".into()),
                State::Open if c.close_recv && c.we_closed => {
                    self.close_no_fin += 1;
                    Removal::Clean
                }
                State::Open if c.close_recv => {
                    Removal::Lost(c.lost_reason.clone().unwrap_or_default())
                }
                State::Open => Removal::Unclean("no close answer in time".into()),
            };
            self.remove(idx, removal);
        }
    }

    fn remove(&mut self, idx: usize, removal: Removal) {
        let Some(mut conn) = self.conns.get_mut(idx).and_then(|c| c.take()) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.stream);
        self.free.push(idx);
        let c = conn.core;
        let now = now_ns();
        if c.state != State::Open {
            self.pending -= 1;
        } else {
            self.t.stats.open_now -= 1;
        }
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
        }
        if let Some(s) = &c.sender {
            // Messages still queued here never reached the server: they
            // are not owed to anyone. All data frames of a run have one
            // size, so the queue's length tells how many there are.
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
        WorkerResult {
            stats: self.t.stats,
            lag: self.lag,
            handshake: self.t.handshake,
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
