//! Frames decoded from arbitrary bytes, fed to `MessageAssembler`.
//!
//! Input: byte 0 picks the role, frame limit and message limit; the rest is
//! the byte stream. Checks, besides "no panic":
//! - text messages and close reasons are valid UTF-8, messages fit the
//!   message limit, the gather buffer never exceeds it;
//! - the assembler agrees event by event with a naive reference model
//!   (concatenate fragments, validate with `std::str::from_utf8`, an
//!   invalid prefix being an error at once), including which error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsrelay::protocol::{
    Event, FrameDecoder, MessageAssembler, MessageKind, OpCode, ProtocolError, Role,
};

const FRAME_LIMITS: [usize; 4] = [16, 125, 1024, 1 << 20];
const MESSAGE_LIMITS: [usize; 4] = [0, 32, 300, 1 << 20];

#[derive(Debug, PartialEq)]
enum Out {
    Message(MessageKind, Vec<u8>),
    Fragment,
    Ping(Vec<u8>),
    Pong(Vec<u8>),
    Close(Option<u16>, String),
}

/// The reference: obviously right, not fast.
struct Model {
    max: usize,
    kind: Option<MessageKind>,
    buf: Vec<u8>,
}

impl Model {
    fn on_frame(&mut self, fin: bool, op: OpCode, p: &[u8]) -> Result<Out, ProtocolError> {
        match op {
            OpCode::Ping => Ok(Out::Ping(p.to_vec())),
            OpCode::Pong => Ok(Out::Pong(p.to_vec())),
            OpCode::Close => {
                if p.is_empty() {
                    return Ok(Out::Close(None, String::new()));
                }
                if p.len() == 1 {
                    return Err(ProtocolError::ClosePayloadTooShort);
                }
                let code = u16::from_be_bytes([p[0], p[1]]);
                let ok = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
                if !ok {
                    return Err(ProtocolError::InvalidCloseCode(code));
                }
                match std::str::from_utf8(&p[2..]) {
                    Ok(r) => Ok(Out::Close(Some(code), r.to_string())),
                    Err(_) => Err(ProtocolError::InvalidUtf8),
                }
            }
            OpCode::Text | OpCode::Binary | OpCode::Continuation => {
                let kind = if op == OpCode::Continuation {
                    self.kind.ok_or(ProtocolError::UnexpectedContinuation)?
                } else {
                    if self.kind.is_some() {
                        return Err(ProtocolError::ExpectedContinuation);
                    }
                    self.buf.clear();
                    if op == OpCode::Text {
                        MessageKind::Text
                    } else {
                        MessageKind::Binary
                    }
                };
                if self.buf.len() + p.len() > self.max {
                    return Err(ProtocolError::MessageTooLarge);
                }
                self.buf.extend_from_slice(p);
                if kind == MessageKind::Text {
                    match std::str::from_utf8(&self.buf) {
                        Ok(_) => {}
                        // Fail fast: a prefix that cannot be valid.
                        Err(e) if e.error_len().is_some() => {
                            return Err(ProtocolError::InvalidUtf8)
                        }
                        Err(_) if fin => return Err(ProtocolError::InvalidUtf8),
                        Err(_) => {}
                    }
                }
                if fin {
                    self.kind = None;
                    Ok(Out::Message(kind, std::mem::take(&mut self.buf)))
                } else {
                    self.kind = Some(kind);
                    Ok(Out::Fragment)
                }
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let role = if data[0] & 1 == 0 {
        Role::Client
    } else {
        Role::Server
    };
    let dec = FrameDecoder::new(role, FRAME_LIMITS[(data[0] >> 1) as usize & 3]);
    let max_message = MESSAGE_LIMITS[(data[0] >> 3) as usize & 3];
    let mut asm = MessageAssembler::new(max_message);
    let mut model = Model {
        max: max_message,
        kind: None,
        buf: Vec::new(),
    };
    let mut buf = data[1..].to_vec();
    let mut pos = 0;
    while let Ok(Some(f)) = dec.decode(&mut buf[pos..]) {
        let payload = &buf[pos + f.payload.start..pos + f.payload.end];
        pos += f.consumed;
        let got = asm.on_frame(&f.header, payload).map(|ev| match ev {
            Event::Message { kind, data } => {
                assert!(data.len() <= max_message);
                if kind == MessageKind::Text {
                    assert!(std::str::from_utf8(data).is_ok());
                }
                Out::Message(kind, data.to_vec())
            }
            Event::Fragment => Out::Fragment,
            Event::Ping(p) => Out::Ping(p.to_vec()),
            Event::Pong(p) => Out::Pong(p.to_vec()),
            Event::Close { code, reason } => {
                if let Some(c) = code {
                    assert!(c.is_valid_on_wire());
                }
                Out::Close(code.map(|c| c.0), reason.to_string())
            }
        });
        assert!(asm.buffered_bytes() <= max_message);
        let want = model.on_frame(f.header.fin, f.header.opcode, payload);
        assert_eq!(got, want);
        if got.is_err() {
            // The connection is failed; nothing further is processed.
            break;
        }
        if matches!(got, Ok(Out::Message(..))) && pos % 3 == 0 {
            asm.release_memory();
        }
    }
});
