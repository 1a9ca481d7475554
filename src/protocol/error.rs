//! Protocol violations, each mapped to the close code RFC 6455 asks for.

use super::close::CloseCode;
use std::fmt;

/// Why a WebSocket connection must be failed. Every variant maps to exactly
/// one close code (see `docs/protocol.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProtocolError {
    /// A client frame without a mask (§5.1).
    UnmaskedFrame,
    /// A server frame with a mask (client mode, §5.1).
    MaskedFrame,
    /// RSV1-3 set without a negotiated extension (§5.2).
    ReservedBits,
    /// Opcode 0x3-0x7 or 0xB-0xF (§5.2).
    ReservedOpcode(u8),
    /// Control frame with a payload over 125 bytes (§5.5).
    ControlFrameTooLong,
    /// Control frame with FIN clear (§5.5).
    FragmentedControlFrame,
    /// 64-bit length with the most significant bit set (§5.2).
    LengthOverflow,
    /// Continuation frame with no message in progress (§5.4).
    UnexpectedContinuation,
    /// A new text/binary frame while a fragmented message is in progress.
    ExpectedContinuation,
    /// Close frame with a 1-byte payload (§5.5.1).
    ClosePayloadTooShort,
    /// Close frame with a code that may not appear on the wire (§7.4).
    InvalidCloseCode(u16),
    /// A single frame over the configured frame limit.
    FrameTooLarge,
    /// A message (summed over its fragments) over the configured limit.
    MessageTooLarge,
    /// Text message or close reason that is not UTF-8 (§8.1).
    InvalidUtf8,
    /// RSV1 (compressed) on a control or continuation frame (RFC 7692 §6.1).
    CompressedFrameFlag,
    /// A compressed message that does not inflate (RFC 7692 §6.2).
    BadCompressedData,
}

impl ProtocolError {
    /// The close code to send when failing the connection for this error.
    pub fn close_code(self) -> CloseCode {
        match self {
            ProtocolError::FrameTooLarge | ProtocolError::MessageTooLarge => {
                CloseCode::MESSAGE_TOO_BIG
            }
            ProtocolError::InvalidUtf8 | ProtocolError::BadCompressedData => {
                CloseCode::INVALID_PAYLOAD
            }
            _ => CloseCode::PROTOCOL_ERROR,
        }
    }

    /// A short reason for the close frame (fits easily in 123 bytes).
    pub fn reason(self) -> &'static str {
        match self {
            ProtocolError::UnmaskedFrame => "client frame not masked",
            ProtocolError::MaskedFrame => "server frame masked",
            ProtocolError::ReservedBits => "reserved bits set",
            ProtocolError::ReservedOpcode(_) => "reserved opcode",
            ProtocolError::ControlFrameTooLong => "control frame too long",
            ProtocolError::FragmentedControlFrame => "fragmented control frame",
            ProtocolError::LengthOverflow => "invalid frame length",
            ProtocolError::UnexpectedContinuation => "continuation without a message",
            ProtocolError::ExpectedContinuation => "expected continuation frame",
            ProtocolError::ClosePayloadTooShort => "invalid close payload",
            ProtocolError::InvalidCloseCode(_) => "invalid close code",
            ProtocolError::FrameTooLarge => "frame too large",
            ProtocolError::MessageTooLarge => "message too large",
            ProtocolError::InvalidUtf8 => "invalid utf-8",
            ProtocolError::CompressedFrameFlag => "rsv1 on control or continuation frame",
            ProtocolError::BadCompressedData => "invalid compressed data",
        }
    }
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProtocolError::ReservedOpcode(op) => write!(f, "reserved opcode {op:#x}"),
            ProtocolError::InvalidCloseCode(c) => write!(f, "invalid close code {c}"),
            other => f.write_str(other.reason()),
        }
    }
}

impl std::error::Error for ProtocolError {}
