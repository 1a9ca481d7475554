//! The header every load-test message carries, so receivers can check
//! integrity, order and latency without any shared state but the clock.
//!
//! Layout (little-endian), then padding up to `--size`:
//!
//! | bytes  | field                                          |
//! |--------|------------------------------------------------|
//! | 0..4   | magic `WSRL`                                   |
//! | 4..8   | publisher id (u32)                             |
//! | 8..16  | sequence number per publisher (u64, from 0)    |
//! | 16..24 | intended send time, ns since the process epoch |
//! | 24..32 | checksum of bytes 0..24 and 32..end            |
//!
//! The checksum is FNV-1a-64 taken over 8-byte words (byte-wise for the
//! tail): one multiply per word, so checking a 64-byte message costs a
//! few nanoseconds, and any change confined to a single word always
//! changes it (xor then multiply by an odd constant are bijections).

pub const MAGIC: [u8; 4] = *b"WSRL";
pub const HEADER_LEN: usize = 32;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    pub publisher: u32,
    pub seq: u64,
    pub sent_ns: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Corrupt {
    /// Shorter than the header.
    Short,
    BadMagic,
    BadChecksum,
}

#[inline]
fn fnv_words(mut h: u64, bytes: &[u8]) -> u64 {
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().unwrap());
        h = (h ^ w).wrapping_mul(FNV_PRIME);
    }
    for &b in chunks.remainder() {
        h = (h ^ b as u64).wrapping_mul(FNV_PRIME);
    }
    h
}

/// Checksum of a message: everything but the checksum field itself.
#[inline]
pub fn checksum(msg: &[u8]) -> u64 {
    let h = fnv_words(FNV_OFFSET, &msg[..24]);
    fnv_words(h, &msg[HEADER_LEN..])
}

/// Fills the padding of a message template (done once per buffer).
pub fn init_padding(buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate().skip(HEADER_LEN) {
        *b = (i as u8).wrapping_mul(31).wrapping_add(7);
    }
}

/// Writes the header into `buf` (whose padding is already filled) and
/// seals it with the checksum.
#[inline]
pub fn write(buf: &mut [u8], publisher: u32, seq: u64, sent_ns: u64) {
    debug_assert!(buf.len() >= HEADER_LEN);
    buf[0..4].copy_from_slice(&MAGIC);
    buf[4..8].copy_from_slice(&publisher.to_le_bytes());
    buf[8..16].copy_from_slice(&seq.to_le_bytes());
    buf[16..24].copy_from_slice(&sent_ns.to_le_bytes());
    let c = checksum(buf);
    buf[24..32].copy_from_slice(&c.to_le_bytes());
}

/// Validates a received message and returns its header.
#[inline]
pub fn check(msg: &[u8]) -> Result<Header, Corrupt> {
    if msg.len() < HEADER_LEN {
        return Err(Corrupt::Short);
    }
    if msg[0..4] != MAGIC {
        return Err(Corrupt::BadMagic);
    }
    let stored = u64::from_le_bytes(msg[24..32].try_into().unwrap());
    if stored != checksum(msg) {
        return Err(Corrupt::BadChecksum);
    }
    Ok(Header {
        publisher: u32::from_le_bytes(msg[4..8].try_into().unwrap()),
        seq: u64::from_le_bytes(msg[8..16].try_into().unwrap()),
        sent_ns: u64::from_le_bytes(msg[16..24].try_into().unwrap()),
    })
}

/// A message buffer of `size` bytes with its padding ready.
pub fn template(size: usize) -> Vec<u8> {
    let mut v = vec![0u8; size.max(HEADER_LEN)];
    init_padding(&mut v);
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_at_several_sizes() {
        for size in [32usize, 33, 40, 64, 100, 1000, 65536] {
            let mut m = template(size);
            write(&mut m, 7, 123_456_789_012, 42);
            let h = check(&m).unwrap();
            assert_eq!(
                h,
                Header {
                    publisher: 7,
                    seq: 123_456_789_012,
                    sent_ns: 42
                }
            );
            // Rewriting the same buffer for the next message works.
            write(&mut m, 8, 1, 2);
            assert_eq!(check(&m).unwrap().publisher, 8);
        }
    }

    #[test]
    fn every_single_bit_flip_is_detected() {
        let mut m = template(64);
        write(&mut m, 1, 2, 3);
        for byte in 0..m.len() {
            for bit in 0..8 {
                let mut c = m.clone();
                c[byte] ^= 1 << bit;
                assert!(check(&c).is_err(), "flip at {byte}.{bit} undetected");
            }
        }
    }

    #[test]
    fn short_and_foreign_messages() {
        assert_eq!(check(b"hello"), Err(Corrupt::Short));
        assert_eq!(check(&[0u8; 64]), Err(Corrupt::BadMagic));
        let mut m = template(64);
        write(&mut m, 1, 2, 3);
        m.truncate(63);
        assert_eq!(check(&m), Err(Corrupt::BadChecksum));
    }
}
