//! Subscribe on demand, with linger: which channels this node must be
//! subscribed to in Redis, as a sans-IO state machine (time comes in as
//! `now`). Workers report *interest* per channel (a worker's first local
//! subscriber: on; its last one left: off); the machine keeps a mask of
//! interested workers per channel and emits
//!
//! - `SUBSCRIBE` when a channel's first interest appears (unless Redis is
//!   still subscribed from a lingering interest),
//! - `UNSUBSCRIBE` only once the channel had no interest for `linger`,
//!
//! batched up to `batch` channels per command. So subscribe, unsubscribe,
//! subscribe within `linger` costs one SUBSCRIBE and no UNSUBSCRIBE.

use std::collections::{BTreeSet, HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

/// A command for the subscriber connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SubCommand {
    Subscribe(Vec<String>),
    Unsubscribe(Vec<String>),
}

#[derive(Debug)]
struct Chan {
    /// Workers with local interest.
    workers: u64,
    /// No interest since then + linger: unsubscribe at this instant.
    linger_until: Option<Instant>,
}

/// The subscription state of one Redis shard.
#[derive(Debug)]
pub struct Subscriptions {
    linger: Duration,
    batch: usize,
    /// Channels Redis is (or will be, once queued commands go out)
    /// subscribed to.
    channels: HashMap<String, Chan>,
    /// Linger deadlines (instant, channel); stale items are skipped.
    lingering: BTreeSet<(Instant, String)>,
    to_subscribe: VecDeque<String>,
    to_subscribe_set: HashSet<String>,
    to_unsubscribe: VecDeque<String>,
    to_unsubscribe_set: HashSet<String>,
}

impl Subscriptions {
    pub fn new(linger: Duration, batch: usize) -> Subscriptions {
        Subscriptions {
            linger,
            batch: batch.max(1),
            channels: HashMap::new(),
            lingering: BTreeSet::new(),
            to_subscribe: VecDeque::new(),
            to_subscribe_set: HashSet::new(),
            to_unsubscribe: VecDeque::new(),
            to_unsubscribe_set: HashSet::new(),
        }
    }

    /// Worker `worker` (0..64) has (`on`) or no longer has local
    /// subscribers in `channel`.
    pub fn interest(&mut self, channel: &str, worker: usize, on: bool, now: Instant) {
        let bit = 1u64 << (worker & 63);
        if on {
            match self.channels.get_mut(channel) {
                Some(c) => {
                    c.workers |= bit;
                    if let Some(t) = c.linger_until.take() {
                        self.lingering.remove(&(t, channel.to_string()));
                    }
                }
                None => {
                    self.channels.insert(
                        channel.to_string(),
                        Chan {
                            workers: bit,
                            linger_until: None,
                        },
                    );
                    // An UNSUBSCRIBE not yet sent is cancelled instead.
                    if !self.to_unsubscribe_set.remove(channel) {
                        self.to_subscribe.push_back(channel.to_string());
                        self.to_subscribe_set.insert(channel.to_string());
                    } else {
                        self.to_unsubscribe.retain(|c| c != channel);
                    }
                }
            }
        } else if let Some(c) = self.channels.get_mut(channel) {
            let had = c.workers != 0;
            c.workers &= !bit;
            if had && c.workers == 0 {
                let until = now + self.linger;
                c.linger_until = Some(until);
                self.lingering.insert((until, channel.to_string()));
                if self.linger.is_zero() {
                    self.advance(now);
                }
            }
        }
    }

    /// Unsubscribes the channels whose linger ended by `now`.
    pub fn advance(&mut self, now: Instant) {
        while let Some((t, _)) = self.lingering.first() {
            if *t > now {
                break;
            }
            let Some((t, name)) = self.lingering.pop_first() else {
                break;
            };
            let expired = self
                .channels
                .get(&name)
                .is_some_and(|c| c.workers == 0 && c.linger_until == Some(t));
            if !expired {
                continue;
            }
            self.channels.remove(&name);
            if self.to_subscribe_set.remove(&name) {
                // Never sent: nothing to undo.
                self.to_subscribe.retain(|c| *c != name);
            } else {
                self.to_unsubscribe_set.insert(name.clone());
                self.to_unsubscribe.push_back(name);
            }
        }
    }

    /// When [`advance`](Self::advance) has something to do next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.lingering.first().map(|(t, _)| *t)
    }

    /// The next command to send, at most `batch` channels.
    pub fn next_command(&mut self) -> Option<SubCommand> {
        if !self.to_unsubscribe.is_empty() {
            let n = self.to_unsubscribe.len().min(self.batch);
            let v: Vec<String> = self.to_unsubscribe.drain(..n).collect();
            for c in &v {
                self.to_unsubscribe_set.remove(c);
            }
            return Some(SubCommand::Unsubscribe(v));
        }
        if !self.to_subscribe.is_empty() {
            let n = self.to_subscribe.len().min(self.batch);
            let v: Vec<String> = self.to_subscribe.drain(..n).collect();
            for c in &v {
                self.to_subscribe_set.remove(c);
            }
            return Some(SubCommand::Subscribe(v));
        }
        None
    }

    /// The connection was lost (Redis forgot every subscription): queue
    /// SUBSCRIBE for every channel with interest, drop lingering ones.
    pub fn reset(&mut self) {
        self.to_unsubscribe.clear();
        self.to_unsubscribe_set.clear();
        self.to_subscribe.clear();
        self.to_subscribe_set.clear();
        let lingering: Vec<String> = self
            .channels
            .iter()
            .filter(|(_, c)| c.workers == 0)
            .map(|(n, _)| n.clone())
            .collect();
        for n in lingering {
            self.channels.remove(&n);
        }
        self.lingering.clear();
        let mut names: Vec<&String> = self.channels.keys().collect();
        names.sort();
        for n in names {
            self.to_subscribe.push_back(n.clone());
            self.to_subscribe_set.insert(n.clone());
        }
    }

    /// Workers interested in `channel` (0 if none, lingering included).
    pub fn workers(&self, channel: &str) -> u64 {
        self.channels.get(channel).map_or(0, |c| c.workers)
    }

    /// Channels subscribed or about to be.
    pub fn len(&self) -> usize {
        self.channels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.channels.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &mut Subscriptions) -> Vec<SubCommand> {
        std::iter::from_fn(|| s.next_command()).collect()
    }

    fn subs(v: &[&str]) -> SubCommand {
        SubCommand::Subscribe(v.iter().map(|s| s.to_string()).collect())
    }

    fn unsubs(v: &[&str]) -> SubCommand {
        SubCommand::Unsubscribe(v.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn churn_within_linger_is_one_subscribe_and_no_unsubscribe() {
        let t0 = Instant::now();
        let linger = Duration::from_secs(5);
        let mut s = Subscriptions::new(linger, 100);
        s.interest("a", 0, true, t0);
        assert_eq!(drain(&mut s), [subs(&["a"])]);
        for i in 1..100u64 {
            let t = t0 + Duration::from_millis(i * 10);
            s.interest("a", 0, false, t);
            s.interest("a", 0, true, t);
            s.advance(t);
        }
        // Idle within linger: still nothing.
        s.interest("a", 0, false, t0 + Duration::from_secs(1));
        s.advance(t0 + Duration::from_secs(5));
        assert_eq!(drain(&mut s), []);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(6)));
        s.advance(t0 + Duration::from_secs(6));
        assert_eq!(drain(&mut s), [unsubs(&["a"])]);
        assert_eq!(s.poll_timeout(), None);
        assert!(s.is_empty());
    }

    #[test]
    fn interest_is_counted_across_workers() {
        let t0 = Instant::now();
        let mut s = Subscriptions::new(Duration::from_secs(1), 100);
        s.interest("a", 0, true, t0);
        s.interest("a", 3, true, t0);
        assert_eq!(s.workers("a"), 0b1001);
        assert_eq!(drain(&mut s), [subs(&["a"])]);
        s.interest("a", 0, false, t0);
        assert_eq!(s.poll_timeout(), None, "worker 3 still wants it");
        s.interest("a", 3, false, t0);
        s.advance(t0 + Duration::from_secs(2));
        assert_eq!(drain(&mut s), [unsubs(&["a"])]);
    }

    #[test]
    fn commands_are_batched_and_unsent_ones_cancel() {
        let t0 = Instant::now();
        let mut s = Subscriptions::new(Duration::ZERO, 2);
        for c in ["a", "b", "c"] {
            s.interest(c, 1, true, t0);
        }
        // "c" goes away before any command was sent: never subscribed.
        s.interest("c", 1, false, t0);
        assert_eq!(drain(&mut s), [subs(&["a", "b"])]);
        // Zero linger: unsubscribe at once; re-interest before it is sent
        // cancels it.
        s.interest("a", 1, false, t0);
        s.interest("a", 1, true, t0);
        s.interest("b", 1, false, t0);
        assert_eq!(drain(&mut s), [unsubs(&["b"])]);
        assert_eq!(s.workers("a"), 0b10);
    }

    #[test]
    fn reset_resubscribes_wanted_channels_in_batches() {
        let t0 = Instant::now();
        let mut s = Subscriptions::new(Duration::from_secs(10), 2);
        for c in ["a", "b", "c", "d"] {
            s.interest(c, 0, true, t0);
        }
        drain(&mut s);
        s.interest("d", 0, false, t0); // lingering: dropped on reset
        s.reset();
        assert_eq!(drain(&mut s), [subs(&["a", "b"]), subs(&["c"])]);
        assert_eq!(s.poll_timeout(), None);
        assert_eq!(s.workers("d"), 0);
    }
}
