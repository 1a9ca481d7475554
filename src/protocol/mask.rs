//! RFC 6455 §5.3 payload masking.
//!
//! Masking is an XOR with a repeating 4-byte key. Clients must mask every
//! frame, so the server unmasks every byte it receives: this is on the hot
//! path and works eight bytes at a time (the compiler vectorises the loop)
//! instead of byte by byte.

/// XORs `buf` with `key`, where `buf[0]` is byte number `offset` of the
/// payload (so a payload may be unmasked in several pieces).
///
/// Masking is its own inverse: the same call masks and unmasks.
#[inline]
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    let rot = offset & 3;
    let key = [
        key[rot],
        key[(rot + 1) & 3],
        key[(rot + 2) & 3],
        key[(rot + 3) & 3],
    ];
    let word = u64::from_ne_bytes([
        key[0], key[1], key[2], key[3], key[0], key[1], key[2], key[3],
    ]);
    let mut chunks = buf.chunks_exact_mut(32);
    for chunk in &mut chunks {
        for lane in chunk.chunks_exact_mut(8) {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(lane);
            lane.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
        }
    }
    let rest = chunks.into_remainder();
    let mut lanes = rest.chunks_exact_mut(8);
    for lane in &mut lanes {
        let mut bytes = [0u8; 8];
        bytes.copy_from_slice(lane);
        lane.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ word).to_ne_bytes());
    }
    // Every chunk above is a multiple of 4 long, so the tail starts on key[0].
    for (i, b) in lanes.into_remainder().iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// Byte-at-a-time reference implementation, kept for tests and benches.
pub fn apply_mask_reference(buf: &mut [u8], key: [u8; 4], offset: usize) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b ^= key[(offset + i) & 3];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    #[test]
    fn matches_reference_on_random_inputs_lengths_offsets_and_alignments() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(0x5eed);
        let mut backing = vec![0u8; 4096 + 64];
        for _ in 0..2000 {
            let len = match rng.gen_range(0..4) {
                0 => rng.gen_range(0..16),
                1 => rng.gen_range(0..200),
                _ => rng.gen_range(0..4096),
            };
            let align = rng.gen_range(0..64);
            let offset = rng.gen_range(0..8);
            let key: [u8; 4] = rng.gen();
            rng.fill(&mut backing[..]);
            let slice = &mut backing[align..align + len];
            let mut expected = slice.to_vec();
            apply_mask_reference(&mut expected, key, offset);
            apply_mask(slice, key, offset);
            assert_eq!(
                slice,
                &expected[..],
                "len {len} align {align} offset {offset}"
            );
        }
    }

    #[test]
    fn unmasking_in_pieces_equals_unmasking_at_once() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let data: Vec<u8> = (0..=255u8).cycle().take(1000).collect();
        let mut whole = data.clone();
        apply_mask(&mut whole, key, 0);
        let mut pieces = data.clone();
        let mut off = 0;
        for n in [1usize, 3, 7, 13, 100, 876] {
            apply_mask(&mut pieces[off..off + n], key, off);
            off += n;
        }
        assert_eq!(whole, pieces);
    }

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 §5.7: masked "Hello".
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&payload, b"Hello");
    }
}
