//! Handshake routing and refusals over raw TCP: status line, key headers,
//! body, and the connection closed after every refusal.

mod common;
use common::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use wsrelay::config::Config;
use wsrelay::protocol::OpCode;

/// A request built from a request line and header lines (each without CRLF).
fn request(line: &str, headers: &[&str]) -> Vec<u8> {
    let mut s = format!("{line}\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

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

/// Header value (case-insensitive name) from a response text.
fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then_some(v.trim_matches([' ', '\r']))
    })
}

fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Sends `req`, expects `status` with `body_part` in the body, and the
/// connection closed by the server afterwards. Returns the response.
#[track_caller]
fn expect_refusal(addr: SocketAddr, req: &[u8], status: u16, body_part: &str) -> String {
    let (resp, closed) = http_exchange(addr, req, Duration::from_secs(5));
    assert_eq!(
        status_of(&resp),
        status,
        "request:\n{}\nresponse:\n{resp}",
        String::from_utf8_lossy(req)
    );
    let line = resp.lines().next().unwrap_or("");
    assert!(line.starts_with(&format!("HTTP/1.1 {status} ")), "{line}");
    assert!(body(&resp).contains(body_part), "{resp}");
    assert_eq!(
        header(&resp, "content-length").and_then(|v| v.parse::<usize>().ok()),
        Some(body(&resp).len()),
        "{resp}"
    );
    assert_eq!(header(&resp, "connection"), Some("close"), "{resp}");
    assert!(
        header(&resp, "sec-websocket-accept").is_none(),
        "refusal must not accept: {resp}"
    );
    assert!(closed, "server must close after a refusal:\n{resp}");
    resp
}

fn config() -> Config {
    Config {
        max_request_head_bytes: 1024,
        max_request_headers: 16,
        ..engine_config()
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
    let (resp, _) = http_exchange(h.local_addr(), &req, Duration::from_millis(300));
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
    let (resp, _) = http_exchange(h.local_addr(), &fits, Duration::from_millis(300));
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
    let (resp, _) = http_exchange(h.local_addr(), &req, Duration::from_millis(300));
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
    let (resp, _) = http_exchange(
        h.local_addr(),
        &upgrade_request(&ok, ""),
        Duration::from_millis(300),
    );
    assert_eq!(status_of(&resp), 101, "{resp}");
    h.shutdown();
    h.join();
}

#[test]
fn bad_role_is_400() {
    let h = start(config());
    let req = upgrade_request("/rooms/r?role=admin", "");
    expect_refusal(h.local_addr(), &req, 400, "role");
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
fn max_connections_reached_is_503_and_frees_on_close() {
    let h = start(Config {
        max_connections: 2,
        ..config()
    });
    let addr = h.local_addr();
    let mut a = RawClient::connect(addr, "/echo");
    let _b = ws_connect(addr, "/rooms/full");
    let resp = expect_refusal(addr, &upgrade_request("/echo", ""), 503, "unavailable");
    assert_eq!(header(&resp, "retry-after"), Some("5"), "{resp}");
    // Plain HTTP is not a WebSocket connection: still served.
    let (resp, _) = http_exchange(
        addr,
        &request(
            "GET /healthz HTTP/1.1",
            &["Host: localhost", "Connection: close"],
        ),
        Duration::from_secs(5),
    );
    assert_eq!(status_of(&resp), 200, "{resp}");
    // The refused attempt did not leak a slot: close one, a new one fits.
    a.send_close(1000, "");
    assert_eq!(a.expect_close(Duration::from_secs(5)).0, 1000);
    assert!(a.wait_eof(Duration::from_secs(5)));
    assert!(eventually(Duration::from_secs(5), || {
        let (resp, _) = http_exchange(
            addr,
            &upgrade_request("/echo", ""),
            Duration::from_millis(300),
        );
        status_of(&resp) == 101
    }));
    h.shutdown();
    h.join();
}

#[test]
fn rejections_are_counted_by_reason() {
    let h = start(config());
    let addr = h.local_addr();
    expect_refusal(
        addr,
        &request("GET /zzz HTTP/1.1", &upgrade_headers(&[], &[])),
        404,
        "not found",
    );
    expect_refusal(
        addr,
        &request(
            "GET /echo HTTP/1.1",
            &upgrade_headers(&["sec-websocket-version"], &["Sec-WebSocket-Version: 8"]),
        ),
        426,
        "",
    );
    let count = |label: &str| -> u64 {
        let i = wsrelay::protocol::RejectReason::ALL
            .iter()
            .position(|r| r.label() == label)
            .unwrap();
        h.shared()
            .metrics
            .iter()
            .map(|m| m.handshake_rejections[i].get())
            .sum()
    };
    assert_eq!(count("not_found"), 1);
    assert_eq!(count("unsupported_version"), 1);
    assert_eq!(count("bad_key"), 0);
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
fn per_ip_cap_is_429() {
    let h = start(Config {
        max_connections_per_ip: 1,
        ..config()
    });
    let addr = h.local_addr();
    let mut a = ws_connect(addr, "/echo");
    expect_refusal(addr, &upgrade_request("/echo", ""), 429, "too many");
    a.close(None).unwrap();
    let _ = ws_expect_close(&mut a, Duration::from_secs(5));
    assert!(ws_wait_closed(&mut a, Duration::from_secs(5)));
    assert!(eventually(Duration::from_secs(5), || {
        let (resp, _) = http_exchange(
            addr,
            &upgrade_request("/echo", ""),
            Duration::from_millis(300),
        );
        status_of(&resp) == 101
    }));
    h.shutdown();
    h.join();
}

#[test]
fn max_rooms_reached_is_503() {
    let h = start(Config {
        max_rooms: 1,
        ..config()
    });
    let addr = h.local_addr();
    let mut a = ws_connect(addr, "/rooms/one");
    // Joining the existing room is fine; a second room is not.
    let _a2 = ws_connect(addr, "/rooms/one");
    expect_refusal(addr, &upgrade_request("/rooms/two", ""), 503, "unavailable");
    // The refused attempt did not keep a connection slot.
    assert!(eventually(Duration::from_secs(2), || h
        .totals()
        .connections_open
        == 2));
    drop(_a2);
    a.close(None).unwrap();
    let _ = ws_expect_close(&mut a, Duration::from_secs(5));
    assert!(eventually(Duration::from_secs(5), || h.rooms_open() == 0));
    let (resp, _) = http_exchange(
        addr,
        &upgrade_request("/rooms/two", ""),
        Duration::from_millis(300),
    );
    assert_eq!(status_of(&resp), 101, "{resp}");
    h.shutdown();
    h.join();
}

#[test]
fn origin_allow_list_is_403_for_others() {
    let h = start(Config {
        allowed_origins: vec!["https://ok.example".into()],
        ..config()
    });
    let addr = h.local_addr();
    expect_refusal(
        addr,
        &upgrade_request("/echo", "Origin: https://evil.example\r\n"),
        403,
        "origin",
    );
    for extra in ["Origin: https://ok.example\r\n", ""] {
        let (resp, _) = http_exchange(
            addr,
            &upgrade_request("/echo", extra),
            Duration::from_millis(300),
        );
        assert_eq!(status_of(&resp), 101, "{extra:?}: {resp}");
    }
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
    let (resp, _) = http_exchange(
        addr,
        &upgrade_request("/echo", "Sec-WebSocket-Protocol: json, chat.v2\r\n"),
        Duration::from_millis(300),
    );
    assert_eq!(status_of(&resp), 101, "{resp}");
    assert_eq!(header(&resp, "sec-websocket-protocol"), Some("chat.v2"));
    // Nothing in common: accepted without a protocol.
    let (resp, _) = http_exchange(
        addr,
        &upgrade_request("/echo", "Sec-WebSocket-Protocol: xml\r\n"),
        Duration::from_millis(300),
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

#[test]
fn upgrade_completed_during_shutdown_is_refused() {
    // A client in the middle of its request head when shutdown begins
    // gets 503 (or the connection closed), never a 101.
    let h = start(Config {
        shutdown_timeout: Duration::from_secs(2),
        ..config()
    });
    let mut s = TcpStream::connect(h.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = upgrade_request("/echo", "");
    s.write_all(&req[..20]).unwrap();
    // Let the server read the first part.
    assert!(eventually(Duration::from_secs(2), || h
        .totals()
        .connections_accepted
        == 1));
    std::thread::sleep(Duration::from_millis(50));
    h.shutdown();
    std::thread::sleep(Duration::from_millis(100));
    let _ = s.write_all(&req[20..]);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.is_empty() || status_of(&text) == 503, "got: {text}");
    h.join();
}
