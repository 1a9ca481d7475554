//! Bounds over the wire: frame and message size limits, slow consumers
//! (outbound queue bound), rate limits, file descriptors, and the
//! regression tests for the engine's unbounded paths (memory, queues,
//! connection caps, backpressure).

use crate::support::*;
use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tungstenite::Message;
use wsrelay::config::{Config, RateLimitPolicy, SlowConsumerPolicy};
use wsrelay::protocol::{encode_client_frame, MaskRng, OpCode};
use wsrelay::server::ServerHandle;

// ----- frame and message sizes ------------------------------------------------------

fn limits_config() -> Config {
    Config {
        max_frame_bytes: 1000,
        max_message_bytes: 1000,
        ..test_config()
    }
}

#[test]
fn oversize_frame_header_alone_gets_1009() {
    let h = start(limits_config());
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    // FIN|binary, MASK|126, length 5000, mask key; no payload follows.
    c.send_raw(&[0x82, 0xfe, 0x13, 0x88, 1, 2, 3, 4]);
    let reason = expect_failed(&mut c, 1009);
    assert!(reason.contains("too large"), "{reason}");
    // Even without the mask key: the length alone decides.
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    c.send_raw(&[0x81, 0xff, 0, 0, 0, 1, 0, 0, 0, 0]);
    expect_failed(&mut c, 1009);
    assert_eq!(close_codes_sent(&h, 1009), 2);
    h.shutdown();
    h.join();
}

#[test]
fn frame_at_the_limit_is_accepted() {
    let h = start(limits_config());
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    let data = vec![0x5a; 1000];
    c.send_binary(&data);
    let f = c.expect_frame();
    assert_eq!((f.opcode, f.payload), (OpCode::Binary, data));
    c.send_binary(&[0x5a; 1001]);
    expect_failed(&mut c, 1009);
    h.shutdown();
    h.join();
}

#[test]
fn oversize_message_across_fragments_gets_1009() {
    let h = start(Config {
        max_frame_bytes: 1000,
        max_message_bytes: 1000,
        ..test_config()
    });
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    // Each fragment is within max_frame_bytes; together they are not.
    c.send_frame(false, OpCode::Binary, &[1; 400]);
    c.send_frame(false, OpCode::Continuation, &[2; 400]);
    c.send_frame(true, OpCode::Continuation, &[3; 400]);
    let reason = expect_failed(&mut c, 1009);
    assert!(reason.contains("too large"), "{reason}");
    // Exactly max_message_bytes across fragments is fine.
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    c.send_frame(false, OpCode::Text, &[b'a'; 500]);
    c.send_frame(true, OpCode::Continuation, &[b'b'; 500]);
    let f = c.expect_frame();
    assert_eq!(f.payload.len(), 1000);
    assert_eq!(f.opcode, OpCode::Text);
    h.shutdown();
    h.join();
}

#[test]
fn oversize_with_tungstenite_gets_1009() {
    let h = start(limits_config());
    let mut ws = ws_connect(h.local_addr(), "/echo");
    ws.send(tungstenite::Message::Binary(vec![0; 4000]))
        .unwrap();
    let (code, _) = ws_expect_close(&mut ws, Duration::from_secs(5));
    assert_eq!(code, 1009);
    h.shutdown();
    h.join();
}

// ----- slow consumers (max_outbound_bytes) ------------------------------------------

/// A room subscriber whose socket has a tiny receive buffer and that does
/// not read until told to.
fn tiny_rcvbuf_member(addr: SocketAddr, path: &str) -> Ws {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    ws_over(s.into(), addr, path)
}

/// Messages published: 1 KiB, the sequence number in the first 8 bytes.
fn numbered(seq: u64) -> Vec<u8> {
    let mut v = vec![0xab; 1024];
    v[..8].copy_from_slice(&seq.to_be_bytes());
    v
}

fn seq_of(data: &[u8]) -> u64 {
    u64::from_be_bytes(data[..8].try_into().unwrap())
}

/// A reading member in a thread: checks every message arrives, in order,
/// until the text "end". Returns the count.
fn reader(mut ws: Ws, count: Arc<AtomicUsize>) -> std::thread::JoinHandle<Result<u64, String>> {
    std::thread::spawn(move || {
        let mut next = 0u64;
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if Instant::now() > deadline {
                return Err(format!("reader timed out at {next}"));
            }
            match ws.read() {
                Ok(Message::Binary(b)) => {
                    if seq_of(&b) != next {
                        return Err(format!("got {} expected {next}", seq_of(&b)));
                    }
                    next += 1;
                    count.store(next as usize, Ordering::Release);
                }
                Ok(Message::Text(t)) if t == "end" => return Ok(next),
                Ok(Message::Ping(_)) | Ok(Message::Pong(_)) => {}
                Ok(other) => return Err(format!("unexpected {other:?} after {next}")),
                Err(e) if ws_is_timeout(&e) => {}
                Err(e) => return Err(format!("read error after {next}: {e}")),
            }
        }
    })
}

/// Messages published between waits for the reading members: 16 KiB,
/// well under max_outbound_bytes (see the ignored burst test below for why
/// the publisher must not get further ahead).
const BATCH: u64 = 16;

/// Waits until every count reaches `n`.
fn wait_counts(counts: &[Arc<AtomicUsize>], n: u64) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if counts.iter().all(|c| c.load(Ordering::Acquire) as u64 >= n) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
}

/// Publishes numbered messages until `done` says so (checked every
/// [`BATCH`] messages, after the readers caught up), then `extra` more,
/// then "end". Returns how many were published.
fn publish_until(
    publisher: &mut Ws,
    counts: &[Arc<AtomicUsize>],
    extra: u64,
    mut done: impl FnMut() -> bool,
) -> u64 {
    let mut seq = 0u64;
    let mut stop_at: Option<u64> = None;
    while stop_at.is_none_or(|end| seq < end) {
        publisher.send(Message::Binary(numbered(seq))).unwrap();
        seq += 1;
        if seq.is_multiple_of(BATCH) {
            // Let the reading members keep up, so only the stalled one
            // ever has a backlog.
            assert!(
                wait_counts(counts, seq),
                "reading members fell behind at {seq}: {:?}",
                counts
                    .iter()
                    .map(|c| c.load(Ordering::Acquire))
                    .collect::<Vec<_>>()
            );
            if stop_at.is_none() && done() {
                stop_at = Some(seq + extra);
            }
            assert!(
                seq < 65_536,
                "the stalled member never hit max_outbound_bytes (64 MiB sent)"
            );
        }
    }
    publisher.send(Message::Text("end".into())).unwrap();
    seq
}

/// A `reader` thread's outcome: messages received, or what went wrong.
type ReaderThread = std::thread::JoinHandle<Result<u64, String>>;

/// Reading members of room "feed" on every worker (at least two), each in
/// a `reader` thread, with their received-message counters.
fn feed_readers(h: &ServerHandle) -> (Vec<Arc<AtomicUsize>>, Vec<ReaderThread>) {
    let members = spread(h, "/rooms/feed?role=sub", 2, 1);
    let counts: Vec<Arc<AtomicUsize>> = members
        .iter()
        .map(|_| Arc::new(AtomicUsize::new(0)))
        .collect();
    let readers = members
        .into_iter()
        .zip(&counts)
        .map(|((ws, _), c)| reader(ws, c.clone()))
        .collect();
    (counts, readers)
}

/// Room "feed" with one stalled member (tiny receive buffer, never reads)
/// and the reading members of [`feed_readers`]; publishes until `done`
/// (plus `extra` messages) and checks every reading member got all of
/// them. Returns the stalled member, the publisher and the count.
fn publish_past_a_stalled_member(
    h: &ServerHandle,
    extra: u64,
    done: impl FnMut() -> bool,
) -> (Ws, Ws, u64) {
    let addr = h.local_addr();
    let slow = tiny_rcvbuf_member(addr, "/rooms/feed?role=sub");
    let (counts, readers) = feed_readers(h);
    let mut publisher = ws_connect(addr, "/rooms/feed?role=pub");
    let published = publish_until(&mut publisher, &counts, extra, done);
    for r in readers {
        assert_eq!(r.join().unwrap().unwrap(), published);
    }
    (slow, publisher, published)
}

fn slow_consumer_config(policy: SlowConsumerPolicy) -> Config {
    Config {
        max_outbound_bytes: 64 << 10,
        slow_consumer: policy,
        close_timeout: Duration::from_secs(10),
        ..test_config()
    }
}

#[test]
fn slow_consumer_is_closed_with_1008_and_others_get_everything() {
    let h = start(slow_consumer_config(SlowConsumerPolicy::Close));
    let (mut slow, _publisher, published) =
        publish_past_a_stalled_member(&h, 200, || sum(&h, |m| m.slow_consumer_closes.get()) >= 1);
    assert_eq!(sum(&h, |m| m.slow_consumer_closes.get()), 1);
    // The stalled member now reads: a gap-free prefix of the stream, then
    // the 1008 close.
    let mut next = 0u64;
    let (code, reason) = loop {
        match ws_read(&mut slow, Duration::from_secs(10)) {
            Some(Message::Binary(b)) => {
                assert_eq!(seq_of(&b), next, "stalled member's stream has a gap");
                next += 1;
            }
            Some(Message::Close(Some(f))) => break (u16::from(f.code), f.reason.into_owned()),
            Some(Message::Ping(_)) | Some(Message::Pong(_)) => {}
            other => panic!("stalled member: unexpected {other:?} after {next} messages"),
        }
    };
    assert_eq!((code, reason.as_str()), (1008, "slow consumer"));
    assert!(
        next < published,
        "the stalled member cannot have got everything"
    );
    // tungstenite answered the close; the server then closes TCP.
    assert!(ws_wait_closed(&mut slow, Duration::from_secs(5)));
    // Left: the publisher (the readers dropped their sockets at "end").
    assert!(eventually(Duration::from_secs(3), || h
        .totals()
        .connections_open
        == 1));
    h.shutdown();
    h.join();
}

/// Publishes until the stalled member is closed as a slow consumer and
/// returns how many 1 KiB messages that took.
fn messages_until_slow_consumer_close(send_buffer_bytes: usize) -> u64 {
    // slow_consumer_config: a 64 KiB outbound bound.
    let h = start(Config {
        send_buffer_bytes,
        ..slow_consumer_config(SlowConsumerPolicy::Close)
    });
    let (_slow, _publisher, published) =
        publish_past_a_stalled_member(&h, 0, || sum(&h, |m| m.slow_consumer_closes.get()) >= 1);
    h.shutdown();
    h.join();
    published
}

#[test]
fn send_buffer_cap_bounds_what_a_stalled_reader_absorbs() {
    // 64 KiB requested is 128 KiB in the kernel (Linux doubles it), plus
    // the 64 KiB queue and the stalled client's ~8 KiB receive window:
    // the close comes after roughly 200 messages of 1 KiB (176 measured).
    // Left to autotuning (send_buffer_bytes = 0) the send buffer grows
    // towards tcp_wmem's max first (2,800 messages measured, 4 MiB max).
    let capped = messages_until_slow_consumer_close(64 << 10);
    assert!(
        capped <= 600,
        "a stalled reader absorbed {capped} KiB before the slow-consumer close"
    );
}

#[test]
fn slow_consumer_drop_policy_keeps_the_connection_and_counts_drops() {
    let h = start(slow_consumer_config(SlowConsumerPolicy::Drop));
    let (mut slow, mut publisher, published) =
        publish_past_a_stalled_member(&h, 200, || sum(&h, |m| m.drops.get()) >= 1);
    let drops = sum(&h, |m| m.drops.get());
    // Delivery resumes whenever the kernel takes more of the backlog (the
    // queue is written before its bound is judged), so not every later
    // message is dropped; the exact accounting is checked below.
    assert!(drops >= 1, "no message was dropped: {drops}");
    assert_eq!(sum(&h, |m| m.slow_consumer_closes.get()), 0);
    // The stalled member reads: an increasing subsequence, and "end" if
    // the queue had room for it. Every message (the numbered ones and
    // "end") was fanned out before the reading members got "end", so the
    // drop count is final: read until every message is accounted for,
    // then check the connection is open and usable.
    let mut last: Option<u64> = None;
    let mut received = 0u64;
    let mut saw_end = false;
    let deadline = Instant::now() + Duration::from_secs(20);
    while received + drops + u64::from(saw_end) < published + 1 {
        let left = deadline.saturating_duration_since(Instant::now());
        let Some(m) = ws_read(&mut slow, left) else {
            panic!(
                "stalled member: {received} received + {drops} dropped + end {saw_end} of {published} + end"
            );
        };
        match m {
            Message::Binary(b) => {
                let s = seq_of(&b);
                assert!(
                    last.is_none_or(|l| s > l),
                    "out of order: {s} after {last:?}"
                );
                last = Some(s);
                received += 1;
            }
            Message::Text(t) if t == "end" => saw_end = true,
            Message::Ping(_) | Message::Pong(_) => {}
            other => panic!("stalled member: unexpected {other:?}"),
        }
    }
    assert!(
        received > 0 && received < published,
        "{received} of {published}"
    );
    assert_eq!(
        received + drops,
        published + u64::from(!saw_end),
        "every message is either delivered or counted as dropped"
    );
    // Still open: a ping is answered and new messages arrive.
    slow.send(Message::Ping(b"alive?".to_vec())).unwrap();
    publisher
        .send(Message::Binary(numbered(published)))
        .unwrap();
    let mut pong = false;
    let mut fresh = false;
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(pong && fresh) && Instant::now() < deadline {
        match ws_read(&mut slow, Duration::from_secs(1)) {
            Some(Message::Pong(p)) => {
                assert_eq!(p, b"alive?");
                pong = true;
            }
            Some(Message::Binary(b)) => {
                assert_eq!(seq_of(&b), published);
                fresh = true;
            }
            Some(other) => panic!("unexpected {other:?}"),
            None => {}
        }
    }
    assert!(pong && fresh, "pong {pong}, fresh message {fresh}");
    // The stalled member and the publisher (the readers left at "end").
    assert!(eventually(Duration::from_secs(3), || h
        .totals()
        .connections_open
        == 2));
    h.shutdown();
    h.join();
}

/// A subscriber that reads as fast as it can, in a thread: counts binary
/// messages until `total` arrived, the server closed it, or 10 s of quiet.
fn drain_count(
    mut ws: Ws,
    total: usize,
) -> std::thread::JoinHandle<(usize, Option<(u16, String)>)> {
    std::thread::spawn(move || {
        let mut n = 0;
        while n < total {
            match ws_read(&mut ws, Duration::from_secs(10)) {
                Some(Message::Binary(_)) => n += 1,
                Some(Message::Close(Some(f))) => {
                    return (n, Some((u16::from(f.code), f.reason.into_owned())))
                }
                Some(Message::Close(None)) => return (n, Some((1005, String::new()))),
                Some(_) => {}
                None => break,
            }
        }
        (n, None)
    })
}

// Bug: a burst read from a publisher in one wake-up is enqueued to every
// subscriber before anything is written to their sockets (flush_dirty runs
// once per loop iteration), so a subscriber that reads as fast as it can
// is closed as a "slow consumer" as soon as one burst exceeds
// max_outbound_bytes, although its socket could take the data at once.
#[test]
fn publisher_burst_does_not_close_a_fast_subscriber() {
    let h = start(Config {
        workers: 1,
        max_outbound_bytes: 64 << 10,
        ..test_config()
    });
    let addr = h.local_addr();
    let sub = ws_connect(addr, "/rooms/burst?role=sub");
    let mut publisher = ws_connect(addr, "/rooms/burst?role=pub");
    let reader = drain_count(sub, 300);
    // 300 KiB written in one go (one flush): a burst, not a stalled peer.
    for i in 0..300u64 {
        publisher.write(Message::Binary(numbered(i))).unwrap();
    }
    publisher.flush().unwrap();
    let (n, closed) = reader.join().unwrap();
    assert_eq!(
        (n, closed),
        (300, None),
        "a subscriber reading at full speed lost the stream; slow_consumer_closes = {}",
        sum(&h, |m| m.slow_consumer_closes.get())
    );
    h.shutdown();
    h.join();
}

// Same bug with the default limits (max_outbound_bytes = 1 MiB): several
// publishers on one worker, the subscriber on the other; the receiving
// worker drains up to 4096 cross-worker messages per iteration before it
// flushes anything.
#[test]
fn multi_publisher_burst_does_not_close_a_fast_cross_worker_subscriber() {
    const PUBLISHERS: usize = 6;
    const PER: usize = 400;
    let h = start(test_config());
    let addr = h.local_addr();
    let sub = loop {
        let (ws, w) = on_which_worker(&h, || ws_connect(addr, "/rooms/burst?role=sub"));
        if w == 1 {
            break ws;
        }
    };
    let mut pubs = Vec::new();
    while pubs.len() < PUBLISHERS {
        let (ws, w) = on_which_worker(&h, || ws_connect(addr, "/rooms/burst?role=pub"));
        if w == 0 {
            pubs.push(ws);
        }
    }
    let reader = drain_count(sub, PUBLISHERS * PER);
    let writers: Vec<_> = pubs
        .into_iter()
        .map(|mut p| {
            std::thread::spawn(move || {
                for i in 0..PER as u64 {
                    p.write(Message::Binary(numbered(i))).unwrap();
                }
                p.flush().unwrap();
                p
            })
        })
        .collect();
    let _pubs: Vec<Ws> = writers.into_iter().map(|t| t.join().unwrap()).collect();
    let (n, closed) = reader.join().unwrap();
    assert_eq!(
        (n, closed),
        (PUBLISHERS * PER, None),
        "slow_consumer_closes = {}",
        sum(&h, |m| m.slow_consumer_closes.get())
    );
    h.shutdown();
    h.join();
}

// ----- file descriptors ------------------------------------------------------------

pub(crate) const BIN: &str = env!("CARGO_BIN_EXE_wsrelay");

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
    // The relay's log, collected as it comes.
    let log = Arc::new(Mutex::new(String::new()));
    let mut stderr = relay.0.stderr.take().unwrap();
    let collector = {
        let log = log.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                log.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
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
    // Out of descriptors once it says so.
    assert!(
        eventually(Duration::from_secs(10), || log
            .lock()
            .unwrap()
            .contains("pausing accepts")),
        "no back-off warning: {}",
        log.lock().unwrap()
    );

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
    a.send_text("during");
    match a.read_frame(Duration::from_secs(5)) {
        Read_::Frame(f) => assert_eq!(
            (f.opcode, f.payload.as_slice()),
            (OpCode::Text, &b"during"[..])
        ),
        other => panic!(
            "no echo while out of descriptors ({other:?}); relay exited: {:?}; its log:\n{}",
            relay.0.try_wait(),
            log.lock().unwrap()
        ),
    }

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
    collector.join().unwrap();
    let stderr = log.lock().unwrap().clone();
    assert!(
        stderr.contains("open-files limit is 64 (hard limit 64)"),
        "start-up warning naming both limits missing: {stderr}"
    );
    assert!(
        stderr.contains("pausing accepts"),
        "no back-off warning: {stderr}"
    );
}

// ----- rate limits ---------------------------------------------------------------------
//
// Only what does not depend on token-refill timing: a burst sent in one
// write, and what the relay does with its excess. Refill timing is tested
// on a virtual clock (MOVED.md).

fn limited(messages: u32, burst: u32, bytes: usize, policy: RateLimitPolicy) -> Config {
    Config {
        rate_limit_messages: messages,
        rate_limit_burst: burst,
        rate_limit_bytes: bytes,
        rate_limit_policy: policy,
        ..test_config()
    }
}

/// `n` masked text frames "m0", "m1", ... in one buffer (one write, so
/// they arrive together).
fn burst_of(n: usize, payload_len: usize) -> Vec<u8> {
    let mut rng = MaskRng::new();
    let mut out = Vec::new();
    for i in 0..n {
        let mut p = format!("m{i}").into_bytes();
        p.resize(payload_len.max(p.len()), b'.');
        encode_client_frame(true, OpCode::Text, &p, rng.mask_key(), &mut out);
    }
    out
}

/// Sends a ping (pings are not rate limited) and reads until its pong:
/// every echo of what was sent before comes first. Returns the data frames
/// and the close frame if one came instead of the pong.
fn drain_until_pong(c: &mut RawClient) -> (Vec<Frame>, Option<(u16, String)>) {
    c.send_frame(true, OpCode::Ping, b"drained?");
    let mut data = Vec::new();
    loop {
        match c.read_frame(WAIT) {
            Read_::Frame(f) if f.opcode == OpCode::Close => return (data, f.close_code()),
            Read_::Frame(f) if f.opcode == OpCode::Pong && f.payload == b"drained?" => {
                return (data, None)
            }
            Read_::Frame(f) if f.opcode == OpCode::Ping || f.opcode == OpCode::Pong => continue,
            Read_::Frame(f) => data.push(f),
            other => panic!("neither the pong nor a close: {other:?} after {data:?}"),
        }
    }
}

#[test]
fn message_rate_limit_closes_with_1008() {
    let h = start(limited(5, 5, 0, RateLimitPolicy::Close));
    let addr = h.local_addr();
    let mut c = RawClient::connect(addr, "/echo");
    c.send_raw(&burst_of(20, 10));
    let (echoes, close) = drain_until_pong(&mut c);
    assert_eq!(close, Some((1008, "rate limit".to_string())));
    // The burst went through, in order; nothing after the excess message.
    assert!(
        echoes.len() >= 5 && echoes.len() < 20,
        "{} echoes",
        echoes.len()
    );
    for (i, f) in echoes.iter().enumerate() {
        assert!(f.payload.starts_with(format!("m{i}.").as_bytes()));
    }
    // The relay waits for our close answer, then closes TCP.
    c.send_close(1008, "");
    assert!(c.wait_eof(WAIT));
    let m = scrape(addr);
    assert_eq!(m.value("wsrelay_rate_limited_total"), 1.0);
    assert_eq!(
        m.get("wsrelay_close_codes_sent_total", &[("code", "1008")]),
        Some(1.0)
    );
    assert_eq!(m.value("wsrelay_messages_out_total"), echoes.len() as f64);
    h.shutdown();
    h.join();
}

#[test]
fn message_rate_limit_drop_policy_keeps_the_connection() {
    let h = start(limited(5, 5, 0, RateLimitPolicy::Drop));
    let addr = h.local_addr();
    let mut c = RawClient::connect(addr, "/echo");
    c.send_raw(&burst_of(20, 10));
    let (echoes, close) = drain_until_pong(&mut c);
    assert_eq!(close, None, "drop policy must not close");
    let n = echoes.len();
    assert!((5..20).contains(&n), "{n} echoes");
    let m = scrape(addr);
    let excess = (20 - n) as f64;
    assert_eq!(m.value("wsrelay_rate_limited_total"), excess);
    assert_eq!(m.value("wsrelay_dropped_messages_total"), excess);
    assert_eq!(m.value("wsrelay_connections_open"), 1.0);
    h.shutdown();
    h.join();
}

#[test]
fn burst_defaults_to_the_rate() {
    // rate_limit_burst = 0: the bucket holds rate_limit_messages tokens.
    let h = start(limited(3, 0, 0, RateLimitPolicy::Drop));
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    c.send_raw(&burst_of(10, 4));
    let (echoes, close) = drain_until_pong(&mut c);
    assert_eq!(close, None);
    assert!((3..10).contains(&echoes.len()), "{}", echoes.len());
    h.shutdown();
    h.join();
}

#[test]
fn byte_rate_limit_refuses_the_second_600_byte_message() {
    let h = start(limited(0, 0, 1000, RateLimitPolicy::Close));
    let addr = h.local_addr();
    let mut c = RawClient::connect(addr, "/echo");
    c.send_raw(&burst_of(2, 600));
    let (echoes, close) = drain_until_pong(&mut c);
    assert_eq!(echoes.len(), 1);
    assert_eq!(echoes[0].payload.len(), 600);
    assert_eq!(close, Some((1008, "rate limit".to_string())));
    h.shutdown();
    h.join();
}

#[test]
fn byte_rate_limit_drop_policy_drops_only_what_does_not_fit() {
    let h = start(limited(0, 0, 1000, RateLimitPolicy::Drop));
    let addr = h.local_addr();
    let mut c = RawClient::connect(addr, "/echo");
    c.send_raw(&burst_of(2, 600));
    let (echoes, close) = drain_until_pong(&mut c);
    assert_eq!((echoes.len(), close), (1, None));
    let m = scrape(addr);
    assert_eq!(m.value("wsrelay_rate_limited_total"), 1.0);
    assert_eq!(m.value("wsrelay_dropped_messages_total"), 1.0);
    // Small messages still fit in what is left.
    c.send_text("tiny");
    assert_eq!(c.expect_frame().payload, b"tiny");
    h.shutdown();
    h.join();
}

#[test]
fn room_publishers_are_rate_limited_too() {
    let h = start(limited(5, 5, 0, RateLimitPolicy::Drop));
    let addr = h.local_addr();
    let mut publisher = RawClient::connect(addr, "/rooms/r?role=pub");
    let mut sub = RawClient::connect(addr, "/rooms/r?role=sub");
    publisher.send_raw(&burst_of(20, 10));
    // The publisher's pong comes after all 20 were judged.
    let (nothing, close) = drain_until_pong(&mut publisher);
    assert_eq!((nothing.len(), close), (0, None));
    let m = scrape_until(addr, |m| {
        m.value("wsrelay_rate_limited_total") + m.value("wsrelay_fanout_deliveries_total") == 20.0
    });
    let n = m.value("wsrelay_fanout_deliveries_total") as usize;
    assert!((5..20).contains(&n), "{n} relayed");
    assert_eq!(m.value("wsrelay_rate_limited_total"), (20 - n) as f64);
    for _ in 0..n {
        assert_eq!(sub.expect_frame().opcode, OpCode::Text);
    }
    h.shutdown();
    h.join();
}

// ----- regressions: the engine's unbounded paths ------------------------------------
//
// Each of these fails on 5ced42d and is ignored until the engine
// restructure lands (its engineer removes the `ignore`).

/// The relay binary, started on a free port, killed on drop.
struct SpawnedRelay {
    child: Child,
    addr: SocketAddr,
}

impl SpawnedRelay {
    fn start(extra: &[&str]) -> SpawnedRelay {
        for _ in 0..5 {
            let port = free_port();
            let listen = format!("127.0.0.1:{port}");
            let mut args = vec!["--listen", &listen, "--stats-interval", "0"];
            args.extend_from_slice(extra);
            let child = Command::new(BIN)
                .args(&args)
                .env_remove("RUST_LOG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap();
            let mut relay = SpawnedRelay {
                child,
                addr: listen.parse().unwrap(),
            };
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if relay.child.try_wait().unwrap().is_some() {
                    break; // port taken meanwhile: try another
                }
                if TcpStream::connect(relay.addr).is_ok()
                    && healthz_within(relay.addr, Duration::from_secs(3))
                {
                    return relay;
                }
                std::thread::sleep(Duration::from_millis(25));
            }
        }
        panic!("the relay binary did not start");
    }

    /// Resident set size of the relay process, in KiB.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmRSS in /proc/PID/status")
    }
}

impl Drop for SpawnedRelay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `GET /healthz` on a fresh connection answered 200 within `limit`.
fn healthz_within(addr: SocketAddr, limit: Duration) -> bool {
    let mut c = HttpConn::connect(addr);
    c.send(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
    c.read_response(limit).is_some_and(|r| r.status == 200)
}

/// A TCP connection with a 4 KiB receive buffer (so the client absorbs
/// next to nothing of what it never reads).
fn small_rcvbuf_stream(addr: SocketAddr) -> TcpStream {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let s: TcpStream = s.into();
    s.set_nodelay(true).unwrap();
    s
}

/// Writes `chunk` repeatedly (up to `total` bytes or `for_at_most`) to a
/// peer that never reads its answers, sampling the relay's RSS and its
/// `/healthz` latency (on another connection) as it goes. Returns the RSS
/// growth peak in KiB, the bytes written and the `/healthz` failures.
/// Stops early once the RSS grew by 128 MiB (the bound is long broken).
fn flood_unread(
    relay: &SpawnedRelay,
    s: &mut TcpStream,
    chunk: &[u8],
    total: usize,
    for_at_most: Duration,
) -> (u64, usize, usize) {
    use std::io::Write;
    s.set_write_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let base = relay.rss_kib();
    let mut peak = 0u64;
    let mut written = 0usize;
    let mut healthz_failures = 0;
    let start = Instant::now();
    let mut next_probe = Instant::now();
    let sample = |peak: &mut u64, failures: &mut usize| {
        *peak = (*peak).max(relay.rss_kib().saturating_sub(base));
        if !healthz_within(relay.addr, Duration::from_secs(1)) {
            *failures += 1;
        }
    };
    while written < total && start.elapsed() < for_at_most && peak < 128 << 10 {
        peak = peak.max(relay.rss_kib().saturating_sub(base));
        match s.write(chunk) {
            Ok(n) => written += n,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            // The relay closed the abusive connection: also a bound.
            Err(_) => break,
        }
        if Instant::now() >= next_probe {
            sample(&mut peak, &mut healthz_failures);
            next_probe = Instant::now() + Duration::from_millis(250);
        }
    }
    // What the relay still had to process when the writing stopped.
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(250));
        sample(&mut peak, &mut healthz_failures);
    }
    (peak, written, healthz_failures)
}

/// Finding 1: with the defaults (`max_message_bytes` =
/// `max_outbound_bytes` = 1 MiB), a room message of exactly
/// `max_message_bytes` must reach the other member; on 5ced42d the frame
/// (header + payload) exceeds the outbound bound and every other member
/// is closed with `1008 slow consumer`.
#[test]
fn message_of_exactly_max_message_bytes_reaches_the_other_room_member() {
    let config = test_config();
    let max = config.max_message_bytes;
    assert_eq!(max, config.max_outbound_bytes, "the defaults");
    let h = start(config);
    let mut a = RawClient::connect(h.local_addr(), "/rooms/a");
    let mut b = RawClient::connect(h.local_addr(), "/rooms/a");
    a.send_binary(&vec![0x42; max]);
    let f = b.expect_frame();
    assert_eq!(
        (f.opcode, f.payload.len(), f.close_code()),
        (OpCode::Binary, max, None),
        "a message of exactly max_message_bytes must be delivered"
    );
    h.shutdown();
    h.join();
}

/// Finding 1, on `/echo`: the sender gets its message of exactly
/// `max_message_bytes` back (defaults, 1 MiB).
#[test]
fn message_of_exactly_max_message_bytes_is_echoed() {
    let config = test_config();
    let max = config.max_message_bytes;
    let h = start(config);
    let mut c = RawClient::connect(h.local_addr(), "/echo");
    c.send_binary(&vec![0x42; max]);
    let f = c.expect_frame();
    assert_eq!(
        (f.opcode, f.payload.len(), f.close_code()),
        (OpCode::Binary, max, None),
        "a message of exactly max_message_bytes must be echoed"
    );
    h.shutdown();
    h.join();
}

/// Finding 2: one connection pipelining `GET /metrics` (8 MiB of request
/// bytes) and never reading its answers must not make the relay hold
/// more than a few MiB, and `/healthz` on another connection keeps being
/// answered within 1 s. Real binary, one worker, RSS from /proc.
#[test]
fn pipelined_metrics_requests_never_read_keep_memory_bounded() {
    let relay = SpawnedRelay::start(&["--workers", "1"]);
    let mut s = small_rcvbuf_stream(relay.addr);
    let chunk = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n".repeat(1000);
    let (grew_kib, written, healthz_failures) =
        flood_unread(&relay, &mut s, &chunk, 8 << 20, Duration::from_secs(8));
    assert!(
        grew_kib < 16 << 10 && healthz_failures == 0,
        "after {written} bytes of pipelined GET /metrics never read: RSS grew by {} MiB \
         (bound 16 MiB); /healthz not answered within 1 s {healthz_failures} times",
        grew_kib >> 10
    );
}

/// Finding 3: a client flooding pings without reading: the relay does not
/// queue one pong per ping (RSS stays within a few MiB) and keeps
/// answering `/healthz` within 1 s. Real binary, one worker. Up to 60
/// million empty pings for at most 6 s; on 5ced42d the relay reads them as
/// fast as they come and holds a pong for each (checked: "RSS grew by 111
/// MiB" before the test stopped flooding); now no further ping is read
/// while a pong is unwritten, so the flood stops in the kernel's buffers.
#[test]
fn ping_flood_never_read_keeps_memory_bounded() {
    use std::io::Write;
    let relay = SpawnedRelay::start(&["--workers", "1"]);
    let mut s = small_rcvbuf_stream(relay.addr);
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(&upgrade_request("/echo", "")).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "upgrade answer");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "));
    // 10,000 masked empty pings (6 bytes each) per chunk.
    let mut chunk = Vec::new();
    for _ in 0..10_000 {
        encode_client_frame(true, OpCode::Ping, b"", [1, 2, 3, 4], &mut chunk);
    }
    let (grew_kib, written, healthz_failures) = flood_unread(
        &relay,
        &mut s,
        &chunk,
        60_000_000 * 6,
        Duration::from_secs(6),
    );
    assert!(
        grew_kib < 16 << 10 && healthz_failures == 0,
        "after {} pings never read: RSS grew by {} MiB (bound 16 MiB); /healthz not \
         answered within 1 s {healthz_failures} times",
        written / 6,
        grew_kib >> 10
    );
}

// ----- regressions: cross-worker backpressure -------------------------------------

/// Two workers with one-message cross-worker queues.
fn backpressure_config() -> Config {
    Config {
        workers: 2,
        fanout_queue_len: 1,
        slow_consumer: SlowConsumerPolicy::Drop,
        publish_token: "t".to_string(),
        ..test_config()
    }
}

/// Connects tungstenite clients to `path` until one lands on `worker`.
fn ws_on_worker(h: &ServerHandle, path: &str, worker: usize) -> Ws {
    for _ in 0..200 {
        let (ws, w) = on_which_worker(h, || ws_connect(h.local_addr(), path));
        if w == worker {
            return ws;
        }
    }
    panic!("no connection landed on worker {worker}");
}

/// A member of `path` on `worker` with a tiny receive buffer that never
/// reads.
fn stalled_on_worker(h: &ServerHandle, path: &str, worker: usize) -> Ws {
    for _ in 0..200 {
        let (ws, w) = on_which_worker(h, || tiny_rcvbuf_member(h.local_addr(), path));
        if w == worker {
            return ws;
        }
    }
    panic!("no connection landed on worker {worker}");
}

/// A publisher flooding 64 KiB binary messages into its room from a
/// thread until `stop`; it answers pings (reading between writes) and
/// records a close from the server. Returns (messages sent, close seen).
fn flooder(
    mut ws: Ws,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<(u64, Option<(u16, String)>)> {
    std::thread::spawn(move || {
        ws.get_ref().set_nonblocking(false).unwrap();
        ws.get_ref()
            .set_write_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        ws.get_ref()
            .set_read_timeout(Some(Duration::from_millis(1)))
            .unwrap();
        let payload = vec![0x5a; 64 << 10];
        let mut sent = 0u64;
        while !stop.load(Ordering::Acquire) {
            match ws.write(Message::Binary(payload.clone())) {
                Ok(()) => sent += 1,
                Err(tungstenite::Error::WriteBufferFull(_)) => {}
                Err(e) if ws_is_timeout(&e) => {}
                Err(_) => return (sent, Some((1006, "write failed".into()))),
            }
            let _ = ws.flush();
            // Answers pings (tungstenite queues the pong) and sees a close.
            match ws.read() {
                Ok(Message::Close(Some(f))) => {
                    return (sent, Some((u16::from(f.code), f.reason.into_owned())))
                }
                Ok(Message::Close(None)) => return (sent, Some((1005, String::new()))),
                Ok(_) => {}
                Err(e) if ws_is_timeout(&e) => {}
                Err(e) => return (sent, Some((1006, format!("{e}")))),
            }
        }
        (sent, None)
    })
}

/// Finding 5(a): with a cross-worker queue backed up (room "a" has a
/// stalled member on the other worker and a flooding publisher), a
/// publisher into a *different* room whose members all live on its own
/// worker must keep being served: each of its messages reaches its room's
/// member within 1 s (a generous bound).
///
/// Passes on 5ced42d (the finding did not reproduce here: `must_pause`
/// only pauses publishers whose room spans a blocked worker); kept as a
/// guard, ignored by default because the 1 s bound under a flood may be
/// missed on a loaded CI runner.
#[test]
#[ignore = "passes on 5ced42d (finding not reproduced); timing-sensitive, run with --ignored"]
fn local_room_publisher_is_served_while_another_rooms_queue_is_blocked() {
    let h = start(backpressure_config());
    let _stalled = stalled_on_worker(&h, "/rooms/a?role=sub", 1);
    let flood = ws_on_worker(&h, "/rooms/a?role=pub", 0);
    let mut pub_b = ws_on_worker(&h, "/rooms/b?role=pub", 0);
    let mut member_b = ws_on_worker(&h, "/rooms/b?role=sub", 0);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooding = flooder(flood, stop.clone());
    assert!(
        eventually(WAIT, || sum(&h, |m| m.fanout_backpressure.get()) > 0),
        "the flood never backed up the cross-worker queue"
    );
    let mut late = Vec::new();
    for i in 0..20 {
        let text = format!("b{i}");
        let t = Instant::now();
        pub_b.send(Message::Text(text.clone())).unwrap();
        match ws_read(&mut member_b, Duration::from_secs(1)) {
            Some(Message::Text(got)) => assert_eq!(got, text),
            other => late.push((i, other, t.elapsed())),
        }
        if !late.is_empty() {
            break;
        }
    }
    stop.store(true, Ordering::Release);
    let _ = flooding.join();
    assert!(
        late.is_empty(),
        "room b (members only on the publisher's worker) not served within 1 s while \
         another room's cross-worker queue was blocked: {late:?}; backpressure events {}",
        sum(&h, |m| m.fanout_backpressure.get())
    );
    h.shutdown();
    h.join();
}

/// Finding 5(b): a publisher paused because its room's cross-worker queue
/// is full must not be closed by the heartbeat as a ping timeout (its
/// pongs are not read while it is paused). 1 s ping interval, 1 s pong
/// timeout, observed for 6 s of flooding.
///
/// Not verified over sockets: the flood does not reliably back up the
/// one-message queue here (the receiving worker drains it as fast as it
/// fills), so the precondition fails, on 5ced42d and now. The behaviour
/// itself is tested on the virtual clock:
/// `server::session::tests::a_paused_publisher_is_not_timed_out`.
#[test]
#[ignore = "precondition (a backed-up queue) cannot be forced reliably; see the session test"]
fn paused_publisher_is_not_closed_as_a_ping_timeout() {
    let h = start(Config {
        ping_interval: Duration::from_secs(1),
        pong_timeout: Duration::from_secs(1),
        ..backpressure_config()
    });
    let _stalled = stalled_on_worker(&h, "/rooms/a?role=sub", 1);
    let flood = ws_on_worker(&h, "/rooms/a?role=pub", 0);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flooding = flooder(flood, stop.clone());
    let backed_up = eventually(WAIT, || sum(&h, |m| m.fanout_backpressure.get()) > 0);
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(6) && !flooding.is_finished() {
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Release);
    let (sent, closed) = flooding.join().unwrap();
    let backpressure = sum(&h, |m| m.fanout_backpressure.get());
    let ping_timeouts = h.totals().ping_timeouts;
    assert!(
        backed_up && backpressure > 0,
        "the flood never backed up the queue"
    );
    assert_eq!(
        (closed, ping_timeouts),
        (None, 0),
        "the flooding publisher (paused by backpressure {backpressure} times, {sent} \
         messages sent) was closed"
    );
    h.shutdown();
    h.join();
}

/// Finding 5(c): `POST /publish/{room}` into a destination whose
/// cross-worker queue is full gets `503` with `Retry-After` instead of
/// being queued without bound. Room "a" has members on both workers
/// (they never read); 200 publishes are pipelined in one write, so the
/// worker serving them fills the one-message queue to the other worker
/// at once.
#[test]
/// The behaviour is tested deterministically (no sockets, a forced full queue):
/// `server::router::tests::http_publish_into_a_blocked_destination_gets_503_with_retry_after`.
#[ignore = "timing-dependent: needs the serving worker to outrun the destination's inbox drain; flaked under parallel test load (passes alone), run with --ignored"]
fn http_publish_into_a_blocked_destination_gets_503_with_retry_after() {
    let h = start(backpressure_config());
    let addr = h.local_addr();
    let _members = connect_on_every_worker(&h, "/rooms/a?role=sub", 1);
    let body = vec![b'x'; 1024];
    let mut all = Vec::new();
    for _ in 0..200 {
        all.extend_from_slice(
            format!(
                "POST /publish/a HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer t\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        );
        all.extend_from_slice(&body);
    }
    let mut conn = HttpConn::connect(addr);
    conn.send(&all);
    let mut answers: Vec<(u16, Option<String>)> = Vec::new();
    while answers.len() < 200 {
        match conn.read_response(WAIT) {
            Some(r) => answers.push((r.status, r.header("retry-after").map(str::to_string))),
            None => break, // closed after a refusal
        }
    }
    let accepted = answers.iter().filter(|(s, _)| *s == 202).count();
    let refused: Vec<_> = answers.iter().filter(|(s, _)| *s != 202).collect();
    assert!(
        refused.iter().all(|(s, ra)| *s == 503 && ra.is_some()),
        "refusals must be 503 with Retry-After: {refused:?}"
    );
    assert!(
        !refused.is_empty(),
        "all {accepted} pipelined publishes were accepted (202) while the destination's \
         queue (fanout_queue_len = 1) was full: {} backpressure events, queued without bound",
        sum(&h, |m| m.fanout_backpressure.get())
    );
    h.shutdown();
    h.join();
}
