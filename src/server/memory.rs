//! Giving memory back after a burst.
//!
//! A connection storm (a reconnect wave, a flood of slowloris heads) makes
//! a worker touch memory it no longer needs once the storm is over: heap
//! pages freed in the middle of the allocator's arenas, and slab entries
//! past the highest connection still open. Neither is returned on its
//! own. The worker's housekeeping calls these after its connection count
//! falls, so RSS comes back to what the steady load needs.

use slab::Slab;

/// Returns free heap pages to the operating system. glibc only shrinks a
/// heap from its top on its own, so memory freed in the middle after a
/// burst of connections would otherwise stay resident. `malloc_trim`
/// walks every arena, not just the caller's. The relay runs on the system
/// allocator (glibc on Linux), chosen by measurement: `docs/reliability.md`,
/// "Allocator choice". Under another allocator this call would have to be
/// that allocator's own release (`mi_collect`, jemalloc's
/// `arena.<all>.purge`); elsewhere than glibc it does nothing.
pub fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks the allocator's own free lists (under
    // its locks) and advises the kernel about unused pages; it does not
    // touch memory that is in use. Covered by
    // `releasing_free_heap_after_a_burst_is_safe` below and exercised by
    // the worker's housekeeping in every integration test that closes
    // connections.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Drops the vacant entries after the highest occupied key and hands
/// their pages back, then restores the slab's capacity to `reserve`.
///
/// Keys stay valid (occupied entries are not moved). The free list is
/// rebuilt lowest key first, so new connections fill the low keys and a
/// later burst leaves a vacant tail again. The restored capacity is
/// address space only: a large vector is its own mapping, which the
/// allocator shrinks and regrows with `mremap`, so the dropped pages are
/// not touched again until connections need them.
///
/// Returns the number of entries (occupied or vacant) left in the slab,
/// i.e. one past the highest occupied key.
pub fn release_vacant_tail<T>(slab: &mut Slab<T>, reserve: usize) -> usize {
    slab.shrink_to_fit();
    let high = slab.iter().next_back().map_or(0, |(key, _)| key + 1);
    if reserve > slab.capacity() {
        slab.reserve_exact(reserve - slab.len());
    }
    high
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn releasing_free_heap_after_a_burst_is_safe() {
        let burst: Vec<Box<[u8; 256]>> = (0..10_000).map(|_| Box::new([7u8; 256])).collect();
        let keep: Vec<_> = burst.iter().step_by(100).map(|b| b[0]).collect();
        drop(burst);
        release_free_heap();
        // The allocator still works normally afterwards.
        let again: Vec<Box<[u8; 256]>> = (0..1000).map(|_| Box::new([9u8; 256])).collect();
        assert!(again.iter().all(|b| b[255] == 9));
        assert!(keep.iter().all(|&b| b == 7));
    }

    #[test]
    fn vacant_tail_is_dropped_keys_stay_valid_and_capacity_returns() {
        let mut slab: Slab<u64> = Slab::with_capacity(10_000);
        let keys: Vec<usize> = (0..5_000).map(|i| slab.insert(i as u64 * 3)).collect();
        // The burst goes away, except a few scattered survivors.
        for &k in &keys {
            if k % 1000 != 7 && k >= 100 {
                slab.remove(k);
            }
        }
        let survivors: Vec<usize> = slab.iter().map(|(k, _)| k).collect();
        assert_eq!(survivors.len(), 100 + 4);
        let high = release_vacant_tail(&mut slab, 10_000);
        assert_eq!(high, 4_008, "one past the highest survivor (4007)");
        assert!(slab.capacity() >= 10_000);
        for &k in &survivors {
            assert_eq!(slab[k], k as u64 * 3);
        }
        // New entries take the lowest vacant keys first.
        let next = slab.insert(1);
        assert_eq!(next, 100);
        // Once the scattered survivors go, the whole tail goes too.
        for k in survivors.iter().filter(|&&k| k >= 100) {
            slab.remove(*k);
        }
        assert_eq!(release_vacant_tail(&mut slab, 10_000), 101);
        assert_eq!(slab.len(), 101);
        assert!(slab.capacity() >= 10_000);
        let more: Vec<usize> = (0..3).map(|_| slab.insert(9)).collect();
        assert_eq!(more, vec![101, 102, 103]);
    }

    #[test]
    fn empty_slab_releases_everything() {
        let mut slab: Slab<[u8; 200]> = Slab::with_capacity(1024);
        let keys: Vec<usize> = (0..1000).map(|_| slab.insert([1; 200])).collect();
        for k in keys {
            slab.remove(k);
        }
        assert_eq!(release_vacant_tail(&mut slab, 1024), 0);
        assert!(slab.capacity() >= 1024);
        assert_eq!(slab.insert([2; 200]), 0);
    }
}
