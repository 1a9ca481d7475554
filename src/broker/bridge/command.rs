//! The command connection of a shard: a writer thread pipelining requests
//! from the bounded outbox, a reader thread routing replies back in order,
//! and the parsing of those replies.

use super::*;

struct InFlight {
    worker: usize,
    token: Token,
    kind: ReplyKind,
    deadline: Instant,
    /// Already answered (timed out): its reply is dropped.
    answered: bool,
}

/// The requests of one command connection awaiting replies, in order.
#[derive(Default)]
struct Pipeline {
    queue: VecDeque<InFlight>,
    /// The reader is gone: nothing more may be queued.
    closed: bool,
}

pub(super) fn command_loop(
    shared: Arc<Shared>,
    shard: usize,
    outbox: Receiver<Request>,
    stop: Receiver<()>,
) {
    let st = &shared.settings;
    let me = &shared.shards[shard];
    let target = st.targets[shard].clone();
    let cap = st.outbox_len.max(1);
    let mut backoff = Backoff::new(st.reconnect_max_delay);
    let mut connected_once = false;
    let mut retry_at = Instant::now();
    let mut batch: Vec<Request> = Vec::with_capacity(st.batch);
    let mut buf = Vec::new();
    struct Conn {
        stream: Stream,
        pipeline: Arc<Mutex<Pipeline>>,
        dead: Receiver<()>,
        progress: Receiver<()>,
    }
    let mut conn: Option<Conn> = None;
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            return;
        }
        if conn.is_none() && Instant::now() >= retry_at {
            match conn::open(&target, st.connect_timeout, &scripts::ALL) {
                Ok((stream, parser)) => {
                    backoff.reset();
                    if connected_once {
                        BrokerMetrics::inc(&shared.metrics.reconnects);
                    }
                    connected_once = true;
                    let _ = stream.set_write_timeout(Some(st.publish_timeout));
                    let pipeline = Arc::new(Mutex::new(Pipeline::default()));
                    let (dead_tx, dead_rx) = bounded(1);
                    let (prog_tx, prog_rx) = bounded(1);
                    if let (Ok(reader), Ok(closer)) = (stream.try_clone(), stream.try_clone()) {
                        let (sh, pl) = (shared.clone(), pipeline.clone());
                        let spawned = std::thread::Builder::new()
                            .name(format!("redis-cmd-read-{shard}"))
                            .spawn(move || {
                                command_reader(sh, pl, reader, parser, dead_tx, prog_tx)
                            });
                        if spawned.is_ok() {
                            *lock(&me.cmd_socket) = Some(closer);
                            shared.set_up(&me.cmd_up, true, &me.sub_up);
                            conn = Some(Conn {
                                stream,
                                pipeline,
                                dead: dead_rx,
                                progress: prog_rx,
                            });
                        } else {
                            retry_at = Instant::now() + backoff.failed();
                        }
                    } else {
                        retry_at = Instant::now() + backoff.failed();
                    }
                }
                Err(e) => {
                    BrokerMetrics::inc(&shared.metrics.connect_errors);
                    // Warn once per failure streak (a wrong password or
                    // address must be visible), then debug. Never the URL:
                    // it may hold a password.
                    if backoff.is_fresh() {
                        log::warn!("redis {target:?}: command connection failed: {e}; retrying");
                    } else {
                        log::debug!("redis {target:?}: command connect: {e}");
                    }
                    retry_at = Instant::now() + backoff.failed();
                }
            }
        }
        let now = Instant::now();
        // Expire requests that waited too long for their reply.
        let mut next_deadline = None;
        let mut full = false;
        if let Some(c) = &conn {
            let mut p = lock(&c.pipeline);
            for f in p.queue.iter_mut() {
                if f.answered {
                    continue;
                }
                if f.deadline <= now {
                    f.answered = true;
                    shared.reply(f.worker, f.token, Err(BrokerError::Timeout));
                } else {
                    next_deadline = Some(f.deadline);
                    break;
                }
            }
            full = p.queue.len() >= cap;
        }
        let wake_at = match (&conn, next_deadline) {
            (None, _) => Some(retry_at),
            (Some(_), d) => d,
        };
        let timeout = wake_at.map_or(Duration::from_secs(3600), |t| {
            t.saturating_duration_since(now)
        });
        let dead = conn
            .as_ref()
            .map(|c| c.dead.clone())
            .unwrap_or_else(crossbeam_channel::never);
        let progress = conn
            .as_ref()
            .map(|c| c.progress.clone())
            .unwrap_or_else(crossbeam_channel::never);
        // While the pipeline is full (Redis is not keeping up), new
        // requests fail with Overloaded at once instead of waiting.
        let take = outbox.clone();
        select! {
            recv(stop) -> _ => {
                if let Some(c) = conn.take() {
                    c.stream.shutdown();
                }
                return;
            }
            recv(dead) -> _ => {
                if let Some(c) = conn.take() {
                    c.stream.shutdown();
                }
                shared.set_up(&me.cmd_up, false, &me.sub_up);
                lock(&me.cmd_socket).take();
                retry_at = Instant::now() + backoff.failed();
            }
            recv(progress) -> _ => {}
            recv(take) -> r => {
                let Ok(first) = r else { return };
                batch.push(first);
                while batch.len() < st.batch.max(1) {
                    match outbox.try_recv() {
                        Ok(r) => batch.push(r),
                        Err(_) => break,
                    }
                }
                let Some(c) = &mut conn else {
                    for r in batch.drain(..) {
                        shared.reply(r.worker, r.token, Err(BrokerError::Unavailable));
                    }
                    continue;
                };
                buf.clear();
                let now = Instant::now();
                let mut p = lock(&c.pipeline);
                for r in batch.drain(..) {
                    if full || p.queue.len() >= cap {
                        full = true;
                        shared.reply(r.worker, r.token, Err(BrokerError::Overloaded));
                    } else if p.closed {
                        shared.reply(r.worker, r.token, Err(BrokerError::Unavailable));
                    } else if r.deadline <= now {
                        shared.reply(r.worker, r.token, Err(BrokerError::Timeout));
                    } else {
                        buf.extend_from_slice(&r.cmd);
                        p.queue.push_back(InFlight {
                            worker: r.worker,
                            token: r.token,
                            kind: r.kind,
                            deadline: r.deadline,
                            answered: false,
                        });
                    }
                }
                drop(p);
                if !buf.is_empty() && c.stream.write_all(&buf).is_err() {
                    // The reader sees the shutdown and fails the pipeline.
                    c.stream.shutdown();
                }
                if buf.capacity() > (1 << 20) {
                    buf = Vec::new();
                }
            }
            default(timeout) => {}
        }
        // Down: whatever waits in the outbox fails at once.
        if conn.is_none() {
            while let Ok(r) = outbox.try_recv() {
                shared.reply(r.worker, r.token, Err(BrokerError::Unavailable));
            }
        }
    }
}

fn command_reader(
    shared: Arc<Shared>,
    pipeline: Arc<Mutex<Pipeline>>,
    mut stream: Stream,
    mut parser: redis::Parser,
    dead: Sender<()>,
    progress: Sender<()>,
) {
    loop {
        let v = match conn::read_value(&mut parser, &mut stream) {
            Ok(v) => v,
            Err(e) => {
                if !shared.stop.load(Ordering::SeqCst) {
                    log::warn!("redis command connection lost: {e}");
                }
                break;
            }
        };
        let Some(f) = lock(&pipeline).queue.pop_front() else {
            log::warn!("redis: reply without a request");
            break;
        };
        let noscript = matches!(&v, Value::ServerError(e) if e.kind() == Some(redis::ServerErrorKind::NoScript));
        if !f.answered {
            shared.reply(f.worker, f.token, parse_reply(f.kind, v));
        }
        let _ = progress.try_send(());
        if noscript {
            // Scripts flushed: a new connection loads them again.
            break;
        }
    }
    stream.shutdown();
    let mut p = lock(&pipeline);
    p.closed = true;
    for f in p.queue.drain(..) {
        if !f.answered {
            shared.reply(f.worker, f.token, Err(BrokerError::Unavailable));
        }
    }
    drop(p);
    let _ = dead.try_send(());
}

fn as_u64(v: &Value) -> Option<u64> {
    match v {
        Value::Int(i) => u64::try_from(*i).ok(),
        Value::BulkString(b) => std::str::from_utf8(b).ok()?.parse().ok(),
        Value::SimpleString(s) => s.parse().ok(),
        _ => None,
    }
}

fn as_string(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}

fn parse_reply(kind: ReplyKind, v: Value) -> Result<Reply, BrokerError> {
    if let Value::ServerError(e) = &v {
        return Err(BrokerError::Redis(format!(
            "{} {}",
            e.code(),
            e.details().unwrap_or("")
        )));
    }
    let bad =
        |v: &Value| BrokerError::Protocol(format!("{kind:?}: {v:?}").chars().take(200).collect());
    match kind {
        ReplyKind::Published => match v {
            Value::Int(_) => Ok(Reply::Published),
            v => Err(bad(&v)),
        },
        ReplyKind::Done => Ok(Reply::Done),
        ReplyKind::Position => match &v {
            Value::Array(a) if a.len() == 2 => match (as_u64(&a[0]), as_string(&a[1])) {
                (Some(offset), Some(epoch)) => Ok(Reply::Position { offset, epoch }),
                _ => Err(bad(&v)),
            },
            _ => Err(bad(&v)),
        },
        ReplyKind::History => {
            let Value::Array(a) = &v else {
                return Err(bad(&v));
            };
            let (Some(top), Some(epoch), Some(front), Some(Value::Array(entries))) = (
                a.first().and_then(as_u64),
                a.get(1).and_then(as_string),
                a.get(2).and_then(as_u64),
                a.get(3),
            ) else {
                return Err(bad(&v));
            };
            let mut publications = Vec::with_capacity(entries.len());
            for e in entries {
                let Value::BulkString(b) = e else {
                    return Err(bad(&v));
                };
                publications.push(
                    Envelope::decode(b)
                        .map_err(|e| BrokerError::Protocol(format!("history entry: {e}")))?,
                );
            }
            Ok(Reply::History(HistoryReply {
                top,
                epoch,
                front,
                publications,
            }))
        }
        ReplyKind::Presence => {
            let Value::Array(a) = &v else {
                return Err(bad(&v));
            };
            let mut out = Vec::with_capacity(a.len() / 2);
            for pair in a.chunks(2) {
                if let [Value::BulkString(k), Value::BulkString(val)] = pair {
                    if let Some(e) = PresenceEntry::decode(k, val) {
                        out.push(e);
                    }
                }
            }
            Ok(Reply::Presence(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(b: &[u8]) -> Value {
        Value::BulkString(b.to_vec())
    }

    #[test]
    fn replies_parse_and_unexpected_shapes_are_protocol_errors() {
        let pos = Value::Array(vec![Value::Int(7), bulk(b"ep")]);
        assert_eq!(
            parse_reply(ReplyKind::Position, pos),
            Ok(Reply::Position {
                offset: 7,
                epoch: "ep".into()
            })
        );
        let env = Envelope {
            kind: crate::broker::envelope::Kind::Publication,
            origin: NodeId([1; 16]),
            channel: "c".into(),
            position: Some((3, "ep".into())),
            info: None,
            payload: b"{}".to_vec(),
        };
        let hist = Value::Array(vec![
            Value::Int(3),
            bulk(b"ep"),
            Value::Int(3),
            Value::Array(vec![bulk(&env.encode().unwrap())]),
        ]);
        match parse_reply(ReplyKind::History, hist) {
            Ok(Reply::History(h)) => {
                assert_eq!((h.top, h.front, h.publications.len()), (3, 3, 1));
                assert_eq!(h.publications[0], env);
            }
            r => panic!("{r:?}"),
        }
        for (kind, v) in [
            (
                ReplyKind::Position,
                Value::Array(vec![Value::Int(-1), bulk(b"e")]),
            ),
            (ReplyKind::Position, Value::Nil),
            (ReplyKind::Published, Value::Okay),
            (ReplyKind::History, Value::Array(vec![Value::Int(1)])),
            (
                ReplyKind::History,
                Value::Array(vec![
                    Value::Int(1),
                    bulk(b"e"),
                    Value::Int(1),
                    Value::Array(vec![bulk(b"garbage")]),
                ]),
            ),
            (ReplyKind::Presence, Value::Int(3)),
        ] {
            assert!(
                matches!(parse_reply(kind, v.clone()), Err(BrokerError::Protocol(_))),
                "{kind:?} {v:?}"
            );
        }
        // Presence: malformed entries are skipped, good ones kept.
        let good = PresenceEntry {
            client: "c1".into(),
            user: "u".into(),
            conn_info: None,
            chan_info: None,
        };
        let v = Value::Array(vec![
            bulk(b"c1"),
            bulk(&good.encode_value()),
            bulk(b"c2"),
            bulk(b"\xff"),
            bulk(b"odd"),
        ]);
        assert_eq!(
            parse_reply(ReplyKind::Presence, v),
            Ok(Reply::Presence(vec![good]))
        );
    }
}
