//! The open-loop send schedule and the per-connection deadlines.

use super::*;

impl Worker {
    pub(super) fn run_publishers(&mut self, now: u64) {
        let send_end = self.send_end;
        let in_flight = self.setup.in_flight;
        while let Some(&Reverse((due, idx, gen))) = self.heap.peek() {
            if due > now {
                break;
            }
            self.heap.pop();
            let Some(conn) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
                continue;
            };
            let c = &mut conn.core;
            if c.gen != gen || c.state != State::Open || c.close_sent {
                continue;
            }
            let Some(s) = c.sender.as_mut() else {
                continue;
            };
            if s.closed_loop() {
                for _ in 0..in_flight {
                    if !self.t.may_send || now >= send_end {
                        break;
                    }
                    self.t.send(&mut c.out, c.z, s.id, s.seq, c.room, now);
                    s.seq += 1;
                }
            } else if let Some(ps) = c.ps.as_mut() {
                let (mut retry, mut refused) = (false, false);
                loop {
                    let at = s.intended(s.seq);
                    if at > now || at >= send_end || !self.t.may_send || ps.budget == 0 {
                        break;
                    }
                    if !ps.ready() {
                        // Still connecting: try again shortly. Refused:
                        // this publisher is done.
                        refused = ps.phase == crate::pubsub::client::Phase::Failed;
                        retry = !refused;
                        break;
                    }
                    if c.out.len() - c.out_pos >= OUT_CAP {
                        s.blocked = true;
                        break;
                    }
                    ps.publish(s.seq, at, &mut self.t, &mut c.out);
                    self.lag.saturating_record((now - at).max(1));
                    s.seq += 1;
                }
                if !s.blocked && !refused && self.t.may_send && ps.budget > 0 {
                    let at = s.intended(s.seq);
                    if at < send_end {
                        let at = if retry { at.max(now + 1_000_000) } else { at };
                        self.heap.push(Reverse((at, idx, gen)));
                    }
                }
            } else {
                loop {
                    let at = s.intended(s.seq);
                    if at > now || at >= send_end || !self.t.may_send {
                        break;
                    }
                    if c.out.len() - c.out_pos >= OUT_CAP {
                        s.blocked = true;
                        break;
                    }
                    self.t.send(&mut c.out, c.z, s.id, s.seq, c.room, at);
                    self.lag.saturating_record((now - at).max(1));
                    s.seq += 1;
                }
                if !s.blocked && self.t.may_send {
                    let at = s.intended(s.seq);
                    if at < send_end {
                        self.heap.push(Reverse((at, idx, gen)));
                    }
                }
            }
            if !c.in_dirty && c.pending_out() > 0 {
                c.in_dirty = true;
                self.dirty.push(idx);
            }
        }
    }

    pub(super) fn scan_deadlines(&mut self, now: u64) {
        for idx in 0..self.conns.len() {
            let Some(conn) = self.conns[idx].as_ref() else {
                continue;
            };
            let c = &conn.core;
            if c.deadline_ns == 0 || c.deadline_ns > now {
                continue;
            }
            let removal = match c.state {
                State::Connecting => Removal::Failed("connect timeout".into()),
                State::Handshake => Removal::Failed("handshake timeout".into()),
                State::Open if c.close_recv && c.we_closed => {
                    self.close_no_fin += 1;
                    Removal::Clean
                }
                State::Open if c.close_recv => {
                    Removal::Lost(c.lost_reason.clone().unwrap_or_default())
                }
                State::Open => Removal::Unclean("no close answer in time".into()),
            };
            self.remove(idx, removal);
        }
    }
}
