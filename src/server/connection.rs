//! One client connection: its socket, buffers and protocol state.
//!
//! The struct is kept small because 100k+ of them live in a worker's slab:
//! an idle WebSocket connection owns no heap memory at all (no read buffer,
//! an empty outbound queue, no HTTP state).

use super::buffer_pool::ReadBuf;
use super::outbound::OutboundQueue;
use super::rate_limit::RateLimiter;
use crate::protocol::{CloseHandshake, MessageAssembler};
use mio::net::TcpStream;
use std::net::IpAddr;

/// Where the connection is in its life.
pub enum Phase {
    /// Reading an HTTP request: an upgrade or a plain request (keep-alive
    /// connections stay here between requests).
    Http(Box<HttpState>),
    /// Upgraded.
    WebSocket,
}

/// Bytes of HTTP requests received so far.
#[derive(Default)]
pub struct HttpState {
    pub buf: Vec<u8>,
}

/// The endpoint an upgraded connection is attached to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    Echo,
    Room {
        room_id: u64,
        /// Index in the local room's receiver list (when it receives).
        slot: u32,
        receives: bool,
        publishes: bool,
    },
}

pub struct Connection {
    pub socket: TcpStream,
    /// Distinguishes this connection from earlier ones in the same slab
    /// slot; part of the mio token, so stale events are recognised.
    pub generation: u32,
    pub peer_ip: IpAddr,
    pub phase: Phase,
    pub attachment: Option<Attachment>,
    /// Leased read buffer, present only while it holds unprocessed bytes.
    pub rbuf: Option<ReadBuf>,
    pub rstart: u32,
    pub rend: u32,
    pub assembler: MessageAssembler,
    pub close: CloseHandshake,
    pub out: OutboundQueue,
    /// Boxed: most deployments run without rate limits.
    pub limiter: Option<Box<RateLimiter>>,
    /// Tick of the live timer entry (see `timer.rs`); 0 = none.
    pub timer_tick: u64,
    /// Worker clock (ms) of the last byte received.
    pub last_activity_ms: u64,
    /// Worker clock (ms) when an unanswered ping was sent; 0 = none.
    pub ping_sent_ms: u64,
    pub writable_registered: bool,
    /// Queued for a flush at the end of this loop iteration.
    pub dirty: bool,
    /// Reading is paused by cross-worker backpressure.
    pub read_paused: bool,
    /// Queued on the worker's ready list (more to read).
    pub in_ready: bool,
    /// Close TCP once the outbound queue is flushed.
    pub close_after_flush: bool,
    /// Counted in the global and per-IP WebSocket connection totals.
    pub counted: bool,
    /// Epoch of the last room batch this connection published into.
    pub published_epoch: u32,
}

impl Connection {
    pub fn new(socket: TcpStream, generation: u32, peer_ip: IpAddr, now_ms: u64) -> Self {
        Connection {
            socket,
            generation,
            peer_ip,
            phase: Phase::Http(Box::default()),
            attachment: None,
            rbuf: None,
            rstart: 0,
            rend: 0,
            assembler: MessageAssembler::new(0),
            close: CloseHandshake::new(),
            out: OutboundQueue::new(),
            limiter: None,
            timer_tick: 0,
            last_activity_ms: now_ms,
            ping_sent_ms: 0,
            writable_registered: false,
            dirty: false,
            read_paused: false,
            in_ready: false,
            close_after_flush: false,
            counted: false,
            published_epoch: 0,
        }
    }

    pub fn is_websocket(&self) -> bool {
        matches!(self.phase, Phase::WebSocket)
    }

    /// Whether the connection is a room member that receives messages.
    pub fn receives_broadcasts(&self) -> bool {
        matches!(
            self.attachment,
            Some(Attachment::Room { receives: true, .. })
        )
    }

    /// Whether the connection publishes into a room.
    pub fn room_publisher(&self) -> Option<u64> {
        match self.attachment {
            Some(Attachment::Room {
                room_id,
                publishes: true,
                ..
            }) => Some(room_id),
            _ => None,
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
