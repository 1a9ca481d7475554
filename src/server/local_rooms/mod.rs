//! A worker's share of every room: who is a member here, what was
//! published this iteration, and delivering it.
//!
//! A room is also a pub/sub channel: its members are raw WebSocket members
//! (`/rooms/{name}`, they get the payload as their frame) and protocol
//! subscribers (`/connection/websocket`, they get a `pub` push).
//!
//! Messages published into a room during one loop iteration are gathered
//! into one batch. At the end of the iteration (or once a batch grows past
//! its cap) the batch is encoded once per kind of receiver (raw frames,
//! and pushes when the room has subscribers anywhere), shared with every
//! local receiver's outbound queue and handed to every other worker with
//! members: one buffer, one queue entry and one `writev` per member,
//! however many messages.
//!
//! Channels with history are sequenced by their history lock: offsets are
//! assigned and the batch is handed to every worker's inbox (this one's
//! included) under that lock, so every inbox receives the channel's
//! publications in offset order. Each worker keeps the next offset it
//! expects ([`StreamCursor`]); a publication that arrives after a hole (a
//! sender's overflow queue reordered it) or from another epoch is never
//! delivered past the hole: the subscribers here are told "insufficient
//! state" and resubscribe with recovery, as Centrifuge does.

use super::directory::{RoomDirectory, RoomShared};
use super::frame_pool::FramePool;
use super::http::MemberRole;
use super::mesh::{Mesh, MeshPort, RoomBatch, WorkerMsg};
use super::push::{self, Compressed, PushBatch, PushItem};
use super::session::Delivery;
use super::table::ConnTable;
use crate::broker::{BrokerError, BrokerMetrics, BrokerPort, Envelope, Kind};
use crate::config::ChannelOptions;
use crate::metrics::WorkerMetrics;
use crate::protocol::{encode_header, MessageKind, SharedFrame};
use crate::pubsub::history::{EpochId, Payload, StreamPosition};
use crate::pubsub::hub::Hub;
use std::collections::HashMap;
use std::sync::Arc;

mod flush;
mod remote;
pub use flush::Sequencer;
pub use remote::{publication_of, Activation, PendingSlot};

/// A batch is delivered early once it would hold more than this many bytes.
const ROOM_BATCH_BYTES: usize = 64 * 1024;

/// A raw connection's place in a room on this worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Membership {
    pub room_id: u64,
    /// Index in the room's receiver list (when it receives).
    pub slot: u32,
    pub receives: bool,
    pub publishes: bool,
    /// Epoch of the last batch this member published into.
    pub published_epoch: u32,
    /// The metrics slot of the room's namespace.
    pub ns: u8,
}

/// The key of a subscriber removed during a read (see
/// [`LocalRooms::unsubscribe_later`]).
const DEAD: usize = usize::MAX;

/// A protocol subscriber in a room's subscriber list.
struct Subscriber {
    key: usize,
    /// Publications up to this offset reached the client another way (its
    /// subscribe reply's recovery): not delivered again.
    skip_upto: u64,
    /// Non-zero while the subscription waits for its history read from
    /// Redis (`broker = "redis"`): it receives nothing yet, what arrives
    /// meanwhile is held for it (see `remote.rs`). The number names this
    /// one subscription, so a late answer never activates a newer one.
    pending: u32,
}

/// Where a worker's delivery of a channel with history stands.
#[derive(Default)]
struct StreamCursor {
    /// Next offset expected; 0 = not known yet (no subscriber here read
    /// the stream's position).
    next: u64,
    epoch: Option<EpochId>,
}

/// A worker's members of one room.
struct LocalRoom {
    shared: Arc<RoomShared>,
    /// Slab keys of raw members that receive. A member's position is
    /// stored in its membership, so leaving is O(1) (swap-remove).
    receivers: Vec<usize>,
    subscribers: Vec<Subscriber>,
    /// Members in total (raw members of any role, and subscribers).
    members: usize,
    batch: Batch,
    /// The channel's options, when its namespace is configured.
    options: Option<Arc<ChannelOptions>>,
    cursor: StreamCursor,
    /// With `broker = "redis"`, a channel with history: its stream as this
    /// worker follows it from Redis.
    remote: Option<Box<remote::RemoteStream>>,
}

impl LocalRoom {
    fn history(&self) -> Option<&Arc<ChannelOptions>> {
        self.options.as_ref().filter(|o| o.has_history())
    }
}

/// Messages published into a room during one iteration.
#[derive(Default)]
struct Batch {
    /// Raw frames of the publications, back to back.
    bytes: Vec<u8>,
    frames: Vec<BatchFrame>,
    /// Which batch this is (raw publishers remember it to skip their own).
    epoch: u32,
}

/// What a batch item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ItemKind {
    /// From a raw member or an HTTP publish: data of any kind.
    Raw,
    /// From a protocol client or the server API: data is JSON.
    Json,
    Join,
    Leave,
}

struct BatchFrame {
    /// Offset of the raw frame (its header) in `Batch::bytes`.
    head: usize,
    /// Offset of the payload in `Batch::bytes` (after the frame header).
    start: usize,
    /// Offset just past the frame in `Batch::bytes` (`start` = `end` for
    /// join and leave, which have no raw frame).
    end: usize,
    /// Slab key of the publisher (`usize::MAX`: HTTP, API, join/leave).
    publisher: usize,
    kind: ItemKind,
    /// The publisher's `ClientInfo` (client publications, join, leave).
    info: Option<Arc<[u8]>>,
}

impl BatchFrame {
    fn is_publication(&self) -> bool {
        matches!(self.kind, ItemKind::Raw | ItemKind::Json)
    }
}

/// Why a connection could not join a room here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyRooms;

pub struct LocalRooms {
    worker: usize,
    rooms: HashMap<u64, LocalRoom>,
    ids: HashMap<Box<str>, u64>,
    /// Rooms with a batch to deliver this iteration.
    pending: Vec<u64>,
    /// Rooms whose batch reached the cap while a connection was read.
    full: Vec<u64>,
    batch_epoch: u32,
    batch_cap: usize,
    frames: FramePool,
    echo_self: bool,
    /// Members over their outbound bound (with the messages they missed).
    slow: Vec<(usize, u64)>,
    /// Subscribers whose stream had a hole here (key, room): the worker
    /// unsubscribes them with "insufficient state".
    insufficient: Vec<(usize, u64)>,
    /// Subscribers removed during a read: (room, slot) of their tombstones.
    dead: Vec<(u64, u32)>,
    /// Rooms with envelopes from Redis to deliver (channels with history).
    incoming: Vec<u64>,
    /// Names the next pending subscription (never 0).
    next_pending: u32,
    /// Channels with history keep it in Redis (there is a broker).
    history_in_redis: bool,
    max_outbound_bytes: usize,
    /// With `broker = "redis"`: this worker's end of the bridge. Local
    /// publications go out through it; interest follows the rooms'
    /// first and last members here (docs/cluster.md).
    broker: Option<Box<BrokerPort>>,
}

impl LocalRooms {
    pub fn new(worker: usize, max_outbound_bytes: usize, echo_self: bool) -> LocalRooms {
        let batch_cap = ROOM_BATCH_BYTES.min(max_outbound_bytes / 4).max(1);
        LocalRooms {
            worker,
            rooms: HashMap::new(),
            ids: HashMap::new(),
            pending: Vec::new(),
            full: Vec::new(),
            batch_epoch: 0,
            batch_cap,
            frames: FramePool::new(2 * batch_cap),
            echo_self,
            slow: Vec::new(),
            insufficient: Vec::new(),
            dead: Vec::new(),
            incoming: Vec::new(),
            next_pending: 0,
            history_in_redis: false,
            max_outbound_bytes,
            broker: None,
        }
    }

    /// Connects this worker's rooms to the broker (`broker = "redis"`).
    pub fn set_broker(&mut self, port: BrokerPort) {
        self.history_in_redis = true;
        self.broker = Some(Box::new(port));
    }

    /// This worker's end of the broker, if there is one.
    pub fn broker_mut(&mut self) -> Option<&mut BrokerPort> {
        self.broker.as_deref_mut()
    }

    pub fn broker(&self) -> Option<&BrokerPort> {
        self.broker.as_deref()
    }

    /// A room got its first member here: subscribe this worker to the
    /// channel in the broker.
    fn first_member(&mut self, room_id: u64) {
        if let (Some(port), Some(room)) = (self.broker.as_deref_mut(), self.rooms.get(&room_id)) {
            if room.members == 1 {
                port.interest(&room.shared.name, true);
            }
        }
    }

    /// Publishes a local publication to the other nodes. Errors are
    /// counted (`broker_publish_errors`) and returned.
    fn send_to_broker(
        &mut self,
        room_id: u64,
        kind: Kind,
        payload: &[u8],
        info: Option<&[u8]>,
    ) -> Result<(), BrokerError> {
        let (Some(port), Some(room)) = (self.broker.as_deref_mut(), self.rooms.get(&room_id))
        else {
            return Ok(());
        };
        let env = Envelope {
            kind,
            origin: port.node(),
            channel: room.shared.name.to_string(),
            position: None,
            info: info.map(<[u8]>::to_vec),
            payload: payload.to_vec(),
        };
        port.publish(&env).map(|_| ()).inspect_err(|_| {
            BrokerMetrics::inc(&port.metrics().publish_errors);
        })
    }

    /// Removes a room [`ensure`](Self::ensure)d for a publication that
    /// was then refused (broker error): no members and nothing to deliver.
    pub fn discard_if_unused(&mut self, room_id: u64, directory: &RoomDirectory) {
        let unused = self
            .rooms
            .get(&room_id)
            .is_some_and(|r| r.members == 0 && r.batch.frames.is_empty());
        if unused {
            if let Some(room) = self.rooms.remove(&room_id) {
                self.ids.remove(&*room.shared.name);
                directory.leave(&room.shared, self.worker);
            }
        }
    }

    /// Delivers an envelope from another node to this worker's room
    /// `room_id` (and, through its batch, to every other worker with
    /// members): as a local publication, but not published again.
    pub fn deliver_envelope(&mut self, room_id: u64, env: &Envelope) {
        let info = env.info.as_deref().map(Arc::<[u8]>::from);
        match env.kind {
            Kind::RawText => self.append_raw(room_id, MessageKind::Text, &env.payload, None),
            Kind::RawBinary => self.append_raw(room_id, MessageKind::Binary, &env.payload, None),
            Kind::Publication => self.append_json(room_id, &env.payload, info),
            Kind::Join | Kind::Leave => {
                if let Some(info) = info {
                    self.append_join_leave(room_id, env.kind == Kind::Join, info);
                }
            }
        }
    }

    /// The room `name` here, created (and joined in the directory) if
    /// needed. `options` are the channel's, when its namespace is known.
    fn room(
        &mut self,
        directory: &RoomDirectory,
        name: &str,
        options: Option<Arc<ChannelOptions>>,
    ) -> Result<&mut LocalRoom, TooManyRooms> {
        let id = match self.ids.get(name) {
            Some(&id) => id,
            None => {
                let shared = directory
                    .join(name, self.worker)
                    .map_err(|_| TooManyRooms)?;
                let id = shared.id;
                self.rooms.insert(
                    id,
                    LocalRoom {
                        shared,
                        receivers: Vec::new(),
                        subscribers: Vec::new(),
                        members: 0,
                        batch: Batch::default(),
                        remote: (self.history_in_redis
                            && options.as_ref().is_some_and(|o| o.has_history()))
                        .then(Box::default),
                        options,
                        cursor: StreamCursor::default(),
                    },
                );
                self.ids.insert(name.into(), id);
                id
            }
        };
        self.rooms.get_mut(&id).ok_or(TooManyRooms)
    }

    /// Adds raw member `key` to room `name`. `None` when `max_rooms`
    /// rooms exist.
    pub fn join(
        &mut self,
        directory: &RoomDirectory,
        name: &str,
        options: Option<Arc<ChannelOptions>>,
        key: usize,
        role: MemberRole,
        ns: u8,
    ) -> Option<Membership> {
        let room = self.room(directory, name, options).ok()?;
        room.members += 1;
        let slot = if role.receives() {
            room.receivers.push(key);
            room.receivers.len() - 1
        } else {
            0
        };
        let m = Membership {
            room_id: room.shared.id,
            slot: slot as u32,
            receives: role.receives(),
            publishes: role.publishes(),
            published_epoch: 0,
            ns,
        };
        self.first_member(m.room_id);
        Some(m)
    }

    /// Adds protocol subscriber `key` to channel `name`; returns the room
    /// id and the subscriber's slot. The subscriber counts everywhere at
    /// once (publishers start encoding pushes) and receives from this
    /// iteration on: read the channel's history position *after* this, so
    /// nothing published in between is missed (see `history::merge`).
    pub fn subscribe(
        &mut self,
        directory: &RoomDirectory,
        name: &str,
        options: Arc<ChannelOptions>,
        key: usize,
    ) -> Result<(u64, u32), TooManyRooms> {
        let room = self.room(directory, name, Some(options))?;
        room.members += 1;
        room.subscribers.push(Subscriber {
            key,
            skip_upto: 0,
            pending: 0,
        });
        room.shared.count_subscriber(true);
        let at = (room.shared.id, (room.subscribers.len() - 1) as u32);
        self.first_member(at.0);
        Ok(at)
    }

    /// The room of `name` here for a publication, created without members
    /// if this worker has none (removed again once its batch is out).
    pub fn ensure(
        &mut self,
        directory: &RoomDirectory,
        name: &str,
        options: Arc<ChannelOptions>,
    ) -> Result<u64, TooManyRooms> {
        Ok(self.room(directory, name, Some(options))?.shared.id)
    }

    /// Removes a subscriber while its connection is being read (the
    /// connection table is busy, so slots cannot move now): its entry
    /// becomes a tombstone that receives nothing, and
    /// [`sweep_dead`](Self::sweep_dead) removes it after the read.
    pub fn unsubscribe_later(&mut self, room_id: u64, slot: u32) {
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        if let Some(s) = room.subscribers.get_mut(slot as usize) {
            if s.key != DEAD {
                if s.pending != 0 {
                    s.pending = 0;
                    remote::pending_ended(&mut room.remote);
                }
                s.key = DEAD;
                room.shared.count_subscriber(false);
                self.dead.push((room_id, slot));
            }
        }
    }

    /// Removes the tombstones left by [`unsubscribe_later`](Self::unsubscribe_later).
    /// A tombstone only moves by being removed (trailing ones are popped
    /// first, so a swap always moves a live subscriber into the hole),
    /// hence each recorded slot is still right when its turn comes.
    pub fn sweep_dead(&mut self, out: &mut Fanout<'_>) {
        for (room_id, slot) in std::mem::take(&mut self.dead) {
            let mut left = 0;
            let Some(room) = self.rooms.get_mut(&room_id) else {
                continue;
            };
            while room.subscribers.last().is_some_and(|s| s.key == DEAD) {
                room.subscribers.pop();
                left += 1;
            }
            let slot = slot as usize;
            if room.subscribers.get(slot).is_some_and(|s| s.key == DEAD) {
                room.subscribers.swap_remove(slot);
                left += 1;
                if let Some(moved) = room.subscribers.get(slot) {
                    out.table
                        .set_subscriber_slot(moved.key, room_id, slot as u32);
                }
            }
            if room.subscribers.is_empty() {
                room.cursor = StreamCursor::default();
            }
            for _ in 0..left {
                self.member_left(room_id, out);
            }
        }
    }

    /// After a subscriber's history read: `top` is the stream position it
    /// was answered from; it receives live publications after it.
    pub fn position_subscriber(&mut self, room_id: u64, slot: u32, top: &StreamPosition) {
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        if let Some(s) = room.subscribers.get_mut(slot as usize) {
            s.skip_upto = top.offset;
        }
        let alone = room.subscribers.len() == 1;
        let c = &mut room.cursor;
        if alone || c.next == 0 || c.epoch.as_ref() != Some(&top.epoch) {
            c.next = top.offset + 1;
            c.epoch = Some(top.epoch.clone());
        }
    }

    /// Removes a raw member (its connection is already out of `table`).
    pub fn leave(&mut self, m: Membership, out: &mut Fanout<'_>) {
        let Some(room) = self.rooms.get_mut(&m.room_id) else {
            return;
        };
        if m.receives {
            let slot = m.slot as usize;
            if slot < room.receivers.len() {
                room.receivers.swap_remove(slot);
                if let Some(&moved) = room.receivers.get(slot) {
                    out.table.set_slot(moved, slot as u32);
                }
            }
        }
        if room.receivers.capacity() > 64 && room.receivers.len() < room.receivers.capacity() / 4 {
            // A crowd left: do not keep its list's memory.
            room.receivers.shrink_to(room.receivers.len() * 2);
        }
        self.member_left(m.room_id, out);
    }

    /// Removes a protocol subscriber from its slot.
    pub fn unsubscribe(&mut self, room_id: u64, slot: u32, out: &mut Fanout<'_>) {
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        let slot = slot as usize;
        if slot < room.subscribers.len() {
            let gone = room.subscribers.swap_remove(slot);
            if gone.pending != 0 {
                remote::pending_ended(&mut room.remote);
            }
            room.shared.count_subscriber(false);
            if let Some(moved) = room.subscribers.get(slot) {
                out.table
                    .set_subscriber_slot(moved.key, room_id, slot as u32);
            }
        }
        if room.subscribers.capacity() > 64
            && room.subscribers.len() < room.subscribers.capacity() / 4
        {
            room.subscribers.shrink_to(room.subscribers.len() * 2);
        }
        if room.subscribers.is_empty() {
            // Nobody here follows the stream any more.
            room.cursor = StreamCursor::default();
        }
        self.member_left(room_id, out);
    }

    /// The room's last member here delivers what is pending and leaves
    /// the directory.
    fn member_left(&mut self, room_id: u64, out: &mut Fanout<'_>) {
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        room.members -= 1;
        if room.members == 0 {
            // Messages its last members published still go to the others.
            self.flush(room_id, out);
            if let Some(room) = self.rooms.remove(&room_id) {
                self.ids.remove(&*room.shared.name);
                out.directory.leave(&room.shared, self.worker);
                if let Some(port) = self.broker.as_deref_mut() {
                    port.interest(&room.shared.name, false);
                }
            }
        }
    }

    /// This worker's index.
    pub fn worker(&self) -> usize {
        self.worker
    }

    /// Workers other than this one with members of the room.
    pub fn remote_mask(&self, room_id: u64) -> u64 {
        self.rooms
            .get(&room_id)
            .map_or(0, |r| r.shared.worker_mask() & !(1u64 << self.worker))
    }

    /// The local room of this name, if this worker has members.
    pub fn id_of(&self, name: &str) -> Option<u64> {
        self.ids.get(name).copied()
    }

    /// The name of a local room.
    pub fn name_of(&self, room_id: u64) -> Option<&str> {
        self.rooms.get(&room_id).map(|r| &*r.shared.name)
    }

    /// A new batch item in room `room_id`'s batch (raw frame appended by
    /// the caller into the returned buffer).
    fn batch_of(&mut self, room_id: u64) -> Option<&mut Batch> {
        let room = self.rooms.get_mut(&room_id)?;
        let batch = &mut room.batch;
        if batch.frames.is_empty() {
            self.batch_epoch = self.batch_epoch.wrapping_add(1).max(1);
            batch.epoch = self.batch_epoch;
            self.pending.push(room_id);
            if batch.bytes.capacity() == 0 {
                batch.bytes = self.frames.buffer();
            }
        }
        Some(batch)
    }

    fn after_append(&mut self, room_id: u64) {
        let over = self
            .rooms
            .get(&room_id)
            .is_some_and(|r| r.batch.bytes.len() >= self.batch_cap);
        if over && !self.full.contains(&room_id) {
            self.full.push(room_id);
        }
    }

    /// Appends a message to the room's batch. `publisher` is the raw
    /// member's slab key and membership (whose epoch is updated), or `None`
    /// for an HTTP publish. Nothing is delivered here: batches go out in
    /// [`LocalRooms::flush_full`] and [`LocalRooms::flush_all`].
    ///
    /// With a broker, the message is also published to the other nodes.
    /// From a raw member it is delivered here whatever the broker says
    /// (the raw protocol has no answer to give; the error is counted);
    /// from HTTP or the API (`publisher` `None`) a broker error is
    /// returned and nothing is delivered anywhere, so the caller can say
    /// so (503, API error).
    pub fn publish(
        &mut self,
        room_id: u64,
        kind: MessageKind,
        data: &[u8],
        publisher: Option<(usize, &mut Membership)>,
    ) -> Result<(), BrokerError> {
        let bkind = match kind {
            MessageKind::Text => Kind::RawText,
            MessageKind::Binary => Kind::RawBinary,
        };
        if self.is_remote_history(room_id) {
            // Kept and sequenced in Redis; delivered here when it comes
            // back, like everywhere else.
            return self.publish_remote(room_id, bkind, data, None).map(|_| ());
        }
        if publisher.is_none() {
            self.send_to_broker(room_id, bkind, data, None)?;
            self.append_raw(room_id, kind, data, None);
            return Ok(());
        }
        self.append_raw(room_id, kind, data, publisher);
        self.send_to_broker(room_id, bkind, data, None)
    }

    fn append_raw(
        &mut self,
        room_id: u64,
        kind: MessageKind,
        data: &[u8],
        publisher: Option<(usize, &mut Membership)>,
    ) {
        let header = encode_header(true, kind.opcode(), data.len(), None);
        let Some(batch) = self.batch_of(room_id) else {
            return;
        };
        let head = batch.bytes.len();
        batch.bytes.extend_from_slice(header.as_bytes());
        let start = batch.bytes.len();
        batch.bytes.extend_from_slice(data);
        let key = match publisher {
            Some((key, m)) => {
                m.published_epoch = batch.epoch;
                key
            }
            None => usize::MAX,
        };
        batch.frames.push(BatchFrame {
            head,
            start,
            end: batch.bytes.len(),
            publisher: key,
            kind: ItemKind::Raw,
            info: None,
        });
        self.after_append(room_id);
    }

    /// Appends a protocol publication (`data` is JSON; `info` the
    /// publisher's `ClientInfo`, absent for the server API). With a
    /// broker, it is published to the other nodes first: if the broker
    /// refuses it (down, outbox full), nothing is delivered and the error
    /// is returned for the client's reply.
    pub fn publish_json(
        &mut self,
        room_id: u64,
        data: &[u8],
        info: Option<Arc<[u8]>>,
    ) -> Result<(), BrokerError> {
        if self.is_remote_history(room_id) {
            return self
                .publish_remote(room_id, Kind::Publication, data, info.as_deref())
                .map(|_| ());
        }
        self.send_to_broker(room_id, Kind::Publication, data, info.as_deref())?;
        self.append_json(room_id, data, info);
        Ok(())
    }

    fn append_json(&mut self, room_id: u64, data: &[u8], info: Option<Arc<[u8]>>) {
        let header = encode_header(true, MessageKind::Text.opcode(), data.len(), None);
        let Some(batch) = self.batch_of(room_id) else {
            return;
        };
        let head = batch.bytes.len();
        batch.bytes.extend_from_slice(header.as_bytes());
        let start = batch.bytes.len();
        batch.bytes.extend_from_slice(data);
        batch.frames.push(BatchFrame {
            head,
            start,
            end: batch.bytes.len(),
            publisher: usize::MAX,
            kind: ItemKind::Json,
            info,
        });
        self.after_append(room_id);
    }

    /// Appends a join or leave push (subscribers only); with a broker,
    /// also sent to the other nodes (best effort, like a raw member's
    /// message).
    pub fn join_leave(&mut self, room_id: u64, join: bool, info: Arc<[u8]>) {
        let kind = if join { Kind::Join } else { Kind::Leave };
        let _ = self.send_to_broker(room_id, kind, &[], Some(&info));
        self.append_join_leave(room_id, join, info);
    }

    fn append_join_leave(&mut self, room_id: u64, join: bool, info: Arc<[u8]>) {
        let Some(batch) = self.batch_of(room_id) else {
            return;
        };
        let at = batch.bytes.len();
        batch.frames.push(BatchFrame {
            head: at,
            start: at,
            end: at,
            publisher: usize::MAX,
            kind: if join {
                ItemKind::Join
            } else {
                ItemKind::Leave
            },
            info: Some(info),
        });
    }

    /// Delivers the batches that reached their cap (after a read).
    pub fn flush_full(&mut self, out: &mut Fanout<'_>) {
        while let Some(room_id) = self.full.pop() {
            self.flush(room_id, out);
        }
    }

    /// Delivers every batch gathered this iteration.
    pub fn flush_all(&mut self, out: &mut Fanout<'_>) {
        self.full.clear();
        for room_id in std::mem::take(&mut self.pending) {
            self.flush(room_id, out);
        }
    }

    /// Subscribers whose stream broke here since the last call.
    pub fn take_insufficient(&mut self, into: &mut Vec<(usize, u64)>) {
        into.append(&mut self.insufficient);
    }

    fn judge_slow(&mut self, out: &mut Fanout<'_>) {
        while let Some((key, missed)) = self.slow.pop() {
            out.table.slow_consumer(key, missed, out.now);
        }
    }

    /// Memory housekeeping: lets the frame pool trim. Returns buffers freed.
    pub fn trim(&mut self) -> usize {
        self.frames.trim()
    }

    /// Moves idle pooled frames out of pages a burst left behind.
    pub fn rehome(&mut self) {
        self.frames.rehome();
    }

    pub fn release_scratch(&mut self, keep: usize) {
        self.slow.shrink_to(keep);
        self.pending.shrink_to(keep);
        self.insufficient.shrink_to(keep);
        self.dead.shrink_to(keep);
        self.incoming.shrink_to(keep);
    }

    /// Local subscriber count and raw member count of every room here
    /// (server API `channels`, metrics).
    pub fn counts(&self) -> impl Iterator<Item = (&str, usize, usize)> {
        self.rooms.values().map(|r| {
            (
                &*r.shared.name,
                r.subscribers.len(),
                r.members - r.subscribers.len(),
            )
        })
    }
}

/// Where a delivery goes: the connections, the mesh, the counters.
pub struct Fanout<'a> {
    pub table: &'a mut ConnTable,
    pub port: &'a mut MeshPort,
    pub mesh: &'a Mesh,
    pub directory: &'a RoomDirectory,
    pub hub: &'a Hub,
    pub metrics: &'a WorkerMetrics,
    pub now: u64,
}
