//! Rooms over real sockets: fan-out across workers (proved with the
//! per-worker metrics), echo_self, roles, per-publisher ordering, and the
//! slow-consumer policies.

mod common;
use common::*;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tungstenite::Message;
use wsrelay::config::{Config, SlowConsumerPolicy};
use wsrelay::protocol::OpCode;
use wsrelay::server::ServerHandle;

/// Connects tungstenite members to `path` until there are at least
/// `total` and every worker has at least `per_worker`. Returns each member
/// with the worker it landed on.
fn spread(h: &ServerHandle, path: &str, total: usize, per_worker: usize) -> Vec<(Ws, usize)> {
    let addr = h.local_addr();
    let mut members = Vec::new();
    let mut counts = vec![0usize; h.workers()];
    while members.len() < total || counts.iter().any(|&c| c < per_worker) {
        assert!(
            members.len() < 200,
            "connections never reached every worker: {counts:?}"
        );
        let (ws, w) = on_which_worker(h, || ws_connect(addr, path));
        counts[w] += 1;
        members.push((ws, w));
    }
    members
}

fn metric(h: &ServerHandle, w: usize, f: impl Fn(&wsrelay::metrics::WorkerMetrics) -> u64) -> u64 {
    f(&h.shared().metrics[w])
}

fn sum(h: &ServerHandle, f: impl Fn(&wsrelay::metrics::WorkerMetrics) -> u64) -> u64 {
    h.shared().metrics.iter().map(|m| f(m)).sum()
}

fn text(m: Message) -> String {
    match m {
        Message::Text(t) => t,
        other => panic!("expected text, got {other:?}"),
    }
}

#[test]
fn room_members_on_both_workers_receive_every_other_members_messages() {
    let h = start(engine_config());
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
        // Nothing more (in particular not its own message).
        assert!(ws_read(ws, Duration::from_millis(50)).is_none());
    }
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
    let h = start(engine_config());
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
    let h = start(engine_config());
    let addr = h.local_addr();
    let mut a1 = ws_connect(addr, "/rooms/a");
    let mut a2 = ws_connect(addr, "/rooms/a");
    let mut b1 = ws_connect(addr, "/rooms/b");
    let mut e = ws_connect(addr, "/echo");
    a1.send(Message::Text("for a".into())).unwrap();
    b1.send(Message::Text("for b".into())).unwrap();
    assert_eq!(ws_expect_data(&mut a2), Message::Text("for a".into()));
    // b1 is alone in b: nothing arrives anywhere else.
    assert!(ws_read(&mut b1, Duration::from_millis(200)).is_none());
    assert!(ws_read(&mut a2, Duration::from_millis(50)).is_none());
    assert!(ws_read(&mut e, Duration::from_millis(50)).is_none());
    assert_eq!(h.rooms_open(), 2);
    h.shutdown();
    h.join();
}

fn echo_self_round(echo_self: bool) {
    let h = start(Config {
        echo_self,
        ..engine_config()
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
        assert!(ws_read(&mut b, Duration::from_millis(100)).is_none());
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
fn roles_publisher_does_not_receive_and_subscriber_may_not_publish() {
    let h = start(engine_config());
    let addr = h.local_addr();
    let mut publisher = ws_connect(addr, "/rooms/r?role=pub");
    let mut sub = ws_connect(addr, "/rooms/r?role=sub");
    let mut both = ws_connect(addr, "/rooms/r");
    publisher.send(Message::Text("news".into())).unwrap();
    assert_eq!(ws_expect_data(&mut sub), Message::Text("news".into()));
    assert_eq!(ws_expect_data(&mut both), Message::Text("news".into()));
    both.send(Message::Text("reply".into())).unwrap();
    assert_eq!(ws_expect_data(&mut sub), Message::Text("reply".into()));
    assert!(
        ws_read(&mut publisher, Duration::from_millis(200)).is_none(),
        "role=pub must not receive"
    );
    // A subscriber publishing is closed with 1008 and its message dropped.
    sub.send(Message::Text("not allowed".into())).unwrap();
    let (code, reason) = ws_expect_close(&mut sub, Duration::from_secs(5));
    assert_eq!(code, 1008, "{reason}");
    assert!(ws_wait_closed(&mut sub, Duration::from_secs(3)));
    assert!(ws_read(&mut both, Duration::from_millis(200)).is_none());
    h.shutdown();
    h.join();
}

#[test]
fn leaving_members_are_not_delivered_to_and_empty_rooms_disappear() {
    let h = start(engine_config());
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
    let h = start(engine_config());
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
    while stop_at.map_or(true, |end| seq < end) {
        publisher.send(Message::Binary(numbered(seq))).unwrap();
        seq += 1;
        if seq % BATCH == 0 {
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
        ..engine_config()
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
    // The stalled member reads: an increasing subsequence, then "end" (the
    // queue had room again by then? not necessarily) -- so read until
    // quiet, then check the connection is open and usable.
    let mut last: Option<u64> = None;
    let mut received = 0u64;
    let mut saw_end = false;
    while let Some(m) = ws_read(&mut slow, Duration::from_millis(500)) {
        match m {
            Message::Binary(b) => {
                let s = seq_of(&b);
                assert!(
                    last.map_or(true, |l| s > l),
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
        match ws_read(&mut slow, Duration::from_millis(200)) {
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
        ..engine_config()
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
    let h = start(engine_config());
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
