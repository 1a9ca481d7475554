//! Subscriptions of a protocol client: subscribe (permissions, presence,
//! join push, the history read that positions it), unsubscribe, publish,
//! and the permission checks of reads.

use super::*;

impl Client {
    pub(super) fn subscribe(
        &mut self,
        id: u32,
        req: &SubscribeRequest<'_>,
        x: &mut Exec<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), Fail> {
        let result = self.try_subscribe(id, req, x, out);
        if let Err(fail) = &result {
            let ns = &x.metrics.namespaces[x.hub.channel_slot(&req.channel)];
            match fail {
                Fail::Reply(ErrorCode::PermissionDenied) => ns.refused_permission.inc(),
                Fail::Reply(ErrorCode::TokenExpired) | Fail::Disconnect(_) => {
                    ns.refused_token.inc()
                }
                Fail::Reply(_) => ns.refused_other.inc(),
            }
        }
        result
    }

    fn try_subscribe(
        &mut self,
        id: u32,
        req: &SubscribeRequest<'_>,
        x: &mut Exec<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), Fail> {
        let name = ChannelName::parse(&req.channel, x.hub.max_channel_bytes)
            .map_err(|e| e.reply_error())?;
        let opts = x.hub.options_of_namespace(name.namespace())?;
        let claims = if req.token.is_empty() {
            let allowed = if name.is_private() {
                false
            } else if name.is_user_limited() && opts.allow_user_limited_channels {
                name.allows_user(&self.user)
            } else {
                opts.allow_subscribe_for_client
                    && (!self.user.is_empty() || opts.allow_subscribe_for_anonymous)
            };
            if !allowed {
                return Err(ErrorCode::PermissionDenied.into());
            }
            None
        } else {
            let c = x
                .hub
                .verifier
                .verify_subscribe(&req.token, &self.user, &self.id, &req.channel, x.now_secs)
                .map_err(|e| refusal(&e))?;
            Some(c)
        };
        let joined = self.join_channel(req, claims, x)?;
        if joined.is_pending() {
            // Answered once its history read from Redis is.
            return self.await_subscription(id, &req.channel, joined, None, x);
        }
        separate(out);
        encode_subscribe_reply(id, &joined.result(), out);
        Ok(())
    }

    /// Subscribes (permission already checked): room, presence, join push,
    /// then the history read that positions the subscriber.
    pub(super) fn join_channel(
        &mut self,
        req: &SubscribeRequest<'_>,
        claims: Option<crate::pubsub::auth::SubscribeClaims>,
        x: &mut Exec<'_>,
    ) -> Result<Joined, Fail> {
        let channel: &str = &req.channel;
        let opts = x.hub.options(channel)?;
        if x.rooms
            .id_of(channel)
            .is_some_and(|r| self.subs.iter().any(|s| s.room_id == r))
        {
            return Err(ErrorCode::AlreadySubscribed.into());
        }
        if self.subs.len() >= x.hub.client_channel_limit {
            return Err(ErrorCode::LimitExceeded.into());
        }
        let chan_info: Option<Arc<[u8]>> =
            claims.as_ref().and_then(|c| c.info.clone()).map(Into::into);
        let remote = x.rooms.broker().is_some();
        if remote && (opts.has_history() || opts.presence) {
            // Its position or presence is in Redis: refused at once while
            // the channel's shard is down (error 100, temporary).
            if !x.rooms.broker().is_some_and(|b| b.is_up(channel)) {
                return Err(ErrorCode::Internal.into());
            }
        }
        if opts.presence && !remote {
            x.hub
                .presence
                .join(
                    channel,
                    self.presence_info(chan_info.as_ref()),
                    x.hub.now_ms(),
                )
                .map_err(|e| match e {
                    PresenceError::ChannelFull | PresenceError::GlobalFull => {
                        ErrorCode::LimitExceeded
                    }
                })?;
        }
        // With Redis, a subscription that needs it (presence to join, a
        // position to read) is pending until Redis answered.
        let subscribed = if remote && (opts.has_history() || opts.presence) {
            x.rooms
                .subscribe_pending(x.directory, channel, opts.clone(), x.key)
                .map(|(slot, p)| (p.room_id, slot, Some(p)))
        } else {
            x.rooms
                .subscribe(x.directory, channel, opts.clone(), x.key)
                .map(|(room, slot)| (room, slot, None))
        };
        let (room_id, slot, pending) = match subscribed {
            Ok(r) => r,
            Err(_) => {
                if opts.presence && !remote {
                    self.presence_leave(channel, x.hub, x.rooms);
                }
                return Err(ErrorCode::LimitExceeded.into());
            }
        };
        let expires_at = claims.as_ref().and_then(|c| c.expires_at).unwrap_or(0);
        if opts.join_leave {
            x.rooms
                .join_leave(room_id, true, self.info_json(chan_info.as_ref()));
        }
        self.subs.push(Subscription {
            room_id,
            slot,
            expires_at,
            presence: opts.presence,
            join_leave: opts.join_leave,
            server_side: false,
        });
        if let Some(c) = chan_info {
            self.chan_infos.push((room_id, c));
        }
        x.metrics.namespaces[x.hub.channel_slot(channel)]
            .subscribes
            .inc();
        let mut joined = Joined {
            expires_at,
            ttl: ttl(expires_at, x.now_secs),
            recoverable: false,
            positioned: false,
            was_recovering: req.recover,
            recovered: false,
            epoch: String::new(),
            offset: 0,
            publications: Vec::new(),
            data: claims.and_then(|c| c.data),
            pending: None,
            since: None,
            read: false,
            join_presence: false,
        };
        if opts.has_history() {
            joined.recoverable = opts.force_recovery || req.recoverable || req.recover;
            joined.positioned = joined.recoverable || opts.force_positioning || req.positioned;
        }
        if let Some(p) = pending {
            joined.pending = Some(p);
            joined.join_presence = opts.presence;
            joined.read = opts.has_history();
            joined.since =
                (opts.has_history() && req.recover && joined.recoverable).then(|| StreamPosition {
                    offset: req.offset,
                    epoch: req.epoch.as_ref().into(),
                });
            return Ok(joined);
        }
        if opts.has_history() {
            let now = x.hub.now_ms();
            let top = if req.recover && joined.recoverable {
                let since = StreamPosition {
                    offset: req.offset,
                    epoch: req.epoch.as_ref().into(),
                };
                let r = x.hub.history.recover(channel, &since, now, 0);
                joined.recovered = r.recovered;
                joined.publications = r.publications;
                r.position
            } else {
                // The position only (creating the stream if needed, so the
                // epoch stays valid for this client's next recovery).
                match x.hub.history.history(channel, None, Some(0), false, now) {
                    Ok(r) => r.position,
                    Err(_) => return Err(ErrorCode::Internal.into()),
                }
            };
            x.rooms.position_subscriber(room_id, slot, &top);
            if req.recover {
                let ns = &x.metrics.namespaces[x.hub.channel_slot(channel)];
                if joined.recovered {
                    ns.recovered.inc();
                } else {
                    ns.not_recovered.inc();
                }
            }
            joined.epoch = top.epoch.as_str().to_string();
            joined.offset = top.offset;
        }
        Ok(joined)
    }

    /// Ends a subscription: presence, leave push, room (the room removal
    /// is deferred while the connection is being read; see
    /// `LocalRooms::unsubscribe_later`). `push`: tell the client why.
    pub fn unsubscribe(
        &mut self,
        room_id: u64,
        x: &mut Exec<'_>,
        push: Option<(UnsubscribeCode, &mut Vec<u8>)>,
    ) {
        let Some(i) = self.subs.iter().position(|s| s.room_id == room_id) else {
            return;
        };
        let sub = self.subs.swap_remove(i);
        if let Some(name) = x.rooms.name_of(room_id).map(str::to_owned) {
            self.leave_effects(&name, &sub, x.hub, x.rooms, x.metrics);
            if let Some((code, out)) = push {
                separate(out);
                encode_unsubscribe_push(&name, code, out);
            }
        }
        x.rooms.unsubscribe_later(room_id, sub.slot);
        self.chan_infos.retain(|(r, _)| *r != room_id);
    }

    /// Presence leave and leave push of one subscription.
    pub fn leave_effects(
        &self,
        channel: &str,
        sub: &Subscription,
        hub: &Hub,
        rooms: &mut LocalRooms,
        metrics: &WorkerMetrics,
    ) {
        metrics.namespaces[hub.channel_slot(channel)]
            .unsubscribes
            .inc();
        if sub.presence {
            self.presence_leave(channel, hub, rooms);
        }
        if sub.join_leave {
            rooms.join_leave(
                sub.room_id,
                false,
                self.info_json(self.chan_info(sub.room_id)),
            );
        }
    }

    /// Publishes; `Ok(true)`: reply now, `Ok(false)`: the reply comes
    /// when Redis has kept the publication (a channel with history there).
    pub(super) fn publish(
        &mut self,
        id: u32,
        channel: &str,
        data: &[u8],
        x: &mut Exec<'_>,
    ) -> Result<bool, Fail> {
        let name =
            ChannelName::parse(channel, x.hub.max_channel_bytes).map_err(|e| e.reply_error())?;
        let opts = x.hub.options_of_namespace(name.namespace())?;
        let subscribed = x
            .rooms
            .id_of(channel)
            .is_some_and(|r| self.subs.iter().any(|s| s.room_id == r));
        let allowed = (opts.allow_publish_for_client
            || (opts.allow_publish_for_subscriber && subscribed))
            && (!self.user.is_empty() || opts.allow_publish_for_anonymous);
        if !allowed {
            return Err(ErrorCode::PermissionDenied.into());
        }
        let room_id = x
            .rooms
            .ensure(x.directory, channel, opts)
            .map_err(|_| ErrorCode::LimitExceeded)?;
        let info = self.subs.iter().find(|s| s.room_id == room_id).map_or_else(
            || self.info_json(None),
            |s| self.info_json(self.chan_info(s.room_id)),
        );
        if x.rooms.is_remote_history(room_id) {
            return self.publish_remote(id, room_id, data, info, name.namespace(), x);
        }
        // With a broker that refuses it at once (Redis down, outbox
        // full): published nowhere, and the client gets 100 "internal
        // server error" (temporary, Centrifugo's answer to a broker
        // failure) in this reply (docs/cluster.md).
        if x.rooms.publish_json(room_id, data, Some(info)).is_err() {
            x.rooms.discard_if_unused(room_id, x.directory);
            return Err(ErrorCode::Internal.into());
        }
        x.metrics.namespaces[x.hub.namespace_slot(name.namespace())]
            .publications
            .inc();
        self.publisher = true;
        Ok(true)
    }

    /// Checks a history or presence read: the channel exists and the
    /// client may read it.
    pub(super) fn readable(
        &self,
        channel: &str,
        x: &Exec<'_>,
        what: Read,
    ) -> Result<Arc<ChannelOptions>, Fail> {
        let opts = x.hub.options(channel)?;
        let subscribed = x
            .rooms
            .id_of(channel)
            .is_some_and(|r| self.subs.iter().any(|s| s.room_id == r));
        let (for_sub, for_client) = match what {
            Read::History => (
                opts.allow_history_for_subscriber,
                opts.allow_history_for_client,
            ),
            Read::Presence => (
                opts.allow_presence_for_subscriber,
                opts.allow_presence_for_client,
            ),
        };
        if for_client || (for_sub && subscribed) {
            Ok(opts)
        } else {
            Err(ErrorCode::PermissionDenied.into())
        }
    }
}

#[derive(Clone, Copy)]
pub(super) enum Read {
    History,
    Presence,
}

/// A subscription's answer.
#[derive(Debug)]
pub struct Joined {
    expires_at: u64,
    ttl: u32,
    recoverable: bool,
    positioned: bool,
    was_recovering: bool,
    pub(super) recovered: bool,
    pub(super) epoch: String,
    pub(super) offset: u64,
    pub(super) publications: Vec<Publication>,
    data: Option<Vec<u8>>,
    /// Subscribed as pending: the stream's position comes from Redis.
    pub(super) pending: Option<crate::server::local_rooms::PendingSlot>,
    /// Where it recovers from (pending only).
    pub(super) since: Option<StreamPosition>,
    /// Pending: its position is read from Redis (a channel with history).
    pub(super) read: bool,
    /// Pending: it joins the channel's presence in Redis first.
    pub(super) join_presence: bool,
}

impl Joined {
    pub(super) fn is_pending(&self) -> bool {
        self.pending.is_some()
    }

    pub(super) fn result(&self) -> SubscribeResult<'_, Publication> {
        SubscribeResult {
            expires: self.expires_at != 0,
            ttl: self.ttl,
            recoverable: self.recoverable,
            epoch: &self.epoch,
            publications: &self.publications,
            recovered: self.recovered,
            offset: self.offset,
            positioned: self.positioned,
            data: self
                .data
                .as_deref()
                .and_then(|d| serde_json::from_slice(d).ok()),
            was_recovering: self.was_recovering,
        }
    }
}

/// The `presence` reply from presence entries.
fn raw_json(b: &Option<Arc<[u8]>>) -> Option<&serde_json::value::RawValue> {
    b.as_deref().and_then(|b| serde_json::from_slice(b).ok())
}

pub(super) fn encode_presence(id: u32, clients: &[ClientInfo], out: &mut Vec<u8>) {
    let raw = raw_json;
    let list: Vec<(&str, proto::ClientInfo<'_>)> = clients
        .iter()
        .map(|c| {
            (
                &*c.client,
                proto::ClientInfo {
                    user: &c.user,
                    client: &c.client,
                    conn_info: raw(&c.conn_info),
                    chan_info: raw(&c.chan_info),
                },
            )
        })
        .collect();
    proto::encode_presence_reply(id, &list, out);
}
