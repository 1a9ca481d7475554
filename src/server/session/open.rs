//! The open WebSocket phase: frames in, messages to the handler, control
//! frames answered, the close handshake.

use super::super::rate_limit::RateLimiter;
use super::{Phase, Session, SessionConfig, Verdict};
use crate::config::RateLimitPolicy;
use crate::metrics::close_code_index;
use crate::protocol::deflate::{
    compress_frames, compress_message, CompressStats, DeflateSettings, Deflater, Inflater,
    Negotiated,
};
use crate::protocol::SharedFrame;
use crate::protocol::{
    CloseAction, CloseCode, CloseHandshake, ControlFrame, Event, Inflate, MessageAssembler,
    MessageKind, ProtocolError,
};
use std::cell::RefCell;
use std::sync::Arc;

thread_local! {
    /// The worker's inflater (a worker is a thread): serves every
    /// connection whose client does not take its context over, one
    /// single-frame message at a time (the assembler gives a message
    /// compressed across fragments an inflater of its own).
    static SHARED_INFLATER: RefCell<Inflater> = RefCell::new(Inflater::new());
    /// The worker's deflater, made on first use, and the context of the
    /// worker's sessions (its settings and counters): every session of a
    /// worker shares one [`SessionContext`](super::SessionContext), so the
    /// last one that opened with compression stands for all of them.
    static SHARED_DEFLATER: RefCell<Option<WorkerDeflater>> = const { RefCell::new(None) };
}

struct WorkerDeflater {
    settings: DeflateSettings,
    deflater: Deflater,
    ctx: Arc<super::SessionContext>,
}

/// Runs `f` with the worker's deflater for `ctx`'s settings (made or
/// remade when they differ), then adds what it did to `ctx`'s counters.
fn with_deflater<R>(
    ctx: &Arc<super::SessionContext>,
    s: &DeflateSettings,
    f: impl FnOnce(&mut Deflater, &mut CompressStats) -> R,
) -> R {
    SHARED_DEFLATER.with(|cell| {
        let mut cell = cell.borrow_mut();
        let w = match &mut *cell {
            Some(w) if w.settings == *s => {
                if !Arc::ptr_eq(&w.ctx, ctx) {
                    w.ctx = ctx.clone();
                }
                w
            }
            slot => slot.insert(WorkerDeflater {
                settings: *s,
                deflater: Deflater::new(s.level, s.server_window_bits),
                ctx: ctx.clone(),
            }),
        };
        let mut stats = CompressStats::default();
        let r = f(&mut w.deflater, &mut stats);
        count(&ctx.metrics.deflate, &stats);
        r
    })
}

fn count(m: &crate::metrics::DeflateCounters, st: &CompressStats) {
    if st.messages > 0 {
        m.messages_out.add(st.messages);
        m.bytes_before.add(st.before);
        m.bytes_after.add(st.after);
    }
    if st.incompressible > 0 {
        m.incompressible.add(st.incompressible);
    }
}

/// The compressed re-encoding of a broadcast batch (made once per batch
/// with the worker's deflater); `None` if the bytes are not whole frames.
pub(super) fn compress_batch(
    plain: &SharedFrame,
    ctx: &Arc<super::SessionContext>,
    s: &DeflateSettings,
) -> Option<SharedFrame> {
    with_deflater(ctx, s, |d, st| {
        compress_frames(plain.as_bytes(), d, s.min_bytes, st).map(SharedFrame::from_vec)
    })
}

/// Registers `ctx` as the worker's deflate context, so that replies
/// queued by the handler ([`compress_reply`]) are compressed with its
/// settings and counted in its metrics.
pub(super) fn register(ctx: &Arc<super::SessionContext>, s: &DeflateSettings) {
    with_deflater(ctx, s, |_, _| ());
}

/// A reply (echo, protocol reply) for a connection that negotiated
/// permessage-deflate: the whole compressed frame, or `None` to send it
/// plain (shorter than `compression_min_bytes`, would not shrink, or no
/// compressing session opened on this thread). Called by the outbound
/// queue of such a connection; per message, no context takeover, with the
/// worker's deflater.
pub(crate) fn compress_reply(kind: MessageKind, data: &[u8]) -> Option<Vec<u8>> {
    SHARED_DEFLATER.with(|cell| {
        let mut cell = cell.borrow_mut();
        let w = cell.as_mut()?;
        let mut st = CompressStats::default();
        let r = compress_message(
            kind.opcode(),
            data,
            &mut w.deflater,
            w.settings.min_bytes,
            &mut st,
        );
        count(&w.ctx.metrics.deflate, &st);
        r
    })
}

/// State of an upgraded connection.
pub struct OpenPhase {
    pub(super) assembler: MessageAssembler,
    pub(super) close: CloseHandshake,
    /// Boxed: most deployments run without rate limits.
    limiter: Option<Box<RateLimiter>>,
    /// A heartbeat ping is unanswered; it was sent `pong_timeout` before
    /// the armed deadline (so the time need not be stored).
    pub(super) awaiting_pong: bool,
    /// permessage-deflate negotiated (always with
    /// `client_no_context_takeover`: messages inflate with the worker's
    /// inflater, so a connection holds no inflate state between messages).
    /// A flag, not a box: it fits in padding (`connection_stays_small`).
    pub(super) deflate: bool,
}

impl OpenPhase {
    pub(super) fn new(cfg: &SessionConfig, deflate: Option<Negotiated>, now: u64) -> OpenPhase {
        OpenPhase {
            assembler: MessageAssembler::new(cfg.max_message_bytes),
            close: CloseHandshake::new(),
            limiter: cfg
                .rate
                .enabled()
                .then(|| Box::new(RateLimiter::new(&cfg.rate, now))),
            awaiting_pong: false,
            deflate: deflate.is_some_and(|n| n.client_no_context_takeover),
        }
    }

    /// Whether permessage-deflate was negotiated.
    pub(super) fn deflates(&self) -> bool {
        self.deflate
    }

    /// Lets go of a finished fragmented message's buffer.
    pub(super) fn release_memory(&mut self) {
        self.assembler.release_memory();
    }
}

/// What one frame asks of the session after the handler saw it.
enum After {
    Continue,
    Close(CloseCode, &'static str),
    SlowConsumer,
    /// Nothing more is read: the close handshake ended or the peer failed.
    Stop,
}

impl Session {
    /// Decodes and handles every complete frame in `input`; returns the
    /// bytes consumed (a partial frame stays with the caller).
    pub(super) fn open_input(
        &mut self,
        input: &mut [u8],
        now: u64,
        h: &mut impl super::Handler,
    ) -> usize {
        let mut pos = 0;
        while pos < input.len() {
            if self.out.pong_pending() && self.next_is_ping(&input[pos..]) {
                // One pong in flight: read the next ping once it is written.
                self.ping_stalled = true;
                break;
            }
            let decoder = match &self.phase {
                Phase::Open(o) if o.deflate => &self.ctx.deflate_decoder,
                _ => &self.ctx.decoder,
            };
            let frame = match decoder.decode(&mut input[pos..]) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                Err(e) => {
                    self.fail(e, now);
                    return input.len();
                }
            };
            let payload = pos + frame.payload.start..pos + frame.payload.end;
            pos += frame.consumed;
            let after = self.on_frame(&frame.header, &input[payload], now, h);
            match after {
                After::Continue => {}
                After::Close(code, reason) => self.close(code, reason, now),
                After::SlowConsumer => self.slow_consumer(1, now),
                After::Stop => return input.len(),
            }
        }
        if let Phase::Open(o) = &mut self.phase {
            if !o.assembler.in_message() {
                o.assembler.release_memory();
            }
        }
        pos
    }

    fn on_frame(
        &mut self,
        header: &crate::protocol::FrameHeader,
        payload: &[u8],
        now: u64,
        h: &mut impl super::Handler,
    ) -> After {
        let Session {
            ctx, phase, out, ..
        } = self;
        let Phase::Open(o) = phase else {
            return After::Stop;
        };
        let compressed = o.deflate && (header.rsv & 0x4 != 0 || o.assembler.inflating());
        let result = match o.deflate {
            false => o.assembler.on_frame(header, payload),
            true => SHARED_INFLATER.with(|shared| {
                let mut shared = shared.borrow_mut();
                o.assembler.on_frame_with(
                    header,
                    payload,
                    Some(Inflate {
                        inflater: &mut shared,
                        context_takeover: false,
                    }),
                )
            }),
        };
        let event = match result {
            Ok(event) => event,
            Err(e) => {
                if compressed
                    && matches!(
                        e,
                        ProtocolError::BadCompressedData | ProtocolError::MessageTooLarge
                    )
                {
                    ctx.metrics.deflate.inflate_failures.inc();
                }
                self.fail(e, now);
                return After::Stop;
            }
        };
        match event {
            Event::Message { kind, data } => {
                if !o.close.can_send_data() {
                    // We are closing: data from the peer is discarded.
                    return After::Continue;
                }
                ctx.metrics.messages_in.inc();
                if compressed {
                    ctx.metrics.deflate.messages_in.inc();
                }
                if let Some(limiter) = o.limiter.as_mut() {
                    if !limiter.allow(&ctx.config.rate, data.len(), now) {
                        ctx.metrics.rate_limited.inc();
                        return match ctx.config.rate_policy {
                            RateLimitPolicy::Close => {
                                After::Close(CloseCode::POLICY_VIOLATION, "rate limit")
                            }
                            RateLimitPolicy::Drop => {
                                ctx.metrics.drops.inc();
                                After::Continue
                            }
                        };
                    }
                }
                match h.on_message(kind, data, out, ctx.config.max_outbound_bytes) {
                    Verdict::Continue => After::Continue,
                    Verdict::Close(code, reason) => After::Close(code, reason),
                    Verdict::SlowConsumer => After::SlowConsumer,
                }
            }
            Event::Fragment | Event::Pong(_) => After::Continue,
            Event::Ping(payload) => {
                if o.close.can_send_data() {
                    out.push_control(ControlFrame::pong(payload));
                }
                After::Continue
            }
            Event::Close { code, .. } => {
                let received = code.unwrap_or(CloseCode::NO_STATUS);
                ctx.metrics.close_received[close_code_index(received.0)].inc();
                let reply = match o.close.on_peer_close(code) {
                    CloseAction::SendCloseAndShutdown(c) => Some((ControlFrame::close(c, ""), c)),
                    CloseAction::SendEmptyCloseAndShutdown => {
                        Some((ControlFrame::close_empty(), CloseCode::NO_STATUS))
                    }
                    _ => None,
                };
                if let Some((frame, c)) = reply {
                    out.push_control(frame);
                    ctx.metrics.close_sent[close_code_index(c.0)].inc();
                }
                self.finish_after_flush(now);
                After::Stop
            }
        }
    }

    /// Whether the frame starting `input` is a complete-header ping (looked
    /// at without decoding: decoding unmasks the payload in place).
    fn next_is_ping(&self, input: &[u8]) -> bool {
        matches!(
            self.ctx.decoder.decode_header(input),
            Ok(Some(h)) if h.opcode == crate::protocol::OpCode::Ping
        )
    }

    /// Fails the connection for a protocol error: close frame, then TCP.
    fn fail(&mut self, error: ProtocolError, now: u64) {
        if let Phase::Open(o) = &mut self.phase {
            if let CloseAction::SendCloseAndShutdown(c) = o.close.fail(error.close_code()) {
                self.out
                    .push_control(ControlFrame::close(c, error.reason()));
                self.ctx.metrics.close_sent[close_code_index(c.0)].inc();
            }
            // Nothing more will be read: drop a half-gathered message.
            o.assembler = MessageAssembler::new(0);
        }
        self.finish_after_flush(now);
    }
}
