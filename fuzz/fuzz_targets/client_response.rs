//! `ClientHandshake::parse_response` on arbitrary bytes.
//!
//! The handshake key is random, so the input may contain the marker `@@`,
//! replaced by the correct `Sec-WebSocket-Accept` value before parsing:
//! that lets the fuzzer get past the accept check to the later ones.
//! Checks, besides "no panic": `head_len` within the input and at most
//! 8 KiB; a chosen protocol is one offered; `Ok(None)` only up to 8 KiB;
//! the answer on the first prefix that decides equals the whole's.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use wsrelay::protocol::handshake::accept_key;
use wsrelay::protocol::{ClientHandshake, MaskRng};

fn handshake() -> &'static (ClientHandshake, Vec<u8>) {
    static HS: OnceLock<(ClientHandshake, Vec<u8>)> = OnceLock::new();
    HS.get_or_init(|| {
        let hs = ClientHandshake::new(&mut MaskRng::new()).with_protocols(&["chat", "superchat"]);
        let accept = accept_key(hs.key().as_bytes()).into_bytes();
        (hs, accept)
    })
}

fuzz_target!(|data: &[u8]| {
    let (hs, accept) = handshake();
    let mut input = Vec::with_capacity(data.len() + 64);
    let mut i = 0;
    while i < data.len() {
        if data[i..].starts_with(b"@@") {
            input.extend_from_slice(accept);
            i += 2;
        } else {
            input.push(data[i]);
            i += 1;
        }
    }
    let whole = hs.parse_response(&input);
    match &whole {
        Ok(Some(r)) => {
            assert!(r.head_len <= input.len() && r.head_len <= 8192);
            if let Some(p) = &r.protocol {
                assert!(p == "chat" || p == "superchat");
            }
        }
        Ok(None) => assert!(input.len() <= 8192),
        Err(e) => assert!(!e.to_string().is_empty()),
    }
    // Prefixes in reads of 7 bytes: the first decision is the whole's.
    let mut end = 0;
    loop {
        end = (end + 7).min(input.len());
        match hs.parse_response(&input[..end]) {
            Ok(None) if end < input.len() => {}
            decided => {
                assert_eq!(decided, whole);
                break;
            }
        }
    }
});
