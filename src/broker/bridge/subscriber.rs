//! The subscriber connection of a shard: a control thread writing
//! SUBSCRIBE/UNSUBSCRIBE from the [`Subscriptions`] state, a reader thread
//! blocking on the socket and handing messages to the workers.

use super::*;

pub(super) fn subscriber_loop(
    shared: Arc<Shared>,
    shard: usize,
    interest: Receiver<Interest>,
    stop: Receiver<()>,
) {
    let st = &shared.settings;
    let state = Arc::new(Mutex::new(SubState {
        subs: Subscriptions::new(st.linger, st.batch),
        resubscribed: HashSet::new(),
        unconfirmed: HashSet::new(),
        confirmed: HashSet::new(),
    }));
    let me = &shared.shards[shard];
    let target = st.targets[shard].clone();
    let mut backoff = Backoff::new(st.reconnect_max_delay);
    let mut conn: Option<(Stream, Receiver<()>)> = None;
    let mut connected_once = false;
    let mut retry_at = Instant::now();
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        if conn.is_none() && Instant::now() >= retry_at {
            match conn::open(&target, st.connect_timeout, &[]) {
                Ok((stream, parser)) => {
                    backoff.reset();
                    if connected_once {
                        BrokerMetrics::inc(&shared.metrics.reconnects);
                    }
                    connected_once = true;
                    let _ = stream
                        .set_write_timeout(Some(st.publish_timeout.max(Duration::from_secs(1))));
                    let (dead_tx, dead_rx) = bounded(1);
                    match (stream.try_clone(), stream.try_clone()) {
                        (Ok(reader), Ok(closer)) => {
                            *lock(&me.sub_socket) = Some(closer);
                            {
                                let mut s = lock(&state);
                                s.subs.reset();
                                s.unconfirmed.clear();
                                s.confirmed.clear();
                                let mut all = Vec::new();
                                // Everything queued now is a resubscription
                                // (or a subscription made while down).
                                while let Some(c) = s.subs.next_command() {
                                    all.push(c);
                                }
                                for c in &all {
                                    if let SubCommand::Subscribe(v) = c {
                                        for ch in v {
                                            s.resubscribed.insert(ch.clone());
                                        }
                                    }
                                }
                                drop(s);
                                let (sh, stt) = (shared.clone(), state.clone());
                                let spawned = std::thread::Builder::new()
                                    .name(format!("redis-sub-read-{shard}"))
                                    .spawn(move || {
                                        subscriber_reader(sh, stt, reader, parser, dead_tx)
                                    });
                                if spawned.is_err() {
                                    retry_at = Instant::now() + backoff.failed();
                                    continue;
                                }
                                let mut stream = stream;
                                // Shard 0 carries the node records, always
                                // (not on demand, no linger).
                                let control = if shard == 0 {
                                    redis::cmd("SUBSCRIBE")
                                        .arg(st.nodes_channel())
                                        .get_packed_command()
                                } else {
                                    Vec::new()
                                };
                                if stream.write_all(&control).is_err()
                                    || send_sub_commands(&shared, &state, &mut stream, all).is_err()
                                {
                                    stream.shutdown();
                                } else {
                                    shared.set_up(&me.sub_up, true, &me.cmd_up);
                                }
                                conn = Some((stream, dead_rx));
                            }
                        }
                        _ => retry_at = Instant::now() + backoff.failed(),
                    }
                }
                Err(e) => {
                    BrokerMetrics::inc(&shared.metrics.connect_errors);
                    // Warn once per failure streak (a wrong password or
                    // address must be visible), then debug. Never the URL:
                    // it may hold a password.
                    if backoff.is_fresh() {
                        log::warn!("redis {target:?}: subscriber connection failed: {e}; retrying");
                    } else {
                        log::debug!("redis {target:?}: subscriber connect: {e}");
                    }
                    retry_at = Instant::now() + backoff.failed();
                }
            }
        }
        // Send what the state machine wants, when connected.
        if let Some((stream, _)) = &mut conn {
            let mut cmds = Vec::new();
            {
                let mut s = lock(&state);
                while let Some(c) = s.subs.next_command() {
                    cmds.push(c);
                }
            }
            if !cmds.is_empty() && send_sub_commands(&shared, &state, stream, cmds).is_err() {
                stream.shutdown();
            }
        }
        let now = Instant::now();
        let mut wake_at = lock(&state).subs.poll_timeout();
        if conn.is_none() {
            wake_at = Some(wake_at.map_or(retry_at, |t| t.min(retry_at)));
        }
        let timeout = wake_at.map_or(Duration::from_secs(3600), |t| {
            t.saturating_duration_since(now)
        });
        let dead = conn
            .as_ref()
            .map(|(_, d)| d.clone())
            .unwrap_or_else(crossbeam_channel::never);
        select! {
            recv(stop) -> _ => {
                // Unblocks the reader of a connection made during shutdown.
                if let Some((stream, _)) = conn.take() {
                    stream.shutdown();
                }
                return;
            }
            recv(interest) -> m => {
                let Ok(first) = m else { return };
                let now = Instant::now();
                let mut s = lock(&state);
                let mut m = Some(first);
                let mut n = 0;
                let mut joined = Vec::new();
                while let Some(i) = m.take() {
                    let before = s.subs.workers(&i.channel);
                    s.subs.interest(&i.channel, i.worker, i.on, now);
                    // A worker joining a live subscription: no
                    // confirmation will come for it, so tell it now.
                    if i.on && before & (1 << (i.worker & 63)) == 0 && s.confirmed.contains(&i.channel) {
                        joined.push((i.worker, i.channel));
                    }
                    n += 1;
                    if n < 4096 {
                        m = interest.try_recv().ok();
                    }
                }
                shared.metrics.channels.store(s.subs.len() as u64, Ordering::Relaxed);
                drop(s);
                for (w, channel) in joined {
                    deliver(&shared, 1 << w, &channel, || BrokerEvent::Subscribed {
                        channel: channel.clone(),
                        resubscribed: false,
                    });
                }
            }
            recv(dead) -> _ => {
                if let Some((stream, _)) = conn.take() {
                    stream.shutdown();
                }
                shared.set_up(&me.sub_up, false, &me.cmd_up);
                lock(&me.sub_socket).take();
                retry_at = Instant::now() + backoff.failed();
            }
            default(timeout) => {
                let mut s = lock(&state);
                s.subs.advance(Instant::now());
                shared.metrics.channels.store(s.subs.len() as u64, Ordering::Relaxed);
            }
        }
    }
}

fn send_sub_commands(
    shared: &Shared,
    state: &Mutex<SubState>,
    stream: &mut Stream,
    cmds: Vec<SubCommand>,
) -> io::Result<()> {
    let st = &shared.settings;
    let mut out = Vec::new();
    for c in cmds {
        let (name, list) = match c {
            SubCommand::Subscribe(v) => {
                BrokerMetrics::inc(&shared.metrics.subscribe_commands);
                let mut s = lock(state);
                for ch in &v {
                    s.unconfirmed.insert(ch.clone());
                }
                shared
                    .metrics
                    .subscribe_pending
                    .store(s.unconfirmed.len() as u64, Ordering::Relaxed);
                ("SUBSCRIBE", v)
            }
            SubCommand::Unsubscribe(v) => {
                BrokerMetrics::inc(&shared.metrics.unsubscribe_commands);
                let mut s = lock(state);
                for ch in &v {
                    s.confirmed.remove(ch);
                }
                drop(s);
                ("UNSUBSCRIBE", v)
            }
        };
        let mut cmd = redis::cmd(name);
        for ch in &list {
            cmd.arg(st.pubsub_channel(ch));
        }
        out.extend_from_slice(&cmd.get_packed_command());
    }
    stream.write_all(&out)
}

/// Blocks reading the subscriber connection until it fails.
fn subscriber_reader(
    shared: Arc<Shared>,
    state: Arc<Mutex<SubState>>,
    mut stream: Stream,
    mut parser: redis::Parser,
    dead: Sender<()>,
) {
    let prefix = format!("{}.ch.", shared.settings.prefix);
    let nodes_channel = shared.settings.nodes_channel();
    let node = shared.settings.node;
    loop {
        let v = match conn::read_value(&mut parser, &mut stream) {
            Ok(v) => v,
            Err(e) => {
                if !shared.stop.load(Ordering::SeqCst) {
                    log::warn!("redis subscriber connection lost: {e}");
                }
                let _ = dead.try_send(());
                return;
            }
        };
        let items = match v {
            Value::Array(items) => items,
            Value::Push { data, .. } => data,
            _ => continue,
        };
        let kind = match items.first() {
            Some(Value::BulkString(b)) => b.as_slice(),
            Some(Value::SimpleString(s)) => s.as_bytes(),
            _ => continue,
        };
        let channel_of = |v: Option<&Value>| -> Option<String> {
            let Some(Value::BulkString(b)) = v else {
                return None;
            };
            let s = std::str::from_utf8(b).ok()?;
            s.strip_prefix(&prefix).map(str::to_string)
        };
        match kind {
            b"message" => {
                if let (Some(Value::BulkString(c)), Some(Value::BulkString(payload))) =
                    (items.get(1), items.get(2))
                {
                    if c.as_slice() == nodes_channel.as_bytes() {
                        heartbeat::heard(&shared, payload);
                        continue;
                    }
                }
                BrokerMetrics::inc(&shared.metrics.messages_in);
                let (Some(channel), Some(Value::BulkString(payload))) =
                    (channel_of(items.get(1)), items.get(2))
                else {
                    continue;
                };
                let env = match Envelope::decode(payload) {
                    Ok(e) if e.channel == channel => e,
                    _ => {
                        BrokerMetrics::inc(&shared.metrics.decode_errors);
                        continue;
                    }
                };
                // Own publications come back only when they carry a
                // position (history): the only way they are delivered.
                if env.origin == node && env.position.is_none() {
                    continue;
                }
                let mask = lock(&state).subs.workers(&channel);
                if mask == 0 {
                    continue;
                }
                BrokerMetrics::inc(&shared.metrics.messages_delivered);
                // Without a position, one worker (always the lowest with
                // interest, so one channel's envelopes stay in order) takes
                // it into its room batch, which reaches the node's other
                // workers through the mesh: encoded once per node, as a
                // local publication is. With a position (history, phase 2)
                // every worker sequences its own subscribers.
                let mask = if env.position.is_none() {
                    mask & mask.wrapping_neg()
                } else {
                    mask
                };
                let env = Arc::new(env);
                deliver(&shared, mask, &channel, || {
                    BrokerEvent::Message(env.clone())
                });
            }
            b"subscribe" => {
                let Some(channel) = channel_of(items.get(1)) else {
                    continue;
                };
                let (mask, resubscribed) = {
                    let mut s = lock(&state);
                    s.unconfirmed.remove(&channel);
                    s.confirmed.insert(channel.clone());
                    shared
                        .metrics
                        .subscribe_pending
                        .store(s.unconfirmed.len() as u64, Ordering::Relaxed);
                    (s.subs.workers(&channel), s.resubscribed.remove(&channel))
                };
                if mask != 0 {
                    deliver(&shared, mask, &channel, || BrokerEvent::Subscribed {
                        channel: channel.clone(),
                        resubscribed,
                    });
                }
            }
            _ => {}
        }
    }
}

/// Hands an event to every worker in `mask`; a full inbox drops it for
/// that worker and marks the channel missed there.
fn deliver(shared: &Shared, mut mask: u64, channel: &str, event: impl Fn() -> BrokerEvent) {
    while mask != 0 {
        let w = mask.trailing_zeros() as usize;
        mask &= mask - 1;
        let Some(link) = shared.workers.get(w) else {
            continue;
        };
        if let Err(TrySendError::Full(_)) = link.events.try_send(event()) {
            BrokerMetrics::inc(&shared.metrics.inbox_dropped);
            lock(&link.missed).insert(channel.to_string());
        }
        link.notify();
    }
}
