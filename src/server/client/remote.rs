//! A protocol client's commands with `broker = "redis"` where Redis holds
//! the answer: publishing into a channel with history, subscribing to one
//! (its position and recovery come from the channel's stream in Redis),
//! `history`, presence and `presence_stats` (shared by every node). Each
//! is sent to the bridge at once and answered in [`Client::complete`] when
//! the bridge answers (see `server::awaiting`); a request the bridge
//! refuses at once is answered at once with error 100 (temporary), as a
//! refused publish already is.

use super::*;
use crate::broker::{BrokerError, Kind, PresenceEntry, Reply, Token};
use crate::server::awaiting::{Call, PendingConnect, PendingSubscribe, Stage, What};
use crate::server::local_rooms::publication_of;

/// A `connect` reply whose server-side subscriptions wait for Redis.
#[derive(Debug)]
pub struct ConnectReply {
    pub id: u32,
    pub client: Arc<str>,
    pub expires: bool,
    pub ttl: u32,
    pub ping: u32,
    pub subs: Vec<(String, Joined)>,
}

impl ConnectReply {
    fn encode(&self, out: &mut Vec<u8>) {
        let results: Vec<(&str, SubscribeResult<'_, Publication>)> = self
            .subs
            .iter()
            .map(|(c, j)| (c.as_str(), j.result()))
            .collect();
        separate(out);
        encode_connect_reply(
            self.id,
            &ConnectResult {
                client: &self.client,
                version: VERSION,
                expires: self.expires,
                ttl: self.ttl,
                data: None,
                subs: &results,
                ping: self.ping,
                pong: self.ping > 0,
            },
            out,
        );
    }
}

/// What an answer from the bridge produced for the client.
#[derive(Debug, Default)]
pub struct Completion {
    /// Reply lines (JSON), one text frame.
    pub json: Vec<u8>,
    /// Push frames to send after it (publications a subscriber waited
    /// for), already framed.
    pub frames: Vec<u8>,
}

impl Client {
    fn call(&self, command: u32, what: What, x: &Exec<'_>) -> Call {
        Call {
            key: x.key,
            client: self.id.clone(),
            command,
            what,
        }
    }

    /// Sends a request and waits for its answer; refused at once: error
    /// 100 (temporary), the protocol's answer to a broker failure.
    fn request(
        &self,
        call: Call,
        x: &mut Exec<'_>,
        send: impl FnOnce(&mut crate::broker::BrokerPort) -> Result<Token, BrokerError>,
    ) -> Result<(), Fail> {
        let port = x.rooms.broker_mut().ok_or(ErrorCode::Internal)?;
        let token = send(port).map_err(|_| ErrorCode::Internal)?;
        x.awaiting.insert(token, call);
        Ok(())
    }

    pub(super) fn publish_remote(
        &mut self,
        id: u32,
        room_id: u64,
        data: &[u8],
        info: Arc<[u8]>,
        namespace: &str,
        x: &mut Exec<'_>,
    ) -> Result<bool, Fail> {
        let token = match x
            .rooms
            .publish_remote(room_id, Kind::Publication, data, Some(&info))
        {
            Ok(t) => t,
            Err(_) => {
                x.rooms.discard_if_unused(room_id, x.directory);
                return Err(ErrorCode::Internal.into());
            }
        };
        x.rooms.discard_if_unused(room_id, x.directory);
        x.metrics.namespaces[x.hub.namespace_slot(namespace)]
            .publications
            .inc();
        let call = self.call(id, What::Publish, x);
        x.awaiting.insert(token, call);
        Ok(false)
    }

    pub(super) fn history_remote(
        &mut self,
        id: u32,
        channel: &str,
        since: Option<StreamPosition>,
        limit: Option<usize>,
        reverse: bool,
        x: &mut Exec<'_>,
    ) -> Result<(), Fail> {
        if reverse && since.as_ref().is_some_and(|s| s.offset == 0) {
            return Err(ErrorCode::BadRequest.into());
        }
        // A reverse read takes the (capped) stream whole and turns it here.
        let (from, n) = match (&since, reverse) {
            (Some(s), false) => (s.offset, limit.map_or(-1, |l| l as i64)),
            (None, false) => (0, limit.map_or(-1, |l| l as i64)),
            (_, true) => (0, -1),
        };
        let ttl = x.hub.options(channel)?.history_ttl;
        let call = self.call(
            id,
            What::History {
                since,
                limit,
                reverse,
            },
            x,
        );
        self.request(call, x, |port| port.history(channel, from, n, ttl))
    }

    pub(super) fn presence_remote(
        &mut self,
        id: u32,
        channel: &str,
        stats: bool,
        x: &mut Exec<'_>,
    ) -> Result<(), Fail> {
        let what = if stats {
            What::PresenceStats
        } else {
            What::Presence
        };
        let call = self.call(id, what, x);
        self.request(call, x, |port| port.presence(channel))
    }

    fn presence_entry(&self, chan_info: Option<&Arc<[u8]>>) -> PresenceEntry {
        PresenceEntry {
            client: self.id.to_string(),
            user: self.user.to_string(),
            conn_info: self.conn_info.as_deref().map(<[u8]>::to_vec),
            chan_info: chan_info.map(|c| c.to_vec()),
        }
    }

    /// Refreshes this client's presence entries in Redis; `false` if the
    /// bridge refused one (down or full: try again later).
    pub fn refresh_presence(&self, rooms: &mut LocalRooms) -> bool {
        for sub in self.subs.iter().filter(|s| s.presence) {
            let Some(name) = rooms.name_of(sub.room_id).map(str::to_owned) else {
                continue;
            };
            let entry = self.presence_entry(self.chan_info(sub.room_id));
            let Some(port) = rooms.broker_mut() else {
                return true;
            };
            if port.presence_add(&name, &entry).is_err() {
                return false;
            }
        }
        true
    }

    /// Leaves a channel's presence, in Redis or in this node's hub.
    pub(super) fn presence_leave(&self, channel: &str, hub: &Hub, rooms: &mut LocalRooms) {
        match rooms.broker_mut() {
            Some(port) => {
                let _ = port.presence_remove(channel, &self.id);
            }
            None => {
                hub.presence.leave(channel, &self.id);
            }
        }
    }

    /// Waits for a pending subscription's history read: sent now if the
    /// channel is live on this worker, else when it is.
    pub(super) fn await_subscription(
        &mut self,
        id: u32,
        channel: &str,
        joined: Joined,
        connect: Option<Token>,
        x: &mut Exec<'_>,
    ) -> Result<(), Fail> {
        let Some(slot) = joined.pending else {
            return Err(ErrorCode::Internal.into());
        };
        let mut joined = joined;
        let since = joined.since.take();
        let stage = if joined.join_presence {
            Stage::Presence
        } else {
            Stage::Read
        };
        let call = self.call(
            id,
            What::Subscribe(Box::new(PendingSubscribe {
                channel: channel.to_string(),
                room_id: slot.room_id,
                pending: slot.id,
                joined,
                since,
                connect,
                stage,
            })),
            x,
        );
        let sent = match stage {
            Stage::Presence => {
                let entry = self.presence_entry(self.chan_info(slot.room_id));
                match x
                    .rooms
                    .broker_mut()
                    .map(|p| p.presence_add(channel, &entry))
                {
                    Some(Ok(token)) => {
                        x.awaiting.insert(token, call);
                        Ok(())
                    }
                    _ => Err(()),
                }
            }
            Stage::Read if !slot.live => {
                x.awaiting.park(channel, call);
                Ok(())
            }
            Stage::Read => send_read(call, x).map_err(|_| ()),
        };
        sent.map_err(|()| {
            self.unsubscribe(slot.room_id, x, None);
            ErrorCode::Internal.into()
        })
    }

    /// Keeps a `connect` reply until its pending subscriptions are read
    /// (answered here at once if every one of them was refused at once).
    pub(super) fn defer_connect(
        &mut self,
        mut reply: ConnectReply,
        x: &mut Exec<'_>,
        out: &mut Vec<u8>,
    ) -> Result<(), Fail> {
        let (pending, done): (Vec<_>, Vec<_>) =
            reply.subs.drain(..).partition(|(_, j)| j.is_pending());
        reply.subs = done;
        let id = reply.id;
        let connect = x.awaiting.hold_connect(PendingConnect {
            reply,
            waiting: pending.len(),
            frames: Vec::new(),
        });
        for (channel, joined) in pending {
            let room_id = joined.pending.map(|p| p.room_id);
            if self
                .await_subscription(id, &channel, joined, Some(connect), x)
                .is_err()
            {
                // Refused at once: left out of the reply.
                if let Some(r) = room_id {
                    self.unsubscribe(r, x, None);
                }
                if let Some(c) = x.awaiting.connect_mut(connect) {
                    c.waiting -= 1;
                }
            }
        }
        if x.awaiting
            .connect_mut(connect)
            .is_some_and(|c| c.waiting == 0)
        {
            if let Some(c) = x.awaiting.take_connect(connect) {
                c.reply.encode(out);
            }
        }
        Ok(())
    }

    /// Completes a call with the bridge's answer.
    pub fn complete(
        &mut self,
        call: Call,
        answer: Result<Reply, BrokerError>,
        x: &mut Exec<'_>,
    ) -> Completion {
        let mut c = Completion::default();
        let out = &mut c.json;
        let id = call.command;
        let fail = |code: ErrorCode, out: &mut Vec<u8>| {
            separate(out);
            encode_error_reply(id, code, out);
        };
        match (call.what, answer) {
            (What::Publish, Ok(_)) => {
                separate(out);
                encode_empty_reply(id, EmptyResult::Publish, out);
            }
            (What::Publish, Err(_)) => fail(ErrorCode::Internal, out),
            (
                What::History {
                    since,
                    limit,
                    reverse,
                },
                Ok(Reply::History(h)),
            ) => {
                if since
                    .as_ref()
                    .is_some_and(|s| !s.epoch.as_str().is_empty() && s.epoch.as_str() != h.epoch)
                {
                    fail(ErrorCode::UnrecoverablePosition, out);
                    return c;
                }
                let mut pubs: Vec<Publication> =
                    h.publications.iter().filter_map(publication_of).collect();
                if reverse {
                    if let Some(s) = &since {
                        pubs.retain(|p| p.offset < s.offset);
                    }
                    pubs.reverse();
                }
                if let Some(l) = limit {
                    pubs.truncate(l);
                }
                separate(out);
                encode_history_reply(
                    id,
                    &HistoryResult {
                        publications: &pubs,
                        epoch: &h.epoch,
                        offset: h.top,
                    },
                    out,
                );
            }
            (What::Presence, Ok(Reply::Presence(entries))) => {
                let clients: Vec<ClientInfo> = entries.into_iter().map(ClientInfo::from).collect();
                separate(out);
                encode_presence(id, &clients, out);
            }
            (What::PresenceStats, Ok(Reply::Presence(entries))) => {
                let (clients, users) = PresenceEntry::stats(&entries);
                separate(out);
                encode_presence_stats_reply(id, clients as u32, users as u32, out);
            }
            (What::Subscribe(p), answer) => self.complete_subscription(id, *p, answer, x, &mut c),
            (_, _) => fail(ErrorCode::Internal, out),
        }
        c
    }

    fn complete_subscription(
        &mut self,
        id: u32,
        p: PendingSubscribe,
        answer: Result<Reply, BrokerError>,
        x: &mut Exec<'_>,
        c: &mut Completion,
    ) {
        // Unsubscribed (or subscribed again) meanwhile: nothing to answer.
        let Some(slot) = self
            .subs
            .iter()
            .find(|s| s.room_id == p.room_id)
            .map(|s| s.slot)
        else {
            self.connect_sub_done(p.connect, &p.channel, None, x, c);
            return;
        };
        if p.stage == Stage::Presence && answer.is_ok() {
            // In presence on every node; now its position, or done.
            if p.joined.read {
                let mut p = p;
                p.stage = Stage::Read;
                let (room_id, connect, channel) = (p.room_id, p.connect, p.channel.clone());
                let call = self.call(id, What::Subscribe(Box::new(p)), x);
                let sent = if x.rooms.is_live(room_id) {
                    send_read(call, x).map_err(|_| ())
                } else {
                    x.awaiting.park(&channel, call);
                    Ok(())
                };
                if sent.is_err() {
                    self.unsubscribe(room_id, x, None);
                    if connect.is_none() {
                        separate(&mut c.json);
                        encode_error_reply(id, ErrorCode::Internal, &mut c.json);
                    }
                    self.connect_sub_done(connect, &channel, None, x, c);
                }
                return;
            }
            if !x.rooms.activate_plain(p.room_id, slot, p.pending) {
                self.connect_sub_done(p.connect, &p.channel, None, x, c);
                return;
            }
            let mut joined = p.joined;
            joined.pending = None;
            if p.connect.is_some() {
                self.connect_sub_done(p.connect, &p.channel, Some((joined, Vec::new())), x, c);
            } else {
                separate(&mut c.json);
                encode_subscribe_reply(id, &joined.result(), &mut c.json);
            }
            return;
        }
        let PendingSubscribe {
            channel,
            room_id,
            pending,
            mut joined,
            since,
            connect,
            stage: _,
        } = p;
        let h = match answer {
            Ok(Reply::History(h)) => h,
            _ => {
                self.unsubscribe(room_id, x, None);
                if connect.is_none() {
                    separate(&mut c.json);
                    encode_error_reply(id, ErrorCode::Internal, &mut c.json);
                }
                self.connect_sub_done(connect, &channel, None, x, c);
                return;
            }
        };
        let top = StreamPosition {
            offset: h.top,
            epoch: h.epoch.as_str().into(),
        };
        let Some(activation) = x.rooms.activate(room_id, slot, pending, &top) else {
            self.connect_sub_done(connect, &channel, None, x, c);
            return;
        };
        if let Some(s) = &since {
            joined.recovered = h.covers(s.offset, s.epoch.as_str());
            if s.epoch.as_str() == h.epoch {
                joined.publications = h.publications.iter().filter_map(publication_of).collect();
            }
            let ns = &x.metrics.namespaces[x.hub.channel_slot(&channel)];
            if joined.recovered {
                ns.recovered.inc();
            } else {
                ns.not_recovered.inc();
            }
        }
        joined.epoch = h.epoch;
        joined.offset = h.top;
        joined.pending = None;
        if activation.insufficient {
            x.rooms.mark_insufficient(x.key, room_id);
        }
        if connect.is_some() {
            self.connect_sub_done(connect, &channel, Some((joined, activation.frames)), x, c);
        } else {
            separate(&mut c.json);
            encode_subscribe_reply(id, &joined.result(), &mut c.json);
            c.frames = activation.frames;
        }
    }

    /// One server-side subscription of a waiting `connect` is answered
    /// (`None`: it failed and is left out); the last one sends the reply.
    fn connect_sub_done(
        &mut self,
        connect: Option<Token>,
        channel: &str,
        done: Option<(Joined, Vec<u8>)>,
        x: &mut Exec<'_>,
        c: &mut Completion,
    ) {
        let Some(cid) = connect else {
            return;
        };
        let Some(pc) = x.awaiting.connect_mut(cid) else {
            return;
        };
        pc.waiting = pc.waiting.saturating_sub(1);
        if let Some((joined, frames)) = done {
            pc.reply.subs.push((channel.to_string(), joined));
            pc.frames.extend_from_slice(&frames);
        }
        if pc.waiting == 0 {
            if let Some(pc) = x.awaiting.take_connect(cid) {
                pc.reply.encode(&mut c.json);
                c.frames = pc.frames;
            }
        }
    }
}

/// Sends a pending subscription's history read (the channel is live on
/// this worker). `Err`: refused at once.
pub fn send_read(call: Call, x: &mut Exec<'_>) -> Result<(), (Call, BrokerError)> {
    let What::Subscribe(p) = &call.what else {
        return Err((call, BrokerError::Invalid("not a subscription".into())));
    };
    let Ok(ttl) = x.hub.options(&p.channel).map(|o| o.history_ttl) else {
        return Err((call, BrokerError::Invalid("unknown namespace".into())));
    };
    let (from, limit) = match &p.since {
        Some(s) => (s.offset, -1),
        None => (0, 0),
    };
    let Some(port) = x.rooms.broker_mut() else {
        return Err((call, BrokerError::Unavailable));
    };
    match port.history(&p.channel, from, limit, ttl) {
        Ok(token) => {
            x.awaiting.insert(token, call);
            Ok(())
        }
        Err(e) => Err((call, e)),
    }
}
