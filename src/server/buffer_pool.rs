//! Per-worker pool of read buffers.
//!
//! A connection leases a buffer only while it has unprocessed bytes and
//! hands it back as soon as everything in it has been decoded, so an idle
//! connection holds no read buffer at all. The pool keeps at most
//! `max_idle` buffers, and [`BufferPool::trim`] (called about once a
//! second) frees idle buffers beyond what the last interval needed at its
//! peak, so memory taken by a burst is given back once the burst is over.

/// A fixed-size, zero-initialised read buffer.
pub type ReadBuf = Box<[u8]>;

/// Idle buffers always kept, however quiet the worker is.
const MIN_IDLE: usize = 1;

pub struct BufferPool {
    buf_size: usize,
    max_idle: usize,
    idle: Vec<ReadBuf>,
    /// Buffers handed out and not yet returned.
    leased: usize,
    /// Most buffers leased at once since the last trim.
    peak: usize,
}

impl BufferPool {
    pub fn new(buf_size: usize, max_idle: usize) -> Self {
        BufferPool {
            buf_size: buf_size.max(64),
            max_idle,
            idle: Vec::new(),
            leased: 0,
            peak: 0,
        }
    }

    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// A buffer of the pool's size.
    pub fn lease(&mut self) -> ReadBuf {
        self.leased += 1;
        self.peak = self.peak.max(self.leased);
        self.idle
            .pop()
            .unwrap_or_else(|| vec![0u8; self.buf_size].into_boxed_slice())
    }

    /// Returns a leased buffer (or the larger one that replaced it, see
    /// [`BufferPool::grow`]). Buffers of another size are freed.
    pub fn give_back(&mut self, buf: ReadBuf) {
        self.leased = self.leased.saturating_sub(1);
        self.recycle(buf);
    }

    /// Replaces a leased buffer by a zeroed one of `size` bytes (for one
    /// frame larger than the pool's buffers) holding a copy of `keep`
    /// bytes from `old[start..]`. The lease continues with the new buffer.
    pub fn grow(&mut self, old: ReadBuf, start: usize, end: usize, size: usize) -> ReadBuf {
        let mut bigger: ReadBuf = vec![0u8; size.max(end - start)].into_boxed_slice();
        bigger[..end - start].copy_from_slice(&old[start..end]);
        self.recycle(old);
        bigger
    }

    fn recycle(&mut self, buf: ReadBuf) {
        if buf.len() == self.buf_size && self.idle.len() < self.max_idle {
            self.idle.push(buf);
        }
    }

    /// Frees idle buffers beyond the peak use since the last trim (at
    /// least `MIN_IDLE` stay). Returns how many were freed.
    pub fn trim(&mut self) -> usize {
        let keep = self.peak.max(MIN_IDLE).min(self.max_idle);
        let freed = self.idle.len().saturating_sub(keep);
        self.idle.truncate(keep);
        self.idle.shrink_to(keep);
        self.peak = self.leased;
        freed
    }

    pub fn leased(&self) -> usize {
        self.leased
    }

    pub fn idle(&self) -> usize {
        self.idle.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_bounded() {
        let mut p = BufferPool::new(1024, 2);
        let a = p.lease();
        let b = p.lease();
        let c = p.lease();
        assert_eq!(p.leased(), 3);
        let pa = a.as_ptr();
        p.give_back(a);
        p.give_back(b);
        p.give_back(c);
        assert_eq!(p.idle(), 2);
        assert_eq!(p.leased(), 0);
        let d = p.lease();
        assert!(d.as_ptr() == pa || p.idle() == 1);
        p.give_back(vec![0u8; 10].into_boxed_slice());
        assert_eq!(p.idle(), 1);
    }

    #[test]
    fn growing_keeps_the_lease_and_the_bytes() {
        let mut p = BufferPool::new(64, 8);
        let mut a = p.lease();
        a[60..64].copy_from_slice(b"abcd");
        let big = p.grow(a, 60, 64, 200);
        assert_eq!(big.len(), 200);
        assert_eq!(&big[..4], b"abcd");
        assert_eq!(p.leased(), 1);
        assert_eq!(p.idle(), 1);
        p.give_back(big);
        assert_eq!(p.leased(), 0);
        assert_eq!(p.idle(), 1);
    }

    #[test]
    fn trim_gives_back_what_a_burst_left_behind() {
        let mut p = BufferPool::new(64, 1000);
        let burst: Vec<_> = (0..100).map(|_| p.lease()).collect();
        for b in burst {
            p.give_back(b);
        }
        assert_eq!(p.idle(), 100);
        // The interval with the burst keeps what its peak needed.
        assert_eq!(p.trim(), 0);
        // A quiet interval afterwards: down to the minimum.
        assert_eq!(p.trim(), 100 - MIN_IDLE);
        assert_eq!(p.idle(), MIN_IDLE);
        // Buffers in use are never counted as idle.
        let held: Vec<_> = (0..10).map(|_| p.lease()).collect();
        p.trim();
        assert_eq!(p.leased(), 10);
        drop(held);
    }
}
