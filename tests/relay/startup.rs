//! The relay binary starts as one plain process: a configuration given on
//! a pipe (`--config /dev/stdin`, `<(envsubst < relay.toml)`) is read once
//! and takes effect, and the process keeps its own name (`wsrelay` in
//! `/proc/PID/comm`), so supervisors, `pgrep` and profilers find it.

#![cfg(target_os = "linux")]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child if the test fails half-way, so no relay is left behind.
struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET /healthz` answered with 200 at `addr`.
fn healthy(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    resp.starts_with(b"HTTP/1.1 200")
}

#[test]
fn config_on_a_pipe_takes_effect_and_the_process_keeps_its_name() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let config = format!(
        "listen = \"127.0.0.1:{port}\"\n\
         workers = 1\n\
         max_connections = 1234\n\
         stats_interval = \"0\"\n\
         shutdown_timeout = \"2s\"\n\
         log_level = \"info\"\n"
    );
    let mut relay = Relay(
        Command::new(env!("CARGO_BIN_EXE_wsrelay"))
            .args(["--config", "/dev/stdin"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wsrelay"),
    );
    // Write the configuration and close the pipe: it can be read once.
    {
        let mut stdin = relay.0.stdin.take().unwrap();
        stdin.write_all(config.as_bytes()).unwrap();
    }
    let pid = relay.0.id();

    // The piped `listen` took effect: the relay serves on that port.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut ready = false;
    while Instant::now() < deadline {
        if let Some(status) = relay.0.try_wait().unwrap() {
            let mut err = String::new();
            let _ = relay.0.stderr.take().unwrap().read_to_string(&mut err);
            panic!("wsrelay exited early ({status}): {err}");
        }
        if healthy(addr) {
            ready = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();

    // Stop it and read its log.
    // SAFETY: kill(2) on the pid of a child we spawned and have not reaped.
    unsafe { libc::kill(pid as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    while relay.0.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = relay.0.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut err = String::new();
    let _ = relay.0.stderr.take().unwrap().read_to_string(&mut err);

    assert!(
        ready,
        "the relay never served on {addr}, the port given in the piped config: {err}"
    );
    assert_eq!(comm.trim_end(), "wsrelay", "/proc/{pid}/comm; log: {err}");
    assert_eq!(err.matches("listening on").count(), 1, "{err}");
    assert!(err.contains(&format!("listening on ws://{addr}")), "{err}");
    assert!(
        err.contains("max_connections=1234"),
        "the piped max_connections took effect: {err}"
    );
}
