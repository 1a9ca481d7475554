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

//!
//! `--text` uses a printable variant for peers that relay only text or
//! rewrite whitespace (gorilla's chat example): magic `WSRT`, then the
//! same fields as lowercase hex (8 + 16 + 16 + 16 digits, 60 bytes in
//! all), padding of letters, and messages never contain `\n` so that
//! frames that join queued messages with `\n` can be split apart.

pub const MAGIC: [u8; 4] = *b"WSRL";
pub const TEXT_MAGIC: [u8; 4] = *b"WSRT";
pub const TEXT_HEADER_LEN: usize = 60;

/// Binary (default) or printable payloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Binary,
    Text,
}

impl Format {
    pub fn header_len(self) -> usize {
        match self {
            Format::Binary => HEADER_LEN,
            Format::Text => TEXT_HEADER_LEN,
        }
    }

    pub fn template(self, size: usize) -> Vec<u8> {
        match self {
            Format::Binary => template(size),
            Format::Text => {
                let mut v = vec![b'-'; size.max(TEXT_HEADER_LEN)];
                for (i, b) in v.iter_mut().enumerate().skip(TEXT_HEADER_LEN) {
                    *b = b'a' + (i * 7 % 26) as u8;
                }
                v
            }
        }
    }

    #[inline]
    pub fn write(self, buf: &mut [u8], publisher: u32, seq: u64, sent_ns: u64) {
        match self {
            Format::Binary => write(buf, publisher, seq, sent_ns),
            Format::Text => {
                buf[0..4].copy_from_slice(&TEXT_MAGIC);
                hex(&mut buf[4..12], publisher as u64);
                hex(&mut buf[12..28], seq);
                hex(&mut buf[28..44], sent_ns);
                let c = text_checksum(buf);
                hex(&mut buf[44..60], c);
            }
        }
    }

    #[inline]
    pub fn check(self, msg: &[u8]) -> Result<Header, Corrupt> {
        match self {
            Format::Binary => check(msg),
            Format::Text => {
                if msg.len() < TEXT_HEADER_LEN {
                    return Err(Corrupt::Short);
                }
                if msg[0..4] != TEXT_MAGIC {
                    return Err(Corrupt::BadMagic);
                }
                let stored = unhex(&msg[44..60]).ok_or(Corrupt::BadChecksum)?;
                if stored != text_checksum(msg) {
                    return Err(Corrupt::BadChecksum);
                }
                let f = |r: std::ops::Range<usize>| unhex(&msg[r]).ok_or(Corrupt::BadChecksum);
                Ok(Header {
                    publisher: f(4..12)? as u32,
                    seq: f(12..28)?,
                    sent_ns: f(28..44)?,
                })
            }
        }
    }
}

fn text_checksum(msg: &[u8]) -> u64 {
    let h = fnv_words(FNV_OFFSET, &msg[..44]);
    fnv_words(h, &msg[TEXT_HEADER_LEN..])
}

#[inline]
fn hex(out: &mut [u8], v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let n = out.len();
    for (i, b) in out.iter_mut().enumerate() {
        *b = DIGITS[((v >> (4 * (n - 1 - i))) & 0xf) as usize];
    }
}

#[inline]
fn unhex(s: &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | d as u64;
    }
    Some(v)
}
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
    fn text_format_round_trip_is_printable_and_checked() {
        let f = Format::Text;
        let mut m = f.template(100);
        f.write(&mut m, 0xdead_beef, u64::MAX - 1, 1_234_567);
        assert!(m.iter().all(|b| b.is_ascii_graphic()), "{m:?}");
        assert!(std::str::from_utf8(&m).is_ok());
        let h = f.check(&m).unwrap();
        assert_eq!(
            (h.publisher, h.seq, h.sent_ns),
            (0xdead_beef, u64::MAX - 1, 1_234_567)
        );
        for i in 0..m.len() {
            let mut c = m.clone();
            c[i] = if c[i] == b'x' { b'y' } else { b'x' };
            assert!(f.check(&c).is_err(), "change at {i} undetected");
        }
        assert_eq!(f.check(&m[..59]), Err(Corrupt::Short));
        assert_eq!(Format::Binary.check(&m), Err(Corrupt::BadMagic));
        assert_eq!(f.header_len(), 60);
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
