//! `--deflate`: permessage-deflate (RFC 7692) from the client's side.
//!
//! We offer `client_no_context_takeover; server_no_context_takeover`, so
//! both directions compress every message from an empty window: one
//! deflater and one inflater per worker serve all its connections (the
//! relay's own [`Deflater`] and [`Inflater`], zlib-rs backend, the
//! inflater bounded by the generator's message limit). A server that
//! accepts without `server_no_context_takeover` keeps its window between
//! messages; that connection then gets an inflater of its own.
//!
//! The server's answer is checked as RFC 7692 §5 / §7.1 require of a
//! client: an extension we did not offer, an unknown or repeated
//! parameter, `client_max_window_bits` (we did not offer it) or a bad
//! `server_max_window_bits` fail the handshake.

use wsrelay::protocol::deflate::{Deflater, EXTENSION};
use wsrelay::protocol::{encode_client_frame, MaskRng, OpCode};

/// The `Sec-WebSocket-Extensions` value we send.
pub const OFFER: &str =
    "permessage-deflate; client_no_context_takeover; server_no_context_takeover";

/// What the server agreed to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Agreed {
    /// The server keeps its compression context between messages (it did
    /// not answer `server_no_context_takeover`).
    pub server_takeover: bool,
}

/// Adds our offer to a handshake request (before the blank line).
pub fn add_offer(req: &mut Vec<u8>) {
    debug_assert!(req.ends_with(b"\r\n\r\n"));
    let end = req.len() - 2;
    let line = format!("Sec-WebSocket-Extensions: {OFFER}\r\n");
    req.splice(end..end, line.bytes());
}

/// The extension answer in a complete `101` response head: `Ok(None)`
/// without permessage-deflate, `Err` when the answer breaks the rules (or
/// names an extension, when `offered` is false).
pub fn parse_answer(head: &[u8], offered: bool) -> Result<Option<Agreed>, String> {
    let text = String::from_utf8_lossy(head);
    let mut agreed: Option<Agreed> = None;
    for line in text.split("\r\n").skip(1) {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        if !name.trim().eq_ignore_ascii_case("sec-websocket-extensions") {
            continue;
        }
        for ext in value.split(',') {
            let mut parts = ext.split(';').map(str::trim);
            let ext_name = parts.next().unwrap_or("");
            if ext_name.is_empty() {
                continue;
            }
            if !offered || !ext_name.eq_ignore_ascii_case(EXTENSION) {
                return Err(format!(
                    "server answered an unoffered extension {ext_name:?}"
                ));
            }
            if agreed.is_some() {
                return Err("server answered permessage-deflate twice".into());
            }
            let mut server_nct = false;
            let mut client_nct = false;
            let mut window = false;
            for p in parts {
                let (k, v) = match p.split_once('=') {
                    Some((k, v)) => (k.trim(), Some(v.trim().trim_matches('"'))),
                    None => (p, None),
                };
                let seen = match k.to_ascii_lowercase().as_str() {
                    "server_no_context_takeover" if v.is_none() => &mut server_nct,
                    "client_no_context_takeover" if v.is_none() => &mut client_nct,
                    "server_max_window_bits" => {
                        match v.and_then(|v| v.parse::<u8>().ok()) {
                            Some(8..=15) if !v.is_some_and(|v| v.starts_with('0')) => {}
                            _ => return Err(format!("bad extension parameter {p:?}")),
                        }
                        &mut window
                    }
                    _ => return Err(format!("bad extension parameter {p:?}")),
                };
                if *seen {
                    return Err(format!("repeated extension parameter {k:?}"));
                }
                *seen = true;
            }
            agreed = Some(Agreed {
                server_takeover: !server_nct,
            });
        }
    }
    Ok(agreed)
}

/// A worker's compressor for what its connections send.
pub struct Compressor {
    deflater: Deflater,
    scratch: Vec<u8>,
}

impl Default for Compressor {
    fn default() -> Self {
        Compressor::new()
    }
}

impl Compressor {
    /// Level 1 (the relay's default), 15-bit window.
    pub fn new() -> Compressor {
        Compressor {
            deflater: Deflater::new(1, 15),
            scratch: Vec::new(),
        }
    }

    /// Appends one masked data frame carrying `payload`, compressed (RSV1)
    /// when that makes it smaller, else as it is. True when compressed.
    pub fn frame(
        &mut self,
        opcode: OpCode,
        payload: &[u8],
        rng: &mut MaskRng,
        out: &mut Vec<u8>,
    ) -> bool {
        self.scratch.clear();
        if self.deflater.compress(payload, &mut self.scratch) {
            let start = out.len();
            encode_client_frame(true, opcode, &self.scratch, rng.mask_key(), out);
            out[start] |= 0x40;
            true
        } else {
            encode_client_frame(true, opcode, payload, rng.mask_key(), out);
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wsrelay::protocol::deflate::Inflater;
    use wsrelay::protocol::{Event, FrameDecoder, Inflate, MessageAssembler, Role};

    #[test]
    fn offer_goes_before_the_blank_line() {
        let mut req = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec();
        add_offer(&mut req);
        let s = String::from_utf8(req).unwrap();
        assert!(s.ends_with(&format!("Sec-WebSocket-Extensions: {OFFER}\r\n\r\n")));
        assert!(s.starts_with("GET / HTTP/1.1\r\nHost: x\r\n"));
    }

    fn head(ext: &str) -> Vec<u8> {
        format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n{ext}\r\n").into_bytes()
    }

    #[test]
    fn answers() {
        let ok = |e: &str| parse_answer(&head(e), true);
        assert_eq!(ok("X-Other: 1"), Ok(None));
        assert_eq!(
            ok("Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover"),
            Ok(Some(Agreed { server_takeover: false }))
        );
        // The relay's answer may carry a window size.
        assert_eq!(
            ok("sec-websocket-extensions: permessage-deflate;server_no_context_takeover;server_max_window_bits=10"),
            Ok(Some(Agreed { server_takeover: false }))
        );
        // Accepted without server_no_context_takeover: the server keeps
        // its window, we must too.
        assert_eq!(
            ok("Sec-WebSocket-Extensions: permessage-deflate"),
            Ok(Some(Agreed {
                server_takeover: true
            }))
        );
        for bad in [
            "Sec-WebSocket-Extensions: x-webkit-deflate-frame",
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits=10",
            "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=7",
            "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits=010",
            "Sec-WebSocket-Extensions: permessage-deflate; server_max_window_bits",
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover=1",
            "Sec-WebSocket-Extensions: permessage-deflate; foo",
            "Sec-WebSocket-Extensions: permessage-deflate, permessage-deflate",
        ] {
            assert!(ok(bad).is_err(), "{bad}");
        }
        // Without an offer, any extension is an error.
        assert!(
            parse_answer(&head("Sec-WebSocket-Extensions: permessage-deflate"), false).is_err()
        );
        assert_eq!(parse_answer(&head("X: y"), false), Ok(None));
    }

    /// What we send decodes, on the server's side, to what we meant:
    /// compressible payloads with RSV1 (and smaller), incompressible ones
    /// as they are; no context carried between messages.
    #[test]
    fn compressed_frames_inflate_on_the_server_side() {
        let mut z = Compressor::new();
        let mut rng = MaskRng::new();
        let json: Vec<u8> = br#"{"sym":"ACME","bid":101.25,"ask":101.5},"#
            .iter()
            .cycle()
            .take(600)
            .copied()
            .collect();
        let noise: Vec<u8> = (0..200u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        let mut wire = Vec::new();
        assert!(z.frame(OpCode::Text, &json, &mut rng, &mut wire));
        let first_len = wire.len();
        assert!(first_len < json.len() / 2, "{first_len}");
        assert!(!z.frame(OpCode::Binary, &noise, &mut rng, &mut wire));
        assert!(z.frame(OpCode::Text, &json, &mut rng, &mut wire));
        // No context takeover: the same message compresses the same way.
        assert_eq!(wire.len() - first_len - (noise.len() + 8), first_len);

        let dec = FrameDecoder::new(Role::Server, 1 << 20).with_allowed_rsv(0x4);
        let mut asm = MessageAssembler::new(1 << 20);
        let mut inf = Inflater::new();
        let mut got = Vec::new();
        let mut pos = 0;
        while pos < wire.len() {
            let f = dec.decode(&mut wire[pos..]).unwrap().unwrap();
            let payload = wire[pos + f.payload.start..pos + f.payload.end].to_vec();
            pos += f.consumed;
            let inflate = Inflate {
                inflater: &mut inf,
                context_takeover: false,
            };
            match asm
                .on_frame_with(&f.header, &payload, Some(inflate))
                .unwrap()
            {
                Event::Message { data, .. } => got.push((f.header.rsv, data.to_vec())),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(got.len(), 3);
        assert_eq!(got[0], (0x4, json.clone()));
        assert_eq!(got[1], (0, noise));
        assert_eq!(got[2], (0x4, json));
    }
}
