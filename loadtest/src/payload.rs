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
//!
//! `--payload json` makes realistic JSON for compression figures: a
//! market-data-like object `{"id":"<text header>","type":"quote","q":[...]}`
//! whose array holds fixed-width quotes (`{"s":"ACME","p": 1234.56,
//! "z": 1200,"d":"B"}`) with a symbol, price, size and side drawn afresh
//! for every message from (publisher, seq), then spaces up to `--size`.
//! Keys and structure repeat (compressible, as real feeds are), values do
//! not (no all-zero padding that would flatter the compressor). The text
//! header sits in the `id` string and its checksum covers everything after
//! it, the quotes included.

pub const MAGIC: [u8; 4] = *b"WSRL";
pub const TEXT_MAGIC: [u8; 4] = *b"WSRT";
pub const TEXT_HEADER_LEN: usize = 60;

/// Binary (default) or printable payloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Binary,
    Text,
    Json,
}

impl Format {
    pub fn header_len(self) -> usize {
        match self {
            Format::Binary => HEADER_LEN,
            Format::Text => TEXT_HEADER_LEN,
            Format::Json => JSON_MIN_LEN,
        }
    }

    /// Sent as text frames (binary: binary frames).
    pub fn is_text(self) -> bool {
        self != Format::Binary
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
            Format::Json => json_template(size),
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
            Format::Json => {
                json_quotes(buf, publisher, seq);
                Format::Text.write(&mut buf[JSON_PREFIX.len()..], publisher, seq, sent_ns);
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
            Format::Json => {
                if msg.len() < JSON_MIN_LEN {
                    return Err(Corrupt::Short);
                }
                if !msg.starts_with(JSON_PREFIX) {
                    return Err(Corrupt::BadMagic);
                }
                Format::Text.check(&msg[JSON_PREFIX.len()..])
            }
        }
    }
}

/// `{"id":"` then the text header, then [`JSON_HEAD`], quotes, `]}`.
const JSON_PREFIX: &[u8] = b"{\"id\":\"";
const JSON_HEAD: &[u8] = b"\",\"type\":\"quote\",\"q\":[";
const JSON_TAIL: &[u8] = b"]}";
/// Where the quotes start.
const JSON_BODY: usize = JSON_PREFIX.len() + TEXT_HEADER_LEN + JSON_HEAD.len();
/// The smallest JSON message (no quotes).
pub const JSON_MIN_LEN: usize = JSON_BODY + JSON_TAIL.len();
/// One quote, comma included: `{"s":"ACME","p": 1234.56,"z": 1200,"d":"B"},`
const QUOTE: &[u8] = b"{\"s\":\"ACME\",\"p\": 1234.56,\"z\": 1200,\"d\":\"B\"},";
const SYMBOLS: [&[u8; 4]; 16] = [
    b"ACME", b"BOLT", b"CRUX", b"DYNA", b"EPIC", b"FLUX", b"GRID", b"HALO", b"IONX", b"JADE",
    b"KITE", b"LUNA", b"MIST", b"NOVA", b"ONYX", b"PION",
];

/// Quotes that fit in a JSON message of `len` bytes.
fn json_quotes_fit(len: usize) -> usize {
    // n quotes take n * QUOTE - 1 bytes (no comma after the last).
    (len.saturating_sub(JSON_MIN_LEN) + 1) / QUOTE.len()
}

fn json_template(size: usize) -> Vec<u8> {
    let len = size.max(JSON_MIN_LEN);
    let mut v = vec![b' '; len];
    v[..JSON_PREFIX.len()].copy_from_slice(JSON_PREFIX);
    let h = JSON_PREFIX.len() + TEXT_HEADER_LEN;
    v[h..JSON_BODY].copy_from_slice(JSON_HEAD);
    let n = json_quotes_fit(len);
    for i in 0..n {
        let at = JSON_BODY + i * QUOTE.len();
        let q = if i + 1 == n {
            &QUOTE[..QUOTE.len() - 1]
        } else {
            QUOTE
        };
        v[at..at + q.len()].copy_from_slice(q);
    }
    v[len - JSON_TAIL.len()..].copy_from_slice(JSON_TAIL);
    v
}

/// splitmix64: cheap, well-mixed values from (publisher, seq, index).
#[inline]
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Right-aligned decimal digits of `v` in `out` (spaces before).
#[inline]
fn digits(out: &mut [u8], mut v: u64) {
    for (i, b) in out.iter_mut().rev().enumerate() {
        *b = if v == 0 && i > 0 {
            b' '
        } else {
            let d = b'0' + (v % 10) as u8;
            v /= 10;
            d
        };
    }
}

/// Draws this message's quotes into the template's fixed-width slots: a
/// book of one symbol around a mid price, bids and asks alternating a few
/// cents apart per level, sizes mostly in round lots (as feeds look; all
/// fresh per message).
fn json_quotes(buf: &mut [u8], publisher: u32, seq: u64) {
    let n = json_quotes_fit(buf.len());
    let base = mix(((publisher as u64) << 40) ^ seq);
    let sym = SYMBOLS[(base & 15) as usize];
    let mid = 100_000 + (base >> 4) % 800_000; // cents: 1000.00 .. 8999.99
    let mut offset = 0u64;
    for i in 0..n {
        let r = mix(base ^ (i as u64 + 1));
        let q = &mut buf[JSON_BODY + i * QUOTE.len()..];
        // {"s":"ACME","p": 1234.56,"z": 1200,"d":"B"}
        // 0     6         16   21 24   29   34    40
        q[6..10].copy_from_slice(sym);
        let bid = i % 2 == 0;
        if bid {
            offset += 1 + (r & 3);
        }
        let cents = if bid { mid - offset } else { mid + offset };
        digits(&mut q[16..21], cents / 100);
        digits(&mut q[22..24], cents % 100);
        if q[22] == b' ' {
            q[22] = b'0';
        }
        let size = if (r >> 8) & 3 != 0 {
            100 * (1 + (r >> 16) % 50)
        } else {
            1 + (r >> 16) % 9_999
        };
        digits(&mut q[29..34], size);
        q[40] = if bid { b'B' } else { b'S' };
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

/// FNV-1a-64 over 8-byte words of `bytes` (a fast hash, not a MAC).
#[inline]
pub fn hash(bytes: &[u8]) -> u64 {
    fnv_words(FNV_OFFSET, bytes)
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
    fn json_format_is_json_varies_and_is_checked() {
        let f = Format::Json;
        assert!(f.template(10).len() == JSON_MIN_LEN);
        for size in [
            JSON_MIN_LEN,
            JSON_MIN_LEN + 43,
            JSON_MIN_LEN + 44,
            200,
            512,
            4096,
        ] {
            let mut m = f.template(size);
            assert_eq!(m.len(), size);
            let mut prev: Option<Vec<u8>> = None;
            for seq in 0..3u64 {
                f.write(&mut m, 9, seq, 77 + seq);
                let v: serde_json::Value = serde_json::from_slice(&m).unwrap_or_else(|e| {
                    panic!("size {size}: {e}: {}", String::from_utf8_lossy(&m))
                });
                let quotes = v["q"].as_array().unwrap();
                assert_eq!(quotes.len(), json_quotes_fit(size), "size {size}");
                for q in quotes {
                    let p = q["p"].as_f64().unwrap();
                    assert!((10.0..10_000.0).contains(&p), "{p}");
                    assert!(q["z"].as_u64().unwrap() >= 1);
                    assert!(matches!(q["d"].as_str(), Some("B" | "S")));
                    assert_eq!(q["s"].as_str().unwrap().len(), 4);
                }
                let h = f.check(&m).unwrap();
                assert_eq!((h.publisher, h.seq, h.sent_ns), (9, seq, 77 + seq));
                // Each message draws new quotes.
                if let Some(p) = &prev {
                    if !quotes.is_empty() {
                        assert_ne!(p[JSON_BODY..], m[JSON_BODY..]);
                    }
                }
                prev = Some(m.clone());
            }
            for i in 0..m.len() {
                let mut c = m.clone();
                c[i] = if c[i] == b'x' { b'y' } else { b'x' };
                assert!(
                    f.check(&c).is_err(),
                    "size {size}: change at {i} undetected"
                );
            }
        }
        let mut m = f.template(512);
        f.write(&mut m, 1, 1, 1);
        assert_eq!(Format::Text.check(&m), Err(Corrupt::BadMagic));
        assert_eq!(f.check(&m[..JSON_MIN_LEN - 1]), Err(Corrupt::Short));
        // Compressible but not trivially: 512 bytes of quotes deflate (as
        // the relay does, level 1, no context) to under half, yet far from
        // nothing.
        let mut z = wsrelay::protocol::deflate::Deflater::new(1, 15);
        let mut out = Vec::new();
        assert!(z.compress(&m, &mut out));
        assert!(
            out.len() < m.len() / 2 && out.len() > m.len() / 8,
            "{}",
            out.len()
        );
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
