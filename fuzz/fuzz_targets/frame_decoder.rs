//! The frame decoder's read loop over arbitrary bytes, both roles.
//!
//! Input: byte 0 picks the role and the frame limit, byte 1 the read size;
//! the rest is the byte stream. Checks, besides "no panic":
//! - every decoded frame respects the limit and the control-frame rules,
//!   `consumed` = header + payload, and the payload was unmasked correctly;
//! - what stays buffered waiting for more is below limit + 14 bytes, and
//!   `bytes_needed` agrees with it;
//! - decoding from an accumulation buffer in reads of any size yields the
//!   same frames and the same final error as decoding the whole input.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsrelay::protocol::mask::apply_mask_reference;
use wsrelay::protocol::{FrameDecoder, FrameHeader, ProtocolError, Role};

const LIMITS: [usize; 8] = [0, 1, 125, 126, 1024, 65535, 65536, 1 << 20];

#[derive(Debug, PartialEq)]
struct Frame {
    header: FrameHeader,
    payload: Vec<u8>,
}

/// Decodes as much as possible from `buf`, appending frames; returns the
/// bytes consumed and the error that stopped decoding, if any.
fn drain(
    dec: &FrameDecoder,
    buf: &mut [u8],
    out: &mut Vec<Frame>,
) -> (usize, Option<ProtocolError>) {
    let original = buf.to_vec();
    let mut pos = 0;
    loop {
        let original = &original[pos..];
        match dec.decode(&mut buf[pos..]) {
            Ok(Some(f)) => {
                let h = f.header;
                assert_eq!(f.consumed, h.header_len + h.payload_len as usize);
                assert_eq!(f.payload, h.header_len..f.consumed);
                assert!(h.payload_len <= dec.max_frame_bytes());
                assert!((2..=14).contains(&h.header_len));
                if h.opcode.is_control() {
                    assert!(h.fin && h.payload_len <= 125);
                }
                assert_eq!(h.rsv, 0);
                // The payload is the wire bytes XOR the key (byte by byte).
                let mut expect = original[f.payload.clone()].to_vec();
                if let Some(key) = h.mask {
                    apply_mask_reference(&mut expect, key, 0);
                }
                let payload = buf[pos + f.payload.start..pos + f.payload.end].to_vec();
                assert_eq!(payload, expect);
                // Nothing past the frame was touched.
                assert_eq!(&buf[pos + f.consumed..], &original[f.consumed..]);
                out.push(Frame { header: h, payload });
                pos += f.consumed;
            }
            Ok(None) => {
                let rest = &buf[pos..];
                assert_eq!(rest, original);
                assert!((rest.len() as u64) < dec.max_frame_bytes() + 14);
                if let Some(n) = dec.bytes_needed(rest) {
                    assert!(n > rest.len() && (n as u64) <= dec.max_frame_bytes() + 14);
                }
                return (pos, None);
            }
            Err(e) => return (pos, Some(e)),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let role = if data[0] & 1 == 0 {
        Role::Server
    } else {
        Role::Client
    };
    let dec = FrameDecoder::new(role, LIMITS[(data[0] >> 1) as usize & 7]);
    let step = 1 + data[1] as usize;
    let input = &data[2..];

    let mut whole_frames = Vec::new();
    let (_, whole_err) = drain(&dec, &mut input.to_vec(), &mut whole_frames);

    let mut acc = Vec::new();
    let mut frames = Vec::new();
    let mut err = None;
    for chunk in input.chunks(step) {
        acc.extend_from_slice(chunk);
        let (used, e) = drain(&dec, &mut acc, &mut frames);
        acc.drain(..used);
        if e.is_some() {
            err = e;
            break;
        }
    }
    assert_eq!(frames, whole_frames);
    assert_eq!(err, whole_err);
});
