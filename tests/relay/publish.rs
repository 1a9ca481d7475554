//! `POST /publish/{room}` over real sockets.

use crate::support::*;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use tungstenite::Message;
use wsrelay::config::Config;
use wsrelay::protocol::OpCode;

const TOKEN: &str = "s3cret-token";

fn publish_config() -> Config {
    Config {
        publish_token: TOKEN.to_string(),
        max_message_bytes: 1024,
        ..test_config()
    }
}

fn publish_request(room: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut r = format!(
        "POST /publish/{room} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {TOKEN}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    r.extend_from_slice(body);
    r
}

/// (local_workers, remote_workers) from a 202 answer.
fn worker_counts(r: &HttpResponse) -> (u64, u64) {
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(r.header("content-type"), Some("application/json"));
    let text = r.text();
    let num = |key: &str| -> u64 {
        let pat = format!("\"{key}\":");
        let at = text.find(&pat).unwrap_or_else(|| panic!("{key} in {text}")) + pat.len();
        text[at..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect::<String>()
            .parse()
            .unwrap_or_else(|_| panic!("{key} number in {text}"))
    };
    (num("local_workers"), num("remote_workers"))
}

/// A tungstenite member (an independent client implementation).
fn tung_member(addr: SocketAddr, path: &str) -> tungstenite::WebSocket<TcpStream> {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let (ws, resp) = tungstenite::client(format!("ws://{addr}{path}"), stream).unwrap();
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

fn tung_next_data(ws: &mut tungstenite::WebSocket<TcpStream>) -> Message {
    loop {
        match ws.read().expect("a message within 5 s") {
            Message::Ping(_) | Message::Pong(_) => continue,
            m => return m,
        }
    }
}

#[test]
fn publish_without_configured_token_is_404() {
    let h = start(Config {
        publish_token: String::new(),
        ..publish_config()
    });
    let mut conn = HttpConn::connect(h.local_addr());
    let r = conn.request(&publish_request("r", "application/json", b"{}"));
    assert_eq!(r.status, 404);
    h.shutdown();
    h.join();
}

#[test]
fn publish_requires_the_bearer_token() {
    let h = start(publish_config());
    let addr = h.local_addr();
    let mut member = RawClient::connect(addr, "/rooms/r");
    for auth in [
        "",
        "Authorization: Bearer wrong\r\n",
        "Authorization: Bearer \r\n",
        &format!("Authorization: Basic {TOKEN}\r\n"),
        &format!("Authorization: Bearer {TOKEN}x\r\n"),
    ] {
        let req = format!(
            "POST /publish/r HTTP/1.1\r\nHost: x\r\n{auth}Content-Type: text/plain\r\nContent-Length: 2\r\n\r\nhi"
        );
        let r = HttpConn::connect(addr).request(req.as_bytes());
        assert_eq!(r.status, 401, "auth header {auth:?}");
        assert_eq!(r.header("www-authenticate"), Some("Bearer"));
    }
    // Unauthorized publishes deliver nothing: the member's first message
    // is the authorized one published after them (an accepted publish is
    // handed out before its 202 is written), and only it was delivered.
    let r = HttpConn::connect(addr).request(&publish_request("r", "text/plain", b"ok"));
    assert_eq!(worker_counts(&r).0 + worker_counts(&r).1, 1);
    assert_eq!(member.expect_frame().payload, b"ok");
    assert_eq!(
        scrape_until(addr, |m| m.value("wsrelay_fanout_deliveries_total") >= 1.0)
            .value("wsrelay_fanout_deliveries_total"),
        1.0
    );
    h.shutdown();
    h.join();
}

#[test]
fn publish_length_and_method_rules() {
    let h = start(publish_config());
    let addr = h.local_addr();
    let auth = format!("Authorization: Bearer {TOKEN}\r\n");
    let cases: Vec<(String, Vec<u8>, u16)> = vec![
        (
            "no Content-Length".into(),
            format!("POST /publish/r HTTP/1.1\r\nHost: x\r\n{auth}\r\n").into_bytes(),
            411,
        ),
        (
            "chunked".into(),
            format!("POST /publish/r HTTP/1.1\r\nHost: x\r\n{auth}Transfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\n\r\n").into_bytes(),
            411,
        ),
        (
            "over max_message_bytes".into(),
            publish_request("r", "application/octet-stream", &[1u8; 1025]),
            413,
        ),
        (
            "bad Content-Length".into(),
            format!("POST /publish/r HTTP/1.1\r\nHost: x\r\n{auth}Content-Length: 1x\r\n\r\n").into_bytes(),
            400,
        ),
        (
            "GET".into(),
            format!("GET /publish/r HTTP/1.1\r\nHost: x\r\n{auth}\r\n").into_bytes(),
            405,
        ),
        (
            "bad room name".into(),
            publish_request("a%20b", "text/plain", b"x"),
            400,
        ),
    ];
    for (what, req, status) in cases {
        let mut conn = HttpConn::connect(addr);
        let r = conn.request(&req);
        assert_eq!(r.status, status, "{what}: {}", r.text());
    }
    // Exactly max_message_bytes is fine.
    let r = HttpConn::connect(addr).request(&publish_request(
        "r",
        "application/octet-stream",
        &[1u8; 1024],
    ));
    assert_eq!(r.status, 202);
    let m = scrape(addr);
    assert_eq!(m.value("wsrelay_publish_requests_total"), 1.0);
    h.shutdown();
    h.join();
}

#[test]
fn publish_invalid_utf8_for_text_type_is_400() {
    let h = start(publish_config());
    let addr = h.local_addr();
    let mut member = RawClient::connect(addr, "/rooms/r");
    let mut conn = HttpConn::connect(addr);
    for ct in [
        "text/plain",
        "text/plain; charset=utf-8",
        "application/json",
    ] {
        let r = conn.request(&publish_request("r", ct, b"ab\xff\xfecd"));
        assert_eq!(r.status, 400, "{ct}: {}", r.text());
    }
    // The same bytes as octet-stream are a binary message. The 400s kept the
    // connection usable, and delivered nothing: the binary message is the
    // member's first.
    let r = conn.request(&publish_request(
        "r",
        "application/octet-stream",
        b"ab\xff\xfecd",
    ));
    assert_eq!(worker_counts(&r).0 + worker_counts(&r).1, 1);
    let f = member.expect_frame();
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OpCode::Binary, &b"ab\xff\xfecd"[..])
    );
    h.shutdown();
    h.join();
}

#[test]
fn publish_reaches_every_member_on_both_workers_as_text_or_binary() {
    let h = start(publish_config());
    let addr = h.local_addr();
    let mut members = connect_on_every_worker(&h, "/rooms/news", 1);
    let mut tung = tung_member(addr, "/rooms/news");
    let mut bystander = RawClient::connect(addr, "/rooms/other");

    let json = br#"{"headline":"caf\u00e9","n":1}"#;
    let r = HttpConn::connect(addr).request(&publish_request("news", "application/json", json));
    assert_eq!(worker_counts(&r), (1, 1), "{}", r.text());
    assert!(r.text().contains("\"room\":\"news\""), "{}", r.text());
    for (w, c) in members.iter_mut() {
        let f = c.expect_frame();
        assert_eq!(f.opcode, OpCode::Text, "member on worker {w}");
        assert_eq!(f.payload, json);
    }
    assert_eq!(
        tung_next_data(&mut tung),
        Message::Text(String::from_utf8(json.to_vec()).unwrap())
    );

    let bin: Vec<u8> = (0..=255u8).collect();
    let r =
        HttpConn::connect(addr).request(&publish_request("news", "application/octet-stream", &bin));
    assert_eq!(worker_counts(&r), (1, 1));
    for (_, c) in members.iter_mut() {
        let f = c.expect_frame();
        assert_eq!((f.opcode, &f.payload), (OpCode::Binary, &bin));
    }
    assert_eq!(tung_next_data(&mut tung), Message::Binary(bin.clone()));

    // Text types other than JSON: text/* and +json are text, others binary.
    let r =
        HttpConn::connect(addr).request(&publish_request("news", "application/ld+json", b"[1]"));
    assert_eq!(r.status, 202);
    assert_eq!(tung_next_data(&mut tung), Message::Text("[1]".into()));
    let r = HttpConn::connect(addr).request(&publish_request("news", "image/png", b"png"));
    assert_eq!(r.status, 202);
    assert_eq!(tung_next_data(&mut tung), Message::Binary(b"png".to_vec()));
    for (_, c) in members.iter_mut() {
        assert_eq!(c.expect_frame().opcode, OpCode::Text);
        assert_eq!(c.expect_frame().opcode, OpCode::Binary);
    }

    // An unknown room has no workers.
    let r = HttpConn::connect(addr).request(&publish_request("nobody", "text/plain", b"x"));
    assert_eq!(worker_counts(&r), (0, 0));
    // Other rooms saw nothing: the bystander's first message is the one
    // published to its own room after all of the above.
    let r = HttpConn::connect(addr).request(&publish_request("other", "text/plain", b"own"));
    assert_eq!(r.status, 202);
    assert_eq!(bystander.expect_frame().payload, b"own");

    let m = scrape(addr);
    assert_eq!(m.value("wsrelay_publish_requests_total"), 6.0);
    // Every delivery to a member is counted (members + tungstenite, 4
    // messages; the bystander, 1).
    let receivers = members.len() as f64 + 1.0;
    assert_eq!(
        m.value("wsrelay_fanout_deliveries_total"),
        4.0 * receivers + 1.0
    );
    h.shutdown();
    h.join();
}

#[test]
fn publish_with_members_on_one_worker_only_reports_that_worker() {
    let h = start(publish_config());
    let addr = h.local_addr();
    let mut member = RawClient::connect(addr, "/rooms/solo");
    let mut local = 0;
    let mut remote = 0;
    // Publishes land on either worker (local or remote view of the one
    // worker holding the member); each answer names exactly one worker.
    for i in 0..20 {
        let body = format!("m{i}");
        let r = HttpConn::connect(addr).request(&publish_request(
            "solo",
            "text/plain",
            body.as_bytes(),
        ));
        let (l, rm) = worker_counts(&r);
        assert_eq!(l + rm, 1, "{}", r.text());
        local += l;
        remote += rm;
        assert_eq!(member.expect_frame().payload, body.as_bytes());
    }
    assert_eq!(local + remote, 20);
    h.shutdown();
    h.join();
}

#[test]
fn several_publishes_on_one_keep_alive_connection() {
    let h = start(publish_config());
    let addr = h.local_addr();
    let mut member = RawClient::connect(addr, "/rooms/ka");
    let mut conn = HttpConn::connect(addr);
    for i in 0..3 {
        let body = format!("{{\"seq\":{i}}}");
        let r = conn.request(&publish_request("ka", "application/json", body.as_bytes()));
        assert_eq!(r.status, 202);
        assert_eq!(r.header("connection"), Some("keep-alive"));
        let f = member.expect_frame();
        assert_eq!(
            (f.opcode, f.payload.as_slice()),
            (OpCode::Text, body.as_bytes())
        );
    }
    // Pipelined: three requests in one write, three answers in order.
    let mut all = Vec::new();
    for i in 3..6 {
        all.extend(publish_request(
            "ka",
            "text/plain",
            format!("p{i}").as_bytes(),
        ));
    }
    conn.send(&all);
    for i in 3..6 {
        let r = conn.read_response(WAIT).expect("pipelined answer");
        assert_eq!(r.status, 202);
        assert_eq!(member.expect_frame().payload, format!("p{i}").as_bytes());
    }
    // A healthz on the same connection still works afterwards.
    let r = conn.request(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    h.shutdown();
    h.join();
}

#[test]
fn publish_body_split_across_writes() {
    let h = start(publish_config());
    let addr = h.local_addr();
    let mut member = RawClient::connect(addr, "/rooms/split");
    let body: Vec<u8> = b"0123456789".repeat(90);
    let req = publish_request("split", "text/plain", &body);
    let head_end = req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let mut conn = HttpConn::connect(addr);
    // The head in two pieces, then the body in four.
    let cuts = [
        0,
        20,
        head_end,
        head_end + 1,
        head_end + 300,
        head_end + 899,
        req.len(),
    ];
    // (The pauses only make separate reads likely; nothing depends on them.)
    for pair in cuts.windows(2) {
        if pair[1] == req.len() {
            assert!(
                conn.read_response(QUIET).is_none(),
                "no answer before the whole body arrived"
            );
        }
        conn.send(&req[pair[0]..pair[1]]);
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = conn.read_response(WAIT).expect("answer");
    assert_eq!(r.status, 202);
    let f = member.expect_frame();
    assert_eq!((f.opcode, f.payload.len()), (OpCode::Text, body.len()));
    assert_eq!(f.payload, body);
    // And the connection is ready for another one.
    let r = conn.request(&publish_request("split", "text/plain", b"next"));
    assert_eq!(r.status, 202);
    assert_eq!(member.expect_frame().payload, b"next");
    h.shutdown();
    h.join();
}
