//! Handshake routing and refusals over raw TCP: status line, key headers,
//! body, and the connection closed after every refusal; plain HTTP on the
//! WebSocket port. (Admission caps and origins: `admission`.)

use crate::support::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};
use wsrelay::config::Config;
use wsrelay::protocol::OpCode;

/// The headers of a valid upgrade, minus any whose name starts with one of
/// `without` (case-insensitive), plus `extra`.
fn upgrade_headers<'a>(without: &[&str], extra: &[&'a str]) -> Vec<&'a str> {
    let base: [&'a str; 5] = [
        "Host: localhost",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13",
    ];
    let mut v: Vec<&str> = base
        .into_iter()
        .filter(|h| {
            !without
                .iter()
                .any(|w| h.to_ascii_lowercase().starts_with(&w.to_ascii_lowercase()))
        })
        .collect();
    v.extend_from_slice(extra);
    v
}

fn config() -> Config {
    Config {
        max_request_head_bytes: 1024,
        max_request_headers: 16,
        ..test_config()
    }
}

#[test]
fn requests_with_bare_lf_line_endings_are_answered_not_left_hanging() {
    // RFC 9112 2.2: a recipient may accept a bare LF as a line terminator.
    // The relay does, so such a client gets its answer at once instead of
    // waiting for the handshake timeout.
    let h = start(config());
    let addr = h.local_addr();
    let read_head = |s: &mut TcpStream| {
        s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut buf = Vec::new();
        let mut tmp = [0u8; 1024];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut tmp) {
                Ok(n) if n > 0 => buf.extend_from_slice(&tmp[..n]),
                other => panic!("no complete response: {other:?} after {buf:?}"),
            }
        }
        String::from_utf8_lossy(&buf).into_owned()
    };
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\nHost: localhost\n\n")
        .unwrap();
    let resp = read_head(&mut s);
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    let mut s = TcpStream::connect(addr).unwrap();
    let upgrade = String::from_utf8(upgrade_request("/echo", ""))
        .unwrap()
        .replace("\r\n", "\n");
    s.write_all(upgrade.as_bytes()).unwrap();
    let resp = read_head(&mut s);
    assert!(
        resp.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{resp}"
    );
    h.shutdown();
    h.join();
}

#[test]
fn valid_upgrade_gets_101_with_rfc_accept_value() {
    let h = start(config());
    let addr = h.local_addr();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&upgrade_request("/echo", "")).unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut tmp).unwrap();
        assert!(n > 0, "EOF before the 101 response");
        buf.extend_from_slice(&tmp[..n]);
    }
    let resp = String::from_utf8_lossy(&buf).into_owned();
    assert!(
        resp.starts_with("HTTP/1.1 101 Switching Protocols\r\n"),
        "{resp}"
    );
    assert_eq!(
        header(&resp, "sec-websocket-accept"),
        Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
    );
    assert!(header(&resp, "upgrade")
        .unwrap()
        .eq_ignore_ascii_case("websocket"));
    assert!(header(&resp, "connection")
        .unwrap()
        .eq_ignore_ascii_case("upgrade"));
    // No subprotocol configured: none is echoed.
    assert!(header(&resp, "sec-websocket-protocol").is_none(), "{resp}");
    h.shutdown();
    h.join();
}

#[test]
fn method_other_than_get_is_405() {
    let h = start(config());
    let addr = h.local_addr();
    for method in ["POST", "PUT", "HEAD"] {
        let req = request(
            &format!("{method} /echo HTTP/1.1"),
            &upgrade_headers(&[], &[]),
        );
        let resp = expect_refusal(addr, &req, 405, "requires GET");
        assert_eq!(header(&resp, "allow"), Some("GET"), "{method}: {resp}");
    }
    h.shutdown();
    h.join();
}

#[test]
fn http_1_0_upgrade_is_400() {
    let h = start(config());
    let req = request("GET /echo HTTP/1.0", &upgrade_headers(&[], &[]));
    expect_refusal(h.local_addr(), &req, 400, "HTTP/1.1");
    h.shutdown();
    h.join();
}

#[test]
fn missing_host_is_400() {
    let h = start(config());
    let req = request("GET /echo HTTP/1.1", &upgrade_headers(&["host"], &[]));
    expect_refusal(h.local_addr(), &req, 400, "Host");
    // An empty Host is as good as none.
    let req = request(
        "GET /echo HTTP/1.1",
        &upgrade_headers(&["host"], &["Host: "]),
    );
    expect_refusal(h.local_addr(), &req, 400, "Host");
    h.shutdown();
    h.join();
}

#[test]
fn upgrade_header_without_websocket_is_400() {
    let h = start(config());
    let req = request(
        "GET /echo HTTP/1.1",
        &upgrade_headers(&["upgrade"], &["Upgrade: h2c"]),
    );
    expect_refusal(h.local_addr(), &req, 400, "Upgrade header");
    h.shutdown();
    h.join();
}

#[test]
fn connection_without_upgrade_is_400() {
    let h = start(config());
    let req = request(
        "GET /echo HTTP/1.1",
        &upgrade_headers(&["connection"], &["Connection: keep-alive"]),
    );
    expect_refusal(h.local_addr(), &req, 400, "Connection header");
    // Tokens are matched in a list: "keep-alive, Upgrade" is fine.
    let req = request(
        "GET /echo HTTP/1.1",
        &upgrade_headers(&["connection"], &["Connection: keep-alive, Upgrade"]),
    );
    let resp = response_head(h.local_addr(), &req);
    assert_eq!(status_of(&resp), 101, "{resp}");
    h.shutdown();
    h.join();
}

#[test]
fn version_8_is_426_with_supported_version_header() {
    let h = start(config());
    let req = request(
        "GET /echo HTTP/1.1",
        &upgrade_headers(&["sec-websocket-version"], &["Sec-WebSocket-Version: 8"]),
    );
    let resp = expect_refusal(h.local_addr(), &req, 426, "Sec-WebSocket-Version");
    assert_eq!(header(&resp, "sec-websocket-version"), Some("13"), "{resp}");
    // Missing version: same answer.
    let req = request(
        "GET /echo HTTP/1.1",
        &upgrade_headers(&["sec-websocket-version"], &[]),
    );
    let resp = expect_refusal(h.local_addr(), &req, 426, "Sec-WebSocket-Version");
    assert_eq!(header(&resp, "sec-websocket-version"), Some("13"), "{resp}");
    h.shutdown();
    h.join();
}

#[test]
fn bad_key_is_400() {
    let h = start(config());
    for key in [
        "Sec-WebSocket-Key: abc",
        // 15 bytes base64-encoded.
        "Sec-WebSocket-Key: MTIzNDU2Nzg5MDEyMzQ1",
        // 17 bytes.
        "Sec-WebSocket-Key: MTIzNDU2Nzg5MDEyMzQ1Njc=",
        "Sec-WebSocket-Key: !!!!not*base64!!!!!!====",
    ] {
        let req = request(
            "GET /echo HTTP/1.1",
            &upgrade_headers(&["sec-websocket-key"], &[key]),
        );
        expect_refusal(h.local_addr(), &req, 400, "Sec-WebSocket-Key");
    }
    let req = request(
        "GET /echo HTTP/1.1",
        &upgrade_headers(&["sec-websocket-key"], &[]),
    );
    expect_refusal(h.local_addr(), &req, 400, "Sec-WebSocket-Key");
    h.shutdown();
    h.join();
}

#[test]
fn head_over_limit_is_431() {
    let h = start(config()); // max_request_head_bytes = 1024
    let pad = format!("X-Pad: {}", "a".repeat(1100));
    let req = request("GET /echo HTTP/1.1", &upgrade_headers(&[], &[&pad]));
    assert!(req.len() > 1024);
    expect_refusal(h.local_addr(), &req, 431, "too large");
    // Over the limit without ever finishing the head: refused as soon as
    // the limit is reached, not at the handshake deadline.
    let partial = format!(
        "GET /echo HTTP/1.1\r\nHost: x\r\nX-Pad: {}",
        "b".repeat(1100)
    );
    let t = Instant::now();
    expect_refusal(h.local_addr(), partial.as_bytes(), 431, "too large");
    assert!(t.elapsed() < Duration::from_secs(5));
    // A head just under the limit is fine.
    let fits = request("GET /echo HTTP/1.1", &upgrade_headers(&[], &[]));
    let resp = response_head(h.local_addr(), &fits);
    assert_eq!(status_of(&resp), 101, "{resp}");
    h.shutdown();
    h.join();
}

#[test]
fn too_many_headers_is_431() {
    let h = start(config()); // max_request_headers = 16
    let extra: Vec<String> = (0..12).map(|i| format!("X-H{i}: v")).collect();
    let extra: Vec<&str> = extra.iter().map(|s| s.as_str()).collect();
    let req = request("GET /echo HTTP/1.1", &upgrade_headers(&[], &extra));
    expect_refusal(h.local_addr(), &req, 431, "too many header");
    // 5 + 11 = 16 headers: at the limit, accepted.
    let req = request("GET /echo HTTP/1.1", &upgrade_headers(&[], &extra[..11]));
    let resp = response_head(h.local_addr(), &req);
    assert_eq!(status_of(&resp), 101, "{resp}");
    h.shutdown();
    h.join();
}

#[test]
fn unknown_path_is_404() {
    let h = start(config());
    for path in ["/nope", "/echo/x", "/", "/rooms"] {
        let req = request(&format!("GET {path} HTTP/1.1"), &upgrade_headers(&[], &[]));
        expect_refusal(h.local_addr(), &req, 404, "not found");
    }
    h.shutdown();
    h.join();
}

#[test]
fn bad_room_names_are_400() {
    let h = start(config());
    let long = format!("/rooms/{}", "r".repeat(129));
    for path in [long.as_str(), "/rooms/a%20b", "/rooms/", "/rooms/a/b"] {
        let req = request(&format!("GET {path} HTTP/1.1"), &upgrade_headers(&[], &[]));
        expect_refusal(h.local_addr(), &req, 400, "room name");
    }
    // 128 bytes is the default maximum: accepted.
    let ok = format!("/rooms/{}", "r".repeat(128));
    let resp = response_head(h.local_addr(), &upgrade_request(&ok, ""));
    assert_eq!(status_of(&resp), 101, "{resp}");
    h.shutdown();
    h.join();
}

#[test]
fn plain_get_on_ws_route_is_426() {
    let h = start(config());
    for path in ["/echo", "/rooms/lobby"] {
        let req = request(&format!("GET {path} HTTP/1.1"), &["Host: localhost"]);
        let resp = expect_refusal(h.local_addr(), &req, 426, "websocket");
        assert_eq!(header(&resp, "upgrade"), Some("websocket"), "{resp}");
        assert_eq!(header(&resp, "sec-websocket-version"), Some("13"), "{resp}");
    }
    h.shutdown();
    h.join();
}

#[test]
fn plain_http_unknown_path_is_404() {
    let h = start(config());
    let req = request(
        "GET /nothing-here HTTP/1.1",
        &["Host: localhost", "Connection: close"],
    );
    expect_refusal(h.local_addr(), &req, 404, "not found");
    h.shutdown();
    h.join();
}

#[test]
fn healthz_is_200_ok_and_keeps_alive_unless_asked_to_close() {
    let h = start(config());
    let addr = h.local_addr();
    // Connection: close -> answer, then EOF.
    let req = request(
        "GET /healthz HTTP/1.1",
        &["Host: localhost", "Connection: close"],
    );
    let (resp, closed) = http_exchange(addr, &req, Duration::from_secs(5));
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert_eq!(body(&resp), "ok\n");
    assert_eq!(header(&resp, "connection"), Some("close"));
    assert!(closed);

    // HTTP/1.1 default keep-alive: two requests on one connection.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = request("GET /healthz HTTP/1.1", &["Host: localhost"]);
    for _ in 0..2 {
        s.write_all(&req).unwrap();
        let mut buf = Vec::new();
        let mut tmp = [0u8; 1024];
        while !String::from_utf8_lossy(&buf).ends_with("ok\n") {
            let n = s.read(&mut tmp).unwrap();
            assert!(n > 0, "keep-alive connection closed early");
            buf.extend_from_slice(&tmp[..n]);
        }
        let resp = String::from_utf8_lossy(&buf).into_owned();
        assert_eq!(status_of(&resp), 200, "{resp}");
        assert_eq!(header(&resp, "connection"), Some("keep-alive"));
    }
    h.shutdown();
    h.join();
}

#[test]
fn pipelined_requests_after_a_refusal_are_not_served() {
    // A refusal ends the connection even if more requests follow in the
    // same write (no request smuggling past a refusal).
    let h = start(config());
    let mut bytes = request("GET /nope HTTP/1.1", &upgrade_headers(&[], &[]));
    bytes.extend_from_slice(&upgrade_request("/echo", ""));
    let (resp, closed) = http_exchange(h.local_addr(), &bytes, Duration::from_secs(5));
    assert_eq!(status_of(&resp), 404, "{resp}");
    assert!(!resp.contains("101"), "{resp}");
    assert!(closed);
    h.shutdown();
    h.join();
}

#[test]
fn healthz_and_upgrade_on_one_keep_alive_connection() {
    // Plain HTTP on a keep-alive connection, then the same connection
    // upgrades and echoes.
    let h = start(config());
    let addr = h.local_addr();
    let mut c = RawClient::connect_tcp(addr);
    let mut bytes = request("GET /healthz HTTP/1.1", &["Host: localhost"]);
    bytes.extend_from_slice(&upgrade_request("/echo", ""));
    c.send_raw(&bytes);
    let mut got = Vec::new();
    let mut tmp = [0u8; 4096];
    c.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    while !String::from_utf8_lossy(&got).contains("Sec-WebSocket-Accept") {
        let n = c.stream.read(&mut tmp).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&tmp[..n]);
    }
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200 "), "{text}");
    assert!(text.contains("HTTP/1.1 101 "), "{text}");
    while !got.ends_with(b"\r\n\r\n") {
        let n = c.stream.read(&mut tmp).unwrap();
        assert!(n > 0);
        got.extend_from_slice(&tmp[..n]);
    }
    c.send_text("after");
    let f = c.expect_frame();
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OpCode::Text, &b"after"[..])
    );
    h.shutdown();
    h.join();
}

#[test]
fn subprotocol_is_chosen_in_server_preference_order() {
    let h = start(Config {
        subprotocols: vec!["chat.v2".into(), "json".into()],
        ..config()
    });
    let addr = h.local_addr();
    let resp = response_head(
        addr,
        &upgrade_request("/echo", "Sec-WebSocket-Protocol: json, chat.v2\r\n"),
    );
    assert_eq!(status_of(&resp), 101, "{resp}");
    assert_eq!(header(&resp, "sec-websocket-protocol"), Some("chat.v2"));
    // Nothing in common: accepted without a protocol.
    let resp = response_head(
        addr,
        &upgrade_request("/echo", "Sec-WebSocket-Protocol: xml\r\n"),
    );
    assert_eq!(status_of(&resp), 101, "{resp}");
    assert!(header(&resp, "sec-websocket-protocol").is_none(), "{resp}");
    // An independent client sees the negotiated protocol too.
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(format!("ws://{addr}/echo"))
            .unwrap();
    req.headers_mut()
        .insert("Sec-WebSocket-Protocol", "json".parse().unwrap());
    let stream = TcpStream::connect(addr).unwrap();
    let (_ws, resp) = tungstenite::client(req, stream).unwrap();
    assert_eq!(
        resp.headers()
            .get("sec-websocket-protocol")
            .map(|v| v.to_str().unwrap()),
        Some("json")
    );
    h.shutdown();
    h.join();
}
