//! Lifetimes: graceful shutdown in-process and of the real binary
//! (SIGTERM), the binary's start-up (errors, allocator re-exec).
//! (Heartbeats, the handshake deadline, keep-alive idling and the close
//! timeout moved to virtual-clock tests of the sans-IO session: MOVED.md.)

use crate::support::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tungstenite::Message;
use wsrelay::config::Config;
use wsrelay::server::ServerHandle;

/// `join()` in a thread; true if it returned within `timeout`.
fn join_within(h: ServerHandle, timeout: Duration) -> bool {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        h.join();
        let _ = tx.send(());
    });
    rx.recv_timeout(timeout).is_ok()
}

// ----- graceful shutdown (in-process) -------------------------------------------

#[test]
fn shutdown_closes_every_connection_with_1001_and_exits_once_answered() {
    let h = start(Config {
        // Long: join() must return because everyone answered, not because
        // the timeout passed.
        shutdown_timeout: Duration::from_secs(30),
        ..test_config()
    });
    let addr = h.local_addr();
    let mut ws_echo = ws_connect(addr, "/echo");
    let mut ws_room = ws_connect(addr, "/rooms/bye");
    let mut raw_echo = RawClient::connect(addr, "/echo");
    let mut raw_room = RawClient::connect(addr, "/rooms/bye?role=sub");
    // An idle plain-HTTP keep-alive connection is closed too.
    let mut idle_http = TcpStream::connect(addr).unwrap();
    idle_http
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    idle_http
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut tmp = [0u8; 1024];
    assert!(idle_http.read(&mut tmp).unwrap() > 0);
    assert!(eventually(Duration::from_secs(2), || h
        .totals()
        .connections_open
        == 4));

    let t = Instant::now();
    h.shutdown();
    for ws in [&mut ws_echo, &mut ws_room] {
        assert_eq!(
            ws_expect_close(ws, Duration::from_secs(5)),
            (1001, "server shutting down".to_string())
        );
        // tungstenite answered the close while reading; then TCP closes.
        assert!(ws_wait_closed(ws, Duration::from_secs(5)));
    }
    for c in [&mut raw_echo, &mut raw_room] {
        assert_eq!(c.expect_close(Duration::from_secs(5)).0, 1001);
        c.send_close(1001, "");
        assert!(c.wait_eof(Duration::from_secs(5)));
    }
    let n = idle_http.read(&mut tmp).unwrap_or(0);
    assert_eq!(n, 0, "idle keep-alive connection not closed");
    // New connections are refused once the listeners are gone.
    assert!(eventually(Duration::from_secs(5), || TcpStream::connect(
        addr
    )
    .is_err()));
    assert!(
        join_within(h, Duration::from_secs(10)),
        "join() did not return although every connection closed"
    );
    assert!(t.elapsed() < Duration::from_secs(20));
}

#[test]
fn shutdown_gives_up_on_silent_clients_after_shutdown_timeout() {
    let h = start(Config {
        shutdown_timeout: Duration::from_secs(1),
        ..test_config()
    });
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    let mut w = ws_connect(h.local_addr(), "/rooms/x");
    h.shutdown();
    assert_eq!(c.expect_close(Duration::from_secs(5)).0, 1001);
    // `c` never answers; `w` is never read (so never answers either).
    assert!(join_within(h, Duration::from_secs(10)), "join() hung");
    assert!(c.wait_eof(Duration::from_secs(3)));
    let (code, _) = ws_expect_close(&mut w, Duration::from_secs(3));
    assert_eq!(code, 1001);
}

#[test]
fn shutdown_with_no_connections_is_immediate() {
    let h = start(Config {
        shutdown_timeout: Duration::from_secs(30),
        ..test_config()
    });
    h.shutdown();
    assert!(join_within(h, Duration::from_secs(10)));
}

#[test]
fn upgrade_completed_during_shutdown_is_refused() {
    // A client in the middle of its request head when shutdown begins
    // gets 503 (or the connection closed), never a 101.
    let h = start(Config {
        shutdown_timeout: Duration::from_secs(2),
        ..test_config()
    });
    let mut s = TcpStream::connect(h.local_addr()).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let req = upgrade_request("/echo", "");
    s.write_all(&req[..20]).unwrap();
    // The relay has the connection (it reads the first part whenever it
    // gets to it; idle or not, the connection survives the start of the
    // shutdown).
    assert!(eventually(WAIT, || h.totals().connections_accepted == 1));
    h.shutdown();
    // Every worker has seen the shutdown once its listener is gone.
    wait_listeners_closed(h.local_addr());
    let _ = s.write_all(&req[20..]);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(text.is_empty() || status_of(&text) == 503, "got: {text}");
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
    // Every worker has seen the flag once its listener is gone.
    wait_listeners_closed(h.local_addr());
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
    // Both connections are the relay's (whether it read the partial heads
    // before or after the flag, the connections survive the start of the
    // shutdown and the heads are completed afterwards).
    assert!(eventually(WAIT, || h.totals().connections_accepted == 2));
    h.shutdown();
    wait_listeners_closed(addr);
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

// ----- the real binary ------------------------------------------------------------

const BIN: &str = env!("CARGO_BIN_EXE_wsrelay");

fn relay_cmd(args: &[&str]) -> Command {
    let mut c = Command::new(BIN);
    c.args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Waits for the child to exit; kills it (it is ours) after `timeout`.
fn wait_exit(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("wsrelay did not exit within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stderr_of(child: &mut Child) -> String {
    let mut s = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut s);
    }
    s
}

/// Waits until `addr` answers /healthz with 200.
fn wait_ready(child: &mut Child, addr: SocketAddr) {
    if let Err(e) = try_ready(child, addr) {
        panic!("{e}");
    }
}

/// Waits until `addr` answers /healthz with 200; `Err` with the exit
/// status and stderr if the child exits first.
fn try_ready(child: &mut Child, addr: SocketAddr) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Err(format!(
                "wsrelay exited early ({status}): {}",
                stderr_of(child)
            ));
        }
        if TcpStream::connect(addr).is_ok() {
            let (resp, _) = http_exchange(
                addr,
                b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
                Duration::from_secs(3),
            );
            if status_of(&resp) == 200 {
                return Ok(());
            }
        }
        assert!(Instant::now() < deadline, "wsrelay never became ready");
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn sigterm(child: &Child) {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    assert_eq!(rc, 0);
}

/// Starts the binary on a free port (retrying if another process grabs
/// the port in between).
fn spawn_relay(extra: &[&str]) -> (Child, SocketAddr) {
    spawn_relay_env(&[], extra)
}

/// [`spawn_relay`] with environment variables set (`Some`) or removed
/// (`None`).
fn spawn_relay_env(env: &[(&str, Option<&str>)], extra: &[&str]) -> (Child, SocketAddr) {
    for _ in 0..5 {
        let port = free_port();
        let listen = format!("127.0.0.1:{port}");
        let mut args = vec![
            "--listen",
            &listen,
            "--workers",
            "2",
            "--max-connections",
            "1000",
            "--stats-interval",
            "0",
            "--shutdown-timeout",
            "5s",
        ];
        args.extend_from_slice(extra);
        let mut cmd = relay_cmd(&args);
        for (name, value) in env {
            match value {
                Some(v) => cmd.env(name, v),
                None => cmd.env_remove(name),
            };
        }
        let mut child = cmd.spawn().unwrap();
        let addr: SocketAddr = listen.parse().unwrap();
        match try_ready(&mut child, addr) {
            Ok(()) => return (child, addr),
            Err(e) if e.contains("cannot listen") => continue, // port taken meanwhile
            Err(e) => panic!("{e}"),
        }
    }
    panic!("no free port found");
}

#[test]
fn binary_sigterm_sends_1001_and_exits_zero() {
    let (mut child, addr) = spawn_relay(&[]);
    let mut ws = ws_connect(addr, "/echo");
    ws.send(Message::Text("hi".into())).unwrap();
    assert_eq!(ws_expect_data(&mut ws), Message::Text("hi".into()));
    let mut room = RawClient::connect(addr, "/rooms/sig");
    sigterm(&child);
    assert_eq!(
        ws_expect_close(&mut ws, Duration::from_secs(5)),
        (1001, "server shutting down".to_string())
    );
    assert!(ws_wait_closed(&mut ws, Duration::from_secs(5)));
    assert_eq!(room.expect_close(Duration::from_secs(5)).0, 1001);
    room.send_close(1001, "");
    assert!(room.wait_eof(Duration::from_secs(5)));
    let status = wait_exit(&mut child, Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "{}", stderr_of(&mut child));
}

fn temp_path(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join(format!(
        "wsrelay-engine-{tag}-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

#[test]
fn binary_print_config_output_starts_the_relay() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let out = relay_cmd(&[
        "--print-config",
        "--listen",
        &listen,
        "--ping-interval",
        "45s",
        "--max-connections",
        "1000",
        "--stats-interval",
        "0",
        "--echo-self",
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("ping_interval = \"45s\""), "{text}");
    assert!(text.contains(&listen), "{text}");
    let path = temp_path("printed");
    std::fs::write(&path, &text).unwrap();
    let mut child = relay_cmd(&["--config", path.to_str().unwrap()])
        .spawn()
        .unwrap();
    let addr: SocketAddr = listen.parse().unwrap();
    wait_ready(&mut child, addr);
    // The file's settings are in force: echo_self delivers our own message.
    let mut ws = ws_connect(addr, "/rooms/printed");
    ws.send(Message::Text("me".into())).unwrap();
    assert_eq!(ws_expect_data(&mut ws), Message::Text("me".into()));
    sigterm(&child);
    assert_eq!(ws_expect_close(&mut ws, Duration::from_secs(5)).0, 1001);
    assert!(ws_wait_closed(&mut ws, Duration::from_secs(5)));
    let status = wait_exit(&mut child, Duration::from_secs(10));
    let _ = std::fs::remove_file(&path);
    assert_eq!(status.code(), Some(0), "{}", stderr_of(&mut child));
}

#[test]
fn binary_unknown_config_key_exits_2_with_one_line() {
    let path = temp_path("bad");
    std::fs::write(&path, "listen = \"127.0.0.1:0\"\nbogus_key = 1\n").unwrap();
    let out = relay_cmd(&["--config", path.to_str().unwrap()])
        .output()
        .unwrap();
    let _ = std::fs::remove_file(&path);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains("bogus_key"), "{err}");
    // Unknown flag: same contract.
    let out = relay_cmd(&["--bogus-flag", "1"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--bogus-flag"), "{err}");
}

#[test]
fn a_second_relay_on_the_same_port_is_refused_not_silently_sharing_it() {
    // SO_REUSEPORT lets sockets of the same user share a port; a second
    // relay started by mistake would take half of the connections.
    let first = wsrelay::server::start(test_config()).expect("first relay");
    let addr = first.local_addr();
    expect_bind_refused(addr);
    // The first relay still serves (it got every connection).
    for _ in 0..4 {
        let mut c = RawClient::connect(addr, "/echo");
        c.send_text("still here");
        assert_eq!(c.expect_frame().payload, b"still here");
    }
    first.shutdown();
    first.join();
}

#[test]
fn binary_unbindable_address_exits_2_naming_the_address() {
    // A plain std listener (SO_REUSEADDR but not SO_REUSEPORT) holds the
    // port: the relay's SO_REUSEPORT bind must fail with EADDRINUSE.
    let holder = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let err = expect_bind_refused(addr);
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "{err}");
    assert!(lines[0].contains(&addr.to_string()), "{err}");
    assert!(
        lines[0].to_ascii_lowercase().contains("in use"),
        "expected EADDRINUSE: {err}"
    );
    drop(holder);
}

/// Something already listens on `addr`: the binary must exit 2 saying the
/// address is in use, and in-process `start()` must report a `Bind` error
/// for that address. Returns the binary's stderr.
fn expect_bind_refused(addr: SocketAddr) -> String {
    let out = relay_cmd(&[
        "--listen",
        &addr.to_string(),
        "--max-connections",
        "1000",
        "--log-level",
        "error",
    ])
    .output()
    .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(err.to_ascii_lowercase().contains("in use"), "{err}");
    let e = wsrelay::server::start(Config {
        listen: addr,
        ..test_config()
    })
    .err()
    .expect("in-process start() must be refused too");
    assert!(
        matches!(&e, wsrelay::server::StartError::Bind { addr: a, .. } if *a == addr),
        "{e}"
    );
    err
}

fn sighup(child: &Child) {
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGHUP) };
    assert_eq!(rc, 0);
}

/// SIGHUP reloads the TLS certificate (or says there is none) and never
/// stops the relay; SIGTERM still does.
#[test]
fn binary_sighup_reloads_tls_and_keeps_serving() {
    let p = crate::tls::pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let (cert, key) = (p.cert.to_str().unwrap(), p.key.to_str().unwrap());
    for tls in [false, true] {
        let extra: &[&str] = if tls {
            &[
                "--tls-listen",
                "127.0.0.1:0",
                "--tls-cert",
                cert,
                "--tls-key",
                key,
            ]
        } else {
            &[]
        };
        let (mut child, addr) = spawn_relay(extra);
        sighup(&child);
        // Still serving after the signal. SIGHUP's default action would
        // kill the process; the pause only gives that time to happen, so
        // a slow machine can make this check miss, never fail wrongly.
        std::thread::sleep(Duration::from_millis(300));
        let mut ws = ws_connect(addr, "/echo");
        ws.send(Message::Text("after hup".into())).unwrap();
        assert_eq!(ws_expect_data(&mut ws), Message::Text("after hup".into()));
        assert!(
            child.try_wait().unwrap().is_none(),
            "SIGHUP stopped the relay"
        );
        drop(ws);
        sigterm(&child);
        let status = wait_exit(&mut child, Duration::from_secs(10));
        let err = stderr_of(&mut child);
        assert_eq!(status.code(), Some(0), "{err}");
        let expected = if tls {
            "SIGHUP: TLS certificate reloaded"
        } else {
            "SIGHUP: no tls_listen, nothing to reload"
        };
        assert!(err.contains(expected), "{err}");
    }
}
