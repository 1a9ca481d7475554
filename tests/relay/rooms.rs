//! Rooms over real sockets: fan-out across workers (proved with the
//! per-worker metrics), echo_self, roles, per-publisher ordering, members
//! leaving. (Slow consumers and other bounds: `bounds`.)

use crate::support::*;
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::Message;
use wsrelay::config::Config;
use wsrelay::protocol::OpCode;
use wsrelay::server::ServerHandle;

fn metric(h: &ServerHandle, w: usize, f: impl Fn(&wsrelay::metrics::WorkerMetrics) -> u64) -> u64 {
    f(&h.shared().metrics[w])
}

fn text(m: Message) -> String {
    match m {
        Message::Text(t) => t,
        other => panic!("expected text, got {other:?}"),
    }
}

#[test]
fn room_members_on_both_workers_receive_every_other_members_messages() {
    let h = start(test_config());
    assert_eq!(h.workers(), 2);
    let mut members = spread(&h, "/rooms/lobby", 8, 2);
    let n = members.len();
    let on: Vec<usize> = members.iter().map(|(_, w)| *w).collect();
    for w in 0..2 {
        assert!(metric(&h, w, |m| m.upgrades.get()) > 0, "worker {w} idle");
    }
    for (i, (ws, _)) in members.iter_mut().enumerate() {
        ws.send(Message::Text(format!("from-{i}"))).unwrap();
    }
    for (i, (ws, _)) in members.iter_mut().enumerate() {
        let mut got = HashSet::new();
        for _ in 0..n - 1 {
            assert!(got.insert(text(ws_expect_data(ws))));
        }
        let want: HashSet<String> = (0..n)
            .filter(|&j| j != i)
            .map(|j| format!("from-{j}"))
            .collect();
        assert_eq!(got, want, "member {i} on worker {}", on[i]);
    }
    // Nothing more (in particular not its own message).
    let mut all: Vec<(&str, &mut Ws)> =
        members.iter_mut().map(|(ws, _)| ("a member", ws)).collect();
    assert_ws_silent(&mut all);
    // Each publish went once to the other worker; every member got every
    // other member's message through a local delivery on its own worker.
    for w in 0..2 {
        let publishers_here = on.iter().filter(|&&x| x == w).count() as u64;
        assert_eq!(
            metric(&h, w, |m| m.fanout_remote.get()),
            publishers_here,
            "worker {w}"
        );
    }
    assert_eq!(sum(&h, |m| m.fanout_deliveries.get()), (n * (n - 1)) as u64);
    assert_eq!(sum(&h, |m| m.messages_in.get()), n as u64);
    assert_eq!(h.rooms_open(), 1);
    h.shutdown();
    h.join();
}

#[test]
fn raw_and_tungstenite_members_share_a_room_across_workers() {
    let h = start(test_config());
    let addr = h.local_addr();
    // A raw member on each worker, then tungstenite members.
    let mut raws: Vec<(RawClient, usize)> = Vec::new();
    let mut seen = [false; 2];
    while !(seen[0] && seen[1]) {
        assert!(raws.len() < 200);
        let (c, w) = on_which_worker(&h, || RawClient::connect(addr, "/rooms/mixed"));
        seen[w] = true;
        raws.push((c, w));
    }
    let mut wss = spread(&h, "/rooms/mixed", 2, 0);
    let payload: Vec<u8> = (0..=255).collect();
    wss[0].0.send(Message::Binary(payload.clone())).unwrap();
    for (c, w) in raws.iter_mut() {
        let f = c.expect_frame();
        assert_eq!(
            (f.opcode, &f.payload),
            (OpCode::Binary, &payload),
            "raw member on worker {w}"
        );
    }
    assert_eq!(
        ws_expect_data(&mut wss[1].0),
        Message::Binary(payload.clone())
    );
    // Fragmented input from a raw member is relayed as one message.
    raws[0].0.send_frame(false, OpCode::Text, b"frag");
    raws[0].0.send_frame(true, OpCode::Continuation, b"mented");
    for (ws, _) in wss.iter_mut() {
        assert_eq!(ws_expect_data(ws), Message::Text("fragmented".into()));
    }
    for (c, _) in raws.iter_mut().skip(1) {
        let f = c.expect_frame();
        assert_eq!(
            (f.opcode, f.fin, f.payload.as_slice()),
            (OpCode::Text, true, &b"fragmented"[..])
        );
    }
    h.shutdown();
    h.join();
}

#[test]
fn rooms_are_isolated() {
    let h = start(test_config());
    let addr = h.local_addr();
    let mut a1 = ws_connect(addr, "/rooms/a");
    let mut a2 = ws_connect(addr, "/rooms/a");
    let mut b1 = ws_connect(addr, "/rooms/b");
    let mut e = ws_connect(addr, "/echo");
    a1.send(Message::Text("for a".into())).unwrap();
    b1.send(Message::Text("for b".into())).unwrap();
    assert_eq!(ws_expect_data(&mut a2), Message::Text("for a".into()));
    // b1 is alone in b: nothing arrives anywhere else.
    assert_ws_silent(&mut [
        ("b1 (alone in b)", &mut b1),
        ("a2", &mut a2),
        ("the echo client", &mut e),
    ]);
    assert_eq!(h.rooms_open(), 2);
    h.shutdown();
    h.join();
}

fn echo_self_round(echo_self: bool) {
    let h = start(Config {
        echo_self,
        ..test_config()
    });
    let addr = h.local_addr();
    // Sender and receiver on different workers where possible, and a
    // third member on the sender's worker.
    let members = spread(&h, "/rooms/self", 3, 1);
    let mut it = members.into_iter();
    let (mut a, wa) = it.next().unwrap();
    let rest: Vec<(Ws, usize)> = it.collect();
    let mut b = None;
    let mut others = Vec::new();
    for (ws, w) in rest {
        if b.is_none() && w != wa {
            b = Some(ws);
        } else {
            others.push(ws);
        }
    }
    let mut b = b.expect("a member on the other worker");
    a.send(Message::Text("m1".into())).unwrap();
    assert_eq!(ws_expect_data(&mut b), Message::Text("m1".into()));
    for o in others.iter_mut() {
        assert_eq!(ws_expect_data(o), Message::Text("m1".into()));
    }
    b.send(Message::Text("m2".into())).unwrap();
    // a's own m1 (if delivered) was queued before b even received it, so
    // it would arrive before m2.
    let first = text(ws_expect_data(&mut a));
    if echo_self {
        assert_eq!(first, "m1", "echo_self on: sender gets its own message");
        assert_eq!(text(ws_expect_data(&mut a)), "m2");
        assert_eq!(text(ws_expect_data(&mut b)), "m2");
    } else {
        assert_eq!(first, "m2", "echo_self off: sender must not get m1");
        assert_ws_silent(&mut [("b, m2's sender", &mut b)]);
    }
    let _ = addr;
    h.shutdown();
    h.join();
}

#[test]
fn echo_self_off_sender_does_not_receive_its_own_message() {
    echo_self_round(false);
}

#[test]
fn echo_self_on_sender_receives_its_own_message() {
    echo_self_round(true);
}

#[test]
fn leaving_members_are_not_delivered_to_and_empty_rooms_disappear() {
    let h = start(test_config());
    let mut members = spread(&h, "/rooms/churn", 4, 1);
    assert_eq!(h.rooms_open(), 1);
    // Close half of the members properly, keep the rest.
    let leaving: Vec<(Ws, usize)> = members.drain(..members.len() / 2).collect();
    for (mut ws, _) in leaving {
        ws.close(None).unwrap();
        let _ = ws_expect_close(&mut ws, Duration::from_secs(5));
        assert!(ws_wait_closed(&mut ws, Duration::from_secs(3)));
    }
    let n = members.len();
    members[0]
        .0
        .send(Message::Text("after churn".into()))
        .unwrap();
    for (ws, _) in members.iter_mut().skip(1) {
        assert_eq!(ws_expect_data(ws), Message::Text("after churn".into()));
    }
    assert!(eventually(Duration::from_secs(3), || {
        sum(&h, |m| m.fanout_deliveries.get()) == (n - 1) as u64
    }));
    for (mut ws, _) in members {
        ws.close(None).unwrap();
        let _ = ws_expect_close(&mut ws, Duration::from_secs(5));
    }
    assert!(
        eventually(Duration::from_secs(3), || h.rooms_open() == 0),
        "rooms_open = {}",
        h.rooms_open()
    );
    assert!(eventually(Duration::from_secs(3), || h
        .totals()
        .connections_open
        == 0));
    h.shutdown();
    h.join();
}

/// Reads `/rooms/{room}` messages "p{id}:{seq}" until `expected` arrived;
/// checks each publisher's sequence is complete and strictly increasing.
fn check_sequences(ws: &mut Ws, publishers: usize, per_publisher: usize) -> Result<(), String> {
    let mut next = vec![0usize; publishers];
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut got = 0;
    while got < publishers * per_publisher {
        if Instant::now() > deadline {
            return Err(format!("timed out after {got} messages: next = {next:?}"));
        }
        let m = match ws_read(ws, Duration::from_millis(500)) {
            Some(Message::Text(t)) => t,
            Some(Message::Ping(_)) | Some(Message::Pong(_)) => continue,
            Some(other) => return Err(format!("unexpected {other:?}")),
            None => continue,
        };
        let (p, s) = m
            .strip_prefix('p')
            .and_then(|r| r.split_once(':'))
            .ok_or_else(|| format!("bad message {m:?}"))?;
        let (p, s): (usize, usize) = (p.parse().unwrap(), s.parse().unwrap());
        if s != next[p] {
            return Err(format!(
                "publisher {p}: got seq {s}, expected {} (after {got} messages)",
                next[p]
            ));
        }
        next[p] += 1;
        got += 1;
    }
    Ok(())
}

#[test]
fn per_publisher_order_is_kept_across_workers() {
    const PUBLISHERS: usize = 3;
    const PER: usize = 500;
    let h = start(test_config());
    let addr = h.local_addr();
    let subs = spread(&h, "/rooms/order?role=sub", 4, 2);
    let sub_workers: Vec<usize> = subs.iter().map(|(_, w)| *w).collect();
    let readers: Vec<_> = subs
        .into_iter()
        .map(|(mut ws, w)| {
            std::thread::spawn(move || {
                check_sequences(&mut ws, PUBLISHERS, PER).map_err(|e| format!("worker {w}: {e}"))
            })
        })
        .collect();
    let go = Arc::new(AtomicBool::new(false));
    let publishers: Vec<_> = (0..PUBLISHERS)
        .map(|p| {
            let mut ws = ws_connect(addr, "/rooms/order?role=pub");
            let go = go.clone();
            std::thread::spawn(move || {
                while !go.load(Ordering::Acquire) {
                    std::thread::yield_now();
                }
                for s in 0..PER {
                    ws.write(Message::Text(format!("p{p}:{s}"))).unwrap();
                    if s % 50 == 49 {
                        ws.flush().unwrap();
                    }
                }
                ws.flush().unwrap();
                ws
            })
        })
        .collect();
    go.store(true, Ordering::Release);
    let publishers: Vec<Ws> = publishers.into_iter().map(|t| t.join().unwrap()).collect();
    for (i, r) in readers.into_iter().enumerate() {
        r.join()
            .unwrap()
            .unwrap_or_else(|e| panic!("subscriber {i} (on worker {}): {e}", sub_workers[i]));
    }
    assert_eq!(sum(&h, |m| m.messages_in.get()), (PUBLISHERS * PER) as u64);
    assert!(sum(&h, |m| m.fanout_remote.get()) > 0);
    drop(publishers);
    h.shutdown();
    h.join();
}

// ----- roles and membership -----------------------------------------------------

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
    let h = start(Config {
        publish_token: "t".to_string(),
        ..test_config()
    });
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
    let mut quiet: Vec<(&str, &mut RawClient)> = vec![("the full member", &mut both)];
    for (_, s) in subs.iter_mut().skip(1) {
        quiet.push(("another subscriber", s));
    }
    assert_raw_silent(&mut quiet);
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
    let h = start(Config {
        publish_token: "t".to_string(),
        ..test_config()
    });
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
        // Two publishers: both arrive, in either order (the relay orders
        // messages per publisher, not across publishers).
        let mut got: Vec<String> = (0..2)
            .map(|_| String::from_utf8_lossy(&s.expect_frame().payload).into_owned())
            .collect();
        got.sort();
        assert_eq!(got, ["from both", "from http"]);
    }
    expect_text(&mut both, "from http");
    let mut quiet: Vec<(&str, &mut RawClient)> =
        pubs.iter_mut().map(|(_, p)| ("a publisher", p)).collect();
    assert_raw_silent(&mut quiet);
    h.shutdown();
    h.join();
}

#[test]
fn role_query_parsing() {
    let h = start(Config {
        publish_token: "t".to_string(),
        ..test_config()
    });
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
    let h = start(Config {
        publish_token: "t".to_string(),
        ..test_config()
    });
    let addr = h.local_addr();
    let mut p = RawClient::connect(addr, "/rooms/lonely?role=pub");
    assert_eq!(scrape(addr).value("wsrelay_rooms_open"), 1.0);
    p.send_text("anyone?");
    // Only once the relay has handled it may the subscriber join (else
    // the message may legitimately reach the new member).
    assert!(eventually(WAIT, || h.totals().messages_in >= 1));
    // It is counted just before the end of the loop iteration that hands
    // it out. Two ping round trips, the second sent after the first pong
    // came back, prove that iteration is over: the second ping is read in
    // a later iteration than the first pong was written in.
    for probe in [b"1", b"2"] {
        p.send_frame(true, OpCode::Ping, probe);
        let f = p.expect_frame();
        assert_eq!((f.opcode, f.payload.as_slice()), (OpCode::Pong, &probe[..]));
    }
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
        ..Config {
            publish_token: "t".to_string(),
            ..test_config()
        }
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
    }
    let mut quiet: Vec<(&str, &mut RawClient)> = vec![("the newcomer", &mut newcomer)];
    for m in members.iter_mut().flatten() {
        quiet.push(("a remaining member", m));
    }
    for o in outsiders.iter_mut() {
        quiet.push(("a client outside the room", o));
    }
    assert_raw_silent(&mut quiet);
    // Exactly the remaining three members plus the newcomer.
    let m = scrape(addr);
    assert_eq!(m.value("wsrelay_fanout_deliveries_total") - before, 4.0);
    h.shutdown();
    h.join();
}
