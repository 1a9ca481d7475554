//! The sans-IO WebSocket protocol core (RFC 6455).
//!
//! Pure functions and state machines over byte slices: no sockets, clocks,
//! threads or per-frame allocation. The relay's event loop feeds bytes in
//! and executes what comes out; the load generator uses the same code in
//! client mode. This is what the unit tests, property tests, fuzz targets
//! and benches exercise.

pub mod assembler;
pub mod client;
pub mod close;
pub mod deflate;
pub mod error;
pub mod forwarded;
pub mod frame;
pub mod handshake;
pub mod mask;
pub mod proxy;
pub mod response;
pub mod utf8;

pub use assembler::{Event, Inflate, MessageAssembler, MessageKind};
pub use client::{
    encode_client_frame, ClientHandshake, ClientHandshakeError, ClientResponse, MaskRng,
};
pub use close::{CloseAction, CloseCode, CloseHandshake, CloseState};
pub use error::ProtocolError;
pub use frame::{
    encode_frame, encode_header, ControlFrame, DecodedFrame, FrameDecoder, FrameHeader, HeaderBuf,
    OpCode, Role, SharedFrame,
};
pub use handshake::{parse_request, HandshakeLimits, HttpRequest, ParsedRequest, UpgradeRequest};
pub use response::RejectReason;
