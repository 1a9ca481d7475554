//! One connection's protocol life as a sans-IO state machine.
//!
//! A [`Session`] holds everything about a connection except its socket:
//! the HTTP phase (keep-alive, one request in flight), the upgrade, the
//! open WebSocket phase (frame decoding, message assembly, rate limits,
//! the close handshake), the outbound queue, and every per-connection
//! deadline: handshake, keep-alive idle, heartbeat ping, pong, close.
//!
//! It is driven from outside, in the manner of quinn-proto's `Connection`:
//! bytes go in with [`Session::handle_input`], the clock with
//! [`Session::handle_timeout`]; bytes come out with [`Session::write_to`]
//! (any `Write`, e.g. a socket or a `Vec` in tests), the next deadline
//! with [`Session::poll_timeout`], and the end of the connection with
//! [`Session::poll_finish`]. What a request or a message *means* (routes,
//! rooms, publish) is asked of a [`Handler`] synchronously. No socket,
//! clock or thread inside, so every deadline is tested on a virtual clock.
//!
//! Times are milliseconds on the caller's monotonic clock, always > 0.

mod http;
mod open;
#[cfg(test)]
mod tests;

use super::outbound::{Flush, OutboundQueue};
use super::rate_limit::RateLimits;
use crate::config::{RateLimitPolicy, SlowConsumerPolicy};
use crate::metrics::{close_code_index, ProxyRefusal, WorkerMetrics};
use crate::protocol::deflate::{DeflateSettings, Negotiated};
use crate::protocol::forwarded::TrustedProxies;
use crate::protocol::{
    CloseAction, CloseCode, CloseState, ControlFrame, FrameDecoder, HandshakeLimits, HttpRequest,
    MessageKind, Role, SharedFrame, UpgradeRequest,
};
use http::{HttpPhase, Via};
pub(crate) use open::compress_reply;
use open::OpenPhase;
use std::io::{self, Write};
use std::net::IpAddr;
use std::sync::Arc;

/// The per-connection limits and deadlines, shared by a worker's sessions.
#[derive(Clone, Debug)]
pub struct SessionConfig {
    pub head: HandshakeLimits,
    pub max_frame_bytes: usize,
    pub max_message_bytes: usize,
    pub max_outbound_bytes: usize,
    /// Time to complete a request (head and body), and keep-alive idle time.
    pub handshake_timeout_ms: u64,
    pub close_timeout_ms: u64,
    /// 0: no heartbeat.
    pub ping_interval_ms: u64,
    pub pong_timeout_ms: u64,
    pub rate: RateLimits,
    pub rate_policy: RateLimitPolicy,
    pub slow_consumer: SlowConsumerPolicy,
    /// permessage-deflate offered to clients (`compression = on`).
    pub deflate: Option<DeflateSettings>,
}

impl SessionConfig {
    /// The session side of the relay's configuration.
    pub fn from_config(c: &crate::config::Config) -> SessionConfig {
        let ms = |d: std::time::Duration| d.as_millis().min(u64::MAX as u128 / 4) as u64;
        SessionConfig {
            head: HandshakeLimits {
                max_head_bytes: c.max_request_head_bytes,
                max_headers: c.max_request_headers,
            },
            max_frame_bytes: c.max_frame_bytes,
            max_message_bytes: c.max_message_bytes,
            max_outbound_bytes: c.max_outbound_bytes,
            handshake_timeout_ms: ms(c.handshake_timeout).max(1),
            close_timeout_ms: ms(c.close_timeout),
            ping_interval_ms: ms(c.ping_interval),
            pong_timeout_ms: ms(c.pong_timeout).max(1),
            rate: RateLimits {
                messages_per_sec: c.rate_limit_messages as f64,
                burst: c.effective_rate_limit_burst() as f64,
                bytes_per_sec: c.rate_limit_bytes as f64,
            },
            rate_policy: c.rate_limit_policy,
            slow_consumer: c.slow_consumer,
            deflate: c.compression.then(|| DeflateSettings {
                level: c.compression_level,
                min_bytes: c.compression_min_bytes,
                ..DeflateSettings::default()
            }),
        }
    }
}

/// What every session of a worker shares: configuration, the frame
/// decoder (stateless), the worker's counters and the trusted proxies.
pub struct SessionContext {
    pub config: SessionConfig,
    pub decoder: FrameDecoder,
    /// The decoder of connections that negotiated permessage-deflate
    /// (RSV1 allowed).
    pub deflate_decoder: FrameDecoder,
    pub metrics: Arc<WorkerMetrics>,
    /// Whose `X-Forwarded-For` / `Forwarded` headers name the client.
    pub trusted: TrustedProxies,
}

impl SessionContext {
    pub fn new(config: SessionConfig, metrics: Arc<WorkerMetrics>) -> Arc<SessionContext> {
        Self::with_proxies(config, metrics, TrustedProxies::default())
    }

    pub fn with_proxies(
        config: SessionConfig,
        metrics: Arc<WorkerMetrics>,
        trusted: TrustedProxies,
    ) -> Arc<SessionContext> {
        Arc::new(SessionContext {
            decoder: FrameDecoder::new(Role::Server, config.max_frame_bytes),
            deflate_decoder: FrameDecoder::new(
                Role::Server,
                crate::protocol::deflate::compressed_frame_limit(config.max_frame_bytes),
            )
            .with_allowed_rsv(0x4),
            config,
            metrics,
            trusted,
        })
    }
}

/// An HTTP answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status line, headers and body; empty: answered later (see
    /// [`Response::later`]).
    pub bytes: Vec<u8>,
    /// Keep the connection for another request.
    pub keep_alive: bool,
}

impl Response {
    /// The answer comes later, through [`Session::answer_later`] (a
    /// server API read from Redis): nothing more is read meanwhile.
    pub fn later(keep_alive: bool) -> Response {
        Response {
            bytes: Vec::new(),
            keep_alive,
        }
    }

    pub fn is_later(&self) -> bool {
        self.bytes.is_empty()
    }
}

/// What to do with a request head.
pub enum HeadVerdict {
    /// Read a body of this many bytes, then call [`Handler::on_request`].
    ReadBody(usize),
    /// Answer now (the body, if any, is not read).
    Answer(Response),
}

/// What the handler made of a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Continue,
    /// Start the close handshake with this code and reason.
    Close(CloseCode, &'static str),
    /// The reply did not fit the outbound bound.
    SlowConsumer,
}

/// The application behind a session: routing, rooms, publishing.
pub trait Handler {
    /// A complete request head (not an upgrade).
    fn on_request_head(&mut self, req: &HttpRequest) -> HeadVerdict;
    /// A request whose body (of the length asked for) has arrived.
    fn on_request(&mut self, req: &HttpRequest, body: &[u8]) -> Response;
    /// A valid upgrade request: `Ok` with the `101` answer (carrying the
    /// `deflate` parameters the session negotiated, if any: see
    /// [`UpgradeRequest::accept_response_with`]), or a refusal.
    fn on_upgrade(
        &mut self,
        req: &UpgradeRequest,
        deflate: Option<&Negotiated>,
    ) -> Result<Vec<u8>, Response>;
    /// The client of a connection from a trusted proxy became known (its
    /// PROXY header, or a request's `X-Forwarded-For` / `Forwarded`; the
    /// proxy itself when neither names one): before the request is handed
    /// on. `Err`: the refusal to answer (per-IP limit), then close.
    fn on_client(&mut self, client: IpAddr) -> Result<(), Response> {
        let _ = client;
        Ok(())
    }
    /// A complete message; a reply may be queued on `out` within `limit`.
    fn on_message(
        &mut self,
        kind: MessageKind,
        data: &[u8],
        out: &mut OutboundQueue,
        limit: usize,
    ) -> Verdict;
}

/// How a finished connection ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// Everything was said and written: drain unread input, then close
    /// (closing with unread input would send RST over our last bytes).
    Graceful,
    /// A deadline passed or the peer vanished: close at once.
    Abort,
}

/// Outcome of delivering a broadcast to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    Queued,
    /// Not accepting data (closing, or not a WebSocket).
    Ignored,
    /// Over the outbound bound: call [`Session::slow_consumer`].
    Full,
}

enum Phase {
    Http(Box<HttpPhase>),
    Open(OpenPhase),
}

pub struct Session {
    ctx: Arc<SessionContext>,
    phase: Phase,
    out: OutboundQueue,
    /// The one deadline armed now (0: none). Activity does not move it:
    /// the heartbeat re-arms from `last_activity` when it fires.
    deadline: u64,
    /// Clock of the last byte received.
    last_activity: u64,
    /// Close the connection once `out` is written.
    finishing: bool,
    /// A deadline passed or the peer broke off: close at once.
    aborted: bool,
    /// Reading is paused by the worker (cross-worker backpressure): the
    /// heartbeat does not judge a peer we are not reading.
    paused: bool,
    /// A ping waits to be read until the previous pong is written.
    ping_stalled: bool,
    /// Heartbeat with protocol messages (`{}` each way, at a fixed
    /// interval) instead of WebSocket pings: the pub/sub SDKs cannot see
    /// WebSocket pings and time the absence of `{}`.
    app_heartbeat: bool,
}

impl Session {
    /// A new connection, in the HTTP phase, with the handshake deadline.
    pub fn new(ctx: Arc<SessionContext>, now: u64) -> Session {
        let deadline = now.saturating_add(ctx.config.handshake_timeout_ms);
        Session {
            ctx,
            phase: Phase::Http(Box::default()),
            out: OutboundQueue::new(),
            deadline,
            last_activity: now,
            finishing: false,
            aborted: false,
            paused: false,
            ping_stalled: false,
            app_heartbeat: false,
        }
    }

    /// A new connection from a trusted proxy `peer`, in the HTTP phase:
    /// with `header_timeout_ms`, it must first send a PROXY header within
    /// that time (and the whole handshake within `handshake_timeout`); its
    /// requests' forwarding headers name the client (see
    /// [`Handler::on_client`]).
    pub fn via_proxy(
        ctx: Arc<SessionContext>,
        now: u64,
        peer: IpAddr,
        header_timeout_ms: Option<u64>,
    ) -> Session {
        let mut s = Session::new(ctx, now);
        let header = header_timeout_ms.map(|t| {
            let handshake = s.deadline;
            s.deadline = now.saturating_add(t.max(1)).min(handshake);
            handshake
        });
        if let Phase::Http(h) = &mut s.phase {
            h.via = Some(Via { peer, header });
        }
        s
    }

    /// Whether the connection is an open (upgraded) WebSocket.
    pub fn is_websocket(&self) -> bool {
        matches!(self.phase, Phase::Open(_))
    }

    /// Whether input should be read now: not while an HTTP answer is being
    /// written (one request in flight), not once closing, not when paused.
    pub fn wants_read(&self) -> bool {
        if self.finishing || self.aborted || self.paused {
            return false;
        }
        match &self.phase {
            Phase::Http(h) => self.out.is_empty() && h.later.is_none(),
            Phase::Open(o) => {
                o.close.state() != CloseState::Closed
                    && !(self.ping_stalled && self.out.pong_pending())
            }
        }
    }

    /// Whether anything waits to be written.
    pub fn has_output(&self) -> bool {
        !self.out.is_empty()
    }

    /// Memory held by the outbound queue (charged against the bound).
    pub fn outbound_charged(&self) -> usize {
        self.out.charged()
    }

    /// An HTTP connection between requests, holding nothing.
    pub fn is_idle_http(&self) -> bool {
        match &self.phase {
            Phase::Http(h) => h.is_empty() && self.out.is_empty(),
            Phase::Open(_) => false,
        }
    }

    /// Feeds received bytes (`input` may be unmasked in place). Returns how
    /// many were consumed; the rest must be offered again later (after the
    /// answer to a request is written, or once more bytes arrived).
    pub fn handle_input(&mut self, input: &mut [u8], now: u64, h: &mut impl Handler) -> usize {
        if input.is_empty() || !self.wants_read() {
            return 0;
        }
        self.ping_stalled = false;
        self.last_activity = now;
        match &mut self.phase {
            Phase::Http(_) => self.http_input(input, now, h),
            Phase::Open(_) => self.open_input(input, now, h),
        }
    }

    /// The answer to the request answered [`Response::later`]; `false`
    /// if none was awaited. Reading resumes once it is written.
    pub fn answer_later(&mut self, bytes: Vec<u8>, now: u64) -> bool {
        let Phase::Http(h) = &mut self.phase else {
            return false;
        };
        let Some(keep_alive) = h.later.take() else {
            return false;
        };
        self.answer(Response { bytes, keep_alive }, now);
        true
    }

    /// The peer closed its side (EOF) or the socket failed.
    pub fn handle_eof(&mut self) {
        if !self.aborted && self.awaits_proxy_header() && !self.is_idle_http() {
            self.ctx
                .metrics
                .proxy_refusal(ProxyRefusal::Truncated)
                .inc();
        }
        self.aborted = true;
    }

    /// A PROXY header is still expected.
    fn awaits_proxy_header(&self) -> bool {
        matches!(&self.phase, Phase::Http(h) if h.awaits_proxy_header())
    }

    /// When the session next needs [`Session::handle_timeout`].
    pub fn poll_timeout(&self) -> Option<u64> {
        (self.deadline != 0).then_some(self.deadline)
    }

    /// Acts on the armed deadline if it is due.
    pub fn handle_timeout(&mut self, now: u64) {
        if self.deadline == 0 || now < self.deadline {
            return;
        }
        let fired = self.deadline;
        self.deadline = 0;
        let cfg = &self.ctx.config;
        if self.awaits_proxy_header() {
            self.ctx.metrics.proxy_refusal(ProxyRefusal::Timeout).inc();
        }
        let Phase::Open(o) = &mut self.phase else {
            // Handshake or keep-alive idle time, or an answer never written.
            self.aborted = true;
            return;
        };
        if self.finishing || o.close.state() != CloseState::Open {
            // A close never answered or never written.
            self.aborted = true;
            return;
        }
        if cfg.ping_interval_ms == 0 {
            return;
        }
        // At most once per heartbeat interval per connection.
        self.out.release_idle();
        o.release_memory();
        if self.paused {
            // We are not reading this peer: its pong may be waiting unread.
            o.awaiting_pong = false;
            self.deadline = now + cfg.ping_interval_ms;
            return;
        }
        if self.app_heartbeat {
            if o.awaiting_pong {
                let ping_sent = fired - cfg.pong_timeout_ms;
                if self.last_activity >= ping_sent {
                    o.awaiting_pong = false;
                    self.deadline = (ping_sent + cfg.ping_interval_ms).max(now + 1);
                } else {
                    self.ctx.metrics.ping_timeouts.inc();
                    self.close(CloseCode(3012), "no pong", now);
                }
            } else {
                self.out
                    .try_push_message(crate::protocol::MessageKind::Text, b"{}", usize::MAX);
                o.awaiting_pong = true;
                self.deadline = now + cfg.pong_timeout_ms;
            }
            return;
        }
        if o.awaiting_pong {
            let ping_sent = fired - cfg.pong_timeout_ms;
            // Activity since the ping counts only if the peer also read it:
            // unsolicited pongs from a peer that reads nothing do not.
            if self.last_activity >= ping_sent && !self.out.ping_pending() {
                o.awaiting_pong = false;
                self.deadline = self.last_activity + cfg.ping_interval_ms;
                if self.deadline <= now {
                    self.deadline = now + 1;
                }
            } else {
                self.ctx.metrics.ping_timeouts.inc();
                self.aborted = true;
            }
            return;
        }
        let due = self.last_activity + cfg.ping_interval_ms;
        if now >= due {
            self.out
                .push_control(ControlFrame::ping(&now.to_be_bytes()));
            o.awaiting_pong = true;
            self.deadline = now + cfg.pong_timeout_ms;
        } else {
            self.deadline = due;
        }
    }

    /// Whether the connection is over, and how to close it.
    pub fn poll_finish(&self) -> Option<Finish> {
        if self.aborted {
            Some(Finish::Abort)
        } else if self.finishing && self.out.is_empty() {
            Some(Finish::Graceful)
        } else {
            None
        }
    }

    /// Writes queued bytes to `w` until done or `WouldBlock`.
    pub fn write_to<W: Write>(&mut self, w: &mut W) -> io::Result<(Flush, usize)> {
        self.out.flush(w)
    }

    /// Lets go of the outbound ring when nothing is queued.
    pub fn release_idle(&mut self) {
        self.out.release_idle();
    }

    /// Pauses or resumes reading (cross-worker backpressure).
    /// Switches the heartbeat to protocol messages (see `app_heartbeat`).
    pub fn set_app_heartbeat(&mut self) {
        self.app_heartbeat = true;
    }

    pub fn set_paused(&mut self, paused: bool, now: u64) {
        if self.paused && !paused {
            // The time we did not read does not count against the peer.
            self.last_activity = self.last_activity.max(now);
        }
        self.paused = paused;
    }

    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Queues a broadcast (one or more frames, shared by reference).
    pub fn send_shared(&mut self, frame: &SharedFrame) -> Delivery {
        self.send(|out, limit| out.try_push_shared(frame, limit))
    }

    /// Queues a broadcast batch: the plain frames, or for a connection
    /// that negotiated permessage-deflate the compressed re-encoding,
    /// made once per batch and kept in `compressed` for the next
    /// recipients (`Some(None)`: it could not be made; plain is sent).
    /// At most two encodings per batch.
    pub fn send_batch(
        &mut self,
        plain: &SharedFrame,
        compressed: &mut Option<Option<SharedFrame>>,
    ) -> Delivery {
        let settings = match (&self.phase, self.ctx.config.deflate) {
            (Phase::Open(o), Some(s)) if o.deflates() => s,
            _ => return self.send_shared(plain),
        };
        let z = compressed.get_or_insert_with(|| open::compress_batch(plain, &self.ctx, &settings));
        match z {
            Some(z) => {
                let z = z.clone();
                self.send_shared(&z)
            }
            None => self.send_shared(plain),
        }
    }

    /// Queues a copy of the encoded frames `parts` yields.
    pub fn send_copy<'a>(&mut self, parts: impl Iterator<Item = &'a [u8]> + Clone) -> Delivery {
        self.send(|out, limit| out.try_push_each(parts, limit))
    }

    /// Hands data to the outbound queue when the session accepts data.
    fn send(&mut self, push: impl FnOnce(&mut OutboundQueue, usize) -> bool) -> Delivery {
        if !self.accepts_data() {
            Delivery::Ignored
        } else if push(&mut self.out, self.ctx.config.max_outbound_bytes) {
            Delivery::Queued
        } else {
            Delivery::Full
        }
    }

    fn accepts_data(&self) -> bool {
        match &self.phase {
            Phase::Open(o) => o.close.can_send_data() && !self.finishing && !self.aborted,
            Phase::Http(_) => false,
        }
    }

    /// The outbound bound was hit while `missed` messages were delivered.
    pub fn slow_consumer(&mut self, missed: u64, now: u64) {
        if self.app_heartbeat {
            // A pub/sub client never loses publications silently: it is
            // disconnected with Centrifugo's "slow" (3008), reconnects and
            // recovers, whatever `slow_consumer` says for raw members.
            if self.accepts_data() {
                self.out.discard_unstarted();
                self.ctx.metrics.slow_consumer_closes.inc();
                self.close(CloseCode(3008), "slow", now);
            }
            return;
        }
        match self.ctx.config.slow_consumer {
            SlowConsumerPolicy::Drop => self.ctx.metrics.drops.add(missed),
            SlowConsumerPolicy::Close => {
                if !self.accepts_data() {
                    return;
                }
                // Free the backlog now; the close frame goes out right
                // after the frame being written, if any.
                self.out.discard_unstarted();
                self.ctx.metrics.slow_consumer_closes.inc();
                self.close(CloseCode::POLICY_VIOLATION, "slow consumer", now);
            }
        }
    }

    /// Starts the close handshake (shutdown, policy) and waits up to
    /// `close_timeout` for the peer's answer.
    pub fn close(&mut self, code: CloseCode, reason: &str, now: u64) {
        let Phase::Open(o) = &mut self.phase else {
            return;
        };
        if let CloseAction::SendCloseAndWait(c) = o.close.initiate(code) {
            self.out.push_control(ControlFrame::close(c, reason));
            self.ctx.metrics.close_sent[close_code_index(c.0)].inc();
            self.deadline = now + self.ctx.config.close_timeout_ms;
        }
    }

    /// Queues an HTTP answer; without keep-alive the connection ends once
    /// it is written (or after `close_timeout`).
    fn answer(&mut self, response: Response, now: u64) {
        self.out.push_http(response.bytes);
        if response.keep_alive {
            self.deadline = now + self.ctx.config.handshake_timeout_ms;
        } else {
            self.finish_after_flush(now);
        }
    }

    /// Ends the connection once the queue is written.
    fn finish_after_flush(&mut self, now: u64) {
        self.finishing = true;
        self.deadline = now + self.ctx.config.close_timeout_ms;
    }
}
