//! Deadline buckets: the per-worker timer for handshake, heartbeat and
//! close deadlines.
//!
//! Deadlines are rounded up to a fixed granularity and grouped in buckets
//! kept in a `BTreeMap` keyed by tick. Each expiry pass pops only the
//! buckets that are due, so its cost grows with the number of connections
//! due, not with all connections: at 100k connections with a 30 s ping
//! interval a pass touches the few hundred that fall due, not 100k.
//!
//! Each connection remembers the one deadline it currently wants, and
//! cancels its entry when it closes or moves to another deadline; the
//! expiry pass still skips an entry that no longer matches. Activity never
//! touches the timer: the heartbeat handler re-arms from the connection's
//! last activity when it fires.

use std::collections::BTreeMap;

/// A timer entry: which connection (slab key + generation) and for which
/// tick it was armed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimerEntry {
    /// Slab key (keys fit in 32 bits: they are part of the mio token).
    pub key: u32,
    pub generation: u32,
    pub tick: u64,
}

/// Largest emptied bucket vector kept for reuse.
const SPARE_MAX_CAPACITY: usize = 256;
/// Emptied bucket vectors kept for reuse.
const SPARE_MAX_COUNT: usize = 16;

pub struct DeadlineBuckets {
    granularity_ms: u64,
    buckets: BTreeMap<u64, Vec<TimerEntry>>,
    /// Emptied vectors kept for reuse.
    spare: Vec<Vec<TimerEntry>>,
    len: usize,
}

impl DeadlineBuckets {
    pub fn new(granularity_ms: u64) -> Self {
        DeadlineBuckets {
            granularity_ms: granularity_ms.max(1),
            buckets: BTreeMap::new(),
            spare: Vec::new(),
            len: 0,
        }
    }

    /// The tick a deadline at `ms` falls in (rounded up: never early).
    pub fn tick_for(&self, ms: u64) -> u64 {
        ms.div_ceil(self.granularity_ms)
    }

    /// Arms an entry for the deadline `at_ms`; returns its tick, which the
    /// caller stores to recognise the live entry later.
    pub fn insert(&mut self, key: usize, generation: u32, at_ms: u64) -> u64 {
        let tick = self.tick_for(at_ms);
        let spare = &mut self.spare;
        self.buckets
            .entry(tick)
            .or_insert_with(|| spare.pop().unwrap_or_default())
            .push(TimerEntry {
                key: key as u32,
                generation,
                tick,
            });
        self.len += 1;
        tick
    }

    /// Removes the entry armed for (`key`, `generation`) at `tick`, if it
    /// is still there. Called when a connection closes or moves to another
    /// deadline, so timer memory follows the connections that are open
    /// rather than how many came and went in the last heartbeat interval.
    /// Costs a map lookup and a scan of one bucket (newest entries first).
    /// Tick 0 (nothing armed) is never a bucket, so it is a no-op.
    pub fn cancel(&mut self, key: usize, generation: u32, tick: u64) -> bool {
        let Some(bucket) = self.buckets.get_mut(&tick) else {
            return false;
        };
        let Some(i) = bucket
            .iter()
            .rposition(|e| e.key as usize == key && e.generation == generation)
        else {
            return false;
        };
        bucket.swap_remove(i);
        self.len -= 1;
        if bucket.is_empty() {
            if let Some(v) = self.buckets.remove(&tick) {
                self.recycle(v);
            }
        }
        true
    }

    /// Keeps an emptied bucket vector for reuse: a few ordinary-sized
    /// ones, while one that a burst made large is freed.
    fn recycle(&mut self, v: Vec<TimerEntry>) {
        if self.spare.len() < SPARE_MAX_COUNT && v.capacity() <= SPARE_MAX_CAPACITY {
            self.spare.push(v);
        }
    }

    /// Milliseconds until the earliest bucket is due (0 if overdue), or
    /// `None` when nothing is armed.
    pub fn next_due_in(&self, now_ms: u64) -> Option<u64> {
        self.buckets
            .keys()
            .next()
            .map(|&t| (t * self.granularity_ms).saturating_sub(now_ms))
    }

    /// Moves every entry due at `now_ms` into `out`.
    pub fn expire(&mut self, now_ms: u64, out: &mut Vec<TimerEntry>) {
        let now_tick = now_ms / self.granularity_ms;
        while let Some(entry) = self.buckets.first_entry() {
            if *entry.key() > now_tick {
                break;
            }
            let mut v = entry.remove();
            self.len -= v.len();
            out.append(&mut v);
            self.recycle(v);
        }
    }

    /// Frees the vectors kept for reuse (after a burst: they were
    /// allocated while the heap was large and would pin its pages).
    pub fn release_spare(&mut self) {
        self.spare = Vec::new();
    }

    /// Entries armed (including stale ones not yet skipped).
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_fire_at_or_after_their_deadline_never_before() {
        let mut t = DeadlineBuckets::new(10);
        t.insert(1, 0, 95);
        t.insert(2, 0, 100);
        t.insert(3, 0, 101);
        let mut out = Vec::new();
        t.expire(99, &mut out);
        assert!(out.is_empty());
        t.expire(100, &mut out);
        let keys: Vec<_> = out.iter().map(|e| e.key).collect();
        assert_eq!(keys, vec![1, 2]);
        assert_eq!(std::mem::size_of::<TimerEntry>(), 16);
        out.clear();
        t.expire(109, &mut out);
        assert!(out.is_empty());
        t.expire(110, &mut out);
        assert_eq!(out.len(), 1);
        assert!(t.is_empty());
    }

    #[test]
    fn expiry_touches_only_due_buckets() {
        let mut t = DeadlineBuckets::new(10);
        for k in 0..10_000 {
            t.insert(k, 0, 30_000 + k as u64);
        }
        t.insert(99_999, 0, 50);
        let mut out = Vec::new();
        t.expire(60, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(t.len(), 10_000);
        assert_eq!(t.next_due_in(60), Some(30_000 - 60));
    }

    #[test]
    fn spare_vectors_are_bounded_and_released_after_a_burst() {
        let mut t = DeadlineBuckets::new(10);
        // A burst spread over many buckets: each emptied vector is a
        // candidate for reuse, but only a few are kept.
        for k in 0..1_000 {
            t.insert(k, 0, 10 * k as u64);
        }
        let mut out = Vec::new();
        t.expire(10_000, &mut out);
        assert_eq!(out.len(), 1_000);
        assert_eq!(t.spare.len(), SPARE_MAX_COUNT);
        t.release_spare();
        assert_eq!(t.spare.capacity(), 0);
        // Still works afterwards.
        t.insert(1, 0, 20_000);
        out.clear();
        t.expire(20_000, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn cancelled_entries_are_gone_and_empty_buckets_freed() {
        let mut t = DeadlineBuckets::new(10);
        let a = t.insert(1, 7, 100);
        let b = t.insert(2, 7, 100);
        let c = t.insert(3, 7, 250);
        assert_eq!(t.len(), 3);
        // Wrong generation or tick, or tick 0 (nothing armed): nothing happens.
        assert!(!t.cancel(1, 7, 0));
        assert!(!t.cancel(1, 8, a));
        assert!(!t.cancel(1, 7, c));
        assert!(t.cancel(1, 7, a));
        assert!(!t.cancel(1, 7, a), "already gone");
        assert_eq!(t.len(), 2);
        assert!(t.cancel(3, 7, c));
        assert_eq!(t.buckets.len(), 1, "the emptied bucket is dropped");
        assert_eq!(t.next_due_in(0), Some(100));
        let mut out = Vec::new();
        t.expire(1_000, &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].key, 2);
        assert_eq!(out[0].tick, b);
        assert!(t.is_empty());
        assert_eq!(t.next_due_in(0), None);
    }

    #[test]
    fn churn_leaves_nothing_behind_when_entries_are_cancelled() {
        let mut t = DeadlineBuckets::new(10);
        for k in 0..10_000u64 {
            let tick = t.insert(k as usize, k as u32, 30_000 + k);
            assert!(t.cancel(k as usize, k as u32, tick));
        }
        assert!(t.is_empty());
        assert!(t.buckets.is_empty());
    }
}
