//! A connection's queue of frames waiting to be written.
//!
//! Broadcast frames are shared (`SharedFrame`, reference-counted); echo
//! replies and control frames are small owned buffers, and consecutive
//! small owned writes are coalesced into one buffer. Data is bounded in
//! bytes, strictly: [`OutboundQueue::try_push_shared`] checks the bound
//! before enqueueing. Control frames (pong, close) bypass the bound so a
//! busy but live peer is never mistaken for a dead one.

use crate::protocol::SharedFrame;
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
}

impl Item {
    fn bytes(&self) -> &[u8] {
        match self {
            Item::Shared(f) => f.as_bytes(),
            Item::Owned(v) => v,
        }
    }
}

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
    /// Bytes of the front item already written.
    head_written: usize,
    /// Bytes queued and not yet written (all items).
    queued: usize,
}

impl OutboundQueue {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Bytes waiting to be written.
    pub fn queued_bytes(&self) -> usize {
        self.queued
    }

    /// Whether `len` more bytes of data fit under `limit`.
    pub fn has_room(&self, len: usize, limit: usize) -> bool {
        self.queued + len <= limit
    }

    /// Enqueues a shared frame if it fits under `limit`.
    pub fn try_push_shared(&mut self, frame: &SharedFrame, limit: usize) -> bool {
        if !self.has_room(frame.len(), limit) {
            return false;
        }
        self.queued += frame.len();
        self.items.push_back(Item::Shared(frame.clone()));
        true
    }

    /// Enqueues the concatenation of `parts` if it fits under `limit`.
    pub fn try_push_parts(&mut self, parts: &[&[u8]], limit: usize) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if !self.has_room(len, limit) {
            return false;
        }
        self.push_parts(parts);
        true
    }

    /// Enqueues bytes regardless of the bound (control frames, HTTP
    /// responses).
    pub fn push_parts(&mut self, parts: &[&[u8]]) {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len == 0 {
            return;
        }
        self.queued += len;
        // Append to the last owned buffer when it is not being written and
        // stays small: many small echoes become one write.
        let can_append = self.items.len() > 1 || (self.items.len() == 1 && self.head_written == 0);
        if can_append {
            if let Some(Item::Owned(v)) = self.items.back_mut() {
                if v.len() + len <= COALESCE_LIMIT {
                    for p in parts {
                        v.extend_from_slice(p);
                    }
                    return;
                }
            }
        }
        let mut v = Vec::with_capacity(len.max(256).min(COALESCE_LIMIT.max(len)));
        for p in parts {
            v.extend_from_slice(p);
        }
        self.items.push_back(Item::Owned(v));
    }

    /// Drops every frame not yet started, keeping a partly written front
    /// frame (the stream must stay well formed). Returns bytes dropped.
    pub fn discard_unstarted(&mut self) -> usize {
        let keep = if self.head_written > 0 { 1 } else { 0 };
        let mut dropped = 0;
        while self.items.len() > keep {
            if let Some(item) = self.items.pop_back() {
                dropped += item.bytes().len();
            }
        }
        self.queued -= dropped;
        dropped
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
                slices[i] = IoSlice::new(if i == 0 { &b[self.head_written..] } else { b });
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
        self.queued -= n;
        while n > 0 {
            let Some(front) = self.items.front() else {
                break;
            };
            let left = front.bytes().len() - self.head_written;
            if n >= left {
                n -= left;
                self.items.pop_front();
                self.head_written = 0;
            } else {
                self.head_written += n;
                n = 0;
            }
        }
        if self.items.is_empty() && self.items.capacity() > RING_KEEP {
            // A backlog made the ring large: let it go rather than pin it.
            self.items = VecDeque::new();
        }
    }

    /// Frees the ring if nothing is queued. The ring outlives an empty
    /// queue so that a subscriber's deliveries do not allocate; the worker
    /// calls this after a flush for connections that get only the odd
    /// reply (handshake, pong, echo), and for every connection once per
    /// quiet heartbeat interval.
    pub fn release_idle(&mut self) {
        if self.items.is_empty() {
            self.items = VecDeque::new();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::OpCode;

    /// A writer accepting at most `cap` bytes per call, then WouldBlock
    /// after `budget` bytes in total.
    struct Trickle {
        out: Vec<u8>,
        cap: usize,
        budget: usize,
    }

    impl Write for Trickle {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.budget == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(self.cap).min(self.budget);
            self.out.extend_from_slice(&buf[..n]);
            self.budget -= n;
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bound_is_checked_before_enqueue() {
        let mut q = OutboundQueue::new();
        let f = SharedFrame::encode(OpCode::Binary, &[0u8; 98]); // 100 bytes
        assert!(q.try_push_shared(&f, 250));
        assert!(q.try_push_shared(&f, 250));
        assert!(!q.try_push_shared(&f, 250));
        assert_eq!(q.queued_bytes(), 200);
        // Control frames bypass the bound.
        q.push_parts(&[&[0x8a, 0x00]]);
        assert_eq!(q.queued_bytes(), 202);
        assert!(!q.try_push_parts(&[&[0u8; 60]], 250));
    }

    #[test]
    fn partial_writes_resume_exactly() {
        let mut q = OutboundQueue::new();
        let f = SharedFrame::encode(OpCode::Text, b"hello world");
        let mut expected = Vec::new();
        for i in 0..10u8 {
            q.try_push_shared(&f, usize::MAX);
            expected.extend_from_slice(f.as_bytes());
            q.push_parts(&[&[i; 3], &[i + 1; 2]]);
            expected.extend_from_slice(&[i; 3]);
            expected.extend_from_slice(&[i + 1; 2]);
        }
        let mut w = Trickle {
            out: Vec::new(),
            cap: 7,
            budget: 50,
        };
        assert_eq!(q.flush(&mut w).unwrap(), (Flush::Pending, 50));
        w.budget = usize::MAX;
        let (res, _) = q.flush(&mut w).unwrap();
        assert_eq!(res, Flush::Done);
        assert_eq!(w.out, expected);
        assert!(q.is_empty());
        assert_eq!(q.queued_bytes(), 0);
    }

    #[test]
    fn discard_keeps_the_partly_written_frame() {
        let mut q = OutboundQueue::new();
        let f = SharedFrame::encode(OpCode::Binary, &[7u8; 20]);
        for _ in 0..5 {
            q.try_push_shared(&f, usize::MAX);
        }
        let mut w = Trickle {
            out: Vec::new(),
            cap: 100,
            budget: 5,
        };
        q.flush(&mut w).unwrap();
        let dropped = q.discard_unstarted();
        assert_eq!(dropped, 4 * 22);
        q.push_parts(&[&[0x88, 0x00]]);
        w.budget = usize::MAX;
        q.flush(&mut w).unwrap();
        let mut expected = f.as_bytes().to_vec();
        expected.extend_from_slice(&[0x88, 0x00]);
        assert_eq!(w.out, expected);
    }

    #[test]
    fn the_ring_is_kept_across_deliveries_until_released_as_idle() {
        let mut q = OutboundQueue::new();
        let f = SharedFrame::encode(OpCode::Binary, b"x");
        let mut w = Trickle {
            out: Vec::new(),
            cap: 1000,
            budget: usize::MAX,
        };
        q.try_push_shared(&f, usize::MAX);
        q.flush(&mut w).unwrap();
        let cap = q.items.capacity();
        assert!(cap > 0, "kept for the next delivery");
        q.try_push_shared(&f, usize::MAX);
        q.flush(&mut w).unwrap();
        assert_eq!(q.items.capacity(), cap);
        assert_eq!(w.out.len(), 2 * f.len());
        q.release_idle();
        assert_eq!(q.items.capacity(), 0);
        // Releasing with data queued keeps the data.
        q.try_push_shared(&f, usize::MAX);
        q.release_idle();
        assert_eq!(q.queued_bytes(), f.len());
        q.flush(&mut w).unwrap();
        assert_eq!(w.out.len(), 3 * f.len());
        q.release_idle();
        assert_eq!(q.items.capacity(), 0);
    }

    #[test]
    fn a_ring_grown_by_a_backlog_is_released_once_drained() {
        let mut q = OutboundQueue::new();
        let f = SharedFrame::encode(OpCode::Binary, b"x");
        for _ in 0..100 {
            q.try_push_shared(&f, usize::MAX);
        }
        assert!(q.items.capacity() > RING_KEEP);
        let mut w = Trickle {
            out: Vec::new(),
            cap: 1 << 20,
            budget: usize::MAX,
        };
        q.flush(&mut w).unwrap();
        assert_eq!(w.out.len(), 100 * f.len());
        assert_eq!(q.items.capacity(), 0);
    }

    #[test]
    fn shared_frames_are_released_after_writing() {
        let mut q = OutboundQueue::new();
        let f = SharedFrame::encode(OpCode::Binary, b"x");
        q.try_push_shared(&f, usize::MAX);
        assert_eq!(f.ref_count(), 2);
        let mut w = Trickle {
            out: Vec::new(),
            cap: 100,
            budget: 100,
        };
        q.flush(&mut w).unwrap();
        assert_eq!(f.ref_count(), 1);
    }
}
