//! The Redis broker bridge against a real redis-server (private, on a unix
//! socket; skipped with a message if redis-server is not installed). Two
//! bridges in one process stand for two nodes.
//!
//! - delivery between nodes: order, origin filter, subscribe on demand,
//!   one worker per node for envelopes without position;
//! - history: contiguous offsets, stable epoch, reads since an offset,
//!   trimming, a restarted (empty) Redis giving a new epoch;
//! - presence across nodes and expiry of a dead node's entries;
//! - faults: Redis down (fail fast, reconnect, resubscribe with "maybe
//!   missed"), `CLIENT KILL TYPE pubsub`, `DEBUG SLEEP` (callers never
//!   block, requests time out, memory bounded);
//! - TLS (`rediss://`, in `tls.rs`).

mod support;
mod tls;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use support::{have_redis, Node, RedisServer};
use wsrelay::broker::{BrokerError, BrokerEvent, Kind, PresenceEntry, Reply};
use wsrelay::pubsub::history::StreamOptions;

const T: Duration = Duration::from_secs(10);

fn two_nodes(redis: &RedisServer) -> (Node, Node) {
    let mut a = Node::start(Node::settings(&redis.url()));
    let mut b = Node::start(Node::settings(&redis.url()));
    a.wait_up("x");
    b.wait_up("x");
    (a, b)
}

fn opts() -> StreamOptions {
    StreamOptions {
        size: 10,
        ttl_ms: 60_000,
    }
}

#[test]
fn publications_reach_other_nodes_in_order_and_never_come_back() {
    if !have_redis() {
        return;
    }
    let redis = RedisServer::start();
    let (mut a, mut b) = two_nodes(&redis);
    assert!(
        !b.subscribe("room"),
        "a first subscription is no resubscription"
    );
    a.subscribe("room");
    for i in 0..200u32 {
        let env = a.envelope("room", Kind::RawText, i.to_string().as_bytes());
        a.port.publish(&env).unwrap();
    }
    let started = Instant::now();
    assert!(b.wait_woken(T, |n| n.events.len() >= 200));
    assert!(
        started.elapsed() < T / 2,
        "the bridge woke the sleeping worker"
    );
    let got: Vec<String> = b
        .take_messages()
        .iter()
        .map(|m| String::from_utf8(m.payload.clone()).unwrap())
        .collect();
    assert_eq!(got, (0..200).map(|i| i.to_string()).collect::<Vec<_>>());
    // A marker from B: A receives it after anything A's own publications
    // could have produced (one Redis connection delivers in order).
    let marker = b.envelope("room", Kind::RawBinary, b"marker");
    b.port.publish(&marker).unwrap();
    assert!(a.wait(T, |n| !n.events.is_empty()));
    let seen = a.take_messages();
    assert_eq!(seen.len(), 1, "A received its own publications: {seen:?}");
    assert_eq!(seen[0].payload, b"marker");
    assert_eq!(seen[0].origin, b.port.node());
    // Every publish was answered.
    assert!(a.wait(T, |n| n.replies.len() == 200));
    assert!(a.replies.iter().all(|(_, r)| *r == Ok(Reply::Published)));
    // No interest, no delivery: B drops the channel (zero linger).
    b.port.interest("room", false);
    assert!(
        b.wait(T, |n| n.broker.metrics().channels.load(Ordering::SeqCst)
            == 0)
    );
    let unsub_seen = b
        .broker
        .metrics()
        .unsubscribe_commands
        .load(Ordering::SeqCst);
    assert_eq!(unsub_seen, 1);
    let e = a.envelope("room", Kind::RawText, b"after");
    let t = a.port.publish(&e).unwrap();
    a.reply(t, T).unwrap();
    // B only learns nothing; proven by a message on another channel
    // arriving alone.
    b.subscribe("other");
    let t = a
        .port
        .publish(&a.envelope("other", Kind::RawText, b"o"))
        .unwrap();
    a.reply(t, T).unwrap();
    assert!(b.wait(T, |n| !n.events.is_empty()));
    let m = b.take_messages();
    assert_eq!(m.len(), 1);
    assert_eq!(m[0].channel, "other");
}

#[test]
fn history_offsets_are_contiguous_and_read_back_exactly() {
    if !have_redis() {
        return;
    }
    let redis = RedisServer::start();
    let (mut a, mut b) = two_nodes(&redis);
    b.subscribe("chat");
    a.subscribe("chat");
    let mut tokens = Vec::new();
    for i in 0..25u32 {
        let mut env = a.envelope(
            "chat",
            Kind::Publication,
            format!("{{\"n\":{i}}}").as_bytes(),
        );
        env.info = Some(b"{\"user\":\"a\"}".to_vec());
        tokens.push(a.port.publish_history(&env, opts()).unwrap());
    }
    let mut epoch = None;
    for (i, t) in tokens.into_iter().enumerate() {
        match a.reply(t, T).unwrap() {
            Reply::Position { offset, epoch: e } => {
                assert_eq!(offset, i as u64 + 1);
                assert_eq!(*epoch.get_or_insert(e.clone()), e, "epoch stable");
            }
            r => panic!("{r:?}"),
        }
    }
    let epoch = epoch.unwrap();
    // Both nodes, the origin included, receive each publication once, in
    // offset order, with its position.
    for n in [&mut a, &mut b] {
        assert!(n.wait(T, |n| n.events.len() >= 25));
        let m = n.take_messages();
        let offsets: Vec<u64> = m.iter().map(|e| e.position.as_ref().unwrap().0).collect();
        assert_eq!(offsets, (1..=25).collect::<Vec<_>>());
        assert!(m.iter().all(|e| e.position.as_ref().unwrap().1 == epoch));
        assert_eq!(m[3].payload, b"{\"n\":3}");
        assert_eq!(m[3].info.as_deref(), Some(&b"{\"user\":\"a\"}"[..]));
    }
    // History since 20: exactly 21..=25; the stream keeps the last 10.
    let t = b.port.history("chat", 20, -1, T).unwrap();
    let Reply::History(h) = b.reply(t, T).unwrap() else {
        panic!()
    };
    assert_eq!((h.top, h.front, h.epoch.as_str()), (25, 16, epoch.as_str()));
    let offs: Vec<u64> = h
        .publications
        .iter()
        .map(|p| p.position.as_ref().unwrap().0)
        .collect();
    assert_eq!(offs, [21, 22, 23, 24, 25]);
    assert!(h.covers(20, &epoch) && h.covers(15, &epoch));
    assert!(!h.covers(14, &epoch), "offset 15 was trimmed");
    assert!(!h.covers(20, "other-epoch"));
    // A limit, and a position-only read.
    let t = b.port.history("chat", 15, 2, T).unwrap();
    let Reply::History(h) = b.reply(t, T).unwrap() else {
        panic!()
    };
    assert_eq!(h.publications.len(), 2);
    assert_eq!(h.publications[0].position.as_ref().unwrap().0, 16);
    let t = b.port.history("chat", 0, 0, T).unwrap();
    let Reply::History(h) = b.reply(t, T).unwrap() else {
        panic!()
    };
    assert!(h.publications.is_empty() && h.top == 25);
    // Reading a channel without a stream creates its epoch, which the
    // first publication keeps.
    let t = b.port.history("fresh", 0, -1, T).unwrap();
    let Reply::History(h) = b.reply(t, T).unwrap() else {
        panic!()
    };
    assert_eq!((h.top, h.front), (0, 1));
    let t = a
        .port
        .publish_history(&a.envelope("fresh", Kind::Publication, b"1"), opts())
        .unwrap();
    assert_eq!(
        a.reply(t, T).unwrap(),
        Reply::Position {
            offset: 1,
            epoch: h.epoch.clone()
        }
    );
    // Removal: the next publication starts a new epoch at 1.
    let t = a.port.remove_history("chat").unwrap();
    assert_eq!(a.reply(t, T).unwrap(), Reply::Done);
    let t = a
        .port
        .publish_history(&a.envelope("chat", Kind::Publication, b"x"), opts())
        .unwrap();
    match a.reply(t, T).unwrap() {
        Reply::Position { offset, epoch: e } => {
            assert_eq!(offset, 1);
            assert_ne!(e, epoch);
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn presence_spans_nodes_and_a_dead_nodes_entries_expire() {
    if !have_redis() {
        return;
    }
    let redis = RedisServer::start();
    let mut a = Node::start(Node::settings(&redis.url()));
    let mut sb = Node::settings(&redis.url());
    sb.presence_ttl = Duration::from_secs(1);
    let mut b = Node::start(sb);
    a.wait_up("p");
    b.wait_up("p");
    let entry = |c: &str, u: &str| PresenceEntry {
        client: c.into(),
        user: u.into(),
        conn_info: Some(b"{\"k\":1}".to_vec()),
        chan_info: None,
    };
    for (n, e) in [(&mut a, entry("ca", "alice")), (&mut b, entry("cb", "bob"))] {
        let t = n.port.presence_add("p", &e).unwrap();
        assert_eq!(n.reply(t, T).unwrap(), Reply::Done);
    }
    let t = a.port.presence("p").unwrap();
    let Reply::Presence(mut p) = a.reply(t, T).unwrap() else {
        panic!()
    };
    p.sort_by(|x, y| x.client.cmp(&y.client));
    assert_eq!(p, [entry("ca", "alice"), entry("cb", "bob")]);
    // B "dies" (never refreshes): its entry is gone after its TTL.
    drop(b);
    std::thread::sleep(Duration::from_millis(2500));
    let t = a.port.presence("p").unwrap();
    let Reply::Presence(p) = a.reply(t, T).unwrap() else {
        panic!()
    };
    assert_eq!(p, [entry("ca", "alice")]);
    let t = a.port.presence_remove("p", "ca").unwrap();
    a.reply(t, T).unwrap();
    let t = a.port.presence("p").unwrap();
    assert_eq!(a.reply(t, T).unwrap(), Reply::Presence(vec![]));
}

#[test]
fn redis_down_fails_fast_then_reconnect_resubscribes_with_a_new_epoch() {
    if !have_redis() {
        return;
    }
    let redis = RedisServer::start();
    let (mut a, mut b) = two_nodes(&redis);
    b.subscribe("c");
    let t = a
        .port
        .publish_history(&a.envelope("c", Kind::Publication, b"1"), opts())
        .unwrap();
    let Reply::Position { epoch: old, .. } = a.reply(t, T).unwrap() else {
        panic!()
    };
    redis.shutdown();
    assert!(a.wait(T, |n| !n.broker.is_up()), "the bridge notices");
    // Requests fail at once with the specific error.
    let started = Instant::now();
    for _ in 0..100 {
        let env = a.envelope("c", Kind::Publication, b"x");
        assert_eq!(
            a.port.publish_history(&env, opts()),
            Err(BrokerError::Unavailable)
        );
    }
    assert!(started.elapsed() < Duration::from_secs(1));
    assert!(a.broker.metrics().request_errors.load(Ordering::SeqCst) >= 100);
    redis.launch();
    // B resubscribes and is told it may have missed publications.
    b.events.clear();
    assert!(b.wait(T, |n| n.events.iter().any(|e| matches!(
        e,
        BrokerEvent::Subscribed { channel, resubscribed: true } if channel == "c"
    ))));
    a.wait_up("c");
    b.wait_up("c");
    // Both of B's connections (subscriber, command) came back.
    assert!(b.broker.metrics().reconnects.load(Ordering::SeqCst) >= 2);
    // Redis came back empty: a new epoch, offsets from 1.
    let t = a
        .port
        .publish_history(&a.envelope("c", Kind::Publication, b"2"), opts())
        .unwrap();
    match a.reply(t, T).unwrap() {
        Reply::Position { offset, epoch } => {
            assert_eq!(offset, 1);
            assert_ne!(epoch, old);
        }
        r => panic!("{r:?}"),
    }
    b.events.clear();
    assert!(b.wait(T, |n| !n.take_messages_peek().is_empty()));
}

#[test]
fn a_killed_pubsub_connection_is_reopened_and_resubscribed() {
    if !have_redis() {
        return;
    }
    let redis = RedisServer::start();
    let (mut a, mut b) = two_nodes(&redis);
    a.subscribe("a-side");
    let channels: Vec<String> = (0..1200).map(|i| format!("ch{i}")).collect();
    for c in &channels {
        b.port.interest(c, true);
    }
    assert!(b.wait(T, |n| n
        .events
        .iter()
        .filter(|e| matches!(e, BrokerEvent::Subscribed { .. }))
        .count()
        == channels.len()));
    // Batched as they come (no delay is added to wait for more).
    let cmds = b.broker.metrics().subscribe_commands.load(Ordering::SeqCst);
    assert!(
        cmds < 300,
        "batched: {cmds} SUBSCRIBE commands for 1200 channels"
    );
    b.events.clear();
    let killed = redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed.trim(), "2", "both nodes' subscriber connections");
    // Every channel is confirmed again, flagged as a resubscription.
    assert!(b.wait(T, |n| {
        let set: HashSet<&str> = n
            .events
            .iter()
            .filter_map(|e| match e {
                BrokerEvent::Subscribed {
                    channel,
                    resubscribed: true,
                } => Some(channel.as_str()),
                _ => None,
            })
            .collect();
        set.len() == channels.len()
    }));
    assert!(b.broker.metrics().reconnects.load(Ordering::SeqCst) >= 1);
    // Resubscribed in batches of redis_batch (512): 512 + 512 + 176.
    let resub = b.broker.metrics().subscribe_commands.load(Ordering::SeqCst) - cmds;
    assert_eq!(resub, 3);
    b.events.clear();
    let t = a
        .port
        .publish(&a.envelope("ch777", Kind::RawText, b"hi"))
        .unwrap();
    a.reply(t, T).unwrap();
    assert!(b.wait(T, |n| !n.events.is_empty()));
    let m = b.take_messages();
    assert_eq!(m[0].channel, "ch777");
}

#[test]
fn a_stalled_redis_never_blocks_callers_and_requests_time_out() {
    if !have_redis() {
        return;
    }
    let redis = RedisServer::start();
    let mut s = Node::settings(&redis.url());
    s.outbox_len = 64;
    s.publish_timeout = Duration::from_millis(300);
    let mut a = Node::start(s);
    a.wait_up("s");
    let sock = redis.socket();
    let sleeper = std::thread::spawn(move || {
        std::process::Command::new("redis-cli")
            .arg("-s")
            .arg(sock)
            .args(["DEBUG", "SLEEP", "2"])
            .output()
            .unwrap()
    });
    // Wait until Redis is stalled: a probe times out.
    let stalled_by = Instant::now() + Duration::from_secs(1);
    loop {
        let t = a
            .port
            .publish(&a.envelope("s", Kind::RawText, b"probe"))
            .unwrap();
        if a.reply(t, T) == Err(BrokerError::Timeout) {
            break;
        }
        assert!(
            Instant::now() < stalled_by,
            "DEBUG SLEEP did not stall Redis"
        );
    }
    a.replies.clear();
    let started = Instant::now();
    let mut ok = 0;
    let mut overloaded = 0;
    for i in 0..5000u32 {
        match a
            .port
            .publish(&a.envelope("s", Kind::RawText, i.to_string().as_bytes()))
        {
            Ok(_) => ok += 1,
            Err(BrokerError::Overloaded) => overloaded += 1,
            Err(e) => panic!("{e}"),
        }
    }
    let submit_time = started.elapsed();
    assert!(
        submit_time < Duration::from_secs(1),
        "5000 submissions took {submit_time:?}"
    );
    assert!(overloaded > 0, "bounded: the outbox refused some");
    assert!(
        ok <= 64 * 2 + 64 + 1,
        "at most outbox + pipeline accepted: {ok}"
    );
    // Every accepted request is answered while Redis still sleeps (about
    // 1.6 s left of its 2 s): Timeout once in flight, Overloaded when the
    // pipeline to the stalled Redis was full.
    assert!(a.wait(Duration::from_millis(1000), |n| n.replies.len() == ok));
    let timeouts = a
        .replies
        .iter()
        .filter(|(_, r)| *r == Err(BrokerError::Timeout))
        .count();
    assert!(timeouts > 0);
    assert!(a
        .replies
        .iter()
        .all(|(_, r)| matches!(r, Err(BrokerError::Timeout) | Err(BrokerError::Overloaded))));
    assert!(a.broker.metrics().timeouts.load(Ordering::SeqCst) >= timeouts as u64);
    sleeper.join().unwrap();
    // After the stall the bridge works again.
    a.replies.clear();
    let deadline = Instant::now() + T;
    loop {
        let t = match a.port.publish(&a.envelope("s", Kind::RawText, b"again")) {
            Ok(t) => t,
            Err(_) => {
                a.wait(Duration::from_millis(50), |_| false);
                continue;
            }
        };
        if a.reply(t, T) == Ok(Reply::Published) {
            break;
        }
        assert!(Instant::now() < deadline, "bridge did not recover");
    }
    assert_eq!(a.broker.metrics().inflight.load(Ordering::SeqCst), 0);
}

#[test]
fn a_full_worker_inbox_drops_and_says_which_channel_missed() {
    if !have_redis() {
        return;
    }
    let redis = RedisServer::start();
    let mut a = Node::start(Node::settings(&redis.url()));
    let mut sb = Node::settings(&redis.url());
    sb.inbox_len = 4;
    let mut b = Node::start(sb);
    a.wait_up("q");
    b.wait_up("q");
    b.subscribe("q");
    for i in 0..100u32 {
        let t = a
            .port
            .publish(&a.envelope("q", Kind::RawText, i.to_string().as_bytes()))
            .unwrap();
        a.reply(t, T).unwrap();
    }
    // B's worker reads nothing until the bridge has seen all 100.
    let until = Instant::now() + T;
    while b.broker.metrics().messages_in.load(Ordering::SeqCst) < 100 {
        assert!(Instant::now() < until);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(b.broker.metrics().inbox_dropped.load(Ordering::SeqCst), 96);
    assert!(b.wait(T, |n| n.events.len() >= 5));
    let missed: Vec<&BrokerEvent> = b
        .events
        .iter()
        .filter(|e| matches!(e, BrokerEvent::Missed { channel } if channel == "q"))
        .collect();
    assert_eq!(missed.len(), 1);
    let got: Vec<Vec<u8>> = b
        .take_messages()
        .iter()
        .map(|m| m.payload.clone())
        .collect();
    assert_eq!(
        got,
        [b"0".to_vec(), b"1".to_vec(), b"2".to_vec(), b"3".to_vec()]
    );
    // The inbox has room again: delivery resumes.
    let t = a
        .port
        .publish(&a.envelope("q", Kind::RawText, b"later"))
        .unwrap();
    a.reply(t, T).unwrap();
    assert!(b.wait(T, |n| !n.take_messages_peek().is_empty()));
}

#[test]
fn shutdown_closes_every_connection() {
    if !have_redis() {
        return;
    }
    let redis = RedisServer::start();
    let clients = |r: &RedisServer| r.cli(&["CLIENT", "LIST"]).lines().count();
    let before = clients(&redis); // redis-cli itself
    let mut a = Node::start(Node::settings(&redis.url()));
    a.wait_up("z");
    a.subscribe("z");
    assert_eq!(
        clients(&redis),
        before + 2,
        "one subscriber, one command connection"
    );
    let Node { broker, .. } = a;
    broker.shutdown();
    let until = Instant::now() + T;
    while clients(&redis) != before {
        assert!(
            Instant::now() < until,
            "connections left open after shutdown"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_worker_joining_a_live_subscription_is_told_at_once() {
    if !have_redis() {
        return;
    }
    use mio::{Poll, Token as MioToken, Waker};
    use std::sync::Arc;
    let redis = RedisServer::start();
    let polls: Vec<Poll> = (0..2).map(|_| Poll::new().unwrap()).collect();
    let wakers = polls
        .iter()
        .map(|p| Arc::new(Waker::new(p.registry(), MioToken(0)).unwrap()))
        .collect();
    let (broker, mut ports) =
        wsrelay::broker::Broker::start(Node::settings(&redis.url()), wakers).unwrap();
    let until = Instant::now() + T;
    while !broker.is_up() {
        assert!(Instant::now() < until);
        std::thread::sleep(Duration::from_millis(10));
    }
    let confirmed = |port: &mut wsrelay::broker::BrokerPort| {
        let until = Instant::now() + T;
        let mut ev = Vec::new();
        loop {
            port.recv_events(&mut ev);
            if let Some(BrokerEvent::Subscribed {
                channel,
                resubscribed,
            }) = ev.first()
            {
                assert_eq!((channel.as_str(), *resubscribed), ("live", false));
                return;
            }
            assert!(Instant::now() < until, "no Subscribed event");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    ports[0].interest("live", true);
    confirmed(&mut ports[0]);
    ports[1].interest("live", true);
    confirmed(&mut ports[1]);
    assert_eq!(
        broker.metrics().subscribe_commands.load(Ordering::SeqCst),
        1
    );
}

#[test]
fn channels_are_sharded_over_several_redis_servers() {
    if !have_redis() {
        return;
    }
    let r0 = RedisServer::start();
    let r1 = RedisServer::start();
    let mut s = Node::settings(&r0.url());
    s.targets = [r0.url(), r1.url()]
        .iter()
        .map(|u| wsrelay::broker::RedisTarget::parse(u).unwrap())
        .collect();
    let mut b_settings = s.clone();
    b_settings.node = wsrelay::broker::NodeId::random();
    let mut a = Node::start(s);
    let mut b = Node::start(b_settings);
    a.wait_up("x");
    b.wait_up("x");
    let names: Vec<String> = (0..40).map(|i| format!("s{i}")).collect();
    for n in &names {
        b.port.interest(n, true);
    }
    assert!(b.wait(T, |n| n.events.len() == 40));
    b.events.clear();
    for n in &names {
        let t = a
            .port
            .publish_history(&a.envelope(n, Kind::Publication, n.as_bytes()), opts())
            .unwrap();
        assert!(matches!(
            a.reply(t, T),
            Ok(Reply::Position { offset: 1, .. })
        ));
    }
    assert!(b.wait(T, |n| n.events.len() == 40));
    let mut got: Vec<String> = b
        .take_messages()
        .iter()
        .map(|m| m.channel.clone())
        .collect();
    got.sort();
    let mut want = names.clone();
    want.sort();
    assert_eq!(got, want);
    // Each channel's stream lives on its own shard only.
    let mut per_shard = [0; 2];
    for n in &names {
        let shard = wsrelay::broker::shard_of(n, 2);
        per_shard[shard] += 1;
        let key = format!("wsrelay.stream.{n}");
        let on = [&r0, &r1].map(|r| r.cli(&["EXISTS", &key]).trim() == "1");
        assert_eq!(on, [shard == 0, shard == 1], "{n}");
    }
    assert!(per_shard[0] > 5 && per_shard[1] > 5, "{per_shard:?}");
}

#[test]
fn an_envelope_without_position_goes_to_one_worker_of_a_node() {
    if !have_redis() {
        return;
    }
    use mio::{Poll, Token as MioToken, Waker};
    use std::sync::Arc;
    let redis = RedisServer::start();
    let polls: Vec<Poll> = (0..2).map(|_| Poll::new().unwrap()).collect();
    let wakers = polls
        .iter()
        .map(|p| Arc::new(Waker::new(p.registry(), MioToken(0)).unwrap()))
        .collect();
    let (broker, mut ports) =
        wsrelay::broker::Broker::start(Node::settings(&redis.url()), wakers).unwrap();
    let mut other = Node::start(Node::settings(&redis.url()));
    other.wait_up("one");
    // Events of one port within T until `n` messages arrived.
    let messages = |port: &mut wsrelay::broker::BrokerPort, n: usize, wait: Duration| {
        let until = Instant::now() + wait;
        let mut ev = Vec::new();
        let mut got = Vec::new();
        loop {
            port.recv_events(&mut ev);
            for e in ev.drain(..) {
                if let BrokerEvent::Message(m) = e {
                    got.push(m.payload.clone());
                }
            }
            if got.len() >= n || Instant::now() >= until {
                return got;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    ports[0].interest("one", true);
    ports[1].interest("one", true);
    let until = Instant::now() + T;
    while redis
        .cli(&["PUBSUB", "NUMSUB", "wsrelay.ch.one"])
        .lines()
        .nth(1)
        != Some("1")
    {
        assert!(Instant::now() < until, "not subscribed");
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(broker.is_up());
    for i in 0..5u8 {
        let env = other.envelope("one", Kind::RawText, &[b'0' + i]);
        let t = other.port.publish(&env).unwrap();
        assert_eq!(other.reply(t, T), Ok(Reply::Published));
    }
    // The lowest worker with interest takes every one, in order (its room
    // batch then reaches the node's other workers through the mesh).
    let want: Vec<Vec<u8>> = (0..5u8).map(|i| vec![b'0' + i]).collect();
    assert_eq!(messages(&mut ports[0], 5, T), want);
    assert!(messages(&mut ports[1], 1, Duration::from_millis(300)).is_empty());
    // Worker 0 loses interest: worker 1 takes over.
    ports[0].interest("one", false);
    let until = Instant::now() + T;
    loop {
        let env = other.envelope("one", Kind::RawText, b"x");
        let t = other.port.publish(&env).unwrap();
        assert_eq!(other.reply(t, T), Ok(Reply::Published));
        if !messages(&mut ports[1], 1, Duration::from_millis(50)).is_empty() {
            break;
        }
        assert!(Instant::now() < until, "worker 1 never took over");
    }
}
