//! Channels with history when the history lives in Redis (`broker =
//! "redis"`, docs/cluster.md).
//!
//! A publication goes to Redis, which assigns its offset, keeps it in the
//! channel's stream and publishes it to every node with interest, this one
//! included (one Lua script). Every worker with members receives it
//! directly from the bridge (no mesh hop: each worker sequences its own
//! subscribers) and delivers it in offset order with the same cursor check
//! as a local stream: a hole or a new epoch sends the subscribers here to
//! recovery ("insufficient state").
//!
//! A subscriber is *pending* from its `subscribe` until Redis answers its
//! history read (which is sent only once this worker's subscription to the
//! channel is live). What arrives meanwhile is held for it, and the answer
//! decides what it still needs: publications up to the read's top came in
//! the reply, later ones are handed over from what was held, and the live
//! stream goes on from there, so nothing falls between the read and the
//! live stream and nothing is delivered twice (Centrifuge buffers the same
//! way while it subscribes).

use super::flush::{deliver_push, note};
use super::*;
use crate::broker::Token;
use crate::pubsub::history::Publication;

/// A channel with history in Redis, as one worker follows it.
#[derive(Default)]
pub(super) struct RemoteStream {
    /// The bridge said this worker's subscription to the channel is live:
    /// a history read sent from now on misses nothing of the live stream.
    live: bool,
    /// Envelopes received this iteration, in Redis order.
    incoming: Vec<Arc<Envelope>>,
    /// Pushes delivered while subscribers were pending, for them.
    held: Vec<Arc<PushBatch>>,
    held_bytes: usize,
    /// The stream broke (hole, new epoch, lost subscription) or the held
    /// pushes overflowed while subscribers were pending: they recover
    /// once answered.
    broken: bool,
    /// Pending subscribers here.
    pending: u32,
}

impl RemoteStream {
    /// What a pending subscriber answered from a read at `top` still
    /// needs of what was held, and the last offset it then has.
    fn handover(&self, top: &StreamPosition) -> (Activation, u64) {
        let mut a = Activation {
            frames: Vec::new(),
            insufficient: self.broken,
        };
        let mut last = top.offset;
        for b in &self.held {
            if b.epoch.as_ref() != Some(&top.epoch) {
                // The stream changed since the read (or before it).
                a.insufficient = true;
                continue;
            }
            if let Some((_, hi)) = b.offsets() {
                last = last.max(hi);
            }
            for part in b.parts(|i| i.offset > top.offset) {
                a.frames.extend_from_slice(part);
            }
        }
        if a.insufficient {
            a.frames.clear();
        }
        (a, last)
    }

    /// Keeps a delivered batch for the pending subscribers; past
    /// `max_bytes` they recover instead.
    fn hold(&mut self, push: Arc<PushBatch>, max_bytes: usize) {
        if self.pending == 0 || self.broken {
            return;
        }
        let size = push.frame.as_bytes().len();
        if self.held_bytes + size > max_bytes {
            self.broken = true;
            self.held = Vec::new();
            self.held_bytes = 0;
        } else {
            self.held.push(push);
            self.held_bytes += size;
        }
    }
}

/// A pending subscriber left (answered, unsubscribed or gone).
pub(super) fn pending_ended(remote: &mut Option<Box<RemoteStream>>) {
    if let Some(r) = remote {
        r.pending = r.pending.saturating_sub(1);
        if r.pending == 0 {
            r.held = Vec::new();
            r.held_bytes = 0;
            r.broken = false;
        }
    }
}

/// The stream broke here: pending subscribers must recover once answered.
pub(super) fn stream_broke(remote: &mut Option<Box<RemoteStream>>) {
    if let Some(r) = remote {
        if r.pending > 0 {
            r.broken = true;
            r.held = Vec::new();
            r.held_bytes = 0;
        }
    }
}

/// What a pending subscriber gets once its history read is answered.
#[derive(Debug, Default)]
pub struct Activation {
    /// Push frames that arrived while it waited and that the read did not
    /// cover, in offset order: sent right after its subscribe reply.
    pub frames: Vec<u8>,
    /// The stream broke while it waited: after the reply it is told
    /// "insufficient state" and recovers.
    pub insufficient: bool,
}

/// A pending subscription: where it sits, and which one it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PendingSlot {
    pub room_id: u64,
    pub id: u32,
    /// This worker's subscription to the channel is live: read now.
    pub live: bool,
}

impl LocalRooms {
    /// The room's channel keeps its history in Redis.
    pub fn is_remote_history(&self, room_id: u64) -> bool {
        self.rooms.get(&room_id).is_some_and(|r| r.remote.is_some())
    }

    /// Publishes into a channel with history in Redis: kept, sequenced and
    /// sent to every node, this one included, where it is delivered when
    /// it comes back. Refused at once (`Unavailable`, `Overloaded`) or
    /// answered later with its position.
    pub fn publish_remote(
        &mut self,
        room_id: u64,
        kind: Kind,
        data: &[u8],
        info: Option<&[u8]>,
    ) -> Result<Token, BrokerError> {
        let (Some(port), Some(room)) = (self.broker.as_deref_mut(), self.rooms.get(&room_id))
        else {
            return Err(BrokerError::Unavailable);
        };
        let Some(opts) = room.history() else {
            return Err(BrokerError::Invalid("channel keeps no history".into()));
        };
        let env = Envelope {
            kind,
            origin: port.node(),
            channel: room.shared.name.to_string(),
            position: None,
            info: info.map(<[u8]>::to_vec),
            payload: data.to_vec(),
        };
        port.publish_history(&env, Hub::stream_options(opts))
            .inspect_err(|_| BrokerMetrics::inc(&port.metrics().publish_errors))
    }

    /// Publishes into a channel with history in Redis *without* keeping
    /// it (the server API's `skip_history`): sent live with no position,
    /// delivered here at once like a channel without history.
    pub fn publish_live(&mut self, room_id: u64, data: &[u8]) -> Result<(), BrokerError> {
        self.send_to_broker(room_id, Kind::Publication, data, None)?;
        self.append_json(room_id, data, None);
        Ok(())
    }

    /// Adds protocol subscriber `key` as pending (see the module docs).
    pub fn subscribe_pending(
        &mut self,
        directory: &RoomDirectory,
        name: &str,
        options: Arc<ChannelOptions>,
        key: usize,
    ) -> Result<(u32, PendingSlot), TooManyRooms> {
        let (room_id, slot) = self.subscribe(directory, name, options, key)?;
        self.next_pending = self.next_pending.wrapping_add(1).max(1);
        let id = self.next_pending;
        let room = self.rooms.get_mut(&room_id).ok_or(TooManyRooms)?;
        let live = match room.remote.as_mut() {
            Some(r) => {
                r.pending += 1;
                r.live
            }
            None => true,
        };
        if let Some(s) = room.subscribers.get_mut(slot as usize) {
            s.pending = id;
        }
        Ok((slot, PendingSlot { room_id, id, live }))
    }

    /// Subscriber `key` of `room_id` must recover (its stream broke while
    /// its subscription was pending).
    pub fn mark_insufficient(&mut self, key: usize, room_id: u64) {
        self.insufficient.push((key, room_id));
    }

    /// The bridge confirmed this worker's subscription to `channel`.
    /// Returns whether this worker has the room.
    pub fn stream_live(&mut self, channel: &str) -> bool {
        let Some(&id) = self.ids.get(channel) else {
            return false;
        };
        if let Some(r) = self.rooms.get_mut(&id).and_then(|r| r.remote.as_mut()) {
            r.live = true;
        }
        true
    }

    /// Publications of `channel` may have been lost for this worker (the
    /// subscription was made again after a lost connection, or the
    /// worker's broker inbox overflowed): its subscribers here recover.
    pub fn stream_lost(&mut self, channel: &str) {
        let Some(&id) = self.ids.get(channel) else {
            return;
        };
        let Some(room) = self.rooms.get_mut(&id) else {
            return;
        };
        if room.remote.is_none() {
            return;
        }
        for s in &room.subscribers {
            if s.pending == 0 && s.key != DEAD {
                self.insufficient.push((s.key, id));
            }
        }
        stream_broke(&mut room.remote);
        room.cursor = StreamCursor::default();
    }

    /// An envelope with a position from the bridge: delivered to this
    /// worker's members in [`flush_incoming`](Self::flush_incoming).
    pub fn receive_positioned(&mut self, env: Arc<Envelope>) {
        let Some(&id) = self.ids.get(env.channel.as_str()) else {
            // No member here any more.
            return;
        };
        let Some(r) = self.rooms.get_mut(&id).and_then(|r| r.remote.as_mut()) else {
            // Another node keeps history for a channel this one does
            // not (configurations differ): nothing to sequence it by.
            return;
        };
        if r.incoming.is_empty() {
            self.incoming.push(id);
        }
        r.incoming.push(env);
    }

    /// Delivers what [`receive_positioned`](Self::receive_positioned)
    /// gathered: per room, each run of consecutive offsets as one batch.
    pub fn flush_incoming(&mut self, out: &mut Fanout<'_>) {
        for room_id in std::mem::take(&mut self.incoming) {
            let Some(r) = self.rooms.get_mut(&room_id).and_then(|r| r.remote.as_mut()) else {
                continue;
            };
            let envs = std::mem::take(&mut r.incoming);
            let mut start = 0;
            for i in 1..=envs.len() {
                if i == envs.len() || !follows(&envs[i - 1], &envs[i]) {
                    self.deliver_run(room_id, &envs[start..i], out);
                    start = i;
                }
            }
        }
        self.judge_slow(out);
    }

    fn deliver_run(&mut self, room_id: u64, envs: &[Arc<Envelope>], out: &mut Fanout<'_>) {
        let max_held = self.max_outbound_bytes;
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return;
        };
        let n = envs.len() as u64;
        if !room.receivers.is_empty() {
            let mut bytes = self.frames.buffer();
            for env in envs {
                let kind = match env.kind {
                    Kind::RawBinary => MessageKind::Binary,
                    _ => MessageKind::Text,
                };
                let header = encode_header(true, kind.opcode(), env.payload.len(), None);
                bytes.extend_from_slice(header.as_bytes());
                bytes.extend_from_slice(&env.payload);
            }
            let frame = self.frames.share(bytes);
            let mut z = None;
            for &member in &room.receivers {
                let d = out
                    .table
                    .deliver(member, |s| s.send_batch(&frame, &mut z), out.metrics);
                note(d, member, n, out.metrics, &mut self.slow);
            }
        }
        if room.subscribers.is_empty() {
            return;
        }
        let push = Arc::new(encode_positioned(&room.shared.name, envs));
        deliver_push(room, &push, out, &mut self.slow, &mut self.insufficient);
        if let Some(r) = room.remote.as_mut() {
            r.hold(push, max_held);
        }
    }

    /// Whether this worker's subscription to the room's channel is live
    /// (always, for a channel without history in Redis).
    pub fn is_live(&self, room_id: u64) -> bool {
        self.rooms
            .get(&room_id)
            .and_then(|r| r.remote.as_ref())
            .is_none_or(|r| r.live)
    }

    /// Answers pending subscription `id` of a channel without history
    /// (it waited for its presence entry): it receives from now on.
    /// `false` if that subscription is no longer there.
    pub fn activate_plain(&mut self, room_id: u64, slot: u32, id: u32) -> bool {
        let Some(room) = self.rooms.get_mut(&room_id) else {
            return false;
        };
        match room.subscribers.get_mut(slot as usize) {
            Some(s) if id != 0 && s.pending == id => {
                s.pending = 0;
                pending_ended(&mut room.remote);
                true
            }
            _ => false,
        }
    }

    /// Answers pending subscription `id` in slot `slot` of `room_id`: its
    /// history read says the stream stood at `top`. It receives from there
    /// on (what was held for it after `top` is returned, to send after the
    /// reply). `None` if that subscription is no longer there.
    pub fn activate(
        &mut self,
        room_id: u64,
        slot: u32,
        id: u32,
        top: &StreamPosition,
    ) -> Option<Activation> {
        let room = self.rooms.get_mut(&room_id)?;
        if room.subscribers.get(slot as usize)?.pending != id || id == 0 {
            return None;
        }
        let (a, last) = match room.remote.as_deref() {
            Some(r) => r.handover(top),
            None => (Activation::default(), top.offset),
        };
        if let Some(s) = room.subscribers.get_mut(slot as usize) {
            s.pending = 0;
            s.skip_upto = last;
        }
        // The room's cursor follows live delivery here; only a room that
        // follows no stream yet (or another epoch) starts from this read.
        // Moving it ahead of live delivery would make the others skip
        // what is still in flight: this subscriber skips that itself.
        let c = &mut room.cursor;
        if c.next == 0 || c.epoch.as_ref() != Some(&top.epoch) {
            c.next = last + 1;
            c.epoch = Some(top.epoch.clone());
        }
        pending_ended(&mut room.remote);
        Some(a)
    }
}

/// `b` comes right after `a` in the same stream.
fn follows(a: &Envelope, b: &Envelope) -> bool {
    match (&a.position, &b.position) {
        (Some((x, e1)), Some((y, e2))) => e1 == e2 && *y == x.saturating_add(1),
        _ => false,
    }
}

/// The pushes of a run of envelopes with positions (one epoch).
fn encode_positioned(channel: &str, envs: &[Arc<Envelope>]) -> PushBatch {
    let mut bytes = Vec::new();
    let mut items = Vec::with_capacity(envs.len());
    let mut epoch = None;
    let mut obj = Vec::new();
    for env in envs {
        let Some((offset, e)) = &env.position else {
            continue;
        };
        epoch.get_or_insert_with(|| EpochId::from(e.as_str()));
        obj.clear();
        object_of(env, &mut obj);
        push::push_frame(channel, "pub", &mut bytes, |b| {
            push::with_offset(&obj, *offset, b)
        });
        items.push(PushItem {
            end: bytes.len() as u32,
            offset: *offset,
        });
    }
    PushBatch {
        frame: SharedFrame::from_vec(bytes),
        items,
        epoch,
        compressed: Compressed::default(),
    }
}

/// The publication object (without offset) an envelope carries.
fn object_of(env: &Envelope, out: &mut Vec<u8>) {
    push::pub_object(
        &env.payload,
        env.kind == Kind::Publication,
        env.info.as_deref(),
        out,
    );
}

/// A publication from a Redis history read, as history replies carry it.
pub fn publication_of(env: &Envelope) -> Option<Publication> {
    let (offset, _) = env.position.as_ref()?;
    let mut obj = Vec::with_capacity(env.payload.len() + 16);
    object_of(env, &mut obj);
    Some(Publication {
        offset: *offset,
        payload: obj.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::NodeId;

    fn env(offset: u64, epoch: &str, data: &str) -> Arc<Envelope> {
        Arc::new(Envelope {
            kind: Kind::Publication,
            origin: NodeId([7; 16]),
            channel: "c".into(),
            position: Some((offset, epoch.into())),
            info: None,
            payload: data.as_bytes().to_vec(),
        })
    }

    fn pushes(envs: &[Arc<Envelope>]) -> Arc<PushBatch> {
        Arc::new(encode_positioned("c", envs))
    }

    fn top(offset: u64, epoch: &str) -> StreamPosition {
        StreamPosition {
            offset,
            epoch: epoch.into(),
        }
    }

    /// The offsets in a run of push frames.
    fn offsets_in(frames: &[u8]) -> Vec<u64> {
        let text = String::from_utf8_lossy(frames);
        text.match_indices("\"offset\":")
            .map(|(i, m)| {
                text[i + m.len()..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect::<String>()
                    .parse()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn answering_a_subscription_never_moves_the_room_ahead_of_live_delivery() {
        let directory = RoomDirectory::new(10);
        let mut rooms = LocalRooms::new(0, 1 << 20, false);
        rooms.history_in_redis = true;
        let opts = Arc::new(ChannelOptions {
            history_size: 10,
            history_ttl: std::time::Duration::from_secs(60),
            ..ChannelOptions::default()
        });
        // The first subscriber, answered at 10: the room follows from 11.
        let (slot1, p1) = rooms
            .subscribe_pending(&directory, "c", opts.clone(), 1)
            .unwrap();
        assert!(!p1.live, "not live before the bridge says so");
        assert!(rooms.stream_live("c"));
        assert!(rooms.is_live(p1.room_id));
        let a = rooms
            .activate(p1.room_id, slot1, p1.id, &top(10, "e"))
            .unwrap();
        assert!(a.frames.is_empty() && !a.insufficient);
        let room = &rooms.rooms[&p1.room_id];
        assert_eq!((room.cursor.next, room.subscribers[0].skip_upto), (11, 10));
        // A second one answered at 15 while live delivery is still at 10
        // (11..15 in flight): it skips them itself; the room still
        // expects 11, so the first subscriber gets them.
        let (slot2, p2) = rooms.subscribe_pending(&directory, "c", opts, 2).unwrap();
        assert!(p2.live);
        assert_eq!(
            rooms
                .activate(p2.room_id, slot2, p1.id, &top(15, "e"))
                .map(|_| ()),
            None,
            "another subscription's answer"
        );
        rooms
            .activate(p2.room_id, slot2, p2.id, &top(15, "e"))
            .unwrap();
        let room = &rooms.rooms[&p1.room_id];
        assert_eq!(room.cursor.next, 11);
        assert_eq!(room.subscribers[1].skip_upto, 15);
        assert!(room.subscribers.iter().all(|s| s.pending == 0));
        assert_eq!(room.remote.as_ref().map(|r| r.pending), Some(0));
    }

    #[test]
    fn runs_split_at_holes_and_epoch_changes() {
        let e = [
            env(1, "a", "1"),
            env(2, "a", "2"),
            env(4, "a", "4"),
            env(1, "b", "1"),
        ];
        assert!(follows(&e[0], &e[1]));
        assert!(!follows(&e[1], &e[2]), "a hole");
        assert!(!follows(&e[2], &e[3]), "another epoch");
        let p = encode_positioned("c", &e[..2]);
        assert_eq!(p.offsets(), Some((1, 2)));
        assert_eq!(p.epoch.as_ref().map(EpochId::as_str), Some("a"));
        assert_eq!(offsets_in(p.frame.as_bytes()), [1, 2]);
        let pubs: Vec<u64> = e
            .iter()
            .filter_map(|e| publication_of(e))
            .map(|p| p.offset)
            .collect();
        assert_eq!(pubs, [1, 2, 4, 1]);
    }

    #[test]
    fn a_read_takes_over_exactly_what_was_held_after_its_top() {
        let mut r = RemoteStream {
            pending: 1,
            ..RemoteStream::default()
        };
        r.hold(pushes(&[env(3, "a", "3"), env(4, "a", "4")]), 1 << 20);
        r.hold(pushes(&[env(5, "a", "5")]), 1 << 20);
        // Read before any of it: all of it follows the reply.
        let (a, last) = r.handover(&top(2, "a"));
        assert!(!a.insufficient);
        assert_eq!(offsets_in(&a.frames), [3, 4, 5]);
        assert_eq!(last, 5);
        // Read in the middle: only what came after.
        let (a, last) = r.handover(&top(4, "a"));
        assert_eq!(offsets_in(&a.frames), [5]);
        assert_eq!(last, 5);
        // Read after all of it (live delivery lags the read): nothing
        // held is needed, and later live ones up to 9 are skipped.
        let (a, last) = r.handover(&top(9, "a"));
        assert!(a.frames.is_empty() && !a.insufficient);
        assert_eq!(last, 9);
    }

    #[test]
    fn a_broken_stream_or_another_epoch_sends_the_subscriber_to_recovery() {
        let mut r = RemoteStream {
            pending: 1,
            ..RemoteStream::default()
        };
        r.hold(pushes(&[env(1, "b", "1")]), 1 << 20);
        let (a, _) = r.handover(&top(7, "a"));
        assert!(a.insufficient && a.frames.is_empty());
        // Held beyond its bound: broken, nothing kept.
        let mut r = RemoteStream {
            pending: 2,
            ..RemoteStream::default()
        };
        let big = pushes(&[env(1, "a", &"x".repeat(100))]);
        r.hold(big.clone(), 150);
        r.hold(big, 150);
        assert!(r.broken && r.held.is_empty() && r.held_bytes == 0);
        assert!(r.handover(&top(0, "a")).0.insufficient);
        // Nothing is held while nobody is pending; the last one to leave
        // forgets the breakage.
        let mut remote = Some(Box::new(r));
        pending_ended(&mut remote);
        assert!(remote.as_ref().is_some_and(|r| r.broken));
        pending_ended(&mut remote);
        let r = remote.as_mut().unwrap();
        assert!(!r.broken && r.pending == 0);
        r.hold(pushes(&[env(2, "a", "2")]), 1 << 20);
        assert!(r.held.is_empty());
    }
}
