//! Size limits and protocol violations over the wire: the close code the
//! server sends, and that it then closes TCP.

mod common;
use common::*;
use std::time::Duration;
use wsrelay::config::Config;
use wsrelay::metrics::close_code_index;
use wsrelay::protocol::{encode_client_frame, OpCode};

fn sent(h: &wsrelay::server::ServerHandle, code: u16) -> u64 {
    h.shared()
        .metrics
        .iter()
        .map(|m| m.close_sent[close_code_index(code)].get())
        .sum()
}

/// Expects a close frame with `code`, then EOF.
#[track_caller]
fn expect_failed(c: &mut RawClient, code: u16) -> String {
    let (got, reason) = c.expect_close(Duration::from_secs(5));
    assert_eq!(got, code, "reason: {reason}");
    assert!(
        c.wait_eof(Duration::from_secs(3)),
        "TCP must be closed after a {code} failure"
    );
    reason
}

fn limits_config() -> Config {
    Config {
        max_frame_bytes: 1000,
        max_message_bytes: 1000,
        ..engine_config()
    }
}

#[test]
fn oversize_frame_header_alone_gets_1009() {
    let h = start(limits_config());
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    // FIN|binary, MASK|126, length 5000, mask key; no payload follows.
    c.send_raw(&[0x82, 0xfe, 0x13, 0x88, 1, 2, 3, 4]);
    let reason = expect_failed(&mut c, 1009);
    assert!(reason.contains("too large"), "{reason}");
    // Even without the mask key: the length alone decides.
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    c.send_raw(&[0x81, 0xff, 0, 0, 0, 1, 0, 0, 0, 0]);
    expect_failed(&mut c, 1009);
    assert_eq!(sent(&h, 1009), 2);
    h.shutdown();
    h.join();
}

#[test]
fn frame_at_the_limit_is_accepted() {
    let h = start(limits_config());
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    let data = vec![0x5a; 1000];
    c.send_binary(&data);
    let f = c.expect_frame();
    assert_eq!((f.opcode, f.payload), (OpCode::Binary, data));
    c.send_binary(&[0x5a; 1001]);
    expect_failed(&mut c, 1009);
    h.shutdown();
    h.join();
}

#[test]
fn oversize_message_across_fragments_gets_1009() {
    let h = start(Config {
        max_frame_bytes: 1000,
        max_message_bytes: 1000,
        ..engine_config()
    });
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    // Each fragment is within max_frame_bytes; together they are not.
    c.send_frame(false, OpCode::Binary, &[1; 400]);
    c.send_frame(false, OpCode::Continuation, &[2; 400]);
    c.send_frame(true, OpCode::Continuation, &[3; 400]);
    let reason = expect_failed(&mut c, 1009);
    assert!(reason.contains("too large"), "{reason}");
    // Exactly max_message_bytes across fragments is fine.
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    c.send_frame(false, OpCode::Text, &[b'a'; 500]);
    c.send_frame(true, OpCode::Continuation, &[b'b'; 500]);
    let f = c.expect_frame();
    assert_eq!(f.payload.len(), 1000);
    assert_eq!(f.opcode, OpCode::Text);
    h.shutdown();
    h.join();
}

#[test]
fn oversize_with_tungstenite_gets_1009() {
    let h = start(limits_config());
    let mut ws = ws_connect(h.local_addr(), "/echo");
    ws.send(tungstenite::Message::Binary(vec![0; 4000]))
        .unwrap();
    let (code, _) = ws_expect_close(&mut ws, Duration::from_secs(5));
    assert_eq!(code, 1009);
    h.shutdown();
    h.join();
}

#[test]
fn unmasked_frame_gets_1002() {
    let h = start(engine_config());
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    c.send_raw(&[0x81, 0x02, b'h', b'i']);
    let reason = expect_failed(&mut c, 1002);
    assert!(reason.contains("mask"), "{reason}");
    h.shutdown();
    h.join();
}

#[test]
fn reserved_opcodes_get_1002() {
    let h = start(engine_config());
    for op in [0x3u8, 0x7, 0xb, 0xf] {
        let mut c = RawClient::connect(h.local_addr(), "/echo");
        c.send_raw(&[0x80 | op, 0x80, 1, 2, 3, 4]);
        let reason = expect_failed(&mut c, 1002);
        assert!(reason.contains("opcode"), "op {op:#x}: {reason}");
    }
    h.shutdown();
    h.join();
}

#[test]
fn reserved_bits_get_1002() {
    let h = start(engine_config());
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    // RSV1 set (no extension was negotiated).
    c.send_raw(&[0xc1, 0x80, 1, 2, 3, 4]);
    expect_failed(&mut c, 1002);
    h.shutdown();
    h.join();
}

#[test]
fn invalid_utf8_text_gets_1007() {
    let h = start(engine_config());
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    c.send_frame(true, OpCode::Text, &[b'o', b'k', 0xff, 0xfe]);
    expect_failed(&mut c, 1007);
    // Invalid across fragments (a truncated sequence at the end).
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    c.send_frame(false, OpCode::Text, "€".as_bytes().get(..2).unwrap());
    c.send_frame(true, OpCode::Continuation, b"x");
    expect_failed(&mut c, 1007);
    // Binary messages are not UTF-8 checked.
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    c.send_binary(&[0xff, 0xfe]);
    assert_eq!(c.expect_frame().payload, vec![0xff, 0xfe]);
    assert_eq!(sent(&h, 1007), 2);
    h.shutdown();
    h.join();
}

#[test]
fn invalid_close_frames_get_1002() {
    let h = start(engine_config());
    // Codes that must never be on the wire, and a 1-byte close payload.
    let cases: [&[u8]; 5] = [
        &[0x03, 0xed], // 1005
        &[0x03, 0xee], // 1006
        &[0x03, 0xe7], // 999
        &[0x13, 0x88], // 5000
        &[0x03],       // too short
    ];
    for payload in cases {
        let mut c = RawClient::connect(h.local_addr(), "/echo");
        c.send_frame(true, OpCode::Close, payload);
        expect_failed(&mut c, 1002);
    }
    // A close reason that is not UTF-8.
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    c.send_frame(true, OpCode::Close, &[0x03, 0xe8, 0xff]);
    let (code, _) = c.expect_close(Duration::from_secs(5));
    assert!(code == 1007 || code == 1002, "{code}");
    assert!(c.wait_eof(Duration::from_secs(3)));
    h.shutdown();
    h.join();
}

#[test]
fn control_frame_violations_get_1002() {
    let h = start(engine_config());
    // Ping with a 126-byte payload (control frames max 125).
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    let mut bytes = Vec::new();
    encode_client_frame(true, OpCode::Ping, &[0; 126], [1, 2, 3, 4], &mut bytes);
    c.send_raw(&bytes);
    expect_failed(&mut c, 1002);
    // Fragmented ping (FIN clear).
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    c.send_frame(false, OpCode::Ping, b"x");
    expect_failed(&mut c, 1002);
    h.shutdown();
    h.join();
}

#[test]
fn fragmentation_violations_get_1002() {
    let h = start(engine_config());
    // Continuation with no message started.
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    c.send_frame(true, OpCode::Continuation, b"x");
    expect_failed(&mut c, 1002);
    // A new data frame while a fragmented message is open.
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    c.send_frame(false, OpCode::Text, b"a");
    c.send_frame(true, OpCode::Text, b"b");
    expect_failed(&mut c, 1002);
    h.shutdown();
    h.join();
}

#[test]
fn valid_data_before_a_violation_is_still_echoed() {
    let h = start(engine_config());
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    let mut bytes = Vec::new();
    encode_client_frame(true, OpCode::Text, b"good", [1, 2, 3, 4], &mut bytes);
    bytes.extend_from_slice(&[0x81, 0x03, b'b', b'a', b'd']); // unmasked
    c.send_raw(&bytes);
    let f = c.expect_frame();
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OpCode::Text, &b"good"[..])
    );
    expect_failed(&mut c, 1002);
    h.shutdown();
    h.join();
}

#[test]
fn failing_one_connection_leaves_others_alone() {
    let h = start(engine_config());
    let mut good = ws_connect(h.local_addr(), "/echo");
    let mut bad = RawClient::connect(h.local_addr(), "/echo");
    bad.send_raw(&[0x81, 0x00]);
    expect_failed(&mut bad, 1002);
    good.send(tungstenite::Message::Text("fine".into()))
        .unwrap();
    assert_eq!(
        ws_expect_data(&mut good),
        tungstenite::Message::Text("fine".into())
    );
    h.shutdown();
    h.join();
}
