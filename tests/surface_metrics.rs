//! Production surface: `/healthz` and `/metrics` over real sockets.

mod common;
use common::*;
use std::time::Duration;
use wsrelay::config::Config;
use wsrelay::protocol::OpCode;

fn surface_config() -> Config {
    Config {
        shutdown_timeout: Duration::from_millis(500),
        ..test_config()
    }
}

const WAIT: Duration = Duration::from_secs(5);

/// Polls `/metrics` until `cond` holds (or 5 s pass) and returns the last scrape.
fn scrape_until(addr: std::net::SocketAddr, mut cond: impl FnMut(&Metrics) -> bool) -> Metrics {
    let mut last = scrape(addr);
    if eventually(WAIT, || {
        last = scrape(addr);
        cond(&last)
    }) {
        return last;
    }
    last
}

fn close_gracefully(c: &mut RawClient) {
    c.send_close(1000, "");
    assert_eq!(c.expect_close(WAIT).0, 1000);
    assert!(
        c.wait_eof(WAIT),
        "server closes TCP after the close handshake"
    );
}

#[test]
fn healthz_ok_while_accepting_on_keep_alive_connection() {
    let h = start(surface_config());
    let mut conn = HttpConn::connect(h.local_addr());
    for _ in 0..3 {
        let r = conn.request(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), "ok\n");
        assert_eq!(r.header("connection"), Some("keep-alive"));
    }
    let r = conn.request(b"POST /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert_eq!(r.status, 405);
    h.shutdown();
    h.join();
}

/// The scenario of the issue: a keep-alive connection opened while
/// accepting asks `/healthz` again once shutdown has begun, while
/// WebSockets are still draining.
#[test]
fn healthz_503_on_idle_keep_alive_connection_after_shutdown() {
    let h = start(Config {
        shutdown_timeout: Duration::from_secs(2),
        ..test_config()
    });
    let mut conn = HttpConn::connect(h.local_addr());
    let r = conn.request(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    // A WebSocket that does not answer the 1001 keeps the relay draining
    // (shutdown ends early once only idle HTTP connections remain).
    let _draining = RawClient::connect(h.local_addr(), "/echo");
    h.shutdown();
    // Let the worker see the flag before the next request arrives.
    std::thread::sleep(Duration::from_millis(200));
    conn.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = conn
        .read_response(WAIT)
        .expect("a 503 answer on the open keep-alive connection, not a closed socket");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("connection"), Some("close"));
    h.join();
}

/// A request already (partly) received when shutdown begins is answered:
/// `/healthz` with 503, `/metrics` showing `wsrelay_accepting 0`.
#[test]
fn healthz_503_and_accepting_0_for_requests_in_flight_at_shutdown() {
    let h = start(Config {
        shutdown_timeout: Duration::from_secs(3),
        ..test_config()
    });
    let addr = h.local_addr();
    let mut health = HttpConn::connect(addr);
    let r = health.request(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    health.send(b"GET /healthz HTTP/1.1\r\n");
    let mut metrics = HttpConn::connect(addr);
    metrics.send(b"GET /metrics HTTP/1.1\r\n");
    std::thread::sleep(Duration::from_millis(150));
    h.shutdown();
    std::thread::sleep(Duration::from_millis(200));
    health.send(b"Host: x\r\n\r\n");
    let r = health.read_response(WAIT).expect("an answer");
    assert_eq!(r.status, 503, "{}", r.text());
    assert_eq!(r.header("connection"), Some("close"));
    assert!(health.wait_closed(WAIT));

    metrics.send(b"Host: x\r\n\r\n");
    let r = metrics.read_response(WAIT).expect("an answer");
    assert_eq!(r.status, 200);
    let m = Metrics::parse(&r.text()).unwrap();
    assert_eq!(m.value("wsrelay_accepting"), 0.0);
    h.join();
}

#[test]
fn metrics_exposition_format_and_families() {
    let h = start(Config {
        workers: 3,
        ..surface_config()
    });
    let r = http_get(h.local_addr(), "/metrics");
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let text = r.text();
    assert!(text.ends_with('\n'), "exposition ends with a newline");
    let m = Metrics::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    let expected = [
        ("wsrelay_connections_open", "gauge"),
        ("wsrelay_connections_accepted_total", "counter"),
        ("wsrelay_upgrades_total", "counter"),
        ("wsrelay_messages_in_total", "counter"),
        ("wsrelay_bytes_in_total", "counter"),
        ("wsrelay_messages_out_total", "counter"),
        ("wsrelay_bytes_out_total", "counter"),
        ("wsrelay_fanout_deliveries_total", "counter"),
        ("wsrelay_fanout_remote_total", "counter"),
        ("wsrelay_dropped_messages_total", "counter"),
        ("wsrelay_slow_consumer_closes_total", "counter"),
        ("wsrelay_rate_limited_total", "counter"),
        ("wsrelay_ping_timeouts_total", "counter"),
        ("wsrelay_http_requests_total", "counter"),
        ("wsrelay_publish_requests_total", "counter"),
        ("wsrelay_handshake_rejections_total", "counter"),
        ("wsrelay_close_codes_sent_total", "counter"),
        ("wsrelay_close_codes_received_total", "counter"),
        ("wsrelay_rooms_open", "gauge"),
        ("wsrelay_fanout_queue_depth", "gauge"),
        ("wsrelay_fanout_backpressure_total", "counter"),
        ("wsrelay_accepting", "gauge"),
    ];
    for (name, kind) in expected {
        assert_eq!(m.type_of(name), Some(kind), "family {name}");
        assert!(
            m.samples.iter().any(|s| s.name == name),
            "no sample for {name}"
        );
    }
    for (name, kind) in &m.types {
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name} lacks _total");
        }
    }
    // One queue-depth gauge per worker, idle queues empty.
    for w in 0..3 {
        let worker = w.to_string();
        assert_eq!(
            m.get("wsrelay_fanout_queue_depth", &[("worker", &worker)]),
            Some(0.0),
            "queue depth of worker {w}"
        );
    }
    assert_eq!(
        m.samples
            .iter()
            .filter(|s| s.name == "wsrelay_fanout_queue_depth")
            .count(),
        3
    );
    assert_eq!(m.value("wsrelay_accepting"), 1.0);
    assert_eq!(m.value("wsrelay_connections_open"), 0.0);
    assert_eq!(m.value("wsrelay_rooms_open"), 0.0);
    // This scrape is the first plain HTTP request.
    assert_eq!(m.value("wsrelay_http_requests_total"), 1.0);
    // Every close code has both counters.
    for code in [
        "1000", "1001", "1002", "1003", "1005", "1007", "1008", "1009", "1010", "1011", "1012",
        "1013", "1014", "other",
    ] {
        for fam in [
            "wsrelay_close_codes_sent_total",
            "wsrelay_close_codes_received_total",
        ] {
            assert_eq!(m.get(fam, &[("code", code)]), Some(0.0), "{fam} {code}");
        }
    }
    h.shutdown();
    h.join();
}

#[test]
fn metrics_count_echo_traffic_and_open_connections() {
    let h = start(surface_config());
    let addr = h.local_addr();
    let mut a = RawClient::connect(addr, "/echo");
    let mut b = RawClient::connect(addr, "/echo");
    let mut c = RawClient::connect(addr, "/echo");
    let text = "x".repeat(100);
    for _ in 0..10 {
        a.send_text(&text);
    }
    for _ in 0..10 {
        let f = a.expect_frame();
        assert_eq!((f.opcode, f.payload.len()), (OpCode::Text, 100));
    }
    b.send_binary(&[7u8; 300]);
    b.send_binary(&[8u8; 1]);
    assert_eq!(b.expect_frame().payload, vec![7u8; 300]);
    assert_eq!(b.expect_frame().payload, vec![8u8; 1]);

    let m = scrape(addr);
    assert_eq!(m.value("wsrelay_messages_in_total"), 12.0);
    assert_eq!(m.value("wsrelay_messages_out_total"), 12.0);
    assert_eq!(m.value("wsrelay_upgrades_total"), 3.0);
    assert_eq!(m.value("wsrelay_connections_open"), 3.0);
    assert!(m.value("wsrelay_connections_accepted_total") >= 4.0);
    // Frames received: 10 x (6 + 100), 6 + 126+2 ... at least the payloads
    // plus their minimal headers.
    let min_in = 10.0 * (6.0 + 100.0) + (8.0 + 300.0) + (6.0 + 1.0);
    assert!(m.value("wsrelay_bytes_in_total") >= min_in);
    let min_out = 10.0 * (2.0 + 100.0) + (4.0 + 300.0) + (2.0 + 1.0);
    assert!(m.value("wsrelay_bytes_out_total") >= min_out);
    assert_eq!(m.value("wsrelay_fanout_deliveries_total"), 0.0);
    assert_eq!(m.value("wsrelay_rooms_open"), 0.0);

    close_gracefully(&mut c);
    let m = scrape_until(addr, |m| m.value("wsrelay_connections_open") == 2.0);
    assert_eq!(m.value("wsrelay_connections_open"), 2.0);
    // An abrupt TCP close also leaves the gauge.
    drop(b);
    let m = scrape_until(addr, |m| m.value("wsrelay_connections_open") == 1.0);
    assert_eq!(m.value("wsrelay_connections_open"), 1.0);
    assert_eq!(m.value("wsrelay_messages_in_total"), 12.0);
    drop(a);
    h.shutdown();
    h.join();
}

#[test]
fn metrics_count_handshake_rejections_by_reason() {
    let h = start(surface_config());
    let addr = h.local_addr();
    // Three 404s: a plain request, an upgrade to an unknown path, and one
    // under /echo/.
    let r = http_get(addr, "/nope");
    assert_eq!(r.status, 404);
    assert_eq!(upgrade_status(addr, "/nope", "").0, 404);
    assert_eq!(upgrade_status(addr, "/echo/x", "").0, 404);
    // A plain GET of a WebSocket endpoint: 426.
    let r = http_get(addr, "/echo");
    assert_eq!(r.status, 426);
    // Bad role and bad room name: 400.
    assert_eq!(upgrade_status(addr, "/rooms/r?role=admin", "").0, 400);
    assert_eq!(upgrade_status(addr, "/rooms/a%20b", "").0, 400);

    let m = scrape(addr);
    let rej = |reason: &str, status: &str| {
        m.get(
            "wsrelay_handshake_rejections_total",
            &[("reason", reason), ("status", status)],
        )
        .unwrap_or_else(|| panic!("no sample for {reason}/{status}"))
    };
    assert_eq!(rej("not_found", "404"), 3.0);
    assert_eq!(rej("upgrade_required", "426"), 1.0);
    assert_eq!(rej("bad_role", "400"), 1.0);
    assert_eq!(rej("bad_room_name", "400"), 1.0);
    assert_eq!(rej("forbidden_origin", "403"), 0.0);
    let total: f64 = m
        .samples
        .iter()
        .filter(|s| s.name == "wsrelay_handshake_rejections_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(total, 6.0);
    // Every rejection sample carries both labels.
    for s in m
        .samples
        .iter()
        .filter(|s| s.name == "wsrelay_handshake_rejections_total")
    {
        let keys: Vec<&str> = s.labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["reason", "status"]);
    }
    h.shutdown();
    h.join();
}

#[test]
fn metrics_count_close_codes_sent_and_received() {
    let h = start(surface_config());
    let addr = h.local_addr();
    // Normal closure initiated by the client: received 1000, echoed 1000.
    let mut a = RawClient::connect(addr, "/echo");
    close_gracefully(&mut a);
    // Protocol error (unmasked client frame): the relay sends 1002.
    let mut b = RawClient::connect(addr, "/echo");
    b.send_raw(&[0x81, 0x02, b'h', b'i']);
    let (code, reason) = b.expect_close(WAIT);
    assert_eq!(code, 1002, "{reason}");
    assert!(b.wait_eof(WAIT));
    // An application code (4000) is counted as "other" both ways.
    let mut c = RawClient::connect(addr, "/echo");
    c.send_close(4000, "bye");
    assert_eq!(c.expect_close(WAIT).0, 4000);
    assert!(c.wait_eof(WAIT));

    let m = scrape_until(addr, |m| m.value("wsrelay_connections_open") == 0.0);
    let sent = |code: &str| {
        m.get("wsrelay_close_codes_sent_total", &[("code", code)])
            .unwrap()
    };
    let recv = |code: &str| {
        m.get("wsrelay_close_codes_received_total", &[("code", code)])
            .unwrap()
    };
    assert_eq!(recv("1000"), 1.0);
    assert_eq!(sent("1000"), 1.0);
    assert_eq!(sent("1002"), 1.0);
    assert_eq!(recv("1002"), 0.0);
    assert_eq!(recv("other"), 1.0);
    assert_eq!(sent("other"), 1.0);
    let total = |fam: &str| -> f64 {
        m.samples
            .iter()
            .filter(|s| s.name == fam)
            .map(|s| s.value)
            .sum()
    };
    assert_eq!(total("wsrelay_close_codes_sent_total"), 3.0);
    assert_eq!(total("wsrelay_close_codes_received_total"), 2.0);
    assert_eq!(m.value("wsrelay_connections_open"), 0.0);
    h.shutdown();
    h.join();
}

#[test]
fn metrics_rooms_open_and_fanout_deliveries() {
    let h = start(surface_config());
    let addr = h.local_addr();
    // Members of "fan" on both workers, so fan-out crosses workers.
    let mut members = connect_on_every_worker(&h, "/rooms/fan", 2);
    let k = members.len() - 1;
    let mut other = RawClient::connect(addr, "/rooms/other");
    let m = scrape(addr);
    assert_eq!(m.value("wsrelay_rooms_open"), 2.0);
    assert_eq!(m.value("wsrelay_connections_open"), (k + 2) as f64);

    let (_, publisher) = &mut members[0];
    publisher.send_text("hello room");
    for (_, c) in members.iter_mut().skip(1) {
        let f = c.expect_frame();
        assert_eq!(
            (f.opcode, f.payload.as_slice()),
            (OpCode::Text, &b"hello room"[..])
        );
    }
    // No echo to the publisher (echo_self = false), nothing to other rooms.
    assert!(matches!(
        members[0].1.read_frame(Duration::from_millis(300)),
        Read_::Timeout
    ));
    assert!(matches!(
        other.read_frame(Duration::from_millis(100)),
        Read_::Timeout
    ));
    let m = scrape_until(addr, |m| {
        m.value("wsrelay_fanout_deliveries_total") == k as f64
    });
    assert_eq!(m.value("wsrelay_fanout_deliveries_total"), k as f64);
    assert_eq!(m.value("wsrelay_messages_in_total"), 1.0);
    assert_eq!(m.value("wsrelay_messages_out_total"), k as f64);
    // The publisher's worker hands the message to the one other worker.
    assert_eq!(m.value("wsrelay_fanout_remote_total"), 1.0);

    close_gracefully(&mut other);
    let m = scrape_until(addr, |m| m.value("wsrelay_rooms_open") == 1.0);
    assert_eq!(m.value("wsrelay_rooms_open"), 1.0);
    for (_, mut c) in members {
        close_gracefully(&mut c);
    }
    let m = scrape_until(addr, |m| m.value("wsrelay_rooms_open") == 0.0);
    assert_eq!(m.value("wsrelay_rooms_open"), 0.0);
    assert_eq!(m.value("wsrelay_connections_open"), 0.0);
    h.shutdown();
    h.join();
}

#[test]
fn metrics_count_ping_timeouts() {
    let h = start(Config {
        ping_interval: Duration::from_millis(200),
        pong_timeout: Duration::from_millis(300),
        ..surface_config()
    });
    let addr = h.local_addr();
    let mut silent = RawClient::connect(addr, "/echo");
    let mut polite = RawClient::connect(addr, "/echo");
    // Answer every ping on `polite` for 1.5 s; `silent` answers none.
    let until = std::time::Instant::now() + Duration::from_millis(1500);
    let mut pings = 0;
    while std::time::Instant::now() < until {
        if let Read_::Frame(f) = polite.read_frame(Duration::from_millis(50)) {
            assert_eq!(f.opcode, OpCode::Ping);
            pings += 1;
            polite.send_frame(true, OpCode::Pong, &f.payload);
        }
    }
    assert!(pings >= 2, "pings answered: {pings}");
    // The silent client got a ping and then lost its connection.
    let mut saw_ping = false;
    let closed = loop {
        match silent.read_frame(WAIT) {
            Read_::Frame(f) => saw_ping |= f.opcode == OpCode::Ping,
            Read_::Eof => break true,
            Read_::Timeout => break false,
        }
    };
    assert!(saw_ping && closed);
    let m = scrape_until(addr, |m| m.value("wsrelay_ping_timeouts_total") >= 1.0);
    assert_eq!(m.value("wsrelay_ping_timeouts_total"), 1.0);
    assert_eq!(m.value("wsrelay_connections_open"), 1.0);
    // The polite client is still served.
    polite.send_text("still here");
    let f = loop {
        let f = polite.expect_frame();
        if f.opcode != OpCode::Ping {
            break f;
        }
    };
    assert_eq!(f.payload, b"still here");
    h.shutdown();
    h.join();
}

#[test]
fn metrics_disabled_answers_404() {
    let h = start(Config {
        metrics: false,
        ..surface_config()
    });
    let addr = h.local_addr();
    let r = http_get(addr, "/metrics");
    assert_eq!(r.status, 404);
    assert!(!r.text().contains("wsrelay_"));
    assert_eq!(http_get(addr, "/healthz").status, 200);
    h.shutdown();
    h.join();
}

/// The exposition checks used above have teeth.
#[test]
fn exposition_checker_rejects_malformed_text() {
    let ok = "# HELP a_total A.\n# TYPE a_total counter\na_total{x=\"1\",y=\"q\\\"\"} 3\na_total{x=\"2\"} 4\n";
    let m = Metrics::parse(ok).unwrap();
    assert_eq!(m.get("a_total", &[("x", "1"), ("y", "q\"")]), Some(3.0));
    assert_eq!(m.get("a_total", &[("x", "2")]), Some(4.0));
    for bad in [
        "a_total 1\n",
        "# TYPE a_total counter\na_total 1\n",
        "# HELP a_total A.\na_total 1\n",
        "# HELP a A.\n# TYPE a gauge\na one\n",
        "# HELP a A.\n# TYPE a kind\na 1\n",
        "# HELP a A.\n# TYPE a gauge\na 1\na 2\n",
        "# HELP a A.\n# TYPE a gauge\na{x=\"1} 2\n",
        "a 1\n# HELP a A.\n# TYPE a gauge\n",
    ] {
        assert!(Metrics::parse(bad).is_err(), "accepted {bad:?}");
    }
}
