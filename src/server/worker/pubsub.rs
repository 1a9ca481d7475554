//! The worker's pub/sub duties: subscriptions that end outside a read
//! (broken streams, expired tokens, server API requests, closed
//! connections) and protocol clients' deadlines.

use super::*;

impl Worker {
    /// Subscribers whose stream broke on this worker get "insufficient
    /// state" and resubscribe with recovery.
    pub(super) fn unsubscribe_insufficient(&mut self) {
        let mut list = std::mem::take(&mut self.scratch_insufficient);
        self.rooms.take_insufficient(&mut list);
        for (key, room_id) in list.drain(..) {
            self.metrics.pubsub_insufficient.inc();
            let server_side = match self.table.get(key).map(|c| &c.attachment) {
                Some(Some(Attachment::Client(c))) => {
                    c.subs.iter().any(|s| s.room_id == room_id && s.server_side)
                }
                _ => false,
            };
            if server_side {
                // The SDKs resubscribe server-side subscriptions only by
                // reconnecting (with their positions in `connect.subs`).
                if let Some(conn) = self.table.get_mut(key) {
                    conn.session.close(
                        CloseCode(3010),
                        DisconnectCode::InsufficientState.text(),
                        self.now,
                    );
                }
                self.settle(key);
            } else {
                self.end_subscription(key, room_id, UnsubscribeCode::InsufficientState);
            }
        }
        self.scratch_insufficient = list;
    }

    /// Ends one subscription of a connection, telling it why.
    pub(super) fn end_subscription(&mut self, key: usize, room_id: u64, code: UnsubscribeCode) {
        let Some(conn) = self.table.get_mut(key) else {
            return;
        };
        let Some(Attachment::Client(mut client)) = conn.attachment.take() else {
            return;
        };
        let mut push = Vec::new();
        {
            let mut x = Exec {
                hub: &self.shared.hub,
                rooms: &mut self.rooms,
                directory: &self.shared.directory,
                key,
                ping_secs: 0,
                now_secs: Hub::unix_secs(),
                metrics: &self.metrics,
                awaiting: &mut self.awaiting,
            };
            client.unsubscribe(room_id, &mut x, Some((code, &mut push)));
        }
        conn.attachment = Some(Attachment::Client(client));
        if !push.is_empty() {
            let data = push;
            self.table.deliver(
                key,
                |s| s.send_copy(std::iter::once(&frame_of(&data)[..])),
                &self.metrics,
            );
        }
        let (mut out, rooms) = self.fanout();
        rooms.sweep_dead(&mut out);
        self.settle(key);
    }

    /// A server API request for connections on every worker.
    pub(super) fn apply_control(&mut self, c: &Control) {
        let no_whitelist = Vec::new();
        let (user, client_id, whitelist) = match c {
            Control::Disconnect {
                user,
                client,
                whitelist,
                ..
            } => (user, client, whitelist),
            Control::Unsubscribe { user, client, .. } => (user, client, &no_whitelist),
        };
        let keys: Vec<usize> = self
            .table
            .iter_keyed()
            .filter_map(|(k, conn)| match &conn.attachment {
                Some(Attachment::Client(cl))
                    if cl.connected
                        && &*cl.user == user.as_str()
                        && client_id.as_deref().is_none_or(|id| id == &*cl.id)
                        && !whitelist.iter().any(|w| w.as_str() == &*cl.id) =>
                {
                    Some(k)
                }
                _ => None,
            })
            .collect();
        for key in keys {
            match c {
                Control::Disconnect { code, reason, .. } => {
                    if let Some(conn) = self.table.get_mut(key) {
                        conn.session
                            .close(CloseCode(*code as u16), reason, self.now);
                    }
                    self.settle(key);
                }
                Control::Unsubscribe { channel, .. } => {
                    if let Some(room_id) = self.rooms.id_of(channel) {
                        self.end_subscription(key, room_id, UnsubscribeCode::Server);
                    }
                }
            }
        }
    }

    /// A protocol client's connection is gone: its presence, leave pushes
    /// and subscriber slots.
    pub(super) fn client_gone(&mut self, client: &Client) {
        let hub = &self.shared.hub;
        if client.connected {
            hub.count_client(&client.user, false);
        }
        for sub in &client.subs {
            if let Some(name) = self.rooms.name_of(sub.room_id).map(str::to_owned) {
                client.leave_effects(&name, sub, hub, &mut self.rooms, &self.metrics);
            }
        }
        let (mut out, rooms) = (
            Fanout {
                table: &mut self.table,
                port: &mut self.port,
                mesh: &self.shared.mesh,
                directory: &self.shared.directory,
                hub,
                metrics: &self.metrics,
                now: self.now,
            },
            &mut self.rooms,
        );
        for sub in &client.subs {
            rooms.unsubscribe(sub.room_id, sub.slot, &mut out);
        }
    }

    /// Protocol clients past a deadline: no `connect` in time (3502), a
    /// connection token not refreshed (3005), a subscription token not
    /// refreshed (unsubscribe 2501).
    pub(super) fn run_client_deadlines(&mut self) {
        let now_secs = Hub::unix_secs();
        let c = &self.shared.config;
        let grace = c.client_expired_close_delay.as_secs();
        let sub_grace = c.client_expired_sub_close_delay.as_secs();
        while let Some((key, generation)) = self.deadlines.pop_due(self.now, now_secs) {
            let Some(conn) = self.table.get_mut(key) else {
                continue;
            };
            if conn.generation != generation {
                continue;
            }
            let Some(Attachment::Client(client)) = &mut conn.attachment else {
                continue;
            };
            if !client.connected {
                conn.session
                    .close(CloseCode(3502), DisconnectCode::Stale.text(), self.now);
                self.settle(key);
                continue;
            }
            if client.expires_at != 0 && now_secs >= client.expires_at + grace {
                conn.session
                    .close(CloseCode(3005), DisconnectCode::Expired.text(), self.now);
                self.settle(key);
                continue;
            }
            let expired: Vec<u64> = client
                .subs
                .iter()
                .filter(|s| s.expires_at != 0 && now_secs >= s.expires_at + sub_grace)
                .map(|s| s.room_id)
                .collect();
            for room_id in expired {
                self.end_subscription(key, room_id, UnsubscribeCode::Expired);
            }
            if let Some(Some(Attachment::Client(client))) =
                self.table.get_mut(key).map(|c| &mut c.attachment)
            {
                client.queued_deadline = 0;
                self.deadlines.track(key, generation, client);
            }
        }
    }
}

/// One text frame holding `json`.
pub(super) fn frame_of(json: &[u8]) -> Vec<u8> {
    let header = encode_header(true, OpCode::Text, json.len(), None);
    let mut v = Vec::with_capacity(header.as_bytes().len() + json.len());
    v.extend_from_slice(header.as_bytes());
    v.extend_from_slice(json);
    v
}
