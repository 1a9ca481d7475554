//! Each worker's end of the bridge: requests enqueued without blocking,
//! events and replies drained from bounded queues, the sleep handshake.

use super::*;

/// Events handed to a worker per [`BrokerPort::recv_events`] call.
const EVENT_BATCH: usize = 4096;

/// One worker's end of the bridge. Every method returns at once.
pub struct BrokerPort {
    worker: usize,
    shared: Arc<Shared>,
    events: Receiver<BrokerEvent>,
    replies: Receiver<(Token, Result<Reply, BrokerError>)>,
    /// Interest changes not yet accepted by a full shard queue: latest
    /// state per channel (so bounded by the worker's channels).
    pending_interest: HashMap<String, bool>,
    pending_order: VecDeque<String>,
    /// Requests sent and replies not yet taken.
    outstanding: usize,
    next_token: Token,
}

impl BrokerPort {
    pub(super) fn new(
        worker: usize,
        shared: Arc<Shared>,
        events: Receiver<BrokerEvent>,
        replies: Receiver<(Token, Result<Reply, BrokerError>)>,
    ) -> BrokerPort {
        BrokerPort {
            worker,
            shared,
            events,
            replies,
            pending_interest: HashMap::new(),
            pending_order: VecDeque::new(),
            outstanding: 0,
            next_token: 1,
        }
    }

    pub fn worker(&self) -> usize {
        self.worker
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.shared.settings.node
    }

    /// The other live nodes' latest records (cluster-wide `info` and
    /// `channels`), by uid. Takes a lock the bridge holds only to insert
    /// a decoded record, and clones `Arc`s.
    pub fn nodes(&self) -> Vec<Arc<NodeRecord>> {
        lock(&self.shared.nodes).live(Instant::now())
    }

    /// Most channels a node record carries (`redis_node_channels_max`).
    pub fn node_channels_max(&self) -> usize {
        self.shared.settings.node_channels_max
    }

    /// The bridge's counters.
    pub fn metrics(&self) -> &BrokerMetrics {
        &self.shared.metrics
    }

    /// Whether the shard of `channel` is connected (requests into it would
    /// not fail with `Unavailable` right away).
    pub fn is_up(&self, channel: &str) -> bool {
        self.shared.shard_up(self.shard(channel))
    }

    fn shard(&self, channel: &str) -> usize {
        shard_of(channel, self.shared.shards.len())
    }

    /// This worker now has (`on`) or no longer has local subscribers in
    /// `channel`. Call on transitions only (first in, last out).
    pub fn interest(&mut self, channel: &str, on: bool) {
        if self.pending_interest.is_empty() && self.try_interest(channel, on) {
            return;
        }
        if self
            .pending_interest
            .insert(channel.to_string(), on)
            .is_none()
        {
            self.pending_order.push_back(channel.to_string());
        }
    }

    fn try_interest(&self, channel: &str, on: bool) -> bool {
        let s = &self.shared.shards[self.shard(channel)];
        match s.interest.try_send(Interest {
            channel: channel.to_string(),
            worker: self.worker,
            on,
        }) {
            Ok(()) | Err(TrySendError::Disconnected(_)) => true,
            Err(TrySendError::Full(_)) => false,
        }
    }

    /// Retries interest changes a full queue refused; true when none is
    /// left. Call once per loop iteration while [`Self::has_pending`].
    pub fn flush_interest(&mut self) -> bool {
        while let Some(ch) = self.pending_order.front() {
            let on = self.pending_interest[ch];
            if !self.try_interest(ch, on) {
                return false;
            }
            self.pending_interest.remove(ch);
            self.pending_order.pop_front();
        }
        true
    }

    pub fn has_pending(&self) -> bool {
        !self.pending_order.is_empty()
    }

    fn submit(
        &mut self,
        channel: &str,
        kind: ReplyKind,
        cmd: Vec<u8>,
    ) -> Result<Token, BrokerError> {
        let shard = self.shard(channel);
        // Either connection down means Redis is (or is being) lost: the
        // two notice a shutdown one after the other, and `/healthz` says
        // degraded on the first, so requests fail from then on too.
        if !self.shared.shard_up(shard) {
            BrokerMetrics::inc(&self.shared.metrics.request_errors);
            return Err(BrokerError::Unavailable);
        }
        if self.outstanding >= self.shared.reply_cap {
            BrokerMetrics::inc(&self.shared.metrics.request_errors);
            return Err(BrokerError::Overloaded);
        }
        let token = self.next_token;
        let req = Request {
            worker: self.worker,
            token,
            deadline: Instant::now() + self.shared.settings.publish_timeout,
            kind,
            cmd,
        };
        self.shared.metrics.inflight.fetch_add(1, Ordering::Relaxed);
        match self.shared.shards[shard].outbox.try_send(req) {
            Ok(()) => {
                self.next_token += 1;
                self.outstanding += 1;
                Ok(token)
            }
            Err(e) => {
                self.shared.metrics.inflight.fetch_sub(1, Ordering::Relaxed);
                BrokerMetrics::inc(&self.shared.metrics.request_errors);
                Err(match e {
                    TrySendError::Full(_) => BrokerError::Overloaded,
                    TrySendError::Disconnected(_) => BrokerError::Unavailable,
                })
            }
        }
    }

    fn script(&self, s: Script) -> redis::Cmd {
        let mut c = redis::cmd("EVALSHA");
        c.arg(scripts::sha1_hex(scripts::ALL[s as usize]));
        c
    }

    /// Publishes an envelope without history (the channel keeps none):
    /// every other node with interest receives it; this node does not
    /// (deliver it locally yourself). Reply: [`Reply::Published`].
    pub fn publish(&mut self, env: &Envelope) -> Result<Token, BrokerError> {
        let bytes = env
            .encode()
            .map_err(|e| BrokerError::Invalid(format!("{e:?}")))?;
        let cmd = redis::cmd("PUBLISH")
            .arg(self.shared.settings.pubsub_channel(&env.channel))
            .arg(bytes)
            .get_packed_command();
        self.submit(&env.channel, ReplyKind::Published, cmd)
    }

    /// Publishes into a channel with history, atomically in Redis: offset
    /// assigned, appended to the capped stream, published to every node
    /// with interest, this one included (deliver it from the
    /// [`BrokerEvent::Message`], not locally). `env.position` is ignored.
    /// Reply: [`Reply::Position`].
    pub fn publish_history(
        &mut self,
        env: &Envelope,
        opts: StreamOptions,
    ) -> Result<Token, BrokerError> {
        let (head, tail) = env
            .encode_parts()
            .map_err(|e| BrokerError::Invalid(format!("{e:?}")))?;
        let s = &self.shared.settings;
        let cmd = self
            .script(Script::Publish)
            .arg(2)
            .arg(s.key("meta", &env.channel))
            .arg(s.key("stream", &env.channel))
            .arg(s.pubsub_channel(&env.channel))
            .arg(head)
            .arg(tail)
            .arg(opts.size.max(1))
            .arg(opts.ttl_ms.max(1))
            .arg(new_epoch())
            .get_packed_command();
        self.submit(&env.channel, ReplyKind::Position, cmd)
    }

    /// Reads a channel's stream: its top, epoch, front and up to `limit`
    /// publications after `since` (`limit` 0: none, just the position;
    /// negative: all). A channel without a stream gets one (new epoch,
    /// offset 0) living `empty_ttl` unless published into. Reply:
    /// [`Reply::History`].
    pub fn history(
        &mut self,
        channel: &str,
        since: u64,
        limit: i64,
        empty_ttl: Duration,
    ) -> Result<Token, BrokerError> {
        let s = &self.shared.settings;
        let cmd = self
            .script(Script::History)
            .arg(2)
            .arg(s.key("meta", channel))
            .arg(s.key("stream", channel))
            .arg(since.min(1 << 53))
            .arg(limit)
            .arg(new_epoch())
            .arg((empty_ttl.as_millis() as u64).max(1))
            .get_packed_command();
        self.submit(channel, ReplyKind::History, cmd)
    }

    /// Removes a channel's stream and epoch. Reply: [`Reply::Done`].
    pub fn remove_history(&mut self, channel: &str) -> Result<Token, BrokerError> {
        let s = &self.shared.settings;
        let cmd = redis::cmd("DEL")
            .arg(s.key("meta", channel))
            .arg(s.key("stream", channel))
            .get_packed_command();
        self.submit(channel, ReplyKind::Done, cmd)
    }

    /// Adds or refreshes a presence entry; it expires after `presence_ttl`
    /// unless refreshed. Reply: [`Reply::Done`].
    pub fn presence_add(
        &mut self,
        channel: &str,
        entry: &PresenceEntry,
    ) -> Result<Token, BrokerError> {
        let s = &self.shared.settings;
        let cmd = self
            .script(Script::PresenceAdd)
            .arg(2)
            .arg(s.key("pz", channel))
            .arg(s.key("ph", channel))
            .arg((s.presence_ttl.as_millis() as u64).max(1))
            .arg(&entry.client)
            .arg(entry.encode_value())
            .get_packed_command();
        self.submit(channel, ReplyKind::Done, cmd)
    }

    /// Removes a presence entry. Reply: [`Reply::Done`].
    pub fn presence_remove(&mut self, channel: &str, client: &str) -> Result<Token, BrokerError> {
        let s = &self.shared.settings;
        let cmd = self
            .script(Script::PresenceRemove)
            .arg(2)
            .arg(s.key("pz", channel))
            .arg(s.key("ph", channel))
            .arg(client)
            .get_packed_command();
        self.submit(channel, ReplyKind::Done, cmd)
    }

    /// A channel's presence over every node (expired entries removed
    /// first). Reply: [`Reply::Presence`]; `presence_stats` counts it.
    pub fn presence(&mut self, channel: &str) -> Result<Token, BrokerError> {
        let s = &self.shared.settings;
        let cmd = self
            .script(Script::PresenceGet)
            .arg(2)
            .arg(s.key("pz", channel))
            .arg(s.key("ph", channel))
            .get_packed_command();
        self.submit(channel, ReplyKind::Presence, cmd)
    }

    /// Takes up to a batch of events (and the `Missed` markers).
    pub fn recv_events(&mut self, out: &mut Vec<BrokerEvent>) {
        {
            let mut missed = lock(&self.shared.workers[self.worker].missed);
            for channel in missed.drain() {
                out.push(BrokerEvent::Missed { channel });
            }
        }
        for _ in 0..EVENT_BATCH {
            match self.events.try_recv() {
                Ok(e) => out.push(e),
                Err(_) => return,
            }
        }
    }

    /// Takes every reply waiting.
    pub fn recv_replies(&mut self, out: &mut Vec<(Token, Result<Reply, BrokerError>)>) {
        while let Ok(r) = self.replies.try_recv() {
            self.outstanding -= 1;
            out.push(r);
        }
    }

    /// The worker is about to block in `poll`: false if it must not,
    /// because something is already waiting.
    pub fn prepare_sleep(&self) -> bool {
        let link = &self.shared.workers[self.worker];
        link.sleeping.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        if !self.events.is_empty() || !self.replies.is_empty() || !lock(&link.missed).is_empty() {
            link.sleeping.store(false, Ordering::SeqCst);
            return false;
        }
        true
    }

    /// The worker woke up.
    pub fn awake(&self) {
        self.shared.workers[self.worker]
            .sleeping
            .store(false, Ordering::SeqCst);
    }
}
