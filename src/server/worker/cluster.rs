//! The worker's broker phase (`broker = "redis"`, docs/cluster.md): retry
//! interest changes a full queue refused, count the replies to this
//! worker's publishes, and deliver envelopes from other nodes into this
//! worker's room batches (from where they reach the node's other workers
//! through the mesh, exactly like a local publication).

use super::*;
use crate::broker::{BrokerEvent, BrokerMetrics};

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
        for (_, r) in replies.drain(..) {
            // Publishes are answered at once when refused; a later error
            // (timeout, connection lost with it in flight) means the
            // other nodes may not have it: counted, not retried (live
            // delivery is at most once, docs/cluster.md).
            if r.is_err() {
                BrokerMetrics::inc(&port.metrics().publish_errors);
            }
        }
        self.scratch_broker_replies = replies;
        let mut events = std::mem::take(&mut self.scratch_broker_events);
        port.recv_events(&mut events);
        for event in events.drain(..) {
            match event {
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
                // Channels without history (the only ones with this
                // broker for now) recover nothing, as in Centrifugo: a
                // (re)subscription or an overflow only means live
                // messages may have been missed, which the bridge
                // counts (`broker_inbox_dropped`, `broker_reconnects`).
                BrokerEvent::Subscribed { .. } | BrokerEvent::Missed { .. } => {}
            }
        }
        self.scratch_broker_events = events;
        let (mut out, rooms) = self.fanout();
        rooms.flush_full(&mut out);
    }
}
