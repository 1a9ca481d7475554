//! Production surface: admission at the handshake (origins, connection
//! caps, room caps, room names) over real sockets.

mod common;
use common::*;
use std::time::Duration;
use wsrelay::config::Config;

const WAIT: Duration = Duration::from_secs(5);

fn surface_config() -> Config {
    Config {
        shutdown_timeout: Duration::from_millis(500),
        ..test_config()
    }
}

fn rejections(addr: std::net::SocketAddr, reason: &str, status: &str) -> f64 {
    scrape(addr)
        .get(
            "wsrelay_handshake_rejections_total",
            &[("reason", reason), ("status", status)],
        )
        .unwrap()
}

fn close_gracefully(c: &mut RawClient) {
    c.send_close(1000, "");
    assert_eq!(c.expect_close(WAIT).0, 1000);
    assert!(c.wait_eof(WAIT));
}

/// Reads the rest of a refused handshake: the server closes after it.
fn assert_closed_after_refusal(mut s: std::net::TcpStream) {
    use std::io::Read;
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
}

#[test]
fn allowed_origins_gate_upgrades() {
    let h = start(Config {
        allowed_origins: vec!["https://good.example".to_string()],
        ..surface_config()
    });
    let addr = h.local_addr();
    let refused = [
        "https://evil.example",
        "http://good.example",
        "https://good.example.evil.example",
        "https://good.example:8443",
        "null",
    ];
    for origin in refused {
        let (status, s) = upgrade_status(addr, "/echo", &format!("Origin: {origin}\r\n"));
        assert_eq!(status, 403, "origin {origin}");
        assert_closed_after_refusal(s);
    }
    // Rooms are gated too.
    let (status, _) = upgrade_status(addr, "/rooms/r", "Origin: https://evil.example\r\n");
    assert_eq!(status, 403);
    let mut open = Vec::new();
    for extra in [
        "Origin: https://good.example\r\n",
        "Origin: https://good.example/\r\n",
        "Origin: HTTPS://GOOD.EXAMPLE\r\n",
        "",
    ] {
        let (status, s) = upgrade_status(addr, "/echo", extra);
        assert_eq!(status, 101, "header {extra:?}");
        open.push(s);
    }
    let (status, s) = upgrade_status(addr, "/rooms/r", "Origin: https://good.example\r\n");
    assert_eq!(status, 101);
    open.push(s);
    assert_eq!(rejections(addr, "forbidden_origin", "403"), 6.0);
    assert_eq!(scrape(addr).value("wsrelay_connections_open"), 5.0);
    h.shutdown();
    h.join();
}

#[test]
fn no_allowed_origins_means_any_origin() {
    let h = start(surface_config());
    let (status, _s) = upgrade_status(h.local_addr(), "/echo", "Origin: https://any.example\r\n");
    assert_eq!(status, 101);
    h.shutdown();
    h.join();
}

#[test]
fn max_connections_per_ip_answers_429_until_one_closes() {
    let h = start(Config {
        max_connections_per_ip: 2,
        ..surface_config()
    });
    let addr = h.local_addr();
    let mut a = RawClient::connect(addr, "/echo");
    let b = RawClient::connect(addr, "/rooms/r");
    for path in ["/echo", "/rooms/r", "/rooms/other"] {
        let (status, s) = upgrade_status(addr, path, "");
        assert_eq!(status, 429, "{path}");
        assert_closed_after_refusal(s);
    }
    // Plain HTTP is not a WebSocket connection: not capped.
    assert_eq!(http_get(addr, "/healthz").status, 200);
    assert_eq!(rejections(addr, "too_many_per_ip", "429"), 3.0);
    // The refused attempt did not create the room it asked for.
    assert_eq!(scrape(addr).value("wsrelay_rooms_open"), 1.0);

    close_gracefully(&mut a);
    let mut c = None;
    assert!(
        eventually(WAIT, || {
            let (status, s) = upgrade_status(addr, "/echo", "");
            if status == 101 {
                c = Some(s);
                true
            } else {
                assert_eq!(status, 429);
                false
            }
        }),
        "a slot frees up after a close"
    );
    // Full again.
    assert_eq!(upgrade_status(addr, "/echo", "").0, 429);
    // An abrupt TCP close frees a slot too.
    drop(b);
    assert!(eventually(WAIT, || upgrade_status(addr, "/echo", "").0 == 101));
    drop(c);
    h.shutdown();
    h.join();
}

#[test]
fn max_connections_answers_503() {
    let h = start(Config {
        max_connections: 3,
        ..surface_config()
    });
    let addr = h.local_addr();
    let mut a = RawClient::connect(addr, "/echo");
    let _b = RawClient::connect(addr, "/rooms/r");
    let _c = RawClient::connect(addr, "/echo");
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    {
        use std::io::Write;
        s.write_all(&upgrade_request("/echo", "")).unwrap();
    }
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut resp = String::new();
    {
        use std::io::Read;
        let _ = s.read_to_string(&mut resp);
    }
    assert_eq!(status_of(&resp), 503, "{resp}");
    assert!(resp.contains("Retry-After:"), "{resp}");
    assert_eq!(upgrade_status(addr, "/rooms/q", "").0, 503);
    // HTTP endpoints keep working at the cap.
    assert_eq!(http_get(addr, "/healthz").status, 200);
    let m = scrape(addr);
    assert_eq!(m.value("wsrelay_connections_open"), 3.0);
    assert_eq!(
        m.get(
            "wsrelay_handshake_rejections_total",
            &[("reason", "unavailable"), ("status", "503")]
        ),
        Some(2.0)
    );
    close_gracefully(&mut a);
    assert!(eventually(WAIT, || upgrade_status(addr, "/echo", "").0 == 101));
    h.shutdown();
    h.join();
}

#[test]
fn max_rooms_caps_distinct_rooms_until_one_empties() {
    let h = start(Config {
        max_rooms: 2,
        ..surface_config()
    });
    let addr = h.local_addr();
    // Room "a" on both workers, room "b" on both workers.
    let a = connect_on_every_worker(&h, "/rooms/a", 1);
    let b = connect_on_every_worker(&h, "/rooms/b", 1);
    let open = a.len() + b.len();
    let (status, s) = upgrade_status(addr, "/rooms/c", "");
    assert_eq!(status, 503);
    assert_closed_after_refusal(s);
    // Existing rooms can still be joined, from either worker.
    let mut more_a = connect_on_every_worker(&h, "/rooms/a", 1);
    let m = scrape(addr);
    assert_eq!(m.value("wsrelay_rooms_open"), 2.0);
    // The refused join did not leak an admitted connection.
    assert_eq!(
        m.value("wsrelay_connections_open"),
        (open + more_a.len()) as f64
    );
    // Echo is not a room.
    let _e = RawClient::connect(addr, "/echo");

    // Room "b" loses its members on one worker: it still exists.
    let (b_first, b_rest): (Vec<_>, Vec<_>) = b.into_iter().partition(|(w, _)| *w == 0);
    for (_, mut c) in b_first {
        close_gracefully(&mut c);
    }
    let expected = (a.len() + b_rest.len() + more_a.len() + 1) as f64;
    assert!(eventually(WAIT, || {
        scrape(addr).value("wsrelay_connections_open") == expected
    }));
    assert_eq!(scrape(addr).value("wsrelay_rooms_open"), 2.0);
    assert_eq!(upgrade_status(addr, "/rooms/c", "").0, 503);
    // ... and once the last one leaves, a new room fits.
    for (_, mut c) in b_rest {
        close_gracefully(&mut c);
    }
    let mut c_member = None;
    assert!(eventually(WAIT, || {
        let (status, s) = upgrade_status(addr, "/rooms/c", "");
        if status == 101 {
            c_member = Some(s);
        }
        status == 101
    }));
    assert_eq!(scrape(addr).value("wsrelay_rooms_open"), 2.0);
    assert_eq!(upgrade_status(addr, "/rooms/b", "").0, 503);
    for (_, c) in more_a.iter_mut() {
        close_gracefully(c);
    }
    drop(a);
    h.shutdown();
    h.join();
}

#[test]
fn max_room_name_bytes_limits_room_names() {
    let h = start(Config {
        max_room_name_bytes: 8,
        publish_token: "t".to_string(),
        ..surface_config()
    });
    let addr = h.local_addr();
    let (status, s) = upgrade_status(addr, "/rooms/abcdefghi", "");
    assert_eq!(status, 400);
    assert_closed_after_refusal(s);
    let (status, _ok) = upgrade_status(addr, "/rooms/abcdefgh", "");
    assert_eq!(status, 101);
    let (status, _ok2) = upgrade_status(addr, "/rooms/a", "");
    assert_eq!(status, 101);
    // HTTP publish uses the same limit.
    let publish = |room: &str| {
        HttpConn::connect(addr)
            .request(
                format!("POST /publish/{room} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nContent-Length: 1\r\n\r\nx")
                    .as_bytes(),
            )
            .status
    };
    assert_eq!(publish("abcdefghi"), 400);
    assert_eq!(publish("abcdefgh"), 202);
    assert_eq!(rejections(addr, "bad_room_name", "400"), 1.0);
    h.shutdown();
    h.join();
}

/// The 400 text should state the configured limit, not the default one.
#[test]
fn bad_room_name_message_states_the_configured_limit() {
    let h = start(Config {
        max_room_name_bytes: 8,
        ..surface_config()
    });
    let addr = h.local_addr();
    let resp = http_raw(addr, &upgrade_request("/rooms/abcdefghi", ""));
    assert_eq!(status_of(&resp), 400);
    assert!(resp.contains("1-8 bytes"), "{resp}");
    h.shutdown();
    h.join();
}
