//! The HTTP phase: one request at a time, until an upgrade.
//!
//! A request that arrives whole in one read is parsed where it lies (the
//! caller's read buffer); only a request that arrives in pieces is copied,
//! into a buffer that holds that one request and nothing after it: bytes
//! past the request are left unconsumed for the caller to offer again once
//! the answer is written. So the buffer never exceeds one request head plus
//! its body (`max_request_head_bytes` + `max_message_bytes`), pipelined
//! requests wait in the socket (and the caller's read budget) rather than
//! in memory, and no request costs a move of the ones behind it.

use super::open::OpenPhase;
use super::{HeadVerdict, Phase, Response, Session};
use crate::protocol::{parse_request, HttpRequest, ParsedRequest, RejectReason};

/// A request received in pieces.
#[derive(Default)]
pub struct HttpPhase {
    /// Bytes of the one request being received (head, then body).
    buf: Vec<u8>,
    /// The head, once complete, while its body arrives.
    waiting: Option<Box<(HttpRequest, usize)>>,
}

/// Past this capacity, the request buffer is released after each request.
const KEEP_CAPACITY: usize = 4096;

impl HttpPhase {
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn reset(&mut self) {
        self.buf.clear();
        self.waiting = None;
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        }
    }
}

impl Session {
    pub(super) fn http_input(
        &mut self,
        input: &mut [u8],
        now: u64,
        h: &mut impl super::Handler,
    ) -> usize {
        let cfg = &self.ctx.config;
        let cap = cfg.head.max_head_bytes + 4 + cfg.max_message_bytes;
        let Phase::Http(http) = &mut self.phase else {
            return 0;
        };
        // Bytes held from earlier reads, and how many of `input` join them.
        let held = http.buf.len();
        let taken = if held > 0 {
            let n = input.len().min(cap.saturating_sub(held));
            http.buf.extend_from_slice(&input[..n]);
            n
        } else {
            0
        };
        let data: &[u8] = if held > 0 { &http.buf } else { input };
        let (req, body_len) = match http.waiting.take() {
            Some(w) => *w,
            None => match parse_request(data, &cfg.head) {
                Ok(ParsedRequest::Partial) => return self.keep_partial(input, held, taken, cap),
                Err(reason) => {
                    self.reject(reason, now);
                    return input.len();
                }
                Ok(ParsedRequest::Upgrade(req)) => {
                    let used = req.head_len - held;
                    return match h.on_upgrade(&req) {
                        Ok(accept) => {
                            self.open(accept, now);
                            used
                        }
                        Err(refusal) => {
                            self.answer(refusal, now);
                            input.len()
                        }
                    };
                }
                Ok(ParsedRequest::Http(req)) => match h.on_request_head(&req) {
                    HeadVerdict::ReadBody(len) => (req, len),
                    HeadVerdict::Answer(response) => {
                        return self.answered(response, req.head_len - held, input.len(), now);
                    }
                },
            },
        };
        let needed = req.head_len + body_len;
        if data.len() < needed {
            http.waiting = Some(Box::new((req, body_len)));
            return self.keep_partial(input, held, taken, cap);
        }
        let response = h.on_request(&req, &data[req.head_len..needed]);
        self.answered(response, needed - held, input.len(), now)
    }

    /// Queues the answer to the request that used `used` bytes of the
    /// input. Without keep-alive nothing more is read: all is consumed.
    fn answered(&mut self, response: Response, used: usize, all: usize, now: u64) -> usize {
        if let Phase::Http(http) = &mut self.phase {
            http.reset();
        }
        let keep = response.keep_alive;
        self.answer(response, now);
        if keep {
            used
        } else {
            all
        }
    }

    /// Keeps an incomplete request: what `input` adds is held in the
    /// request buffer (already appended when the buffer had bytes).
    fn keep_partial(&mut self, input: &[u8], held: usize, taken: usize, cap: usize) -> usize {
        let Phase::Http(http) = &mut self.phase else {
            return 0;
        };
        if held == 0 {
            let take = input.len().min(cap);
            http.buf.extend_from_slice(&input[..take]);
            return take;
        }
        if http.buf.len() >= cap {
            // Heads over the limit are refused by the parser and bodies
            // are bounded, so this only guards the invariant.
            self.reject(RejectReason::HeadTooLarge, self.last_activity);
            return input.len();
        }
        taken
    }

    /// Refuses a request the parser rejected and ends the connection.
    fn reject(&mut self, reason: RejectReason, now: u64) {
        self.ctx.metrics.rejection(reason).inc();
        self.answer(
            Response {
                bytes: reason.response(),
                keep_alive: false,
            },
            now,
        );
    }

    /// Completes the upgrade: the `101` is queued and the WebSocket phase
    /// begins, with the heartbeat armed.
    fn open(&mut self, accept: Vec<u8>, now: u64) {
        self.out.push_http(accept);
        self.phase = Phase::Open(OpenPhase::new(&self.ctx.config, now));
        let interval = self.ctx.config.ping_interval_ms;
        self.deadline = if interval == 0 { 0 } else { now + interval };
    }
}
