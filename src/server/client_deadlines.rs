//! Deadlines of protocol clients that are not the session's: `connect`
//! within `client_stale_close_delay` of the upgrade, and token expiry
//! (connection and subscriptions) plus the configured grace to refresh.
//!
//! Two min-heaps of `(due, key, generation)`; an entry is only a hint:
//! the worker re-checks the client when it pops one (a refresh may have
//! moved the deadline, the slot may hold another connection), so nothing
//! has to be removed from the heaps.

use super::client::Client;
use std::cmp::Reverse;
use std::collections::BinaryHeap;

type Entry = Reverse<(u64, usize, u32)>;

#[derive(Default)]
pub struct ClientDeadlines {
    /// Worker clock (ms): connect-by deadlines.
    connect: BinaryHeap<Entry>,
    /// Unix seconds: token expiry plus grace.
    expiry: BinaryHeap<Entry>,
    grace_secs: u64,
    sub_grace_secs: u64,
}

impl ClientDeadlines {
    pub fn new(grace_secs: u64, sub_grace_secs: u64) -> ClientDeadlines {
        ClientDeadlines {
            grace_secs,
            sub_grace_secs,
            ..ClientDeadlines::default()
        }
    }

    /// The client must have sent `connect` by `at_ms` (worker clock).
    pub fn connect_by(&mut self, key: usize, generation: u32, at_ms: u64) {
        self.connect.push(Reverse((at_ms, key, generation)));
    }

    /// Queues the client's next expiry deadline if it changed.
    pub fn track(&mut self, key: usize, generation: u32, client: &mut Client) {
        let conn = (client.expires_at != 0).then(|| client.expires_at + self.grace_secs);
        let subs = client
            .subs
            .iter()
            .filter(|s| s.expires_at != 0)
            .map(|s| s.expires_at + self.sub_grace_secs)
            .min();
        let next = match (conn, subs) {
            (Some(a), Some(b)) => a.min(b),
            (a, b) => a.or(b).unwrap_or(0),
        };
        if next != 0 && next != client.queued_deadline {
            client.queued_deadline = next;
            self.expiry.push(Reverse((next, key, generation)));
        }
    }

    /// A due entry, if any (to be re-checked by the caller).
    pub fn pop_due(&mut self, now_ms: u64, now_secs: u64) -> Option<(usize, u32)> {
        for (heap, now) in [(&mut self.connect, now_ms), (&mut self.expiry, now_secs)] {
            if heap.peek().is_some_and(|Reverse((due, _, _))| *due <= now) {
                let Reverse((_, key, generation)) = heap.pop()?;
                return Some((key, generation));
            }
        }
        None
    }

    pub fn release_scratch(&mut self) {
        self.connect.shrink_to_fit();
        self.expiry.shrink_to_fit();
    }
}
