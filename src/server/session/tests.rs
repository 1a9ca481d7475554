//! The session on a virtual clock: every deadline, the HTTP phase's one
//! request in flight, control-frame bounds and rate limits, with no
//! sockets and no sleeps. Time is whatever the test says it is.

use super::*;
use crate::metrics::{ForwardedSource, ProxyRefusal};
use crate::protocol::{encode_client_frame, FrameDecoder, OpCode, Role as FrameRole, SharedFrame};

const KEY: [u8; 4] = [1, 2, 3, 4];
const UPGRADE: &[u8] = b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

fn config() -> SessionConfig {
    SessionConfig {
        head: HandshakeLimits::default(),
        max_frame_bytes: 1 << 20,
        max_message_bytes: 1 << 20,
        max_outbound_bytes: 1 << 20,
        handshake_timeout_ms: 10_000,
        close_timeout_ms: 5_000,
        ping_interval_ms: 30_000,
        pong_timeout_ms: 10_000,
        rate: RateLimits::default(),
        rate_policy: RateLimitPolicy::Close,
        slow_consumer: SlowConsumerPolicy::Close,
        deflate: None,
    }
}

/// A handler that answers `GET /x` with 200 (keep-alive as asked), reads
/// bodies of `POST /body`, upgrades `/echo`, and echoes messages.
#[derive(Default)]
struct Echo {
    requests: Vec<String>,
    bodies: Vec<Vec<u8>>,
    messages: Vec<Vec<u8>>,
    refuse_upgrade: bool,
    /// Clients named through `on_client`, and whether to refuse them.
    clients: Vec<std::net::IpAddr>,
    refuse_client: bool,
    /// `POST /body` is answered later (`Response::later`).
    answer_later: bool,
}

impl Handler for Echo {
    fn on_request_head(&mut self, req: &HttpRequest) -> HeadVerdict {
        self.requests.push(req.path.clone());
        if req.path == "/body" {
            let len = req.content_length().ok().flatten().unwrap_or(0);
            return HeadVerdict::ReadBody(len);
        }
        let keep_alive = req.keep_alive();
        HeadVerdict::Answer(Response {
            bytes: format!("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n{}", req.path).into_bytes(),
            keep_alive,
        })
    }

    fn on_request(&mut self, req: &HttpRequest, body: &[u8]) -> Response {
        self.bodies.push(body.to_vec());
        if self.answer_later {
            return Response::later(req.keep_alive());
        }
        Response {
            bytes: b"HTTP/1.1 202 Accepted\r\n\r\n".to_vec(),
            keep_alive: true,
        }
    }

    fn on_upgrade(
        &mut self,
        req: &UpgradeRequest,
        deflate: Option<&crate::protocol::deflate::Negotiated>,
    ) -> Result<Vec<u8>, Response> {
        if self.refuse_upgrade {
            return Err(Response {
                bytes: b"HTTP/1.1 403 Forbidden\r\n\r\n".to_vec(),
                keep_alive: false,
            });
        }
        Ok(req.accept_response_with(None, deflate))
    }

    fn on_client(&mut self, client: std::net::IpAddr) -> Result<(), Response> {
        self.clients.push(client);
        if self.refuse_client {
            return Err(Response {
                bytes: b"HTTP/1.1 429 Too Many Requests\r\n\r\n".to_vec(),
                keep_alive: false,
            });
        }
        Ok(())
    }

    fn on_message(
        &mut self,
        kind: MessageKind,
        data: &[u8],
        out: &mut OutboundQueue,
        limit: usize,
    ) -> Verdict {
        self.messages.push(data.to_vec());
        if out.try_push_message(kind, data, limit) {
            Verdict::Continue
        } else {
            Verdict::SlowConsumer
        }
    }
}

struct Harness {
    s: Session,
    h: Echo,
    metrics: Arc<WorkerMetrics>,
}

impl Harness {
    fn new(cfg: SessionConfig, now: u64) -> Harness {
        let metrics = Arc::new(WorkerMetrics::default());
        let ctx = SessionContext::new(cfg, metrics.clone());
        Harness {
            s: Session::new(ctx, now),
            h: Echo::default(),
            metrics,
        }
    }

    /// An open WebSocket session (101 already written out).
    fn open(cfg: SessionConfig, now: u64) -> Harness {
        let mut t = Harness::new(cfg, now);
        assert_eq!(t.input(UPGRADE, now), UPGRADE.len());
        assert!(t.s.is_websocket());
        assert!(t.output().starts_with(b"HTTP/1.1 101"));
        t
    }

    /// Feeds bytes; returns how many were consumed.
    fn input(&mut self, bytes: &[u8], now: u64) -> usize {
        let mut buf = bytes.to_vec();
        self.s.handle_input(&mut buf, now, &mut self.h)
    }

    /// Feeds bytes, offering the unconsumed rest again while the session
    /// takes it (as the worker does after each answer is written).
    fn input_all(&mut self, bytes: &[u8], now: u64) -> Vec<u8> {
        let mut buf = bytes.to_vec();
        let mut start = 0;
        let mut out = Vec::new();
        while start < buf.len() {
            let n = self.s.handle_input(&mut buf[start..], now, &mut self.h);
            out.extend(self.output());
            if n == 0 {
                break;
            }
            start += n;
        }
        out
    }

    fn output(&mut self) -> Vec<u8> {
        let mut w = Vec::new();
        self.s.write_to(&mut w).unwrap();
        w
    }

    /// Frames the server wrote (compressed ones inflated).
    fn frames(&mut self) -> Vec<(OpCode, Vec<u8>)> {
        self.frames_rsv1()
            .into_iter()
            .map(|(op, _, data)| (op, data))
            .collect()
    }

    /// Frames the server wrote, whether each was compressed (RSV1), and
    /// the payload (inflated as a client that negotiated deflate would).
    fn frames_rsv1(&mut self) -> Vec<(OpCode, bool, Vec<u8>)> {
        let mut bytes = self.output();
        let dec = FrameDecoder::new(FrameRole::Client, 1 << 24).with_allowed_rsv(0x4);
        let mut frames = Vec::new();
        let mut pos = 0;
        while let Ok(Some(f)) = dec.decode(&mut bytes[pos..]) {
            let payload = &bytes[pos + f.payload.start..pos + f.payload.end];
            let rsv1 = f.header.rsv & 0x4 != 0;
            let data = if rsv1 {
                let mut inf = crate::protocol::deflate::Inflater::new();
                let mut out = Vec::new();
                inf.inflate(payload, &mut out, 1 << 26).unwrap();
                inf.finish(&mut out, 1 << 26).unwrap();
                out
            } else {
                payload.to_vec()
            };
            frames.push((f.header.opcode, rsv1, data));
            pos += f.consumed;
        }
        assert_eq!(pos, bytes.len(), "whole frames only");
        frames
    }

    /// Advances the clock to `now` the way the worker does: fire the
    /// timer whenever it is due.
    fn advance(&mut self, now: u64) {
        while let Some(at) = self.s.poll_timeout() {
            if at > now || self.s.poll_finish().is_some() {
                break;
            }
            self.s.handle_timeout(at);
        }
    }
}

fn frame(op: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    encode_client_frame(true, op, payload, KEY, &mut v);
    v
}

// ----- HTTP phase ------------------------------------------------------------

#[test]
fn handshake_deadline_closes_a_silent_connection() {
    let mut t = Harness::new(config(), 1000);
    assert_eq!(t.s.poll_timeout(), Some(11_000));
    t.advance(10_999);
    assert_eq!(t.s.poll_finish(), None);
    t.advance(11_000);
    assert_eq!(t.s.poll_finish(), Some(Finish::Abort));
}

#[test]
fn a_slow_head_does_not_extend_the_handshake_deadline() {
    let mut t = Harness::new(config(), 1);
    for (i, b) in UPGRADE[..20].iter().enumerate() {
        assert_eq!(t.input(&[*b], 1 + i as u64 * 400), 1);
    }
    assert_eq!(t.s.poll_timeout(), Some(10_001));
    t.advance(10_001);
    assert_eq!(t.s.poll_finish(), Some(Finish::Abort));
}

#[test]
fn keep_alive_idle_deadline_restarts_after_each_answer() {
    let mut t = Harness::new(config(), 1);
    let out = t.input_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", 5_000);
    assert!(out.starts_with(b"HTTP/1.1 200"));
    assert_eq!(t.s.poll_timeout(), Some(15_000));
    t.advance(14_999);
    assert_eq!(t.s.poll_finish(), None);
    t.input_all(b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n", 14_000);
    t.advance(23_999);
    assert_eq!(
        t.s.poll_finish(),
        None,
        "idle time counts from the last answer"
    );
    t.advance(24_000);
    assert_eq!(t.s.poll_finish(), Some(Finish::Abort));
}

#[test]
fn one_request_in_flight_until_its_answer_is_written() {
    let mut t = Harness::new(config(), 1);
    let two = b"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: a\r\n\r\n";
    let mut buf = two.to_vec();
    let used = t.s.handle_input(&mut buf, 1, &mut t.h);
    assert_eq!(used, two.len() / 2, "the second request is left unconsumed");
    assert!(!t.s.wants_read());
    assert_eq!(t.s.handle_input(&mut buf[used..], 1, &mut t.h), 0);
    assert_eq!(t.h.requests, ["/a"]);
    assert!(t.output().ends_with(b"/a"));
    assert!(t.s.wants_read());
    assert_eq!(
        t.s.handle_input(&mut buf[used..], 1, &mut t.h),
        two.len() / 2
    );
    assert_eq!(t.h.requests, ["/a", "/b"]);
}

#[test]
fn pipelined_requests_cost_one_answer_of_memory() {
    let mut t = Harness::new(config(), 1);
    let one: &[u8] = b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n";
    let many: Vec<u8> = one.repeat(10_000);
    let mut buf = many.clone();
    let used = t.s.handle_input(&mut buf, 1, &mut t.h);
    assert_eq!(used, one.len());
    // Never written out: nothing more is taken, whatever is offered.
    for _ in 0..100 {
        assert_eq!(t.s.handle_input(&mut buf[used..], 2, &mut t.h), 0);
    }
    assert!(t.s.outbound_charged() < 1024, "{}", t.s.outbound_charged());
    assert_eq!(t.h.requests.len(), 1);
}

#[test]
fn a_request_split_anywhere_is_reassembled() {
    let req = b"POST /body HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /x HTTP/1.1\r\nHost: a\r\n\r\n";
    for cut in 1..req.len() {
        let mut t = Harness::new(config(), 1);
        let mut out = t.input_all(&req[..cut], 1);
        out.extend(t.input_all(&req[cut..], 1));
        assert_eq!(t.h.bodies, [b"hello".to_vec()], "cut at {cut}");
        assert_eq!(t.h.requests, ["/body", "/x"], "cut at {cut}");
        assert!(out.ends_with(b"/x"), "cut at {cut}");
    }
}

#[test]
fn a_head_over_the_limit_is_refused_with_431() {
    let mut t = Harness::new(config(), 1);
    let mut head = b"GET /x HTTP/1.1\r\nX: ".to_vec();
    head.extend(std::iter::repeat_n(b'a', 10_000));
    let out = t.input_all(&head, 1);
    assert!(out.starts_with(b"HTTP/1.1 431"), "{:?}", &out[..20]);
    assert_eq!(t.s.poll_finish(), Some(Finish::Graceful));
}

#[test]
fn an_answer_without_keep_alive_ends_the_connection_once_written() {
    let mut t = Harness::new(config(), 1);
    t.input(b"GET /x HTTP/1.0\r\nHost: a\r\n\r\n", 1);
    assert_eq!(t.s.poll_finish(), None, "not written yet");
    t.output();
    assert_eq!(t.s.poll_finish(), Some(Finish::Graceful));
}

#[test]
fn an_answer_the_peer_never_reads_is_given_close_timeout() {
    let mut t = Harness::new(config(), 1);
    t.input(b"GET /x HTTP/1.0\r\nHost: a\r\n\r\n", 100);
    assert_eq!(t.s.poll_timeout(), Some(5_100));
    t.advance(5_100);
    assert_eq!(t.s.poll_finish(), Some(Finish::Abort));
}

#[test]
fn a_refused_upgrade_is_answered_and_closed() {
    let mut t = Harness::new(config(), 1);
    t.h.refuse_upgrade = true;
    let out = t.input_all(UPGRADE, 1);
    assert!(out.starts_with(b"HTTP/1.1 403"));
    assert!(!t.s.is_websocket());
    assert_eq!(t.s.poll_finish(), Some(Finish::Graceful));
}

#[test]
fn frames_after_the_upgrade_head_are_left_for_the_open_phase() {
    let mut t = Harness::new(config(), 1);
    let mut bytes = UPGRADE.to_vec();
    bytes.extend(frame(OpCode::Text, b"hi"));
    let out = t.input_all(&bytes, 1);
    assert!(out.starts_with(b"HTTP/1.1 101"));
    assert_eq!(t.h.messages, [b"hi".to_vec()]);
}

// ----- heartbeat ---------------------------------------------------------------

#[test]
fn an_idle_peer_is_pinged_then_dropped_without_a_pong() {
    let mut t = Harness::open(config(), 1);
    assert_eq!(t.s.poll_timeout(), Some(30_001));
    t.advance(30_001);
    let frames = t.frames();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, OpCode::Ping);
    assert_eq!(t.s.poll_timeout(), Some(40_001));
    t.advance(40_000);
    assert_eq!(t.s.poll_finish(), None);
    t.advance(40_001);
    assert_eq!(t.s.poll_finish(), Some(Finish::Abort));
    assert_eq!(t.metrics.ping_timeouts.get(), 1);
}

#[test]
fn a_pong_keeps_the_connection() {
    let mut t = Harness::open(config(), 1);
    t.advance(30_001);
    let ping = t.frames().remove(0).1;
    t.input(&frame(OpCode::Pong, &ping), 30_500);
    t.advance(40_001);
    assert_eq!(t.s.poll_finish(), None);
    // The next ping is one interval after the pong.
    assert_eq!(t.s.poll_timeout(), Some(60_500));
    t.advance(60_500);
    assert_eq!(t.frames()[0].0, OpCode::Ping);
}

#[test]
fn activity_postpones_the_ping_without_touching_the_timer() {
    let mut t = Harness::open(config(), 1);
    t.input(&frame(OpCode::Text, b"x"), 20_000);
    t.output();
    assert_eq!(t.s.poll_timeout(), Some(30_001), "activity does not re-arm");
    t.advance(30_001);
    assert!(t.frames().is_empty(), "no ping: the peer spoke 10 s ago");
    assert_eq!(t.s.poll_timeout(), Some(50_000));
}

#[test]
fn a_paused_publisher_is_not_timed_out() {
    let mut t = Harness::open(config(), 1);
    t.advance(30_001);
    assert_eq!(t.frames()[0].0, OpCode::Ping);
    // The pong arrives, but we stopped reading (backpressure).
    t.s.set_paused(true, 30_002);
    t.advance(300_000);
    assert_eq!(t.s.poll_finish(), None, "not judged while unread");
    t.s.set_paused(false, 300_000);
    assert!(t.s.wants_read());
    t.input(&frame(OpCode::Pong, b""), 300_001);
    t.advance(330_000);
    assert_eq!(t.s.poll_finish(), None);
}

#[test]
fn heartbeat_off_arms_no_timer() {
    let mut cfg = config();
    cfg.ping_interval_ms = 0;
    let t = Harness::open(cfg, 1);
    assert_eq!(t.s.poll_timeout(), None);
}

// ----- control frames and close ---------------------------------------------

#[test]
fn pings_are_answered_in_order_one_pong_in_flight_at_a_time() {
    let mut t = Harness::open(config(), 1);
    let mut pings = Vec::new();
    for i in 0..10u32 {
        pings.extend(frame(OpCode::Ping, &i.to_be_bytes()));
    }
    // The second ping waits until the first pong is written.
    assert_eq!(t.input(&pings, 2), pings.len() / 10);
    assert!(!t.s.wants_read());
    let mut pongs = t.frames();
    assert!(t.s.wants_read());
    let rest = pings[pings.len() / 10..].to_vec();
    let mut buf = rest.clone();
    let mut start = 0;
    while start < buf.len() {
        let n = t.s.handle_input(&mut buf[start..], 3, &mut t.h);
        assert!(n > 0);
        start += n;
        pongs.extend(t.frames());
    }
    let expected: Vec<_> = (0..10u32)
        .map(|i| (OpCode::Pong, i.to_be_bytes().to_vec()))
        .collect();
    assert_eq!(
        pongs, expected,
        "every ping answered, in order (Autobahn 2.10)"
    );
}

#[test]
fn a_ping_flood_that_never_reads_is_not_read_either() {
    let mut t = Harness::open(config(), 1);
    let mut flood = Vec::new();
    for i in 0..10_000u32 {
        flood.extend(frame(OpCode::Ping, &i.to_be_bytes()));
    }
    struct Blocked;
    impl std::io::Write for Blocked {
        fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::WouldBlock.into())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut consumed = 0;
    for _ in 0..100 {
        let mut rest = flood[consumed..].to_vec();
        consumed += t.s.handle_input(&mut rest, 3, &mut t.h);
        t.s.write_to(&mut Blocked).unwrap();
    }
    assert_eq!(consumed, 10, "one ping read, one pong held");
    assert!(t.s.outbound_charged() < 512, "{}", t.s.outbound_charged());
    // Data still gets through the stall once the peer reads.
    let frames = t.frames();
    assert_eq!(frames, [(OpCode::Pong, 0u32.to_be_bytes().to_vec())]);
    assert!(t.s.wants_read());
}

#[test]
fn the_close_handshake_is_answered_once_then_ends_gracefully() {
    let mut t = Harness::open(config(), 1);
    let mut bytes = frame(OpCode::Close, &1000u16.to_be_bytes());
    bytes.extend(frame(OpCode::Close, &1000u16.to_be_bytes()));
    bytes.extend(frame(OpCode::Text, b"after"));
    t.input(&bytes, 2);
    let frames = t.frames();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0], (OpCode::Close, 1000u16.to_be_bytes().to_vec()));
    assert!(t.h.messages.is_empty());
    assert_eq!(t.s.poll_finish(), Some(Finish::Graceful));
}

#[test]
fn an_unanswered_close_is_dropped_after_close_timeout() {
    let mut t = Harness::open(config(), 1);
    t.s.close(CloseCode::GOING_AWAY, "bye", 1_000);
    t.s.close(CloseCode::GOING_AWAY, "again", 1_000);
    let frames = t.frames();
    assert_eq!(frames.len(), 1, "close frames once");
    assert_eq!(&frames[0].1[..2], &1001u16.to_be_bytes());
    assert_eq!(t.s.poll_timeout(), Some(6_000));
    t.advance(5_999);
    assert_eq!(t.s.poll_finish(), None);
    t.advance(6_000);
    assert_eq!(t.s.poll_finish(), Some(Finish::Abort));
}

#[test]
fn the_peer_answering_our_close_ends_gracefully() {
    let mut t = Harness::open(config(), 1);
    t.s.close(CloseCode::GOING_AWAY, "bye", 1_000);
    t.output();
    t.input(&frame(OpCode::Close, &1001u16.to_be_bytes()), 1_500);
    assert_eq!(t.s.poll_finish(), Some(Finish::Graceful));
}

#[test]
fn protocol_errors_fail_the_connection_with_their_code() {
    let mut t = Harness::open(config(), 1);
    // Unmasked frame from a client: 1002.
    t.input(&[0x81, 0x01, b'x'], 2);
    let frames = t.frames();
    assert_eq!(&frames[0].1[..2], &1002u16.to_be_bytes());
    assert_eq!(t.s.poll_finish(), Some(Finish::Graceful));
    // Too large: 1009.
    let mut cfg = config();
    cfg.max_message_bytes = 10;
    let mut t = Harness::open(cfg, 1);
    t.input(&frame(OpCode::Binary, &[0u8; 11]), 2);
    assert_eq!(&t.frames()[0].1[..2], &1009u16.to_be_bytes());
}

// ----- outbound bound and rate limits ---------------------------------------

#[test]
fn a_message_of_the_maximum_size_is_always_deliverable() {
    let mut t = Harness::open(config(), 1);
    let max = vec![7u8; 1 << 20];
    t.input(&frame(OpCode::Binary, &max), 2);
    assert_eq!(t.s.poll_finish(), None);
    let frames = t.frames();
    assert_eq!(frames, [(OpCode::Binary, max.clone())]);
    let shared = SharedFrame::encode(OpCode::Binary, &max);
    assert_eq!(t.s.send_shared(&shared), Delivery::Queued);
    assert_eq!(t.s.send_shared(&shared), Delivery::Full);
}

#[test]
fn a_slow_consumer_is_closed_with_1008_after_its_backlog_is_dropped() {
    let mut t = Harness::open(config(), 1);
    let f = SharedFrame::encode(OpCode::Binary, &[0u8; 1000]);
    let mut n = 0;
    while t.s.send_shared(&f) == Delivery::Queued {
        n += 1;
    }
    assert!(n > 500);
    t.s.slow_consumer(1, 5);
    assert_eq!(t.s.send_shared(&f), Delivery::Ignored);
    let frames = t.frames();
    assert_eq!(frames.len(), 1, "backlog dropped, close sent");
    assert_eq!(&frames[0].1[..2], &1008u16.to_be_bytes());
    assert_eq!(t.metrics.slow_consumer_closes.get(), 1);
}

#[test]
fn the_message_rate_limit_refills_on_the_virtual_clock() {
    let mut cfg = config();
    cfg.rate = RateLimits {
        messages_per_sec: 10.0,
        burst: 2.0,
        bytes_per_sec: 0.0,
    };
    cfg.rate_policy = RateLimitPolicy::Drop;
    let mut t = Harness::open(cfg, 1);
    for _ in 0..3 {
        t.input(&frame(OpCode::Text, b"m"), 1_000);
    }
    assert_eq!(t.h.messages.len(), 2, "burst of 2");
    t.input(&frame(OpCode::Text, b"m"), 1_050);
    assert_eq!(t.h.messages.len(), 2, "half a token");
    t.input(&frame(OpCode::Text, b"m"), 1_100);
    assert_eq!(t.h.messages.len(), 3, "one token after 100 ms");
    assert_eq!(t.metrics.rate_limited.get(), 2);
}

#[test]
fn over_the_rate_limit_with_policy_close_closes_1008() {
    let mut cfg = config();
    cfg.rate = RateLimits {
        messages_per_sec: 1.0,
        burst: 1.0,
        bytes_per_sec: 0.0,
    };
    let mut t = Harness::open(cfg, 1);
    t.input(&frame(OpCode::Text, b"a"), 10);
    t.output();
    t.input(&frame(OpCode::Text, b"b"), 10);
    let frames = t.frames();
    assert_eq!(frames.len(), 1);
    assert_eq!(frames[0].0, OpCode::Close);
    assert_eq!(&frames[0].1[..2], &1008u16.to_be_bytes());
}

#[test]
fn after_eof_the_session_is_aborted() {
    let mut t = Harness::open(config(), 1);
    t.s.handle_eof();
    assert_eq!(t.s.poll_finish(), Some(Finish::Abort));
    assert!(!t.s.wants_read());
}

#[test]
fn the_byte_rate_limit_drops_what_does_not_fit_and_refills() {
    let mut cfg = config();
    cfg.rate = RateLimits {
        messages_per_sec: 0.0,
        burst: 0.0,
        bytes_per_sec: 1000.0,
    };
    cfg.rate_policy = RateLimitPolicy::Drop;
    let mut t = Harness::open(cfg, 1);
    let big = [1u8; 600];
    let mut two = frame(OpCode::Binary, &big);
    two.extend(frame(OpCode::Binary, &big));
    two.extend(frame(OpCode::Binary, b"tiny"));
    t.input(&two, 100);
    assert_eq!(t.h.messages.len(), 2, "600 passes, 600 dropped, 4 fits");
    assert_eq!(t.h.messages[1], b"tiny");
    t.input(&frame(OpCode::Binary, &big), 1_100);
    assert_eq!(t.h.messages.len(), 3, "a second later the bucket is full");
    assert_eq!(t.s.poll_finish(), None);
}

#[test]
fn rate_limits_count_messages_not_frames_or_pings() {
    let mut cfg = config();
    cfg.rate = RateLimits {
        messages_per_sec: 1.0,
        burst: 2.0,
        bytes_per_sec: 0.0,
    };
    let mut t = Harness::open(cfg, 1);
    let mut bytes = Vec::new();
    for i in 0..20u8 {
        bytes.extend(frame(OpCode::Ping, &[i]));
    }
    // One message in ten fragments.
    for i in 0..10 {
        let op = if i == 0 {
            OpCode::Text
        } else {
            OpCode::Continuation
        };
        let mut f = Vec::new();
        encode_client_frame(i == 9, op, b"ab", KEY, &mut f);
        bytes.extend(f);
    }
    bytes.extend(frame(OpCode::Text, b"second"));
    // Offered again after each pong is written, as the worker does.
    let out = t.input_all(&bytes, 10);
    let pongs = out.windows(2).filter(|w| w[0] == 0x8a && w[1] == 1).count();
    assert_eq!(pongs, 20);
    assert_eq!(
        t.h.messages,
        [b"abababababababababab".to_vec(), b"second".to_vec()]
    );
    assert_eq!(t.s.poll_finish(), None);
    t.input(&frame(OpCode::Text, b"third"), 10);
    let frames = t.frames();
    assert_eq!(frames.last().map(|f| f.0), Some(OpCode::Close));
    assert_eq!(&frames.last().unwrap().1[..2], &1008u16.to_be_bytes());
}

#[test]
fn a_peer_that_never_reads_is_dropped_even_if_it_sends_pongs() {
    // Found by the session fuzz target: unsolicited pongs from a peer that
    // read nothing kept it alive while a ping piled up every interval.
    let mut t = Harness::open(config(), 1);
    t.advance(30_001); // ping queued, never written out
    t.input(&frame(OpCode::Pong, b"unsolicited"), 30_500);
    t.advance(40_001);
    assert_eq!(t.s.poll_finish(), Some(Finish::Abort));
    assert_eq!(t.metrics.ping_timeouts.get(), 1);
}

#[test]
fn a_slow_consumer_close_right_after_the_upgrade_keeps_the_101() {
    // Found by the session fuzz target: an echo that did not fit beside the
    // unwritten 101 closed the connection and discarded the 101 with it.
    let mut cfg = config();
    cfg.max_outbound_bytes = 20_000;
    cfg.max_message_bytes = 20_000;
    cfg.max_frame_bytes = 20_000;
    let mut t = Harness::new(cfg, 1);
    let mut bytes = UPGRADE.to_vec();
    bytes.extend(frame(OpCode::Binary, &[3u8; 19_800]));
    bytes.extend(frame(OpCode::Binary, &[4u8; 19_800]));
    let used = t.input(&bytes, 1);
    let used = used + t.input(&bytes[used..], 1);
    assert!(used > UPGRADE.len());
    // Nothing was written in between (the connection writes before judging;
    // this session alone cannot): the second echo makes it a slow consumer.
    let out = t.output();
    assert!(out.starts_with(b"HTTP/1.1 101"), "{:?}", &out[..20]);
    let close = ControlFrame::close(CloseCode::POLICY_VIOLATION, "slow consumer");
    assert!(out.ends_with(close.as_bytes()));
}

// ----- trusted proxies ---------------------------------------------------------

/// A session from the trusted proxy 10.0.0.1 (`header_ms`: PROXY header
/// expected within that time).
fn via_proxy(now: u64, header_ms: Option<u64>) -> Harness {
    let metrics = Arc::new(WorkerMetrics::default());
    let trusted = TrustedProxies::new(vec!["10.0.0.0/8".parse().unwrap()]);
    let ctx = SessionContext::with_proxies(config(), metrics.clone(), trusted);
    Harness {
        s: Session::via_proxy(ctx, now, "10.0.0.1".parse().unwrap(), header_ms),
        h: Echo::default(),
        metrics,
    }
}

fn ip(s: &str) -> std::net::IpAddr {
    s.parse().unwrap()
}

#[test]
fn proxy_header_in_pieces_then_the_handshake_deadline() {
    let mut t = via_proxy(1, Some(1_000));
    assert_eq!(t.s.poll_timeout(), Some(1_001), "header deadline first");
    let header = b"PROXY TCP4 203.0.113.7 10.0.0.1 5000 443\r\n";
    assert_eq!(t.input(&header[..10], 5), 10);
    assert!(t.h.clients.is_empty());
    // The rest of the header and the request in one read: the header's
    // bytes are consumed, the request is offered again.
    let rest = [&header[10..], UPGRADE].concat();
    assert_eq!(t.input(&rest, 6), header.len() - 10);
    assert_eq!(t.h.clients, [ip("203.0.113.7")]);
    assert_eq!(
        t.s.poll_timeout(),
        Some(10_001),
        "handshake deadline, from accept"
    );
    assert_eq!(t.input(UPGRADE, 7), UPGRADE.len());
    assert!(t.s.is_websocket());
    assert_eq!(t.metrics.forwarded(ForwardedSource::ProxyProtocol).get(), 1);
}

#[test]
fn a_proxy_header_naming_a_trusted_hop_leaves_the_client_to_the_request() {
    // HAProxy in front of an inner trusted proxy: the header names the
    // inner proxy, which is not the client and is never counted as one.
    let mut t = via_proxy(1, Some(1_000));
    let header = b"PROXY TCP4 10.1.1.1 10.0.0.1 5000 443\r\n";
    assert_eq!(t.input(header, 2), header.len());
    assert!(t.h.clients.is_empty(), "{:?}", t.h.clients);
    let upgrade = [
        &UPGRADE[..UPGRADE.len() - 2],
        b"X-Forwarded-For: 203.0.113.9\r\n\r\n",
    ]
    .concat();
    assert_eq!(t.input(&upgrade, 3), upgrade.len());
    assert_eq!(t.h.clients, [ip("203.0.113.9")]);
    assert!(t.s.is_websocket());
    // Without forwarding headers the inner proxy is the client after all.
    let mut t = via_proxy(1, Some(1_000));
    t.input(header, 2);
    t.input_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n", 3);
    assert_eq!(t.h.clients, [ip("10.1.1.1")]);
}

#[test]
fn proxy_header_deadline_and_truncation_are_counted() {
    let mut t = via_proxy(1, Some(1_000));
    t.input(b"PROXY TCP4", 2);
    t.s.handle_timeout(1_000);
    assert_eq!(t.s.poll_finish(), None);
    t.s.handle_timeout(1_001);
    assert_eq!(t.s.poll_finish(), Some(Finish::Abort));
    assert!(t.output().is_empty());
    assert_eq!(t.metrics.proxy_refusal(ProxyRefusal::Timeout).get(), 1);
    // Never after the handshake deadline, whatever the header timeout.
    let t = via_proxy(1, Some(60_000));
    assert_eq!(t.s.poll_timeout(), Some(10_001));
    // EOF after part of a header; EOF before any byte is not a header.
    let mut t = via_proxy(1, Some(1_000));
    t.input(b"\r\n\r\n\0", 2);
    t.s.handle_eof();
    assert_eq!(t.metrics.proxy_refusal(ProxyRefusal::Truncated).get(), 1);
    let mut t = via_proxy(1, Some(1_000));
    t.s.handle_eof();
    assert_eq!(t.metrics.proxy_refusal(ProxyRefusal::Truncated).get(), 0);
}

#[test]
fn an_invalid_proxy_header_is_answered_400() {
    let mut t = via_proxy(1, Some(1_000));
    assert_eq!(t.input(UPGRADE, 2), UPGRADE.len());
    let out = t.output();
    assert!(
        out.starts_with(b"HTTP/1.1 400 "),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert!(String::from_utf8_lossy(&out).contains("invalid PROXY protocol header"));
    assert_eq!(t.s.poll_finish(), Some(Finish::Graceful));
    assert!(t.h.clients.is_empty() && t.h.requests.is_empty());
    assert_eq!(
        t.metrics.proxy_refusal(ProxyRefusal::InvalidHeader).get(),
        1
    );
    // Answered, not timed out later.
    t.s.handle_timeout(100_000);
    assert_eq!(t.metrics.proxy_refusal(ProxyRefusal::Timeout).get(), 0);
}

#[test]
fn forwarding_headers_name_each_requests_client() {
    let mut t = via_proxy(1, None);
    let get = |xff: &str| {
        format!("GET /x HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {xff}\r\n\r\n").into_bytes()
    };
    t.input_all(&get("6.6.6.6, 203.0.113.1"), 2);
    t.input_all(&get("203.0.113.2, 10.9.9.9"), 3);
    t.input_all(b"GET /x HTTP/1.1\r\nHost: x\r\n\r\n", 4);
    assert_eq!(
        t.h.clients,
        [ip("203.0.113.1"), ip("203.0.113.2"), ip("10.0.0.1")]
    );
    assert_eq!(t.metrics.forwarded(ForwardedSource::XForwardedFor).get(), 2);
    // An untrusted peer's headers are never read.
    let mut u = Harness::new(config(), 1);
    u.input_all(&get("203.0.113.1"), 2);
    assert!(u.h.clients.is_empty());
    assert_eq!(u.h.requests, ["/x"]);
}

#[test]
fn a_refused_client_gets_the_refusal_and_nothing_else() {
    let mut t = via_proxy(1, None);
    t.h.refuse_client = true;
    let upgrade = [
        &UPGRADE[..UPGRADE.len() - 2],
        b"X-Forwarded-For: 203.0.113.1\r\n\r\n",
    ]
    .concat();
    assert_eq!(t.input(&upgrade, 2), upgrade.len());
    assert!(t.output().starts_with(b"HTTP/1.1 429 "));
    assert!(!t.s.is_websocket());
    assert_eq!(t.s.poll_finish(), Some(Finish::Graceful));
}

// ----- permessage-deflate (receiving) -----------------------------------------

const UPGRADE_DEFLATE: &[u8] = b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\nSec-WebSocket-Version: 13\r\n\r\n";

/// A compressed client frame: raw deflate, tail stripped, RSV1 on the
/// first frame only.
fn deflated_frames(op: OpCode, data: &[u8], parts: usize) -> Vec<u8> {
    use flate2::{Compress, Compression, FlushCompress};
    let mut c = Compress::new(Compression::default(), false);
    let mut z = Vec::with_capacity(data.len() + 1024);
    c.compress_vec(data, &mut z, FlushCompress::Sync).unwrap();
    assert!(z.ends_with(&[0, 0, 0xff, 0xff]));
    z.truncate(z.len() - 4);
    let chunks: Vec<&[u8]> = z.chunks(z.len().div_ceil(parts).max(1)).collect();
    let mut v = Vec::new();
    for (i, chunk) in chunks.iter().enumerate() {
        let start = v.len();
        let op = if i == 0 { op } else { OpCode::Continuation };
        encode_client_frame(i + 1 == chunks.len(), op, chunk, KEY, &mut v);
        if i == 0 {
            v[start] |= 0x40;
        }
    }
    v
}

/// A compressed client frame made of deflate stored blocks of `block`
/// bytes (each: a byte-aligned header byte, LEN, NLEN, the data), ending
/// with the sync flush's empty stored block minus its stripped tail.
fn stored_deflate_frame(op: OpCode, data: &[u8], block: usize) -> Vec<u8> {
    let mut z = Vec::with_capacity(data.len() + data.len() / block * 5 + 8);
    for chunk in data.chunks(block) {
        let len = chunk.len() as u16;
        z.push(0);
        z.extend_from_slice(&len.to_le_bytes());
        z.extend_from_slice(&(!len).to_le_bytes());
        z.extend_from_slice(chunk);
    }
    z.push(0);
    let mut v = Vec::new();
    encode_client_frame(true, op, &z, KEY, &mut v);
    v[0] |= 0x40;
    v
}

fn deflate_config() -> SessionConfig {
    SessionConfig {
        deflate: Some(crate::protocol::deflate::DeflateSettings::default()),
        ..config()
    }
}

fn open_deflate(cfg: SessionConfig) -> (Harness, String) {
    let mut t = Harness::new(cfg, 1);
    assert_eq!(t.input(UPGRADE_DEFLATE, 1), UPGRADE_DEFLATE.len());
    assert!(t.s.is_websocket());
    let head = String::from_utf8(t.output()).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"));
    (t, head)
}

#[test]
fn deflate_negotiated_and_compressed_messages_inflated() {
    let (mut t, head) = open_deflate(deflate_config());
    assert!(head.contains(
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
    ));
    let text = "{\"channel\":\"news\",\"data\":\"hello hello hello\"}".repeat(50);
    let mut bytes = deflated_frames(OpCode::Text, text.as_bytes(), 1);
    bytes.extend(deflated_frames(OpCode::Binary, text.as_bytes(), 4));
    bytes.extend(frame(OpCode::Text, b"plain"));
    assert_eq!(t.input(&bytes, 2), bytes.len());
    assert_eq!(
        t.h.messages,
        vec![
            text.as_bytes().to_vec(),
            text.as_bytes().to_vec(),
            b"plain".to_vec()
        ]
    );
    let metrics = t.metrics.clone();
    let m = &metrics.deflate;
    assert_eq!(m.messages_in.get(), 2);
    assert_eq!(m.inflate_failures.get(), 0);
    // Echo replies go out compressed, per message, when at least
    // compression_min_bytes (64) long; "plain" is shorter and goes plain.
    let frames = t.frames_rsv1();
    assert_eq!(
        frames,
        vec![
            (OpCode::Text, true, text.as_bytes().to_vec()),
            (OpCode::Binary, true, text.as_bytes().to_vec()),
            (OpCode::Text, false, b"plain".to_vec()),
        ]
    );
    assert_eq!(m.messages_out.get(), 2);
    assert_eq!(m.bytes_before.get(), 2 * text.len() as u64);
    assert!(m.bytes_after.get() < m.bytes_before.get() / 10, "{m:?}");
}

#[test]
fn replies_are_compressed_only_for_sessions_that_negotiated_deflate() {
    // Same worker (thread), compression on, one session without an offer.
    let (mut z, _) = open_deflate(deflate_config());
    let mut plain = Harness::open(deflate_config(), 1);
    let text = "hello hello hello hello hello hello hello hello hello hello ".repeat(4);
    for t in [&mut z, &mut plain] {
        let bytes = frame(OpCode::Text, text.as_bytes());
        assert_eq!(t.input(&bytes, 2), bytes.len());
    }
    assert_eq!(
        z.frames_rsv1(),
        vec![(OpCode::Text, true, text.as_bytes().to_vec())]
    );
    assert_eq!(
        plain.frames_rsv1(),
        vec![(OpCode::Text, false, text.as_bytes().to_vec())]
    );
    // compression_min_bytes above the message: plain for everyone.
    let cfg = SessionConfig {
        deflate: Some(crate::protocol::deflate::DeflateSettings {
            min_bytes: text.len() + 1,
            ..Default::default()
        }),
        ..config()
    };
    let (mut z, _) = open_deflate(cfg);
    let bytes = frame(OpCode::Text, text.as_bytes());
    z.input(&bytes, 2);
    assert_eq!(
        z.frames_rsv1(),
        vec![(OpCode::Text, false, text.as_bytes().to_vec())]
    );
}

#[test]
fn a_message_compressed_across_fragments_with_pings_between() {
    // The client's deflate stream split over 5 frames, control frames
    // interleaved, and bytes fed in small pieces.
    let (mut t, _) = open_deflate(deflate_config());
    let text: String = (0..2000).map(|i| format!("item {i}, ")).collect();
    let z = deflated_frames(OpCode::Text, text.as_bytes(), 5);
    // Split the encoded frames back up to put a ping after the first.
    let dec = FrameDecoder::new(FrameRole::Server, 1 << 24).with_allowed_rsv(0x4);
    let mut probe = z.clone();
    let first = dec.decode(&mut probe).unwrap().unwrap().consumed;
    let mut bytes = z[..first].to_vec();
    bytes.extend(frame(OpCode::Ping, b"p"));
    bytes.extend_from_slice(&z[first..]);
    let mut fed = 0;
    let mut pending: Vec<u8> = Vec::new();
    for chunk in bytes.chunks(7) {
        pending.extend_from_slice(chunk);
        let n = t.input(&pending, 2);
        pending.drain(..n);
        fed += chunk.len();
    }
    assert_eq!(fed, bytes.len());
    assert!(pending.is_empty());
    assert_eq!(t.h.messages, vec![text.as_bytes().to_vec()]);
    assert_eq!(t.metrics.deflate.messages_in.get(), 1);
    let frames = t.frames();
    assert_eq!(frames[0], (OpCode::Pong, b"p".to_vec()));
    assert_eq!(frames[1], (OpCode::Text, text.as_bytes().to_vec()));
}

#[test]
fn deflate_not_negotiated_rsv1_is_1002() {
    // Compression off: no answer, RSV1 refused.
    let (mut t, head) = open_deflate(config());
    assert!(!head.contains("Sec-WebSocket-Extensions"));
    let bytes = deflated_frames(OpCode::Text, b"hi", 1);
    t.input(&bytes, 2);
    assert!(t.h.messages.is_empty());
    let frames = t.frames();
    assert_eq!(frames[0].0, OpCode::Close);
    assert_eq!(frames[0].1[..2], 1002u16.to_be_bytes());
    // Compression on but not offered: the same.
    let mut t = Harness::open(deflate_config(), 1);
    t.input(&bytes, 2);
    let frames = t.frames();
    assert_eq!(frames[0].1[..2], 1002u16.to_be_bytes());
}

/// A message of exactly `max_message_bytes` that deflate cannot shrink is
/// a little longer compressed; it is still accepted (a message of the
/// maximum size is always deliverable), and one byte more is still 1009.
#[test]
fn an_incompressible_maximum_size_message_is_accepted_compressed() {
    let max = config().max_message_bytes;
    assert_eq!(max, config().max_frame_bytes);
    // xorshift bytes: incompressible.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let data: Vec<u8> = (0..max)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    // Level 6 at zlib's default memLevel (0.03 % longer), and stored
    // blocks of 128 bytes as zlib at memLevel 1 sends them (about 4 %).
    let zlib = deflated_frames(OpCode::Binary, &data, 1);
    assert!(
        zlib.len() > max + 14,
        "compressed frame longer than the data"
    );
    let stored = stored_deflate_frame(OpCode::Binary, &data, 128);
    assert!(stored.len() > max + max / 32, "about 4 % longer");
    for frame in [zlib, stored] {
        let (mut t, _) = open_deflate(deflate_config());
        t.input(&frame, 2);
        assert_eq!(
            t.h.messages.len(),
            1,
            "{:?}",
            t.frames().first().map(|f| f.0)
        );
        assert!(t.h.messages[0] == data);
    }

    let (mut t, _) = open_deflate(deflate_config());
    let mut over = data.clone();
    over.push(0);
    t.input(&stored_deflate_frame(OpCode::Binary, &over, 128), 2);
    assert!(t.h.messages.is_empty());
    let frames = t.frames();
    assert_eq!(frames[0].0, OpCode::Close);
    assert_eq!(frames[0].1[..2], 1009u16.to_be_bytes());
}

#[test]
fn deflate_bomb_is_closed_with_1009() {
    let cfg = SessionConfig {
        max_message_bytes: 64 << 10,
        ..deflate_config()
    };
    let (mut t, _) = open_deflate(cfg);
    let bomb = deflated_frames(OpCode::Binary, &vec![0u8; 8 << 20], 1);
    assert!(bomb.len() < 64 << 10);
    t.input(&bomb, 2);
    assert!(t.h.messages.is_empty());
    let frames = t.frames();
    assert_eq!(frames[0].0, OpCode::Close);
    assert_eq!(frames[0].1[..2], 1009u16.to_be_bytes());
    assert_eq!(t.metrics.deflate.inflate_failures.get(), 1);
    assert_eq!(t.metrics.deflate.messages_in.get(), 0);
}

#[test]
fn corrupt_compressed_data_is_1007_and_counted() {
    let (mut t, _) = open_deflate(deflate_config());
    // Block type 3 (reserved): invalid deflate.
    let mut bytes = Vec::new();
    encode_client_frame(true, OpCode::Binary, &[0xff, 0xff, 0xff], KEY, &mut bytes);
    bytes[0] |= 0x40;
    t.input(&bytes, 2);
    assert!(t.h.messages.is_empty());
    let frames = t.frames();
    assert_eq!(frames[0].0, OpCode::Close);
    assert_eq!(frames[0].1[..2], 1007u16.to_be_bytes());
    assert_eq!(t.metrics.deflate.inflate_failures.get(), 1);
}

#[test]
fn a_batch_is_compressed_once_and_shared_by_compressing_sessions() {
    let (mut a, _) = open_deflate(deflate_config());
    let (mut b, _) = open_deflate(deflate_config());
    let mut plain = Harness::open(deflate_config(), 1);
    let json = b"{\"data\":\"hello hello hello hello hello hello\"}".repeat(10);
    let frame = SharedFrame::encode(OpCode::Text, &json);
    let mut z = None;
    for t in [&mut a, &mut b, &mut plain] {
        assert_eq!(t.s.send_batch(&frame, &mut z), Delivery::Queued);
    }
    let made = z.clone().flatten().expect("compressed once");
    let wire_a = a.output();
    assert_eq!(wire_a, made.as_bytes());
    assert_eq!(b.output(), made.as_bytes());
    assert_eq!(wire_a[0], 0x80 | 0x40 | 0x1, "FIN, RSV1, text");
    assert!(wire_a.len() < frame.len() / 2);
    assert_eq!(plain.output(), frame.as_bytes());
    // Counted once (one encoding), not once per recipient.
    assert_eq!(a.metrics.deflate.messages_out.get(), 1);
    assert_eq!(b.metrics.deflate.messages_out.get(), 0);
}

#[test]
fn a_request_answered_later_holds_the_next_one_until_then() {
    let mut t = Harness::new(config(), 1);
    t.h.answer_later = true;
    let req = b"POST /body HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\n\r\nhiGET /x HTTP/1.1\r\nHost: a\r\n\r\n";
    let first = req.len() - b"GET /x HTTP/1.1\r\nHost: a\r\n\r\n".len();
    assert_eq!(t.input(req, 2), first, "the second request waits");
    assert!(t.output().is_empty());
    assert!(!t.s.wants_read() && !t.s.is_idle_http());
    assert_eq!(t.input(&req[first..], 3), 0, "nothing read meanwhile");
    assert_eq!(t.h.bodies, [b"hi".to_vec()]);
    assert!(t
        .s
        .answer_later(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n".to_vec(), 4));
    assert!(!t.s.answer_later(b"again".to_vec(), 4), "answered once");
    assert!(t.output().starts_with(b"HTTP/1.1 200 OK"));
    assert!(t.s.wants_read());
    assert_eq!(t.input(&req[first..], 5), req.len() - first);
    assert!(t.output().ends_with(b"/x"));
    // An answer that never comes: the connection ends at the deadline.
    let mut t = Harness::new(config(), 1);
    t.h.answer_later = true;
    t.input(
        b"POST /body HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n",
        10,
    );
    let deadline = t.s.poll_timeout().unwrap();
    t.s.handle_timeout(deadline);
    assert_eq!(t.s.poll_finish(), Some(Finish::Abort));
}
