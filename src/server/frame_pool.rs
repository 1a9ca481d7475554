//! Recycles the shared buffers that room batches are encoded into.
//!
//! Every loop iteration a busy room encodes its messages into one buffer
//! and shares it (`SharedFrame`) with its members' outbound queues and
//! with other workers. Allocating that buffer afresh each time puts heap
//! traffic on the fan-out path and, after a connection storm has grown
//! the heap, spreads the steady working set over pages the storm left
//! behind. The pool keeps the frames it handed out and refills one once
//! every recipient has let go of it (its reference count is back to one),
//! and keeps the emptied batch buffers for the next batch. Both lists are
//! bounded, and [`FramePool::trim`] lets go of what the last second did
//! not need.

use crate::protocol::SharedFrame;
use std::collections::VecDeque;

/// Frames handed out and watched for reuse. Few: a burst reallocates the
/// pool's buffers all over the heap it grows, and each one kept afterwards
/// can hold a page resident. A steady room flow cycles through about 4
/// frames and 2 spare buffers per worker (1,000 msgs/s over 4 rooms,
/// measured), and the fan-out benchmarks ran the same with 8 + 4 as with
/// 32 + 8 (docs/benchmarks.md).
const MAX_TRACKED: usize = 8;
/// Empty batch buffers kept.
const MAX_SPARE: usize = 4;
/// Handed-out frames inspected per `share` before allocating a new one.
const SCAN: usize = 4;
/// Buffers up to this capacity always survive a trim (if still needed).
const MIN_TRIM_CAPACITY: usize = 4096;

pub struct FramePool {
    /// Frames handed out, oldest first.
    tracked: VecDeque<SharedFrame>,
    /// Empty buffers for the next batches.
    spare: Vec<Vec<u8>>,
    /// Buffers larger than this are neither tracked nor kept.
    max_bytes: usize,
    /// Frames shared since the last trim.
    shared_since_trim: usize,
    /// Largest batch shared since the last trim.
    largest_since_trim: usize,
}

impl FramePool {
    pub fn new(max_bytes: usize) -> Self {
        FramePool {
            tracked: VecDeque::new(),
            spare: Vec::new(),
            max_bytes,
            shared_since_trim: 0,
            largest_since_trim: 0,
        }
    }

    /// An empty buffer to gather a batch in.
    pub fn buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    /// Shares `bytes` (complete encoded frames). Reuses a handed-out frame
    /// nobody else holds any more when one is found, and keeps the buffer
    /// it held for a later batch.
    pub fn share(&mut self, mut bytes: Vec<u8>) -> SharedFrame {
        self.shared_since_trim += 1;
        self.largest_since_trim = self.largest_since_trim.max(bytes.len());
        let frame = match self.reclaim() {
            Some(mut frame) => {
                if let Some(old) = frame.get_mut() {
                    std::mem::swap(old, &mut bytes);
                }
                frame
            }
            None => SharedFrame::from_vec(std::mem::take(&mut bytes)),
        };
        bytes.clear();
        if bytes.capacity() > 0
            && bytes.capacity() <= self.max_bytes
            && self.spare.len() < MAX_SPARE
        {
            self.spare.push(bytes);
        }
        if frame.len() <= self.max_bytes && self.tracked.len() < MAX_TRACKED {
            self.tracked.push_back(frame.clone());
        }
        frame
    }

    /// A tracked frame with no other holder, if one of the oldest few is.
    fn reclaim(&mut self) -> Option<SharedFrame> {
        for _ in 0..SCAN.min(self.tracked.len()) {
            let mut frame = self.tracked.pop_front()?;
            if frame.get_mut().is_some() {
                return Some(frame);
            }
            // Still being written somewhere: look again later.
            self.tracked.push_back(frame);
        }
        None
    }

    /// Lets go of frames and buffers beyond what the last period used
    /// (called about once a second). Returns how many were dropped.
    /// Buffers that grew well beyond the largest recent batch (during a
    /// burst the loop falls behind and batches get large) are dropped too:
    /// their written pages would otherwise stay resident for small batches.
    pub fn trim(&mut self) -> usize {
        let keep = self.shared_since_trim.min(MAX_TRACKED);
        let fits = (2 * self.largest_since_trim).max(MIN_TRIM_CAPACITY);
        self.shared_since_trim = 0;
        self.largest_since_trim = 0;
        let before = self.tracked.len() + self.spare.len();
        self.tracked.truncate(keep);
        self.tracked.retain(|f| f.capacity() <= fits);
        self.spare.truncate(keep.min(MAX_SPARE));
        self.spare.retain(|b| b.capacity() <= fits);
        if keep == 0 {
            self.tracked = VecDeque::new();
            self.spare = Vec::new();
        }
        before - self.tracked.len() - self.spare.len()
    }

    /// Moves every idle frame and spare buffer to a fresh allocation of
    /// the same capacity. After a burst the pool's buffers sit wherever
    /// the grown heap had room, often high up among freed pages, each one
    /// keeping its page resident. The fresh block is taken before the old
    /// one is freed, and glibc places it in the smallest free hole that
    /// fits, which after a burst tends to be among the long-lived blocks low
    /// in the heap; the old pages can then be returned. Frames still held
    /// elsewhere stay. Returns how many moved.
    pub fn rehome(&mut self) -> usize {
        let mut moved = 0;
        for buf in &mut self.spare {
            *buf = Vec::with_capacity(buf.capacity());
            moved += 1;
        }
        for frame in &mut self.tracked {
            let capacity = match frame.get_mut() {
                Some(v) => v.capacity(),
                None => continue,
            };
            *frame = SharedFrame::from_vec(Vec::with_capacity(capacity));
            moved += 1;
        }
        moved
    }

    /// Frames tracked and buffers kept (for tests).
    pub fn held(&self) -> (usize, usize) {
        (self.tracked.len(), self.spare.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(pool: &mut FramePool, fill: u8, n: usize) -> SharedFrame {
        let mut b = pool.buffer();
        b.extend(std::iter::repeat_n(fill, n));
        pool.share(b)
    }

    #[test]
    fn a_released_frame_is_refilled_without_allocating() {
        let mut pool = FramePool::new(1 << 16);
        let first = batch(&mut pool, 1, 1000);
        let first_ptr = first.as_bytes().as_ptr();
        drop(first);
        // The next batch lands in a fresh buffer, then swaps into the
        // released frame; the frame's old buffer becomes the spare.
        let second = batch(&mut pool, 2, 1000);
        assert_eq!(second.as_bytes(), &[2u8; 1000][..]);
        assert_eq!(pool.held(), (1, 1));
        drop(second);
        // From here on the two buffers alternate: no new allocation.
        let third = batch(&mut pool, 3, 1000);
        assert_eq!(third.as_bytes().as_ptr(), first_ptr);
        assert_eq!(third.as_bytes(), &[3u8; 1000][..]);
    }

    #[test]
    fn a_frame_still_held_is_never_refilled() {
        let mut pool = FramePool::new(1 << 16);
        let held = batch(&mut pool, 7, 100);
        let queued = held.clone(); // a slow member's queue
        drop(held);
        for i in 0..100u8 {
            let f = batch(&mut pool, i, 50);
            assert_eq!(f.as_bytes(), &[i; 50][..]);
            assert_eq!(queued.as_bytes(), &[7u8; 100][..], "never overwritten");
        }
        assert!(pool.held().0 <= MAX_TRACKED);
        assert!(pool.held().1 <= MAX_SPARE);
    }

    #[test]
    fn rehome_moves_idle_buffers_and_leaves_held_frames_alone() {
        let mut pool = FramePool::new(1 << 16);
        let idle = batch(&mut pool, 1, 1000);
        let held = batch(&mut pool, 2, 3000);
        drop(idle);
        let spare = batch(&mut pool, 3, 500); // refills `idle`, its buffer goes spare
        drop(spare);
        let (tracked, spares) = pool.held();
        let caps: Vec<usize> = pool.tracked.iter().map(|f| f.capacity()).collect();
        let spare_caps: Vec<usize> = pool.spare.iter().map(|b| b.capacity()).collect();
        let moved = pool.rehome();
        assert_eq!(moved, tracked - 1 + spares, "all but the held frame");
        assert_eq!(pool.held(), (tracked, spares));
        for (f, cap) in pool.tracked.iter().zip(&caps) {
            assert_eq!(f.capacity(), *cap, "same capacity");
            if f.as_bytes().as_ptr() == held.as_bytes().as_ptr() {
                assert_eq!(f.as_bytes(), &[2u8; 3000][..], "held frame untouched");
            } else {
                assert!(f.is_empty(), "an idle frame is an empty buffer now");
            }
        }
        assert_eq!(
            pool.spare.iter().map(|b| b.capacity()).collect::<Vec<_>>(),
            spare_caps
        );
        // The pool still works, and the held frame is still never refilled.
        for i in 0..20u8 {
            assert_eq!(batch(&mut pool, i, 700).as_bytes(), &[i; 700][..]);
        }
        assert_eq!(held.as_bytes(), &[2u8; 3000][..]);
    }

    #[test]
    fn trim_drops_buffers_a_burst_made_large() {
        let mut pool = FramePool::new(1 << 20);
        for _ in 0..4 {
            batch(&mut pool, 1, 100_000);
        }
        assert!(pool.held().0 > 0);
        pool.trim();
        assert!(pool.held().0 > 0, "the burst's second still needed them");
        // Back to small batches: the large buffers are reused, and the
        // next trim lets go of them.
        for _ in 0..8 {
            batch(&mut pool, 2, 100);
        }
        pool.trim();
        let (tracked, spare) = pool.held();
        assert!(pool
            .tracked
            .iter()
            .all(|f| f.capacity() <= MIN_TRIM_CAPACITY));
        assert!(pool.spare.iter().all(|b| b.capacity() <= MIN_TRIM_CAPACITY));
        assert!(tracked + spare < 8);
    }

    #[test]
    fn oversized_buffers_are_not_kept_and_trim_lets_go() {
        let mut pool = FramePool::new(1024);
        let big = batch(&mut pool, 1, 4096);
        drop(big);
        assert_eq!(pool.held(), (0, 0));
        for _ in 0..10 {
            batch(&mut pool, 1, 10);
        }
        assert!(pool.held().0 > 0);
        pool.trim();
        assert!(pool.held().0 > 0, "the last second used them");
        assert!(pool.trim() > 0);
        assert_eq!(pool.held(), (0, 0), "an idle second lets go of everything");
    }
}
