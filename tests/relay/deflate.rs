//! permessage-deflate over real sockets: negotiation in the 101,
//! compressed messages from a raw client (one frame, several fragments,
//! larger than the read buffer) and their echo compressed back, the bomb
//! answered with 1009, mixed compressed and plain receivers of a room and
//! of a pub/sub channel getting identical messages, the metrics.

use crate::support::*;
use flate2::{Compress, Compression, FlushCompress};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use wsrelay::config::Config;
use wsrelay::protocol::{encode_client_frame, FrameDecoder, OpCode, Role};

/// Raw deflate of `data` from a fresh context, tail stripped (§7.2.1).
fn deflate(data: &[u8]) -> Vec<u8> {
    let mut c = Compress::new(Compression::default(), false);
    let mut z = Vec::with_capacity(data.len() + data.len() / 8 + 1024);
    c.compress_vec(data, &mut z, FlushCompress::Sync).unwrap();
    assert!(z.ends_with(&[0, 0, 0xff, 0xff]));
    z.truncate(z.len() - 4);
    z
}

/// The compressed message as `parts` frames, RSV1 on the first.
fn frames(op: OpCode, z: &[u8], parts: usize) -> Vec<u8> {
    let chunks: Vec<&[u8]> = z.chunks(z.len().div_ceil(parts).max(1)).collect();
    let mut v = Vec::new();
    for (i, c) in chunks.iter().enumerate() {
        let start = v.len();
        let op = if i == 0 { op } else { OpCode::Continuation };
        encode_client_frame(i + 1 == chunks.len(), op, c, [9, 8, 7, 6], &mut v);
        if i == 0 {
            v[start] |= 0x40;
        }
    }
    v
}

/// Connects to /echo offering deflate; returns the stream and the 101 head.
fn connect(addr: std::net::SocketAddr) -> (TcpStream, String) {
    connect_to(addr, "/echo")
}

fn connect_to(addr: std::net::SocketAddr, path: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&upgrade_request(
        path,
        "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    ))
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "101 head");
        head.push(b[0]);
    }
    (s, String::from_utf8(head).unwrap())
}

/// Reads one server frame (opcode, payload).
fn read_frame(s: &mut TcpStream, buf: &mut Vec<u8>) -> (OpCode, Vec<u8>) {
    let dec = FrameDecoder::new(Role::Client, 64 << 20);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(f) = dec.decode(buf).unwrap() {
            let out = (f.header.opcode, buf[f.payload.clone()].to_vec());
            buf.drain(..f.consumed);
            return out;
        }
        assert!(Instant::now() < deadline, "no frame");
        let mut tmp = [0u8; 65536];
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0, "eof");
        buf.extend_from_slice(&tmp[..n]);
    }
}

fn config() -> Config {
    Config {
        compression: true,
        read_buffer_bytes: 4 << 10,
        ..test_config()
    }
}

#[test]
fn compressed_messages_are_inflated_in_one_frame_fragments_and_beyond_the_read_buffer() {
    let h = start(config());
    let (mut s, head) = connect(h.local_addr());
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"),
        "{head}"
    );
    let json = "{\"room\":\"lobby\",\"text\":\"hello everyone\"}".repeat(100);
    // Incompressible: the compressed frame is far larger than the 4 KiB
    // read buffer, which must grow for it.
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let noise: Vec<u8> = (0..200_000)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 32) as u8
        })
        .collect();
    let mut buf = Vec::new();
    for (op, data, parts) in [
        (OpCode::Text, json.as_bytes(), 1),
        (OpCode::Text, json.as_bytes(), 5),
        (OpCode::Binary, &noise[..], 1),
        (OpCode::Binary, &noise[..], 3),
    ] {
        let z = deflate(data);
        s.write_all(&frames(op, &z, parts)).unwrap();
        let (got_op, rsv1, payload) = read_message_op(&mut s, &mut buf);
        assert_eq!(got_op, op);
        assert!(payload == data, "{op:?} in {parts} frame(s)");
        // The echo is compressed when deflate shrinks it (JSON), plain
        // when it would not (noise).
        assert_eq!(rsv1, op == OpCode::Text, "{op:?}");
    }
    let m = scrape(h.local_addr());
    assert_eq!(
        m.get("wsrelay_deflate_messages_in_total", &[]).unwrap(),
        4.0
    );
    assert_eq!(
        m.get("wsrelay_deflate_messages_out_total", &[]).unwrap(),
        2.0
    );
    assert_eq!(
        m.get("wsrelay_deflate_incompressible_total", &[]).unwrap(),
        2.0
    );
    assert_eq!(
        m.get("wsrelay_deflate_bytes_before_total", &[]).unwrap(),
        2.0 * json.len() as f64
    );
    let after = m.get("wsrelay_deflate_bytes_after_total", &[]).unwrap();
    assert!(after > 0.0 && after < json.len() as f64 / 10.0, "{after}");
}

#[test]
fn decompression_bomb_gets_1009() {
    let h = start(Config {
        max_message_bytes: 64 << 10,
        ..config()
    });
    let (mut s, _) = connect(h.local_addr());
    let bomb = deflate(&vec![0u8; 32 << 20]);
    assert!(bomb.len() < 64 << 10, "{}", bomb.len());
    s.write_all(&frames(OpCode::Binary, &bomb, 1)).unwrap();
    let mut buf = Vec::new();
    let (op, payload) = read_frame(&mut s, &mut buf);
    assert_eq!(op, OpCode::Close);
    assert_eq!(payload[..2], 1009u16.to_be_bytes());
    assert_eq!(sum(&h, |m| m.deflate.inflate_failures.get()), 1);
}

#[test]
fn compression_off_answers_no_extension() {
    let h = start(test_config());
    let (_s, head) = connect(h.local_addr());
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(!head.contains("Sec-WebSocket-Extensions"), "{head}");
}

/// Reads one message as a deflate client: RSV1 payloads inflated.
fn read_message(s: &mut TcpStream, buf: &mut Vec<u8>) -> (bool, Vec<u8>) {
    let (_, rsv1, data) = read_message_op(s, buf);
    (rsv1, data)
}

/// Reads one (unfragmented) data message as a deflate client: opcode,
/// whether it was compressed, payload (inflated).
fn read_message_op(s: &mut TcpStream, buf: &mut Vec<u8>) -> (OpCode, bool, Vec<u8>) {
    let dec = FrameDecoder::new(Role::Client, 64 << 20).with_allowed_rsv(0x4);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(f) = dec.decode(buf).unwrap() {
            let payload = buf[f.payload.clone()].to_vec();
            let rsv1 = f.header.rsv & 0x4 != 0;
            let op = f.header.opcode;
            assert!(f.header.fin, "the relay sends whole messages");
            buf.drain(..f.consumed);
            let data = if rsv1 {
                let mut inf = wsrelay::protocol::deflate::Inflater::new();
                let mut out = Vec::new();
                inf.inflate(&payload, &mut out, 64 << 20).unwrap();
                inf.finish(&mut out, 64 << 20).unwrap();
                out
            } else {
                payload
            };
            return (op, rsv1, data);
        }
        assert!(Instant::now() < deadline, "no frame");
        let mut tmp = [0u8; 65536];
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0, "eof");
        buf.extend_from_slice(&tmp[..n]);
    }
}

#[test]
fn mixed_compressed_and_plain_room_members_receive_identical_messages() {
    let h = start(Config {
        compression_min_bytes: 100,
        ..config()
    });
    let addr = h.local_addr();
    // Compressing members on both workers, plain ones too.
    // Until each worker has at least two compressing members (the
    // compressed batch is made once per worker and shared).
    let mut zs: Vec<(TcpStream, Vec<u8>)> = Vec::new();
    let mut per_worker = [0usize; 2];
    for _ in 0..64 {
        if per_worker.iter().all(|&n| n >= 2) {
            break;
        }
        let (s, w) = on_which_worker(&h, || connect_to(addr, "/rooms/mixed").0);
        per_worker[w] += 1;
        zs.push((s, Vec::new()));
    }
    assert!(per_worker.iter().all(|&n| n >= 2), "{per_worker:?}");
    let mut plain: Vec<Ws> = (0..4).map(|_| ws_connect(addr, "/rooms/mixed")).collect();
    let mut publisher = ws_connect(addr, "/rooms/mixed");
    let long = "{\"text\":\"a chatty json message, a chatty json message\"}".repeat(10);
    let messages = [long.clone(), "short".to_string(), long + "!"];
    for m in &messages {
        publisher
            .send(tungstenite::Message::Text(m.clone()))
            .unwrap();
    }
    for (s, buf) in &mut zs {
        for (i, m) in messages.iter().enumerate() {
            let (rsv1, data) = read_message(s, buf);
            assert_eq!(rsv1, i != 1, "short messages go uncompressed");
            assert_eq!(data, m.as_bytes());
        }
    }
    for ws in &mut plain {
        for m in &messages {
            match ws_expect_data(ws) {
                tungstenite::Message::Text(t) => assert_eq!(&t, m),
                other => panic!("{other:?}"),
            }
        }
    }
    // The two long messages were compressed once each for the whole
    // process: the publisher's worker made the encoding and the batch
    // carried it to the other worker.
    assert_eq!(sum(&h, |m| m.deflate.messages_out.get()), 2);

    // A compressing member publishes a message compressed across four
    // frames: every other member gets it whole (compressed or plain as
    // negotiated), the sender nothing (no echo_self).
    let text = (0..3000).map(|i| format!("line {i}; ")).collect::<String>();
    let (sender, rest) = zs.split_first_mut().unwrap();
    sender
        .0
        .write_all(&frames(OpCode::Text, &deflate(text.as_bytes()), 4))
        .unwrap();
    for (s, buf) in rest {
        let (rsv1, data) = read_message(s, buf);
        assert!(rsv1);
        assert!(data == text.as_bytes());
    }
    for ws in &mut plain {
        match ws_expect_data(ws) {
            tungstenite::Message::Text(t) => assert!(t.as_str() == text),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(sum(&h, |m| m.deflate.messages_in.get()), 1);
}

/// Sends a masked text frame.
fn send_text(s: &mut TcpStream, text: &str) {
    let mut v = Vec::new();
    encode_client_frame(true, OpCode::Text, text.as_bytes(), [1, 2, 3, 4], &mut v);
    s.write_all(&v).unwrap();
}

/// Reads protocol messages until one holds the reply to command `id`.
fn await_reply(s: &mut TcpStream, buf: &mut Vec<u8>, id: u32) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "no reply {id}");
        let (_, data) = read_message(s, buf);
        let text = String::from_utf8(data).unwrap();
        for line in text.split('\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_str(line).unwrap();
            if v["id"] == serde_json::json!(id) {
                assert!(v.get("error").is_none(), "{v}");
                return;
            }
        }
    }
}

#[test]
fn mixed_compressed_and_plain_channel_subscribers_receive_identical_pushes() {
    let h = start(Config {
        allow_anonymous_connect_without_token: true,
        allow_subscribe_for_client: true,
        allow_subscribe_for_anonymous: true,
        allow_publish_for_subscriber: true,
        allow_publish_for_anonymous: true,
        compression_min_bytes: 100,
        ..config()
    });
    let addr = h.local_addr();
    // Compressing subscribers, at least two on each worker (the push
    // batch is compressed once per worker and shared there).
    let mut zs: Vec<(TcpStream, Vec<u8>)> = Vec::new();
    let mut per_worker = [0usize; 2];
    for _ in 0..64 {
        if per_worker.iter().all(|&n| n >= 2) {
            break;
        }
        let ((s, head), w) = on_which_worker(&h, || connect_to(addr, "/connection/websocket"));
        assert!(head.contains("permessage-deflate"), "{head}");
        per_worker[w] += 1;
        zs.push((s, Vec::new()));
    }
    assert!(per_worker.iter().all(|&n| n >= 2), "{per_worker:?}");
    for (s, buf) in &mut zs {
        send_text(s, r#"{"id":1,"connect":{}}"#);
        await_reply(s, buf, 1);
        send_text(s, r#"{"id":2,"subscribe":{"channel":"news"}}"#);
        await_reply(s, buf, 2);
    }
    // Plain subscribers (no offer) and a plain publisher.
    let mut plain: Vec<Ws> = (0..3)
        .map(|_| ws_connect(addr, "/connection/websocket"))
        .collect();
    for ws in &mut plain {
        ws.send(tungstenite::Message::text(r#"{"id":1,"connect":{}}"#))
            .unwrap();
        ws.send(tungstenite::Message::text(
            r#"{"id":2,"subscribe":{"channel":"news"}}"#,
        ))
        .unwrap();
        let mut replies = 0;
        while replies < 2 {
            if let tungstenite::Message::Text(t) = ws_expect_data(ws) {
                replies += t.as_str().lines().filter(|l| l.contains("\"id\"")).count();
            }
        }
    }
    let made_before = sum(&h, |m| m.deflate.messages_out.get());
    let long = format!("\"{}\"", "a chatty json message, ".repeat(20));
    let datas = [
        long.clone(),
        "\"short\"".to_string(),
        long.replace('a', "b"),
    ];
    let mut publisher = plain.pop().unwrap();
    for (i, d) in datas.iter().enumerate() {
        let cmd = format!(
            r#"{{"id":{},"publish":{{"channel":"news","data":{d}}}}}"#,
            10 + i
        );
        publisher.send(tungstenite::Message::text(cmd)).unwrap();
    }
    // What a plain subscriber receives, push by push.
    let mut expected: Vec<Vec<u8>> = Vec::new();
    for ws in &mut plain {
        let mut got = Vec::new();
        while got.len() < datas.len() {
            if let tungstenite::Message::Text(t) = ws_expect_data(ws) {
                if t.as_str().contains("\"pub\"") {
                    got.push(t.as_bytes().to_vec());
                }
            }
        }
        if expected.is_empty() {
            expected = got;
        } else {
            assert_eq!(got, expected);
        }
    }
    for (i, d) in datas.iter().enumerate() {
        let push: serde_json::Value = serde_json::from_slice(&expected[i]).unwrap();
        assert_eq!(push["push"]["pub"]["data"].to_string(), *d);
    }
    for (s, buf) in &mut zs {
        for (i, want) in expected.iter().enumerate() {
            let (rsv1, data) = read_message(s, buf);
            assert_eq!(rsv1, i != 1, "short pushes go uncompressed");
            assert_eq!(&data, want);
        }
    }
    // The two long pushes were compressed once each for the whole process
    // (the publisher's worker compressed them and the batch carried that
    // encoding to the other worker), not once per worker or subscriber.
    let made = sum(&h, |m| m.deflate.messages_out.get()) - made_before;
    assert_eq!(made, 2);
}
