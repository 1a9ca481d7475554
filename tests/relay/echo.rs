//! The /echo endpoint over real sockets: payload sizes and types with an
//! independent client (tungstenite), fragmentation, control frames, the
//! close handshake and a first frame sent together with the upgrade, with
//! the raw-bytes client; protocol violations (the close code the server
//! sends, and that it then closes TCP).

use crate::support::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;
use tungstenite::Message;
use wsrelay::config::Config;
use wsrelay::protocol::{encode_client_frame, OpCode};

const SIZES: [usize; 7] = [0, 1, 125, 126, 65535, 65536, 200_000];

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

#[test]
fn echoes_binary_at_boundary_lengths_with_tungstenite() {
    let h = start(test_config());
    let mut ws = ws_connect(h.local_addr(), "/echo");
    for (i, &len) in SIZES.iter().enumerate() {
        let data = pattern(len, i as u8);
        ws.send(Message::Binary(data.clone())).unwrap();
        match ws_expect_data(&mut ws) {
            Message::Binary(got) => {
                assert_eq!(got.len(), len);
                assert!(got == data, "binary payload of {len} bytes differs");
            }
            other => panic!("len {len}: expected binary, got {other:?}"),
        }
    }
    h.shutdown();
    h.join();
}

#[test]
fn echoes_text_at_boundary_lengths_with_tungstenite() {
    let h = start(test_config());
    let mut ws = ws_connect(h.local_addr(), "/echo");
    for &len in &SIZES {
        // Mix multi-byte characters in, keeping the exact byte length.
        let mut s = String::with_capacity(len);
        while s.len() + 3 <= len {
            s.push(if s.len().is_multiple_of(7) {
                '€'
            } else {
                'x'
            });
        }
        while s.len() < len {
            s.push('y');
        }
        assert_eq!(s.len(), len);
        ws.send(Message::Text(s.clone())).unwrap();
        match ws_expect_data(&mut ws) {
            Message::Text(got) => assert!(got == s, "text of {len} bytes differs"),
            other => panic!("len {len}: expected text, got {other:?}"),
        }
    }
    h.shutdown();
    h.join();
}

#[test]
fn many_small_messages_echo_in_order() {
    let h = start(test_config());
    let mut ws = ws_connect(h.local_addr(), "/echo");
    // Write a burst without reading, then read everything back.
    for i in 0..1000 {
        ws.write(if i % 2 == 0 {
            Message::Text(format!("m{i}"))
        } else {
            Message::Binary(format!("m{i}").into_bytes())
        })
        .unwrap();
    }
    ws.flush().unwrap();
    for i in 0..1000 {
        let m = ws_expect_data(&mut ws);
        let want = format!("m{i}");
        match (i % 2, m) {
            (0, Message::Text(t)) => assert_eq!(t, want),
            (1, Message::Binary(b)) => assert_eq!(b, want.as_bytes()),
            (_, m) => panic!("message {i}: {m:?}"),
        }
    }
    h.shutdown();
    h.join();
}

#[test]
fn fragmented_text_with_interleaved_ping_is_echoed_whole() {
    let h = start(test_config());
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    c.send_frame(false, OpCode::Text, b"Hel");
    c.send_frame(true, OpCode::Ping, b"mid");
    c.send_frame(true, OpCode::Continuation, b"lo");
    let pong = c.expect_frame();
    assert_eq!(
        (pong.opcode, pong.fin, pong.payload.as_slice()),
        (OpCode::Pong, true, &b"mid"[..])
    );
    let msg = c.expect_frame();
    assert_eq!(
        (msg.opcode, msg.fin, msg.payload.as_slice()),
        (OpCode::Text, true, &b"Hello"[..])
    );
    // A binary message in many fragments, one of them empty, and a
    // multi-byte character split across text fragments.
    c.send_frame(false, OpCode::Binary, &[1, 2]);
    c.send_frame(false, OpCode::Continuation, &[]);
    c.send_frame(false, OpCode::Continuation, &[3]);
    c.send_frame(true, OpCode::Continuation, &[4, 5]);
    let msg = c.expect_frame();
    assert_eq!(
        (msg.opcode, msg.payload.as_slice()),
        (OpCode::Binary, &[1u8, 2, 3, 4, 5][..])
    );
    let euro = "€".as_bytes();
    c.send_frame(false, OpCode::Text, &euro[..1]);
    c.send_frame(true, OpCode::Continuation, &euro[1..]);
    let msg = c.expect_frame();
    assert_eq!((msg.opcode, msg.payload.as_slice()), (OpCode::Text, euro));
    h.shutdown();
    h.join();
}

#[test]
fn frame_split_across_many_writes_is_reassembled() {
    // The server must not depend on read boundaries: feed one frame a few
    // bytes at a time.
    let h = start(test_config());
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    let payload = pattern(300, 9);
    let mut bytes = Vec::new();
    encode_client_frame(true, OpCode::Binary, &payload, [1, 2, 3, 4], &mut bytes);
    for chunk in bytes.chunks(7) {
        c.send_raw(chunk);
        std::thread::sleep(Duration::from_millis(1));
    }
    let f = c.expect_frame();
    assert_eq!((f.opcode, f.payload), (OpCode::Binary, payload));
    h.shutdown();
    h.join();
}

#[test]
fn ping_gets_pong_with_same_payload_raw() {
    let h = start(test_config());
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    for payload in [&b""[..], b"x", &[7u8; 125][..]] {
        c.send_frame(true, OpCode::Ping, payload);
        let f = c.expect_frame();
        assert_eq!((f.opcode, f.payload.as_slice()), (OpCode::Pong, payload));
    }
    // An unsolicited pong is ignored (no answer, connection stays usable).
    c.send_frame(true, OpCode::Pong, b"unsolicited");
    c.send_text("still here");
    let f = c.expect_frame();
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OpCode::Text, &b"still here"[..])
    );
    h.shutdown();
    h.join();
}

#[test]
fn ping_gets_pong_with_same_payload_tungstenite() {
    let h = start(test_config());
    let mut ws = ws_connect(h.local_addr(), "/echo");
    ws.send(Message::Ping(b"are you there".to_vec())).unwrap();
    loop {
        match ws_read(&mut ws, Duration::from_secs(5)) {
            Some(Message::Pong(p)) => {
                assert_eq!(p, b"are you there");
                break;
            }
            Some(Message::Ping(_)) => continue,
            other => panic!("expected pong, got {other:?}"),
        }
    }
    h.shutdown();
    h.join();
}

#[test]
fn close_is_echoed_then_tcp_closed_raw() {
    let h = start(test_config());
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    c.send_close(1000, "bye");
    let f = c.expect_frame();
    assert_eq!(f.opcode, OpCode::Close);
    assert_eq!(f.close_code().map(|(code, _)| code), Some(1000));
    assert!(c.wait_eof(Duration::from_secs(3)), "server keeps TCP open");
    // Close with an application code is echoed with that code.
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    c.send_close(4321, "");
    assert_eq!(c.expect_close(Duration::from_secs(5)).0, 4321);
    assert!(c.wait_eof(Duration::from_secs(3)));
    // An empty close is answered with an empty close.
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    c.send_frame(true, OpCode::Close, b"");
    let f = c.expect_frame();
    assert_eq!((f.opcode, f.payload.len()), (OpCode::Close, 0));
    assert!(c.wait_eof(Duration::from_secs(3)));
    let received_1000: u64 = h
        .shared()
        .metrics
        .iter()
        .map(|m| m.close_received[wsrelay::metrics::close_code_index(1000)].get())
        .sum();
    assert_eq!(received_1000, 1);
    h.shutdown();
    h.join();
}

#[test]
fn close_is_echoed_then_tcp_closed_tungstenite() {
    let h = start(test_config());
    let mut ws = ws_connect(h.local_addr(), "/echo");
    ws.close(Some(tungstenite::protocol::CloseFrame {
        code: tungstenite::protocol::frame::coding::CloseCode::Normal,
        reason: "bye".into(),
    }))
    .unwrap();
    let (code, _) = ws_expect_close(&mut ws, Duration::from_secs(5));
    assert_eq!(code, 1000);
    assert!(ws_wait_closed(&mut ws, Duration::from_secs(3)));
    h.shutdown();
    h.join();
}

#[test]
fn data_after_close_is_ignored() {
    // After the client's close, further frames are not answered.
    let h = start(test_config());
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    let mut bytes = Vec::new();
    encode_client_frame(true, OpCode::Close, &[0x03, 0xe8], [9, 9, 9, 9], &mut bytes);
    encode_client_frame(true, OpCode::Text, b"late", [1, 1, 1, 1], &mut bytes);
    c.send_raw(&bytes);
    let f = c.expect_frame();
    assert_eq!(f.opcode, OpCode::Close);
    assert!(
        c.wait_eof(Duration::from_secs(3)),
        "only EOF after the close"
    );
    h.shutdown();
    h.join();
}

#[test]
fn first_frame_in_same_write_as_upgrade_is_processed() {
    let h = start(test_config());
    let mut s = TcpStream::connect(h.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut bytes = upgrade_request("/echo", "");
    encode_client_frame(
        true,
        OpCode::Text,
        b"early",
        [0xa1, 0xb2, 0xc3, 0xd4],
        &mut bytes,
    );
    encode_client_frame(true, OpCode::Ping, b"p", [5, 6, 7, 8], &mut bytes);
    s.write_all(&bytes).unwrap();
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    // 101 head + text frame (2 + 5) + pong frame (2 + 1).
    let head_end = loop {
        if let Some(p) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            if got.len() >= p + 4 + 7 + 3 {
                break p + 4;
            }
        }
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0, "EOF; got {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&tmp[..n]);
    };
    let head = String::from_utf8_lossy(&got[..head_end]);
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    // Unmasked server frames: FIN|text, len 5, "early"; FIN|pong, len 1, "p".
    assert_eq!(
        &got[head_end..],
        &[&[0x81u8, 5][..], b"early", &[0x8a, 1], b"p"].concat()[..]
    );
    h.shutdown();
    h.join();
}

#[test]
fn partial_first_frame_in_upgrade_write_completes_later() {
    let h = start(test_config());
    let mut c = RawClient::connect_tcp(h.local_addr());
    let mut frame = Vec::new();
    encode_client_frame(
        true,
        OpCode::Binary,
        &pattern(1000, 3),
        [1, 2, 3, 4],
        &mut frame,
    );
    let mut bytes = upgrade_request("/echo", "");
    bytes.extend_from_slice(&frame[..10]);
    c.send_raw(&bytes);
    // Read the 101 head byte by byte so no frame bytes are consumed here.
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(c.stream.read(&mut b).unwrap(), 1);
        head.push(b[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    std::thread::sleep(Duration::from_millis(50));
    c.send_raw(&frame[10..]);
    let f = c.expect_frame();
    assert_eq!((f.opcode, f.payload), (OpCode::Binary, pattern(1000, 3)));
    h.shutdown();
    h.join();
}

#[test]
fn large_fragmented_message_with_pings_is_echoed_whole() {
    // Fragments larger than the server's 64 KiB read buffer, a ping
    // between them, reassembled into one 150 KiB message.
    let h = start(test_config());
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    let data = pattern(150_000, 42);
    let parts: Vec<&[u8]> = data.chunks(50_000).collect();
    c.send_frame(false, OpCode::Binary, parts[0]);
    c.send_frame(false, OpCode::Continuation, parts[1]);
    c.send_frame(true, OpCode::Ping, b"between");
    c.send_frame(true, OpCode::Continuation, parts[2]);
    let pong = c.expect_frame();
    assert_eq!(
        (pong.opcode, pong.payload.as_slice()),
        (OpCode::Pong, &b"between"[..])
    );
    let f = c.expect_frame();
    assert_eq!(f.opcode, OpCode::Binary);
    assert!(f.fin);
    assert!(f.payload == data, "reassembled payload differs");
    h.shutdown();
    h.join();
}

#[test]
fn close_sent_with_the_upgrade_request_is_answered() {
    let h = start(test_config());
    let mut c = RawClient::connect_tcp(h.local_addr());
    let mut bytes = upgrade_request("/echo", "");
    encode_client_frame(true, OpCode::Close, &[0x03, 0xe8], [3, 1, 4, 1], &mut bytes);
    c.send_raw(&bytes);
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut got = Vec::new();
    let mut tmp = [0u8; 1024];
    loop {
        match c.stream.read(&mut tmp) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&tmp[..n]),
            Err(e) => panic!("no EOF after the close exchange: {e}"),
        }
    }
    let p = got
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("101 head")
        + 4;
    assert!(got.starts_with(b"HTTP/1.1 101 "));
    // Close frame with code 1000, then EOF.
    assert_eq!(&got[p..p + 4], &[0x88, 2, 0x03, 0xe8]);
    assert_eq!(got.len(), p + 4);
    h.shutdown();
    h.join();
}

// ----- protocol violations ---------------------------------------------------------

#[test]
fn unmasked_frame_gets_1002() {
    let h = start(test_config());
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    c.send_raw(&[0x81, 0x02, b'h', b'i']);
    let reason = expect_failed(&mut c, 1002);
    assert!(reason.contains("mask"), "{reason}");
    h.shutdown();
    h.join();
}

#[test]
fn reserved_opcodes_get_1002() {
    let h = start(test_config());
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
    let h = start(test_config());
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    // RSV1 set (no extension was negotiated).
    c.send_raw(&[0xc1, 0x80, 1, 2, 3, 4]);
    expect_failed(&mut c, 1002);
    h.shutdown();
    h.join();
}

#[test]
fn invalid_utf8_text_gets_1007() {
    let h = start(test_config());
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
    assert_eq!(close_codes_sent(&h, 1007), 2);
    h.shutdown();
    h.join();
}

#[test]
fn invalid_close_frames_get_1002() {
    let h = start(test_config());
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
    let h = start(test_config());
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
    let h = start(test_config());
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
    let h = start(test_config());
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
    let h = start(test_config());
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

/// A client that pipelines far more than `max_outbound_bytes` of messages
/// in one go while reading promptly gets every echo: replies piling up
/// within one read budget are written before the bound judges them.
#[test]
fn pipelined_echoes_beyond_the_outbound_bound_are_not_a_slow_consumer() {
    let h = start(Config {
        max_outbound_bytes: 64 << 10,
        ..test_config()
    });
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    let mut bytes = Vec::new();
    let msg = [7u8; 1000];
    for _ in 0..1000 {
        encode_client_frame(true, OpCode::Binary, &msg, [1, 2, 3, 4], &mut bytes);
    }
    let mut writer = c.stream.try_clone().unwrap();
    let sender = std::thread::spawn(move || writer.write_all(&bytes).is_ok());
    for i in 0..1000 {
        let f = c.expect_frame();
        assert_eq!(
            (f.opcode, f.payload.len()),
            (OpCode::Binary, 1000),
            "echo {i}: {:?}",
            f.close_code()
        );
    }
    assert!(sender.join().unwrap());
    h.shutdown();
    h.join();
}
