//! Per-channel publication history and stream recovery (Centrifugo client
//! protocol v2 semantics), sans-IO: time comes in as `now_ms`.
//!
//! Every channel with history is a *stream*: a monotonic `offset` (the
//! first publication is 1) and an `epoch` string naming this incarnation of
//! the stream. When the stream is lost (TTL expiry, restart) the next one
//! gets a new epoch and starts again at offset 1, so a client holding an old
//! position learns that it cannot recover from it instead of silently
//! skipping data (Centrifugo docs, "History and recovery": "As soon as the
//! underlying engine loses data epoch field will change for a stream").
//!
//! Retained publications of a stream are always a *contiguous suffix* ending
//! at the top offset: the size cap, the global byte cap and expiry only
//! remove from the front (or the whole stream). So "is everything after
//! offset `x` still here?" is one comparison with the front offset, and a
//! recovery can never present a set with a hole in the middle as complete.
//!
//! Concurrency: [`History`] is shared by all workers (`Arc<History>`), and
//! split into shards, each a `Mutex` over the streams whose name hashes to
//! it, so publishers into different channels rarely meet on one lock while
//! publishers into the same channel are serialised by it (that is what
//! makes offsets gap-free and stream order equal offset order).
//!
//! Bounds: per-stream `size` and `ttl_ms` ([`StreamOptions`]), and a global
//! byte cap ([`HistoryConfig::max_bytes`]), enforced as an equal budget per
//! shard so that enforcing it never takes more than one lock: the sum of
//! the shard budgets is the global cap, so the bound is strict. Over budget,
//! the oldest retained publications *of that shard* are evicted (see
//! [`History::publish_with`]). Eviction never changes offsets or epochs; it
//! only moves a stream's front, so later recoveries report
//! `recovered: false` for positions before it.

use rand::RngCore;
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, MutexGuard};

use super::sharded::Sharded;

mod merge;
mod types;
pub use merge::{Insufficient, LiveStep, RecoveryMerge};
pub use types::{
    EpochId, HistoryConfig, HistoryError, HistoryResult, HistoryStats, Payload, Position,
    Publication, Recovery, StreamOptions, StreamPosition,
};

#[cfg(test)]
mod tests;

/// Bytes counted per retained entry on top of its payload.
const ENTRY_OVERHEAD: usize = std::mem::size_of::<Entry>();

struct Entry {
    offset: u64,
    /// Shard-wide append order: the key of the eviction index.
    stamp: u64,
    payload: Payload,
}

struct ChannelStream {
    name: Arc<str>,
    epoch: EpochId,
    /// Distinguishes incarnations with the same name in the expiry heap.
    incarnation: u64,
    top: u64,
    entries: VecDeque<Entry>,
    expires_at: u64,
}

impl ChannelStream {
    /// Offset of the oldest retained publication (`top + 1` if none).
    fn front_offset(&self) -> u64 {
        self.entries.front().map_or(self.top + 1, |e| e.offset)
    }

    fn position(&self) -> StreamPosition {
        StreamPosition {
            offset: self.top,
            epoch: self.epoch.clone(),
        }
    }
}

#[derive(Default)]
struct Shard {
    streams: HashMap<Arc<str>, ChannelStream>,
    /// (stamp of front entry, channel) of every non-empty stream: the
    /// first element is the oldest retained publication in the shard.
    fronts: BTreeSet<(u64, Arc<str>)>,
    /// Min-heap of (expires_at, incarnation, channel), at most one entry per
    /// stream incarnation; stale entries are skipped when popped.
    expiry: BinaryHeap<Reverse<(u64, u64, Arc<str>)>>,
    next_stamp: u64,
    stats: HistoryStats,
}

impl Shard {
    fn entry_bytes(e: &Entry) -> u64 {
        (e.payload.len() + ENTRY_OVERHEAD) as u64
    }

    /// Drops the front entry of `name`, keeping the index and stats right.
    fn pop_front(&mut self, name: &Arc<str>) -> bool {
        let Some(s) = self.streams.get_mut(name) else {
            return false;
        };
        let Some(e) = s.entries.pop_front() else {
            return false;
        };
        self.fronts.remove(&(e.stamp, name.clone()));
        if let Some(next) = s.entries.front() {
            self.fronts.insert((next.stamp, name.clone()));
        }
        self.stats.bytes -= Self::entry_bytes(&e);
        self.stats.publications -= 1;
        true
    }

    fn remove_stream(&mut self, name: &str) {
        if let Some((name, s)) = self.streams.remove_entry(name) {
            if let Some(f) = s.entries.front() {
                self.fronts.remove(&(f.stamp, name));
            }
            for e in &s.entries {
                self.stats.bytes -= Self::entry_bytes(e);
            }
            self.stats.publications -= s.entries.len() as u64;
            self.stats.streams -= 1;
        }
    }

    /// Removes `name` if its TTL has passed (reads and writes check this
    /// themselves, so the answer is exact whatever the sweep's pace).
    fn expire_if_due(&mut self, name: &str, now_ms: u64) {
        if self
            .streams
            .get(name)
            .is_some_and(|s| s.expires_at <= now_ms)
        {
            self.remove_stream(name);
            self.stats.expired_streams += 1;
        }
    }
}

/// Per-channel history of the whole process. See the module docs.
pub struct History {
    shards: Sharded<Shard>,
    shard_budget: u64,
    empty_stream_ttl_ms: u64,
    epoch_seed: u64,
    epoch_counter: AtomicU64,
}

impl History {
    pub fn new(config: HistoryConfig) -> Self {
        let n = config.shards.max(1).next_power_of_two();
        let shard_budget = if config.max_bytes == 0 {
            u64::MAX
        } else {
            (config.max_bytes / n).max(1) as u64
        };
        History {
            shards: Sharded::new(n),
            shard_budget,
            empty_stream_ttl_ms: config.empty_stream_ttl_ms,
            epoch_seed: rand::thread_rng().next_u64(),
            epoch_counter: AtomicU64::new(0),
        }
    }

    fn shard(&self, channel: &str) -> MutexGuard<'_, Shard> {
        // A panic under the lock leaves the shard consistent enough to go on
        // (every mutation keeps the stats and index in step before it can
        // panic), which is why `Sharded` does not propagate poisoning.
        self.shards.of(channel)
    }

    /// A new epoch: 64 bits from a per-process random seed and a counter,
    /// mixed by a bijection (so unique within the process, unpredictable
    /// across restarts), as 13 base32 characters.
    fn new_epoch(&self) -> (EpochId, u64) {
        const ALPHABET: &[u8; 32] = b"abcdefghijklmnopqrstuvwxyz234567";
        let n = self.epoch_counter.fetch_add(1, Ordering::Relaxed);
        let mut x = self.epoch_seed ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        x ^= x >> 31;
        let s: String = (0..13)
            .map(|i| ALPHABET[((x >> (i * 5)) & 31) as usize] as char)
            .collect();
        (EpochId::from(s.as_str()), n)
    }

    /// The live stream of `channel`, created (new epoch, offset 0) if absent
    /// or expired, with `ttl_ms` as its lifetime when created.
    fn stream<'a>(
        &self,
        shard: &'a mut Shard,
        channel: &str,
        now_ms: u64,
        ttl_ms: u64,
    ) -> (&'a mut ChannelStream, Arc<str>) {
        shard.expire_if_due(channel, now_ms);
        if !shard.streams.contains_key(channel) {
            let (epoch, incarnation) = self.new_epoch();
            let name: Arc<str> = channel.into();
            let expires_at = now_ms.saturating_add(ttl_ms);
            shard
                .expiry
                .push(Reverse((expires_at, incarnation, name.clone())));
            shard.streams.insert(
                name.clone(),
                ChannelStream {
                    name: name.clone(),
                    epoch,
                    incarnation,
                    top: 0,
                    entries: VecDeque::new(),
                    expires_at,
                },
            );
            shard.stats.streams += 1;
        }
        let s = shard.streams.get_mut(channel).expect("present");
        let name = s.name.clone();
        (s, name)
    }

    /// [`publish_with`](Self::publish_with) without a fan-out hook.
    pub fn publish(
        &self,
        channel: &str,
        payload: Payload,
        now_ms: u64,
        opts: StreamOptions,
    ) -> Position {
        self.publish_with(channel, payload, now_ms, opts, |pos, _| pos.clone())
    }

    /// Appends `payload` to `channel`'s stream at the next offset and calls
    /// `fan_out(position, payload)` **before releasing the stream's lock**.
    ///
    /// Why a closure: offsets are assigned under the lock, so they are
    /// gap-free and the stream order equals offset order. But two
    /// publishers on different workers that get offsets 7 and 8 would race
    /// to hand their messages to the cross-worker queues, and a subscriber
    /// could receive 8 before 7. Handing the publication to the fan-out
    /// (e.g. `try_send` on each destination worker's MPSC queue) inside
    /// `fan_out` makes every queue receive the channel's publications in
    /// offset order. Returning a sequence number instead would push a
    /// reordering buffer onto every receiver. `fan_out` must be short and
    /// must not call back into this `History` (same lock: deadlock).
    /// Receivers still check contiguity ([`RecoveryMerge`]) because a
    /// sender-side overflow queue can reorder messages between senders.
    ///
    /// Bounds, in this order: the stream keeps at most `opts.size`
    /// publications (oldest dropped); its expiry moves to
    /// `now_ms + opts.ttl_ms`; then, while the shard is over its share of
    /// the global byte cap, the shard's oldest retained publication (by
    /// append order, whatever its channel) is evicted, which may include
    /// this one if it alone is larger than the budget. Evicting instead of
    /// refusing keeps publishing available and the newest data, which is
    /// what recovering clients need; refusing to store would also leave a
    /// hole in the middle of the stream.
    pub fn publish_with<R>(
        &self,
        channel: &str,
        payload: Payload,
        now_ms: u64,
        opts: StreamOptions,
        fan_out: impl FnOnce(&Position, &Payload) -> R,
    ) -> R {
        let batch = std::slice::from_ref(&payload);
        self.publish_batch(channel, batch, now_ms, opts, |first| {
            fan_out(first, &payload)
        })
    }

    /// Appends `payloads` at consecutive offsets (one lock for the batch)
    /// and calls `fan_out(first)` under the lock, as
    /// [`publish_with`](Self::publish_with) does for one: the batch's
    /// publications have offsets `first.offset ..` in order, in one epoch.
    pub fn publish_batch<R>(
        &self,
        channel: &str,
        payloads: &[Payload],
        now_ms: u64,
        opts: StreamOptions,
        fan_out: impl FnOnce(&Position) -> R,
    ) -> R {
        let mut guard = self.shard(channel);
        let shard = &mut *guard;
        let (stream, name) = self.stream(shard, channel, now_ms, opts.ttl_ms);
        let first = StreamPosition {
            offset: stream.top + 1,
            epoch: stream.epoch.clone(),
        };
        for payload in payloads {
            let stamp = shard.next_stamp;
            shard.next_stamp += 1;
            let stream = shard.streams.get_mut(&*name).expect("created above");
            stream.top += 1;
            stream.expires_at = now_ms.saturating_add(opts.ttl_ms);
            let was_empty = stream.entries.is_empty();
            let bytes = (payload.len() + ENTRY_OVERHEAD) as u64;
            stream.entries.push_back(Entry {
                offset: stream.top,
                stamp,
                payload: payload.clone(),
            });
            let excess = stream.entries.len().saturating_sub(opts.size);
            if was_empty {
                shard.fronts.insert((stamp, name.clone()));
            }
            shard.stats.bytes += bytes;
            shard.stats.publications += 1;
            for _ in 0..excess {
                shard.pop_front(&name);
            }
            while shard.stats.bytes > self.shard_budget {
                let Some((_, victim)) = shard.fronts.first().cloned() else {
                    break;
                };
                shard.pop_front(&victim);
                shard.stats.cap_evictions += 1;
            }
        }
        fan_out(&first)
    }

    /// Centrifugo's `history_remove`: drops the retained publications and
    /// keeps the position (offset and epoch), so clients still recover
    /// correctly: they are told `recovered: false` for the removed range.
    pub fn remove(&self, channel: &str) {
        let mut guard = self.shard(channel);
        let shard = &mut *guard;
        let Some(stream) = shard.streams.get(channel) else {
            return;
        };
        let name = stream.name.clone();
        while shard
            .streams
            .get(&*name)
            .is_some_and(|s| !s.entries.is_empty())
        {
            shard.pop_front(&name);
        }
    }

    /// Centrifugo's history call. `limit`: `None` = no limit, `Some(0)` =
    /// only the top position. Without `since`: oldest first, or newest first
    /// if `reverse`. With `since`: the publications after `since.offset`
    /// (oldest first), or before it (newest first) if `reverse`.
    ///
    /// Errors as Centrifuge's `Node.history`: reverse from offset 0 is a bad
    /// request; a `since` with a non-empty epoch other than the current one
    /// is an unrecoverable position. As there, a trimmed range is *not* an
    /// error here: the first offset returned shows where the stream starts;
    /// [`recover`](Self::recover) is the call that judges completeness.
    pub fn history(
        &self,
        channel: &str,
        since: Option<&StreamPosition>,
        limit: Option<usize>,
        reverse: bool,
        now_ms: u64,
    ) -> Result<HistoryResult, HistoryError> {
        if reverse && since.is_some_and(|s| s.offset == 0) {
            return Err(HistoryError::BadRequest);
        }
        let mut guard = self.shard(channel);
        let (stream, _) = self.stream(&mut guard, channel, now_ms, self.empty_stream_ttl_ms);
        let position = stream.position();
        if let Some(s) = since {
            if !s.epoch.as_str().is_empty() && s.epoch != stream.epoch {
                return Err(HistoryError::UnrecoverablePosition { position });
            }
        }
        let limit = limit.unwrap_or(usize::MAX);
        let front = stream.front_offset();
        let clone = |e: &Entry| Publication {
            offset: e.offset,
            payload: e.payload.clone(),
        };
        // Entry for offset o sits at index o - front (contiguous suffix).
        let publications = match (since, reverse) {
            (None, false) => stream.entries.iter().take(limit).map(clone).collect(),
            (None, true) => stream.entries.iter().rev().take(limit).map(clone).collect(),
            (Some(s), false) => {
                let skip = s.offset.saturating_add(1).saturating_sub(front) as usize;
                stream
                    .entries
                    .iter()
                    .skip(skip)
                    .take(limit)
                    .map(clone)
                    .collect()
            }
            (Some(s), true) => {
                let keep = s
                    .offset
                    .saturating_sub(front)
                    .min(stream.entries.len() as u64);
                let n = keep as usize;
                stream
                    .entries
                    .range(..n)
                    .rev()
                    .take(limit)
                    .map(clone)
                    .collect()
            }
        };
        Ok(HistoryResult {
            publications,
            position,
        })
    }

    /// Recovery for `subscribe { recover: true, offset, epoch }`.
    ///
    /// `recovered` is true only if the epoch matches and every publication
    /// in `(since.offset, top]` is still retained and fits in
    /// `max_publications` (0 = no limit, Centrifugo's
    /// `recovery_max_publication_limit`) — the rule of Centrifuge's
    /// `isRecovered`: the first publication returned is `since.offset + 1`,
    /// or none were missed.
    ///
    /// When not recovered, like Centrifuge we still return what we have so
    /// the client can catch up as far as possible, but flagged
    /// `recovered: false` so it is never taken as complete: the newest
    /// publications after `since.offset`, at most `max_publications`, in
    /// order and ending at the top (so they join the live stream without a
    /// gap). On an epoch mismatch none are returned: offsets of another
    /// epoch say nothing about this one (Centrifuge answers
    /// `ErrorUnrecoverablePosition` from the history read and subscribes
    /// with `recovered: false` and no publications).
    pub fn recover(
        &self,
        channel: &str,
        since: &StreamPosition,
        now_ms: u64,
        max_publications: usize,
    ) -> Recovery {
        let mut guard = self.shard(channel);
        let (stream, _) = self.stream(&mut guard, channel, now_ms, self.empty_stream_ttl_ms);
        let position = stream.position();
        if since.epoch != stream.epoch || since.offset > stream.top {
            return Recovery {
                publications: Vec::new(),
                recovered: false,
                position,
            };
        }
        let max = if max_publications == 0 {
            usize::MAX
        } else {
            max_publications
        };
        let missed = stream.top - since.offset;
        let first_available = (since.offset + 1).max(stream.front_offset());
        let available = (stream.top + 1 - first_available) as usize;
        let recovered = available as u64 == missed && available <= max;
        let take = available.min(max);
        let publications = stream
            .entries
            .iter()
            .skip(stream.entries.len() - take)
            .map(|e| Publication {
                offset: e.offset,
                payload: e.payload.clone(),
            })
            .collect();
        Recovery {
            publications,
            recovered,
            position,
        }
    }

    /// Housekeeping: removes streams whose TTL has passed, popping at most
    /// `budget` expiry entries in all (so one call never stalls a worker),
    /// visiting shards round-robin across calls. Returns streams removed.
    pub fn expire(&self, now_ms: u64, budget: usize) -> usize {
        let mut removed = 0;
        self.shards.sweep(budget, |shard, left| {
            let mut used = 0;
            while used < left {
                let Some(Reverse((at, inc, _))) = shard.expiry.peek() else {
                    break;
                };
                if *at > now_ms {
                    break;
                }
                let inc = *inc;
                let Reverse((_, _, name)) = shard.expiry.pop().expect("peeked");
                used += 1;
                match shard.streams.get(&*name) {
                    Some(s) if s.incarnation == inc && s.expires_at <= now_ms => {
                        shard.remove_stream(&name);
                        shard.stats.expired_streams += 1;
                        removed += 1;
                    }
                    // Published since: wait for the new expiry.
                    Some(s) if s.incarnation == inc => {
                        let at = s.expires_at;
                        shard.expiry.push(Reverse((at, inc, name)));
                    }
                    // Gone or replaced: the new incarnation has its own entry.
                    _ => {}
                }
            }
            used
        });
        removed
    }

    /// Counters summed over shards (locks each shard briefly).
    pub fn stats(&self) -> HistoryStats {
        let mut t = HistoryStats::default();
        self.shards.each(|s| {
            let s = s.stats;
            t.bytes += s.bytes;
            t.streams += s.streams;
            t.publications += s.publications;
            t.cap_evictions += s.cap_evictions;
            t.expired_streams += s.expired_streams;
        });
        t
    }
}
