//! The pubsub scenario's part of the worker: attaching protocol clients to
//! connections, dropping and reconnecting subscribers (reconnect modes),
//! and folding the clients' accounting into the worker's result.

use super::*;
use crate::pubsub::client::{PsClient, PsStats, TokenMode};
use crate::pubsub::track::SubAcc;

/// Reconnect modes: wait before retrying a failed or lost subscriber.
const RETRY_BACKOFF_NS: u64 = 200_000_000;

/// One worker's pubsub figures.
pub struct PsResult {
    pub st: PsStats,
    pub ack: Histogram<u64>,
    pub resub: Histogram<u64>,
    pub acc: SubAcc,
    /// Index p * channels + k: unique deliveries (over subscribers),
    /// publications sent and acknowledged.
    pub unique_pk: Vec<u64>,
    pub sent_pk: Vec<u64>,
    pub acked_pk: Vec<u64>,
    pub dup: u64,
    pub reordered: u64,
    /// Subscriptions planned.
    pub subscriptions: u64,
}

impl SubAcc {
    pub fn add(&mut self, o: &SubAcc) {
        self.offset_gaps += o.offset_gaps;
        self.offset_repeats += o.offset_repeats;
        self.misrouted += o.misrouted;
        self.foreign += o.foreign;
        self.recovered_pubs += o.recovered_pubs;
        self.recovered_true += o.recovered_true;
        self.recovered_false += o.recovered_false;
        self.epoch_changes += o.epoch_changes;
        self.history_on_subscribe += o.history_on_subscribe;
    }
}

impl Worker {
    /// A new connection for plan `pi`: its parked client (a reconnect) or
    /// a new one.
    pub(super) fn ps_attach(&mut self, pi: usize, core: &mut ConnCore, now: u64) {
        let Some(setup) = self.setup.ps.as_ref() else {
            return;
        };
        let mut client = match self.parked[pi].take() {
            Some(mut c) => {
                c.reconnect_ns = now;
                if let Some(ps) = self.t.ps.as_mut() {
                    ps.st.reconnects += 1;
                }
                c
            }
            None => {
                let plan = &self.plans[pi];
                let token = match &setup.cfg.token {
                    TokenMode::None => None,
                    TokenMode::Fixed(t) => Some(t.clone()),
                    TokenMode::Hmac(secret) => {
                        crate::pubsub::client::mint_hs256(secret, &format!("load-{}", plan.global))
                            .ok()
                    }
                };
                let mut c = PsClient::new(
                    &setup.cfg,
                    &plan.channels,
                    plan.publisher.as_ref().map(|p| p.id),
                    token,
                );
                c.node = plan.node;
                if let (Some(b), true) = (setup.burst, c.publisher.is_some()) {
                    c.budget = b * setup.cfg.channels.len() as u64;
                }
                Box::new(c)
            }
        };
        if self.phase == CONNECTING && client.reconnect_ns == 0 && !client.setup_pending {
            client.setup_pending = true;
            if let Some(ps) = self.t.ps.as_mut() {
                ps.setting_up += 1;
            }
        }
        core.ps = Some(client);
    }

    pub(super) fn ps_start_running(&mut self) {
        let Some(setup) = self.setup.ps.clone() else {
            return;
        };
        if let Some(ps) = self.t.ps.as_mut() {
            ps.initial = false;
        }
        if setup.burst.is_some() {
            // Everyone away before the first publication.
            let n = self.conns.len();
            self.drop_subscribers(n);
            self.burst_dropped = true;
        } else if setup.reconnect_every_ns > 0 {
            self.next_drop = self.t0 + setup.reconnect_every_ns;
        }
    }

    pub(super) fn ps_tick(&mut self, now: u64) {
        let Some(setup) = self.setup.ps.clone() else {
            return;
        };
        if self.phase < RUNNING || self.phase >= CLOSING {
            return;
        }
        if now >= self.next_drop {
            if now < self.send_end {
                let subs = self.plans.iter().filter(|p| p.publisher.is_none()).count();
                let n = (subs as f64 * setup.reconnect_fraction).ceil() as usize;
                self.drop_subscribers(n);
                self.next_drop += setup.reconnect_every_ns;
            } else {
                self.next_drop = u64::MAX;
            }
        }
        if self.burst_dropped && !self.burst_reconnected {
            let at = self.shared.reconnect_at.load(Acquire);
            if at != 0 && now >= at {
                self.burst_reconnected = true;
                for pi in 0..self.parked.len() {
                    if self.parked[pi].is_some() && self.plans[pi].publisher.is_none() {
                        self.delay_connect(now, pi);
                    }
                }
            }
        }
    }

    /// Drops up to `n` ready subscribers' TCP connections (no close frame),
    /// rotating over the connections; they come back after the away time
    /// (burst: when the coordinator says so).
    fn drop_subscribers(&mut self, n: usize) {
        let Some(setup) = self.setup.ps.clone() else {
            return;
        };
        let len = self.conns.len();
        let mut dropped = 0;
        let start = self.drop_cursor;
        for step in 0..len {
            if dropped >= n {
                break;
            }
            let idx = (start + step) % len;
            let ok = self.conns[idx].as_ref().is_some_and(|c| {
                c.core.state == State::Open
                    && !c.core.close_sent
                    && c.core
                        .ps
                        .as_ref()
                        .is_some_and(|p| p.publisher.is_none() && p.ready())
            });
            if !ok {
                continue;
            }
            let pi = self.conns[idx].as_ref().map_or(0, |c| c.plan);
            self.remove(idx, Removal::Dropped);
            if let Some(ps) = self.t.ps.as_mut() {
                ps.st.drops += 1;
            }
            if setup.burst.is_none() {
                self.delay_connect(self.now + setup.reconnect_away_ns, pi);
            }
            dropped += 1;
            self.drop_cursor = idx + 1;
        }
    }

    /// Reconnect modes: a subscriber whose (re)connection failed or was
    /// closed by the server tries again after a back-off, as an SDK would.
    pub(super) fn ps_retry(&mut self, pi: usize, now: u64) {
        let Some(setup) = self.setup.ps.as_ref() else {
            return;
        };
        let modes = setup.reconnect_every_ns > 0 || self.burst_reconnected;
        if !modes
            || self.plans[pi].publisher.is_some()
            || !self.may_connect()
            || self.phase < RUNNING
        {
            return;
        }
        if let Some(ps) = self.t.ps.as_mut() {
            ps.st.retries += 1;
        }
        self.delay_connect(now + RETRY_BACKOFF_NS, pi);
    }

    /// Queues a connection attempt for `at`, keeping the queue in time order.
    pub(super) fn delay_connect(&mut self, at: u64, pi: usize) {
        let pos = self.delayed.partition_point(|&(t, _)| t <= at);
        self.delayed.insert(pos, (at, pi));
    }

    pub(super) fn ps_result(&mut self) -> Option<PsResult> {
        let setup = self.setup.ps.clone()?;
        let ps = self.t.ps.as_mut()?;
        let c = setup.cfg.channels.len();
        let p = setup.cfg.publishers as usize;
        let mut r = PsResult {
            st: std::mem::take(&mut ps.st),
            ack: std::mem::replace(&mut ps.ack, new_hist()),
            resub: std::mem::replace(&mut ps.resub, new_hist()),
            acc: SubAcc::default(),
            unique_pk: vec![0; p * c],
            sent_pk: vec![0; p * c],
            acked_pk: vec![0; p * c],
            dup: 0,
            reordered: 0,
            subscriptions: 0,
        };
        for (pi, plan) in self.plans.iter().enumerate() {
            r.subscriptions += plan.channels.len() as u64;
            let Some(client) = self.parked[pi].as_ref() else {
                continue;
            };
            let node = self
                .t
                .nodes
                .as_mut()
                .and_then(|n| n.per.get_mut(client.node as usize));
            if let Some(a) = node {
                for s in &client.subs {
                    a.fold(&s.pubs, |pb| pb * c + s.k as usize);
                }
            }
            for s in &client.subs {
                r.acc.add(&s.acc);
                for (pb, tr) in s.pubs.iter().enumerate() {
                    r.unique_pk[pb * c + s.k as usize] += tr.unique;
                    r.dup += tr.dup;
                    r.reordered += tr.reordered;
                }
            }
            if let Some(pb) = client.publisher {
                for k in 0..c.min(client.sent_k.len()) {
                    r.sent_pk[pb as usize * c + k] += client.sent_k[k];
                    r.acked_pk[pb as usize * c + k] += client.acked_k[k];
                }
            }
        }
        Some(r)
    }
}
