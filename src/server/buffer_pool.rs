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

    /// Hands the pages of idle buffers back to the operating system; they
    /// read as zeros and are faulted in again on next use. Buffers a burst
    /// allocated from the middle of the heap are fully written (zeroed) at
    /// allocation, so without this the few kept idle would stay resident.
    pub fn release_idle_pages(&mut self) {
        for buf in &mut self.idle {
            release_pages(buf);
        }
    }

    pub fn leased(&self) -> usize {
        self.leased
    }

    pub fn idle(&self) -> usize {
        self.idle.len()
    }
}

/// Advises the kernel that the whole pages inside `buf` are not needed.
fn release_pages(buf: &mut [u8]) {
    #[cfg(target_os = "linux")]
    {
        const PAGE: usize = 4096;
        let start = buf.as_mut_ptr() as usize;
        let first = start.next_multiple_of(PAGE);
        let last = (start + buf.len()) / PAGE * PAGE;
        if last > first {
            // SAFETY: [first, last) lies inside `buf`, which we borrow
            // mutably (no other reference to it exists), and is page
            // aligned. Heap memory is private anonymous memory, so after
            // MADV_DONTNEED those pages read as zeros: still a valid
            // `[u8]`, and the allocator's metadata lies outside the range
            // (it precedes `buf`). 4096 divides every Linux page size, and
            // madvise rejects a misaligned range with EINVAL instead of
            // acting on it. Covered by `idle_pages_are_released_and_read_as_zeros`.
            unsafe {
                libc::madvise(
                    first as *mut libc::c_void,
                    last - first,
                    libc::MADV_DONTNEED,
                );
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
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

    #[test]
    fn idle_pages_are_released_and_read_as_zeros() {
        let mut p = BufferPool::new(64 * 1024, 4);
        let mut a = p.lease();
        a.fill(0xAA);
        let ptr = a.as_ptr() as usize;
        p.give_back(a);
        p.release_idle_pages();
        let b = p.lease();
        assert_eq!(b.as_ptr() as usize, ptr, "the same buffer comes back");
        // Whole pages inside the buffer now read as zeros; the partial
        // pages at either end keep their bytes.
        let first = ptr.next_multiple_of(4096) - ptr;
        let last = (ptr + b.len()) / 4096 * 4096 - ptr;
        assert!(last > first);
        if cfg!(target_os = "linux") {
            assert!(b[first..last].iter().all(|&x| x == 0));
        }
        assert!(b[..first].iter().all(|&x| x == 0xAA));
        assert!(b[last..].iter().all(|&x| x == 0xAA));
        // And the buffer is fully usable again.
        let mut b = b;
        b.fill(0x55);
        assert!(b.iter().all(|&x| x == 0x55));
        p.give_back(b);
        // A buffer smaller than a page is left alone.
        let mut tiny = BufferPool::new(100, 1);
        let t = tiny.lease();
        tiny.give_back(t);
        tiny.release_idle_pages();
        assert_eq!(tiny.lease().len(), 100);
    }
}
