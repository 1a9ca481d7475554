//! Per publisher, per subscriber sequence accounting: which messages
//! arrived, which twice, which after a later one.
//!
//! The tracker remembers the highest sequence seen plus a 128-message
//! window below it. A sequence below the window cannot be told apart from
//! a duplicate; it is counted as reordered (and as received), which can
//! only under-report loss when a very old duplicate shows up.
//! Loss itself is computed at the end, from the publishers' send counts:
//! `expected - unique`.

#[derive(Clone, Copy, Debug, Default)]
pub struct SeqTracker {
    /// One past the highest sequence seen (0: nothing yet).
    next: u64,
    /// Bit i set: sequence `next - 1 - i` was received.
    window: u128,
    pub unique: u64,
    pub dup: u64,
    pub reordered: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The next expected one, or a jump ahead (a gap that may fill later).
    New,
    /// Arrived after a higher sequence from the same publisher.
    Reordered,
    Duplicate,
}

impl SeqTracker {
    #[inline]
    pub fn record(&mut self, seq: u64) -> Seen {
        if seq >= self.next {
            let shift = seq - self.next + 1;
            self.window = if shift >= 128 {
                0
            } else {
                self.window << shift
            };
            self.window |= 1;
            self.next = seq + 1;
            self.unique += 1;
            return Seen::New;
        }
        let back = self.next - 1 - seq;
        if back < 128 {
            let bit = 1u128 << back;
            if self.window & bit != 0 {
                self.dup += 1;
                return Seen::Duplicate;
            }
            self.window |= bit;
        }
        self.unique += 1;
        self.reordered += 1;
        Seen::Reordered
    }

    /// Highest sequence seen plus one.
    #[cfg(test)]
    pub fn next(&self) -> u64 {
        self.next
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[u64]) -> SeqTracker {
        let mut t = SeqTracker::default();
        for &s in seqs {
            t.record(s);
        }
        t
    }

    #[test]
    fn in_order() {
        let t = run(&[0, 1, 2, 3, 4]);
        assert_eq!((t.unique, t.dup, t.reordered), (5, 0, 0));
        assert_eq!(t.next(), 5);
    }

    #[test]
    fn gap_is_loss_when_never_filled() {
        // 2 and 3 never arrive: loss = expected 6 - unique 4.
        let t = run(&[0, 1, 4, 5]);
        assert_eq!((t.unique, t.dup, t.reordered), (4, 0, 0));
        assert_eq!(6 - t.unique, 2);
    }

    #[test]
    fn late_arrival_is_reordered_not_lost() {
        let t = run(&[0, 2, 1, 3]);
        assert_eq!((t.unique, t.dup, t.reordered), (4, 0, 1));
    }

    #[test]
    fn duplicates_in_and_out_of_order() {
        let mut t = SeqTracker::default();
        assert_eq!(t.record(0), Seen::New);
        assert_eq!(t.record(0), Seen::Duplicate);
        assert_eq!(t.record(5), Seen::New);
        assert_eq!(t.record(3), Seen::Reordered);
        assert_eq!(t.record(3), Seen::Duplicate);
        assert_eq!(t.record(5), Seen::Duplicate);
        assert_eq!((t.unique, t.dup, t.reordered), (3, 3, 1));
    }

    #[test]
    fn window_edges() {
        let mut t = SeqTracker::default();
        t.record(0);
        t.record(127);
        // 0 is exactly 127 back: still inside the window.
        assert_eq!(t.record(0), Seen::Duplicate);
        t.record(128);
        // Now 0 is 128 back: outside, counted as reordered.
        assert_eq!(t.record(0), Seen::Reordered);
        // A huge jump clears the window.
        t.record(10_000);
        assert_eq!(t.record(9_999), Seen::Reordered);
        assert_eq!(t.record(9_999), Seen::Duplicate);
    }
}
