//! A real `Session` driven end to end on a virtual clock: HTTP requests
//! (keep-alive, pipelined, `POST /publish/{room}` with bodies), the
//! upgrade, the open WebSocket phase (echo, control frames, rate limits,
//! the close handshake), deadlines, broadcasts, backpressure and partial
//! writes.
//!
//! Input: 4 bytes of configuration, then operations until the input ends.
//! - byte 0: `max_message_bytes` (1 .. 70000) and `max_frame_bytes`;
//! - byte 1: `max_outbound_bytes` (0 .. 1 MiB), the slow-consumer and
//!   rate-limit policies, which rate limits are on;
//! - byte 2: request head limit (64 .. 1072 bytes) and header count;
//! - byte 3: heartbeat interval, pong / handshake / close timeouts, and
//!   whether the relay is shutting down.
//!
//! Operations (low nibble of the op byte; see `Op`): feed N raw bytes, feed
//! a canned request, feed a masked client frame built from the input,
//! offer the buffered bytes again, advance the clock (firing the timer when
//! due), write out with a writer that takes K bytes then `WouldBlock`,
//! deliver a broadcast with `send_shared`, `slow_consumer`, `close`,
//! `set_paused`, EOF, `release_idle`.
//!
//! The handler mirrors `server::router`: `/healthz`, `/metrics`, 404/405,
//! 426 for WebSocket paths without upgrade, `POST /publish/{room}` through
//! `check_publish` (`HeadVerdict::ReadBody`) with the publish rules
//! (UTF-8 for text bodies, 202, 503 for the room `busy`), upgrades to
//! `/echo` (messages echoed with `try_push_message`, `SlowConsumer` when they
//! do not fit), to `/rooms/{name}?role=sub` (any message closes 1008), the
//! rest refused; origins and subprotocols negotiated. Every request head
//! also goes through the pure checks of the HTTP helpers (`check_publish`,
//! `content_length`, `keep_alive`, `publish_kind`, `ws_route`,
//! `origin_allowed`), as the former `http_publish` target did.
//!
//! Invariants (a panic is a bug):
//! - `handle_input` consumes at most what it is offered, and leaves the
//!   bytes it did not consume untouched (they are offered again);
//! - the outbound charge stays within `max(max_outbound_bytes, one
//!   message) + control allowance` (see `bound`);
//! - after `handle_timeout(now)` the next deadline, if any, is after `now`
//!   (unless the session finished);
//! - once `poll_finish()` is `Some` it stays `Some`, `wants_read()` is
//!   false and no input is taken;
//! - everything written parses as HTTP responses (status line, headers,
//!   `Content-Length` body; nothing after `Connection: close`), then after
//!   a `101` (which must come before any frame) as
//!   well-formed server frames: unmasked, FIN, no RSV, no
//!   continuation, text and close reasons UTF-8, control payloads ≤ 125,
//!   valid close codes, and nothing after the close frame;
//! - bodies reach `on_request` with the length `check_publish` allowed,
//!   messages reach `on_message` within `max_message_bytes` (text UTF-8);
//! - the handler sees at most one accepted upgrade.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::io::{self, IoSlice, Write};
use std::sync::Arc;
use wsrelay::config::{RateLimitPolicy, SlowConsumerPolicy};
use wsrelay::metrics::WorkerMetrics;
use wsrelay::protocol::deflate::{DeflateSettings, Negotiated};
use wsrelay::protocol::response::http_response;
use wsrelay::protocol::{
    encode_client_frame, encode_header, CloseCode, FrameDecoder, HandshakeLimits, HttpRequest,
    MessageKind, OpCode, RejectReason, Role, SharedFrame, UpgradeRequest,
};
use wsrelay::server::directory::valid_room_name;
use wsrelay::server::http::{
    self, check_publish, is_ws_path, origin_allowed, publish_kind, wants_keep_alive, ws_route,
    MemberRole, WsRoute,
};
use wsrelay::server::outbound::{OutboundQueue, ENTRY_COST};
use wsrelay::server::rate_limit::RateLimits;
use wsrelay::server::session::{
    Handler, HeadVerdict, Response, Session, SessionConfig, SessionContext, Verdict,
};

const TOKEN: &str = "token";
const MAX_ROOM: usize = 128;

const MESSAGE_LIMITS: [usize; 10] = [1, 16, 125, 126, 300, 1000, 4096, 9000, 20_000, 70_000];
const OUTBOUND_LIMITS: [usize; 8] = [0, 64, 256, 1000, 4096, 10_000, 20_000, 1 << 20];
const INTERVALS: [u64; 3] = [0, 1000, 30_000];
const PONG_TIMEOUTS: [u64; 3] = [1, 500, 10_000];
const HANDSHAKE_TIMEOUTS: [u64; 3] = [1, 100, 10_000];
const CLOSE_TIMEOUTS: [u64; 3] = [0, 100, 5000];
const STEPS: [u64; 16] = [
    0, 1, 2, 10, 50, 99, 100, 499, 500, 999, 1000, 5000, 10_000, 30_000, 40_000, 100_000,
];
const WRITE_BUDGETS: [usize; 8] = [0, 1, 2, 7, 64, 500, 4096, usize::MAX];

const UPGRADE_ECHO: &[u8] = b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";
const CANNED: [&[u8]; 12] = [
    UPGRADE_ECHO,
    b"GET /echo?x=1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://app.example/\r\nSec-WebSocket-Protocol: chat, v2\r\n\r\n",
    b"GET /rooms/r1?role=sub HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    b"GET /rooms/r1 HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nOrigin: https://evil.example\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\nHEAD /nothing HTTP/1.1\r\nHost: x\r\n\r\n",
    b"POST /publish/r1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer token\r\nContent-Type: text/plain\r\nContent-Length: 5\r\n\r\nhello",
    b"POST /publish/r1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer token\r\nContent-Length: 3\r\n\r\n\xff\x00\x01POST /publish/busy HTTP/1.1\r\nAuthorization: Bearer token\r\nContent-Length: 0\r\n\r\n",
    b"POST /publish/r1 HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer nope\r\nContent-Length: 1\r\n\r\nx",
    b"GET /x HTTP/1.0\r\n\r\n",
    b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab",
    b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n",
];
const CLOSE_CODES: [u16; 8] = [1000, 1001, 1002, 1008, 1009, 1011, 4000, 1005];

// ----- the handler ----------------------------------------------------------

struct Relay {
    max_message: usize,
    shutting_down: bool,
    subprotocols: Vec<String>,
    allowed_origins: Vec<String>,
    /// Accepted upgrade: `Some(true)` echo, `Some(false)` read-only member.
    attachment: Option<bool>,
    /// Body length `check_publish` allowed for the request in flight.
    expected_body: Option<usize>,
}

fn answer(bytes: Vec<u8>, keep_alive: bool) -> Response {
    Response { bytes, keep_alive }
}

impl Relay {
    fn serve(&mut self, req: &HttpRequest) -> Response {
        let has_body = req.content_length().map_or(true, |n| n.unwrap_or(0) > 0)
            || req.header("transfer-encoding").is_some();
        let keep_alive = wants_keep_alive(req) && !self.shutting_down && !has_body;
        match (req.method.as_str(), req.path.as_str()) {
            ("GET" | "HEAD", "/healthz") => {
                if self.shutting_down {
                    answer(http::text(503, "shutting down\n", false), false)
                } else {
                    answer(http::text(200, "ok\n", keep_alive), keep_alive)
                }
            }
            ("GET" | "HEAD", "/metrics") => {
                let body = "wsrelay_connections 1\n".repeat(20);
                let bytes = http_response(200, "", "text/plain", body.as_bytes(), keep_alive);
                answer(bytes, keep_alive)
            }
            (_, "/healthz") | (_, "/metrics") => {
                let bytes = http_response(
                    405,
                    "Allow: GET, HEAD\r\n",
                    "text/plain; charset=utf-8",
                    b"method not allowed\n",
                    keep_alive,
                );
                answer(bytes, keep_alive)
            }
            (_, path) if is_ws_path(path) => {
                answer(RejectReason::UpgradeRequired.response(), false)
            }
            _ => answer(http::text(404, "not found\n", keep_alive), keep_alive),
        }
    }
}

impl Handler for Relay {
    fn on_request_head(&mut self, req: &HttpRequest) -> HeadVerdict {
        assert!(self.attachment.is_none(), "a request after the upgrade");
        check_request(req, self.max_message);
        if !req.path.starts_with("/publish/") {
            return HeadVerdict::Answer(self.serve(req));
        }
        match check_publish(req, TOKEN, self.max_message, MAX_ROOM) {
            Err(r) => {
                let bytes = http_response(
                    r.status,
                    r.extra,
                    "text/plain; charset=utf-8",
                    r.body.as_bytes(),
                    false,
                );
                HeadVerdict::Answer(answer(bytes, false))
            }
            Ok((room, _)) if room == "busy" => HeadVerdict::Answer(answer(http::busy(), false)),
            Ok((_, len)) => {
                self.expected_body = Some(len);
                HeadVerdict::ReadBody(len)
            }
        }
    }

    fn on_request(&mut self, req: &HttpRequest, body: &[u8]) -> Response {
        let expected = self.expected_body.take().expect("a body nobody asked for");
        assert_eq!(body.len(), expected, "body length");
        let room = req.path.strip_prefix("/publish/").unwrap_or("");
        assert!(valid_room_name(room, MAX_ROOM));
        let keep_alive = wants_keep_alive(req) && !self.shutting_down;
        if publish_kind(req) == MessageKind::Text && std::str::from_utf8(body).is_err() {
            let text = "body is not valid UTF-8 for a text content type\n";
            return answer(http::text(400, text, keep_alive), keep_alive);
        }
        answer(http::publish_accepted(room, 1, 0, keep_alive), keep_alive)
    }

    fn on_upgrade(
        &mut self,
        req: &UpgradeRequest,
        deflate: Option<&Negotiated>,
    ) -> Result<Vec<u8>, Response> {
        assert!(self.attachment.is_none(), "a second upgrade");
        let route = check_upgrade(req);
        if self.shutting_down {
            return Err(answer(RejectReason::Unavailable.response(), false));
        }
        if !origin_allowed(req.origin.as_deref(), &self.allowed_origins) {
            return Err(answer(RejectReason::ForbiddenOrigin.response(), false));
        }
        let echo = match route {
            Ok(WsRoute::Echo) => true,
            // The pub/sub client is fuzzed on its own (`pubsub_client`);
            // here it is a connection that receives.
            Ok(WsRoute::PubSub) => false,
            Ok(WsRoute::Room {
                role: MemberRole::Subscriber,
                ..
            }) => false,
            Ok(WsRoute::Room { .. }) => {
                return Err(answer(RejectReason::Unavailable.response(), false))
            }
            Err(RejectReason::BadRoomName) => {
                let body = http::room_name_rule(MAX_ROOM);
                return Err(answer(http::text(400, &body, false), false));
            }
            Err(reason) => return Err(answer(reason.response(), false)),
        };
        self.attachment = Some(echo);
        let protocol = req.negotiate_protocol(&self.subprotocols);
        Ok(req.accept_response_with(protocol, deflate))
    }

    fn on_message(
        &mut self,
        kind: MessageKind,
        data: &[u8],
        out: &mut OutboundQueue,
        limit: usize,
    ) -> Verdict {
        assert!(data.len() <= self.max_message, "message over the limit");
        if kind == MessageKind::Text {
            assert!(std::str::from_utf8(data).is_ok(), "text not UTF-8");
        }
        match self.attachment {
            Some(true) => {
                if data.starts_with(b"bye") {
                    return Verdict::Close(CloseCode::NORMAL, "bye");
                }
                if out.try_push_message(kind, data, limit) {
                    Verdict::Continue
                } else {
                    Verdict::SlowConsumer
                }
            }
            Some(false) => Verdict::Close(CloseCode::POLICY_VIOLATION, "read-only member"),
            None => panic!("a message before the upgrade"),
        }
    }
}

// ----- the pure HTTP checks (formerly the `http_publish` target) -------------

/// Invariants of one plain request and of the publish checks on it.
fn check_request(req: &HttpRequest, max_body: usize) {
    assert!(req.minor_version <= 1);
    for (name, _) in &req.headers {
        assert_eq!(
            *name,
            name.to_ascii_lowercase(),
            "header names are lower-cased"
        );
    }

    // Content-Length: digits only, between optional spaces and tabs (the
    // field's OWS); several headers must agree.
    let declared: Vec<Option<usize>> = req
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| {
            let v = v.trim_matches([' ', '\t']);
            if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
                v.parse().ok()
            } else {
                None
            }
        })
        .collect();
    let expected = match declared.first() {
        None => Ok(None),
        Some(&Some(n)) if declared.iter().all(|d| *d == Some(n)) => Ok(Some(n)),
        Some(_) => Err(()),
    };
    assert_eq!(req.content_length(), expected, "{declared:?}");

    let keep_alive = req.keep_alive();
    if req.header("connection").is_none() {
        assert_eq!(keep_alive, req.minor_version >= 1);
    }
    if wants_keep_alive(req) {
        assert!(keep_alive);
    }

    let checked = check_publish(req, TOKEN, max_body, MAX_ROOM);
    match &checked {
        Ok((room, len)) => {
            assert_eq!(req.method, "POST");
            assert!(valid_room_name(room, MAX_ROOM), "room {room:?}");
            assert_eq!(req.path.strip_prefix("/publish/"), Some(*room));
            assert!(*len <= max_body, "len {len} > {max_body}");
            assert_eq!(req.content_length(), Ok(Some(*len)));
            assert!(req.header("transfer-encoding").is_none());
            let auth = req
                .header("authorization")
                .expect("authorized without a header");
            let t = auth.strip_prefix("Bearer ").expect("not a bearer token");
            assert_eq!(t.trim(), TOKEN);
        }
        Err(r) => {
            assert!(
                matches!(r.status, 400 | 401 | 404 | 405 | 411 | 413),
                "status {}",
                r.status
            );
            assert!(r.body.ends_with('\n'));
            assert!(r.extra.is_empty() || r.extra.ends_with("\r\n"));
            match r.status {
                405 => {
                    assert_ne!(req.method, "POST");
                    assert_eq!(r.extra, "Allow: POST\r\n");
                }
                413 => assert!(matches!(req.content_length(), Ok(Some(n)) if n > max_body)),
                411 => assert!(
                    req.header("transfer-encoding").is_some() || req.content_length() == Ok(None)
                ),
                _ => {}
            }
        }
    }
    // A larger limit never refuses what a smaller one accepted.
    if let Ok(ok) = &checked {
        assert_eq!(
            check_publish(req, TOKEN, max_body + 1, MAX_ROOM).as_ref(),
            Ok(ok)
        );
    }
    assert_eq!(
        check_publish(req, "", max_body, MAX_ROOM)
            .unwrap_err()
            .status,
        404
    );
    for other in ["tokem", "token "] {
        if check_publish(req, other, max_body, MAX_ROOM).is_ok() {
            let bearer = req
                .header("authorization")
                .and_then(|a| a.strip_prefix("Bearer "));
            assert_eq!(bearer.map(str::trim), Some(other));
        }
    }

    // Content type: case does not matter; no type is binary.
    let kind = publish_kind(req);
    let mut upper = req.clone();
    for (n, v) in upper.headers.iter_mut() {
        if n == "content-type" {
            *v = v.to_ascii_uppercase();
        }
    }
    assert_eq!(publish_kind(&upper), kind);
    if req.header("content-type").is_none() {
        assert_eq!(kind, MessageKind::Binary);
    }

    let _ = check_route(&req.path, req.query.as_deref());
    check_origin(req.header("origin").map(str::trim));
}

fn check_upgrade(u: &UpgradeRequest) -> Result<WsRoute, RejectReason> {
    assert_eq!(u.accept.len(), 28);
    check_origin(u.origin.as_deref());
    check_route(&u.path, u.query.as_deref())
}

fn check_route(path: &str, query: Option<&str>) -> Result<WsRoute, RejectReason> {
    let route = ws_route(path, query, MAX_ROOM);
    match &route {
        Ok(WsRoute::Echo) => assert_eq!(path, "/echo"),
        Ok(WsRoute::PubSub) => assert_eq!(path, "/connection/websocket"),
        Ok(WsRoute::Room { name, role }) => {
            assert!(valid_room_name(name, MAX_ROOM), "room {name:?}");
            assert_eq!(path.strip_prefix("/rooms/"), Some(name.as_str()));
            let roles: Vec<&str> = query
                .unwrap_or("")
                .split('&')
                .filter_map(|p| p.strip_prefix("role="))
                .collect();
            let want = match roles.last().copied() {
                Some("sub") => MemberRole::Subscriber,
                Some("pub") => MemberRole::Publisher,
                _ => MemberRole::Both,
            };
            assert_eq!(*role, want);
            assert_eq!(role.receives(), *role != MemberRole::Publisher);
            assert_eq!(role.publishes(), *role != MemberRole::Subscriber);
        }
        Err(RejectReason::NotFound) => assert!(!is_ws_path(path)),
        Err(RejectReason::BadRoomName) => {
            assert!(!valid_room_name(
                path.strip_prefix("/rooms/").unwrap(),
                MAX_ROOM
            ))
        }
        Err(RejectReason::BadRole) => assert!(query
            .unwrap_or("")
            .split('&')
            .filter_map(|p| p.strip_prefix("role="))
            .any(|v| !matches!(v, "sub" | "pub" | "" | "both"))),
        Err(other) => panic!("ws_route refused with {other:?}"),
    }
    if route != Err(RejectReason::NotFound) {
        assert!(is_ws_path(path));
    }
    if route.is_ok() {
        assert_eq!(ws_route(path, query, usize::MAX), route);
    }
    route
}

fn check_origin(origin: Option<&str>) {
    let listed = vec!["https://app.example".to_string(), "http://a".to_string()];
    assert!(origin_allowed(None, &listed));
    assert!(origin_allowed(origin, &[]));
    let Some(o) = origin else { return };
    let expected = listed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(o.trim_end_matches('/')));
    assert_eq!(origin_allowed(Some(o), &listed), expected);
    let own = vec![o.trim_end_matches('/').to_ascii_uppercase()];
    assert!(origin_allowed(Some(o), &own));
}

// ----- the wire -------------------------------------------------------------

/// A writer that takes `budget` bytes, then answers `WouldBlock`.
struct Socket<'a> {
    budget: usize,
    wire: &'a mut Vec<u8>,
}

impl Write for Socket<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if self.budget == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        let mut n = 0;
        for b in bufs {
            let take = b.len().min(self.budget - n);
            self.wire.extend_from_slice(&b[..take]);
            n += take;
            if n == self.budget {
                break;
            }
        }
        self.budget -= n;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[derive(Debug, PartialEq)]
enum WireState {
    Http,
    Frames,
    /// After `Connection: close` or a close frame: nothing more may come.
    Done,
}

/// Checks what the server wrote, as a client would read it.
struct Wire {
    buf: Vec<u8>,
    state: WireState,
    upgrades: usize,
    /// The handler accepted an upgrade (a `101` was queued).
    upgrade_accepted: bool,
}

impl Wire {
    fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
        loop {
            match self.state {
                WireState::Http => {
                    if !self.http_response() {
                        return;
                    }
                }
                WireState::Frames => {
                    if !self.frame() {
                        return;
                    }
                }
                WireState::Done => {
                    assert!(self.buf.is_empty(), "bytes after the end: {:?}", self.buf);
                    return;
                }
            }
        }
    }

    /// Consumes one complete response; `false` if incomplete.
    fn http_response(&mut self) -> bool {
        let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            assert!(self.buf.len() < 4096, "response head too long");
            assert!(
                b"HTTP/1.1 ".starts_with(&self.buf[..self.buf.len().min(9)]),
                "not a status line: {:?}",
                String::from_utf8_lossy(&self.buf)
            );
            return false;
        };
        let head = std::str::from_utf8(&self.buf[..end]).expect("response head not UTF-8");
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap();
        let status: u16 = status_line
            .strip_prefix("HTTP/1.1 ")
            .and_then(|s| s.get(..3))
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
        assert!((100..600).contains(&status));
        let mut length = None;
        let mut close = false;
        let mut accept = false;
        for line in lines {
            let (name, value) = line.split_once(": ").expect("header line");
            assert!(!name.is_empty() && !name.contains(' '), "header {line:?}");
            match name.to_ascii_lowercase().as_str() {
                "content-length" => length = Some(value.parse::<usize>().expect("length")),
                "connection" => close = value.eq_ignore_ascii_case("close"),
                "sec-websocket-accept" => accept = value.len() == 28,
                _ => {}
            }
        }
        let head_len = end + 4;
        if status == 101 {
            assert!(accept && length.is_none(), "101 {head:?}");
            self.upgrades += 1;
            assert_eq!(self.upgrades, 1, "a second 101");
            self.buf.drain(..head_len);
            self.state = WireState::Frames;
            return true;
        }
        let length = length.expect("a response without Content-Length");
        if self.buf.len() < head_len + length {
            return false;
        }
        self.buf.drain(..head_len + length);
        if close {
            self.state = WireState::Done;
        }
        true
    }

    /// Consumes one complete frame; `false` if incomplete.
    fn frame(&mut self) -> bool {
        let dec = FrameDecoder::new(Role::Client, 1 << 30);
        let f = match dec.decode(&mut self.buf) {
            Ok(Some(f)) => f,
            Ok(None) => return false,
            Err(e) => panic!(
                "server frame: {e:?}: {:?}",
                &self.buf[..self.buf.len().min(16)]
            ),
        };
        let h = f.header;
        let payload = &self.buf[f.payload.clone()];
        assert!(h.fin && h.rsv == 0, "{h:?}");
        match h.opcode {
            OpCode::Continuation => panic!("continuation from the server"),
            OpCode::Text => assert!(std::str::from_utf8(payload).is_ok(), "text not UTF-8"),
            OpCode::Binary => {}
            OpCode::Ping | OpCode::Pong => assert!(payload.len() <= 125),
            OpCode::Close => {
                assert!(
                    payload.len() != 1 && payload.len() <= 125,
                    "close {payload:?}"
                );
                if payload.len() >= 2 {
                    let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
                    assert!(code.is_valid_on_wire(), "close code {code}");
                    assert!(std::str::from_utf8(&payload[2..]).is_ok(), "close reason");
                }
                self.state = WireState::Done;
            }
        }
        self.buf.drain(..f.consumed);
        true
    }
}

// ----- the driver -----------------------------------------------------------

/// Reads the fuzz input; zeros once it is exhausted.
struct Input<'a> {
    data: &'a [u8],
}

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        match self.data.split_first() {
            Some((b, rest)) => {
                self.data = rest;
                *b
            }
            None => 0,
        }
    }
    fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.data.len());
        let (a, b) = self.data.split_at(n);
        self.data = b;
        a
    }
}

struct Driver {
    s: Session,
    h: Relay,
    cfg: SessionConfig,
    now: u64,
    /// Received bytes the session has not consumed yet.
    inbox: Vec<u8>,
    wire: Wire,
    finished: bool,
    max_charged: usize,
}

impl Driver {
    /// The most the outbound queue may hold.
    fn bound(&self) -> usize {
        let cfg = &self.cfg;
        // One message alone: an echo copy (header ≤ 10 bytes, a new owned
        // buffer is at least 256) or a shared frame.
        let one = ENTRY_COST + (cfg.max_message_bytes + 10).max(256);
        let data = cfg.max_outbound_bytes.max(one);
        // What the session queues without judging it: one HTTP answer or
        // 101 (< 768 bytes here), one pong (inline control frame), one
        // close frame, one heartbeat ping; each one entry, owned ones at
        // least 256 bytes of capacity.
        let control = 4 * ENTRY_COST + 768 + 128 + 256 + 256;
        data + control
    }

    fn check(&mut self) {
        let charged = self.s.outbound_charged();
        self.max_charged = self.max_charged.max(charged);
        let bound = self.bound();
        assert!(
            charged <= bound,
            "outbound charge {charged} > bound {bound} (max_outbound_bytes {}, max_message_bytes {})",
            self.cfg.max_outbound_bytes,
            self.cfg.max_message_bytes
        );
        if self.finished {
            assert!(self.s.poll_finish().is_some(), "finish undone");
        }
        if self.s.poll_finish().is_some() {
            self.finished = true;
            assert!(!self.s.wants_read(), "finished but wants to read");
        }
        if !self.s.is_websocket() {
            assert!(self.h.attachment.is_none() || self.finished);
        }
    }

    /// Offers the buffered bytes, again while the session takes some.
    fn deliver(&mut self) {
        while !self.inbox.is_empty() {
            let mut buf = self.inbox.clone();
            let n = self.s.handle_input(&mut buf, self.now, &mut self.h);
            assert!(n <= buf.len(), "consumed {n} of {}", buf.len());
            assert_eq!(buf[n..], self.inbox[n..], "unconsumed bytes were changed");
            if self.finished {
                assert_eq!(n, 0, "input taken after finish");
            }
            if n == 0 {
                // Nothing more is taken until something changes.
                let mut again = self.inbox.clone();
                assert_eq!(self.s.handle_input(&mut again, self.now, &mut self.h), 0);
                break;
            }
            self.inbox.drain(..n);
            self.check();
        }
    }

    fn write(&mut self, budget: usize) {
        let mut out = Vec::new();
        let mut sock = Socket {
            budget,
            wire: &mut out,
        };
        let r = self.s.write_to(&mut sock);
        assert!(r.is_ok(), "{r:?}");
        let (_, n) = r.unwrap();
        assert_eq!(n, out.len());
        self.wire.upgrade_accepted = self.h.attachment.is_some();
        self.wire.feed(&out);
    }

    fn advance(&mut self, step: u64) {
        self.now += step;
        if let Some(at) = self.s.poll_timeout() {
            if at <= self.now {
                self.s.handle_timeout(self.now);
                if self.s.poll_finish().is_none() {
                    if let Some(next) = self.s.poll_timeout() {
                        assert!(
                            next > self.now,
                            "deadline {next} not after now {}",
                            self.now
                        );
                    }
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let (b0, b1, b2, b3) = (data[0], data[1], data[2], data[3]);
    let max_message = MESSAGE_LIMITS[(b0 & 0x0f) as usize % MESSAGE_LIMITS.len()];
    let max_frame = if b0 & 0x10 != 0 {
        max_message / 2 + 1
    } else {
        max_message
    };
    let rate = match (b1 >> 5) & 3 {
        0 => RateLimits::default(),
        1 => RateLimits {
            messages_per_sec: 10.0,
            burst: 2.0,
            bytes_per_sec: 0.0,
        },
        2 => RateLimits {
            messages_per_sec: 0.0,
            burst: 0.0,
            bytes_per_sec: 1000.0,
        },
        _ => RateLimits {
            messages_per_sec: 5.0,
            burst: 5.0,
            bytes_per_sec: 500.0,
        },
    };
    let cfg = SessionConfig {
        head: HandshakeLimits {
            max_head_bytes: 64 + (b2 & 0x3f) as usize * 16,
            max_headers: 4 + (b2 >> 6) as usize * 4,
        },
        max_frame_bytes: max_frame,
        max_message_bytes: max_message,
        max_outbound_bytes: OUTBOUND_LIMITS[(b1 & 7) as usize],
        handshake_timeout_ms: HANDSHAKE_TIMEOUTS[(b3 / 9 % 3) as usize],
        close_timeout_ms: CLOSE_TIMEOUTS[(b3 / 27 % 3) as usize],
        ping_interval_ms: INTERVALS[(b3 % 3) as usize],
        pong_timeout_ms: PONG_TIMEOUTS[(b3 / 3 % 3) as usize],
        rate,
        rate_policy: if b1 & 0x10 != 0 {
            RateLimitPolicy::Drop
        } else {
            RateLimitPolicy::Close
        },
        slow_consumer: if b1 & 0x08 != 0 {
            SlowConsumerPolicy::Drop
        } else {
            SlowConsumerPolicy::Close
        },
        // permessage-deflate offered (inputs whose upgrade offers it get
        // compressed frames inflated, bombs and all).
        deflate: (b0 & 0x20 != 0).then(DeflateSettings::default),
    };
    let now = 1;
    let ctx = SessionContext::new(cfg.clone(), Arc::new(WorkerMetrics::default()));
    let mut d = Driver {
        s: Session::new(ctx, now),
        h: Relay {
            max_message,
            shutting_down: b3 / 81 == 2,
            subprotocols: vec!["v2".into(), "chat".into()],
            allowed_origins: if b3 / 81 == 1 {
                vec!["https://app.example".into()]
            } else {
                Vec::new()
            },
            attachment: None,
            expected_body: None,
        },
        cfg,
        now,
        inbox: Vec::new(),
        wire: Wire {
            buf: Vec::new(),
            state: WireState::Http,
            upgrades: 0,
            upgrade_accepted: false,
        },
        finished: false,
        max_charged: 0,
    };
    let mut input = Input { data: &data[4..] };
    while !input.data.is_empty() {
        let op = input.byte();
        let arg = op >> 4;
        match op & 0x0f {
            // Raw bytes from the peer.
            0 => {
                let n = input.byte() as usize;
                let bytes = input.bytes(n).to_vec();
                d.inbox.extend_from_slice(&bytes);
                d.deliver();
            }
            // A canned request.
            1 => {
                d.inbox
                    .extend_from_slice(CANNED[arg as usize % CANNED.len()]);
                d.deliver();
            }
            // A masked client frame: arg = opcode / fin, then a length
            // byte; op 2 takes that many payload bytes from the input, op 3
            // sends 300 times as many ASCII bytes.
            2 | 3 => {
                let opcode = [
                    OpCode::Text,
                    OpCode::Binary,
                    OpCode::Continuation,
                    OpCode::Ping,
                    OpCode::Pong,
                    OpCode::Close,
                    OpCode::Text,
                    OpCode::Binary,
                ][(arg & 7) as usize];
                let fin = arg & 8 == 0;
                let l = input.byte() as usize;
                let len = match op & 0x0f {
                    2 => l,
                    _ => l * 300,
                };
                let mut payload = match op & 0x0f {
                    2 => input.bytes(len).to_vec(),
                    // Long payloads: ASCII (valid as text).
                    _ => vec![b'a'; len],
                };
                if opcode == OpCode::Close && payload.len() >= 2 {
                    let c = CLOSE_CODES[payload[0] as usize % CLOSE_CODES.len()];
                    payload[..2].copy_from_slice(&c.to_be_bytes());
                }
                let key = [op, l as u8, 0x5a, 0xa5];
                let mut frame = Vec::new();
                encode_client_frame(fin, opcode, &payload, key, &mut frame);
                d.inbox.extend_from_slice(&frame);
                d.deliver();
            }
            // Offer the buffered bytes again.
            4 => d.deliver(),
            // The clock.
            5 => d.advance(STEPS[arg as usize]),
            // Write out K bytes, then offer the buffered bytes again (as
            // the worker does after a write).
            6 => {
                d.write(WRITE_BUDGETS[(arg & 7) as usize]);
                d.check();
                if arg & 8 != 0 {
                    d.deliver();
                }
            }
            // A broadcast of one message (or a batch of two).
            7 => {
                let l = input.byte() as usize;
                let len = l * max_message / 255;
                let opcode = if arg & 1 == 0 {
                    OpCode::Text
                } else {
                    OpCode::Binary
                };
                let payload = vec![b'b'; len];
                let frame = if arg & 2 == 0 {
                    SharedFrame::encode(opcode, &payload)
                } else {
                    let half = &payload[..len / 2];
                    let mut v = Vec::new();
                    for _ in 0..2 {
                        v.extend_from_slice(
                            encode_header(true, opcode, half.len(), None).as_bytes(),
                        );
                        v.extend_from_slice(half);
                    }
                    SharedFrame::from_vec(v)
                };
                let delivery = d.s.send_shared(&frame);
                if delivery == wsrelay::server::session::Delivery::Full && arg & 4 != 0 {
                    d.s.slow_consumer(1, d.now);
                }
            }
            8 => {
                let missed = input.byte() as u64;
                d.s.slow_consumer(missed, d.now);
            }
            9 => {
                let code = CloseCode(CLOSE_CODES[(arg & 7) as usize % 7]);
                let reason = if arg & 8 != 0 {
                    "é".repeat(100)
                } else {
                    "bye".to_string()
                };
                d.s.close(code, &reason, d.now);
            }
            10 => {
                d.s.set_paused(arg & 1 != 0, d.now);
                if arg & 2 != 0 {
                    d.deliver();
                }
            }
            11 if arg == 0xf => d.s.handle_eof(),
            12 => d.s.release_idle(),
            _ => d.deliver(),
        }
        d.check();
    }
    // The peer reads everything at the end.
    d.write(usize::MAX);
    d.check();
});
