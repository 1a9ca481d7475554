//! One worker: a mio event loop that routes between the things it owns:
//! its listener ([`Acceptor`]), its connections ([`ConnTable`], each with a
//! sans-IO session), its share of the rooms ([`LocalRooms`]), its end of
//! the cross-worker mesh ([`MeshPort`]), its read buffers, and the
//! housekeeping that gives memory back.
//!
//! Each iteration, in order: sleep in `poll` until an event or the next
//! deadline; handle socket events (accept, write, read); take batches
//! from other workers; move overflow into queues that drained (and resume
//! the publishers that waited for them); read again what used its budget;
//! fire due session timers; housekeeping; deliver this iteration's room
//! batches; accept what the last batch left; write every connection that
//! got output (many small frames leave in one vectored write); wake the
//! workers we sent to.

use super::accept::{Accepted, Acceptor, ACCEPT_BATCH, LISTENER};
use super::admin::{Listener, ADMIN_LISTENER, ADMIN_MAX_CONNECTIONS};
use super::admission::{IpKey, Refusal};
use super::buffer_pool::BufferPool;
use super::client::{Client, Exec};
use super::client_deadlines::ClientDeadlines;
use super::connection::{Attachment, Connection, ReadOutcome};
use super::local_rooms::{Fanout, LocalRooms};
use super::memory::release_free_heap;
use super::mesh::{Control, MeshPort, Paused, WorkerMsg};
use super::router::Router;
use super::session::{Finish, Session, SessionConfig, SessionContext};
use super::table::{token_of, ConnTable};
use super::timer::TimerEntry;
use super::transport::Transport;
use super::Shared;
use crate::metrics::{ProxyRefusal, WorkerMetrics};
use crate::protocol::forwarded::TrustedProxies;
use crate::protocol::response::http_response;
use crate::protocol::{encode_header, CloseCode, OpCode, RejectReason};
use crate::pubsub::hub::Hub;
use crate::pubsub::proto::{DisconnectCode, UnsubscribeCode};
use crossbeam_channel::Receiver;
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

mod cluster;
mod pubsub;

pub const WAKER: Token = Token(usize::MAX - 2);
/// The TLS listener (`tls_listen`).
pub const TLS_LISTENER: Token = Token(usize::MAX - 4);

/// Capacity the worker's reusable lists keep after a burst.
const SCRATCH_KEEP: usize = 64;

pub struct Worker {
    id: usize,
    poll: Poll,
    shared: Arc<Shared>,
    metrics: Arc<WorkerMetrics>,
    ctx: Arc<SessionContext>,
    acceptor: Acceptor,
    /// The admin listener (worker 0, with `admin_listen`).
    admin: Option<Acceptor>,
    /// The TLS listener (with `tls_listen`) and the configuration each of
    /// its connections starts from.
    tls: Option<(Acceptor, Arc<rustls::ServerConfig>)>,
    /// Slab keys of the connections from the admin listener (at most
    /// `ADMIN_MAX_CONNECTIONS`; kept here, not in `Connection`, which
    /// stays small for the many public ones).
    admin_keys: Vec<usize>,
    table: ConnTable,
    pool: BufferPool,
    rooms: LocalRooms,
    port: MeshPort,
    housekeeping: super::housekeeping::Housekeeping,
    epoch: Instant,
    now: u64,
    read_budget: usize,
    send_buffer_bytes: usize,
    /// `proxy_protocol`: the time a connection has for its PROXY header.
    proxy_header_ms: Option<u64>,
    shutdown_deadline: Option<u64>,
    scratch_timers: Vec<TimerEntry>,
    scratch_inbox: Vec<WorkerMsg>,
    scratch_resumed: Vec<Paused>,
    /// Replies of one protocol frame (reused).
    replies: Vec<u8>,
    /// Subscribers to unsubscribe for a broken stream (reused).
    scratch_insufficient: Vec<(usize, u64)>,
    /// Protocol clients' deadlines: connect, token and subscription expiry.
    deadlines: ClientDeadlines,
    /// Protocol commands waiting for Redis (`broker = "redis"`).
    awaiting: crate::server::awaiting::Awaiting,
    /// When this worker next refreshes its clients' presence in Redis,
    /// and where the pass under way stands (a connection key).
    presence_refresh_at: u64,
    presence_cursor: Option<usize>,
    /// Broker events and replies of one iteration (reused).
    scratch_broker_events: Vec<crate::broker::BrokerEvent>,
    scratch_broker_replies: Vec<(
        crate::broker::Token,
        Result<crate::broker::Reply, crate::broker::BrokerError>,
    )>,
}

impl Worker {
    #[allow(clippy::too_many_arguments)] // the parts of one worker, each moved in
    pub fn new(
        id: usize,
        poll: Poll,
        listener: TcpListener,
        admin: Option<TcpListener>,
        tls: Option<(TcpListener, Arc<rustls::ServerConfig>)>,
        shared: Arc<Shared>,
        rx: Receiver<WorkerMsg>,
        broker: Option<crate::broker::BrokerPort>,
    ) -> io::Result<Worker> {
        let acceptor = Acceptor::new(listener, poll.registry(), LISTENER)?;
        let admin = match admin {
            Some(l) => Some(Acceptor::new(l, poll.registry(), ADMIN_LISTENER)?),
            None => None,
        };
        let tls = match tls {
            Some((l, config)) => Some((Acceptor::new(l, poll.registry(), TLS_LISTENER)?, config)),
            None => None,
        };
        let c = &shared.config;
        let workers = shared.mesh.len();
        let reserve = (c.max_connections / workers.max(1)).saturating_mul(5) / 4 + 1024;
        let metrics = shared.metrics[id].clone();
        let mut rooms = LocalRooms::new(id, c.max_outbound_bytes, c.echo_self);
        if let Some(port) = broker {
            rooms.set_broker(port);
        }
        Ok(Worker {
            id,
            poll,
            ctx: SessionContext::with_proxies(
                SessionConfig::from_config(c),
                metrics.clone(),
                TrustedProxies::new(c.trusted_proxies.clone()),
            ),
            proxy_header_ms: c
                .proxy_protocol
                .then(|| c.proxy_header_timeout.as_millis().min(u128::from(u32::MAX)) as u64),
            metrics,
            acceptor,
            admin,
            tls,
            admin_keys: Vec::new(),
            table: ConnTable::new(reserve),
            pool: BufferPool::new(c.read_buffer_bytes, c.buffer_pool_size),
            rooms,
            port: MeshPort::new(rx, workers),
            housekeeping: super::housekeeping::Housekeeping::new(1),
            epoch: Instant::now(),
            now: 1,
            read_budget: c.read_budget_bytes.max(1),
            send_buffer_bytes: c.send_buffer_bytes,
            shutdown_deadline: None,
            scratch_timers: Vec::new(),
            scratch_inbox: Vec::new(),
            scratch_resumed: Vec::new(),
            replies: Vec::new(),
            scratch_insufficient: Vec::new(),
            deadlines: ClientDeadlines::new(
                c.client_expired_close_delay.as_secs(),
                c.client_expired_sub_close_delay.as_secs(),
            ),
            scratch_broker_events: Vec::new(),
            scratch_broker_replies: Vec::new(),
            awaiting: Default::default(),
            presence_refresh_at: 0,
            presence_cursor: None,
            shared,
        })
    }

    fn tick_clock(&mut self) {
        self.now = self.epoch.elapsed().as_millis() as u64 + 1;
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
                if self.now >= deadline || self.only_idle_http_left() {
                    break;
                }
            }
            if let Err(e) = self.sleep(&mut events) {
                log::error!("worker {}: poll failed: {e}", self.id);
                break;
            }
            self.tick_clock();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    ADMIN_LISTENER => self.accept_admin(),
                    TLS_LISTENER => self.accept_tls(),
                    WAKER => {}
                    token => {
                        let Some(key) = self.table.by_token(token) else {
                            continue;
                        };
                        if event.is_writable() {
                            self.write(key);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(key, event.is_read_closed() || event.is_error());
                        }
                    }
                }
            }
            self.drain_inbox();
            self.drain_broker();
            self.drain_overflow();
            self.read_ready();
            self.run_timers();
            self.run_client_deadlines();
            self.refresh_presence();
            self.housekeeping();
            self.flush_rooms();
            if self.acceptor.wants_retry(self.now) {
                self.accept();
            }
            self.acceptor.sweep_refused(self.now);
            if self.admin.as_ref().is_some_and(|a| a.wants_retry(self.now)) {
                self.accept_admin();
            }
            if self
                .tls
                .as_ref()
                .is_some_and(|(a, _)| a.wants_retry(self.now))
            {
                self.accept_tls();
            }
            if let Some(admin) = &mut self.admin {
                admin.sweep_refused(self.now);
            }
            self.write_dirty();
            self.port.send_wakes(&self.shared.mesh);
        }
        self.finish();
    }

    /// Waits for events until the next thing the loop must do.
    fn sleep(&mut self, events: &mut Events) -> io::Result<()> {
        let mut timeout = self.poll_timeout();
        if timeout != Some(Duration::ZERO)
            && (!self
                .shared
                .mesh
                .prepare_sleep(self.id, self.port.receiver())
                || !self.rooms.broker().is_none_or(|b| b.prepare_sleep()))
        {
            timeout = Some(Duration::ZERO);
        }
        let result = self.poll.poll(events, timeout);
        self.shared.mesh.awake(self.id);
        if let Some(b) = self.rooms.broker() {
            b.awake();
        }
        match result {
            Err(e) if e.kind() != io::ErrorKind::Interrupted => Err(e),
            _ => Ok(()),
        }
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if self.table.has_ready() || self.port.inbox_more() || self.table.has_dirty() {
            return Some(Duration::ZERO);
        }
        let mut wait = self.housekeeping.due_in(self.now).min(1000);
        if self.port.has_blocked() || self.rooms.broker().is_some_and(|b| b.has_pending()) {
            wait = 1;
        }
        if self.refreshing_presence() {
            wait = wait.min(10);
        } else if self.presence_refresh_at != 0 {
            wait = wait.min(self.presence_refresh_at.saturating_sub(self.now));
        }
        for t in [
            self.table.next_due_in(self.now),
            self.acceptor.retry_in(self.now),
            self.admin.as_ref().and_then(|a| a.retry_in(self.now)),
            self.tls.as_ref().and_then(|(a, _)| a.retry_in(self.now)),
        ]
        .into_iter()
        .flatten()
        {
            wait = wait.min(t);
        }
        if let Some(d) = self.shutdown_deadline {
            // Also look again soon: other workers' WebSockets may be gone.
            wait = wait.min(d.saturating_sub(self.now)).min(50);
        }
        Some(Duration::from_millis(wait))
    }

    // ----- accepting ---------------------------------------------------------

    fn accept(&mut self) {
        // An iteration under load can take tens of milliseconds: read the
        // clock again so this batch's handshake deadlines are not short.
        self.tick_clock();
        if !self.acceptor.begin(self.now) {
            return;
        }
        for _ in 0..ACCEPT_BATCH {
            match self.acceptor.accept(self.now) {
                Accepted::Conn(socket, addr) => self.add_connection(socket, addr, false),
                Accepted::None => return,
                Accepted::Exhausted(warning) => {
                    if let Some(e) = warning {
                        log::warn!(
                            "worker {}: accept failed: {e} ({} connections on this worker); pausing accepts briefly (raise RLIMIT_NOFILE or lower max_connections)",
                            self.id,
                            self.table.len()
                        );
                    }
                    return;
                }
            }
        }
        self.acceptor.batch_full();
    }

    /// Accepts on the TLS listener: as [`Worker::accept`], each connection
    /// starting a TLS handshake.
    fn accept_tls(&mut self) {
        self.tick_clock();
        let now = self.now;
        if !self.tls.as_mut().is_some_and(|(a, _)| a.begin(now)) {
            return;
        }
        for _ in 0..ACCEPT_BATCH {
            let Some((tls, _)) = &mut self.tls else {
                return;
            };
            match tls.accept(self.now) {
                Accepted::Conn(socket, addr) => self.add_connection(socket, addr, true),
                Accepted::None => return,
                Accepted::Exhausted(warning) => {
                    if let Some(e) = warning {
                        log::warn!(
                            "worker {}: TLS accept failed: {e} ({} connections on this worker); pausing TLS accepts briefly (raise RLIMIT_NOFILE or lower max_connections)",
                            self.id,
                            self.table.len()
                        );
                    }
                    return;
                }
            }
        }
        if let Some((tls, _)) = &mut self.tls {
            tls.batch_full();
        }
    }

    /// Accepts on the admin listener: connections that admission does not
    /// count (probes are answered while the public side is full), bounded
    /// by [`ADMIN_MAX_CONNECTIONS`].
    fn accept_admin(&mut self) {
        self.tick_clock();
        let Some(admin) = &mut self.admin else {
            return;
        };
        if !admin.begin(self.now) {
            return;
        }
        for _ in 0..ACCEPT_BATCH {
            let Some(admin) = &mut self.admin else {
                return;
            };
            match admin.accept(self.now) {
                Accepted::Conn(socket, _) if self.admin_keys.len() >= ADMIN_MAX_CONNECTIONS => {
                    let answer = crate::protocol::response::http_response(
                        503,
                        "Retry-After: 1\r\n",
                        "text/plain; charset=utf-8",
                        b"too many admin connections\n",
                        false,
                    );
                    admin.refuse(socket, &answer, self.now);
                }
                Accepted::Conn(socket, addr) => {
                    // The key is never released: admission does not count
                    // admin connections.
                    let peer = IpKey::new(addr.ip(), 128);
                    // Never a PROXY header nor forwarding headers here.
                    let session = Session::new(self.ctx.clone(), self.now);
                    if let Some(key) = self.register(socket, peer, session, None) {
                        self.admin_keys.push(key);
                    }
                }
                Accepted::None => return,
                Accepted::Exhausted(warning) => {
                    if let Some(e) = warning {
                        log::warn!(
                            "admin listener: accept failed: {e}; pausing admin accepts briefly"
                        );
                    }
                    return;
                }
            }
        }
        if let Some(admin) = &mut self.admin {
            admin.batch_full();
        }
    }

    /// Admits a connection from the public (`tls`: the TLS) listener.
    /// Refusals over TLS close the socket: the answer would be plaintext
    /// to a peer expecting a ServerHello.
    fn add_connection(&mut self, socket: TcpStream, addr: SocketAddr, tls: bool) {
        self.metrics.connections_accepted.inc();
        let ip = addr.ip();
        // A trusted proxy's connection is counted per IP once it says who
        // its client is (PROXY header, or a request's forwarding headers).
        let via_proxy = self.ctx.trusted.contains(ip);
        if self.proxy_header_ms.is_some() && !via_proxy {
            log::debug!("worker {}: refused {ip}: not a trusted proxy", self.id);
            self.metrics
                .proxy_refusal(ProxyRefusal::UntrustedPeer)
                .inc();
            let answer = http_response(
                403,
                "",
                "text/plain; charset=utf-8",
                b"this listener accepts PROXY protocol connections from trusted proxies only\n",
                false,
            );
            if tls {
                return;
            }
            return self.acceptor.refuse(socket, &answer, self.now);
        }
        let admitted = if via_proxy {
            self.shared.admission.admit_pending()
        } else {
            self.shared.admission.admit(ip)
        };
        let peer = match admitted {
            Ok(peer) => peer,
            Err(refusal) => {
                let reason = match refusal {
                    Refusal::Full => RejectReason::Unavailable,
                    Refusal::PerIp => RejectReason::TooManyPerIp,
                };
                self.metrics.rejection(reason).inc();
                if tls {
                    return;
                }
                return self.acceptor.refuse(socket, &reason.response(), self.now);
            }
        };
        let session = if via_proxy {
            Session::via_proxy(self.ctx.clone(), self.now, ip, self.proxy_header_ms)
        } else {
            Session::new(self.ctx.clone(), self.now)
        };
        let tls = match (tls, &self.tls) {
            (false, _) | (true, None) => None,
            (true, Some((_, config))) => {
                match rustls::server::UnbufferedServerConnection::new(config.clone()) {
                    Ok(c) => Some(c),
                    Err(e) => {
                        log::debug!("worker {}: TLS connection not started: {e}", self.id);
                        self.shared.admission.release(peer);
                        return;
                    }
                }
            }
        };
        if self.register(socket, peer, session, tls).is_none() {
            self.shared.admission.release(peer);
        }
    }

    /// Sets a new connection up (socket options, slab slot, poll
    /// registration, session): its slab key, or `None` if it could not be,
    /// and was dropped.
    fn register(
        &mut self,
        socket: TcpStream,
        peer: IpKey,
        session: Session,
        tls: Option<rustls::server::UnbufferedServerConnection>,
    ) -> Option<usize> {
        let _ = socket.set_nodelay(true);
        if self.send_buffer_bytes > 0 {
            // Caps what the kernel holds for a peer that stopped reading,
            // so slow-consumer detection follows the configuration.
            let _ = socket2::SockRef::from(&socket).set_send_buffer_size(self.send_buffer_bytes);
        }
        let (_, generation, token) = self.table.next_slot()?;
        let mut transport = match tls {
            Some(tls) => Transport::tls(tls, socket),
            None => Transport::Plain(socket),
        };
        if self
            .poll
            .registry()
            .register(&mut transport, token, Interest::READABLE)
            .is_err()
        {
            return None;
        }
        Some(
            self.table
                .insert(Connection::new(transport, session, generation, peer)),
        )
    }

    // ----- reading -----------------------------------------------------------

    fn read(&mut self, key: usize, read_closed: bool) {
        let now = self.now;
        let Worker {
            table,
            pool,
            rooms,
            port,
            shared,
            metrics,
            ctx,
            replies,
            admin_keys,
            awaiting,
            ..
        } = self;
        let Some(conn) = table.get_mut(key) else {
            return;
        };
        // A publisher into a room with members on a blocked worker waits
        // until those workers drain (see `mesh`); a protocol client that
        // published in its last read waits while any worker is blocked.
        if port.has_blocked() {
            let mask = match &mut conn.attachment {
                Some(Attachment::Room(m)) if m.publishes => rooms.remote_mask(m.room_id),
                Some(Attachment::Client(c)) if c.publisher => u64::MAX,
                _ => 0,
            };
            if port.is_blocked(mask) {
                if !conn.session.is_paused() {
                    conn.session.set_paused(true, now);
                    port.pause(key, conn.generation, mask);
                }
                return;
            }
        }
        let mut router = Router {
            generation: conn.generation,
            awaiting,
            shared,
            rooms,
            port,
            metrics,
            key,
            attachment: conn.attachment.take(),
            peer: conn.peer,
            upgraded: false,
            replies,
            listener: if admin_keys.contains(&key) {
                Listener::Admin
            } else {
                Listener::Public
            },
            // The flag, not this worker's deadline: a request read between
            // the flag and this worker's next loop top is answered as
            // shutting down too.
            shutting_down: shared.shutdown.load(Ordering::Acquire),
        };
        if let Some(Attachment::Client(c)) = &mut router.attachment {
            c.publisher = false;
        }
        let outcome = conn.read(pool, ctx, now, self.read_budget, read_closed, &mut router);
        let upgraded = router.upgraded;
        conn.attachment = router.attachment;
        conn.peer = router.peer;
        if let Some(Attachment::Client(c)) = &mut conn.attachment {
            if upgraded {
                conn.session.set_app_heartbeat();
                let stale = shared.config.client_stale_close_delay.as_millis() as u64;
                self.deadlines.connect_by(key, conn.generation, now + stale);
            }
            self.deadlines.track(key, conn.generation, c);
        }
        if upgraded {
            // Write the 101 now: it nearly always leaves in one write, and
            // a member that has received nothing yet then holds no ring.
            conn.flush(metrics);
            conn.session.release_idle();
        }
        if outcome == ReadOutcome::Budget {
            table.push_ready(key);
        }
        let mut out = Fanout {
            table,
            port,
            mesh: &shared.mesh,
            directory: &shared.directory,
            hub: &shared.hub,
            metrics,
            now,
        };
        rooms.sweep_dead(&mut out);
        rooms.flush_full(&mut out);
        self.settle(key);
    }

    /// Reads again the connections that used their budget or were resumed.
    fn read_ready(&mut self) {
        if !self.table.has_ready() {
            return;
        }
        for (key, generation) in self.table.take_ready() {
            if self
                .table
                .get(key)
                .is_some_and(|c| c.generation == generation)
            {
                self.read(key, false);
            }
        }
    }

    // ----- cross-worker ------------------------------------------------------

    fn fanout(&mut self) -> (Fanout<'_>, &mut LocalRooms) {
        (
            Fanout {
                table: &mut self.table,
                port: &mut self.port,
                mesh: &self.shared.mesh,
                directory: &self.shared.directory,
                hub: &self.shared.hub,
                metrics: &self.metrics,
                now: self.now,
            },
            &mut self.rooms,
        )
    }

    fn drain_inbox(&mut self) {
        let mut inbox = std::mem::take(&mut self.scratch_inbox);
        self.port.recv_batch(&mut inbox);
        let mut controls = Vec::new();
        let (mut out, rooms) = self.fanout();
        for msg in inbox.drain(..) {
            match msg {
                WorkerMsg::Batch(batch) => rooms.deliver_remote(&batch, &mut out),
                WorkerMsg::Control(c) => controls.push(c),
            }
        }
        self.scratch_inbox = inbox;
        for c in controls {
            self.apply_control(&c);
        }
        self.unsubscribe_insufficient();
    }

    fn drain_overflow(&mut self) {
        if !self.port.has_blocked() {
            return;
        }
        let mut resumed = std::mem::take(&mut self.scratch_resumed);
        self.port.drain_overflow(&self.shared.mesh, &mut resumed);
        for p in resumed.drain(..) {
            if let Some(conn) = self.table.get_mut(p.key) {
                if conn.generation == p.generation {
                    conn.session.set_paused(false, self.now);
                    self.table.push_ready(p.key);
                }
            }
        }
        self.scratch_resumed = resumed;
    }

    fn flush_rooms(&mut self) {
        let (mut out, rooms) = self.fanout();
        rooms.flush_all(&mut out);
        self.unsubscribe_insufficient();
    }

    // ----- writing, timers, settling -----------------------------------------

    fn write(&mut self, key: usize) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let done = conn.flush(&self.metrics);
        let token = token_of(key, conn.generation);
        conn.update_interest(self.poll.registry(), token);
        if done {
            if !conn.receives_broadcasts() {
                conn.session.release_idle();
            }
            if conn.stalled && conn.session.wants_read() {
                // An answer was written: the next request may be read.
                self.table.push_ready(key);
            }
        }
        self.settle(key);
    }

    fn write_dirty(&mut self) {
        while let Some(key) = self.table.pop_dirty() {
            self.write(key);
        }
    }

    fn run_timers(&mut self) {
        let mut due = std::mem::take(&mut self.scratch_timers);
        self.table.expire(self.now, &mut due);
        for entry in due.drain(..) {
            let key = entry.key as usize;
            if let Some(conn) = self.table.get_mut(key) {
                conn.session.handle_timeout(self.now);
            }
            self.settle(key);
        }
        self.scratch_timers = due;
    }

    /// After anything happened to a connection: close it if its session is
    /// over, otherwise schedule its output, interest and timer.
    fn settle(&mut self, key: usize) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        match conn.session.poll_finish() {
            Some(Finish::Abort) => return self.remove(key, false),
            // Unless TLS records (the last ones, and close_notify) still
            // wait for the socket: then WRITABLE brings them out and the
            // connection ends after; the session's close deadline bounds
            // the wait.
            Some(Finish::Graceful) if !conn.transport.finish() => return self.remove(key, true),
            Some(Finish::Graceful) | None => {}
        }
        if conn.has_output() && !conn.awaits_writable() && !conn.dirty {
            self.table.mark_dirty(key);
        }
        self.table.sync_timer(key);
    }

    /// Removes a connection: leaves its room, gives back its admission
    /// slot, buffers and socket.
    fn remove(&mut self, key: usize, graceful: bool) {
        let Some(conn) = self.table.remove(key) else {
            return;
        };
        let mut conn = conn;
        if let Some(why) = conn.transport.tls_failure() {
            // Whatever ended it (bad records, a client alert, EOF, the
            // handshake deadline): counted, never logged per connection.
            if conn.transport.in_tls_handshake() {
                self.metrics.tls_handshake_failure(why).inc();
            } else {
                self.metrics.tls_error(why).inc();
            }
        }
        if let Some(attachment) = conn.attachment.take() {
            self.metrics.connections_open.sub(1);
            self.shared.ws_connections.fetch_sub(1, Ordering::AcqRel);
            match attachment {
                Attachment::Room(m) => {
                    let (mut out, rooms) = self.fanout();
                    rooms.leave(m, &mut out);
                }
                Attachment::Client(client) => self.client_gone(&client),
                Attachment::Echo => {}
            }
        }
        if let Some(i) = self.admin_keys.iter().position(|&k| k == key) {
            self.admin_keys.swap_remove(i);
        } else {
            self.shared.admission.release(conn.peer);
        }
        conn.close(self.poll.registry(), &mut self.pool, graceful);
    }

    /// About once a second: give back memory a burst left behind.
    fn housekeeping(&mut self) {
        let conns = self.table.len();
        let (pool, rooms) = (&mut self.pool, &mut self.rooms);
        let Some(pass) = self
            .housekeeping
            .pass(self.now, conns, || pool.trim() + rooms.trim())
        else {
            return;
        };
        if pass.shrank {
            self.table.release_memory(SCRATCH_KEEP);
            self.rooms.release_scratch(SCRATCH_KEEP);
            self.port.release_scratch(SCRATCH_KEEP);
            self.scratch_timers.shrink_to(SCRATCH_KEEP);
            self.scratch_inbox.shrink_to(SCRATCH_KEEP);
        }
        if pass.rehome {
            // Move the steady flow's buffers out of the pages the burst
            // left behind (see `FramePool::rehome`); empty rings are
            // simply released and reallocated on the next delivery.
            self.rooms.rehome();
            for conn in self.table.iter_mut() {
                conn.session.release_idle();
            }
        }
        if pass.trim_heap {
            self.pool.release_idle_pages();
            release_free_heap();
        }
    }

    // ----- shutdown ------------------------------------------------------------

    fn begin_shutdown(&mut self) {
        self.shutdown_deadline =
            Some(self.now + self.shared.config.shutdown_timeout.as_millis() as u64);
        self.acceptor.close(self.poll.registry());
        if let Some((tls, _)) = &mut self.tls {
            tls.close(self.poll.registry());
        }
        for key in self.table.keys() {
            if let Some(conn) = self.table.get_mut(key) {
                // Idle keep-alive HTTP connections stay until the
                // WebSockets are gone, so probes see /healthz answer 503.
                if conn.session.is_websocket() {
                    conn.session
                        .close(CloseCode::GOING_AWAY, "server shutting down", self.now);
                }
            }
            self.settle(key);
        }
        self.write_dirty();
    }

    /// During shutdown: no WebSocket left in the process and nothing here
    /// but idle HTTP connections.
    fn only_idle_http_left(&self) -> bool {
        self.shared.ws_connections.load(Ordering::Acquire) == 0
            && self.table.iter().all(|c| c.session.is_idle_http())
    }

    fn finish(&mut self) {
        for key in self.table.keys() {
            self.remove(key, false);
        }
    }
}
