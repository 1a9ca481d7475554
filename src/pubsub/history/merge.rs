//! Joining a recovery answer with the live publications of its channel, so
//! that none is lost and none is delivered twice.
//!
//! The protocol (what the engine must do, in this order, on one worker):
//!
//! 1. register the connection as a subscriber of the channel and create a
//!    [`RecoveryMerge`] for it: from now on every live publication of the
//!    channel reaches this connection and goes through
//!    [`RecoveryMerge::on_live`] (it is buffered until step 3);
//! 2. read the snapshot: [`History::recover`](super::History::recover) (or
//!    `history`), which returns publications up to a top position;
//! 3. call [`RecoveryMerge::on_snapshot`] with that top; send the subscribe
//!    reply with the snapshot's publications followed by what it returns;
//! 4. from then on, deliver what [`RecoveryMerge::on_live`] says.
//!
//! Why this is complete: a publication with offset > top was appended after
//! the snapshot read, hence after the registration, so its fan-out finds the
//! subscriber and it arrives live. One with offset <= top is in the snapshot
//! (or was reported missing by `recovered: false`) and is dropped if it also
//! arrives live. The live stream must then continue at top + 1 without a
//! hole; a hole or an epoch change means a publication was lost between
//! the history and the subscriber (queue overflow reordering, stream reset)
//! and the answer is [`LiveStep::Insufficient`]: unsubscribe the client with
//! Centrifugo's "insufficient state" so it resubscribes and recovers,
//! exactly what Centrifuge does when its position check fails.

use super::{EpochId, StreamPosition};

/// What to do with one live publication.
#[derive(Debug, PartialEq, Eq)]
pub enum LiveStep<T> {
    /// Send it to the client now.
    Deliver(T),
    /// Held until the snapshot is known ([`RecoveryMerge::on_snapshot`]).
    Buffered,
    /// Already covered by the snapshot (or delivered): drop it.
    Skip,
    /// The stream cannot be continued: resubscribe the client.
    Insufficient,
}

/// The live stream cannot be joined to the snapshot without a hole.
#[derive(Debug, PartialEq, Eq)]
pub struct Insufficient;

enum State<T> {
    Buffering(Vec<(u64, EpochId, T)>),
    Live { epoch: EpochId, next: u64 },
    Broken,
}

/// Per (connection, channel) state while a subscription with recovery is
/// being answered, then its position check. Pure: no lock, no clock.
pub struct RecoveryMerge<T> {
    state: State<T>,
}

impl<T> Default for RecoveryMerge<T> {
    fn default() -> Self {
        Self::new()
    }
}

impl<T> RecoveryMerge<T> {
    /// Created when the connection is registered as a subscriber, *before*
    /// the snapshot is read.
    pub fn new() -> Self {
        RecoveryMerge {
            state: State::Buffering(Vec::new()),
        }
    }

    /// A live publication at `pos` reached this connection.
    pub fn on_live(&mut self, pos: &StreamPosition, item: T) -> LiveStep<T> {
        match &mut self.state {
            State::Buffering(buf) => {
                buf.push((pos.offset, pos.epoch.clone(), item));
                LiveStep::Buffered
            }
            State::Live { epoch, next } => {
                if pos.epoch != *epoch || pos.offset > *next {
                    self.state = State::Broken;
                    LiveStep::Insufficient
                } else if pos.offset < *next {
                    LiveStep::Skip
                } else {
                    *next += 1;
                    LiveStep::Deliver(item)
                }
            }
            State::Broken => LiveStep::Insufficient,
        }
    }

    /// The snapshot was read with stream top `top`. Returns the buffered
    /// publications to send after the snapshot's own, in offset order
    /// (those at or below `top` and duplicates dropped), or
    /// [`Insufficient`] if they do not continue `top` without a hole or
    /// carry another epoch. Calling it twice is an error (`Insufficient`).
    pub fn on_snapshot(&mut self, top: &StreamPosition) -> Result<Vec<T>, Insufficient> {
        let State::Buffering(mut buf) = std::mem::replace(&mut self.state, State::Broken) else {
            return Err(Insufficient);
        };
        // Stable: of two copies of one offset, the first received is kept.
        buf.sort_by_key(|(offset, _, _)| *offset);
        let mut next = top.offset + 1;
        let mut out = Vec::with_capacity(buf.len());
        for (offset, epoch, item) in buf {
            if epoch != top.epoch || offset > next {
                return Err(Insufficient);
            }
            if offset == next {
                out.push(item);
                next += 1;
            }
        }
        self.state = State::Live {
            epoch: top.epoch.clone(),
            next,
        };
        Ok(out)
    }

    /// The offset the next live publication must carry, once live.
    pub fn next_offset(&self) -> Option<u64> {
        match self.state {
            State::Live { next, .. } => Some(next),
            _ => None,
        }
    }
}
