//! Incremental UTF-8 validation across fragment boundaries.
//!
//! A text message may be split anywhere, even inside a character, so each
//! fragment is validated as it arrives and at most three bytes of an
//! unfinished character are carried to the next one. An invalid sequence is
//! reported as soon as it is seen (fail fast, RFC 6455 §8.1), while a
//! sequence that is merely cut by a fragment boundary is not an error.

use simdutf8::compat::from_utf8;

/// Validation state carried between fragments of one text message.
#[derive(Clone, Copy, Debug, Default)]
pub struct Utf8Validator {
    carry: [u8; 4],
    carry_len: u8,
}

/// Bytes a UTF-8 sequence starting with `lead` takes (0 for a byte that
/// cannot start a sequence).
fn sequence_len(lead: u8) -> usize {
    match lead {
        0x00..=0x7f => 1,
        0xc2..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf4 => 4,
        _ => 0,
    }
}

impl Utf8Validator {
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates a complete, unfragmented text payload.
    pub fn validate_complete(data: &[u8]) -> bool {
        simdutf8::basic::from_utf8(data).is_ok()
    }

    /// Feeds the next fragment. `Err(())` as soon as the bytes seen so far
    /// cannot be the prefix of valid UTF-8.
    // Invalid UTF-8 is the only failure; the assembler maps it to 1007.
    #[allow(clippy::result_unit_err)]
    pub fn feed(&mut self, mut data: &[u8]) -> Result<(), ()> {
        if self.carry_len > 0 {
            let have = self.carry_len as usize;
            let need = sequence_len(self.carry[0]);
            debug_assert!(need > have);
            let take = (need - have).min(data.len());
            let mut tmp = self.carry;
            tmp[have..have + take].copy_from_slice(&data[..take]);
            match from_utf8(&tmp[..have + take]) {
                Ok(_) => {
                    self.carry_len = 0;
                }
                Err(e) if e.error_len().is_some() => return Err(()),
                Err(_) => {
                    // Still incomplete: only possible when `data` ran out.
                    self.carry = tmp;
                    self.carry_len = (have + take) as u8;
                    return Ok(());
                }
            }
            data = &data[take..];
        }
        match from_utf8(data) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(()),
            Err(e) => {
                let tail = &data[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// Called on the final fragment: an unfinished character is an error.
    // Invalid UTF-8 is the only failure; the assembler maps it to 1007.
    #[allow(clippy::result_unit_err)]
    pub fn finish(&mut self) -> Result<(), ()> {
        let ok = self.carry_len == 0;
        self.carry_len = 0;
        if ok {
            Ok(())
        } else {
            Err(())
        }
    }

    pub fn reset(&mut self) {
        self.carry_len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split_everywhere(s: &[u8]) -> bool {
        // Valid only if every split in two and one-byte-at-a-time agree.
        let whole = std::str::from_utf8(s).is_ok();
        for cut in 0..=s.len() {
            let mut v = Utf8Validator::new();
            let r = v
                .feed(&s[..cut])
                .and_then(|_| v.feed(&s[cut..]))
                .and_then(|_| v.finish());
            assert_eq!(r.is_ok(), whole, "cut {cut} of {s:x?}");
        }
        let mut v = Utf8Validator::new();
        let mut r = Ok(());
        for b in s {
            r = r.and_then(|_| v.feed(std::slice::from_ref(b)));
        }
        let r = r.and_then(|_| v.finish());
        assert_eq!(r.is_ok(), whole, "bytewise {s:x?}");
        whole
    }

    #[test]
    fn valid_sequences_split_anywhere() {
        assert!(split_everywhere("κόσμε".as_bytes()));
        assert!(split_everywhere("a€𝄞b\u{10ffff}".as_bytes()));
        assert!(split_everywhere(b""));
    }

    #[test]
    fn invalid_sequences_split_anywhere() {
        for bad in [
            &b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"[..],
            b"\xf4\x90\x80\x80",
            b"\xc0\xaf",
            b"\xe0\x80\xaf",
            b"\xff",
            b"abc\xe2\x82",
            b"\xed\xbf\xbf",
        ] {
            assert!(!split_everywhere(bad));
        }
    }

    #[test]
    fn fails_fast_before_the_end() {
        let mut v = Utf8Validator::new();
        assert!(v.feed(b"hello").is_ok());
        assert!(v.feed(b"\xf4").is_ok());
        // 0x90 after 0xf4 is out of range: invalid now, not at the end.
        assert!(v.feed(b"\x90").is_err());
        let mut v = Utf8Validator::new();
        assert!(v.feed(b"\xce").is_ok());
        assert!(v.feed(b"a").is_err());
    }
}
