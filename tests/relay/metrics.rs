//! `/healthz` and `/metrics` over real sockets. (`/healthz` during
//! shutdown: `lifecycle`.)

use crate::support::*;
use wsrelay::config::Config;
use wsrelay::protocol::OpCode;

#[test]
fn healthz_ok_while_accepting_on_keep_alive_connection() {
    let h = start(test_config());
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

#[test]
fn metrics_exposition_format_and_families() {
    let h = start(Config {
        workers: 3,
        ..test_config()
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
    let h = start(test_config());
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

    c.close_gracefully();
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
    let h = start(test_config());
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
    // An unsupported WebSocket version: 426.
    expect_refusal(
        addr,
        b"GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 8\r\n\r\n",
        426,
        "Sec-WebSocket-Version",
    );

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
    assert_eq!(rej("unsupported_version", "426"), 1.0);
    assert_eq!(rej("forbidden_origin", "403"), 0.0);
    assert_eq!(rej("bad_key", "400"), 0.0);
    let total: f64 = m
        .samples
        .iter()
        .filter(|s| s.name == "wsrelay_handshake_rejections_total")
        .map(|s| s.value)
        .sum();
    assert_eq!(total, 7.0);
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
    let h = start(test_config());
    let addr = h.local_addr();
    // Normal closure initiated by the client: received 1000, echoed 1000.
    let mut a = RawClient::connect(addr, "/echo");
    a.close_gracefully();
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
    let h = start(test_config());
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
    assert_raw_silent(&mut [
        ("the publisher", &mut members[0].1),
        ("a member of another room", &mut other),
    ]);
    let m = scrape_until(addr, |m| {
        m.value("wsrelay_fanout_deliveries_total") == k as f64
    });
    assert_eq!(m.value("wsrelay_fanout_deliveries_total"), k as f64);
    assert_eq!(m.value("wsrelay_messages_in_total"), 1.0);
    assert_eq!(m.value("wsrelay_messages_out_total"), k as f64);
    // The publisher's worker hands the message to the one other worker.
    assert_eq!(m.value("wsrelay_fanout_remote_total"), 1.0);

    other.close_gracefully();
    let m = scrape_until(addr, |m| m.value("wsrelay_rooms_open") == 1.0);
    assert_eq!(m.value("wsrelay_rooms_open"), 1.0);
    for (_, mut c) in members {
        c.close_gracefully();
    }
    let m = scrape_until(addr, |m| m.value("wsrelay_rooms_open") == 0.0);
    assert_eq!(m.value("wsrelay_rooms_open"), 0.0);
    assert_eq!(m.value("wsrelay_connections_open"), 0.0);
    h.shutdown();
    h.join();
}

#[test]
fn metrics_disabled_answers_404() {
    let h = start(Config {
        metrics: false,
        ..test_config()
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
