//! `selftest-decode`: the receive path's capacity on one core, without
//! sockets. Pre-encoded server frames are copied into the worker-sized
//! read buffer (standing in for the kernel's copy in read()) and fed
//! through exactly the code a worker runs: frame decode in place, message
//! assembly, checksum, sequence tracking, histogram. With `--deflate` the
//! frames are compressed as the relay compresses a broadcast (level 1, no
//! context takeover, `compress_frames`) and inflated on the way in, as a
//! `--deflate` connection does; `--payload` picks the payload kind.

use crate::clock::now_ns;
use crate::conn::{feed, ConnCore, State, Tls};
use crate::payload;
use crate::plan::Plan;
use crate::sys;
use crate::tracker::SeqTracker;
use wsrelay::protocol::{encode_frame, OpCode};

pub struct SelftestResult {
    pub messages: u64,
    pub secs: f64,
    pub cpu_secs: f64,
}

pub fn run(
    size: usize,
    format: payload::Format,
    deflate: bool,
    time: std::time::Duration,
) -> SelftestResult {
    let size = size.max(format.header_len());
    // About 64 KiB of back-to-back frames, as one read would return.
    let per_chunk = (65536 / (size + 10)).max(1);
    let mut wire = Vec::new();
    let mut m = format.template(size);
    let now = now_ns();
    let opcode = if format.is_text() {
        OpCode::Text
    } else {
        OpCode::Binary
    };
    for seq in 0..per_chunk as u64 {
        format.write(&mut m, 0, seq, now);
        encode_frame(true, opcode, &m, &mut wire);
    }
    if deflate {
        let mut d = wsrelay::protocol::deflate::Deflater::new(1, 15);
        wire =
            wsrelay::protocol::deflate::compress_frames(&wire, &mut d, 0, &mut Default::default())
                .expect("whole frames");
    }
    let plan = Plan {
        global: 0,
        node: 0,
        path: "/selftest".into(),
        room: 0,
        publisher: None,
        tracks: true,
        churn: false,
        channels: Vec::new(),
    };
    let mut c = ConnCore::new(&plan, 1, 1, 0);
    c.state = State::Open;
    c.z = deflate;
    let mut t = Tls::new(size, 1, vec![1], 1);
    t.set_format(format);
    let mut rbuf = vec![0u8; 256 << 10];
    let start = now_ns();
    let cpu0 = sys::cpu_ns();
    let deadline = start + time.as_nanos() as u64;
    let mut passes = 0u64;
    loop {
        rbuf[..wire.len()].copy_from_slice(&wire);
        let fed = feed(&mut c, &mut rbuf[..wire.len()], now_ns(), &mut t);
        assert_eq!(fed.consumed, wire.len());
        assert!(fed.remove.is_none());
        // The same sequence numbers again next pass: start afresh.
        c.trackers[0] = SeqTracker::default();
        passes += 1;
        if passes & 15 == 0 && now_ns() >= deadline {
            break;
        }
    }
    let secs = (now_ns() - start) as f64 / 1e9;
    let msgs = passes * per_chunk as u64;
    assert_eq!(t.stats.recv, msgs);
    assert_eq!(t.stats.corrupted, 0);
    if deflate {
        assert_eq!(t.stats.compressed_in, msgs);
    }
    SelftestResult {
        messages: msgs,
        secs,
        cpu_secs: (sys::cpu_ns() - cpu0) as f64 / 1e9,
    }
}

/// The same for the pubsub scenario: text frames each holding one
/// `{"push":{"channel":…,"pub":{"data":…,"info":…,"offset":…}}}` line (as
/// the relay sends a client's publication), through the protocol client: JSON scan, channel lookup,
/// offset and sequence accounting, latency histogram.
pub fn run_pubsub(time: std::time::Duration) -> SelftestResult {
    use crate::pubsub::client::{Phase, PsClient, PsConfig, PsTls, TokenMode};
    use crate::pubsub::track::SubTrack;
    use std::sync::atomic::AtomicU64;
    use std::sync::Arc;
    let cfg = Arc::new(PsConfig {
        channels: vec!["chat:c0".into()],
        publishers: 1,
        pad_to: 0,
        token: TokenMode::None,
    });
    let now = now_ns();
    let mut wire = Vec::new();
    let mut n = 0u64;
    while wire.len() < 65536 - 256 {
        let line = format!(
            r#"{{"push":{{"channel":"chat:c0","pub":{{"data":{{"p":0,"k":0,"s":{n},"t":{now}}},"info":{{"user":"load-1000","client":"686c168728cfcacb-3681"}},"offset":{}}}}}}}"#,
            n + 1
        );
        encode_frame(true, OpCode::Text, line.as_bytes(), &mut wire);
        n += 1;
    }
    let plan = Plan {
        global: 0,
        node: 0,
        path: "/connection/websocket".into(),
        room: 0,
        publisher: None,
        tracks: false,
        churn: false,
        channels: vec![0],
    };
    let mut c = ConnCore::new(&plan, 1, 1, 0);
    c.state = State::Open;
    let mut client = PsClient::new(&cfg, &[0], None, None);
    client.phase = Phase::Ready;
    let fresh = SubTrack::new(0, 1);
    c.ps = Some(Box::new(client));
    let mut t = Tls::new(64, 1, vec![1], 1);
    t.ps = Some(PsTls::new(cfg, Arc::new(vec![AtomicU64::new(0)])));
    let mut rbuf = vec![0u8; 256 << 10];
    let start = now_ns();
    let cpu0 = sys::cpu_ns();
    let deadline = start + time.as_nanos() as u64;
    let mut passes = 0u64;
    loop {
        rbuf[..wire.len()].copy_from_slice(&wire);
        let fed = feed(&mut c, &mut rbuf[..wire.len()], now_ns(), &mut t);
        assert_eq!(fed.consumed, wire.len());
        if let Some(p) = c.ps.as_mut() {
            p.subs[0] = fresh.clone();
        }
        passes += 1;
        if passes & 15 == 0 && now_ns() >= deadline {
            break;
        }
    }
    let secs = (now_ns() - start) as f64 / 1e9;
    let msgs = passes * n;
    assert_eq!(t.stats.delivered, msgs);
    SelftestResult {
        messages: msgs,
        secs,
        cpu_secs: (sys::cpu_ns() - cpu0) as f64 / 1e9,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pubsub_selftest_counts_every_push() {
        let r = super::run_pubsub(std::time::Duration::from_millis(50));
        assert!(r.messages > 100);
    }

    #[test]
    fn selftest_runs_and_counts() {
        let r = super::run(
            64,
            crate::payload::Format::Binary,
            false,
            std::time::Duration::from_millis(50),
        );
        assert!(r.messages > 1000);
        assert!(r.secs > 0.0);
    }

    /// Compressed JSON through the inflating receive path: every message
    /// counted compressed, none corrupted (asserted inside `run`).
    #[test]
    fn selftest_inflates_compressed_json() {
        let r = super::run(
            512,
            crate::payload::Format::Json,
            true,
            std::time::Duration::from_millis(50),
        );
        assert!(r.messages >= 100);
    }
}
