//! One worker: a mio event loop that owns its listener, its connections
//! (in a slab), its read-buffer pool, its timers and its share of rooms.
//!
//! Each loop iteration: poll; handle socket events (accept, read, write);
//! drain the cross-worker inbox; retry overflowed cross-worker sends; give
//! more read time to connections that used up their budget; fire due
//! timers; flush every connection that got data this iteration (so many
//! small frames leave in one vectored write); wake workers we sent to.

use super::buffer_pool::{BufferPool, ReadBuf};
use super::connection::{Attachment, Connection, Phase};
use super::fanout::WorkerMsg;
use super::frame_pool::FramePool;
use super::http::{self, MemberRole, WsRoute};
use super::memory::{release_free_heap, release_vacant_tail};
use super::outbound::Flush;
use super::rate_limit::{RateLimiter, RateLimits};
use super::rooms::{BatchFrame, LocalRoom, RoomBatch, RoomShared};
use super::timer::{DeadlineBuckets, TimerEntry};
use super::Shared;
use crate::config::{RateLimitPolicy, SlowConsumerPolicy};
use crate::metrics::{close_code_index, Gauges, WorkerMetrics};
use crate::protocol::handshake::http_response;
use crate::protocol::{
    encode_header, parse_request, CloseAction, CloseCode, CloseState, ControlFrame, Event,
    FrameDecoder, HandshakeLimits, HttpRequest, MessageAssembler, MessageKind, ParsedRequest,
    ProtocolError, RejectReason, Role, SharedFrame, UpgradeRequest,
};
use crossbeam_channel::Receiver;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use slab::Slab;
use std::collections::{HashMap, VecDeque};
use std::io::{self, Read};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const LISTENER: Token = Token(usize::MAX - 1);
pub const WAKER: Token = Token(usize::MAX - 2);

/// Connections accepted per wake-up before other work gets a turn.
const ACCEPT_BATCH: usize = 256;
/// Cross-worker messages handled per iteration before other work.
const INBOX_BATCH: usize = 4096;
/// Pause after the process runs out of file descriptors.
const ACCEPT_BACKOFF_MS: u64 = 100;
/// Timer granularity.
const TIMER_GRANULARITY_MS: u64 = 10;
/// A room batch is delivered early once it would hold more than this many
/// bytes (or a quarter of `max_outbound_bytes`, if smaller).
const ROOM_BATCH_BYTES: usize = 64 * 1024;
/// Interval of [`Worker::housekeeping`].
const HOUSEKEEPING_MS: u64 = 1000;
/// Vacant slab entries past the highest open connection worth handing
/// back (about 50 KB of entries).
const SLAB_RELEASE_MIN_ENTRIES: usize = 256;
/// Housekeeping passes that still return free heap pages after the last
/// sign of a shrinking worker: memory a burst held is freed over several
/// seconds (timers of closed connections fire late, queues drain).
const TRIM_PASSES_AFTER_SHRINK: u8 = 10;
/// Capacity the worker's reusable lists keep after a burst.
const SCRATCH_KEEP: usize = 64;
/// Bytes read per call while a request head is arriving.
const HTTP_READ_CHUNK: usize = 4096;

/// Whether the caller should keep processing a connection's input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    /// The connection is closing or closed: stop reading it.
    Stop,
}

/// What happened to an HTTP-phase connection.
enum HttpFlow {
    NeedMore,
    Upgraded,
    Stop,
}

/// Configuration values the loop reads constantly, in the form it uses.
struct Limits {
    head: HandshakeLimits,
    max_message_bytes: usize,
    max_outbound_bytes: usize,
    /// `SO_SNDBUF` for accepted sockets (0: leave to the kernel).
    send_buffer_bytes: usize,
    read_budget_bytes: usize,
    handshake_timeout_ms: u64,
    close_timeout_ms: u64,
    ping_interval_ms: u64,
    pong_timeout_ms: u64,
    shutdown_timeout_ms: u64,
    echo_self: bool,
    slow_consumer: SlowConsumerPolicy,
    rate: RateLimits,
    rate_policy: RateLimitPolicy,
    max_connections: usize,
    max_connections_per_ip: usize,
    max_room_name_bytes: usize,
}

fn ms(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}

fn token_of(key: usize, generation: u32) -> Token {
    Token(key | ((generation as usize) << 32))
}

fn split_token(t: Token) -> (usize, u32) {
    (t.0 & 0xffff_ffff, (t.0 >> 32) as u32)
}

/// Accept errors that mean "out of descriptors or memory": back off.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}

pub struct Worker {
    id: usize,
    poll: Poll,
    listener: Option<TcpListener>,
    conns: Slab<Connection>,
    next_generation: u32,
    shared: Arc<Shared>,
    metrics: Arc<WorkerMetrics>,
    rx: Receiver<WorkerMsg>,
    pool: BufferPool,
    /// Shared buffers for room batches, refilled once released.
    frames: FramePool,
    timers: DeadlineBuckets,
    rooms: HashMap<u64, LocalRoom>,
    room_ids: HashMap<Box<str>, u64>,
    decoder: FrameDecoder,
    limits: Limits,
    epoch: Instant,
    now_ms: u64,
    /// Connections with queued output to flush this iteration.
    dirty: Vec<usize>,
    /// Connections to read again (budget used up, or resumed).
    ready: Vec<(usize, u32)>,
    /// Connections whose reading waits for cross-worker queue room.
    paused: Vec<(usize, u32)>,
    /// Per destination worker: messages that did not fit its queue.
    overflow: Vec<VecDeque<WorkerMsg>>,
    /// Destination workers with a non-empty overflow.
    blocked_mask: u64,
    /// Workers sent to this iteration (woken before we sleep).
    wake_mask: u64,
    inbox_more: bool,
    accept_more: bool,
    accept_paused_until: u64,
    last_exhaustion_warning: u64,
    shutdown_deadline: Option<u64>,
    scratch_timers: Vec<TimerEntry>,
    scratch_slow: Vec<(usize, u64)>,
    /// Rooms with a batch to deliver this iteration.
    pending_rooms: Vec<u64>,
    /// Numbers room batches (to recognise a batch's publishers).
    batch_epoch: u32,
    /// A room batch is delivered once it would grow past this.
    batch_cap: usize,
    next_housekeeping_ms: u64,
    /// Connections at the last housekeeping (fewer now: memory to give back).
    conns_at_housekeeping: usize,
    /// The slab's reserved capacity (this worker's share of `max_connections`).
    slab_reserve: usize,
    /// One past the highest slab key used since the slab tail was last
    /// released.
    slab_high: usize,
    /// Housekeeping passes left that return free heap pages.
    trim_passes: u8,
    /// The event being handled reported the peer's write side closed: read
    /// until EOF instead of stopping at a short read.
    event_read_closed: bool,
}

impl Worker {
    pub fn new(
        id: usize,
        poll: Poll,
        mut listener: TcpListener,
        shared: Arc<Shared>,
        rx: Receiver<WorkerMsg>,
    ) -> io::Result<Worker> {
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let c = &shared.config;
        let limits = Limits {
            head: HandshakeLimits {
                max_head_bytes: c.max_request_head_bytes,
                max_headers: c.max_request_headers,
            },
            max_message_bytes: c.max_message_bytes,
            max_outbound_bytes: c.max_outbound_bytes,
            send_buffer_bytes: c.send_buffer_bytes,
            read_budget_bytes: c.read_budget_bytes.max(1),
            handshake_timeout_ms: ms(c.handshake_timeout),
            close_timeout_ms: ms(c.close_timeout),
            ping_interval_ms: ms(c.ping_interval),
            pong_timeout_ms: ms(c.pong_timeout).max(1),
            shutdown_timeout_ms: ms(c.shutdown_timeout),
            echo_self: c.echo_self,
            slow_consumer: c.slow_consumer,
            rate: RateLimits {
                messages_per_sec: c.rate_limit_messages as f64,
                burst: c.effective_rate_limit_burst() as f64,
                bytes_per_sec: c.rate_limit_bytes as f64,
            },
            rate_policy: c.rate_limit_policy,
            max_connections: c.max_connections,
            max_connections_per_ip: c.max_connections_per_ip,
            max_room_name_bytes: c.max_room_name_bytes,
        };
        let workers = shared.mesh.len();
        let slab_reserve = (c.max_connections / workers.max(1)).saturating_mul(5) / 4 + 1024;
        let batch_cap = ROOM_BATCH_BYTES.min(c.max_outbound_bytes / 4).max(1);
        Ok(Worker {
            id,
            poll,
            listener: Some(listener),
            // Reserve this worker's share of max_connections up front: the
            // reservation is virtual memory, and only entries in use are
            // touched, so RSS grows by one entry per connection instead of
            // doubling (and copying) the slab as it fills. Housekeeping
            // hands back the pages of a vacant tail after a burst.
            conns: Slab::with_capacity(slab_reserve),
            next_generation: 0,
            metrics: shared.metrics[id].clone(),
            pool: BufferPool::new(c.read_buffer_bytes, c.buffer_pool_size),
            frames: FramePool::new(2 * batch_cap),
            timers: DeadlineBuckets::new(TIMER_GRANULARITY_MS),
            rooms: HashMap::new(),
            room_ids: HashMap::new(),
            decoder: FrameDecoder::new(Role::Server, c.max_frame_bytes),
            limits,
            epoch: Instant::now(),
            now_ms: 1,
            dirty: Vec::new(),
            ready: Vec::new(),
            paused: Vec::new(),
            overflow: (0..workers).map(|_| VecDeque::new()).collect(),
            blocked_mask: 0,
            wake_mask: 0,
            inbox_more: false,
            accept_more: false,
            accept_paused_until: 0,
            last_exhaustion_warning: 0,
            shutdown_deadline: None,
            scratch_timers: Vec::new(),
            scratch_slow: Vec::new(),
            pending_rooms: Vec::new(),
            batch_epoch: 0,
            next_housekeeping_ms: HOUSEKEEPING_MS,
            conns_at_housekeeping: 0,
            slab_reserve,
            slab_high: 0,
            trim_passes: 0,
            batch_cap,
            event_read_closed: false,
            shared,
            rx,
        })
    }

    fn tick_clock(&mut self) {
        self.now_ms = self.epoch.elapsed().as_millis() as u64 + 1;
    }

    /// Runs the loop until shutdown completes.
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        loop {
            self.tick_clock();
            if self.shutdown_deadline.is_none() && self.shared.shutdown.load(Ordering::Acquire) {
                self.begin_shutdown();
            }
            if let Some(deadline) = self.shutdown_deadline {
                if self.now_ms >= deadline || self.only_idle_http_left() {
                    break;
                }
            }
            let mut timeout = self.poll_timeout();
            if timeout != Some(Duration::ZERO) && !self.shared.mesh.prepare_sleep(self.id, &self.rx)
            {
                timeout = Some(Duration::ZERO);
            }
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("worker {}: poll failed: {e}", self.id);
                    break;
                }
            }
            self.shared.mesh.awake(self.id);
            self.tick_clock();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    token => {
                        let (key, generation) = split_token(token);
                        if event.is_writable() && self.is_live(key, generation) {
                            self.flush(key);
                        }
                        if (event.is_readable() || event.is_read_closed() || event.is_error())
                            && self.is_live(key, generation)
                        {
                            self.event_read_closed = event.is_read_closed() || event.is_error();
                            self.on_readable(key);
                            self.event_read_closed = false;
                        }
                    }
                }
            }
            self.drain_inbox();
            self.drain_overflow();
            self.process_ready();
            self.run_timers();
            self.housekeeping();
            self.flush_rooms();
            if self.accept_more
                || (self.accept_paused_until != 0 && self.now_ms >= self.accept_paused_until)
            {
                self.accept_paused_until = 0;
                self.accept();
            }
            self.flush_dirty();
            self.send_wakes();
        }
        self.finish();
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.ready.is_empty() || self.accept_more || self.inbox_more || !self.dirty.is_empty() {
            return Some(Duration::ZERO);
        }
        let mut wait_ms: u64 = 1000;
        if self.blocked_mask != 0 {
            wait_ms = 1;
        }
        if let Some(t) = self.timers.next_due_in(self.now_ms) {
            wait_ms = wait_ms.min(t);
        }
        if self.accept_paused_until != 0 {
            wait_ms = wait_ms.min(self.accept_paused_until.saturating_sub(self.now_ms));
        }
        if let Some(d) = self.shutdown_deadline {
            // Also look again soon: other workers' WebSockets may be gone.
            wait_ms = wait_ms.min(d.saturating_sub(self.now_ms)).min(50);
        }
        Some(Duration::from_millis(wait_ms))
    }

    fn is_live(&self, key: usize, generation: u32) -> bool {
        self.conns
            .get(key)
            .is_some_and(|c| c.generation == generation)
    }

    // ----- accepting -------------------------------------------------------

    fn accept(&mut self) {
        self.accept_more = false;
        if self.accept_paused_until != 0 {
            return;
        }
        // The loop's clock is read once per iteration, and an iteration
        // under load can take tens of milliseconds: read it again so the
        // handshake deadlines (and first activity times) of this batch are
        // not shortened by that.
        self.tick_clock();
        for _ in 0..ACCEPT_BATCH {
            let result = match &self.listener {
                Some(l) => l.accept(),
                None => return,
            };
            match result {
                Ok((socket, addr)) => self.add_connection(socket, addr),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if is_resource_exhaustion(&e) => {
                    // Keep serving what we have; retry accepting shortly.
                    if self.now_ms >= self.last_exhaustion_warning + 5000
                        || self.last_exhaustion_warning == 0
                    {
                        log::warn!(
                            "worker {}: accept failed: {e} ({} connections on this worker); pausing accepts for {ACCEPT_BACKOFF_MS} ms (raise RLIMIT_NOFILE or lower max_connections)",
                            self.id,
                            self.conns.len()
                        );
                        self.last_exhaustion_warning = self.now_ms;
                    }
                    self.accept_paused_until = self.now_ms + ACCEPT_BACKOFF_MS;
                    return;
                }
                Err(_) => continue,
            }
        }
        self.accept_more = true;
    }

    fn add_connection(&mut self, mut socket: TcpStream, addr: SocketAddr) {
        let _ = socket.set_nodelay(true);
        if self.limits.send_buffer_bytes > 0 {
            // Caps what the kernel holds for a peer that stopped reading
            // (autotuning would grow it to tcp_wmem's max, 4 MiB by
            // default), so slow-consumer detection follows the config.
            let _ =
                socket2::SockRef::from(&socket).set_send_buffer_size(self.limits.send_buffer_bytes);
        }
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        if key > u32::MAX as usize {
            return;
        }
        self.next_generation = self.next_generation.wrapping_add(1);
        let generation = self.next_generation;
        if self
            .poll
            .registry()
            .register(&mut socket, token_of(key, generation), Interest::READABLE)
            .is_err()
        {
            return;
        }
        entry.insert(Connection::new(socket, generation, addr.ip(), self.now_ms));
        self.slab_high = self.slab_high.max(key + 1);
        self.metrics.connections_accepted.inc();
        let at = self.now_ms + self.limits.handshake_timeout_ms;
        self.schedule(key, at);
    }

    // ----- reading ---------------------------------------------------------

    fn on_readable(&mut self, key: usize) {
        let conn = &self.conns[key];
        if conn.read_paused {
            return;
        }
        match conn.phase {
            Phase::Http(_) => {
                if let HttpFlow::Upgraded = self.read_http(key) {
                    if self.conns.contains(key) {
                        self.read_ws(key);
                    }
                }
            }
            Phase::WebSocket => self.read_ws(key),
        }
    }

    fn read_http(&mut self, key: usize) -> HttpFlow {
        let cap = self.limits.head.max_head_bytes + self.limits.max_message_bytes + HTTP_READ_CHUNK;
        loop {
            let conn = &mut self.conns[key];
            if conn.close_after_flush {
                return HttpFlow::Stop;
            }
            let Phase::Http(st) = &mut conn.phase else {
                return HttpFlow::Upgraded;
            };
            if st.buf.len() >= cap {
                // parse_request refuses a head over the limit and publish
                // bodies are bounded, so this only guards the invariant.
                self.reject(key, RejectReason::HeadTooLarge);
                return HttpFlow::Stop;
            }
            // Read into a pooled buffer and keep only what arrived: a
            // request head costs its own size, not a 4 KiB chunk, and
            // thousands of half-open handshakes stay cheap.
            let mut scratch = self.pool.lease();
            let want = scratch.len().min(cap - st.buf.len());
            let result = conn.socket.read(&mut scratch[..want]);
            if let Ok(n) = result {
                // Fast path: a complete upgrade in one read, with nothing
                // after it, needs no per-connection buffer at all.
                if st.buf.is_empty() && n > 0 {
                    if let Ok(ParsedRequest::Upgrade(req)) =
                        parse_request(&scratch[..n], &self.limits.head)
                    {
                        if req.head_len == n {
                            self.pool.give_back(scratch);
                            self.metrics.bytes_in.add(n as u64);
                            return self.upgrade(key, req);
                        }
                    }
                }
                st.buf.extend_from_slice(&scratch[..n]);
            }
            self.pool.give_back(scratch);
            match result {
                Ok(0) => {
                    self.remove(key, false);
                    return HttpFlow::Stop;
                }
                Ok(n) => {
                    self.metrics.bytes_in.add(n as u64);
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => return HttpFlow::NeedMore,
                    io::ErrorKind::Interrupted => continue,
                    _ => {
                        self.remove(key, false);
                        return HttpFlow::Stop;
                    }
                },
            }
            match self.process_http(key) {
                HttpFlow::NeedMore => continue,
                other => return other,
            }
        }
    }

    /// Handles every complete request in the connection's HTTP buffer.
    fn process_http(&mut self, key: usize) -> HttpFlow {
        loop {
            let conn = &mut self.conns[key];
            if conn.close_after_flush {
                return HttpFlow::Stop;
            }
            let Phase::Http(st) = &mut conn.phase else {
                return HttpFlow::Upgraded;
            };
            if st.buf.is_empty() {
                return HttpFlow::NeedMore;
            }
            match parse_request(&st.buf, &self.limits.head) {
                Ok(ParsedRequest::Partial) => return HttpFlow::NeedMore,
                Err(reason) => {
                    self.reject(key, reason);
                    return HttpFlow::Stop;
                }
                Ok(ParsedRequest::Upgrade(req)) => return self.upgrade(key, req),
                Ok(ParsedRequest::Http(req)) => match self.serve_http(key, &req) {
                    Some(consumed) => {
                        let conn = &mut self.conns[key];
                        if let Phase::Http(st) = &mut conn.phase {
                            st.buf.drain(..consumed.min(st.buf.len()));
                            if st.buf.capacity() > 16 * 1024 {
                                st.buf.shrink_to(HTTP_READ_CHUNK);
                            }
                        }
                        if conn.close_after_flush {
                            return HttpFlow::Stop;
                        }
                        // Keep-alive: the idle deadline starts again.
                        let at = self.now_ms + self.limits.handshake_timeout_ms;
                        self.schedule(key, at);
                    }
                    None => return HttpFlow::NeedMore,
                },
            }
        }
    }

    /// Answers a plain HTTP request. Returns the bytes it used (head and
    /// body), or `None` when its body has not fully arrived.
    fn serve_http(&mut self, key: usize, req: &HttpRequest) -> Option<usize> {
        let shutting_down = self.shutdown_deadline.is_some();
        let mut keep_alive = http::wants_keep_alive(req) && !shutting_down;
        // A body we do not read ends the connection after the answer.
        let has_body = req.content_length().map_or(true, |n| n.unwrap_or(0) > 0)
            || req.header("transfer-encoding").is_some();
        let mut consumed = req.head_len;
        let response = if req.path.starts_with("/publish/") {
            let checked = http::check_publish(
                req,
                &self.shared.config.publish_token,
                self.limits.max_message_bytes,
                self.limits.max_room_name_bytes,
            );
            match checked {
                Err(r) => {
                    keep_alive = false;
                    http_response(
                        r.status,
                        r.extra,
                        "text/plain; charset=utf-8",
                        r.body.as_bytes(),
                        false,
                    )
                }
                Ok((room, len)) => {
                    let Phase::Http(st) = &self.conns[key].phase else {
                        return None;
                    };
                    if st.buf.len() < req.head_len + len {
                        return None;
                    }
                    let body = st.buf[req.head_len..req.head_len + len].to_vec();
                    consumed = req.head_len + len;
                    let kind = http::publish_kind(req);
                    if kind == MessageKind::Text && std::str::from_utf8(&body).is_err() {
                        http::text(
                            400,
                            "body is not valid UTF-8 for a text content type\n",
                            keep_alive,
                        )
                    } else {
                        let (local, remote) = self.publish_http(room, kind, &body);
                        self.metrics.publish_requests.inc();
                        http::publish_accepted(room, local, remote, keep_alive)
                    }
                }
            }
        } else {
            if has_body {
                keep_alive = false;
            }
            self.metrics.http_requests.inc();
            match (req.method.as_str(), req.path.as_str()) {
                ("GET" | "HEAD", "/healthz") => {
                    if shutting_down {
                        http::text(503, "shutting down\n", false)
                    } else {
                        http::text(200, "ok\n", keep_alive)
                    }
                }
                ("GET" | "HEAD", "/metrics") if self.shared.config.metrics => {
                    let body = self.render_metrics();
                    http_response(
                        200,
                        "",
                        "text/plain; version=0.0.4; charset=utf-8",
                        body.as_bytes(),
                        keep_alive,
                    )
                }
                (_, "/healthz") | (_, "/metrics")
                    if self.shared.config.metrics || req.path == "/healthz" =>
                {
                    http_response(
                        405,
                        "Allow: GET, HEAD\r\n",
                        "text/plain; charset=utf-8",
                        b"method not allowed\n",
                        keep_alive,
                    )
                }
                (_, path) if http::is_ws_path(path) => {
                    self.metrics.rejection(RejectReason::UpgradeRequired).inc();
                    keep_alive = false;
                    RejectReason::UpgradeRequired.response()
                }
                _ => {
                    self.metrics.rejection(RejectReason::NotFound).inc();
                    http::text(404, "not found\n", keep_alive)
                }
            }
        };
        let response = if req.method == "HEAD" {
            // Same headers, no body.
            match response.windows(4).position(|w| w == b"\r\n\r\n") {
                Some(p) => response[..p + 4].to_vec(),
                None => response,
            }
        } else {
            response
        };
        let close_timeout = self.limits.close_timeout_ms;
        let conn = &mut self.conns[key];
        conn.out.push_parts(&[&response]);
        if !keep_alive {
            conn.close_after_flush = true;
            let at = self.now_ms + close_timeout;
            self.schedule(key, at);
        }
        self.mark_dirty(key);
        Some(consumed)
    }

    fn render_metrics(&self) -> String {
        let workers: Vec<&WorkerMetrics> = self.shared.metrics.iter().map(|m| m.as_ref()).collect();
        let depths = self.shared.mesh.depths();
        crate::metrics::render_prometheus(
            &workers,
            &Gauges {
                rooms_open: self.shared.directory.len(),
                queue_depths: &depths,
                accepting: !self.shared.shutdown.load(Ordering::Relaxed),
            },
        )
    }

    /// Refuses a request with its status and closes after the answer.
    fn reject(&mut self, key: usize, reason: RejectReason) {
        self.reject_with(key, reason, reason.response());
    }

    /// Refuses a request with a specific response.
    fn reject_with(&mut self, key: usize, reason: RejectReason, response: Vec<u8>) {
        self.metrics.rejection(reason).inc();
        let close_timeout = self.limits.close_timeout_ms;
        let conn = &mut self.conns[key];
        conn.out.push_parts(&[&response]);
        conn.close_after_flush = true;
        let at = self.now_ms + close_timeout;
        self.schedule(key, at);
        self.mark_dirty(key);
    }

    fn upgrade(&mut self, key: usize, req: UpgradeRequest) -> HttpFlow {
        if self.shutdown_deadline.is_some() {
            self.reject(key, RejectReason::Unavailable);
            return HttpFlow::Stop;
        }
        if !http::origin_allowed(req.origin.as_deref(), &self.shared.config.allowed_origins) {
            self.reject(key, RejectReason::ForbiddenOrigin);
            return HttpFlow::Stop;
        }
        let route = match http::ws_route(
            &req.path,
            req.query.as_deref(),
            self.limits.max_room_name_bytes,
        ) {
            Ok(r) => r,
            Err(RejectReason::BadRoomName) => {
                let body = http::room_name_rule(self.limits.max_room_name_bytes);
                self.reject_with(
                    key,
                    RejectReason::BadRoomName,
                    http::text(400, &body, false),
                );
                return HttpFlow::Stop;
            }
            Err(reason) => {
                self.reject(key, reason);
                return HttpFlow::Stop;
            }
        };
        if let Err(reason) = self.admit(key) {
            self.reject(key, reason);
            return HttpFlow::Stop;
        }
        let attachment = match route {
            WsRoute::Echo => Attachment::Echo,
            WsRoute::Room { name, role } => match self.join_room(key, &name, role) {
                Some(a) => a,
                None => {
                    self.release_admission(key);
                    self.reject(key, RejectReason::Unavailable);
                    return HttpFlow::Stop;
                }
            },
        };
        self.metrics.upgrades.inc();
        let protocol = req.negotiate_protocol(&self.shared.config.subprotocols);
        let response = req.accept_response(protocol);
        let rate_enabled = self.limits.rate.enabled();
        let now = self.now_ms;
        let conn = &mut self.conns[key];
        let Phase::Http(st) = std::mem::replace(&mut conn.phase, Phase::WebSocket) else {
            return HttpFlow::Stop;
        };
        conn.attachment = Some(attachment);
        conn.assembler = MessageAssembler::new(self.limits.max_message_bytes);
        conn.limiter = rate_enabled.then(|| Box::new(RateLimiter::new(&self.limits.rate, now)));
        conn.last_activity_ms = now;
        conn.out.push_parts(&[&response]);
        // Write the 101 now: it nearly always leaves in one write, and a
        // room member that has received nothing yet then holds no ring.
        write_now(conn, &self.metrics);
        conn.out.release_idle();
        // Bytes after the head (a first frame sent right away) are frames.
        let leftover = &st.buf[req.head_len.min(st.buf.len())..];
        if !leftover.is_empty() {
            let mut buf = self.pool.lease();
            if leftover.len() > buf.len() {
                buf = self.pool.grow(buf, 0, 0, leftover.len());
            }
            buf[..leftover.len()].copy_from_slice(leftover);
            conn.rbuf = Some(buf);
            conn.rstart = 0;
            conn.rend = leftover.len() as u32;
        }
        drop(st);
        self.arm_heartbeat(key);
        self.mark_dirty(key);
        let conn = &mut self.conns[key];
        if let Some(mut buf) = conn.rbuf.take() {
            let mut start = conn.rstart as usize;
            let end = conn.rend as usize;
            let flow = self.process_frames(key, &mut buf, &mut start, end);
            self.store_read_buffer(key, buf, start, end);
            if flow == Flow::Stop {
                return HttpFlow::Stop;
            }
        }
        HttpFlow::Upgraded
    }

    /// Counts the connection against `max_connections` and the per-IP cap.
    fn admit(&mut self, key: usize) -> Result<(), RejectReason> {
        let total = self.shared.ws_connections.fetch_add(1, Ordering::AcqRel);
        if total >= self.limits.max_connections {
            self.shared.ws_connections.fetch_sub(1, Ordering::AcqRel);
            return Err(RejectReason::Unavailable);
        }
        let conn = &mut self.conns[key];
        if self.limits.max_connections_per_ip > 0 {
            let mut per_ip = self.shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            let n = per_ip.entry(conn.peer_ip).or_insert(0);
            if *n as usize >= self.limits.max_connections_per_ip {
                if *n == 0 {
                    per_ip.remove(&conn.peer_ip);
                }
                self.shared.ws_connections.fetch_sub(1, Ordering::AcqRel);
                return Err(RejectReason::TooManyPerIp);
            }
            *n += 1;
        }
        conn.counted = true;
        self.metrics.connections_open.inc();
        Ok(())
    }

    fn release_admission(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.counted {
            return;
        }
        conn.counted = false;
        let ip = conn.peer_ip;
        self.uncount(ip);
    }

    fn uncount(&mut self, ip: std::net::IpAddr) {
        self.shared.ws_connections.fetch_sub(1, Ordering::AcqRel);
        self.metrics.connections_open.sub(1);
        if self.limits.max_connections_per_ip > 0 {
            let mut per_ip = self.shared.per_ip.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = per_ip.get_mut(&ip) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_ip.remove(&ip);
                }
            }
        }
    }

    fn join_room(&mut self, key: usize, name: &str, role: MemberRole) -> Option<Attachment> {
        let id = match self.room_ids.get(name) {
            Some(&id) => id,
            None => {
                let shared = self.shared.directory.join(name, self.id).ok()?;
                let id = shared.id;
                self.rooms.insert(
                    id,
                    LocalRoom {
                        shared,
                        receivers: Vec::new(),
                        members: 0,
                        batch: RoomBatch::default(),
                    },
                );
                self.room_ids.insert(name.into(), id);
                id
            }
        };
        let room = self.rooms.get_mut(&id)?;
        room.members += 1;
        let slot = if role.receives() {
            room.receivers.push(key);
            room.receivers.len() - 1
        } else {
            0
        };
        Some(Attachment::Room {
            room_id: id,
            slot: slot as u32,
            receives: role.receives(),
            publishes: role.publishes(),
        })
    }

    fn leave_room(&mut self, attachment: Attachment) {
        let Attachment::Room {
            room_id,
            slot,
            receives,
            ..
        } = attachment
        else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        if receives {
            let slot = slot as usize;
            if slot < room.receivers.len() {
                room.receivers.swap_remove(slot);
                if let Some(&moved) = room.receivers.get(slot) {
                    if let Some(Attachment::Room { slot: s, .. }) = self
                        .conns
                        .get_mut(moved)
                        .and_then(|c| c.attachment.as_mut())
                    {
                        *s = slot as u32;
                    }
                }
            }
        }
        if room.receivers.capacity() > 64 && room.receivers.len() < room.receivers.capacity() / 4 {
            // A crowd left: do not keep its list's memory.
            room.receivers.shrink_to(room.receivers.len() * 2);
        }
        room.members -= 1;
        if room.members == 0 {
            // Messages its last members published still go to the others.
            self.flush_room(room_id);
            if let Some(room) = self.rooms.remove(&room_id) {
                self.room_ids.remove(&*room.shared.name);
                self.shared.directory.leave(&room.shared, self.id);
            }
        }
    }

    /// Whether reading from this connection must wait for a full
    /// cross-worker queue it publishes into.
    fn must_pause(&self, key: usize) -> bool {
        if self.blocked_mask == 0 {
            return false;
        }
        match self.conns[key].room_publisher() {
            Some(room_id) => self
                .rooms
                .get(&room_id)
                .is_some_and(|r| r.shared.worker_mask() & self.blocked_mask != 0),
            None => false,
        }
    }

    fn read_ws(&mut self, key: usize) {
        let mut budget = self.limits.read_budget_bytes;
        loop {
            if self.must_pause(key) {
                let conn = &mut self.conns[key];
                if !conn.read_paused {
                    conn.read_paused = true;
                    self.paused.push((key, conn.generation));
                }
                return;
            }
            let conn = &mut self.conns[key];
            let (mut buf, mut start, mut end) = match conn.rbuf.take() {
                Some(b) => (b, conn.rstart as usize, conn.rend as usize),
                None => (self.pool.lease(), 0, 0),
            };
            if end == buf.len() {
                // Full: make room for the rest of the frame at the front.
                let needed = self.decoder.bytes_needed(&buf[start..end]).unwrap_or(0);
                if needed > buf.len() {
                    buf = self.pool.grow(buf, start, end, needed);
                } else {
                    buf.copy_within(start..end, 0);
                }
                end -= start;
                start = 0;
            }
            let conn = &mut self.conns[key];
            let space = buf.len() - end;
            let drained = match conn.socket.read(&mut buf[end..]) {
                Ok(0) => {
                    self.store_read_buffer(key, buf, start, end);
                    self.remove(key, false);
                    return;
                }
                Ok(n) => {
                    end += n;
                    budget = budget.saturating_sub(n);
                    conn.last_activity_ms = self.now_ms;
                    self.metrics.bytes_in.add(n as u64);
                    // A short read emptied the socket: with edge-triggered
                    // polling the next arrival raises a new event, so the
                    // read that would only return WouldBlock is skipped.
                    n < space && !self.event_read_closed
                }
                Err(e) => {
                    self.store_read_buffer(key, buf, start, end);
                    match e.kind() {
                        io::ErrorKind::WouldBlock => return,
                        io::ErrorKind::Interrupted => continue,
                        _ => {
                            self.remove(key, false);
                            return;
                        }
                    }
                }
            };
            let flow = self.process_frames(key, &mut buf, &mut start, end);
            self.store_read_buffer(key, buf, start, end);
            if flow == Flow::Stop || drained {
                return;
            }
            if budget == 0 {
                // Fairness: let other connections run; come back next turn.
                let conn = &mut self.conns[key];
                if !conn.in_ready {
                    conn.in_ready = true;
                    self.ready.push((key, conn.generation));
                }
                return;
            }
        }
    }

    /// Puts the read buffer back on the connection, or in the pool when
    /// everything in it has been processed.
    fn store_read_buffer(&mut self, key: usize, buf: ReadBuf, start: usize, end: usize) {
        let conn = &mut self.conns[key];
        if start == end {
            conn.rstart = 0;
            conn.rend = 0;
            self.pool.give_back(buf);
        } else {
            conn.rbuf = Some(buf);
            conn.rstart = start as u32;
            conn.rend = end as u32;
        }
    }

    /// Decodes and handles every complete frame in `buf[*start..end]`.
    fn process_frames(
        &mut self,
        key: usize,
        buf: &mut [u8],
        start: &mut usize,
        end: usize,
    ) -> Flow {
        let mut assembler =
            std::mem::replace(&mut self.conns[key].assembler, MessageAssembler::new(0));
        let mut flow = Flow::Continue;
        while *start < end {
            match self.decoder.decode(&mut buf[*start..end]) {
                Ok(Some(frame)) => {
                    let payload = *start + frame.payload.start..*start + frame.payload.end;
                    *start += frame.consumed;
                    match assembler.on_frame(&frame.header, &buf[payload]) {
                        Ok(event) => {
                            if self.on_event(key, event) == Flow::Stop {
                                flow = Flow::Stop;
                                break;
                            }
                        }
                        Err(e) => {
                            self.fail(key, e);
                            flow = Flow::Stop;
                            break;
                        }
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    self.fail(key, e);
                    flow = Flow::Stop;
                    break;
                }
            }
        }
        if flow == Flow::Stop {
            // Nothing more will be read: drop what is buffered.
            *start = end;
            assembler = MessageAssembler::new(0);
        } else if !assembler.in_message() {
            assembler.release_memory();
        }
        self.conns[key].assembler = assembler;
        flow
    }

    fn on_event(&mut self, key: usize, event: Event<'_>) -> Flow {
        let conn = &mut self.conns[key];
        match event {
            Event::Message { kind, data } => {
                if !conn.close.can_send_data() {
                    // We are closing: data from the peer is discarded.
                    return Flow::Continue;
                }
                self.metrics.messages_in.inc();
                self.on_message(key, kind, data)
            }
            Event::Fragment | Event::Pong(_) => Flow::Continue,
            Event::Ping(payload) => {
                if conn.close.can_send_data() {
                    conn.out
                        .push_parts(&[ControlFrame::pong(payload).as_bytes()]);
                    self.mark_dirty(key);
                }
                Flow::Continue
            }
            Event::Close { code, .. } => {
                let received = code.unwrap_or(CloseCode::NO_STATUS);
                self.metrics.close_received[close_code_index(received.0)].inc();
                match conn.close.on_peer_close(code) {
                    CloseAction::SendCloseAndShutdown(c) => {
                        conn.out
                            .push_parts(&[ControlFrame::close(c, "").as_bytes()]);
                        self.metrics.close_sent[close_code_index(c.0)].inc();
                    }
                    CloseAction::SendEmptyCloseAndShutdown => {
                        conn.out
                            .push_parts(&[ControlFrame::close_empty().as_bytes()]);
                        self.metrics.close_sent[close_code_index(CloseCode::NO_STATUS.0)].inc();
                    }
                    _ => {}
                }
                self.close_after_flush(key);
                Flow::Stop
            }
        }
    }

    fn on_message(&mut self, key: usize, kind: MessageKind, data: &[u8]) -> Flow {
        let now = self.now_ms;
        let conn = &mut self.conns[key];
        if let Some(limiter) = conn.limiter.as_mut() {
            if !limiter.allow(&self.limits.rate, data.len(), now) {
                self.metrics.rate_limited.inc();
                match self.limits.rate_policy {
                    RateLimitPolicy::Close => {
                        self.close_with(key, CloseCode::POLICY_VIOLATION, "rate limit");
                        return Flow::Continue;
                    }
                    RateLimitPolicy::Drop => {
                        self.metrics.drops.inc();
                        return Flow::Continue;
                    }
                }
            }
        }
        match conn.attachment {
            Some(Attachment::Echo) => {
                let header = encode_header(true, kind.opcode(), data.len(), None);
                let len = header.as_bytes().len() + data.len();
                if !conn.out.has_room(len, self.limits.max_outbound_bytes) {
                    write_now(conn, &self.metrics);
                }
                if conn
                    .out
                    .try_push_parts(&[header.as_bytes(), data], self.limits.max_outbound_bytes)
                {
                    self.metrics.messages_out.inc();
                    self.mark_dirty(key);
                } else {
                    self.slow_consumer(key, 1);
                }
            }
            Some(Attachment::Room {
                room_id, publishes, ..
            }) => {
                if !publishes {
                    self.close_with(key, CloseCode::POLICY_VIOLATION, "read-only member");
                    return Flow::Continue;
                }
                self.publish(room_id, kind, data, Some(key));
            }
            None => {}
        }
        Flow::Continue
    }

    // ----- fan-out -----------------------------------------------------------

    /// Appends a message to the room's batch for this iteration. The batch
    /// is delivered by [`Worker::flush_room`] at the end of the iteration
    /// (or once it holds `ROOM_BATCH_BYTES`): one shared buffer, one
    /// queue entry and one `writev` per member, however many messages.
    fn publish(&mut self, room_id: u64, kind: MessageKind, data: &[u8], publisher: Option<usize>) {
        let header = encode_header(true, kind.opcode(), data.len(), None);
        let frame_len = header.as_bytes().len() + data.len();
        let Some(room) = self.rooms.get(&room_id) else {
            return;
        };
        if !room.batch.frames.is_empty() && room.batch.bytes.len() + frame_len > self.batch_cap {
            // Deliver what is gathered first: a batch must fit in an empty
            // outbound queue.
            self.flush_room(room_id);
        }
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        let batch = &mut room.batch;
        if batch.frames.is_empty() {
            self.batch_epoch = self.batch_epoch.wrapping_add(1).max(1);
            batch.epoch = self.batch_epoch;
            self.pending_rooms.push(room_id);
            if batch.bytes.capacity() == 0 {
                batch.bytes = self.frames.buffer();
            }
        }
        batch.bytes.extend_from_slice(header.as_bytes());
        batch.bytes.extend_from_slice(data);
        batch.frames.push(BatchFrame {
            end: batch.bytes.len(),
            publisher: publisher.unwrap_or(usize::MAX),
        });
        if let Some(p) = publisher {
            if let Some(conn) = self.conns.get_mut(p) {
                conn.published_epoch = batch.epoch;
            }
        }
        if batch.bytes.len() >= self.batch_cap {
            self.flush_room(room_id);
        }
    }

    /// Delivers every room batch gathered this iteration.
    fn flush_rooms(&mut self) {
        for room_id in std::mem::take(&mut self.pending_rooms) {
            self.flush_room(room_id);
        }
    }

    /// Encodes the room's batch once into a shared buffer, enqueues it to
    /// every local receiver (a member that published in it, without
    /// `echo_self`, gets a copy without its own messages) and hands it to
    /// every other worker with members.
    fn flush_room(&mut self, room_id: u64) {
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        if room.batch.frames.is_empty() {
            return;
        }
        // The batch's bytes move into a shared frame (no copy, and no
        // allocation once the pool has a released one); the room keeps no
        // buffer between iterations.
        let frame = self.frames.share(std::mem::take(&mut room.batch.bytes));
        let count = room.batch.frames.len() as u64;
        let filter =
            !self.limits.echo_self && room.batch.frames.iter().any(|f| f.publisher != usize::MAX);
        for &member in &room.receivers {
            let own = filter
                && self
                    .conns
                    .get(member)
                    .is_some_and(|c| c.published_epoch == room.batch.epoch);
            let sink = Sink {
                dirty: &mut self.dirty,
                metrics: &self.metrics,
                limit: self.limits.max_outbound_bytes,
                slow: &mut self.scratch_slow,
            };
            if own {
                deliver_without_own(
                    &mut self.conns,
                    sink,
                    member,
                    frame.as_bytes(),
                    &room.batch.frames,
                );
            } else {
                deliver(&mut self.conns, sink, member, &frame, count);
            }
        }
        let remote = room.shared.worker_mask() & !(1u64 << self.id);
        let shared = (remote != 0).then(|| room.shared.clone());
        room.batch.frames.clear();
        if room.batch.frames.capacity() > 256 {
            room.batch.frames = Vec::new();
        }
        if let Some(shared) = shared {
            self.send_remote(remote, &shared, &frame, count);
        }
        self.handle_slow_consumers();
    }

    /// HTTP publish: the room may have no local members. Returns (local,
    /// remote) worker counts the message was handed to.
    fn publish_http(&mut self, room: &str, kind: MessageKind, body: &[u8]) -> (usize, usize) {
        let Some(shared) = self.shared.directory.get(room) else {
            return (0, 0);
        };
        let mask = shared.worker_mask();
        let remote = mask & !(1u64 << self.id);
        match self.room_ids.get(room) {
            // Local members: the room batch also reaches the other workers.
            Some(&id) => self.publish(id, kind, body, None),
            None if remote != 0 => {
                let frame = SharedFrame::encode(kind.opcode(), body);
                self.send_remote(remote, &shared, &frame, 1);
            }
            None => {}
        }
        let local = self.room_ids.contains_key(room);
        (usize::from(local), remote.count_ones() as usize)
    }

    /// Delivers a batch from another worker to every local receiver.
    fn deliver_remote_batch(&mut self, room_id: u64, frame: &SharedFrame, count: u64) {
        let Some(room) = self.rooms.get(&room_id) else {
            return;
        };
        for &member in &room.receivers {
            let sink = Sink {
                dirty: &mut self.dirty,
                metrics: &self.metrics,
                limit: self.limits.max_outbound_bytes,
                slow: &mut self.scratch_slow,
            };
            deliver(&mut self.conns, sink, member, frame, count);
        }
        self.handle_slow_consumers();
    }

    fn send_remote(
        &mut self,
        mut mask: u64,
        room: &Arc<RoomShared>,
        frame: &SharedFrame,
        count: u64,
    ) {
        while mask != 0 {
            let w = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            if w >= self.overflow.len() {
                continue;
            }
            let msg = WorkerMsg {
                room: room.clone(),
                frame: frame.clone(),
                messages: count,
            };
            self.metrics.fanout_remote.add(count);
            self.wake_mask |= 1 << w;
            if !self.overflow[w].is_empty() {
                self.overflow[w].push_back(msg);
                continue;
            }
            if let Err(msg) = self.shared.mesh.try_send(w, msg) {
                self.overflow[w].push_back(msg);
                self.blocked_mask |= 1 << w;
                self.metrics.fanout_backpressure.inc();
            }
        }
    }

    fn drain_overflow(&mut self) {
        let mut mask = self.blocked_mask;
        while mask != 0 {
            let w = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            while let Some(msg) = self.overflow[w].pop_front() {
                if let Err(msg) = self.shared.mesh.try_send(w, msg) {
                    self.overflow[w].push_front(msg);
                    break;
                }
                self.wake_mask |= 1 << w;
            }
            if self.overflow[w].is_empty() {
                self.blocked_mask &= !(1 << w);
            }
        }
        if self.blocked_mask == 0 && !self.paused.is_empty() {
            for (key, generation) in std::mem::take(&mut self.paused) {
                if let Some(conn) = self.conns.get_mut(key) {
                    if conn.generation == generation {
                        conn.read_paused = false;
                        if !conn.in_ready {
                            conn.in_ready = true;
                            self.ready.push((key, generation));
                        }
                    }
                }
            }
        }
    }

    fn drain_inbox(&mut self) {
        self.inbox_more = false;
        for _ in 0..INBOX_BATCH {
            match self.rx.try_recv() {
                Ok(msg) => self.deliver_remote_batch(msg.room.id, &msg.frame, msg.messages),
                Err(_) => return,
            }
        }
        self.inbox_more = true;
    }

    fn handle_slow_consumers(&mut self) {
        while let Some((key, missed)) = self.scratch_slow.pop() {
            if self.conns.contains(key) {
                self.slow_consumer(key, missed);
            }
        }
    }

    /// A member's queue cannot take `missed` more messages.
    fn slow_consumer(&mut self, key: usize, missed: u64) {
        match self.limits.slow_consumer {
            SlowConsumerPolicy::Drop => self.metrics.drops.add(missed),
            SlowConsumerPolicy::Close => {
                let conn = &mut self.conns[key];
                if conn.close.state() != CloseState::Open {
                    return;
                }
                // Free its backlog now; the close frame goes out right after
                // the frame being written, if any.
                conn.out.discard_unstarted();
                self.metrics.slow_consumer_closes.inc();
                self.close_with(key, CloseCode::POLICY_VIOLATION, "slow consumer");
            }
        }
    }

    fn process_ready(&mut self) {
        if self.ready.is_empty() {
            return;
        }
        for (key, generation) in std::mem::take(&mut self.ready) {
            if let Some(conn) = self.conns.get_mut(key) {
                if conn.generation == generation {
                    conn.in_ready = false;
                    if !conn.close_after_flush {
                        self.on_readable(key);
                    }
                }
            }
        }
    }

    fn send_wakes(&mut self) {
        let mut mask = std::mem::take(&mut self.wake_mask);
        while mask != 0 {
            let w = mask.trailing_zeros() as usize;
            mask &= mask - 1;
            self.shared.mesh.notify(w);
        }
    }

    // ----- closing -----------------------------------------------------------

    /// Starts the close handshake with `code` and waits (up to
    /// `close_timeout`) for the peer's answer.
    fn close_with(&mut self, key: usize, code: CloseCode, reason: &str) {
        let conn = &mut self.conns[key];
        if let CloseAction::SendCloseAndWait(c) = conn.close.initiate(code) {
            conn.out
                .push_parts(&[ControlFrame::close(c, reason).as_bytes()]);
            self.metrics.close_sent[close_code_index(c.0)].inc();
            let at = self.now_ms + self.limits.close_timeout_ms;
            self.schedule(key, at);
            self.mark_dirty(key);
        }
    }

    /// Fails the connection for a protocol error (close frame, then TCP).
    fn fail(&mut self, key: usize, error: ProtocolError) {
        let conn = &mut self.conns[key];
        if let CloseAction::SendCloseAndShutdown(c) = conn.close.fail(error.close_code()) {
            conn.out
                .push_parts(&[ControlFrame::close(c, error.reason()).as_bytes()]);
            self.metrics.close_sent[close_code_index(c.0)].inc();
        }
        self.close_after_flush(key);
    }

    fn close_after_flush(&mut self, key: usize) {
        self.conns[key].close_after_flush = true;
        let at = self.now_ms + self.limits.close_timeout_ms;
        self.schedule(key, at);
        self.mark_dirty(key);
    }

    /// Removes a connection. `graceful`: the close handshake is done, so
    /// unread input is drained first (closing a socket with unread data
    /// sends RST, which could destroy our close frame in flight).
    fn remove(&mut self, key: usize, graceful: bool) {
        let Some(mut conn) = self.conns.try_remove(key) else {
            return;
        };
        let _ = self.poll.registry().deregister(&mut conn.socket);
        self.timers.cancel(key, conn.generation, conn.timer_tick);
        if graceful {
            let mut sink = [0u8; 4096];
            for _ in 0..16 {
                match conn.socket.read(&mut sink) {
                    Ok(n) if n > 0 => continue,
                    _ => break,
                }
            }
            let _ = conn.socket.shutdown(std::net::Shutdown::Write);
        }
        if let Some(buf) = conn.rbuf.take() {
            self.pool.give_back(buf);
        }
        if let Some(att) = conn.attachment.take() {
            self.leave_room(att);
        }
        if conn.counted {
            self.uncount(conn.peer_ip);
        }
    }

    // ----- writing -----------------------------------------------------------

    fn mark_dirty(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
    }

    fn flush_dirty(&mut self) {
        while let Some(key) = self.dirty.pop() {
            if let Some(conn) = self.conns.get_mut(key) {
                if conn.dirty {
                    conn.dirty = false;
                    self.flush(key);
                }
            }
        }
    }

    /// Writes queued frames until done or `WouldBlock`; WRITABLE interest
    /// is registered only while something is pending.
    fn flush(&mut self, key: usize) {
        let conn = &mut self.conns[key];
        let token = token_of(key, conn.generation);
        match conn.out.flush(&mut conn.socket) {
            Ok((Flush::Done, n)) => {
                self.metrics.bytes_out.add(n as u64);
                if !conn.receives_broadcasts() {
                    conn.out.release_idle();
                }
                if conn.writable_registered {
                    conn.writable_registered = false;
                    let _ = self.poll.registry().reregister(
                        &mut conn.socket,
                        token,
                        Interest::READABLE,
                    );
                }
                if conn.close_after_flush {
                    self.remove(key, true);
                }
            }
            Ok((Flush::Pending, n)) => {
                self.metrics.bytes_out.add(n as u64);
                if !conn.writable_registered {
                    conn.writable_registered = true;
                    let _ = self.poll.registry().reregister(
                        &mut conn.socket,
                        token,
                        Interest::READABLE | Interest::WRITABLE,
                    );
                }
            }
            Err(_) => self.remove(key, false),
        }
    }

    // ----- timers --------------------------------------------------------------

    fn schedule(&mut self, key: usize, at_ms: u64) {
        let conn = &mut self.conns[key];
        if conn.timer_tick == self.timers.tick_for(at_ms) {
            return;
        }
        self.timers.cancel(key, conn.generation, conn.timer_tick);
        conn.timer_tick = self.timers.insert(key, conn.generation, at_ms);
    }

    fn arm_heartbeat(&mut self, key: usize) {
        if self.limits.ping_interval_ms == 0 {
            let conn = &mut self.conns[key];
            self.timers.cancel(key, conn.generation, conn.timer_tick);
            conn.timer_tick = 0;
            return;
        }
        let at = self.conns[key].last_activity_ms + self.limits.ping_interval_ms;
        self.schedule(key, at);
    }

    /// About once a second: give back memory a burst left behind (idle
    /// read buffers beyond the last second's peak, slab entries past the
    /// highest open connection, and free heap pages), so RSS returns to
    /// the steady state after connection storms.
    fn housekeeping(&mut self) {
        if self.now_ms < self.next_housekeeping_ms {
            return;
        }
        self.next_housekeeping_ms = self.now_ms + HOUSEKEEPING_MS;
        let freed = self.pool.trim() + self.frames.trim();
        let conns = self.conns.len();
        let shrank = conns < self.conns_at_housekeeping;
        self.conns_at_housekeeping = conns;
        if shrank {
            if self.slab_high >= conns + SLAB_RELEASE_MIN_ENTRIES {
                self.slab_high = release_vacant_tail(&mut self.conns, self.slab_reserve);
            }
            self.release_scratch();
        }
        if freed > 0 || shrank {
            self.trim_passes = TRIM_PASSES_AFTER_SHRINK;
        }
        if self.trim_passes > 0 {
            self.trim_passes -= 1;
            if self.trim_passes == 0 {
                // The burst is over: move the steady flow's buffers out of
                // the pages it left behind, then trim once more.
                self.rehome_buffers();
            }
            self.pool.release_idle_pages();
            release_free_heap();
        }
    }

    /// Reallocates the long-lived small buffers of the steady flow (idle
    /// pooled frames, empty outbound rings) so they leave the pages a burst
    /// scattered them over (see `FramePool::rehome`). An empty ring is
    /// simply released; the next delivery allocates it again. One pass
    /// over the connections, about 10 s after a burst.
    fn rehome_buffers(&mut self) {
        self.frames.rehome();
        for (_, conn) in self.conns.iter_mut() {
            conn.out.release_idle();
        }
    }

    /// Shrinks the worker's reusable lists that a burst made large (they
    /// are empty between iterations), so their storage does not pin heap
    /// pages the burst spread out.
    fn release_scratch(&mut self) {
        self.dirty.shrink_to(SCRATCH_KEEP);
        self.scratch_timers.shrink_to(SCRATCH_KEEP);
        self.scratch_slow.shrink_to(SCRATCH_KEEP);
        self.timers.release_spare();
        for queue in &mut self.overflow {
            queue.shrink_to(SCRATCH_KEEP);
        }
    }

    fn run_timers(&mut self) {
        let mut due = std::mem::take(&mut self.scratch_timers);
        self.timers.expire(self.now_ms, &mut due);
        for entry in due.drain(..) {
            let key = entry.key as usize;
            let live = self
                .conns
                .get(key)
                .is_some_and(|c| c.generation == entry.generation && c.timer_tick == entry.tick);
            if live {
                self.conns[key].timer_tick = 0;
                self.on_timer(key);
            }
        }
        self.scratch_timers = due;
    }

    fn on_timer(&mut self, key: usize) {
        let now = self.now_ms;
        let conn = &mut self.conns[key];
        if conn.close_after_flush || !conn.is_websocket() || conn.close.state() != CloseState::Open
        {
            // Handshake or keep-alive deadline, or a close that was never
            // answered or never flushed.
            self.remove(key, false);
            return;
        }
        if self.limits.ping_interval_ms == 0 {
            return;
        }
        // Fires at most once per heartbeat interval per connection.
        conn.out.release_idle();
        if conn.ping_sent_ms != 0 {
            if conn.last_activity_ms >= conn.ping_sent_ms {
                conn.ping_sent_ms = 0;
                self.arm_heartbeat(key);
            } else {
                self.metrics.ping_timeouts.inc();
                self.remove(key, false);
            }
            return;
        }
        let due = conn.last_activity_ms + self.limits.ping_interval_ms;
        if now >= due {
            conn.out
                .push_parts(&[ControlFrame::ping(&now.to_be_bytes()).as_bytes()]);
            conn.ping_sent_ms = now;
            let at = now + self.limits.pong_timeout_ms;
            self.schedule(key, at);
            self.mark_dirty(key);
        } else {
            self.schedule(key, due);
        }
    }

    // ----- shutdown ------------------------------------------------------------

    fn begin_shutdown(&mut self) {
        self.shutdown_deadline = Some(self.now_ms + self.limits.shutdown_timeout_ms);
        if let Some(mut listener) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut listener);
        }
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let conn = &self.conns[key];
            match &conn.phase {
                Phase::WebSocket => {
                    if conn.close.state() == CloseState::Open {
                        self.close_with(key, CloseCode::GOING_AWAY, "server shutting down");
                    }
                }
                // Idle keep-alive HTTP connections stay until the
                // WebSockets are gone, so probes see /healthz answer 503.
                Phase::Http(_) => {}
            }
        }
        self.flush_dirty();
    }

    /// During shutdown: no WebSocket left in the process and nothing here
    /// but idle HTTP connections (no request being read or answered).
    fn only_idle_http_left(&self) -> bool {
        self.shared.ws_connections.load(Ordering::Acquire) == 0
            && self.conns.iter().all(|(_, c)| match &c.phase {
                Phase::Http(st) => st.buf.is_empty() && c.out.is_empty(),
                Phase::WebSocket => false,
            })
    }

    fn finish(&mut self) {
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            self.remove(key, false);
        }
    }
}

/// Where deliveries record their effects (disjoint from the slab).
struct Sink<'a> {
    dirty: &'a mut Vec<usize>,
    metrics: &'a WorkerMetrics,
    limit: usize,
    /// Members over their outbound bound (with the messages they missed),
    /// handled after the loop.
    slow: &'a mut Vec<(usize, u64)>,
}

impl Sink<'_> {
    fn delivered(&mut self, conn: &mut Connection, member: usize, count: u64) {
        self.metrics.fanout_deliveries.add(count);
        self.metrics.messages_out.add(count);
        if !conn.dirty {
            conn.dirty = true;
            self.dirty.push(member);
        }
    }
}

/// Enqueues a shared buffer of `count` frames to one member.
fn deliver(
    conns: &mut Slab<Connection>,
    mut sink: Sink<'_>,
    member: usize,
    frame: &SharedFrame,
    count: u64,
) {
    let Some(conn) = conns.get_mut(member) else {
        return;
    };
    if !conn.close.can_send_data() || conn.close_after_flush {
        return;
    }
    if !conn.out.has_room(frame.len(), sink.limit) {
        write_now(conn, sink.metrics);
    }
    if conn.out.try_push_shared(frame, sink.limit) {
        sink.delivered(conn, member, count);
    } else {
        sink.slow.push((member, count));
    }
}

/// Writes a connection's queue before its bound is judged: output is
/// normally written once per loop iteration, and a burst read in one
/// iteration must not make a client that reads promptly look slow.
fn write_now(conn: &mut Connection, metrics: &WorkerMetrics) {
    if let Ok((_, n)) = conn.out.flush(&mut conn.socket) {
        metrics.bytes_out.add(n as u64);
    }
}

/// Enqueues the frames of `batch` not published by `member` (a copy: the
/// publisher does not receive its own messages without `echo_self`).
fn deliver_without_own(
    conns: &mut Slab<Connection>,
    mut sink: Sink<'_>,
    member: usize,
    bytes: &[u8],
    frames: &[BatchFrame],
) {
    let Some(conn) = conns.get_mut(member) else {
        return;
    };
    if !conn.close.can_send_data() || conn.close_after_flush {
        return;
    }
    let mut start = 0;
    let mut total = 0;
    let mut count = 0;
    for f in frames {
        if f.publisher != member {
            total += f.end - start;
            count += 1;
        }
        start = f.end;
    }
    if count == 0 {
        return;
    }
    if !conn.out.has_room(total, sink.limit) {
        write_now(conn, sink.metrics);
        if !conn.out.has_room(total, sink.limit) {
            sink.slow.push((member, count));
            return;
        }
    }
    let mut start = 0;
    for f in frames {
        if f.publisher != member {
            conn.out.push_parts(&[&bytes[start..f.end]]);
        }
        start = f.end;
    }
    sink.delivered(conn, member, count);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_key_and_generation() {
        let t = token_of(12345, 0xdead_beef);
        assert_eq!(split_token(t), (12345, 0xdead_beef));
        assert_ne!(token_of(1, 1), token_of(1, 2));
    }
}
