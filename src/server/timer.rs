//! Deadline buckets: the per-worker timer for handshake, heartbeat and
//! close deadlines.
//!
//! Deadlines are rounded up to a fixed granularity and grouped in buckets
//! kept in a `BTreeMap` keyed by tick. Each expiry pass pops only the
//! buckets that are due, so its cost grows with the number of connections
//! due, not with all connections: at 100k connections with a 30 s ping
//! interval a pass touches the few hundred that fall due, not 100k.
//!
//! Cancellation is lazy. Each connection remembers the one deadline it
//! currently wants; an entry that no longer matches is skipped when its
//! bucket comes due. Activity never touches the timer: the heartbeat
//! handler re-arms from the connection's last activity when it fires.

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
            // Keep a few ordinary-sized vectors for reuse; one that a burst
            // made large is freed rather than kept.
            if self.spare.len() < 64 && v.capacity() <= SPARE_MAX_CAPACITY {
                self.spare.push(v);
            }
        }
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
}
