//! A worker's share of every room: who is a member here, what was
//! published this iteration, and delivering it.
//!
//! Messages published into a room during one loop iteration are gathered
//! into one batch of encoded frames. At the end of the iteration (or once
//! a batch grows past its cap) the batch is shared once (`SharedFrame`)
//! with every local receiver's outbound queue and handed to every other
//! worker with members: one buffer, one queue entry and one `writev` per
//! member, however many messages.

use super::directory::{RoomDirectory, RoomShared};
use super::frame_pool::FramePool;
use super::http::MemberRole;
use super::mesh::{Mesh, MeshPort};
use super::session::Delivery;
use super::table::ConnTable;
use crate::metrics::WorkerMetrics;
use crate::protocol::{encode_header, MessageKind, SharedFrame};
use std::collections::HashMap;
use std::sync::Arc;

/// A batch is delivered early once it would hold more than this many bytes.
const ROOM_BATCH_BYTES: usize = 64 * 1024;

/// A connection's place in a room on this worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Membership {
    pub room_id: u64,
    /// Index in the room's receiver list (when it receives).
    pub slot: u32,
    pub receives: bool,
    pub publishes: bool,
    /// Epoch of the last batch this member published into.
    pub published_epoch: u32,
}

/// A worker's members of one room.
struct LocalRoom {
    shared: Arc<RoomShared>,
    /// Slab keys of members that receive. A member's position is stored in
    /// its membership, so leaving is O(1) (swap-remove).
    receivers: Vec<usize>,
    /// Members in total (receivers plus publish-only members).
    members: usize,
    batch: Batch,
}

/// Encoded frames published into a room during one iteration.
#[derive(Default)]
struct Batch {
    bytes: Vec<u8>,
    frames: Vec<BatchFrame>,
    /// Which batch this is (publishers remember it to skip their own).
    epoch: u32,
}

struct BatchFrame {
    /// Offset just past the frame in `Batch::bytes`.
    end: usize,
    /// Slab key of the publisher (`usize::MAX`: HTTP publish).
    publisher: usize,
}

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
        }
    }

    /// Adds connection `key` to room `name` (creating it here, and in the
    /// directory, if needed). `None` when `max_rooms` rooms exist.
    pub fn join(
        &mut self,
        directory: &RoomDirectory,
        name: &str,
        key: usize,
        role: MemberRole,
    ) -> Option<Membership> {
        let id = match self.ids.get(name) {
            Some(&id) => id,
            None => {
                let shared = directory.join(name, self.worker).ok()?;
                let id = shared.id;
                self.rooms.insert(
                    id,
                    LocalRoom {
                        shared,
                        receivers: Vec::new(),
                        members: 0,
                        batch: Batch::default(),
                    },
                );
                self.ids.insert(name.into(), id);
                id
            }
        };
        let room = self.rooms.get_mut(&id)?;
        room.members += 1;
        let slot = if role.receives() {
            room.receivers.push(key);
            room.receivers.len() - 1
        } else {
            0
        };
        Some(Membership {
            room_id: id,
            slot: slot as u32,
            receives: role.receives(),
            publishes: role.publishes(),
            published_epoch: 0,
        })
    }

    /// Removes a member (its connection is already out of `table`). The
    /// room's last member here delivers what is pending and leaves the
    /// directory.
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
        room.members -= 1;
        if room.members == 0 {
            // Messages its last members published still go to the others.
            self.flush(m.room_id, out);
            if let Some(room) = self.rooms.remove(&m.room_id) {
                self.ids.remove(&*room.shared.name);
                out.directory.leave(&room.shared, self.worker);
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

    /// Appends a message to the room's batch. `publisher` is the member's
    /// slab key and membership (whose epoch is updated), or `None` for an
    /// HTTP publish. Nothing is delivered here: batches go out in
    /// [`LocalRooms::flush_full`] and [`LocalRooms::flush_all`].
    pub fn publish(
        &mut self,
        room_id: u64,
        kind: MessageKind,
        data: &[u8],
        publisher: Option<(usize, &mut Membership)>,
    ) {
        let header = encode_header(true, kind.opcode(), data.len(), None);
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        let batch = &mut room.batch;
        if batch.frames.is_empty() {
            self.batch_epoch = self.batch_epoch.wrapping_add(1).max(1);
            batch.epoch = self.batch_epoch;
            self.pending.push(room_id);
            if batch.bytes.capacity() == 0 {
                batch.bytes = self.frames.buffer();
            }
        }
        batch.bytes.extend_from_slice(header.as_bytes());
        batch.bytes.extend_from_slice(data);
        let key = match publisher {
            Some((key, m)) => {
                m.published_epoch = batch.epoch;
                key
            }
            None => usize::MAX,
        };
        batch.frames.push(BatchFrame {
            end: batch.bytes.len(),
            publisher: key,
        });
        if batch.bytes.len() >= self.batch_cap && !self.full.contains(&room_id) {
            self.full.push(room_id);
        }
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

    /// Shares the room's batch once and enqueues it to every local
    /// receiver (a member that published in it, without `echo_self`, gets
    /// a copy without its own messages), then hands it to every other
    /// worker with members.
    fn flush(&mut self, room_id: u64, out: &mut Fanout<'_>) {
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        if room.batch.frames.is_empty() {
            return;
        }
        // The batch's bytes move into a shared frame (no copy); the room
        // keeps no buffer between iterations.
        let frame = self.frames.share(std::mem::take(&mut room.batch.bytes));
        let count = room.batch.frames.len() as u64;
        let filter = !self.echo_self && room.batch.frames.iter().any(|f| f.publisher != usize::MAX);
        for &member in &room.receivers {
            let own = filter && out.table.published_epoch(member) == Some(room.batch.epoch);
            let (delivery, n) = if own {
                deliver_without_own(out, member, frame.as_bytes(), &room.batch.frames)
            } else {
                let d = out
                    .table
                    .deliver(member, |s| s.send_shared(&frame), out.metrics);
                (d, count)
            };
            match delivery {
                Delivery::Queued => {
                    out.metrics.fanout_deliveries.add(n);
                    out.metrics.messages_out.add(n);
                }
                Delivery::Ignored => {}
                Delivery::Full => self.slow.push((member, n)),
            }
        }
        let remote = room.shared.worker_mask() & !(1u64 << self.worker);
        let shared = (remote != 0).then(|| room.shared.clone());
        room.batch.frames.clear();
        if room.batch.frames.capacity() > 256 {
            room.batch.frames = Vec::new();
        }
        if let Some(shared) = shared {
            out.port
                .send(out.mesh, remote, &shared, &frame, count, out.metrics);
        }
        self.judge_slow(out);
    }

    /// Delivers a batch from another worker to every local receiver.
    pub fn deliver_remote(
        &mut self,
        room_id: u64,
        frame: &SharedFrame,
        count: u64,
        out: &mut Fanout<'_>,
    ) {
        let Some(room) = self.rooms.get(&room_id) else {
            return;
        };
        for &member in &room.receivers {
            match out
                .table
                .deliver(member, |s| s.send_shared(frame), out.metrics)
            {
                Delivery::Queued => {
                    out.metrics.fanout_deliveries.add(count);
                    out.metrics.messages_out.add(count);
                }
                Delivery::Ignored => {}
                Delivery::Full => self.slow.push((member, count)),
            }
        }
        self.judge_slow(out);
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
    }
}

/// Where a delivery goes: the connections, the mesh, the counters.
pub struct Fanout<'a> {
    pub table: &'a mut ConnTable,
    pub port: &'a mut MeshPort,
    pub mesh: &'a Mesh,
    pub directory: &'a RoomDirectory,
    pub metrics: &'a WorkerMetrics,
    pub now: u64,
}

/// Enqueues the frames of a batch not published by `member`, with the
/// number of messages that is.
fn deliver_without_own(
    out: &mut Fanout<'_>,
    member: usize,
    bytes: &[u8],
    frames: &[BatchFrame],
) -> (Delivery, u64) {
    let starts = std::iter::once(0).chain(frames.iter().map(|f| f.end));
    let others = frames
        .iter()
        .zip(starts)
        .filter(|(f, _)| f.publisher != member)
        .map(|(f, start)| &bytes[start..f.end]);
    let count = others.clone().count() as u64;
    if count == 0 {
        return (Delivery::Ignored, 0);
    }
    let d = out
        .table
        .deliver(member, |s| s.send_copy(others.clone()), out.metrics);
    (d, count)
}
