//! A protocol client (`/connection/websocket`): its identity and
//! subscriptions, and what each command of the Centrifugo client protocol
//! does to them. No IO: a frame of commands comes in, replies are appended
//! to a buffer, and a [`DisconnectCode`] says when the connection must end.
//!
//! Subscriptions are the connection's places in rooms ([`LocalRooms`]):
//! a channel and a room are the same thing, so raw members and protocol
//! subscribers see each other's messages.

use super::awaiting::Awaiting;
use super::directory::RoomDirectory;
use super::local_rooms::LocalRooms;
use super::push;
use crate::config::ChannelOptions;
use crate::metrics::WorkerMetrics;
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

mod channels;
mod remote;
pub use channels::Joined;
use channels::{encode_presence, Read};
pub use remote::{send_read, Completion, ConnectReply};

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
    /// Made by the server from the connection token's `channels`: the SDKs
    /// cannot resubscribe it on their own, only by reconnecting.
    pub server_side: bool,
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
    /// `chan_info` of the subscriptions whose token carried one (rare, so
    /// not a field of every subscription: 24 bytes each at 10 per
    /// connection matter).
    chan_infos: Vec<(u64, Arc<[u8]>)>,
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
    pub metrics: &'a WorkerMetrics,
    /// Commands waiting for Redis (`broker = "redis"`).
    pub awaiting: &'a mut Awaiting,
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

    /// The `chan_info` of the subscription to `room_id`.
    fn chan_info(&self, room_id: u64) -> Option<&Arc<[u8]>> {
        self.chan_infos
            .iter()
            .find(|(r, _)| *r == room_id)
            .map(|(_, c)| c)
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
            if !self.connected
                && !matches!(command.body, CommandBody::Connect(_) | CommandBody::Pong)
            {
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
        if self.subs.capacity() > self.subs.len() + 2 {
            // Subscriptions come in bursts and then stay: keep no slack.
            self.subs.shrink_to_fit();
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
                if self.publish(id, &req.channel, data.get().as_bytes(), x)? {
                    separate(out);
                    encode_empty_reply(id, EmptyResult::Publish, out);
                }
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
                if x.rooms.broker().is_some() {
                    return self.history_remote(id, &req.channel, since, limit, req.reverse, x);
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
                if x.rooms.broker().is_some() {
                    return self.presence_remote(id, &req.channel, false, x);
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
                if x.rooms.broker().is_some() {
                    return self.presence_remote(id, &req.channel, true, x);
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
        .map_err(|e| {
            x.metrics.pubsub_connect_refusals.inc();
            refusal(&e)
        })?;
        x.metrics.pubsub_connects.inc();
        self.id = x.hub.new_client_id();
        self.user = claims.user.as_str().into();
        self.conn_info = claims.info.map(Into::into);
        self.info = Some(self.info_json(None));
        self.expires_at = claims.expires_at.unwrap_or(0);
        self.connected = true;
        x.hub.count_client(&self.user, true);
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
                if let Some(s) = self.subs.last_mut() {
                    s.server_side = true;
                }
                subs.push((channel.as_str(), r));
            }
        }
        if subs.iter().any(|(_, r)| r.is_pending()) {
            // Server-side subscriptions to channels with history in
            // Redis: the reply waits for their reads.
            let reply = ConnectReply {
                id,
                client: self.id.clone(),
                expires: self.expires_at != 0,
                ttl: ttl(self.expires_at, x.now_secs),
                ping: x.ping_secs,
                subs: subs.into_iter().map(|(c, r)| (c.to_string(), r)).collect(),
            };
            return self.defer_connect(reply, x, out);
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
}

#[cfg(test)]
mod tests;
