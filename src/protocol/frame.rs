//! Frame decoding and encoding (RFC 6455 §5.2).
//!
//! The decoder works on the readable part of a caller-owned buffer: it
//! parses the header, checks every rule that can be checked from the header
//! alone (so an oversize frame is refused before its payload is buffered),
//! and, once the whole frame is present, unmasks the payload in place and
//! hands back its range. Nothing is copied or allocated.
//!
//! The encoder builds headers into a 14-byte stack buffer so header and
//! payload can leave in one vectored write; [`SharedFrame`] encodes a
//! broadcast once and is shared, reference-counted, by every recipient.

use super::close::CloseCode;
use super::error::ProtocolError;
use super::mask::apply_mask;
use std::ops::Range;
use std::sync::Arc;

/// Frame opcodes defined by RFC 6455.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum OpCode {
    Continuation = 0x0,
    Text = 0x1,
    Binary = 0x2,
    Close = 0x8,
    Ping = 0x9,
    Pong = 0xA,
}

impl OpCode {
    pub fn from_u8(op: u8) -> Result<OpCode, ProtocolError> {
        Ok(match op {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            other => return Err(ProtocolError::ReservedOpcode(other)),
        })
    }

    pub fn is_control(self) -> bool {
        (self as u8) & 0x8 != 0
    }
}

/// Which side of the connection is decoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Decoding frames from a client: every frame must be masked.
    Server,
    /// Decoding frames from a server: no frame may be masked.
    Client,
}

/// A parsed frame header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    pub fin: bool,
    /// RSV1..RSV3 as the low three bits.
    pub rsv: u8,
    pub opcode: OpCode,
    pub mask: Option<[u8; 4]>,
    pub payload_len: u64,
    /// Bytes taken by the header itself (2 to 14).
    pub header_len: usize,
}

impl FrameHeader {
    /// Header plus payload.
    pub fn frame_len(&self) -> u64 {
        self.header_len as u64 + self.payload_len
    }
}

/// One complete frame found at the start of a buffer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DecodedFrame {
    pub header: FrameHeader,
    /// Range of the (now unmasked) payload within the buffer passed in.
    pub payload: Range<usize>,
    /// Bytes of the buffer this frame used; the next frame starts here.
    pub consumed: usize,
}

/// Stateless frame decoder with the connection's limits.
#[derive(Clone, Copy, Debug)]
pub struct FrameDecoder {
    role: Role,
    max_frame_bytes: u64,
    /// RSV bits a negotiated extension allows (none: 0).
    allowed_rsv: u8,
}

impl FrameDecoder {
    pub fn new(role: Role, max_frame_bytes: usize) -> Self {
        FrameDecoder {
            role,
            max_frame_bytes: max_frame_bytes as u64,
            allowed_rsv: 0,
        }
    }

    /// Allows RSV bits (for an extension negotiated by the caller).
    pub fn with_allowed_rsv(mut self, rsv: u8) -> Self {
        self.allowed_rsv = rsv & 0x7;
        self
    }

    pub fn max_frame_bytes(&self) -> u64 {
        self.max_frame_bytes
    }

    /// Parses and checks the header at the start of `buf`.
    ///
    /// `Ok(None)`: the header is not complete yet. Every rule decidable from
    /// the header (mask, RSV, opcode, control-frame rules, length limits) is
    /// checked here, so a hostile length is refused before any payload is
    /// read.
    pub fn decode_header(&self, buf: &[u8]) -> Result<Option<FrameHeader>, ProtocolError> {
        if buf.len() < 2 {
            return Ok(None);
        }
        let b0 = buf[0];
        let b1 = buf[1];
        let fin = b0 & 0x80 != 0;
        let rsv = (b0 >> 4) & 0x7;
        let opcode = OpCode::from_u8(b0 & 0x0f)?;
        if rsv & !self.allowed_rsv != 0 {
            return Err(ProtocolError::ReservedBits);
        }
        let masked = b1 & 0x80 != 0;
        match (self.role, masked) {
            (Role::Server, false) => return Err(ProtocolError::UnmaskedFrame),
            (Role::Client, true) => return Err(ProtocolError::MaskedFrame),
            _ => {}
        }
        let len7 = b1 & 0x7f;
        if opcode.is_control() {
            if !fin {
                return Err(ProtocolError::FragmentedControlFrame);
            }
            if len7 > 125 {
                return Err(ProtocolError::ControlFrameTooLong);
            }
        }
        let (payload_len, mut pos) = match len7 {
            126 => {
                if buf.len() < 4 {
                    return Ok(None);
                }
                (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
            }
            127 => {
                if buf.len() < 10 {
                    return Ok(None);
                }
                let mut b = [0u8; 8];
                b.copy_from_slice(&buf[2..10]);
                let len = u64::from_be_bytes(b);
                if len & (1 << 63) != 0 {
                    return Err(ProtocolError::LengthOverflow);
                }
                (len, 10)
            }
            n => (n as u64, 2),
        };
        if payload_len > self.max_frame_bytes {
            return Err(ProtocolError::FrameTooLarge);
        }
        let mask = if masked {
            if buf.len() < pos + 4 {
                return Ok(None);
            }
            let key = [buf[pos], buf[pos + 1], buf[pos + 2], buf[pos + 3]];
            pos += 4;
            Some(key)
        } else {
            None
        };
        Ok(Some(FrameHeader {
            fin,
            rsv,
            opcode,
            mask,
            payload_len,
            header_len: pos,
        }))
    }

    /// Decodes one complete frame from the start of `buf`, unmasking its
    /// payload in place. `Ok(None)`: more bytes are needed (use
    /// [`FrameDecoder::bytes_needed`] to size the read).
    pub fn decode(&self, buf: &mut [u8]) -> Result<Option<DecodedFrame>, ProtocolError> {
        let header = match self.decode_header(buf)? {
            Some(h) => h,
            None => return Ok(None),
        };
        // payload_len <= max_frame_bytes, which fits in usize.
        let total = header.header_len + header.payload_len as usize;
        if buf.len() < total {
            return Ok(None);
        }
        let payload = header.header_len..total;
        if let Some(key) = header.mask {
            apply_mask(&mut buf[payload.clone()], key, 0);
        }
        Ok(Some(DecodedFrame {
            header,
            payload,
            consumed: total,
        }))
    }

    /// How many bytes the frame starting at `buf` needs in total, when its
    /// header is complete (and valid); `None` when the header itself is
    /// still incomplete or invalid.
    pub fn bytes_needed(&self, buf: &[u8]) -> Option<usize> {
        match self.decode_header(buf) {
            Ok(Some(h)) => Some(h.header_len + h.payload_len as usize),
            _ => None,
        }
    }
}

/// A frame header encoded into a small stack buffer.
#[derive(Clone, Copy, Debug)]
pub struct HeaderBuf {
    bytes: [u8; 14],
    len: u8,
}

impl HeaderBuf {
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }
}

/// Encodes a frame header with the shortest length encoding.
pub fn encode_header(
    fin: bool,
    opcode: OpCode,
    payload_len: usize,
    mask: Option<[u8; 4]>,
) -> HeaderBuf {
    let mut bytes = [0u8; 14];
    bytes[0] = (if fin { 0x80 } else { 0 }) | opcode as u8;
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut len = if payload_len < 126 {
        bytes[1] = mask_bit | payload_len as u8;
        2
    } else if payload_len <= u16::MAX as usize {
        bytes[1] = mask_bit | 126;
        bytes[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        bytes[1] = mask_bit | 127;
        bytes[2..10].copy_from_slice(&(payload_len as u64).to_be_bytes());
        10
    };
    if let Some(key) = mask {
        bytes[len..len + 4].copy_from_slice(&key);
        len += 4;
    }
    HeaderBuf {
        bytes,
        len: len as u8,
    }
}

/// Appends an unmasked (server) frame to `out`.
pub fn encode_frame(fin: bool, opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    let header = encode_header(fin, opcode, payload.len(), None);
    out.reserve(header.as_bytes().len() + payload.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(payload);
}

/// A complete encoded server frame shared by every recipient of a
/// broadcast: encoded once, then cloned by reference count only.
#[derive(Clone, Debug)]
pub struct SharedFrame(Arc<Vec<u8>>);

impl SharedFrame {
    /// Encodes a single-frame message (FIN set).
    pub fn encode(opcode: OpCode, payload: &[u8]) -> SharedFrame {
        let header = encode_header(true, opcode, payload.len(), None);
        let h = header.as_bytes();
        let mut v = Vec::with_capacity(h.len() + payload.len());
        v.extend_from_slice(h);
        v.extend_from_slice(payload);
        SharedFrame(Arc::new(v))
    }

    /// Shares bytes that already hold one or more complete encoded frames
    /// (a batch of messages for the same recipients).
    pub fn from_encoded(frames: &[u8]) -> SharedFrame {
        SharedFrame(Arc::new(frames.to_vec()))
    }

    /// Takes ownership of bytes that hold one or more complete encoded
    /// frames, without copying them.
    pub fn from_vec(frames: Vec<u8>) -> SharedFrame {
        SharedFrame(Arc::new(frames))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Bytes allocated for the frame (at least `len`).
    pub fn capacity(&self) -> usize {
        self.0.capacity()
    }

    /// The bytes, when this is the only reference left: lets a sender
    /// refill a frame every recipient has finished with instead of
    /// allocating a new one.
    pub fn get_mut(&mut self) -> Option<&mut Vec<u8>> {
        Arc::get_mut(&mut self.0)
    }

    /// How many references exist (for tests and metrics).
    pub fn ref_count(&self) -> usize {
        Arc::strong_count(&self.0)
    }
}

/// A small control frame (close, ping, pong) held inline: at most
/// 2 header + 125 payload bytes, so it never allocates.
#[derive(Clone, Copy)]
pub struct ControlFrame {
    bytes: [u8; 127],
    len: u8,
}

impl std::fmt::Debug for ControlFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("ControlFrame")
            .field(&self.as_bytes())
            .finish()
    }
}

impl ControlFrame {
    /// Builds a control frame; the payload is truncated to 125 bytes.
    fn new(opcode: OpCode, payload: &[u8]) -> ControlFrame {
        debug_assert!(opcode.is_control());
        let n = payload.len().min(125);
        let mut bytes = [0u8; 127];
        bytes[0] = 0x80 | opcode as u8;
        bytes[1] = n as u8;
        bytes[2..2 + n].copy_from_slice(&payload[..n]);
        ControlFrame {
            bytes,
            len: (n + 2) as u8,
        }
    }

    pub fn ping(payload: &[u8]) -> ControlFrame {
        Self::new(OpCode::Ping, payload)
    }

    pub fn pong(payload: &[u8]) -> ControlFrame {
        Self::new(OpCode::Pong, payload)
    }

    /// A close frame with `code` and a reason cut to fit 123 bytes on a
    /// character boundary (so the reason stays valid UTF-8).
    pub fn close(code: CloseCode, reason: &str) -> ControlFrame {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let mut payload = [0u8; 125];
        payload[..2].copy_from_slice(&code.0.to_be_bytes());
        payload[2..2 + end].copy_from_slice(&reason.as_bytes()[..end]);
        Self::new(OpCode::Close, &payload[..2 + end])
    }

    /// A close frame with no status code.
    pub fn close_empty() -> ControlFrame {
        Self::new(OpCode::Close, &[])
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len as usize]
    }

    pub fn opcode(&self) -> OpCode {
        match self.bytes[0] & 0x0f {
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            _ => OpCode::Pong,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> FrameDecoder {
        FrameDecoder::new(Role::Server, 1 << 20)
    }
    fn client() -> FrameDecoder {
        FrameDecoder::new(Role::Client, usize::MAX >> 1)
    }

    // RFC 6455 §5.7 examples, byte for byte.
    #[test]
    fn rfc_single_frame_unmasked_text() {
        let mut f = vec![0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f];
        let d = client().decode(&mut f).unwrap().unwrap();
        assert!(d.header.fin);
        assert_eq!(d.header.opcode, OpCode::Text);
        assert_eq!(&f[d.payload], b"Hello");
        assert_eq!(d.consumed, 7);
        let mut out = Vec::new();
        encode_frame(true, OpCode::Text, b"Hello", &mut out);
        assert_eq!(out, [0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        assert_eq!(
            SharedFrame::encode(OpCode::Text, b"Hello").as_bytes(),
            &out[..]
        );
    }

    #[test]
    fn rfc_single_frame_masked_text() {
        let mut f = vec![
            0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let d = server().decode(&mut f).unwrap().unwrap();
        assert_eq!(d.header.mask, Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(&f[d.payload], b"Hello");
        assert_eq!(d.consumed, 11);
        let h = encode_header(true, OpCode::Text, 5, Some([0x37, 0xfa, 0x21, 0x3d]));
        assert_eq!(h.as_bytes(), &[0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d]);
    }

    #[test]
    fn rfc_fragmented_unmasked_text() {
        let mut f = vec![0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f];
        let d1 = client().decode(&mut f).unwrap().unwrap();
        assert!(!d1.header.fin);
        assert_eq!(d1.header.opcode, OpCode::Text);
        assert_eq!(&f[d1.payload.clone()], b"Hel");
        let rest = &mut f[d1.consumed..];
        let d2 = client().decode(rest).unwrap().unwrap();
        assert!(d2.header.fin);
        assert_eq!(d2.header.opcode, OpCode::Continuation);
        assert_eq!(&rest[d2.payload], b"lo");
        let mut out = Vec::new();
        encode_frame(false, OpCode::Text, b"Hel", &mut out);
        encode_frame(true, OpCode::Continuation, b"lo", &mut out);
        assert_eq!(out, [0x01, 0x03, 0x48, 0x65, 0x6c, 0x80, 0x02, 0x6c, 0x6f]);
    }

    #[test]
    fn rfc_ping_and_masked_pong() {
        let ping = ControlFrame::ping(b"Hello");
        assert_eq!(ping.as_bytes(), &[0x89, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f]);
        let mut f = ping.as_bytes().to_vec();
        let d = client().decode(&mut f).unwrap().unwrap();
        assert_eq!(d.header.opcode, OpCode::Ping);
        assert_eq!(&f[d.payload], b"Hello");
        let mut pong = vec![
            0x8a, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58,
        ];
        let d = server().decode(&mut pong).unwrap().unwrap();
        assert_eq!(d.header.opcode, OpCode::Pong);
        assert_eq!(&pong[d.payload], b"Hello");
        assert_eq!(ControlFrame::pong(b"Hello").as_bytes()[0], 0x8a);
    }

    #[test]
    fn rfc_256_byte_binary() {
        let h = encode_header(true, OpCode::Binary, 256, None);
        assert_eq!(h.as_bytes(), &[0x82, 0x7e, 0x01, 0x00]);
        let mut f = h.as_bytes().to_vec();
        f.extend(std::iter::repeat_n(7u8, 256));
        let d = client().decode(&mut f).unwrap().unwrap();
        assert_eq!(d.header.payload_len, 256);
        assert_eq!(d.header.header_len, 4);
    }

    #[test]
    fn rfc_64k_binary() {
        let h = encode_header(true, OpCode::Binary, 65536, None);
        assert_eq!(
            h.as_bytes(),
            &[0x82, 0x7f, 0x00, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00]
        );
        let mut f = h.as_bytes().to_vec();
        f.resize(10 + 65536, 1);
        let d = client().decode(&mut f).unwrap().unwrap();
        assert_eq!(d.header.payload_len, 65536);
        assert_eq!(d.header.header_len, 10);
        assert_eq!(d.consumed, 65546);
    }

    #[test]
    fn shortest_length_encoding_at_boundaries() {
        for (len, hl) in [(0, 2), (125, 2), (126, 4), (65535, 4), (65536, 10)] {
            assert_eq!(
                encode_header(true, OpCode::Binary, len, None)
                    .as_bytes()
                    .len(),
                hl,
                "{len}"
            );
            assert_eq!(
                encode_header(true, OpCode::Binary, len, Some([1, 2, 3, 4]))
                    .as_bytes()
                    .len(),
                hl + 4
            );
        }
    }

    #[test]
    fn incomplete_input_needs_more() {
        let mut full = vec![0x82, 0xfe, 0x01, 0x00, 1, 2, 3, 4];
        full.resize(8 + 256, 0);
        for cut in 0..full.len() {
            let mut part = full[..cut].to_vec();
            assert_eq!(server().decode(&mut part).unwrap(), None, "cut {cut}");
        }
        assert_eq!(server().bytes_needed(&full[..4]), None);
        assert_eq!(server().bytes_needed(&full[..8]), Some(264));
        assert!(server().decode(&mut full).unwrap().is_some());
    }

    #[test]
    fn unmasked_client_frame_is_1002() {
        let e = server().decode(&mut [0x81, 0x00]).unwrap_err();
        assert_eq!(e, ProtocolError::UnmaskedFrame);
        assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
        assert_eq!(
            client().decode(&mut [0x81, 0x80, 0, 0, 0, 0]).unwrap_err(),
            ProtocolError::MaskedFrame
        );
    }

    #[test]
    fn rsv_bits_are_1002_unless_allowed() {
        for rsv in [0x40u8, 0x20, 0x10, 0x70] {
            let mut f = [0x81 | rsv, 0x80, 0, 0, 0, 0];
            assert_eq!(
                server().decode(&mut f).unwrap_err(),
                ProtocolError::ReservedBits
            );
        }
        let mut f = [0xc1, 0x80, 0, 0, 0, 0];
        let d = server()
            .with_allowed_rsv(0x4)
            .decode(&mut f)
            .unwrap()
            .unwrap();
        assert_eq!(d.header.rsv, 0x4);
    }

    #[test]
    fn reserved_opcodes_are_1002() {
        for op in (0x3..=0x7).chain(0xb..=0xf) {
            let mut f = [0x80 | op, 0x80, 0, 0, 0, 0];
            let e = server().decode(&mut f).unwrap_err();
            assert_eq!(e, ProtocolError::ReservedOpcode(op));
            assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
        }
    }

    #[test]
    fn control_frame_rules_are_1002() {
        // 126-byte ping: refused from the first two bytes.
        assert_eq!(
            server().decode(&mut [0x89, 0xfe]).unwrap_err(),
            ProtocolError::ControlFrameTooLong
        );
        // Fragmented ping / close / pong.
        for op in [0x8u8, 0x9, 0xa] {
            assert_eq!(
                server().decode(&mut [op, 0x80, 0, 0, 0, 0]).unwrap_err(),
                ProtocolError::FragmentedControlFrame
            );
        }
        // 125 is fine.
        let mut f = vec![0x89, 0xfd, 0, 0, 0, 0];
        f.resize(6 + 125, 0);
        assert!(server().decode(&mut f).unwrap().is_some());
    }

    #[test]
    fn length_with_top_bit_is_1002() {
        let mut f = [0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        let e = FrameDecoder::new(Role::Server, usize::MAX)
            .decode(&mut f)
            .unwrap_err();
        assert_eq!(e, ProtocolError::LengthOverflow);
        assert_eq!(e.close_code(), CloseCode::PROTOCOL_ERROR);
    }

    #[test]
    fn oversize_frame_is_1009_from_the_header_alone() {
        let d = FrameDecoder::new(Role::Server, 1000);
        // Header only: 1001-byte payload announced, nothing of it present.
        let e = d.decode(&mut [0x82, 0xfe, 0x03, 0xe9]).unwrap_err();
        assert_eq!(e, ProtocolError::FrameTooLarge);
        assert_eq!(e.close_code(), CloseCode::MESSAGE_TOO_BIG);
        // 64-bit length: refused before the mask key even arrives.
        let e = d
            .decode(&mut [0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0])
            .unwrap_err();
        assert_eq!(e, ProtocolError::FrameTooLarge);
        // Exactly at the limit is fine.
        let mut f = vec![0x82, 0xfe, 0x03, 0xe8, 0, 0, 0, 0];
        f.resize(8 + 1000, 0);
        assert!(d.decode(&mut f).unwrap().is_some());
    }

    #[test]
    fn close_frame_builder() {
        let c = ControlFrame::close(CloseCode(1008), "slow consumer");
        assert_eq!(&c.as_bytes()[..4], &[0x88, 15, 0x03, 0xf0]);
        assert_eq!(&c.as_bytes()[4..], b"slow consumer");
        assert_eq!(c.opcode(), OpCode::Close);
        // Reason is cut to 123 bytes on a char boundary.
        let long = "é".repeat(100);
        let c = ControlFrame::close(CloseCode(1000), &long);
        assert!(c.as_bytes().len() <= 127);
        assert!(std::str::from_utf8(&c.as_bytes()[4..]).is_ok());
        assert_eq!(ControlFrame::close_empty().as_bytes(), &[0x88, 0x00]);
    }

    #[test]
    fn shared_frame_is_encoded_once_and_shared() {
        let f = SharedFrame::encode(OpCode::Binary, &[1, 2, 3]);
        let g = f.clone();
        assert_eq!(f.ref_count(), 2);
        assert_eq!(g.as_bytes(), &[0x82, 3, 1, 2, 3]);
    }
}
