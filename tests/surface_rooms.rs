//! Production surface: room member roles (`?role=sub|pub`) and membership
//! bookkeeping over real sockets.

mod common;
use common::*;
use std::time::Duration;
use wsrelay::config::Config;
use wsrelay::protocol::OpCode;

const WAIT: Duration = Duration::from_secs(5);
const QUIET: Duration = Duration::from_millis(300);

fn surface_config() -> Config {
    Config {
        shutdown_timeout: Duration::from_millis(500),
        publish_token: "t".to_string(),
        ..test_config()
    }
}

fn assert_silent(c: &mut RawClient, who: &str) {
    match c.read_frame(QUIET) {
        Read_::Timeout => {}
        other => panic!("{who} should receive nothing, got {other:?}"),
    }
}

fn expect_text(c: &mut RawClient, text: &str) {
    let f = c.expect_frame();
    assert_eq!(
        (f.opcode, String::from_utf8_lossy(&f.payload).into_owned()),
        (OpCode::Text, text.to_string())
    );
}

fn http_publish(addr: std::net::SocketAddr, room: &str, body: &str) -> u16 {
    HttpConn::connect(addr)
        .request(
            format!(
                "POST /publish/{room} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
            .as_bytes(),
        )
        .status
}

#[test]
fn subscriber_receives_but_may_not_publish() {
    let h = start(surface_config());
    let addr = h.local_addr();
    let mut both = RawClient::connect(addr, "/rooms/r");
    let mut subs = connect_on_every_worker(&h, "/rooms/r?role=sub", 1);
    both.send_text("from both");
    for (_, s) in subs.iter_mut() {
        expect_text(s, "from both");
    }
    assert_eq!(http_publish(addr, "r", "from http"), 202);
    expect_text(&mut both, "from http");
    for (_, s) in subs.iter_mut() {
        expect_text(s, "from http");
    }
    // Control frames are fine for a subscriber.
    let (_, s0) = &mut subs[0];
    s0.send_frame(true, OpCode::Ping, b"p");
    let f = s0.expect_frame();
    assert_eq!((f.opcode, f.payload.as_slice()), (OpCode::Pong, &b"p"[..]));
    // A data message is not.
    s0.send_text("let me talk");
    assert_eq!(
        s0.expect_close(WAIT),
        (1008, "read-only member".to_string())
    );
    s0.send_close(1008, "");
    assert!(s0.wait_eof(WAIT));
    // Nobody got the refused message.
    assert_silent(&mut both, "the full member");
    for (_, s) in subs.iter_mut().skip(1) {
        assert_silent(s, "another subscriber");
    }
    let m = scrape(addr);
    assert_eq!(
        m.get("wsrelay_close_codes_sent_total", &[("code", "1008")]),
        Some(1.0)
    );
    // The others are still in the room.
    both.send_text("still there");
    for (_, s) in subs.iter_mut().skip(1) {
        expect_text(s, "still there");
    }
    h.shutdown();
    h.join();
}

#[test]
fn publisher_publishes_but_does_not_receive() {
    let h = start(surface_config());
    let addr = h.local_addr();
    let mut pubs = connect_on_every_worker(&h, "/rooms/r?role=pub", 1);
    let mut both = RawClient::connect(addr, "/rooms/r");
    let mut subs = connect_on_every_worker(&h, "/rooms/r?role=sub", 1);
    for (w, p) in pubs.iter_mut() {
        let text = format!("from pub on worker {w}");
        p.send_text(&text);
        expect_text(&mut both, &text);
        for (_, s) in subs.iter_mut() {
            expect_text(s, &text);
        }
    }
    both.send_text("from both");
    assert_eq!(http_publish(addr, "r", "from http"), 202);
    for (_, s) in subs.iter_mut() {
        expect_text(s, "from both");
        expect_text(s, "from http");
    }
    expect_text(&mut both, "from http");
    for (w, p) in pubs.iter_mut() {
        assert_silent(p, &format!("publisher on worker {w}"));
    }
    h.shutdown();
    h.join();
}

#[test]
fn role_query_parsing() {
    let h = start(surface_config());
    let addr = h.local_addr();
    for q in [
        "role=bogus",
        "role=SUB",
        "role=admin&x=1",
        "x=1&role=publisher",
    ] {
        let (status, _) = upgrade_status(addr, &format!("/rooms/r?{q}"), "");
        assert_eq!(status, 400, "?{q}");
    }
    let mut open = Vec::new();
    for q in [
        "role=sub",
        "role=pub",
        "role=both",
        "role=",
        "x=1&role=sub",
        "",
    ] {
        let (status, s) = upgrade_status(addr, &format!("/rooms/r?{q}"), "");
        assert_eq!(status, 101, "?{q}");
        open.push(s);
    }
    let m = scrape(addr);
    assert_eq!(
        m.get(
            "wsrelay_handshake_rejections_total",
            &[("reason", "bad_role"), ("status", "400")]
        ),
        Some(4.0)
    );
    assert_eq!(m.value("wsrelay_rooms_open"), 1.0);
    h.shutdown();
    h.join();
}

#[test]
fn publish_only_room_exists_until_its_publisher_leaves() {
    let h = start(surface_config());
    let addr = h.local_addr();
    let mut p = RawClient::connect(addr, "/rooms/lonely?role=pub");
    assert_eq!(scrape(addr).value("wsrelay_rooms_open"), 1.0);
    p.send_text("anyone?");
    // Only once the relay has handled it may the subscriber join (else
    // the message may legitimately reach the new member).
    assert!(eventually(WAIT, || h.totals().messages_in >= 1));
    // (It is counted just before the end of the loop iteration that
    // hands it out; give that iteration time to finish.)
    std::thread::sleep(Duration::from_millis(50));
    let mut s = RawClient::connect(addr, "/rooms/lonely?role=sub");
    p.send_text("hello sub");
    expect_text(&mut s, "hello sub");
    s.send_close(1000, "");
    assert_eq!(s.expect_close(WAIT).0, 1000);
    p.send_close(1000, "");
    assert_eq!(p.expect_close(WAIT).0, 1000);
    assert!(eventually(WAIT, || scrape(addr)
        .value("wsrelay_rooms_open")
        == 0.0));
    h.shutdown();
    h.join();
}

/// Members leaving in any order must not disturb the others' delivery
/// (receivers are swap-removed; the moved member's slot must follow).
#[test]
fn receivers_keep_receiving_after_others_leave_in_any_order() {
    let h = start(Config {
        workers: 1,
        ..surface_config()
    });
    let addr = h.local_addr();
    let mut p = RawClient::connect(addr, "/rooms/r?role=pub");
    let mut members: Vec<Option<RawClient>> = (0..8)
        .map(|i| {
            let role = if i % 2 == 0 { "" } else { "?role=sub" };
            Some(RawClient::connect(addr, &format!("/rooms/r{role}")))
        })
        .collect();
    let mut expected_open = 9.0;
    let mut round = 0;
    for leave in [0usize, 3, 7, 1, 5] {
        let mut c = members[leave].take().unwrap();
        if leave % 2 == 0 {
            // Abrupt TCP close for some.
            drop(c);
        } else {
            c.send_close(1000, "");
            assert_eq!(c.expect_close(WAIT).0, 1000);
        }
        expected_open -= 1.0;
        assert!(eventually(WAIT, || scrape(addr)
            .value("wsrelay_connections_open")
            == expected_open));
        round += 1;
        let text = format!("round {round}");
        p.send_text(&text);
        for (i, m) in members.iter_mut().enumerate() {
            if let Some(m) = m {
                let f = m.expect_frame();
                assert_eq!(f.payload, text.as_bytes(), "member {i} after {leave} left");
            }
        }
    }
    // Connections that reuse the departed members' slots (another room,
    // echo) get nothing of this room; a newcomer to it gets everything once.
    let mut outsiders: Vec<RawClient> = (0..3)
        .map(|_| RawClient::connect(addr, "/rooms/elsewhere"))
        .chain((0..3).map(|_| RawClient::connect(addr, "/echo")))
        .collect();
    let mut newcomer = RawClient::connect(addr, "/rooms/r");
    let before = scrape(addr).value("wsrelay_fanout_deliveries_total");
    p.send_text("last");
    expect_text(&mut newcomer, "last");
    for m in members.iter_mut().flatten() {
        expect_text(m, "last");
        assert_silent(m, "a remaining member");
    }
    assert_silent(&mut newcomer, "the newcomer");
    for o in outsiders.iter_mut() {
        assert_silent(o, "a client outside the room");
    }
    // Exactly the remaining three members plus the newcomer.
    let m = scrape(addr);
    assert_eq!(m.value("wsrelay_fanout_deliveries_total") - before, 4.0);
    h.shutdown();
    h.join();
}
