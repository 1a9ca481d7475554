//! Socket readiness: reading frames, opening and closing handshakes, flushing.

use super::*;

impl Worker {
    pub(super) fn mark_dirty(&mut self, idx: usize) {
        if let Some(conn) = self.conns[idx].as_mut() {
            if !conn.core.in_dirty && conn.core.pending_out() > 0 {
                conn.core.in_dirty = true;
                self.dirty.push(idx);
            }
        }
    }

    pub(super) fn on_event(
        &mut self,
        idx: usize,
        readable: bool,
        writable: bool,
        fail: bool,
        hup: bool,
    ) {
        let Some(conn) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
            return;
        };
        if conn.core.state == State::Connecting {
            match conn.stream.socket().take_error() {
                Ok(Some(e)) | Err(e) => {
                    self.remove(idx, Removal::Failed(format!("connect: {}", err_name(&e))));
                    return;
                }
                Ok(None) => {}
            }
            match conn.stream.socket().peer_addr() {
                Ok(_) => {
                    let plan = &self.plans[conn.plan];
                    let hs = ClientHandshake::new(&mut self.t.rng);
                    let target = &self.setup.targets[plan.node as usize];
                    let mut req = hs.request(&target.host, &target.path(&plan.path));
                    if self.setup.deflate {
                        crate::deflate::add_offer(&mut req);
                    }
                    conn.core.out.extend_from_slice(&req);
                    conn.core.hs = Some(hs);
                    conn.core.state = State::Handshake;
                    self.flush(idx);
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::NotConnected && !fail => return,
                Err(e) => {
                    self.remove(idx, Removal::Failed(format!("connect: {}", err_name(&e))));
                    return;
                }
            }
        }
        if readable || fail {
            self.on_readable(idx, hup || fail);
        }
        if writable {
            self.flush(idx);
        }
        if let Some(conn) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) {
            account(&mut self.t, &mut conn.stream, conn.core.started_ns);
        }
    }

    /// Reads and processes until WouldBlock, a short read (the socket is
    /// drained: a later arrival raises a new edge), or MAX_READS. With
    /// `hup` (the peer's FIN is already queued) it reads on to EOF, as no
    /// further edge would come.
    pub(super) fn on_readable(&mut self, idx: usize, hup: bool) {
        for round in 0.. {
            let Some(conn) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
                return;
            };
            let c = &mut conn.core;
            let plen = c.partial.len();
            if plen > 0 {
                // A frame bigger than the buffer: grow it to fit.
                let need = self.t.decoder.bytes_needed(&c.partial).unwrap_or(0);
                if need + READ_BUF / 2 > self.rbuf.len() {
                    self.rbuf.resize(need + READ_BUF, 0);
                }
                self.rbuf[..plen].copy_from_slice(&c.partial);
            }
            let res = conn.stream.read(&mut self.rbuf[plen..]);
            let drains = conn.stream.short_read_drains();
            match res {
                Ok(0) => {
                    let c = &conn.core;
                    let removal = if c.state != State::Open {
                        Removal::Failed("handshake: server closed TCP".into())
                    } else if c.close_recv && c.we_closed {
                        Removal::Clean
                    } else if c.close_recv {
                        Removal::Lost(c.lost_reason.clone().unwrap_or_default())
                    } else if c.we_closed {
                        Removal::Unclean("TCP closed before the close answer".into())
                    } else {
                        Removal::Lost("server closed TCP without a close frame".into())
                    };
                    self.remove(idx, removal);
                    return;
                }
                Ok(n) => {
                    let total = plen + n;
                    let full = total == self.rbuf.len();
                    let now = now_ns();
                    c.partial.clear();
                    let fed = feed(c, &mut self.rbuf[..total], now, &mut self.t);
                    c.partial.extend_from_slice(&self.rbuf[fed.consumed..total]);
                    if fed.opened {
                        self.on_open(idx, now);
                    }
                    if fed.closed {
                        self.on_close_frame(idx, now);
                    }
                    self.mark_dirty(idx);
                    if let Some(r) = fed.remove {
                        self.flush(idx);
                        self.remove(idx, r);
                        return;
                    }
                    // (Over TLS a short read does not mean the socket is
                    // empty: read on to WouldBlock.)
                    if !full && !hup && drains {
                        return;
                    }
                    if round + 1 >= MAX_READS {
                        self.again.push(idx);
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let c = &conn.core;
                    let name = err_name(&e);
                    let removal = if c.state != State::Open {
                        Removal::Failed(format!("handshake read: {name}"))
                    } else if c.we_closed && c.close_recv {
                        Removal::Clean
                    } else if c.we_closed {
                        Removal::Unclean(format!("read: {name}"))
                    } else {
                        Removal::Lost(format!("read: {name}"))
                    };
                    self.remove(idx, removal);
                    return;
                }
            }
        }
    }

    pub(super) fn on_open(&mut self, idx: usize, now: u64) {
        self.pending -= 1;
        if self.phase == CONNECTING || self.setup.kind != Kind::PubSub {
            // (pubsub reconnects are not part of the connect phase.)
            self.last_open = now;
        }
        if let Some(conn) = self.conns[idx].as_mut() {
            if let Some(ps) = conn.core.ps.as_mut() {
                ps.z = conn.core.z;
                ps.start(&mut self.t, &mut conn.core.out);
                self.mark_dirty(idx);
            }
        }
        if self.setup.kind == Kind::Churn {
            let Some(conn) = self.conns[idx].as_mut() else {
                return;
            };
            let c = &mut conn.core;
            let seq = self.t.stats.cycles;
            self.t.send(&mut c.out, c.z, c.global, seq, 0, now);
            self.mark_dirty(idx);
        } else if self.phase >= RUNNING && self.phase < CLOSING {
            self.schedule_sender(idx, true);
        }
    }

    /// Churn: the cycle ends with the close handshake; the slot starts
    /// its next connection while this one waits for the server's FIN.
    pub(super) fn on_close_frame(&mut self, idx: usize, now: u64) {
        let Some(conn) = self.conns[idx].as_mut() else {
            return;
        };
        let c = &mut conn.core;
        if !(c.churn && c.we_closed) || c.cycle_done {
            return;
        }
        c.cycle_done = true;
        let plan = conn.plan;
        self.t.stats.cycles += 1;
        self.cycle
            .saturating_record(now.saturating_sub(c.started_ns).max(1));
        if self.may_connect() {
            self.start_conn(plan, now);
        }
    }

    pub(super) fn flush(&mut self, idx: usize) {
        let Some(conn) = self.conns.get_mut(idx).and_then(|c| c.as_mut()) else {
            return;
        };
        let c = &mut conn.core;
        // TLS records rustls still holds go first.
        let mut res = conn.stream.push();
        while res.is_ok() && c.out_pos < c.out.len() {
            match conn.stream.write(&c.out[c.out_pos..]) {
                Ok(0) => break,
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => res = Err(e),
            }
        }
        if let Err(e) = res {
            let name = err_name(&e);
            let removal = if c.state != State::Open {
                Removal::Failed(format!("handshake write: {name}"))
            } else if c.we_closed && c.close_recv {
                Removal::Clean
            } else if c.we_closed {
                Removal::Unclean(format!("write: {name}"))
            } else if let Some(r) = c.lost_reason.clone() {
                Removal::Lost(r)
            } else {
                Removal::Lost(format!("write: {name}"))
            };
            self.remove(idx, removal);
            return;
        }
        if c.out_pos == c.out.len() {
            c.out.clear();
            c.out_pos = 0;
        } else if c.out_pos >= OUT_CAP {
            c.out.drain(..c.out_pos);
            c.out_pos = 0;
        }
        if let Some(s) = c.sender.as_mut() {
            if s.blocked && c.out.len() - c.out_pos < OUT_CAP / 2 {
                s.blocked = false;
                let at = s.intended(s.seq);
                if at < self.send_end && self.t.may_send {
                    self.heap.push(Reverse((at, idx, c.gen)));
                }
            }
        }
    }

    pub(super) fn flush_dirty(&mut self) {
        let mut dirty = std::mem::take(&mut self.dirty);
        for &idx in &dirty {
            if let Some(conn) = self.conns[idx].as_mut() {
                conn.core.in_dirty = false;
                self.flush(idx);
                if let Some(conn) = self.conns[idx].as_mut() {
                    account(&mut self.t, &mut conn.stream, conn.core.started_ns);
                }
            }
        }
        dirty.clear();
        self.dirty = dirty;
    }
}

/// Moves a stream's socket byte counts and TLS handshake outcome (kind,
/// and time since the connection started) into the worker's figures.
pub(super) fn account(t: &mut Tls, stream: &mut Stream, started_ns: u64) {
    let (i, o) = stream.take_wire();
    t.stats.wire_in += i;
    t.stats.wire_out += o;
    let Some((news, at)) = stream.handshake_news() else {
        return;
    };
    match news {
        crate::transport::HandshakeNews::Full => t.stats.tls_full += 1,
        crate::transport::HandshakeNews::Resumed => t.stats.tls_resumed += 1,
    }
    t.tls_handshake
        .saturating_record(at.saturating_sub(started_ns).max(1));
}
