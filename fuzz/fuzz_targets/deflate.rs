//! permessage-deflate: negotiation of arbitrary `Sec-WebSocket-Extensions`
//! values, bounded inflation of arbitrary compressed messages, and
//! compress/inflate round trips.
//!
//! Input: byte 0 picks the mode and its parameters; the rest is the data.
//! Checks, besides "no panic":
//! - negotiation: an accepted offer is always answered with
//!   `server_no_context_takeover`, a window we can honour (never below our
//!   own), and the answer itself, offered back, is accepted the same way;
//! - inflation: the output never exceeds the limit (a bomb stops at it),
//!   whatever the frame split, and when it succeeds it equals what zlib's
//!   own raw inflate makes of the same stream;
//! - round trip: what our deflater sends inflates back to the input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsrelay::protocol::deflate::{negotiate, DeflateSettings, Deflater, Inflater};
use wsrelay::protocol::ProtocolError;

const LIMITS: [usize; 4] = [0, 100, 4096, 1 << 20];

fn negotiation(sel: u8, data: &[u8]) {
    let offers = String::from_utf8_lossy(data);
    let settings = DeflateSettings {
        server_window_bits: 8 + (sel & 0x7),
        client_no_context_takeover: sel & 0x8 != 0,
        ..DeflateSettings::default()
    };
    let Some(n) = negotiate(&offers, &settings) else {
        return;
    };
    let answer = n.response_value();
    assert!(answer.starts_with("permessage-deflate; server_no_context_takeover"));
    assert!(n.server_window_bits >= settings.server_window_bits.clamp(9, 15));
    assert!(n.server_window_bits <= 15);
    if settings.client_no_context_takeover {
        assert!(n.client_no_context_takeover);
    }
    // The answer is a valid offer we accept with the same parameters.
    let again = negotiate(&answer, &settings).expect("our answer is acceptable");
    assert_eq!(again.server_window_bits, n.server_window_bits);
}

/// zlib's raw inflate of `z` + the stripped tail: `None` on an error or
/// past `cap` bytes.
fn reference(z: &[u8], cap: usize) -> Option<Vec<u8>> {
    let mut d = flate2::Decompress::new(false);
    let mut input = z.to_vec();
    input.extend_from_slice(&[0, 0, 0xff, 0xff]);
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    let mut pos = 0;
    loop {
        let (bi, bo) = (d.total_in(), d.total_out());
        let st = d
            .decompress(&input[pos..], &mut buf, flate2::FlushDecompress::Sync)
            .ok()?;
        let n = (d.total_out() - bo) as usize;
        out.extend_from_slice(&buf[..n]);
        pos += (d.total_in() - bi) as usize;
        if out.len() > cap {
            return None;
        }
        if st == flate2::Status::StreamEnd {
            return Some(out);
        }
        if n == 0 && d.total_in() == bi {
            return (pos == input.len()).then_some(out);
        }
    }
}

fn inflation(sel: u8, data: &[u8]) {
    let limit = LIMITS[usize::from(sel & 3)];
    // Frame split points from the selector.
    let parts = 1 + usize::from((sel >> 2) & 7);
    let step = data.len().div_ceil(parts).max(1);
    let mut inf = Inflater::new();
    let mut out = Vec::new();
    let mut result = Ok(());
    for chunk in data.chunks(step) {
        result = inf.inflate(chunk, &mut out, limit);
        assert!(out.len() <= limit, "{} > {limit}", out.len());
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        result = inf.finish(&mut out, limit);
        assert!(out.len() <= limit);
    }
    match result {
        Ok(()) => {
            // Whatever zlib makes of the whole stream, within the limit.
            let r = reference(data, limit).expect("zlib agrees the stream is valid");
            assert_eq!(out, r, "differs from zlib");
        }
        Err(ProtocolError::MessageTooLarge | ProtocolError::BadCompressedData) => {}
        Err(e) => panic!("unexpected error {e:?}"),
    }
}

fn round_trip(sel: u8, data: &[u8]) {
    let level = 1 + u32::from(sel % 9);
    let bits = 9 + (sel >> 4) % 7;
    let mut d = Deflater::new(level, bits);
    let mut z = Vec::new();
    if !d.compress(data, &mut z) {
        return; // would not shrink: sent plain
    }
    assert!(z.len() < data.len());
    let mut inf = Inflater::new();
    let mut out = Vec::new();
    inf.inflate(&z, &mut out, data.len()).expect("inflates");
    inf.finish(&mut out, data.len()).expect("finishes");
    assert_eq!(out, data);
}

fuzz_target!(|input: &[u8]| {
    let Some((&sel, data)) = input.split_first() else {
        return;
    };
    match sel % 3 {
        0 => negotiation(sel / 3, data),
        1 => inflation(sel / 3, data),
        _ => round_trip(sel / 3, data),
    }
});
