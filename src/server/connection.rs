//! One client connection: its transport, its session, its endpoint and the
//! read buffer it leases while it holds unprocessed bytes.
//!
//! The struct is kept small because 100k+ of them live in a worker's slab:
//! an idle WebSocket connection owns no heap memory of its own (no read
//! buffer, an empty outbound queue, no HTTP state). Interest is derived
//! from state, as in rustls' `tlsserver-mio`: always readable (EOF and
//! errors must be seen), writable only while output is waiting.

use super::admission::IpKey;
use super::buffer_pool::{BufferPool, ReadBuf};
use super::client::Client;
use super::local_rooms::Membership;
use super::outbound::Flush;
use super::session::{Handler, Session, SessionContext};
use super::transport::Transport;
use crate::metrics::WorkerMetrics;
use mio::{Interest, Registry, Token};
use std::io::{self, Read};

/// The endpoint an upgraded connection is attached to.
#[derive(Debug)]
pub enum Attachment {
    Echo,
    Room(Membership),
    /// A pub/sub protocol client (boxed: most connections are not).
    Client(Box<Client>),
}

/// A read buffer holding bytes not yet processed: `buf[start..end]`.
struct Lease {
    buf: ReadBuf,
    start: usize,
    end: usize,
}

/// Why reading stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadOutcome {
    /// The socket has nothing more for now.
    Drained,
    /// The read budget is used up: read again next iteration.
    Budget,
    /// The session does not want input now (an answer is being written,
    /// the connection is closing or paused): read again once it does.
    Stalled,
    /// The peer closed or the socket failed.
    Closed,
}

pub struct Connection {
    pub transport: Transport,
    pub session: Session,
    pub attachment: Option<Attachment>,
    /// Leased read buffer, present only while it holds unprocessed bytes
    /// (boxed: one word in every connection instead of four).
    lease: Option<Box<Lease>>,
    /// Distinguishes this connection from earlier ones in the same slab
    /// slot; part of the mio token, so stale events are recognised.
    pub generation: u32,
    /// Admission key (counted against the global and per-IP limits): the
    /// client's, or `IpKey::PENDING` while a trusted proxy's connection
    /// has not said who its client is.
    pub peer: IpKey,
    /// Tick of the live timer entry (see `timer.rs`); 0 = none.
    pub timer_tick: u64,
    /// WRITABLE interest is registered.
    writable: bool,
    /// Queued for a flush at the end of this loop iteration.
    pub dirty: bool,
    /// Queued on the ready list (read again this iteration).
    pub in_ready: bool,
    /// The last read stopped because the session did not want input.
    pub stalled: bool,
}

impl Connection {
    pub fn new(transport: Transport, session: Session, generation: u32, peer: IpKey) -> Self {
        Connection {
            transport,
            session,
            attachment: None,
            lease: None,
            generation,
            peer,
            timer_tick: 0,
            writable: false,
            dirty: false,
            in_ready: false,
            stalled: false,
        }
    }

    /// The room membership, if a room member.
    pub fn membership(&self) -> Option<&Membership> {
        match &self.attachment {
            Some(Attachment::Room(m)) => Some(m),
            _ => None,
        }
    }

    /// Whether the connection is a room member that receives broadcasts.
    pub fn receives_broadcasts(&self) -> bool {
        self.membership().is_some_and(|m| m.receives)
    }

    /// Reads and hands input to the session until the socket is drained,
    /// `budget` bytes were read, or the session wants no more. Bytes the
    /// session has not consumed stay in the leased buffer.
    pub fn read(
        &mut self,
        pool: &mut BufferPool,
        ctx: &SessionContext,
        now: u64,
        mut budget: usize,
        read_closed: bool,
        h: &mut impl Handler,
    ) -> ReadOutcome {
        self.stalled = false;
        let (mut buf, mut start, mut end) = match self.lease.take() {
            Some(l) => (l.buf, l.start, l.end),
            None => (pool.lease(), 0, 0),
        };
        let mut drained = false;
        let outcome = loop {
            // Offer what is buffered first (e.g. a pipelined request
            // waiting for the previous answer to be written).
            while start < end && self.session.wants_read() {
                let used = self.offer(&mut buf[start..end], now, ctx, h);
                if used == 0 {
                    break;
                }
                start += used;
            }

            if !self.session.wants_read() {
                self.stalled = self.session.poll_finish().is_none();
                break ReadOutcome::Stalled;
            }
            if drained {
                break ReadOutcome::Drained;
            }
            if budget == 0 {
                // Fairness: let other connections run; come back next turn.
                break ReadOutcome::Budget;
            }
            if start == end {
                start = 0;
                end = 0;
            } else if end == buf.len() {
                // Full: make room for the rest of the frame at the front.
                // The deflate decoder also sizes RSV1 frames (a frame the
                // plain decoder refuses was already refused by the session).
                let needed = ctx
                    .deflate_decoder
                    .bytes_needed(&buf[start..end])
                    .unwrap_or(0);
                if needed > buf.len() {
                    buf = pool.grow(buf, start, end, needed);
                } else {
                    buf.copy_within(start..end, 0);
                }
                end -= start;
                start = 0;
            }
            let space = buf.len() - end;
            match self.transport.read(&mut buf[end..]) {
                Ok(0) => {
                    self.session.handle_eof();
                    break ReadOutcome::Closed;
                }
                Ok(n) => {
                    end += n;
                    budget = budget.saturating_sub(n);
                    ctx.metrics.bytes_in.add(n as u64);
                    // A short read emptied the socket: with edge-triggered
                    // polling the next arrival raises a new event, so the
                    // read that would only return WouldBlock is skipped.
                    drained = n < space && !read_closed && self.transport.short_read_drains();
                }
                Err(e) => match e.kind() {
                    io::ErrorKind::WouldBlock => break ReadOutcome::Drained,
                    io::ErrorKind::Interrupted => {}
                    _ => {
                        self.session.handle_eof();
                        break ReadOutcome::Closed;
                    }
                },
            }
        };
        if start == end || outcome == ReadOutcome::Closed {
            pool.give_back(buf);
        } else {
            self.lease = Some(Box::new(Lease { buf, start, end }));
        }
        outcome
    }

    /// Offers input to the session, with the connection's transport at
    /// hand to write replies before they are judged (see
    /// [`WriteBeforeJudging`]).
    fn offer(
        &mut self,
        input: &mut [u8],
        now: u64,
        ctx: &SessionContext,
        h: &mut impl Handler,
    ) -> usize {
        let mut h = WriteBeforeJudging {
            inner: h,
            transport: &mut self.transport,
            ctx,
        };
        self.session.handle_input(input, now, &mut h)
    }

    /// Writes queued output. Returns whether everything was written; on a
    /// socket error the session is told the peer is gone.
    pub fn flush(&mut self, metrics: &WorkerMetrics) -> bool {
        // TLS records the transport holds (handshake answers, encrypted
        // output the socket refused) leave before more output.
        if self.transport.push().is_err() {
            self.session.handle_eof();
            return false;
        }
        match self.session.write_to(&mut self.transport) {
            Ok((flush, n)) => {
                metrics.bytes_out.add(n as u64);
                flush == Flush::Done && !self.transport.wants_write()
            }
            Err(_) => {
                self.session.handle_eof();
                false
            }
        }
    }

    /// Whether anything waits to be written: the session's queue, or TLS
    /// records held by the transport.
    pub fn has_output(&self) -> bool {
        self.session.has_output() || self.transport.wants_write()
    }

    /// Whether output waits for the socket to become writable (the event
    /// will flush it; nothing else needs to).
    pub fn awaits_writable(&self) -> bool {
        self.writable
    }

    /// After a flush: registers WRITABLE interest while output waits, and
    /// drops it once everything was written.
    pub fn update_interest(&mut self, registry: &Registry, token: Token) {
        let want = self.has_output();
        if want != self.writable {
            self.writable = want;
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            let _ = registry.reregister(&mut self.transport, token, interest);
        }
    }

    /// Ends the connection. `graceful`: everything was said, so unread
    /// input is drained first (closing a socket with unread data sends
    /// RST, which could destroy our last frame in flight).
    pub fn close(mut self, registry: &Registry, pool: &mut BufferPool, graceful: bool) {
        let _ = registry.deregister(&mut self.transport);
        if graceful {
            let mut sink = [0u8; 4096];
            for _ in 0..16 {
                match self.transport.read(&mut sink) {
                    Ok(n) if n > 0 => continue,
                    _ => break,
                }
            }
            self.transport.shutdown_write();
        }
        if let Some(lease) = self.lease.take() {
            pool.give_back(lease.buf);
        }
    }
}

/// Writes a connection's queue before a reply is judged against the
/// bound: replies pile up within one read (echo), and a client that reads
/// promptly must not look slow because the loop writes once per iteration.
/// The session stays free of IO; this is the connection, which owns the
/// transport, standing between it and the application's handler.
struct WriteBeforeJudging<'a, H> {
    inner: &'a mut H,
    transport: &'a mut Transport,
    ctx: &'a SessionContext,
}

impl<H: Handler> Handler for WriteBeforeJudging<'_, H> {
    fn on_request_head(
        &mut self,
        req: &crate::protocol::HttpRequest,
    ) -> super::session::HeadVerdict {
        self.inner.on_request_head(req)
    }

    fn on_request(
        &mut self,
        req: &crate::protocol::HttpRequest,
        body: &[u8],
    ) -> super::session::Response {
        self.inner.on_request(req, body)
    }

    fn on_upgrade(
        &mut self,
        req: &crate::protocol::UpgradeRequest,
        deflate: Option<&crate::protocol::deflate::Negotiated>,
    ) -> Result<Vec<u8>, super::session::Response> {
        self.inner.on_upgrade(req, deflate)
    }

    fn on_client(&mut self, client: std::net::IpAddr) -> Result<(), super::session::Response> {
        self.inner.on_client(client)
    }

    fn on_message(
        &mut self,
        kind: crate::protocol::MessageKind,
        data: &[u8],
        out: &mut super::outbound::OutboundQueue,
        limit: usize,
    ) -> super::session::Verdict {
        match self.inner.on_message(kind, data, out, limit) {
            super::session::Verdict::SlowConsumer => {
                if let Ok((_, n)) = out.flush(self.transport) {
                    self.ctx.metrics.bytes_out.add(n as u64);
                }
                self.inner.on_message(kind, data, out, limit)
            }
            v => v,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_stays_small() {
        // Bytes per idle connection matter at 100k+ connections.
        assert!(
            std::mem::size_of::<Connection>() <= 192,
            "{}",
            std::mem::size_of::<Connection>()
        );
    }
}
