//! Gap detection on a channel's live subscription (sans-IO). Publications
//! with history carry `offset.epoch`; per channel, a node remembers the
//! last offset it delivered and classifies each live one, so a gap (a
//! dropped message, a lost connection) is never silently skipped: the
//! engine fills it from the stream ([`super::BrokerPort::history`] since
//! the last delivered offset) or marks the channel's subscribers for
//! recovery.

/// What a live publication means for the channel's sequence.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// The first position seen (nothing to compare with): deliver.
    First,
    /// The next offset: deliver.
    Next,
    /// At or below the last delivered offset of this epoch (already
    /// delivered, e.g. by a history fill): drop it.
    Duplicate,
    /// Offsets `from..=to` were not seen: fill them from history (then
    /// deliver this one) or recover the channel's subscribers.
    Gap { from: u64, to: u64 },
    /// Another epoch: the stream was lost (Redis restarted empty, TTL):
    /// subscribers positioned in the old epoch cannot recover.
    NewEpoch,
}

/// The live position of one channel on this node.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LiveSequence {
    epoch: Option<String>,
    last: u64,
}

impl LiveSequence {
    pub fn new() -> LiveSequence {
        LiveSequence::default()
    }

    /// Positions the sequence (after a history read or recovery): the
    /// next expected offset is `offset + 1`.
    pub fn reset_to(&mut self, offset: u64, epoch: &str) {
        self.epoch = Some(epoch.to_string());
        self.last = offset;
    }

    /// The last delivered position.
    pub fn position(&self) -> Option<(u64, &str)> {
        self.epoch.as_deref().map(|e| (self.last, e))
    }

    /// Classifies a live publication at (`offset`, `epoch`) and advances
    /// (except for duplicates).
    pub fn observe(&mut self, offset: u64, epoch: &str) -> Step {
        let step = match self.epoch.as_deref() {
            None => Step::First,
            Some(e) if e != epoch => Step::NewEpoch,
            Some(_) if offset <= self.last => return Step::Duplicate,
            Some(_) if offset == self.last + 1 => Step::Next,
            Some(_) => Step::Gap {
                from: self.last + 1,
                to: offset - 1,
            },
        };
        self.reset_to(offset, epoch);
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_next_duplicates_gaps_and_epochs() {
        let mut s = LiveSequence::new();
        assert_eq!(s.position(), None);
        assert_eq!(s.observe(5, "e"), Step::First);
        assert_eq!(s.observe(6, "e"), Step::Next);
        assert_eq!(s.observe(6, "e"), Step::Duplicate);
        assert_eq!(s.observe(3, "e"), Step::Duplicate);
        assert_eq!(s.position(), Some((6, "e")));
        assert_eq!(s.observe(9, "e"), Step::Gap { from: 7, to: 8 });
        assert_eq!(s.observe(10, "e"), Step::Next);
        assert_eq!(s.observe(1, "f"), Step::NewEpoch);
        assert_eq!(s.observe(2, "f"), Step::Next);
        // A history fill positions it: live copies of filled offsets drop.
        s.reset_to(7, "f");
        assert_eq!(s.observe(5, "f"), Step::Duplicate);
        assert_eq!(s.observe(8, "f"), Step::Next);
    }
}
