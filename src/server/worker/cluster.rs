//! The worker's broker phase (`broker = "redis"`, docs/cluster.md): retry
//! interest changes a full queue refused, count the replies to this
//! worker's publishes, and deliver envelopes from other nodes into this
//! worker's room batches (from where they reach the node's other workers
//! through the mesh, exactly like a local publication).

use super::pubsub::frame_of;
use super::*;
use crate::broker::{BrokerError, BrokerEvent, BrokerMetrics, Reply};
use crate::server::api_redis::{replay, PendingApi};
use crate::server::awaiting::Call;
use crate::server::client::send_read;
use crate::server::router::ping_secs;

impl Worker {
    pub(super) fn drain_broker(&mut self) {
        let Some(port) = self.rooms.broker_mut() else {
            return;
        };
        if port.has_pending() {
            port.flush_interest();
        }
        let mut replies = std::mem::take(&mut self.scratch_broker_replies);
        port.recv_replies(&mut replies);
        for (token, r) in replies.drain(..) {
            let r = match self.awaiting.answer_api(token, r) {
                Ok(Some(api)) => {
                    self.complete_api(api);
                    continue;
                }
                Ok(None) => continue,
                Err(r) => r,
            };
            match self.awaiting.take(token) {
                Some(call) => self.complete_call(call, r),
                // A raw member's or an HTTP publication, a presence
                // update: an error means the other nodes may not have it
                // (counted, not retried: live delivery is at most once,
                // docs/cluster.md; presence is repaired by its refresh).
                None => {
                    if r.is_err() {
                        if let Some(port) = self.rooms.broker() {
                            BrokerMetrics::inc(&port.metrics().publish_errors);
                        }
                    }
                }
            }
        }
        self.scratch_broker_replies = replies;
        let Some(port) = self.rooms.broker_mut() else {
            return;
        };
        let mut events = std::mem::take(&mut self.scratch_broker_events);
        port.recv_events(&mut events);
        for event in events.drain(..) {
            match event {
                // A channel with history: sequenced by this worker.
                BrokerEvent::Message(env) if env.position.is_some() => {
                    self.rooms.receive_positioned(env);
                }
                BrokerEvent::Message(env) => {
                    let room = match self.rooms.id_of(&env.channel) {
                        Some(id) => id,
                        None => {
                            // Our last member left since: the node's
                            // other workers may still have members.
                            let Ok(options) = self.shared.hub.options(&env.channel) else {
                                continue;
                            };
                            match self
                                .rooms
                                .ensure(&self.shared.directory, &env.channel, options)
                            {
                                Ok(id) => id,
                                Err(_) => continue,
                            }
                        }
                    };
                    self.rooms.deliver_envelope(room, &env);
                }
                // Publications may have been missed: channels with history
                // recover their subscribers here; the others recover
                // nothing, as in Centrifugo (the bridge counts what was
                // lost: `broker_inbox_dropped`, `broker_reconnects`).
                BrokerEvent::Subscribed {
                    channel,
                    resubscribed,
                } => {
                    if resubscribed {
                        self.rooms.stream_lost(&channel);
                    }
                    self.rooms.stream_live(&channel);
                    for call in self.awaiting.unpark(&channel) {
                        if let Err((call, e)) = self.send_parked(call) {
                            self.complete_call(call, Err(e));
                        }
                    }
                }
                BrokerEvent::Missed { channel } => self.rooms.stream_lost(&channel),
            }
        }
        self.scratch_broker_events = events;
        if let Some(port) = self.rooms.broker() {
            for call in self.awaiting.unpark_where(|c| !port.is_up(c)) {
                self.complete_call(call, Err(BrokerError::Unavailable));
            }
        }
        let (mut out, rooms) = self.fanout();
        rooms.flush_full(&mut out);
        rooms.flush_incoming(&mut out);
    }

    /// A subscription's history read, once its channel is live here.
    fn send_parked(&mut self, call: Call) -> Result<(), (Call, BrokerError)> {
        let mut x = Exec {
            hub: &self.shared.hub,
            rooms: &mut self.rooms,
            directory: &self.shared.directory,
            key: call.key,
            ping_secs: 0,
            now_secs: Hub::unix_secs(),
            metrics: &self.metrics,
            awaiting: &mut self.awaiting,
        };
        send_read(call, &mut x)
    }

    /// Answers a protocol command that waited for Redis, if its
    /// connection is still there.
    fn complete_call(&mut self, call: Call, answer: Result<Reply, BrokerError>) {
        let key = call.key;
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        if !matches!(&conn.attachment, Some(Attachment::Client(c)) if c.id == call.client) {
            return;
        }
        let Some(Attachment::Client(mut client)) = conn.attachment.take() else {
            return;
        };
        let done = {
            let mut x = Exec {
                hub: &self.shared.hub,
                rooms: &mut self.rooms,
                directory: &self.shared.directory,
                key,
                ping_secs: ping_secs(self.shared.config.ping_interval),
                now_secs: Hub::unix_secs(),
                metrics: &self.metrics,
                awaiting: &mut self.awaiting,
            };
            client.complete(call, answer, &mut x)
        };
        conn.attachment = Some(Attachment::Client(client));
        if !done.json.is_empty() || !done.frames.is_empty() {
            let json = (!done.json.is_empty()).then(|| frame_of(&done.json));
            let parts = json
                .as_deref()
                .into_iter()
                .chain(std::iter::once(&done.frames[..]));
            self.table
                .deliver(key, |s| s.send_copy(parts.clone()), &self.metrics);
            self.metrics.messages_out.inc();
        }
        let (mut out, rooms) = self.fanout();
        rooms.sweep_dead(&mut out);
        self.settle(key);
    }

    /// Answers a server API request whose Redis reads are all answered
    /// (run even if its connection is gone: its writes were asked for).
    fn complete_api(&mut self, api: PendingApi) {
        let (key, generation) = (api.key, api.generation);
        let bytes = replay(
            api,
            &self.shared,
            &mut self.rooms,
            &mut self.port,
            &self.metrics,
        );
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        if conn.generation != generation || !conn.session.answer_later(bytes, self.now) {
            return;
        }
        self.settle(key);
    }

    /// Every third of `presence_ttl`, refreshes this worker's clients'
    /// presence entries in Redis (they expire otherwise: a node that dies
    /// leaves no ghosts). A pass walks the connection table a step per
    /// loop iteration, so a hundred thousand entries never meet a full
    /// outbox at once; a refusal is retried from the same client.
    pub(super) fn refresh_presence(&mut self) {
        if self.rooms.broker().is_none() {
            return;
        }
        if self.presence_cursor.is_none() {
            let period = (self.shared.config.presence_ttl.as_millis() as u64 / 3).max(1);
            if self.presence_refresh_at == 0 {
                self.presence_refresh_at = self.now + period;
                return;
            }
            if self.now < self.presence_refresh_at {
                return;
            }
            self.presence_refresh_at = self.now + period;
            self.presence_cursor = Some(0);
        }
        let Some(mut key) = self.presence_cursor else {
            return;
        };
        let bound = self.table.key_bound();
        let end = key.saturating_add(PRESENCE_REFRESH_STEP).min(bound);
        while key < end {
            if let Some(Some(Attachment::Client(c))) = self.table.get(key).map(|c| &c.attachment) {
                if !c.refresh_presence(&mut self.rooms) {
                    break;
                }
            }
            key += 1;
        }
        self.presence_cursor = (key < bound).then_some(key);
    }

    /// A presence refresh pass is under way (the loop comes back soon).
    pub(super) fn refreshing_presence(&self) -> bool {
        self.presence_cursor.is_some()
    }
}

/// Connection slots a presence refresh pass looks at per loop iteration.
const PRESENCE_REFRESH_STEP: usize = 512;
