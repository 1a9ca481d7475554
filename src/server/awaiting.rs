//! Protocol commands waiting for Redis (`broker = "redis"`): a publish into
//! a channel with history (answered once Redis kept it), a subscription to
//! one (answered from its history read), `history`, `presence` and
//! `presence_stats`. The command is sent to the bridge at once and the
//! client gets its reply when the bridge answers: other commands and
//! deliveries go on meanwhile (replies are matched by id, as the protocol
//! allows). Every request gets exactly one answer from the bridge within
//! `redis_publish_timeout`, so what waits here is bounded by the bridge's
//! outbox; a subscription waiting for its channel to go live is bounded by
//! the client's channel limit.

use crate::broker::{BrokerError, Reply, Token};
use crate::pubsub::history::StreamPosition;
use crate::server::api_redis::{PendingApi, Slot};
use std::collections::HashMap;
use std::sync::Arc;

/// One command waiting for the bridge.
#[derive(Debug)]
pub struct Call {
    /// The connection's slab key, and its client's id (a key is reused
    /// by later connections; the id is not).
    pub key: usize,
    pub client: Arc<str>,
    /// The command's id, for the reply.
    pub command: u32,
    pub what: What,
}

/// What the answer completes.
#[derive(Debug)]
pub enum What {
    Publish,
    History {
        since: Option<StreamPosition>,
        limit: Option<usize>,
        reverse: bool,
    },
    Presence,
    PresenceStats,
    Subscribe(Box<PendingSubscribe>),
}

/// A subscription waiting for its history read.
#[derive(Debug)]
pub struct PendingSubscribe {
    pub channel: String,
    pub room_id: u64,
    /// Names this subscription in its room (see `LocalRooms::activate`).
    pub pending: u32,
    /// The reply, but for the stream's position and recovery.
    pub joined: crate::server::client::Joined,
    /// The client's position, when it recovers.
    pub since: Option<StreamPosition>,
    /// Part of a `connect` reply (server-side subscription): answered
    /// through that connect's own call.
    pub connect: Option<Token>,
    /// What it waits for now: its presence entry, then its history read.
    pub stage: Stage,
}

/// The steps of a pending subscription, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Joining the channel's presence (answered: visible on every node).
    Presence,
    /// Reading the stream's position (and what it missed).
    Read,
}

/// A `connect` whose server-side subscriptions wait for their reads.
#[derive(Debug)]
pub struct PendingConnect {
    pub reply: crate::server::client::ConnectReply,
    /// Subscriptions still unanswered.
    pub waiting: usize,
    /// Push frames their subscriptions waited for, sent after the reply.
    pub frames: Vec<u8>,
}

/// The commands of one worker's clients waiting for the bridge.
#[derive(Debug, Default)]
pub struct Awaiting {
    calls: HashMap<Token, Call>,
    /// Subscriptions whose history read waits until this worker's
    /// subscription to the channel is live (by channel).
    parked: HashMap<Box<str>, Vec<Call>>,
    /// Connect replies waiting for their subscriptions, by a local id.
    connects: HashMap<Token, PendingConnect>,
    next_connect: Token,
    /// Server API requests waiting for their reads (`api_redis.rs`), by a
    /// local id, and the reads' tokens (request id, slot).
    apis: HashMap<u64, PendingApi>,
    api_reads: HashMap<Token, (u64, usize)>,
    next_api: u64,
}

impl Awaiting {
    /// Waits for the answer to `token`.
    pub fn insert(&mut self, token: Token, call: Call) {
        self.calls.insert(token, call);
    }

    /// The call the answer to `token` completes, if one waits for it (the
    /// others are fire-and-forget: presence updates, raw publications).
    pub fn take(&mut self, token: Token) -> Option<Call> {
        self.calls.remove(&token)
    }

    /// Waits until `channel` is live on this worker.
    pub fn park(&mut self, channel: &str, call: Call) {
        self.parked.entry(channel.into()).or_default().push(call);
    }

    /// The calls waiting for `channel` to be live.
    pub fn unpark(&mut self, channel: &str) -> Vec<Call> {
        self.parked.remove(channel).unwrap_or_default()
    }

    /// Takes the parked calls of channels `down` says are unreachable
    /// (their shard lost Redis while they waited: they fail at once
    /// rather than wait for the reconnection).
    pub fn unpark_where(&mut self, down: impl Fn(&str) -> bool) -> Vec<Call> {
        if self.parked.is_empty() {
            return Vec::new();
        }
        let gone: Vec<Box<str>> = self.parked.keys().filter(|c| down(c)).cloned().collect();
        gone.into_iter()
            .flat_map(|c| self.parked.remove(&c).unwrap_or_default())
            .collect()
    }

    /// Keeps a connect reply until its `waiting` subscriptions are
    /// answered; returns the id they refer to.
    pub fn hold_connect(&mut self, c: PendingConnect) -> Token {
        self.next_connect = self.next_connect.wrapping_add(1);
        self.connects.insert(self.next_connect, c);
        self.next_connect
    }

    pub fn connect_mut(&mut self, id: Token) -> Option<&mut PendingConnect> {
        self.connects.get_mut(&id)
    }

    pub fn take_connect(&mut self, id: Token) -> Option<PendingConnect> {
        self.connects.remove(&id)
    }

    /// Keeps an API request until its reads (`tokens`: token, slot) are
    /// answered.
    pub fn hold_api(&mut self, p: PendingApi, tokens: &[(Token, usize)]) {
        self.next_api = self.next_api.wrapping_add(1);
        for &(token, slot) in tokens {
            self.api_reads.insert(token, (self.next_api, slot));
        }
        self.apis.insert(self.next_api, p);
    }

    /// Records the answer to an API read: the request once it has all.
    /// `Err(answer)`: `token` is not an API read.
    pub fn answer_api(
        &mut self,
        token: Token,
        answer: Result<Reply, BrokerError>,
    ) -> Result<Option<PendingApi>, Result<Reply, BrokerError>> {
        let Some((id, slot)) = self.api_reads.remove(&token) else {
            return Err(answer);
        };
        let Some(p) = self.apis.get_mut(&id) else {
            return Ok(None);
        };
        if let Some(s) = p.slots.get_mut(slot) {
            *s = Slot::Answered(answer);
        }
        p.waiting = p.waiting.saturating_sub(1);
        if p.waiting > 0 {
            return Ok(None);
        }
        Ok(self.apis.remove(&id))
    }

    /// Calls waiting (for metrics and tests).
    pub fn len(&self) -> usize {
        self.calls.len() + self.parked.values().map(Vec::len).sum::<usize>() + self.apis.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
