//! `parse_proxy_header` (PROXY protocol v1 and v2) on arbitrary bytes.
//!
//! Input: byte 0 picks the read size; the rest is what the peer sent.
//! Checks, besides "no panic":
//! - the outcome is the same whatever the read sizes: the server re-parses
//!   the bytes held after every read and acts on the first answer that is
//!   not `Partial`, which must equal the answer for the whole input;
//! - `Partial` only below the longest header (the bytes held are bounded);
//! - a complete header lies within the input and the bounds of its version
//!   (v1 ≤ 107 bytes ending in CRLF, v2 = 16 + its length ≤ 16 + 4096).
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsrelay::protocol::proxy::{
    parse_proxy_header, ProxyParse, MAX_HEADER_BYTES, V1_MAX_BYTES, V2_SIGNATURE,
};

fuzz_target!(|data: &[u8]| {
    let Some((&step, input)) = data.split_first() else {
        return;
    };
    let step = 1 + usize::from(step);
    let whole = parse_proxy_header(input);
    match whole {
        Ok(ProxyParse::Partial) => assert!(input.len() < MAX_HEADER_BYTES),
        Ok(ProxyParse::Complete(h)) => {
            assert!(h.len <= input.len() && h.len <= MAX_HEADER_BYTES);
            match h.version {
                1 => {
                    assert!(h.len <= V1_MAX_BYTES);
                    assert!(input.starts_with(b"PROXY "));
                    assert_eq!(&input[h.len - 2..h.len], b"\r\n");
                }
                2 => {
                    assert!(input.starts_with(&V2_SIGNATURE));
                    let len = usize::from(u16::from_be_bytes([input[14], input[15]]));
                    assert_eq!(h.len, 16 + len);
                }
                v => panic!("version {v}"),
            }
        }
        Err(e) => assert!(!e.label().is_empty()),
    }
    let mut end = 0;
    loop {
        end = (end + step).min(input.len());
        match parse_proxy_header(&input[..end]) {
            Ok(ProxyParse::Partial) if end < input.len() => {}
            decided => {
                assert_eq!(decided, whole, "decided at {end} of {}", input.len());
                break;
            }
        }
    }
});
