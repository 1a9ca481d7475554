//! The connection table: a worker's connections in a slab, addressed by
//! tokens that carry a generation (so events for a closed connection that
//! reused a slot are recognised), with the per-iteration lists (dirty:
//! output to write; ready: input to read again) and the timer that wakes
//! each connection's session at its `poll_timeout`.

use super::connection::{Attachment, Connection};
use super::memory::release_vacant_tail;
use super::session::{Delivery, Session};
use super::timer::{DeadlineBuckets, TimerEntry};
use crate::metrics::WorkerMetrics;
use mio::Token;
use slab::Slab;

/// Timer granularity.
const TIMER_GRANULARITY_MS: u64 = 10;
/// Vacant slab entries past the highest open connection worth handing
/// back (about 50 KB of entries).
const SLAB_RELEASE_MIN_ENTRIES: usize = 256;

// Tokens pack a 32-bit slab key and a 32-bit generation.
const _: () = assert!(
    usize::BITS >= 64,
    "wsrelay packs connection tokens into 64-bit words"
);

pub fn token_of(key: usize, generation: u32) -> Token {
    Token(key | ((generation as usize) << 32))
}

pub fn split_token(t: Token) -> (usize, u32) {
    (t.0 & 0xffff_ffff, (t.0 >> 32) as u32)
}

pub struct ConnTable {
    slab: Slab<Connection>,
    next_generation: u32,
    timers: DeadlineBuckets,
    /// Connections with output to write this iteration.
    dirty: Vec<usize>,
    /// Connections to read again (budget used up, or resumed).
    ready: Vec<(usize, u32)>,
    /// The slab's reserved capacity (this worker's share of connections).
    reserve: usize,
    /// One past the highest key used since the tail was last released.
    high: usize,
}

impl ConnTable {
    pub fn new(reserve: usize) -> ConnTable {
        ConnTable {
            // Reserve this worker's share up front: the reservation is
            // virtual memory and only entries in use are touched, so RSS
            // grows by one entry per connection instead of doubling (and
            // copying) the slab as it fills.
            slab: Slab::with_capacity(reserve),
            next_generation: 0,
            timers: DeadlineBuckets::new(TIMER_GRANULARITY_MS),
            dirty: Vec::new(),
            ready: Vec::new(),
            reserve,
            high: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.slab.len()
    }

    pub fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    /// The key and token the next inserted connection will get, or `None`
    /// when keys no longer fit a token.
    pub fn next_slot(&mut self) -> Option<(usize, u32, Token)> {
        let key = self.slab.vacant_key();
        if key > u32::MAX as usize {
            return None;
        }
        let generation = self.next_generation.wrapping_add(1);
        Some((key, generation, token_of(key, generation)))
    }

    /// Inserts a connection built for the slot [`ConnTable::next_slot`]
    /// gave, and arms its timer.
    pub fn insert(&mut self, conn: Connection) -> usize {
        self.next_generation = conn.generation;
        let key = self.slab.insert(conn);
        self.high = self.high.max(key + 1);
        self.sync_timer(key);
        key
    }

    /// The live connection of a token.
    pub fn by_token(&self, token: Token) -> Option<usize> {
        let (key, generation) = split_token(token);
        self.slab
            .get(key)
            .is_some_and(|c| c.generation == generation)
            .then_some(key)
    }

    pub fn get(&self, key: usize) -> Option<&Connection> {
        self.slab.get(key)
    }

    pub fn get_mut(&mut self, key: usize) -> Option<&mut Connection> {
        self.slab.get_mut(key)
    }

    /// Every key is below this (walks of the table in steps).
    pub fn key_bound(&self) -> usize {
        self.slab.capacity()
    }

    pub fn keys(&self) -> Vec<usize> {
        self.slab.iter().map(|(k, _)| k).collect()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Connection> {
        self.slab.iter().map(|(_, c)| c)
    }

    pub fn iter_keyed(&self) -> impl Iterator<Item = (usize, &Connection)> {
        self.slab.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Connection> {
        self.slab.iter_mut().map(|(_, c)| c)
    }

    /// Takes a connection out (its timer entry is cancelled).
    pub fn remove(&mut self, key: usize) -> Option<Connection> {
        let conn = self.slab.try_remove(key)?;
        self.timers.cancel(key, conn.generation, conn.timer_tick);
        Some(conn)
    }

    /// Re-arms the connection's timer at its session's `poll_timeout`
    /// (nothing to do when it did not move, the common case).
    pub fn sync_timer(&mut self, key: usize) {
        let Some(conn) = self.slab.get_mut(key) else {
            return;
        };
        let tick = conn
            .session
            .poll_timeout()
            .map_or(0, |at| self.timers.tick_for(at));
        if tick == conn.timer_tick {
            return;
        }
        self.timers.cancel(key, conn.generation, conn.timer_tick);
        conn.timer_tick = match conn.session.poll_timeout() {
            Some(at) => self.timers.insert(key, conn.generation, at),
            None => 0,
        };
    }

    /// Milliseconds until the next timer is due.
    pub fn next_due_in(&self, now: u64) -> Option<u64> {
        self.timers.next_due_in(now)
    }

    /// Connections whose timer is due (stale entries skipped).
    pub fn expire(&mut self, now: u64, due: &mut Vec<TimerEntry>) {
        self.timers.expire(now, due);
        due.retain(|e| {
            let key = e.key as usize;
            match self.slab.get_mut(key) {
                Some(c) if c.generation == e.generation && c.timer_tick == e.tick => {
                    c.timer_tick = 0;
                    true
                }
                _ => false,
            }
        });
    }

    pub fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.slab.get_mut(key) {
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// The next connection with output to write this iteration.
    pub fn pop_dirty(&mut self) -> Option<usize> {
        while let Some(key) = self.dirty.pop() {
            if let Some(conn) = self.slab.get_mut(key) {
                if conn.dirty {
                    conn.dirty = false;
                    return Some(key);
                }
            }
        }
        None
    }

    pub fn has_dirty(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// Reads the connection again this iteration.
    pub fn push_ready(&mut self, key: usize) {
        if let Some(conn) = self.slab.get_mut(key) {
            if !conn.in_ready {
                conn.in_ready = true;
                self.ready.push((key, conn.generation));
            }
        }
    }

    pub fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// The connections to read again (the list is emptied).
    pub fn take_ready(&mut self) -> Vec<(usize, u32)> {
        let ready = std::mem::take(&mut self.ready);
        for &(key, generation) in &ready {
            if let Some(c) = self.slab.get_mut(key) {
                if c.generation == generation {
                    c.in_ready = false;
                }
            }
        }
        ready
    }

    /// Hands a broadcast to a member's session. A queue that looks full is
    /// written first, before it is judged: output is normally written once
    /// per iteration, and a burst read in one iteration must not make a
    /// client that reads promptly look slow.
    pub fn deliver(
        &mut self,
        key: usize,
        mut send: impl FnMut(&mut Session) -> Delivery,
        metrics: &WorkerMetrics,
    ) -> Delivery {
        let Some(conn) = self.slab.get_mut(key) else {
            return Delivery::Ignored;
        };
        let mut d = send(&mut conn.session);
        let mut flushed = false;
        if d == Delivery::Full {
            conn.flush(metrics);
            flushed = true;
            d = send(&mut conn.session);
        }
        if (d == Delivery::Queued || flushed) && !conn.dirty {
            conn.dirty = true;
            self.dirty.push(key);
        }
        d
    }

    /// Applies the slow-consumer policy to a member that missed `missed`
    /// messages.
    pub fn slow_consumer(&mut self, key: usize, missed: u64, now: u64) {
        if let Some(conn) = self.slab.get_mut(key) {
            conn.session.slow_consumer(missed, now);
            self.mark_dirty(key);
            self.sync_timer(key);
        }
    }

    /// The epoch of the last batch a room member published into.
    pub fn published_epoch(&self, key: usize) -> Option<u32> {
        self.slab
            .get(key)
            .and_then(|c| c.membership())
            .map(|m| m.published_epoch)
    }

    /// A protocol subscriber moved within its room's subscriber list.
    pub fn set_subscriber_slot(&mut self, key: usize, room_id: u64, slot: u32) {
        if let Some(Some(Attachment::Client(c))) = self.slab.get_mut(key).map(|c| &mut c.attachment)
        {
            if let Some(sub) = c.sub_mut(room_id) {
                sub.slot = slot;
            }
        }
    }

    /// A member moved within its room's receiver list.
    pub fn set_slot(&mut self, key: usize, slot: u32) {
        if let Some(Some(Attachment::Room(m))) = self.slab.get_mut(key).map(|c| &mut c.attachment) {
            m.slot = slot;
        }
    }

    /// After a burst: hands back the slab's vacant tail and the lists'
    /// spare capacity.
    pub fn release_memory(&mut self, keep: usize) {
        if self.high >= self.slab.len() + SLAB_RELEASE_MIN_ENTRIES {
            self.high = release_vacant_tail(&mut self.slab, self.reserve);
        }
        self.dirty.shrink_to(keep);
        self.ready.shrink_to(keep);
        self.timers.release_spare();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_carry_key_and_generation() {
        let t = token_of(12345, 0xdead_beef);
        assert_eq!(split_token(t), (12345, 0xdead_beef));
        assert_ne!(token_of(1, 1), token_of(1, 2));
    }
}
