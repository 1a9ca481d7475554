//! A connection's queue of bytes waiting to be written.
//!
//! Broadcast frames are shared (`SharedFrame`, reference-counted); echo
//! replies, HTTP answers and close frames are owned buffers, and
//! consecutive small owned writes are coalesced into one buffer.
//!
//! **The bound.** Data is charged at what it makes us hold: the capacity
//! of each buffer (a shared frame's whole allocation, which this queue
//! keeps alive) plus [`ENTRY_COST`] per entry, not just its payload. A
//! data push is admitted when the charge stays within the limit, or when
//! the queue is empty: an empty queue always takes one message, whatever
//! its size, so a message of `max_message_bytes` is always deliverable,
//! and a connection holds at most `max(max_outbound_bytes, one message)`.
//!
//! **Control frames.** At most one pong is queued and unwritten at a time:
//! the session does not read a further ping until the previous pong has
//! been written (so a ping flood that does not read its pongs stops being
//! read, as TCP would have it). A close frame is queued once by the
//! session's close handshake; the heartbeat ping at most once per interval.

use crate::protocol::{ControlFrame, SharedFrame};
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

/// Most slices handed to one `writev`.
const MAX_IOVECS: usize = 64;
/// Largest empty ring kept for the next delivery (entries).
const RING_KEEP: usize = 4;
/// Owned buffers are coalesced up to this size.
const COALESCE_LIMIT: usize = 16 * 1024;

enum Item {
    Shared(SharedFrame),
    Owned(Vec<u8>),
    Control(Box<ControlFrame>),
}

impl Item {
    fn bytes(&self) -> &[u8] {
        match self {
            Item::Shared(f) => f.as_bytes(),
            Item::Owned(v) => v,
            Item::Control(c) => c.as_bytes(),
        }
    }

    /// Memory this entry holds, charged against the bound.
    fn charge(&self) -> usize {
        ENTRY_COST
            + match self {
                Item::Shared(f) => f.capacity(),
                Item::Owned(v) => v.capacity(),
                Item::Control(_) => std::mem::size_of::<ControlFrame>(),
            }
    }
}

/// What one queue entry costs beyond its buffer (the ring slot and the
/// allocator's bookkeeping of the buffer).
pub const ENTRY_COST: usize = std::mem::size_of::<Item>() + 16;

/// Outcome of a flush.
#[derive(Debug, PartialEq, Eq)]
pub enum Flush {
    /// Everything was written.
    Done,
    /// The socket would block with data still queued.
    Pending,
}

#[derive(Default)]
pub struct OutboundQueue {
    items: VecDeque<Item>,
    /// Bytes of the front item already written (an item is at most one
    /// message, ≤ 1 GiB by configuration, plus a header: fits, and keeps
    /// the queue, which every connection holds, at 48 bytes).
    head_written: u32,
    /// Memory held by the items (see [`Item::charge`]).
    charged: usize,
    /// A pong is queued and not fully written.
    pong_queued: bool,
}

impl OutboundQueue {
    pub fn new() -> Self {
        Self::default()
    }

    /// Nothing left to write.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Memory the queue holds, as charged against the bound.
    pub fn charged(&self) -> usize {
        self.charged
    }

    /// Whether a push of `cost` bytes of charge is admitted under `limit`.
    fn admits(&self, cost: usize, limit: usize) -> bool {
        self.items.is_empty() || self.charged + cost <= limit
    }

    /// Whether `len` more payload bytes in one new owned entry would be
    /// admitted under `limit`.
    pub fn has_room(&self, len: usize, limit: usize) -> bool {
        self.admits(len + ENTRY_COST, limit)
    }

    /// Enqueues a shared frame if it is admitted under `limit`.
    pub fn try_push_shared(&mut self, frame: &SharedFrame, limit: usize) -> bool {
        let item = Item::Shared(frame.clone());
        if !self.admits(item.charge(), limit) {
            return false;
        }
        self.push(item);
        true
    }

    /// Enqueues the concatenation of `parts` if it is admitted under `limit`.
    pub fn try_push_parts(&mut self, parts: &[&[u8]], limit: usize) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if !self.has_room(len, limit) {
            return false;
        }
        self.push_parts(parts);
        true
    }

    /// Enqueues bytes without judging them against the bound: only for what
    /// the session itself bounds (one HTTP answer in flight, one close
    /// frame, one heartbeat ping per interval). Still charged.
    pub fn push_parts(&mut self, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len == 0 {
            return;
        }
        // Append to the last owned buffer when it is not being written and
        // stays small: many small echoes become one write.
        let can_append = self.items.len() > 1 || (self.items.len() == 1 && self.head_written == 0);
        if can_append {
            if let Some(Item::Owned(v)) = self.items.back_mut() {
                if v.len() + len <= COALESCE_LIMIT {
                    let before = v.capacity();
                    for p in parts {
                        v.extend_from_slice(p);
                    }
                    self.charged = self.charged + v.capacity() - before;
                    return;
                }
            }
        }
        let mut v = Vec::with_capacity(len.max(256).min(COALESCE_LIMIT.max(len)));
        for p in parts {
            v.extend_from_slice(p);
        }
        self.push(Item::Owned(v));
    }

    /// Queues a pong (the caller keeps at most one unwritten, see
    /// [`OutboundQueue::pong_pending`]).
    pub fn push_pong(&mut self, pong: ControlFrame) {
        self.pong_queued = true;
        self.push(Item::Control(Box::new(pong)));
    }

    /// A pong is queued and not fully written.
    pub fn pong_pending(&self) -> bool {
        self.pong_queued
    }

    fn push(&mut self, item: Item) {
        self.charged += item.charge();
        self.items.push_back(item);
    }

    /// Drops every entry not yet started, keeping a partly written front
    /// entry (the stream must stay well formed) and the pending pong.
    /// Returns the charge released.
    pub fn discard_unstarted(&mut self) -> usize {
        let keep = usize::from(self.head_written > 0);
        let mut dropped = 0;
        while self.items.len() > keep {
            if let Some(item) = self.items.pop_back() {
                dropped += item.charge();
                self.popped(&item);
            }
        }
        dropped
    }

    /// Accounts for an entry leaving the queue.
    fn popped(&mut self, item: &Item) {
        self.charged -= item.charge();
        if matches!(item, Item::Control(_)) {
            self.pong_queued = false;
        }
    }

    /// Writes as much as possible with vectored writes until the queue is
    /// empty or the writer would block. Returns bytes written with the
    /// outcome; errors other than `WouldBlock` are returned.
    pub fn flush<W: Write>(&mut self, w: &mut W) -> io::Result<(Flush, usize)> {
        let mut total = 0;
        while !self.items.is_empty() {
            let mut slices: [IoSlice<'_>; MAX_IOVECS] = [IoSlice::new(&[]); MAX_IOVECS];
            let mut n = 0;
            for (i, item) in self.items.iter().take(MAX_IOVECS).enumerate() {
                let b = item.bytes();
                slices[i] = IoSlice::new(if i == 0 {
                    &b[self.head_written as usize..]
                } else {
                    b
                });
                n += 1;
            }
            match w.write_vectored(&slices[..n]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(written) => {
                    total += written;
                    self.advance(written);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return Ok((Flush::Pending, total))
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        }
        Ok((Flush::Done, total))
    }

    fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some(front) = self.items.front() else {
                break;
            };
            let left = front.bytes().len() - self.head_written as usize;
            if n >= left {
                n -= left;
                if let Some(item) = self.items.pop_front() {
                    self.popped(&item);
                }
                self.head_written = 0;
            } else {
                self.head_written += n as u32;
                n = 0;
            }
        }
        if self.items.is_empty() && self.items.capacity() > RING_KEEP {
            // A backlog made the ring large: let it go rather than pin it.
            self.items = VecDeque::new();
        }
    }

    /// Frees the ring if nothing is queued. The ring outlives an empty
    /// queue so that a subscriber's deliveries do not allocate; it is
    /// released after a flush for connections that get only the odd reply
    /// (handshake, pong, echo), and for every connection once per quiet
    /// heartbeat interval.
    pub fn release_idle(&mut self) {
        if self.items.is_empty() {
            self.items = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests;
