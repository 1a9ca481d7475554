//! Running out of file descriptors: the relay warns at start-up, keeps
//! serving its connections, does not spin, and accepts again once
//! descriptors are free. Runs the real binary under `ulimit -n 64`.

mod common;
use common::*;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use wsrelay::protocol::OpCode;

const BIN: &str = env!("CARGO_BIN_EXE_wsrelay");

/// CPU time (user + system, in clock ticks) the process has used.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the parenthesised command name; utime and stime are the
    // 14th and 15th fields of the whole line.
    let after = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn echo_once(c: &mut RawClient, text: &str) {
    c.send_text(text);
    let f = c.expect_frame();
    assert_eq!(
        (f.opcode, f.payload.as_slice()),
        (OpCode::Text, text.as_bytes())
    );
}

struct Relay(Child);

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn descriptor_exhaustion_backs_off_keeps_serving_and_recovers() {
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "ulimit -n 64 && exec {BIN} --listen {addr} --workers 1 --stats-interval 0"
        ))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut relay = Relay(child);
    let pid = relay.0.id();
    assert!(
        eventually(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
        "relay did not start"
    );

    let mut a = RawClient::connect(addr, "/echo");
    echo_once(&mut a, "before");

    // Far more connections than descriptors: the kernel queues them, the
    // relay accepts until EMFILE and then backs off.
    let flood: Vec<TcpStream> = (0..150)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    assert!(flood.len() > 64, "only {} connections queued", flood.len());
    std::thread::sleep(Duration::from_millis(500));

    // Not spinning: well under half a core while out of descriptors (a
    // busy accept loop would use all of one).
    let t0 = cpu_ticks(pid);
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(pid) - t0;
    let elapsed_ticks = (w0.elapsed().as_secs_f64() * 100.0) as u64;
    assert!(
        used * 2 < elapsed_ticks,
        "relay used {used} of {elapsed_ticks} ticks while out of descriptors"
    );

    // Still serving the connection it has.
    echo_once(&mut a, "during");

    // Free the descriptors: a new WebSocket gets in again (the queued
    // connections the relay still has to accept and drop come first).
    drop(flood);
    let mut b = None;
    assert!(
        eventually(Duration::from_secs(15), || {
            let (status, stream) = upgrade_status(addr, "/echo", "");
            b = Some(stream);
            status == 101
        }),
        "no new connection accepted after descriptors were freed"
    );
    drop(b);
    echo_once(&mut a, "after");

    let _ = relay.0.kill();
    let _ = relay.0.wait();
    let mut stderr = String::new();
    relay
        .0
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stderr.contains("open-files limit is 64 (hard limit 64)"),
        "start-up warning naming both limits missing: {stderr}"
    );
    assert!(
        stderr.contains("pausing accepts"),
        "no back-off warning: {stderr}"
    );
}
