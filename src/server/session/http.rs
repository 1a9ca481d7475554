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
use super::{HeadVerdict, Phase, Response, Session, SessionContext};
use crate::metrics::{ForwardedSource, ProxyRefusal};
use crate::protocol::forwarded::{canonical, forwarded_client, Source};
use crate::protocol::proxy::{parse_proxy_header, ProxyParse, MAX_HEADER_BYTES};
use crate::protocol::response::http_response;
use crate::protocol::{parse_request, HttpRequest, ParsedRequest, RejectReason};
use std::net::IpAddr;

/// A request received in pieces.
#[derive(Default)]
pub struct HttpPhase {
    /// Bytes of the one request being received (head, then body), or of
    /// the PROXY header.
    buf: Vec<u8>,
    /// The head, once complete, while its body arrives.
    waiting: Option<Box<(HttpRequest, usize)>>,
    /// The connection comes from a trusted proxy.
    pub(super) via: Option<Via>,
    /// A request's answer comes later ([`Response::later`]): with
    /// keep-alive or not. Nothing is read meanwhile.
    pub(super) later: Option<bool>,
}

/// A connection from a trusted proxy, while it is in the HTTP phase.
#[derive(Clone, Copy, Debug)]
pub struct Via {
    /// Who the connection comes from: the TCP peer (a trusted proxy), or
    /// once a PROXY header named one, its source.
    pub peer: IpAddr,
    /// A PROXY header is expected; the handshake deadline to arm once it
    /// is in.
    pub header: Option<u64>,
}

/// Past this capacity, the request buffer is released after each request.
const KEEP_CAPACITY: usize = 4096;

impl HttpPhase {
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty() && self.later.is_none()
    }

    pub fn awaits_proxy_header(&self) -> bool {
        self.via.is_some_and(|v| v.header.is_some())
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
        let via = http.via;
        if let Some(Via {
            peer,
            header: Some(handshake_deadline),
        }) = via
        {
            return self.proxy_input(input, now, h, peer, handshake_deadline);
        }
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
                    let xff = req.x_forwarded_for.iter().map(String::as_str);
                    let fwd = req.forwarded.iter().map(String::as_str);
                    if let Some(client) = client_of(&self.ctx, via, xff, fwd) {
                        if let Err(refusal) = h.on_client(client) {
                            self.answer(refusal, now);
                            return input.len();
                        }
                    }
                    let deflate = self
                        .ctx
                        .config
                        .deflate
                        .and_then(|s| req.negotiate_deflate(&s))
                        // Sessions keep no inflater of their own (see
                        // `OpenPhase::deflate`): only answers that stop
                        // the client's context takeover are used.
                        .filter(|n| n.client_no_context_takeover);
                    return match h.on_upgrade(&req, deflate.as_ref()) {
                        Ok(accept) => {
                            self.open(accept, deflate, now);
                            used
                        }
                        Err(refusal) => {
                            self.answer(refusal, now);
                            input.len()
                        }
                    };
                }
                Ok(ParsedRequest::Http(req)) => {
                    let named = |name: &'static str| {
                        req.headers
                            .iter()
                            .filter(move |(n, _)| n == name)
                            .map(|(_, v)| v.as_str())
                    };
                    let client =
                        client_of(&self.ctx, via, named("x-forwarded-for"), named("forwarded"));
                    if let Some(client) = client {
                        if let Err(refusal) = h.on_client(client) {
                            return self.answered(refusal, req.head_len - held, input.len(), now);
                        }
                    }
                    match h.on_request_head(&req) {
                        HeadVerdict::ReadBody(len) => (req, len),
                        HeadVerdict::Answer(response) => {
                            return self.answered(response, req.head_len - held, input.len(), now);
                        }
                    }
                }
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

    /// The PROXY header, before the first request: held here when it
    /// arrives in pieces (at most [`MAX_HEADER_BYTES`]), refused with 400
    /// when invalid; once complete, the handshake deadline is armed and the
    /// client is known.
    fn proxy_input(
        &mut self,
        input: &[u8],
        now: u64,
        h: &mut impl super::Handler,
        peer: IpAddr,
        handshake_deadline: u64,
    ) -> usize {
        let Phase::Http(http) = &mut self.phase else {
            return 0;
        };
        let held = http.buf.len();
        let parsed = if held == 0 {
            parse_proxy_header(input)
        } else {
            let n = input.len().min(MAX_HEADER_BYTES.saturating_sub(held));
            http.buf.extend_from_slice(&input[..n]);
            parse_proxy_header(&http.buf)
        };
        match parsed {
            Ok(ProxyParse::Partial) => {
                if held == 0 {
                    // A partial header is shorter than the longest one.
                    let n = input.len().min(MAX_HEADER_BYTES);
                    http.buf.extend_from_slice(&input[..n]);
                    n
                } else {
                    http.buf.len() - held
                }
            }
            Err(_) => {
                http.reset();
                http.via = None;
                self.ctx
                    .metrics
                    .proxy_refusal(ProxyRefusal::InvalidHeader)
                    .inc();
                let body = b"invalid PROXY protocol header\n";
                let bytes = http_response(400, "", "text/plain; charset=utf-8", body, false);
                self.answer(
                    Response {
                        bytes,
                        keep_alive: false,
                    },
                    now,
                );
                input.len()
            }
            Ok(ProxyParse::Complete(header)) => {
                http.reset();
                let source = header.source.map(|a| canonical(a.ip()));
                let client = source.unwrap_or(peer);
                http.via = Some(Via {
                    peer: client,
                    header: None,
                });
                self.deadline = handshake_deadline;
                if source.is_some() {
                    self.ctx
                        .metrics
                        .forwarded(ForwardedSource::ProxyProtocol)
                        .inc();
                }
                // A source that is itself a trusted proxy is not the client:
                // the request's forwarding headers name it (`client_of`), so
                // it is not counted against a per-IP limit in between.
                if !self.ctx.trusted.contains(client) {
                    if let Err(refusal) = h.on_client(client) {
                        self.answer(refusal, now);
                        return input.len();
                    }
                }
                header.len.saturating_sub(held)
            }
        }
    }

    /// Queues the answer to the request that used `used` bytes of the
    /// input. Without keep-alive nothing more is read: all is consumed.
    fn answered(&mut self, response: Response, used: usize, all: usize, now: u64) -> usize {
        if let Phase::Http(http) = &mut self.phase {
            http.reset();
        }
        let keep = response.keep_alive;
        if response.is_later() {
            if let Phase::Http(http) = &mut self.phase {
                http.later = Some(keep);
            }
            // The handshake deadline stays armed: an answer that never
            // comes ends the connection then.
            self.deadline = now + self.ctx.config.handshake_timeout_ms;
            return if keep { used } else { all };
        }
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
    fn open(
        &mut self,
        accept: Vec<u8>,
        deflate: Option<crate::protocol::deflate::Negotiated>,
        now: u64,
    ) {
        self.out.push_http(accept);
        let open = OpenPhase::new(&self.ctx.config, deflate, now);
        if let (true, Some(s)) = (open.deflates(), self.ctx.config.deflate) {
            // Replies are compressed per message with the worker's deflater.
            super::open::register(&self.ctx, &s);
            self.out.set_deflate(true);
        }
        self.phase = Phase::Open(open);
        let interval = self.ctx.config.ping_interval_ms;
        self.deadline = if interval == 0 { 0 } else { now + interval };
    }
}

/// The client of a request on a connection from `via`: `None` when the
/// connection is not from a trusted proxy (its client is already counted),
/// else the address the forwarding headers name, or the peer itself.
fn client_of<'a>(
    ctx: &SessionContext,
    via: Option<Via>,
    xff: impl Iterator<Item = &'a str> + Clone,
    forwarded: impl Iterator<Item = &'a str> + Clone,
) -> Option<IpAddr> {
    let via = via?;
    if !ctx.trusted.contains(via.peer) {
        return None;
    }
    match forwarded_client(xff, forwarded, &ctx.trusted) {
        Some((ip, source)) => {
            let source = match source {
                Source::XForwardedFor => ForwardedSource::XForwardedFor,
                Source::Forwarded => ForwardedSource::Forwarded,
            };
            ctx.metrics.forwarded(source).inc();
            Some(ip)
        }
        None => Some(via.peer),
    }
}
