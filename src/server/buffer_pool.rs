//! Per-worker pool of read buffers.
//!
//! A connection leases a buffer only while it has unprocessed bytes and
//! hands it back as soon as everything in it has been decoded, so an idle
//! connection holds no read buffer at all. The pool keeps at most
//! `max_idle` buffers so a burst does not pin memory forever.

/// A fixed-size, zero-initialised read buffer.
pub type ReadBuf = Box<[u8]>;

pub struct BufferPool {
    buf_size: usize,
    max_idle: usize,
    idle: Vec<ReadBuf>,
    /// Buffers handed out and not yet returned (for metrics and tests).
    leased: usize,
}

impl BufferPool {
    pub fn new(buf_size: usize, max_idle: usize) -> Self {
        BufferPool {
            buf_size: buf_size.max(64),
            max_idle,
            idle: Vec::new(),
            leased: 0,
        }
    }

    pub fn buf_size(&self) -> usize {
        self.buf_size
    }

    /// A buffer of the pool's size.
    pub fn lease(&mut self) -> ReadBuf {
        self.leased += 1;
        self.idle
            .pop()
            .unwrap_or_else(|| vec![0u8; self.buf_size].into_boxed_slice())
    }

    /// Returns a buffer. Buffers of another size (grown for one large frame)
    /// are freed instead of pooled.
    pub fn give_back(&mut self, buf: ReadBuf) {
        self.leased = self.leased.saturating_sub(1);
        if buf.len() == self.buf_size && self.idle.len() < self.max_idle {
            self.idle.push(buf);
        }
    }

    /// Records that a leased buffer was replaced by an oversized one that
    /// will be freed rather than returned.
    pub fn forget_one(&mut self) {
        self.leased = self.leased.saturating_sub(1);
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
}
