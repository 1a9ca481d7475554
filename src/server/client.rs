//! A protocol client (`/connection/websocket`): its identity and
//! subscriptions, and what each command of the Centrifugo client protocol
//! does to them. No IO: a frame of commands comes in, replies are appended
//! to a buffer, and a [`DisconnectCode`] says when the connection must end.
//!
//! Subscriptions are the connection's places in rooms ([`LocalRooms`]):
//! a channel and a room are the same thing, so raw members and protocol
//! subscribers see each other's messages.

use super::directory::RoomDirectory;
use super::local_rooms::LocalRooms;
use super::push;
use crate::config::ChannelOptions;
use crate::pubsub::auth::{Refusal, TokenError};
use crate::pubsub::channel::ChannelName;
use crate::pubsub::history::{HistoryError, Publication, StreamPosition};
use crate::pubsub::hub::Hub;
use crate::pubsub::presence::{ClientInfo, PresenceError};
use crate::pubsub::proto::{
    self, encode_connect_reply, encode_empty_reply, encode_error_reply, encode_history_reply,
    encode_presence_stats_reply, encode_refresh_reply, encode_sub_refresh_reply,
    encode_subscribe_reply, encode_unsubscribe_push, separate, Command, CommandBody,
    ConnectRequest, ConnectResult, DisconnectCode, EmptyResult, ErrorCode, HistoryResult,
    RefreshResult, SubscribeRequest, SubscribeResult, UnsubscribeCode,
};
use std::sync::Arc;

/// The server's version in connect replies.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// One subscription of a client.
#[derive(Debug)]
pub struct Subscription {
    pub room_id: u64,
    /// Index in the room's subscriber list on this worker.
    pub slot: u32,
    /// Subscription token expiry (unix seconds); 0 = never.
    pub expires_at: u64,
    /// Joined the channel's presence.
    pub presence: bool,
    /// Sends join/leave pushes for this subscriber.
    pub join_leave: bool,
    /// `chan_info` from the subscription token.
    pub chan_info: Option<Arc<[u8]>>,
}

/// A protocol client's state; boxed in its connection.
#[derive(Debug, Default)]
pub struct Client {
    pub id: Arc<str>,
    pub user: Arc<str>,
    pub conn_info: Option<Arc<[u8]>>,
    /// The `ClientInfo` JSON its publications and join/leave carry.
    info: Option<Arc<[u8]>>,
    pub connected: bool,
    /// Connection token expiry (unix seconds); 0 = never.
    pub expires_at: u64,
    pub subs: Vec<Subscription>,
    /// Published since its last read: paused while a destination is full.
    pub publisher: bool,
    /// The expiry deadline queued in `ClientDeadlines` (0 = none).
    pub queued_deadline: u64,
}

/// What a command needs from the worker.
pub struct Exec<'a> {
    pub hub: &'a Hub,
    pub rooms: &'a mut LocalRooms,
    pub directory: &'a RoomDirectory,
    /// The connection's slab key.
    pub key: usize,
    /// Server ping interval (seconds) announced in the connect reply.
    pub ping_secs: u32,
    /// Wall-clock seconds (token expiry).
    pub now_secs: u64,
}

/// A command refused with a reply error, or the connection ended.
enum Fail {
    Reply(ErrorCode),
    Disconnect(DisconnectCode),
}

impl From<ErrorCode> for Fail {
    fn from(e: ErrorCode) -> Fail {
        Fail::Reply(e)
    }
}

fn refusal(e: &TokenError) -> Fail {
    match e.protocol_refusal() {
        Refusal::Error(code, _) => {
            Fail::Reply(ErrorCode::from_code(code).unwrap_or(ErrorCode::PermissionDenied))
        }
        Refusal::Disconnect(code, _) => Fail::Disconnect(
            DisconnectCode::from_code(code).unwrap_or(DisconnectCode::InvalidToken),
        ),
    }
}

fn ttl(expires_at: u64, now: u64) -> u32 {
    expires_at.saturating_sub(now).min(u64::from(u32::MAX)) as u32
}

impl Client {
    pub fn new() -> Client {
        Client::default()
    }

    /// The subscription to `room_id`, if any.
    pub fn sub_mut(&mut self, room_id: u64) -> Option<&mut Subscription> {
        self.subs.iter_mut().find(|s| s.room_id == room_id)
    }

    /// This client as presence and join/leave see it.
    fn presence_info(&self, chan_info: Option<&Arc<[u8]>>) -> ClientInfo {
        ClientInfo {
            client: self.id.clone(),
            user: self.user.clone(),
            conn_info: self.conn_info.clone(),
            chan_info: chan_info.cloned(),
        }
    }

    /// The `ClientInfo` JSON for a channel (with its `chan_info`).
    fn info_json(&self, chan_info: Option<&Arc<[u8]>>) -> Arc<[u8]> {
        match (chan_info, &self.info) {
            (None, Some(info)) => info.clone(),
            _ => push::client_info(
                &self.user,
                &self.id,
                self.conn_info.as_deref(),
                chan_info.map(|c| &c[..]),
            )
            .into(),
        }
    }

    /// Executes every command of one frame, appending replies to `out`.
    /// `Err`: disconnect with this code (replies so far are still sent).
    pub fn handle_frame(
        &mut self,
        frame: &[u8],
        x: &mut Exec<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), DisconnectCode> {
        let commands = proto::parse_frame(frame, &x.hub.limits).map_err(|e| e.disconnect())?;
        for command in commands {
            let command = command.map_err(|e| e.disconnect())?;
            if !self.connected && !matches!(command.body, CommandBody::Connect(_)) {
                return Err(DisconnectCode::BadRequest);
            }
            let id = command.id;
            match self.execute(command, x, out) {
                Ok(()) => {}
                Err(Fail::Reply(code)) => {
                    separate(out);
                    encode_error_reply(id, code, out);
                }
                Err(Fail::Disconnect(code)) => return Err(code),
            }
        }
        Ok(())
    }

    fn execute(&mut self, c: Command<'_>, x: &mut Exec<'_>, out: &mut Vec<u8>) -> Result<(), Fail> {
        let id = c.id;
        match c.body {
            CommandBody::Connect(req) => self.connect(id, &req, x, out),
            CommandBody::Subscribe(req) => self.subscribe(id, &req, x, out),
            CommandBody::Unsubscribe(req) => {
                if let Some(room_id) = x.rooms.id_of(&req.channel) {
                    self.unsubscribe(room_id, x, None);
                }
                separate(out);
                encode_empty_reply(id, EmptyResult::Unsubscribe, out);
                Ok(())
            }
            CommandBody::Publish(req) => {
                let data = req.data.ok_or(ErrorCode::BadRequest)?;
                self.publish(&req.channel, data.get().as_bytes(), x)?;
                separate(out);
                encode_empty_reply(id, EmptyResult::Publish, out);
                Ok(())
            }
            CommandBody::History(req) => {
                let opts = self.readable(&req.channel, x, Read::History)?;
                let since = req.since.as_ref().map(|s| StreamPosition {
                    offset: s.offset,
                    epoch: s.epoch.as_ref().into(),
                });
                let limit = usize::try_from(req.limit).ok();
                if !opts.has_history() {
                    return Err(ErrorCode::NotAvailable.into());
                }
                let now = x.hub.now_ms();
                let r = x
                    .hub
                    .history
                    .history(&req.channel, since.as_ref(), limit, req.reverse, now)
                    .map_err(|e| match e {
                        HistoryError::BadRequest => ErrorCode::BadRequest,
                        HistoryError::UnrecoverablePosition { .. } => {
                            ErrorCode::UnrecoverablePosition
                        }
                    })?;
                separate(out);
                encode_history_reply(
                    id,
                    &HistoryResult {
                        publications: &r.publications,
                        epoch: r.position.epoch.as_str(),
                        offset: r.position.offset,
                    },
                    out,
                );
                Ok(())
            }
            CommandBody::Presence(req) => {
                let opts = self.readable(&req.channel, x, Read::Presence)?;
                if !opts.presence {
                    return Err(ErrorCode::NotAvailable.into());
                }
                let clients = x.hub.presence.presence(&req.channel);
                separate(out);
                encode_presence(id, &clients, out);
                Ok(())
            }
            CommandBody::PresenceStats(req) => {
                let opts = self.readable(&req.channel, x, Read::Presence)?;
                if !opts.presence {
                    return Err(ErrorCode::NotAvailable.into());
                }
                let s = x.hub.presence.stats(&req.channel);
                separate(out);
                encode_presence_stats_reply(id, s.num_clients as u32, s.num_users as u32, out);
                Ok(())
            }
            CommandBody::Refresh(req) => {
                let claims = x
                    .hub
                    .verifier
                    .verify_refresh(&req.token, &self.user, x.now_secs)
                    .map_err(|e| refusal(&e))?;
                self.expires_at = claims.expires_at.unwrap_or(0);
                if claims.info.is_some() {
                    self.conn_info = claims.info.map(Into::into);
                    self.info = Some(self.info_json(None));
                }
                separate(out);
                encode_refresh_reply(
                    id,
                    &RefreshResult {
                        client: &self.id,
                        version: VERSION,
                        expires: self.expires_at != 0,
                        ttl: ttl(self.expires_at, x.now_secs),
                    },
                    out,
                );
                Ok(())
            }
            CommandBody::SubRefresh(req) => {
                let room_id = x.rooms.id_of(&req.channel);
                let claims = x
                    .hub
                    .verifier
                    .verify_sub_refresh(&req.token, &self.user, &self.id, &req.channel, x.now_secs)
                    .map_err(|e| refusal(&e))?;
                let sub = room_id
                    .and_then(|r| self.sub_mut(r))
                    .ok_or(ErrorCode::BadRequest)?;
                sub.expires_at = claims.expires_at.unwrap_or(0);
                let exp = sub.expires_at;
                separate(out);
                encode_sub_refresh_reply(id, exp != 0, ttl(exp, x.now_secs), out);
                Ok(())
            }
            CommandBody::Rpc(_) => Err(ErrorCode::NotAvailable.into()),
            CommandBody::Send(_) => Err(Fail::Disconnect(DisconnectCode::NotAvailable)),
            CommandBody::Ping => {
                separate(out);
                encode_empty_reply(id, EmptyResult::Ping, out);
                Ok(())
            }
            CommandBody::Pong => Ok(()),
        }
    }

    fn connect(
        &mut self,
        id: u32,
        req: &ConnectRequest<'_>,
        x: &mut Exec<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), Fail> {
        if self.connected {
            return Err(Fail::Disconnect(DisconnectCode::BadRequest));
        }
        let v = &x.hub.verifier;
        let claims = if req.token.is_empty() {
            v.connect_without_token()
        } else {
            v.verify_connect(&req.token, x.now_secs)
        }
        .map_err(|e| refusal(&e))?;
        self.id = x.hub.new_client_id();
        self.user = claims.user.as_str().into();
        self.conn_info = claims.info.map(Into::into);
        self.info = Some(self.info_json(None));
        self.expires_at = claims.expires_at.unwrap_or(0);
        self.connected = true;
        // Server-side subscriptions from the token's `channels`, recovered
        // with the positions the client sent in `subs` if any.
        let mut subs = Vec::new();
        let mut results = Vec::new();
        for channel in &claims.channels {
            let asked = req.subs.get(channel.as_str());
            let sreq = SubscribeRequest {
                channel: channel.as_str().into(),
                recover: asked.is_some_and(|s| s.recover),
                epoch: asked.map(|s| s.epoch.clone()).unwrap_or_default(),
                offset: asked.map_or(0, |s| s.offset),
                ..SubscribeRequest::default()
            };
            if let Ok(r) = self.join_channel(&sreq, None, x) {
                subs.push((channel.as_str(), r));
            }
        }
        for (channel, r) in &subs {
            results.push((*channel, r.result()));
        }
        separate(out);
        encode_connect_reply(
            id,
            &ConnectResult {
                client: &self.id,
                version: VERSION,
                expires: self.expires_at != 0,
                ttl: ttl(self.expires_at, x.now_secs),
                data: None,
                subs: &results,
                ping: x.ping_secs,
                pong: x.ping_secs > 0,
            },
            out,
        );
        Ok(())
    }

    fn subscribe(
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
            } else if name.is_user_limited() {
                opts.allow_user_limited_channels && name.allows_user(&self.user)
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
        separate(out);
        encode_subscribe_reply(id, &joined.result(), out);
        Ok(())
    }

    /// Subscribes (permission already checked): room, presence, join push,
    /// then the history read that positions the subscriber.
    fn join_channel(
        &mut self,
        req: &SubscribeRequest<'_>,
        claims: Option<crate::pubsub::auth::SubscribeClaims>,
        x: &mut Exec<'_>,
    ) -> Result<Joined, Fail> {
        let channel: &str = &req.channel;
        let opts = x.hub.options(channel)?;
        if x.rooms.id_of(channel).is_some_and(|r| self.subs.iter().any(|s| s.room_id == r)) {
            return Err(ErrorCode::AlreadySubscribed.into());
        }
        if self.subs.len() >= x.hub.client_channel_limit {
            return Err(ErrorCode::LimitExceeded.into());
        }
        let chan_info: Option<Arc<[u8]>> =
            claims.as_ref().and_then(|c| c.info.clone()).map(Into::into);
        if opts.presence {
            x.hub
                .presence
                .join(channel, self.presence_info(chan_info.as_ref()), x.hub.now_ms())
                .map_err(|e| match e {
                    PresenceError::ChannelFull | PresenceError::GlobalFull => {
                        ErrorCode::LimitExceeded
                    }
                })?;
        }
        let (room_id, slot) = match x.rooms.subscribe(x.directory, channel, opts.clone(), x.key) {
            Ok(r) => r,
            Err(_) => {
                if opts.presence {
                    x.hub.presence.leave(channel, &self.id);
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
            chan_info,
        });
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
        };
        if opts.has_history() {
            joined.recoverable = opts.force_recovery || req.recoverable || req.recover;
            joined.positioned = joined.recoverable || opts.force_positioning || req.positioned;
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
            self.leave_effects(&name, &sub, x.hub, x.rooms);
            if let Some((code, out)) = push {
                separate(out);
                encode_unsubscribe_push(&name, code, out);
            }
        }
        x.rooms.unsubscribe_later(room_id, sub.slot);
    }

    /// Presence leave and leave push of one subscription.
    pub fn leave_effects(&self, channel: &str, sub: &Subscription, hub: &Hub, rooms: &mut LocalRooms) {
        if sub.presence {
            hub.presence.leave(channel, &self.id);
        }
        if sub.join_leave {
            rooms.join_leave(sub.room_id, false, self.info_json(sub.chan_info.as_ref()));
        }
    }

    fn publish(&mut self, channel: &str, data: &[u8], x: &mut Exec<'_>) -> Result<(), Fail> {
        let name =
            ChannelName::parse(channel, x.hub.max_channel_bytes).map_err(|e| e.reply_error())?;
        let opts = x.hub.options_of_namespace(name.namespace())?;
        let subscribed = x
            .rooms
            .id_of(channel)
            .is_some_and(|r| self.subs.iter().any(|s| s.room_id == r));
        let allowed = (opts.allow_publish_for_client
            || (opts.allow_publish_for_subscriber && subscribed))
            && (!self.user.is_empty() || opts.allow_publish_for_anonymous || subscribed);
        if !allowed {
            return Err(ErrorCode::PermissionDenied.into());
        }
        let room_id = x
            .rooms
            .ensure(x.directory, channel, opts)
            .map_err(|_| ErrorCode::LimitExceeded)?;
        let info = self.subs.iter().find(|s| s.room_id == room_id).map_or_else(
            || self.info_json(None),
            |s| self.info_json(s.chan_info.as_ref()),
        );
        x.rooms.publish_json(room_id, data, Some(info));
        self.publisher = true;
        Ok(())
    }

    /// Checks a history or presence read: the channel exists and the
    /// client may read it.
    fn readable(&self, channel: &str, x: &Exec<'_>, what: Read) -> Result<Arc<ChannelOptions>, Fail> {
        let opts = x.hub.options(channel)?;
        let subscribed = x
            .rooms
            .id_of(channel)
            .is_some_and(|r| self.subs.iter().any(|s| s.room_id == r));
        let (for_sub, for_client) = match what {
            Read::History => (opts.allow_history_for_subscriber, opts.allow_history_for_client),
            Read::Presence => (opts.allow_presence_for_subscriber, opts.allow_presence_for_client),
        };
        if for_client || (for_sub && subscribed) {
            Ok(opts)
        } else {
            Err(ErrorCode::PermissionDenied.into())
        }
    }
}

#[derive(Clone, Copy)]
enum Read {
    History,
    Presence,
}

/// A subscription's answer.
struct Joined {
    expires_at: u64,
    ttl: u32,
    recoverable: bool,
    positioned: bool,
    was_recovering: bool,
    recovered: bool,
    epoch: String,
    offset: u64,
    publications: Vec<Publication>,
    data: Option<Vec<u8>>,
}

impl Joined {
    fn result(&self) -> SubscribeResult<'_, Publication> {
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

fn encode_presence(id: u32, clients: &[ClientInfo], out: &mut Vec<u8>) {
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
