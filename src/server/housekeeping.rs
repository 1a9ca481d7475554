//! When to give memory back after a burst.
//!
//! About once a second the worker trims its pools. After a burst (fewer
//! connections than at the last pass, or pools that had idle buffers to
//! free) it also returns free heap pages for several passes, because a
//! burst's memory is freed over several seconds (timers of closed
//! connections fire late, queues drain); on the last of those passes it
//! moves the steady flow's long-lived small buffers out of the pages the
//! burst scattered them over. This module decides; the worker acts.

/// Interval between passes.
const INTERVAL_MS: u64 = 1000;
/// Passes that still return free heap pages after the last sign of a
/// shrinking worker.
const TRIM_PASSES_AFTER_SHRINK: u8 = 10;

/// What one pass should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pass {
    /// Connections went away: release the slab tail and spare lists.
    pub shrank: bool,
    /// Return free heap pages (and idle buffers' pages).
    pub trim_heap: bool,
    /// The burst is over: rehome long-lived buffers first.
    pub rehome: bool,
}

#[derive(Debug, Default)]
pub struct Housekeeping {
    next_ms: u64,
    conns_at_last: usize,
    trim_passes: u8,
}

impl Housekeeping {
    pub fn new(now: u64) -> Housekeeping {
        Housekeeping {
            next_ms: now + INTERVAL_MS,
            ..Default::default()
        }
    }

    /// Milliseconds until the next pass.
    pub fn due_in(&self, now: u64) -> u64 {
        self.next_ms.saturating_sub(now)
    }

    /// `None` when no pass is due; otherwise what it should do, given the
    /// connections held now and the buffers the pools just freed.
    pub fn pass(&mut self, now: u64, conns: usize, freed: impl FnOnce() -> usize) -> Option<Pass> {
        if now < self.next_ms {
            return None;
        }
        self.next_ms = now + INTERVAL_MS;
        let freed = freed();
        let shrank = conns < self.conns_at_last;
        self.conns_at_last = conns;
        if freed > 0 || shrank {
            self.trim_passes = TRIM_PASSES_AFTER_SHRINK;
        }
        let mut pass = Pass {
            shrank,
            ..Pass::default()
        };
        if self.trim_passes > 0 {
            self.trim_passes -= 1;
            pass.trim_heap = true;
            pass.rehome = self.trim_passes == 0;
        }
        Some(pass)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_followed_by_trims_then_one_rehome() {
        let mut h = Housekeeping::new(0);
        assert_eq!(h.pass(500, 0, || 0), None, "not due yet");
        let quiet = h.pass(1000, 100, || 0).unwrap();
        assert!(!quiet.trim_heap && !quiet.shrank);
        let after_burst = h.pass(2000, 10, || 0).unwrap();
        assert!(after_burst.shrank && after_burst.trim_heap && !after_burst.rehome);
        let mut t = 3000;
        let mut rehomes = 0;
        for _ in 0..TRIM_PASSES_AFTER_SHRINK {
            let p = h.pass(t, 10, || 0).unwrap();
            rehomes += usize::from(p.rehome);
            t += INTERVAL_MS;
        }
        assert_eq!(rehomes, 1);
        assert!(!h.pass(t, 10, || 0).unwrap().trim_heap, "quiet again");
    }

    #[test]
    fn freed_pool_buffers_count_as_a_burst() {
        let mut h = Housekeeping::new(0);
        assert!(h.pass(1000, 5, || 3).unwrap().trim_heap);
    }
}
