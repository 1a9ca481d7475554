//! Channel-keyed state shared by every worker, split into shards by a hash
//! of the channel name, each behind its own `Mutex`: work on one channel
//! takes one lock, work on different channels rarely meets on one, and
//! housekeeping visits the shards in turn with bounded work per call.
//! History and presence both keep their per-channel state this way.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

pub struct Sharded<T> {
    shards: Box<[Mutex<T>]>,
    mask: usize,
    /// Where the next sweep starts, so repeated sweeps with a small budget
    /// reach every shard.
    sweep_cursor: AtomicUsize,
}

impl<T: Default> Sharded<T> {
    /// `shards` rounded up to a power of two (at least one).
    pub fn new(shards: usize) -> Sharded<T> {
        let n = shards.max(1).next_power_of_two();
        Sharded {
            shards: (0..n).map(|_| Mutex::default()).collect(),
            mask: n - 1,
            sweep_cursor: AtomicUsize::new(0),
        }
    }
}

impl<T> Sharded<T> {
    pub fn len(&self) -> usize {
        self.shards.len()
    }

    pub fn is_empty(&self) -> bool {
        self.shards.is_empty()
    }

    /// The shard holding `channel`.
    pub fn of(&self, channel: &str) -> MutexGuard<'_, T> {
        let mut h = DefaultHasher::new();
        channel.hash(&mut h);
        self.lock((h.finish() as usize) & self.mask)
    }

    /// Shard `i` (modulo the shard count). The users keep every shard
    /// consistent before anything that can panic, so a poisoned shard is
    /// still usable and poisoning is not propagated to every later caller.
    pub fn lock(&self, i: usize) -> MutexGuard<'_, T> {
        self.shards[i & self.mask]
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// Visits the shards in turn, starting one further than the last sweep,
    /// while `budget` lasts: `visit(shard, left)` does at most `left` units
    /// of work and returns how many it did.
    pub fn sweep(&self, budget: usize, mut visit: impl FnMut(&mut T, usize) -> usize) {
        let start = self.sweep_cursor.fetch_add(1, Ordering::Relaxed);
        let mut left = budget;
        for k in 0..self.shards.len() {
            if left == 0 {
                break;
            }
            let mut shard = self.lock(start + k);
            left -= visit(&mut shard, left).min(left);
        }
    }

    /// Every shard in turn (statistics).
    pub fn each(&self, mut f: impl FnMut(&T)) {
        for i in 0..self.shards.len() {
            f(&self.lock(i));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_reach_every_shard_within_budget_and_rotate() {
        let s: Sharded<Vec<u32>> = Sharded::new(3);
        assert_eq!(s.len(), 4);
        for i in 0..4 {
            s.lock(i).push(i as u32);
        }
        let mut seen = Vec::new();
        s.sweep(2, |shard, left| {
            assert!(left > 0);
            seen.extend(shard.iter().copied());
            1
        });
        assert_eq!(seen, [0, 1]);
        let mut next = Vec::new();
        s.sweep(1, |shard, _| {
            next.extend(shard.iter().copied());
            1
        });
        assert_eq!(next, [1], "the next sweep starts one shard further");
        // A channel always lands on the same shard.
        s.of("chat:a").push(9);
        assert!(s.of("chat:a").contains(&9));
    }
}
