//! Per subscription accounting, kept across reconnections: sequence
//! numbers per publisher (loss, duplicates, order; see `tracker.rs`) and
//! the channel's stream position (offset continuity, epoch, recovery).
//!
//! Offsets are per channel, over all publishers: with history on, the
//! publications a subscriber sees (live, then recovered after a
//! reconnect, then live again) must carry offsets last+1, last+2, ...
//! without holes or repeats.

use super::proto::{PubData, Publication, SubReply};
use crate::tracker::{Seen, SeqTracker};

/// Counters of one subscription (summed over all at the end).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SubAcc {
    /// Offsets skipped: a publication arrived with offset > last + 1, or a
    /// recovery ended below the stream top it reported.
    pub offset_gaps: u64,
    /// Publications with offset <= the last one seen.
    pub offset_repeats: u64,
    /// Valid generator data for another channel or an unknown publisher.
    pub misrouted: u64,
    /// Data that is not a generator payload.
    pub foreign: u64,
    /// Publications delivered in subscribe replies (recovery).
    pub recovered_pubs: u64,
    pub recovered_true: u64,
    pub recovered_false: u64,
    pub epoch_changes: u64,
    /// Publications in a first (non-recovering) subscribe reply.
    pub history_on_subscribe: u64,
}

/// How one publication was taken.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Got {
    New(PubData),
    Reordered(PubData),
    Duplicate,
    Misrouted,
    Foreign,
}

impl Got {
    #[cfg(test)]
    pub fn is_new(&self) -> bool {
        matches!(self, Got::New(_) | Got::Reordered(_))
    }
}

#[derive(Clone, Debug)]
pub struct SubTrack {
    /// Channel index (the `k` in the data).
    pub k: u32,
    pub pubs: Vec<SeqTracker>,
    pub epoch: String,
    /// Highest offset seen (0: none).
    pub offset: u64,
    pub subscribed: bool,
    pub acc: SubAcc,
}

impl SubTrack {
    pub fn new(k: u32, publishers: usize) -> SubTrack {
        SubTrack {
            k,
            pubs: vec![SeqTracker::default(); publishers],
            epoch: String::new(),
            offset: 0,
            subscribed: false,
            acc: SubAcc::default(),
        }
    }

    /// Where to recover from after a reconnect: None without history
    /// (nothing to recover from).
    pub fn recover_from(&self) -> Option<(u64, &str)> {
        (!self.epoch.is_empty()).then_some((self.offset, self.epoch.as_str()))
    }

    pub fn on_pub(&mut self, p: &Publication) -> Got {
        if p.offset > 0 {
            if self.offset > 0 || !self.epoch.is_empty() {
                if p.offset > self.offset + 1 {
                    self.acc.offset_gaps += p.offset - self.offset - 1;
                } else if p.offset <= self.offset {
                    self.acc.offset_repeats += 1;
                }
            }
            self.offset = self.offset.max(p.offset);
        }
        let Some(d) = p.data else {
            self.acc.foreign += 1;
            return Got::Foreign;
        };
        if d.k != self.k || d.p as usize >= self.pubs.len() {
            self.acc.misrouted += 1;
            return Got::Misrouted;
        }
        match self.pubs[d.p as usize].record(d.s) {
            Seen::New => Got::New(d),
            Seen::Reordered => Got::Reordered(d),
            Seen::Duplicate => Got::Duplicate,
        }
    }

    /// A successful subscribe reply. `recovering`: we asked for recovery.
    /// Recovered publications are taken in order and passed to `each`.
    pub fn on_subscribed(&mut self, r: &SubReply, recovering: bool, mut each: impl FnMut(Got)) {
        self.subscribed = true;
        if !recovering {
            // First subscription: the stream position starts here; history
            // from before (an earlier run) is not ours to account.
            self.acc.history_on_subscribe += r.publications.len() as u64;
            self.offset = r.offset;
            self.epoch = r.epoch.clone();
            return;
        }
        if !self.epoch.is_empty() && r.epoch != self.epoch {
            self.acc.epoch_changes += 1;
        }
        if r.recovered {
            self.acc.recovered_true += 1;
        } else {
            self.acc.recovered_false += 1;
        }
        for p in &r.publications {
            self.acc.recovered_pubs += 1;
            each(self.on_pub(p));
        }
        if r.recovered && r.epoch == self.epoch && r.offset > self.offset {
            // Said "recovered" but stopped short of the top it reported.
            self.acc.offset_gaps += r.offset - self.offset;
        }
        // Not recovered (or a new epoch): positions restart at the top;
        // what was missed shows up as sequence loss.
        self.offset = self.offset.max(r.offset);
        if r.epoch != self.epoch {
            self.offset = r.offset;
        }
        self.epoch = r.epoch.clone();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(offset: u64, pb: u32, k: u32, s: u64) -> Publication {
        Publication {
            offset,
            data: Some(PubData { p: pb, k, s, t: 1 }),
        }
    }

    fn reply(epoch: &str, offset: u64, recovered: bool, pubs: Vec<Publication>) -> SubReply {
        SubReply {
            recoverable: true,
            epoch: epoch.into(),
            offset,
            recovered,
            was_recovering: true,
            positioned: false,
            publications: pubs,
        }
    }

    #[test]
    fn live_stream_in_order_is_clean() {
        let mut t = SubTrack::new(3, 2);
        t.on_subscribed(&reply("e", 10, false, vec![]), false, |_| {});
        for i in 0..6u64 {
            assert!(t.on_pub(&p(11 + i, (i % 2) as u32, 3, i / 2)).is_new());
        }
        assert_eq!(t.acc, SubAcc::default());
        assert_eq!(t.offset, 16);
        assert_eq!(t.pubs[0].unique + t.pubs[1].unique, 6);
        assert_eq!(t.recover_from(), Some((16, "e")));
    }

    #[test]
    fn offset_holes_repeats_and_misrouting() {
        let mut t = SubTrack::new(0, 1);
        t.on_subscribed(&reply("e", 0, false, vec![]), false, |_| {});
        assert!(t.on_pub(&p(1, 0, 0, 0)).is_new());
        assert!(t.on_pub(&p(4, 0, 0, 3)).is_new()); // offsets 2, 3 missing
        assert_eq!(t.on_pub(&p(4, 0, 0, 3)), Got::Duplicate);
        assert!(matches!(t.on_pub(&p(3, 0, 0, 2)), Got::Reordered(_)));
        assert_eq!(t.on_pub(&p(5, 0, 1, 0)), Got::Misrouted);
        assert_eq!(t.on_pub(&p(6, 7, 0, 0)), Got::Misrouted);
        assert_eq!(
            t.on_pub(&Publication {
                offset: 7,
                data: None
            }),
            Got::Foreign
        );
        assert_eq!(t.acc.offset_gaps, 2);
        assert_eq!(t.acc.offset_repeats, 2);
        assert_eq!((t.acc.misrouted, t.acc.foreign), (2, 1));
        assert_eq!(t.pubs[0].unique, 3);
        assert_eq!((t.pubs[0].dup, t.pubs[0].reordered), (1, 1));
    }

    #[test]
    fn full_recovery_closes_the_gap() {
        let mut t = SubTrack::new(0, 1);
        t.on_subscribed(&reply("e", 5, false, vec![]), false, |_| {});
        t.on_pub(&p(6, 0, 0, 0));
        t.on_pub(&p(7, 0, 0, 1));
        // Away while 8..=10 were published; recover from 7.
        assert_eq!(t.recover_from(), Some((7, "e")));
        let mut got = Vec::new();
        let r = reply("e", 10, true, (8..=10).map(|o| p(o, 0, 0, o - 6)).collect());
        t.on_subscribed(&r, true, |g| got.push(g));
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(Got::is_new));
        // Live again from 11.
        assert!(t.on_pub(&p(11, 0, 0, 5)).is_new());
        assert_eq!(t.acc.offset_gaps, 0);
        assert_eq!(t.acc.offset_repeats, 0);
        assert_eq!((t.acc.recovered_true, t.acc.recovered_pubs), (1, 3));
        assert_eq!(t.pubs[0].unique, 6);
    }

    #[test]
    fn short_or_duplicated_recovery_is_counted() {
        let mut t = SubTrack::new(0, 1);
        t.on_subscribed(&reply("e", 0, false, vec![]), false, |_| {});
        t.on_pub(&p(1, 0, 0, 0));
        // Claims recovered, top is 4, but returns 1 (again) and 2 only.
        let r = reply("e", 4, true, vec![p(1, 0, 0, 0), p(2, 0, 0, 1)]);
        let mut dups = 0;
        t.on_subscribed(&r, true, |g| dups += (g == Got::Duplicate) as u32);
        assert_eq!(dups, 1);
        assert_eq!(t.acc.offset_repeats, 1);
        // 3 and 4 never came.
        assert_eq!(t.acc.offset_gaps, 2);
        assert_eq!(t.offset, 4);
        // The next live one is continuous with the reported top.
        t.on_pub(&p(5, 0, 0, 4));
        assert_eq!(t.acc.offset_gaps, 2);
    }

    #[test]
    fn unrecovered_or_new_epoch_resets_the_position() {
        let mut t = SubTrack::new(0, 1);
        t.on_subscribed(&reply("e", 0, false, vec![]), false, |_| {});
        t.on_pub(&p(1, 0, 0, 0));
        t.on_subscribed(&reply("f", 50, false, vec![]), true, |_| {});
        assert_eq!((t.acc.recovered_false, t.acc.epoch_changes), (1, 1));
        assert_eq!(t.recover_from(), Some((50, "f")));
        t.on_pub(&p(51, 0, 0, 9));
        assert_eq!(t.acc.offset_gaps, 0);
        // Sequence loss is what shows the miss: 1..=8 never arrived.
        assert_eq!(t.pubs[0].unique, 2);
    }

    #[test]
    fn without_history_there_are_no_offsets() {
        let mut t = SubTrack::new(0, 1);
        t.on_subscribed(&SubReply::default(), false, |_| {});
        assert_eq!(t.recover_from(), None);
        for s in 0..3 {
            assert!(t.on_pub(&p(0, 0, 0, s)).is_new());
        }
        assert_eq!(t.acc, SubAcc::default());
    }
}
