//! Delivering a room's batch: encoding it once per kind of receiver,
//! sequencing channels with history, and the position check on arrival.

use super::*;

impl LocalRooms {
    /// Shares the room's batch once and enqueues it to every local
    /// receiver (a raw member that published in it, without `echo_self`,
    /// gets a copy without its own messages), then hands it to every other
    /// worker with members. Pushes are encoded only while the room has
    /// subscribers somewhere; a channel with history gets its offsets here,
    /// under its history lock (see the module docs).
    pub(super) fn flush(&mut self, room_id: u64, out: &mut Fanout<'_>) {
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        if room.batch.frames.is_empty() {
            return;
        }
        let publications = room
            .batch
            .frames
            .iter()
            .filter(|f| f.is_publication())
            .count() as u64;
        let bytes = std::mem::take(&mut room.batch.bytes);
        // The batch's bytes move into a shared frame (no copy); the room
        // keeps no buffer between iterations.
        let raw = (publications > 0).then(|| self.frames.share(bytes));
        // Its compressed encoding, made here if a local receiver needs it
        // and carried to the other workers with the batch.
        let compressed = Compressed::default();
        if let Some(frame) = &raw {
            let mut z = None;
            let filter =
                !self.echo_self && room.batch.frames.iter().any(|f| f.publisher != usize::MAX);
            for &member in &room.receivers {
                let own = filter && out.table.published_epoch(member) == Some(room.batch.epoch);
                let (delivery, n) = if own {
                    deliver_without_own(out, member, frame.as_bytes(), &room.batch.frames)
                } else {
                    let d = out
                        .table
                        .deliver(member, |s| s.send_batch(frame, &mut z), out.metrics);
                    (d, publications)
                };
                note(delivery, member, n, out.metrics, &mut self.slow);
            }
            compressed.keep(&z);
        }
        let shared = room.shared.clone();
        let me = 1u64 << self.worker;
        let frames = &room.batch.frames;
        let data = raw.as_ref().map_or(&[][..], |f| f.as_bytes());
        // With Redis, a channel with history is sequenced there: what is
        // batched here has no offset (join, leave, `skip_history`) and
        // travels like any other batch.
        let local_history = room.history().filter(|_| room.remote.is_none()).cloned();
        if let Some(opts) = local_history {
            let local_subscribers = !room.subscribers.is_empty();
            let to_self = if local_subscribers {
                SelfPart::PushOnly
            } else {
                SelfPart::Nothing
            };
            sequence(
                &Sequencer {
                    hub: out.hub,
                    mesh: out.mesh,
                    metrics: out.metrics,
                    worker: self.worker,
                },
                out.port,
                &shared.name,
                || Some(shared.clone()),
                &opts,
                frames,
                (raw.clone(), compressed),
                to_self,
            );
        } else {
            let push = (shared.subscribers() > 0)
                .then(|| Arc::new(encode_push(&shared.name, frames, data, &[], None)));
            if let Some(push) = &push {
                deliver_push(room, push, out, &mut self.slow, &mut self.insufficient);
            }
            let remote = shared.worker_mask() & !me;
            if remote != 0 {
                let msg = WorkerMsg::Batch(RoomBatch {
                    room: shared.clone(),
                    frame: raw,
                    messages: publications,
                    push,
                    compressed,
                });
                out.port
                    .send(out.mesh, remote, &msg, publications, out.metrics);
            }
        }
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        room.batch.frames.clear();
        if room.batch.frames.capacity() > 256 {
            room.batch.frames = Vec::new();
        }
        if room.members == 0 {
            // Created for a publication only.
            if let Some(room) = self.rooms.remove(&room_id) {
                self.ids.remove(&*room.shared.name);
                out.directory.leave(&room.shared, self.worker);
            }
        }
        self.judge_slow(out);
    }

    /// Publishes one message into a channel with history at once, without
    /// this worker's connection table (the server API answers with the
    /// publication's position): sequenced like a batch, delivered to
    /// every worker with members, this one included, through the inboxes.
    pub fn publish_sequenced(
        &self,
        seq: &Sequencer<'_>,
        port: &mut MeshPort,
        directory: &RoomDirectory,
        channel: &str,
        opts: &ChannelOptions,
        data: &[u8],
    ) -> StreamPosition {
        let (frames, raw) = single_item(data);
        sequence(
            seq,
            port,
            channel,
            || directory.get(channel),
            opts,
            &frames,
            (Some(raw), Compressed::default()),
            SelfPart::All,
        )
    }

    /// Publishes one message into a channel with history *without* keeping
    /// it (the server API's `skip_history`): no offset, delivered to every
    /// worker with members, this one included, through the inboxes.
    pub fn publish_unkept(
        &self,
        seq: &Sequencer<'_>,
        port: &mut MeshPort,
        directory: &RoomDirectory,
        channel: &str,
        data: &[u8],
    ) {
        let Some(shared) = directory.get(channel) else {
            return;
        };
        let (frames, raw) = single_item(data);
        let push = (shared.subscribers() > 0)
            .then(|| Arc::new(encode_push(channel, &frames, raw.as_bytes(), &[], None)));
        let msg = WorkerMsg::Batch(RoomBatch {
            room: shared.clone(),
            frame: Some(raw),
            messages: 1,
            push,
            compressed: Compressed::default(),
        });
        port.send(seq.mesh, shared.worker_mask(), &msg, 1, seq.metrics);
    }

    /// Delivers a batch from another worker (or, for channels with
    /// history, from this one through its own inbox) to local receivers.
    pub fn deliver_remote(&mut self, batch: &RoomBatch, out: &mut Fanout<'_>) {
        let Some(room) = self.rooms.get_mut(&batch.room.id) else {
            return;
        };
        if let Some(frame) = &batch.frame {
            let mut z = batch.compressed.get();
            for &member in &room.receivers {
                let d = out
                    .table
                    .deliver(member, |s| s.send_batch(frame, &mut z), out.metrics);
                note(d, member, batch.messages, out.metrics, &mut self.slow);
            }
            batch.compressed.keep(&z);
        }
        if let Some(push) = &batch.push {
            deliver_push(room, push, out, &mut self.slow, &mut self.insufficient);
        }
        self.judge_slow(out);
    }
}

pub(super) fn note(
    d: Delivery,
    member: usize,
    n: u64,
    metrics: &WorkerMetrics,
    slow: &mut Vec<(usize, u64)>,
) {
    match d {
        Delivery::Queued => {
            metrics.fanout_deliveries.add(n);
            metrics.messages_out.add(n);
        }
        Delivery::Ignored => {}
        Delivery::Full => slow.push((member, n)),
    }
}

/// The publication object (without offset) of a batch item.
fn publication_object(f: &BatchFrame, data: &[u8], out: &mut Vec<u8>) {
    push::pub_object(
        &data[f.start..f.end],
        f.kind == ItemKind::Json,
        f.info.as_deref(),
        out,
    );
}

/// Encodes a batch's pushes once: a `pub` frame per publication (with its
/// offset counted from `first` for a channel with history; `objects` are
/// then the publication objects already built for the history), a `join`
/// or `leave` frame per such item.
fn encode_push(
    channel: &str,
    frames: &[BatchFrame],
    data: &[u8],
    objects: &[Payload],
    first: Option<&StreamPosition>,
) -> PushBatch {
    let mut bytes = Vec::new();
    let mut items = Vec::with_capacity(frames.len());
    let mut n = 0u64;
    for f in frames {
        let offset = match (f.is_publication(), first) {
            (true, Some(p)) => p.offset + n,
            _ => 0,
        };
        match f.kind {
            ItemKind::Raw | ItemKind::Json => {
                push::push_frame(channel, "pub", &mut bytes, |b| {
                    match objects.get(n as usize) {
                        Some(obj) => push::with_offset(obj, offset, b),
                        None => publication_object(f, data, b),
                    }
                });
                n += 1;
            }
            ItemKind::Join | ItemKind::Leave => {
                let kind = if f.kind == ItemKind::Join {
                    "join"
                } else {
                    "leave"
                };
                let info = f.info.as_deref().unwrap_or(b"{}");
                push::push_frame(channel, kind, &mut bytes, |b| {
                    push::join_leave_body(info, b)
                });
            }
        }
        items.push(PushItem {
            end: bytes.len() as u32,
            offset,
        });
    }
    PushBatch {
        frame: SharedFrame::from_vec(bytes),
        items,
        epoch: first.map(|p| p.epoch.clone()),
        compressed: Compressed::default(),
    }
}

/// Delivers pushes to a room's subscribers here. For a channel with
/// history: publications at or below what a subscriber already has are
/// filtered out; a hole or an epoch change marks every subscriber here
/// for recovery instead (see the module docs).
pub(super) fn deliver_push(
    room: &mut LocalRoom,
    push: &PushBatch,
    out: &mut Fanout<'_>,
    slow: &mut Vec<(usize, u64)>,
    insufficient: &mut Vec<(usize, u64)>,
) {
    let mut floor = 0;
    let mut last = 0;
    if let (Some(epoch), Some((first, top))) = (&push.epoch, push.offsets()) {
        last = top;
        let c = &mut room.cursor;
        // A stream that expired before its first publication (next = 1)
        // lost nothing: its successor is simply followed.
        let fresh = c.next == 1 && first == 1;
        if c.next != 0 && !fresh && (c.epoch.as_ref() != Some(epoch) || first > c.next) {
            for s in &room.subscribers {
                if s.pending == 0 {
                    insufficient.push((s.key, room.shared.id));
                }
            }
            remote::stream_broke(&mut room.remote);
            c.next = top + 1;
            c.epoch = Some(epoch.clone());
            return;
        }
        floor = c.next.saturating_sub(1);
        if c.next <= top {
            c.next = top + 1;
            c.epoch = Some(epoch.clone());
        }
    }
    let count = push.items.len() as u64;
    // The compressed encoding of the pushes, made on first need (here or
    // by another worker) and shared by every subscriber that negotiated
    // permessage-deflate.
    let mut z = push.compressed.get();
    for s in room.subscribers.iter().filter(|s| s.pending == 0) {
        let f = floor.max(s.skip_upto);
        let d = if last == 0 || f == 0 || push.items.iter().all(|i| i.offset == 0 || i.offset > f) {
            out.table
                .deliver(s.key, |x| x.send_batch(&push.frame, &mut z), out.metrics)
        } else {
            let parts = push.parts(move |i| i.offset == 0 || i.offset > f);
            if parts.clone().next().is_none() {
                continue;
            }
            out.table
                .deliver(s.key, |x| x.send_copy(parts.clone()), out.metrics)
        };
        note(d, s.key, count, out.metrics, slow);
    }
    push.compressed.keep(&z);
}

/// Enqueues the raw frames of a batch not published by `member`, with the
/// number of messages that is.
fn deliver_without_own(
    out: &mut Fanout<'_>,
    member: usize,
    bytes: &[u8],
    frames: &[BatchFrame],
) -> (Delivery, u64) {
    let others = frames
        .iter()
        .filter(|f| f.is_publication() && f.publisher != member)
        .map(|f| &bytes[f.head..f.end]);
    let count = others.clone().count() as u64;
    if count == 0 {
        return (Delivery::Ignored, 0);
    }
    let d = out
        .table
        .deliver(member, |s| s.send_copy(others.clone()), out.metrics);
    (d, count)
}

/// A batch of one server-side publication: its item and its raw frame
/// (text when the data is UTF-8, binary otherwise).
fn single_item(data: &[u8]) -> ([BatchFrame; 1], SharedFrame) {
    let kind = if std::str::from_utf8(data).is_ok() {
        MessageKind::Text
    } else {
        MessageKind::Binary
    };
    let header = encode_header(true, kind.opcode(), data.len(), None);
    let mut bytes = Vec::with_capacity(header.as_bytes().len() + data.len());
    bytes.extend_from_slice(header.as_bytes());
    let start = bytes.len();
    bytes.extend_from_slice(data);
    let frames = [BatchFrame {
        head: 0,
        start,
        end: bytes.len(),
        publisher: usize::MAX,
        kind: ItemKind::Raw,
        info: None,
    }];
    (frames, SharedFrame::from_vec(bytes))
}

/// The worker's parts a sequenced publication needs.
pub struct Sequencer<'a> {
    pub hub: &'a Hub,
    pub mesh: &'a Mesh,
    pub metrics: &'a WorkerMetrics,
    pub worker: usize,
}

/// What this worker's own inbox gets of a sequenced batch.
#[derive(Clone, Copy, PartialEq, Eq)]
enum SelfPart {
    Nothing,
    /// Pushes only (raw members here were served directly).
    PushOnly,
    /// Everything, like any other worker with members.
    All,
}

/// Appends a batch's publications to the channel's history and hands the
/// batch to every worker with members, all under the channel's history
/// lock, so every inbox receives the channel's publications in offset
/// order. `room` is looked up under the lock too: a subscriber registers
/// (worker bit) before it reads the history under the same lock, so either
/// it sees a publication in its snapshot or the publication sees it.
/// Returns the first publication's position.
#[allow(clippy::too_many_arguments)] // one call site each; a struct would only rename them
fn sequence(
    seq: &Sequencer<'_>,
    port: &mut MeshPort,
    channel: &str,
    room: impl FnOnce() -> Option<Arc<RoomShared>>,
    opts: &ChannelOptions,
    frames: &[BatchFrame],
    (raw, compressed): (Option<SharedFrame>, Compressed),
    to_self: SelfPart,
) -> StreamPosition {
    let data = raw.as_ref().map_or(&[][..], |f| f.as_bytes());
    let payloads: Vec<Payload> = frames
        .iter()
        .filter(|f| f.is_publication())
        .map(|f| {
            let mut obj = Vec::with_capacity(f.end - f.start + 16);
            publication_object(f, data, &mut obj);
            obj.into()
        })
        .collect();
    let publications = payloads.len() as u64;
    let me = 1u64 << seq.worker;
    let now_ms = seq.hub.now_ms();
    let stream = Hub::stream_options(opts);
    seq.hub
        .history
        .publish_batch(channel, &payloads, now_ms, stream, |first| {
            if let Some(shared) = room() {
                let push = (shared.subscribers() > 0)
                    .then(|| Arc::new(encode_push(channel, frames, data, &payloads, Some(first))));
                let mask = shared.worker_mask();
                let remote = mask & !me;
                if remote != 0 {
                    let msg = WorkerMsg::Batch(RoomBatch {
                        room: shared.clone(),
                        frame: raw.clone(),
                        messages: publications,
                        push: push.clone(),
                        compressed: compressed.clone(),
                    });
                    port.send(seq.mesh, remote, &msg, publications, seq.metrics);
                }
                let own = match to_self {
                    SelfPart::All if mask & me != 0 => Some((raw.clone(), push)),
                    SelfPart::PushOnly if push.is_some() => Some((None, push)),
                    _ => None,
                };
                if let Some((frame, push)) = own {
                    let msg = WorkerMsg::Batch(RoomBatch {
                        room: shared.clone(),
                        messages: if frame.is_some() { publications } else { 0 },
                        frame,
                        push,
                        compressed,
                    });
                    port.send(seq.mesh, me, &msg, 0, seq.metrics);
                }
            }
            let mut last = first.clone();
            last.offset += publications.saturating_sub(1);
            last
        })
}
