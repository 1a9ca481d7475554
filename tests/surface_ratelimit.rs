//! Production surface: per-connection rate limits over real sockets.

mod common;
use common::*;
use std::time::Duration;
use wsrelay::config::{Config, RateLimitPolicy};
use wsrelay::protocol::{encode_client_frame, MaskRng, OpCode};

const WAIT: Duration = Duration::from_secs(5);

fn limited(messages: u32, burst: u32, bytes: usize, policy: RateLimitPolicy) -> Config {
    Config {
        shutdown_timeout: Duration::from_millis(500),
        rate_limit_messages: messages,
        rate_limit_burst: burst,
        rate_limit_bytes: bytes,
        rate_limit_policy: policy,
        ..test_config()
    }
}

/// `n` masked text frames "m0", "m1", ... in one buffer (one write, so
/// they arrive together).
fn burst_of(n: usize, payload_len: usize) -> Vec<u8> {
    let mut rng = MaskRng::new();
    let mut out = Vec::new();
    for i in 0..n {
        let mut p = format!("m{i}").into_bytes();
        p.resize(payload_len.max(p.len()), b'.');
        encode_client_frame(true, OpCode::Text, &p, rng.mask_key(), &mut out);
    }
    out
}

/// Data frames received until `quiet` passes with nothing new; returns
/// them and the close frame if one came.
fn drain(c: &mut RawClient, quiet: Duration) -> (Vec<Frame>, Option<(u16, String)>) {
    let mut data = Vec::new();
    loop {
        match c.read_frame(quiet) {
            Read_::Frame(f) if f.opcode == OpCode::Close => {
                return (data, f.close_code());
            }
            Read_::Frame(f) if f.opcode == OpCode::Ping => continue,
            Read_::Frame(f) => data.push(f),
            Read_::Timeout | Read_::Eof => return (data, None),
        }
    }
}

#[test]
fn message_rate_limit_closes_with_1008() {
    let h = start(limited(5, 5, 0, RateLimitPolicy::Close));
    let addr = h.local_addr();
    let mut c = RawClient::connect(addr, "/echo");
    c.send_raw(&burst_of(20, 10));
    let (echoes, close) = drain(&mut c, Duration::from_secs(2));
    assert_eq!(close, Some((1008, "rate limit".to_string())));
    // The burst went through, in order; nothing after the excess message.
    assert!(
        echoes.len() >= 5 && echoes.len() < 20,
        "{} echoes",
        echoes.len()
    );
    for (i, f) in echoes.iter().enumerate() {
        assert!(f.payload.starts_with(format!("m{i}.").as_bytes()));
    }
    // The relay waits for our close answer, then closes TCP.
    c.send_close(1008, "");
    assert!(c.wait_eof(WAIT));
    let m = scrape(addr);
    assert_eq!(m.value("wsrelay_rate_limited_total"), 1.0);
    assert_eq!(
        m.get("wsrelay_close_codes_sent_total", &[("code", "1008")]),
        Some(1.0)
    );
    assert_eq!(m.value("wsrelay_messages_out_total"), echoes.len() as f64);
    h.shutdown();
    h.join();
}

#[test]
fn message_rate_limit_drop_policy_keeps_the_connection() {
    let h = start(limited(5, 5, 0, RateLimitPolicy::Drop));
    let addr = h.local_addr();
    let mut c = RawClient::connect(addr, "/echo");
    c.send_raw(&burst_of(20, 10));
    let (echoes, close) = drain(&mut c, Duration::from_millis(700));
    assert_eq!(close, None, "drop policy must not close");
    let n = echoes.len();
    assert!((5..20).contains(&n), "{n} echoes");
    let m = scrape(addr);
    let excess = (20 - n) as f64;
    assert_eq!(m.value("wsrelay_rate_limited_total"), excess);
    assert_eq!(m.value("wsrelay_dropped_messages_total"), excess);
    assert_eq!(m.value("wsrelay_connections_open"), 1.0);
    // Tokens come back: after a pause, messages pass again.
    std::thread::sleep(Duration::from_millis(1200));
    c.send_text("later");
    let f = c.expect_frame();
    assert_eq!(f.payload, b"later");
    h.shutdown();
    h.join();
}

#[test]
fn burst_defaults_to_the_rate() {
    // rate_limit_burst = 0: the bucket holds rate_limit_messages tokens.
    let h = start(limited(3, 0, 0, RateLimitPolicy::Drop));
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    c.send_raw(&burst_of(10, 4));
    let (echoes, close) = drain(&mut c, Duration::from_millis(700));
    assert_eq!(close, None);
    assert!((3..10).contains(&echoes.len()), "{}", echoes.len());
    h.shutdown();
    h.join();
}

#[test]
fn byte_rate_limit_refuses_the_second_600_byte_message() {
    let h = start(limited(0, 0, 1000, RateLimitPolicy::Close));
    let addr = h.local_addr();
    let mut c = RawClient::connect(addr, "/echo");
    c.send_raw(&burst_of(2, 600));
    let (echoes, close) = drain(&mut c, Duration::from_secs(2));
    assert_eq!(echoes.len(), 1);
    assert_eq!(echoes[0].payload.len(), 600);
    assert_eq!(close, Some((1008, "rate limit".to_string())));
    h.shutdown();
    h.join();
}

#[test]
fn byte_rate_limit_drop_policy_refills() {
    let h = start(limited(0, 0, 1000, RateLimitPolicy::Drop));
    let addr = h.local_addr();
    let mut c = RawClient::connect(addr, "/echo");
    c.send_raw(&burst_of(2, 600));
    let (echoes, close) = drain(&mut c, Duration::from_millis(500));
    assert_eq!((echoes.len(), close), (1, None));
    let m = scrape(addr);
    assert_eq!(m.value("wsrelay_rate_limited_total"), 1.0);
    assert_eq!(m.value("wsrelay_dropped_messages_total"), 1.0);
    // Small messages still fit in what is left.
    c.send_text("tiny");
    assert_eq!(c.expect_frame().payload, b"tiny");
    // A second later the bucket is full again.
    std::thread::sleep(Duration::from_millis(1100));
    c.send_raw(&burst_of(1, 600));
    assert_eq!(c.expect_frame().payload.len(), 600);
    h.shutdown();
    h.join();
}

#[test]
fn rate_limit_counts_messages_not_frames_or_pings() {
    // One token a second, two in the bucket.
    let h = start(limited(1, 2, 0, RateLimitPolicy::Close));
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    // Twenty pings are not data messages.
    for i in 0..20u8 {
        c.send_frame(true, OpCode::Ping, &[i]);
    }
    for i in 0..20u8 {
        let f = c.expect_frame();
        assert_eq!((f.opcode, f.payload.as_slice()), (OpCode::Pong, &[i][..]));
    }
    // One message in ten fragments is one message.
    c.send_frame(false, OpCode::Text, b"a");
    for _ in 0..8 {
        c.send_frame(false, OpCode::Continuation, b"b");
    }
    c.send_frame(true, OpCode::Continuation, b"c");
    let f = c.expect_frame();
    assert_eq!(f.payload, b"abbbbbbbbc");
    c.send_text("second");
    assert_eq!(c.expect_frame().payload, b"second");
    // The third one exceeds the burst of two.
    c.send_text("third");
    assert_eq!(c.expect_close(WAIT), (1008, "rate limit".to_string()));
    h.shutdown();
    h.join();
}

#[test]
fn room_publishers_are_rate_limited_too() {
    let h = start(limited(5, 5, 0, RateLimitPolicy::Drop));
    let addr = h.local_addr();
    let mut publisher = RawClient::connect(addr, "/rooms/r?role=pub");
    let mut sub = RawClient::connect(addr, "/rooms/r?role=sub");
    publisher.send_raw(&burst_of(20, 10));
    let (got, close) = drain(&mut sub, Duration::from_millis(700));
    assert_eq!(close, None);
    let n = got.len();
    assert!((5..20).contains(&n), "{n} relayed");
    let m = scrape(addr);
    assert_eq!(m.value("wsrelay_rate_limited_total"), (20 - n) as f64);
    assert_eq!(m.value("wsrelay_fanout_deliveries_total"), n as f64);
    h.shutdown();
    h.join();
}
