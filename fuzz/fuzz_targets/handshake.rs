//! `parse_request` on arbitrary bytes with small limits.
//!
//! Input: byte 0 picks `max_head_bytes`, byte 1 `max_headers` and the read
//! size; the rest is what the client sent. Checks, besides "no panic":
//! - the outcome is the same whatever the read sizes: a server re-parses
//!   the accumulated bytes after every read and acts on the first answer
//!   that is not `Partial`, which must equal the answer for the whole input
//!   (so `Partial` on a prefix is always consistent with the longer input);
//! - `Partial` only below the head limit; `head_len` within input and limit;
//! - every answer can be turned into a response without panicking.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsrelay::protocol::{parse_request, HandshakeLimits, ParsedRequest};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let limits = HandshakeLimits {
        max_head_bytes: 16 + data[0] as usize * 4,
        max_headers: (data[1] & 0x0f) as usize,
    };
    let step = 1 + (data[1] >> 4) as usize;
    let input = &data[2..];

    let whole = parse_request(input, &limits);
    match &whole {
        Ok(ParsedRequest::Partial) => assert!(input.len() < limits.max_head_bytes),
        Ok(ParsedRequest::Upgrade(u)) => {
            assert!(u.head_len <= input.len() && u.head_len <= limits.max_head_bytes);
            assert_eq!(u.accept.len(), 28);
            let supported = ["chat".to_string(), "superchat".to_string()];
            if let Some(p) = u.negotiate_protocol(&supported) {
                assert!(u.offered_protocols.iter().any(|o| o == p));
            }
            let resp = u.accept_response(u.offered_protocols.first().map(|s| s.as_str()));
            assert!(resp.starts_with(b"HTTP/1.1 101 ") && resp.ends_with(b"\r\n\r\n"));
        }
        Ok(ParsedRequest::Http(r)) => {
            assert!(r.head_len <= input.len() && r.head_len <= limits.max_head_bytes);
            let _ = r.keep_alive();
            let _ = r.content_length();
        }
        Err(reason) => {
            let resp = reason.response();
            let status = format!("HTTP/1.1 {} ", reason.status());
            assert!(resp.starts_with(status.as_bytes()));
        }
    }

    // Arrival in reads of `step` bytes.
    let mut end = 0;
    loop {
        end = (end + step).min(input.len());
        match parse_request(&input[..end], &limits) {
            Ok(ParsedRequest::Partial) if end < input.len() => {}
            decided => {
                assert_eq!(decided, whole, "decided at {end} of {}", input.len());
                break;
            }
        }
    }
});
