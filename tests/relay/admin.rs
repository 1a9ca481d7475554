//! The private admin listener (`admin_listen`): the split of routes
//! between it and the public listener, probes answered while the public
//! side is full, `/readyz` through shutdown.

use crate::support::*;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;
use wsrelay::config::Config;
use wsrelay::server::ServerHandle;

fn admin_config() -> Config {
    Config {
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        publish_token: "s3cret".into(),
        api_key: "k3y".into(),
        ..test_config()
    }
}

fn admin_of(h: &ServerHandle) -> SocketAddr {
    h.admin_addr().expect("admin listener bound")
}

fn publish_request() -> Vec<u8> {
    request(
        "POST /publish/lobby HTTP/1.1",
        &[
            "Host: x",
            "Authorization: Bearer s3cret",
            "Content-Type: text/plain",
            "Content-Length: 2",
        ],
    )
    .into_iter()
    .chain(*b"hi")
    .collect()
}

fn api_request() -> Vec<u8> {
    let body = br#"{"channel":"lobby","data":{"n":1}}"#;
    let mut r = request(
        "POST /api/publish HTTP/1.1",
        &[
            "Host: x",
            "X-API-Key: k3y",
            "Content-Type: application/json",
            &format!("Content-Length: {}", body.len()),
        ],
    );
    r.extend_from_slice(body);
    r
}

/// Status of one request on a fresh connection.
fn status(addr: SocketAddr, req: &[u8]) -> u16 {
    let mut c = HttpConn::connect(addr);
    c.send(req);
    c.read_response(WAIT).expect("an answer").status
}

#[test]
fn without_admin_listen_one_listener_serves_everything() {
    let h = start(Config {
        publish_token: "s3cret".into(),
        api_key: "k3y".into(),
        ..test_config()
    });
    let addr = h.local_addr();
    assert_eq!(h.admin_addr(), None);
    assert_eq!(http_get(addr, "/healthz").status, 200);
    assert_eq!(http_get(addr, "/readyz").status, 200);
    scrape(addr);
    assert_eq!(status(addr, &publish_request()), 202);
    assert_eq!(status(addr, &api_request()), 200);
    let mut c = RawClient::connect(addr, "/echo");
    c.send_text("one port");
    assert_eq!(c.expect_frame().payload, b"one port");
}

#[test]
fn admin_serves_probes_metrics_publish_and_api_and_the_public_listener_404s_them() {
    let h = start(admin_config());
    let (public, admin) = (h.local_addr(), admin_of(&h));
    assert_ne!(public, admin);

    // On the admin listener.
    let r = http_get(admin, "/healthz");
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    let r = http_get(admin, "/readyz");
    assert_eq!((r.status, r.text().as_str()), (200, "ready\n"));
    let m = scrape(admin);
    assert_eq!(m.value("wsrelay_accepting"), 1.0);
    // A subscriber on the public side receives what the admin side
    // publishes, through both publish endpoints.
    let mut sub = RawClient::connect(public, "/rooms/lobby");
    assert_eq!(status(admin, &publish_request()), 202);
    assert_eq!(sub.expect_frame().payload, b"hi");
    assert_eq!(status(admin, &api_request()), 200);
    assert_eq!(sub.expect_frame().payload, br#"{"n":1}"#);

    // On the public listener: 404, with keep-alive kept for bodiless GETs.
    let mut c = HttpConn::connect(public);
    for path in ["/healthz", "/readyz", "/metrics"] {
        let r = c.request(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!(
            (r.status, r.text().as_str()),
            (404, "not found\n"),
            "{path}"
        );
    }
    assert_eq!(status(public, &publish_request()), 404);
    assert_eq!(status(public, &api_request()), 404);
    // Nothing was published through the public side.
    assert_raw_silent(&mut [("subscriber", &mut sub)]);

    // WebSockets work on the public listener only.
    let mut echo = RawClient::connect(public, "/echo");
    echo.send_text("public");
    assert_eq!(echo.expect_frame().payload, b"public");
    for path in ["/echo", "/rooms/lobby", "/connection/websocket"] {
        expect_refusal(
            admin,
            &upgrade_request(path, ""),
            404,
            "WebSocket routes are served on the public listener only",
        );
        // A plain GET of a WebSocket path is not "426 Upgrade Required"
        // there either: the route does not exist on this listener.
        let r = http_get(admin, path);
        assert_eq!(r.status, 404, "{path}");
    }
    // The admin connections are not public connections.
    let m = scrape(admin);
    assert_eq!(m.value("wsrelay_connections_accepted_total"), 5.0);
}

#[test]
fn public_routes_keeps_the_listed_groups_on_the_public_listener() {
    let h = start(Config {
        public_routes: vec!["health".into(), "publish".into()],
        ..admin_config()
    });
    let (public, admin) = (h.local_addr(), admin_of(&h));
    assert_eq!(http_get(public, "/healthz").status, 200);
    assert_eq!(http_get(public, "/readyz").status, 200);
    assert_eq!(status(public, &publish_request()), 202);
    assert_eq!(http_get(public, "/metrics").status, 404);
    assert_eq!(status(public, &api_request()), 404);
    // The admin listener serves all of them still.
    assert_eq!(http_get(admin, "/healthz").status, 200);
    assert_eq!(status(admin, &publish_request()), 202);
    scrape(admin);
    assert_eq!(status(admin, &api_request()), 200);
}

#[test]
fn probes_are_answered_on_admin_while_the_public_side_is_full() {
    let h = start(Config {
        max_connections: 2,
        ..admin_config()
    });
    let (public, admin) = (h.local_addr(), admin_of(&h));
    let _a = RawClient::connect(public, "/echo");
    let _b = RawClient::connect(public, "/echo");
    assert!(eventually(WAIT, || h.shared().admission.open() == 2));
    // The public side refuses a third connection...
    expect_refusal(public, &upgrade_request("/echo", ""), 503, "");
    // ...while the admin side answers, on many connections at once: it
    // is not counted against max_connections.
    let mut probes: Vec<HttpConn> = (0..10).map(|_| HttpConn::connect(admin)).collect();
    for p in &mut probes {
        let r = p.request(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.status, 200);
        let r = p.request(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(
            (r.status, r.text().as_str()),
            (503, "not ready: at max_connections\n")
        );
    }
    let m = scrape(admin);
    assert_eq!(m.value("wsrelay_connections_open"), 2.0);
    assert_eq!(h.shared().admission.open(), 2);
    // Room again: ready again.
    drop(_a);
    assert!(eventually(WAIT, || http_get(admin, "/readyz").status == 200));
}

#[test]
fn admin_connections_have_a_bound_of_their_own() {
    let h = start(admin_config());
    let admin = admin_of(&h);
    let max = wsrelay::server::admin::ADMIN_MAX_CONNECTIONS;
    let mut held: Vec<HttpConn> = (0..max).map(|_| HttpConn::connect(admin)).collect();
    for c in &mut held {
        assert_eq!(
            c.request(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .status,
            200
        );
    }
    expect_refusal(
        admin,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        503,
        "too many admin connections",
    );
    // The public side is not affected.
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    c.send_text("still");
    assert_eq!(c.expect_frame().payload, b"still");
    // One admin connection fewer: a new one is served.
    drop(held.pop());
    assert!(eventually(WAIT, || {
        let (resp, _) = http_exchange(
            admin,
            b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            WAIT,
        );
        status_of(&resp) == 200
    }));
}

#[test]
fn readyz_is_503_on_the_admin_listener_during_shutdown() {
    let h = start(Config {
        shutdown_timeout: Duration::from_secs(3),
        ..admin_config()
    });
    let (public, admin) = (h.local_addr(), admin_of(&h));
    let mut kept = HttpConn::connect(admin);
    let r = kept.request(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(r.status, 200);
    // A WebSocket that does not answer the 1001 keeps the relay draining.
    let _draining = RawClient::connect(public, "/echo");
    h.shutdown();
    wait_listeners_closed(public);
    // A probe on a connection opened before shutdown...
    kept.send(b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n");
    let r = kept.read_response(WAIT).expect("an answer");
    assert_eq!(
        (r.status, r.text().as_str()),
        (503, "not ready: shutting down\n")
    );
    assert_eq!(r.header("connection"), Some("close"));
    // ...and on a new one: the admin listener stays open while draining.
    assert!(TcpStream::connect(admin).is_ok());
    let (resp, _) = http_exchange(admin, b"GET /readyz HTTP/1.1\r\nHost: x\r\n\r\n", WAIT);
    assert_eq!(status_of(&resp), 503, "{resp}");
    let (resp, _) = http_exchange(admin, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", WAIT);
    assert_eq!(status_of(&resp), 503, "{resp}");
    h.join();
}

#[test]
fn admin_listen_on_a_port_in_use_is_a_bind_error_naming_it() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken = holder.local_addr().unwrap();
    let e = wsrelay::server::start(Config {
        admin_listen: Some(taken),
        ..test_config()
    })
    .err()
    .expect("start must fail");
    assert!(
        matches!(&e, wsrelay::server::StartError::Bind { addr, .. } if *addr == taken),
        "{e}"
    );
}

/// The binary with `--admin-listen` and `--log-format json`: every log
/// line is one JSON object, and the start line says where the metrics are
/// (the admin listener) and how to stop the relay.
#[test]
fn binary_start_line_in_json_names_the_admin_metrics_url_and_how_to_stop() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_wsrelay"))
        .args([
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--max-connections",
            "1000",
            "--stats-interval",
            "0",
            "--log-format",
            "json",
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut seen = Vec::new();
    let start = loop {
        let Some(Ok(line)) = lines.next() else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("no start line: {seen:?}");
        };
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        seen.push(line);
        let msg = v["msg"].as_str().unwrap_or_default().to_string();
        if msg.contains("listening on") {
            assert_eq!(v["level"], "info", "{v}");
            assert!(v["ts"].as_str().is_some_and(|t| t.ends_with('Z')), "{v}");
            break msg;
        }
    };
    assert!(
        start.contains("stop with Ctrl-C or SIGTERM (connections get close 1001"),
        "{start}"
    );
    let url = start
        .split("metrics at http://")
        .nth(1)
        .and_then(|rest| rest.split("/metrics").next())
        .unwrap_or_else(|| panic!("no metrics URL: {start}"));
    let admin: SocketAddr = url.parse().unwrap();
    assert!(start.contains(&format!(
        "admin (health, metrics, publish, API) on http://{admin}"
    )));
    scrape(admin);
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    for line in lines.map_while(Result::ok) {
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["msg"].is_string(), "{v}");
    }
    assert_eq!(child.wait().unwrap().code(), Some(0));
}
