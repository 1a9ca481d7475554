//! A connection's queue of bytes waiting to be written.
//!
//! Broadcast frames are shared (`SharedFrame`, reference-counted); echo
//! replies are owned data buffers, coalesced while small; HTTP answers and
//! control frames are entries of their own, which are never judged against
//! the bound nor discarded (the session bounds them: one answer in flight,
//! one pong, one heartbeat ping, one close).
//!
//! **The bound.** Data is charged at what it makes us hold: the capacity
//! of each buffer (a shared frame's whole allocation, which this queue
//! keeps alive) plus [`ENTRY_COST`] per entry, not just its payload. A
//! data push is admitted when the charge stays within the limit, or when
//! the queue holds no data (an HTTP answer or a control frame may be
//! waiting): such a queue always takes one message, whatever its size, so a
//! message of `max_message_bytes` is always deliverable, and a connection
//! holds at most `max(max_outbound_bytes, one message)` of data.
//!
//! **Control frames.** At most one pong is queued and unwritten at a time:
//! the session does not read a further ping until the previous pong has
//! been written (so a ping flood that does not read its pongs stops being
//! read, as TCP would have it). A close frame is queued once by the
//! session's close handshake; a heartbeat ping once per interval, and a
//! peer that has not read the previous one by its pong deadline is dropped.

use crate::protocol::{encode_header, ControlFrame, MessageKind, OpCode, SharedFrame};
use std::collections::VecDeque;
use std::io::{self, IoSlice, Write};

/// Most slices handed to one `writev`.
const MAX_IOVECS: usize = 64;
/// Largest empty ring kept for the next delivery (entries).
const RING_KEEP: usize = 4;
/// Data buffers are coalesced up to this size.
const COALESCE_LIMIT: usize = 16 * 1024;
/// Smallest buffer allocated for data (small echoes then coalesce in it).
const MIN_DATA_BUFFER: usize = 256;

enum Item {
    /// A broadcast, shared by reference count. Data.
    Shared(SharedFrame),
    /// Frames encoded for this connection alone (echo replies, a
    /// publisher's copy of a batch without its own messages). Data.
    Data(Vec<u8>),
    /// An HTTP answer (the `101` included): never discarded.
    Http(Vec<u8>),
    /// Ping, pong or close: never discarded.
    Control(Box<ControlFrame>),
}

impl Item {
    fn bytes(&self) -> &[u8] {
        match self {
            Item::Shared(f) => f.as_bytes(),
            Item::Data(v) | Item::Http(v) => v,
            Item::Control(c) => c.as_bytes(),
        }
    }

    fn is_data(&self) -> bool {
        matches!(self, Item::Shared(_) | Item::Data(_))
    }

    /// Memory this entry holds, charged against the bound.
    fn charge(&self) -> usize {
        ENTRY_COST
            + match self {
                Item::Shared(f) => f.capacity(),
                Item::Data(v) | Item::Http(v) => v.capacity(),
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
    /// A ping is queued and not fully written.
    ping_queued: bool,
    /// The connection negotiated permessage-deflate: messages pushed with
    /// [`OutboundQueue::try_push_message`] go compressed when that pays
    /// (`session::compress_reply`).
    deflate: bool,
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

    /// Whether data costing `cost` more is admitted under `limit`: it fits,
    /// or no data is queued (an HTTP answer or a control frame may be).
    fn admits(&self, cost: usize, limit: usize) -> bool {
        self.charged + cost <= limit || !self.items.iter().any(Item::is_data)
    }

    /// Whether `len` more bytes of data would be admitted under `limit`.
    pub fn has_room(&self, len: usize, limit: usize) -> bool {
        self.admits(self.data_cost(len), limit)
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

    /// Enqueues the concatenation of `parts` (encoded frames, data) if it is
    /// admitted under `limit`.
    pub fn try_push_parts(&mut self, parts: &[&[u8]], limit: usize) -> bool {
        self.try_push_each(parts.iter().copied(), limit)
    }

    /// Enqueues one message, framed (an echo reply), if it is admitted
    /// under `limit`.
    /// On a connection that negotiated permessage-deflate the message goes
    /// compressed (RSV1) when it is long enough and deflate shrinks it.
    pub fn try_push_message(&mut self, kind: MessageKind, data: &[u8], limit: usize) -> bool {
        if self.deflate {
            if let Some(frame) = crate::server::session::compress_reply(kind, data) {
                return self.try_push_parts(&[&frame], limit);
            }
        }
        let header = encode_header(true, kind.opcode(), data.len(), None);
        self.try_push_parts(&[header.as_bytes(), data], limit)
    }

    /// Compress messages pushed with [`OutboundQueue::try_push_message`]
    /// (the connection negotiated permessage-deflate).
    pub fn set_deflate(&mut self, on: bool) {
        self.deflate = on;
    }

    /// Enqueues the concatenation of the slices `parts` yields (it is walked
    /// twice: once to size, once to copy), if it is admitted under `limit`.
    /// Lets a caller pick slices out of a buffer without collecting them.
    pub fn try_push_each<'a, I>(&mut self, parts: I, limit: usize) -> bool
    where
        I: Iterator<Item = &'a [u8]> + Clone,
    {
        let len: usize = parts.clone().map(<[u8]>::len).sum();
        if len == 0 {
            return true;
        }
        if !self.has_room(len, limit) {
            return false;
        }
        match self.coalesce_target(len) {
            Some(target) => {
                let before = self.charged;
                if let Some(Item::Data(v)) = self.items.back_mut() {
                    let old = v.capacity();
                    if target > old {
                        v.reserve_exact(target - v.len());
                    }
                    parts.for_each(|p| v.extend_from_slice(p));
                    self.charged = before + v.capacity() - old;
                }
            }
            None => {
                let mut v = Vec::with_capacity(len.max(MIN_DATA_BUFFER));
                parts.for_each(|p| v.extend_from_slice(p));
                self.push(Item::Data(v));
            }
        }
        true
    }

    /// The capacity the last data buffer grows to when `len` bytes are
    /// appended to it (doubling, up to the coalescing limit), or `None`
    /// when they go into a new buffer. Growth is explicit so the admission
    /// check charges exactly what the append will hold.
    fn coalesce_target(&self, len: usize) -> Option<usize> {
        let being_written = self.items.len() == 1 && self.head_written > 0;
        match self.items.back() {
            Some(Item::Data(v)) if !being_written && v.len() + len <= COALESCE_LIMIT => {
                let need = v.len() + len;
                Some(if need <= v.capacity() {
                    v.capacity()
                } else {
                    (2 * v.capacity()).clamp(need, COALESCE_LIMIT)
                })
            }
            _ => None,
        }
    }

    /// What `len` more bytes of data add to the charge.
    fn data_cost(&self, len: usize) -> usize {
        match (self.coalesce_target(len), self.items.back()) {
            (Some(target), Some(Item::Data(v))) => target - v.capacity(),
            _ => len.max(MIN_DATA_BUFFER) + ENTRY_COST,
        }
    }

    /// Enqueues an HTTP answer: not judged against the bound (the session
    /// keeps one in flight), never discarded.
    pub fn push_http(&mut self, bytes: Vec<u8>) {
        self.push(Item::Http(bytes));
    }

    /// Enqueues a control frame: not judged against the bound (the session
    /// keeps one pong, one heartbeat ping and one close at most), never
    /// discarded.
    pub fn push_control(&mut self, frame: ControlFrame) {
        match frame.opcode() {
            OpCode::Pong => self.pong_queued = true,
            OpCode::Ping => self.ping_queued = true,
            _ => {}
        }
        self.push(Item::Control(Box::new(frame)));
    }

    /// A pong is queued and not fully written.
    pub fn pong_pending(&self) -> bool {
        self.pong_queued
    }

    /// A ping is queued and not fully written.
    pub fn ping_pending(&self) -> bool {
        self.ping_queued
    }

    fn push(&mut self, item: Item) {
        self.charged += item.charge();
        self.items.push_back(item);
    }

    /// Accounts for an entry leaving the queue.
    fn popped(&mut self, item: &Item) {
        self.charged -= item.charge();
        if let Item::Control(c) = item {
            match c.opcode() {
                OpCode::Pong => self.pong_queued = false,
                OpCode::Ping => self.ping_queued = false,
                _ => {}
            }
        }
    }

    /// Drops every data entry not yet started (a partly written front
    /// entry stays: the stream must stay well formed; HTTP answers and
    /// control frames stay too). Returns the charge released.
    pub fn discard_unstarted(&mut self) -> usize {
        let before = self.charged;
        let started = self.head_written > 0;
        let mut kept = VecDeque::with_capacity(self.items.len().min(RING_KEEP));
        for (i, item) in std::mem::take(&mut self.items).into_iter().enumerate() {
            if (i == 0 && started) || !item.is_data() {
                kept.push_back(item);
            } else {
                self.charged -= item.charge();
            }
        }
        self.items = kept;
        before - self.charged
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
