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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::client::Subscription;

    fn sub(expires_at: u64) -> Subscription {
        Subscription {
            room_id: 1,
            slot: 0,
            expires_at,
            presence: false,
            join_leave: false,
            server_side: false,
        }
    }

    #[test]
    fn connect_deadlines_come_due_on_the_worker_clock() {
        let mut d = ClientDeadlines::new(25, 25);
        d.connect_by(3, 1, 1_000);
        assert_eq!(d.pop_due(999, 0), None);
        assert_eq!(d.pop_due(1_000, 0), Some((3, 1)));
        assert_eq!(d.pop_due(5_000, 0), None);
    }

    #[test]
    fn the_earliest_expiry_plus_grace_is_queued_once() {
        let mut d = ClientDeadlines::new(10, 5);
        let mut c = Client::new();
        c.expires_at = 100;
        c.subs.push(sub(90));
        d.track(7, 2, &mut c);
        d.track(7, 2, &mut c); // unchanged: not queued again
        assert_eq!(c.queued_deadline, 95);
        assert_eq!(d.pop_due(0, 94), None);
        assert_eq!(d.pop_due(0, 95), Some((7, 2)));
        assert_eq!(d.pop_due(0, 1_000), None, "queued once");
        // A refresh moves the deadline: queued again.
        c.subs[0].expires_at = 0;
        c.queued_deadline = 0;
        d.track(7, 2, &mut c);
        assert_eq!(d.pop_due(0, 109), None);
        assert_eq!(d.pop_due(0, 110), Some((7, 2)));
    }

    #[test]
    fn clients_without_expiry_are_not_queued() {
        let mut d = ClientDeadlines::new(10, 5);
        let mut c = Client::new();
        c.subs.push(sub(0));
        d.track(1, 1, &mut c);
        assert_eq!(d.pop_due(u64::MAX, u64::MAX), None);
    }
}
