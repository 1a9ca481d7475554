//! Reassembles messages from frames and validates their contents.
//!
//! The assembler sits between the frame decoder and the application. It
//! enforces the fragmentation rules (§5.4), the message size limit summed
//! across fragments, incremental UTF-8 validation of text (§8.1, failing
//! fast), and the close frame payload rules (§5.5.1, §7.4). Control frames
//! are surfaced immediately, even in the middle of a fragmented message.
//!
//! An unfragmented message is returned as a borrow of the frame payload (no
//! copy); only fragmented messages are gathered into an internal buffer.

use super::close::CloseCode;
use super::error::ProtocolError;
use super::frame::{FrameHeader, OpCode};
use super::utf8::Utf8Validator;

/// Kind of a data message.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum MessageKind {
    Text,
    Binary,
}

impl MessageKind {
    pub fn opcode(self) -> OpCode {
        match self {
            MessageKind::Text => OpCode::Text,
            MessageKind::Binary => OpCode::Binary,
        }
    }
}

/// What one frame amounted to.
#[derive(Debug, PartialEq, Eq)]
pub enum Event<'a> {
    /// A complete message.
    Message {
        kind: MessageKind,
        data: &'a [u8],
    },
    /// A fragment was absorbed; the message is not complete yet.
    Fragment,
    Ping(&'a [u8]),
    Pong(&'a [u8]),
    /// A valid close frame: `None` when it carried no status code.
    Close {
        code: Option<CloseCode>,
        reason: &'a str,
    },
}

/// Per-connection message reassembly state.
///
/// Kept to two words while no fragmented message is in progress (the
/// common case for 100k+ idle connections): the gather state is boxed
/// and allocated only when a message arrives in fragments.
#[derive(Debug)]
pub struct MessageAssembler {
    max_message_bytes: usize,
    gather: Option<Box<Gather>>,
}

/// State of a fragmented message.
#[derive(Debug)]
struct Gather {
    /// Kind of the message in progress; `None` once it completed (the
    /// buffer is kept for the returned borrow).
    kind: Option<MessageKind>,
    buffer: Vec<u8>,
    utf8: Utf8Validator,
}

impl MessageAssembler {
    pub fn new(max_message_bytes: usize) -> Self {
        MessageAssembler {
            max_message_bytes,
            gather: None,
        }
    }

    /// Whether a fragmented message is being gathered.
    pub fn in_message(&self) -> bool {
        self.gather.as_ref().is_some_and(|g| g.kind.is_some())
    }

    /// Bytes held for an unfinished fragmented message.
    pub fn buffered_bytes(&self) -> usize {
        match &self.gather {
            Some(g) if g.kind.is_some() => g.buffer.len(),
            _ => 0,
        }
    }

    /// Releases the gather state (e.g. when the connection goes idle or
    /// closes), so a finished large message does not pin memory.
    pub fn release_memory(&mut self) {
        if !self.in_message() {
            self.gather = None;
        }
    }

    /// Processes one decoded frame whose payload is already unmasked.
    pub fn on_frame<'a>(
        &'a mut self,
        header: &FrameHeader,
        payload: &'a [u8],
    ) -> Result<Event<'a>, ProtocolError> {
        match header.opcode {
            OpCode::Ping => Ok(Event::Ping(payload)),
            OpCode::Pong => Ok(Event::Pong(payload)),
            OpCode::Close => parse_close(payload),
            OpCode::Text | OpCode::Binary => {
                if self.in_message() {
                    return Err(ProtocolError::ExpectedContinuation);
                }
                let kind = if header.opcode == OpCode::Text {
                    MessageKind::Text
                } else {
                    MessageKind::Binary
                };
                if payload.len() > self.max_message_bytes {
                    return Err(ProtocolError::MessageTooLarge);
                }
                if header.fin {
                    if kind == MessageKind::Text && !Utf8Validator::validate_complete(payload) {
                        return Err(ProtocolError::InvalidUtf8);
                    }
                    return Ok(Event::Message {
                        kind,
                        data: payload,
                    });
                }
                let g = self.gather.get_or_insert_with(|| {
                    Box::new(Gather {
                        kind: None,
                        buffer: Vec::new(),
                        utf8: Utf8Validator::new(),
                    })
                });
                g.utf8.reset();
                if kind == MessageKind::Text && g.utf8.feed(payload).is_err() {
                    return Err(ProtocolError::InvalidUtf8);
                }
                g.buffer.clear();
                g.buffer.extend_from_slice(payload);
                g.kind = Some(kind);
                Ok(Event::Fragment)
            }
            OpCode::Continuation => {
                let g = match self.gather.as_mut() {
                    Some(g) if g.kind.is_some() => g,
                    _ => return Err(ProtocolError::UnexpectedContinuation),
                };
                let kind = g.kind.ok_or(ProtocolError::UnexpectedContinuation)?;
                if g.buffer.len() + payload.len() > self.max_message_bytes {
                    return Err(ProtocolError::MessageTooLarge);
                }
                if kind == MessageKind::Text {
                    g.utf8
                        .feed(payload)
                        .map_err(|_| ProtocolError::InvalidUtf8)?;
                    if header.fin {
                        g.utf8.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
                    }
                }
                g.buffer.extend_from_slice(payload);
                if header.fin {
                    g.kind = None;
                    Ok(Event::Message {
                        kind,
                        data: &g.buffer,
                    })
                } else {
                    Ok(Event::Fragment)
                }
            }
        }
    }
}

/// Validates a close frame payload (§5.5.1, §7.4.1).
pub fn parse_close(payload: &[u8]) -> Result<Event<'_>, ProtocolError> {
    match payload.len() {
        0 => Ok(Event::Close {
            code: None,
            reason: "",
        }),
        1 => Err(ProtocolError::ClosePayloadTooShort),
        _ => {
            let code = CloseCode(u16::from_be_bytes([payload[0], payload[1]]));
            if !code.is_valid_on_wire() {
                return Err(ProtocolError::InvalidCloseCode(code.0));
            }
            let reason =
                std::str::from_utf8(&payload[2..]).map_err(|_| ProtocolError::InvalidUtf8)?;
            Ok(Event::Close {
                code: Some(code),
                reason,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(fin: bool, opcode: OpCode, len: usize) -> FrameHeader {
        FrameHeader {
            fin,
            rsv: 0,
            opcode,
            mask: None,
            payload_len: len as u64,
            header_len: 2,
        }
    }

    fn feed<'a>(
        a: &'a mut MessageAssembler,
        fin: bool,
        op: OpCode,
        p: &'a [u8],
    ) -> Result<Event<'a>, ProtocolError> {
        a.on_frame(&h(fin, op, p.len()), p)
    }

    #[test]
    fn single_frame_message_borrows_payload() {
        let mut a = MessageAssembler::new(100);
        let p = b"Hello".to_vec();
        match feed(&mut a, true, OpCode::Text, &p).unwrap() {
            Event::Message { kind, data } => {
                assert_eq!(kind, MessageKind::Text);
                assert_eq!(data.as_ptr(), p.as_ptr());
            }
            e => panic!("{e:?}"),
        }
        assert_eq!(a.buffered_bytes(), 0);
    }

    #[test]
    fn fragmented_hel_lo() {
        let mut a = MessageAssembler::new(100);
        assert_eq!(
            feed(&mut a, false, OpCode::Text, b"Hel").unwrap(),
            Event::Fragment
        );
        assert!(a.in_message());
        assert_eq!(
            feed(&mut a, true, OpCode::Continuation, b"lo").unwrap(),
            Event::Message {
                kind: MessageKind::Text,
                data: b"Hello"
            }
        );
        assert!(!a.in_message());
    }

    #[test]
    fn control_frames_mid_message() {
        let mut a = MessageAssembler::new(100);
        feed(&mut a, false, OpCode::Binary, b"ab").unwrap();
        assert_eq!(
            feed(&mut a, true, OpCode::Ping, b"p").unwrap(),
            Event::Ping(b"p")
        );
        assert_eq!(
            feed(&mut a, true, OpCode::Pong, b"q").unwrap(),
            Event::Pong(b"q")
        );
        feed(&mut a, false, OpCode::Continuation, b"cd").unwrap();
        assert_eq!(
            feed(&mut a, true, OpCode::Continuation, b"").unwrap(),
            Event::Message {
                kind: MessageKind::Binary,
                data: b"abcd"
            }
        );
    }

    #[test]
    fn fragmentation_violations_are_1002() {
        let mut a = MessageAssembler::new(100);
        let e = feed(&mut a, true, OpCode::Continuation, b"x").unwrap_err();
        assert_eq!(e, ProtocolError::UnexpectedContinuation);
        assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
        let mut a = MessageAssembler::new(100);
        feed(&mut a, false, OpCode::Text, b"x").unwrap();
        let e = feed(&mut a, true, OpCode::Text, b"y").unwrap_err();
        assert_eq!(e, ProtocolError::ExpectedContinuation);
        assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn message_limit_sums_fragments_and_is_1009() {
        let mut a = MessageAssembler::new(10);
        assert_eq!(
            feed(&mut a, true, OpCode::Binary, &[0; 10]).unwrap(),
            Event::Message {
                kind: MessageKind::Binary,
                data: &[0; 10]
            }
        );
        assert_eq!(
            feed(&mut a, true, OpCode::Binary, &[0; 11]).unwrap_err(),
            ProtocolError::MessageTooLarge
        );
        let mut a = MessageAssembler::new(10);
        feed(&mut a, false, OpCode::Binary, &[0; 6]).unwrap();
        let e = feed(&mut a, false, OpCode::Continuation, &[0; 5]).unwrap_err();
        assert_eq!(e, ProtocolError::MessageTooLarge);
        assert_eq!(e.close_code(), CloseCode::MESSAGE_TOO_BIG);
    }

    #[test]
    fn utf8_fails_fast_on_a_middle_fragment() {
        let mut a = MessageAssembler::new(100);
        feed(&mut a, false, OpCode::Text, "κό".as_bytes()).unwrap();
        let e = feed(&mut a, false, OpCode::Continuation, b"\xed\xa0\x80").unwrap_err();
        assert_eq!(e, ProtocolError::InvalidUtf8);
        assert_eq!(e.close_code(), CloseCode::INVALID_PAYLOAD);
    }

    #[test]
    fn utf8_sequence_split_across_fragments_is_fine() {
        let bytes = "a€b".as_bytes();
        let mut a = MessageAssembler::new(100);
        feed(&mut a, false, OpCode::Text, &bytes[..2]).unwrap();
        feed(&mut a, false, OpCode::Continuation, &bytes[2..3]).unwrap();
        assert_eq!(
            feed(&mut a, true, OpCode::Continuation, &bytes[3..]).unwrap(),
            Event::Message {
                kind: MessageKind::Text,
                data: bytes
            }
        );
    }

    #[test]
    fn unfinished_character_at_end_is_1007() {
        let mut a = MessageAssembler::new(100);
        feed(&mut a, false, OpCode::Text, b"a\xe2").unwrap();
        assert_eq!(
            feed(&mut a, true, OpCode::Continuation, b"\x82").unwrap_err(),
            ProtocolError::InvalidUtf8
        );
        let mut a = MessageAssembler::new(100);
        assert_eq!(
            feed(&mut a, true, OpCode::Text, b"a\xe2\x82").unwrap_err(),
            ProtocolError::InvalidUtf8
        );
    }

    #[test]
    fn binary_is_not_utf8_checked() {
        let mut a = MessageAssembler::new(100);
        assert!(feed(&mut a, true, OpCode::Binary, b"\xff\xfe").is_ok());
    }

    #[test]
    fn close_payload_rules() {
        assert_eq!(
            parse_close(b"").unwrap(),
            Event::Close {
                code: None,
                reason: ""
            }
        );
        assert_eq!(
            parse_close(b"\x03").unwrap_err(),
            ProtocolError::ClosePayloadTooShort
        );
        assert_eq!(
            parse_close(b"\x03\xe8bye").unwrap(),
            Event::Close {
                code: Some(CloseCode(1000)),
                reason: "bye"
            }
        );
        for bad in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
            let p = bad.to_be_bytes();
            let e = parse_close(&p).unwrap_err();
            assert_eq!(e, ProtocolError::InvalidCloseCode(bad));
            assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
        }
        for good in [1000u16, 1003, 1007, 1011, 1014, 3000, 4999] {
            assert!(parse_close(&good.to_be_bytes()).is_ok(), "{good}");
        }
        let e = parse_close(b"\x03\xe8\xff").unwrap_err();
        assert_eq!(e, ProtocolError::InvalidUtf8);
        assert_eq!(e.close_code(), CloseCode::INVALID_PAYLOAD);
    }
}
