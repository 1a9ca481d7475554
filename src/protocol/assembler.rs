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
use super::deflate::Inflater;
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

/// How a permessage-deflate connection's compressed messages (RSV1) are
/// inflated, passed with each frame.
#[derive(Debug)]
pub struct Inflate<'i> {
    /// The worker's shared inflater, or the connection's own when the
    /// client takes its context over.
    pub inflater: &'i mut Inflater,
    /// The client keeps its compression context between messages: the
    /// inflater is the connection's own and is not reset after a message.
    pub context_takeover: bool,
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
    /// The message in progress is compressed.
    inflating: bool,
    /// Inflater of a compressed fragmented message on a connection
    /// without context takeover (the shared one may serve other
    /// connections between fragments); kept for the next one.
    own: Option<Box<Inflater>>,
}

impl Gather {
    fn new() -> Box<Gather> {
        Box::new(Gather {
            kind: None,
            buffer: Vec::new(),
            utf8: Utf8Validator::new(),
            inflating: false,
            own: None,
        })
    }
}

/// Inflates one frame of a compressed message into `buffer` (bounded by
/// `limit`), checking text as it grows.
fn inflate_frame(
    inf: &mut Inflater,
    payload: &[u8],
    fin: bool,
    buffer: &mut Vec<u8>,
    limit: usize,
    utf8: Option<&mut Utf8Validator>,
) -> Result<(), ProtocolError> {
    let before = buffer.len();
    inf.inflate(payload, buffer, limit)?;
    if fin {
        inf.finish(buffer, limit)?;
    }
    if let Some(u) = utf8 {
        u.feed(&buffer[before..])
            .map_err(|_| ProtocolError::InvalidUtf8)?;
        if fin {
            u.finish().map_err(|_| ProtocolError::InvalidUtf8)?;
        }
    }
    Ok(())
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

    /// Whether the fragmented message being gathered is compressed.
    pub fn inflating(&self) -> bool {
        self.gather
            .as_ref()
            .is_some_and(|g| g.kind.is_some() && g.inflating)
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

    /// Processes one decoded frame whose payload is already unmasked, on a
    /// connection without compression.
    pub fn on_frame<'a>(
        &'a mut self,
        header: &FrameHeader,
        payload: &'a [u8],
    ) -> Result<Event<'a>, ProtocolError> {
        self.on_frame_with(header, payload, None)
    }

    /// Processes one decoded frame; `inflate` is given on connections that
    /// negotiated permessage-deflate (RSV1 marks a compressed message).
    pub fn on_frame_with<'a>(
        &'a mut self,
        header: &FrameHeader,
        payload: &'a [u8],
        inflate: Option<Inflate<'_>>,
    ) -> Result<Event<'a>, ProtocolError> {
        if header.rsv & 0x4 != 0 {
            let Some(inflate) = inflate else {
                return Err(ProtocolError::ReservedBits);
            };
            return match header.opcode {
                OpCode::Text | OpCode::Binary => self.compressed_start(header, payload, inflate),
                _ => Err(ProtocolError::CompressedFrameFlag),
            };
        }
        if header.opcode == OpCode::Continuation
            && self
                .gather
                .as_ref()
                .is_some_and(|g| g.kind.is_some() && g.inflating)
        {
            // A compressed message always comes with its inflater.
            let inflate = inflate.ok_or(ProtocolError::BadCompressedData)?;
            return self.compressed_continue(header, payload, inflate);
        }
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
                let g = self.gather.get_or_insert_with(Gather::new);
                g.utf8.reset();
                g.inflating = false;
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

impl MessageAssembler {
    /// First frame of a compressed message (RSV1).
    fn compressed_start<'a>(
        &'a mut self,
        header: &FrameHeader,
        payload: &[u8],
        inflate: Inflate<'_>,
    ) -> Result<Event<'a>, ProtocolError> {
        if self.in_message() {
            return Err(ProtocolError::ExpectedContinuation);
        }
        let kind = if header.opcode == OpCode::Text {
            MessageKind::Text
        } else {
            MessageKind::Binary
        };
        let limit = self.max_message_bytes;
        let g = self.gather.get_or_insert_with(Gather::new);
        g.utf8.reset();
        g.buffer.clear();
        let utf8 = (kind == MessageKind::Text).then_some(&mut g.utf8);
        let takeover = inflate.context_takeover;
        let inf: &mut Inflater = if header.fin || takeover {
            inflate.inflater
        } else {
            // Fragmented without takeover: the shared inflater may serve
            // other connections before the next fragment.
            let own = g.own.get_or_insert_with(|| Box::new(Inflater::new()));
            own.reset();
            own
        };
        let r = inflate_frame(inf, payload, header.fin, &mut g.buffer, limit, utf8);
        if (header.fin || r.is_err()) && (!takeover || inf.ended() || r.is_err()) {
            inf.reset();
        }
        r?;
        if header.fin {
            g.kind = None;
            g.inflating = false;
            return Ok(Event::Message {
                kind,
                data: &g.buffer,
            });
        }
        g.kind = Some(kind);
        g.inflating = true;
        Ok(Event::Fragment)
    }

    /// A continuation of a compressed message (RSV1 clear, §6.1).
    fn compressed_continue<'a>(
        &'a mut self,
        header: &FrameHeader,
        payload: &[u8],
        inflate: Inflate<'_>,
    ) -> Result<Event<'a>, ProtocolError> {
        let limit = self.max_message_bytes;
        let g = match self.gather.as_mut() {
            Some(g) => g,
            None => return Err(ProtocolError::UnexpectedContinuation),
        };
        let kind = g.kind.ok_or(ProtocolError::UnexpectedContinuation)?;
        let takeover = inflate.context_takeover;
        let Gather {
            buffer, utf8, own, ..
        } = &mut **g;
        let inf: &mut Inflater = if takeover {
            inflate.inflater
        } else {
            own.as_deref_mut().ok_or(ProtocolError::BadCompressedData)?
        };
        let utf8 = (kind == MessageKind::Text).then_some(utf8);
        let r = inflate_frame(inf, payload, header.fin, buffer, limit, utf8);
        if (header.fin || r.is_err()) && (!takeover || inf.ended() || r.is_err()) {
            inf.reset();
        }
        r?;
        if header.fin {
            g.kind = None;
            g.inflating = false;
            Ok(Event::Message {
                kind,
                data: &g.buffer,
            })
        } else {
            Ok(Event::Fragment)
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

    // ----- permessage-deflate ---------------------------------------------

    use crate::protocol::deflate::Inflater;
    use flate2::{Compress, Compression, FlushCompress};

    /// What a client sends: raw deflate, sync-flushed, tail stripped
    /// (RFC 7692 §7.2.1), from a fresh context.
    fn deflate(data: &[u8]) -> Vec<u8> {
        let mut c = Compress::new(Compression::default(), false);
        let mut out = Vec::with_capacity(data.len() + 64);
        c.compress_vec(data, &mut out, FlushCompress::Sync).unwrap();
        while out.len() == out.capacity() {
            out.reserve(1024);
            c.compress_vec(&[], &mut out, FlushCompress::Sync).unwrap();
        }
        assert!(out.ends_with(&[0, 0, 0xff, 0xff]));
        out.truncate(out.len() - 4);
        out
    }

    fn hz(fin: bool, rsv1: bool, opcode: OpCode, len: usize) -> FrameHeader {
        FrameHeader {
            rsv: if rsv1 { 0x4 } else { 0 },
            ..h(fin, opcode, len)
        }
    }

    fn feed_z<'a>(
        a: &'a mut MessageAssembler,
        inf: &mut Inflater,
        fin: bool,
        rsv1: bool,
        op: OpCode,
        p: &'a [u8],
    ) -> Result<Event<'a>, ProtocolError> {
        let inflate = Inflate {
            inflater: inf,
            context_takeover: false,
        };
        a.on_frame_with(&hz(fin, rsv1, op, p.len()), p, Some(inflate))
    }

    #[test]
    fn compressed_single_frame_inflates_with_shared_inflater() {
        let mut inf = Inflater::new();
        let mut a = MessageAssembler::new(1000);
        let mut b = MessageAssembler::new(1000);
        let z = deflate(b"Hello, Hello, Hello, world");
        for i in [0, 1, 0] {
            let asm = if i == 0 { &mut a } else { &mut b };
            let e = feed_z(asm, &mut inf, true, true, OpCode::Text, &z).unwrap();
            assert_eq!(
                e,
                Event::Message {
                    kind: MessageKind::Text,
                    data: b"Hello, Hello, Hello, world"
                }
            );
        }
        // An uncompressed message on the same connection is passed through.
        let e = feed_z(&mut a, &mut inf, true, false, OpCode::Binary, b"raw").unwrap();
        assert_eq!(
            e,
            Event::Message {
                kind: MessageKind::Binary,
                data: b"raw"
            }
        );
        // The empty message compresses to [0x00] (§7.2.3.6).
        let e = feed_z(&mut a, &mut inf, true, true, OpCode::Binary, &[0x00]).unwrap();
        assert_eq!(
            e,
            Event::Message {
                kind: MessageKind::Binary,
                data: b""
            }
        );
    }

    #[test]
    fn message_compressed_across_fragments_while_shared_inflater_serves_others() {
        let text: Vec<u8> = (0..5000u32)
            .flat_map(|i| format!("{{\"n\":{i}}},").into_bytes())
            .collect();
        let z = deflate(&text);
        let mut inf = Inflater::new();
        let mut a = MessageAssembler::new(1 << 20);
        let mut other = MessageAssembler::new(1 << 20);
        let small = deflate(b"interleaved");
        let chunks: Vec<&[u8]> = z.chunks(z.len() / 7 + 1).collect();
        for (i, c) in chunks.iter().enumerate() {
            let first = i == 0;
            let fin = i + 1 == chunks.len();
            let op = if first {
                OpCode::Text
            } else {
                OpCode::Continuation
            };
            match feed_z(&mut a, &mut inf, fin, first, op, c).unwrap() {
                Event::Fragment => assert!(!fin),
                Event::Message { kind, data } => {
                    assert!(fin);
                    assert_eq!(kind, MessageKind::Text);
                    assert_eq!(data, &text[..]);
                }
                e => panic!("{e:?}"),
            }
            // Another connection uses the shared inflater in between.
            let e = feed_z(&mut other, &mut inf, true, true, OpCode::Text, &small).unwrap();
            assert_eq!(
                e,
                Event::Message {
                    kind: MessageKind::Text,
                    data: b"interleaved"
                }
            );
        }
        // Empty fragments are fine too.
        let mut parts = vec![&[][..]];
        parts.extend(z.chunks(3));
        parts.push(&[]);
        let n = parts.len();
        for (i, c) in parts.into_iter().enumerate() {
            let op = if i == 0 {
                OpCode::Text
            } else {
                OpCode::Continuation
            };
            let r = feed_z(&mut a, &mut inf, i + 1 == n, i == 0, op, c).unwrap();
            if i + 1 == n {
                assert!(matches!(r, Event::Message { data, .. } if data == &text[..]));
            }
        }
    }

    #[test]
    fn decompression_bomb_is_1009_with_at_most_the_limit_inflated() {
        let limit = 64 * 1024;
        let bomb = deflate(&vec![0u8; 16 << 20]); // 16 MiB of zeros
        assert!(bomb.len() < 64 * 1024, "{}", bomb.len());
        let mut inf = Inflater::new();
        let mut a = MessageAssembler::new(limit);
        let e = feed_z(&mut a, &mut inf, true, true, OpCode::Binary, &bomb).unwrap_err();
        assert_eq!(e, ProtocolError::MessageTooLarge);
        assert_eq!(e.close_code(), CloseCode::MESSAGE_TOO_BIG);
        assert!(a.gather.as_ref().unwrap().buffer.len() <= limit);
        assert!(a.gather.as_ref().unwrap().buffer.capacity() <= limit);
        // Across fragments, too: stopped in the fragment that crosses it.
        let mut a = MessageAssembler::new(limit);
        let mut failed = false;
        for (i, c) in bomb.chunks(16).enumerate() {
            let op = if i == 0 {
                OpCode::Binary
            } else {
                OpCode::Continuation
            };
            match feed_z(&mut a, &mut inf, false, i == 0, op, c) {
                Ok(Event::Fragment) => assert!(a.buffered_bytes() <= limit),
                Err(e) => {
                    assert_eq!(e, ProtocolError::MessageTooLarge);
                    failed = true;
                    break;
                }
                Ok(e) => panic!("{e:?}"),
            }
        }
        assert!(failed);
        assert!(a.gather.as_ref().unwrap().buffer.capacity() <= limit);
        // Exactly the limit is fine; one byte more is not.
        for (len, ok) in [(limit, true), (limit + 1, false)] {
            let mut a = MessageAssembler::new(limit);
            let z = deflate(&vec![b'a'; len]);
            let r = feed_z(&mut a, &mut inf, true, true, OpCode::Text, &z);
            assert_eq!(r.is_ok(), ok, "{len}");
        }
        // The shared inflater was reset: it still works.
        let mut a = MessageAssembler::new(limit);
        let z = deflate(b"ok");
        assert!(feed_z(&mut a, &mut inf, true, true, OpCode::Text, &z).is_ok());
    }

    #[test]
    fn rsv1_rules() {
        let mut inf = Inflater::new();
        let z = deflate(b"x");
        // RSV1 without negotiation.
        let mut a = MessageAssembler::new(100);
        assert_eq!(
            a.on_frame(&hz(true, true, OpCode::Text, z.len()), &z),
            Err(ProtocolError::ReservedBits)
        );
        // RSV1 on control frames and continuations (§6.1).
        for op in [OpCode::Ping, OpCode::Pong, OpCode::Close] {
            let mut a = MessageAssembler::new(100);
            let e = feed_z(&mut a, &mut inf, true, true, op, b"").unwrap_err();
            assert_eq!(e, ProtocolError::CompressedFrameFlag);
            assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
        }
        let mut a = MessageAssembler::new(100);
        let first = &z[..1];
        assert_eq!(
            feed_z(&mut a, &mut inf, false, true, OpCode::Text, first),
            Ok(Event::Fragment)
        );
        assert_eq!(
            feed_z(&mut a, &mut inf, true, true, OpCode::Continuation, &z[1..]),
            Err(ProtocolError::CompressedFrameFlag)
        );
        // A compressed start while a plain fragmented message is open.
        let mut a = MessageAssembler::new(100);
        assert_eq!(
            feed_z(&mut a, &mut inf, false, false, OpCode::Text, b"a"),
            Ok(Event::Fragment)
        );
        assert_eq!(
            feed_z(&mut a, &mut inf, true, true, OpCode::Text, &z),
            Err(ProtocolError::ExpectedContinuation)
        );
        // Control frames in the middle of a compressed message pass.
        let mut a = MessageAssembler::new(100);
        feed_z(&mut a, &mut inf, false, true, OpCode::Text, &z[..1]).unwrap();
        assert_eq!(
            feed_z(&mut a, &mut inf, true, false, OpCode::Ping, b"p"),
            Ok(Event::Ping(b"p"))
        );
        assert_eq!(
            feed_z(&mut a, &mut inf, true, false, OpCode::Continuation, &z[1..]),
            Ok(Event::Message {
                kind: MessageKind::Text,
                data: b"x"
            })
        );
    }

    #[test]
    fn corrupt_data_and_bad_utf8_inside_compression() {
        let mut inf = Inflater::new();
        let mut a = MessageAssembler::new(100);
        // Block type 3 is invalid.
        let e = feed_z(&mut a, &mut inf, true, true, OpCode::Binary, &[0xff, 0xff]).unwrap_err();
        assert_eq!(e, ProtocolError::BadCompressedData);
        assert_eq!(e.close_code(), CloseCode::INVALID_PAYLOAD);
        // Invalid UTF-8 that only appears once inflated.
        let z = deflate(b"ok \xff\xfe");
        let mut a = MessageAssembler::new(100);
        assert_eq!(
            feed_z(&mut a, &mut inf, true, true, OpCode::Text, &z),
            Err(ProtocolError::InvalidUtf8)
        );
        // Data after a final block (BFINAL) is corrupt.
        let mut c = Compress::new(Compression::default(), false);
        let mut fin = Vec::with_capacity(64);
        c.compress_vec(b"done", &mut fin, FlushCompress::Finish)
            .unwrap();
        let mut a = MessageAssembler::new(100);
        assert_eq!(
            feed_z(&mut a, &mut inf, true, true, OpCode::Text, &fin),
            Ok(Event::Message {
                kind: MessageKind::Text,
                data: b"done"
            })
        );
        let mut extra = fin.clone();
        extra.extend_from_slice(&deflate(b"more"));
        assert_eq!(
            feed_z(&mut a, &mut inf, true, true, OpCode::Text, &extra),
            Err(ProtocolError::BadCompressedData)
        );
        // And the shared inflater recovers for the next message.
        let z = deflate(b"fine");
        assert!(feed_z(&mut a, &mut inf, true, true, OpCode::Text, &z).is_ok());
    }

    #[test]
    fn context_takeover_keeps_the_window_between_messages() {
        // A client with context takeover: the second message refers back
        // into the first one's window.
        let mut c = Compress::new(Compression::default(), false);
        let mut wire = Vec::new();
        for m in [
            &b"the same long sentence, again"[..],
            b"the same long sentence, again",
        ] {
            let mut out = Vec::with_capacity(256);
            c.compress_vec(m, &mut out, FlushCompress::Sync).unwrap();
            out.truncate(out.len() - 4);
            wire.push(out);
        }
        assert!(wire[1].len() < wire[0].len());
        let mut own = Inflater::new();
        let mut a = MessageAssembler::new(100);
        for z in &wire {
            let inflate = Inflate {
                inflater: &mut own,
                context_takeover: true,
            };
            let e = a
                .on_frame_with(&hz(true, true, OpCode::Text, z.len()), z, Some(inflate))
                .unwrap();
            assert!(
                matches!(e, Event::Message { data, .. } if data == b"the same long sentence, again")
            );
        }
        // Without takeover the second message does not inflate alone.
        let mut shared = Inflater::new();
        let mut a = MessageAssembler::new(100);
        feed_z(&mut a, &mut shared, true, true, OpCode::Text, &wire[0]).unwrap();
        assert!(feed_z(&mut a, &mut shared, true, true, OpCode::Text, &wire[1]).is_err());
    }
}
