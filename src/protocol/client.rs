//! Client mode, for the load generator and tests: the opening handshake
//! seen from the client (§4.1) and masked frame encoding (§5.3).

use super::frame::{encode_header, OpCode};
use super::handshake::{accept_key, has_token};
use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use rand::rngs::StdRng;
use rand::{RngCore, SeedableRng};
use std::fmt;

/// A source of masking keys and handshake nonces.
///
/// RFC 6455 §5.3 requires masking keys an intermediary cannot predict, so
/// this is a CSPRNG (ChaCha) seeded from the operating system.
pub struct MaskRng(StdRng);

impl Default for MaskRng {
    fn default() -> Self {
        Self::new()
    }
}

impl MaskRng {
    pub fn new() -> Self {
        MaskRng(StdRng::from_entropy())
    }

    pub fn mask_key(&mut self) -> [u8; 4] {
        self.0.next_u32().to_ne_bytes()
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        self.0.fill_bytes(buf)
    }
}

/// Largest response head accepted from a server.
const MAX_RESPONSE_HEAD: usize = 8192;

/// Why a server's handshake response was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientHandshakeError {
    /// Response head not parseable, or over 8 KiB.
    Malformed,
    /// Status other than 101.
    Status(u16),
    MissingUpgrade,
    MissingConnection,
    /// `Sec-WebSocket-Accept` missing or not the expected value.
    BadAccept,
    /// The server picked a subprotocol we did not offer.
    UnexpectedProtocol(String),
}

impl fmt::Display for ClientHandshakeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ClientHandshakeError::Malformed => f.write_str("malformed handshake response"),
            ClientHandshakeError::Status(s) => write!(f, "server answered HTTP {s} instead of 101"),
            ClientHandshakeError::MissingUpgrade => {
                f.write_str("response lacks Upgrade: websocket")
            }
            ClientHandshakeError::MissingConnection => {
                f.write_str("response lacks Connection: Upgrade")
            }
            ClientHandshakeError::BadAccept => f.write_str("wrong or missing Sec-WebSocket-Accept"),
            ClientHandshakeError::UnexpectedProtocol(p) => {
                write!(f, "server chose unoffered subprotocol {p:?}")
            }
        }
    }
}

impl std::error::Error for ClientHandshakeError {}

/// A validated `101` response.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientResponse {
    /// Bytes of the response head; what follows are frames.
    pub head_len: usize,
    pub protocol: Option<String>,
}

/// One client opening handshake.
#[derive(Clone, Debug)]
pub struct ClientHandshake {
    key: String,
    expected_accept: String,
    protocols: Vec<String>,
}

impl ClientHandshake {
    /// A handshake with a fresh random 16-byte key.
    pub fn new(rng: &mut MaskRng) -> Self {
        let mut nonce = [0u8; 16];
        rng.fill(&mut nonce);
        let key = BASE64.encode(nonce);
        let expected_accept = accept_key(key.as_bytes());
        ClientHandshake {
            key,
            expected_accept,
            protocols: Vec::new(),
        }
    }

    /// Offers subprotocols, in preference order.
    pub fn with_protocols(mut self, protocols: &[&str]) -> Self {
        self.protocols = protocols.iter().map(|s| s.to_string()).collect();
        self
    }

    pub fn key(&self) -> &str {
        &self.key
    }

    /// The request bytes for `path` (with query) on `host`.
    pub fn request(&self, host: &str, path: &str) -> Vec<u8> {
        let mut s = format!(
            "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {}\r\nSec-WebSocket-Version: 13\r\n",
            self.key
        );
        if !self.protocols.is_empty() {
            s.push_str("Sec-WebSocket-Protocol: ");
            s.push_str(&self.protocols.join(", "));
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    }

    /// Validates the response in `buf`; `Ok(None)` until the head is
    /// complete.
    pub fn parse_response(
        &self,
        buf: &[u8],
    ) -> Result<Option<ClientResponse>, ClientHandshakeError> {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut resp = httparse::Response::new(&mut headers);
        let head_len = match resp.parse(buf) {
            // Over the limit even though complete: the same answer as when
            // the head arrives in smaller reads and the limit is hit first.
            Ok(httparse::Status::Complete(n)) if n > MAX_RESPONSE_HEAD => {
                return Err(ClientHandshakeError::Malformed)
            }
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() > MAX_RESPONSE_HEAD => {
                return Err(ClientHandshakeError::Malformed)
            }
            Ok(httparse::Status::Partial) => return Ok(None),
            Err(_) => return Err(ClientHandshakeError::Malformed),
        };
        let code = resp.code.unwrap_or(0);
        if code != 101 {
            return Err(ClientHandshakeError::Status(code));
        }
        let get = |name: &str| {
            resp.headers
                .iter()
                .filter(|h| h.name.eq_ignore_ascii_case(name))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
                .collect::<Vec<_>>()
        };
        if !get("upgrade").iter().any(|v| has_token(v, "websocket")) {
            return Err(ClientHandshakeError::MissingUpgrade);
        }
        if !get("connection").iter().any(|v| has_token(v, "upgrade")) {
            return Err(ClientHandshakeError::MissingConnection);
        }
        match get("sec-websocket-accept").first() {
            Some(v) if v.trim() == self.expected_accept => {}
            _ => return Err(ClientHandshakeError::BadAccept),
        }
        let protocol = get("sec-websocket-protocol")
            .first()
            .map(|p| p.trim().to_string());
        if let Some(p) = &protocol {
            if !self.protocols.iter().any(|o| o == p) {
                return Err(ClientHandshakeError::UnexpectedProtocol(p.clone()));
            }
        }
        Ok(Some(ClientResponse { head_len, protocol }))
    }
}

/// Appends a masked (client) frame to `out`, masking the copy of
/// `payload` with `key`.
pub fn encode_client_frame(
    fin: bool,
    opcode: OpCode,
    payload: &[u8],
    key: [u8; 4],
    out: &mut Vec<u8>,
) {
    let header = encode_header(fin, opcode, payload.len(), Some(key));
    out.reserve(header.as_bytes().len() + payload.len());
    out.extend_from_slice(header.as_bytes());
    let start = out.len();
    out.extend_from_slice(payload);
    super::mask::apply_mask(&mut out[start..], key, 0);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::handshake::{parse_request, HandshakeLimits, ParsedRequest};

    #[test]
    fn request_is_accepted_by_the_server_parser_and_response_validates() {
        let mut rng = MaskRng::new();
        let hs = ClientHandshake::new(&mut rng).with_protocols(&["chat"]);
        let req = hs.request("127.0.0.1:9001", "/rooms/a?role=sub");
        let up = match parse_request(&req, &HandshakeLimits::default()).unwrap() {
            ParsedRequest::Upgrade(u) => u,
            other => panic!("{other:?}"),
        };
        assert_eq!(up.path, "/rooms/a");
        let resp = up.accept_response(Some("chat"));
        let mut with_frame = resp.clone();
        with_frame.extend_from_slice(&[0x81, 0x00]);
        let r = hs.parse_response(&with_frame).unwrap().unwrap();
        assert_eq!(r.head_len, resp.len());
        assert_eq!(r.protocol.as_deref(), Some("chat"));
        for cut in 0..resp.len() {
            assert_eq!(hs.parse_response(&resp[..cut]), Ok(None));
        }
    }

    #[test]
    fn oversized_complete_head_is_malformed() {
        // Regression: a complete response head over 8 KiB was accepted when
        // it arrived in one read, but refused when read in pieces (the
        // partial-head limit was hit first).
        let mut rng = MaskRng::new();
        let hs = ClientHandshake::new(&mut rng);
        let accept = accept_key(hs.key().as_bytes());
        let pad = format!("X-Pad: {}\r\n", "a".repeat(9000));
        let resp = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n{pad}Sec-WebSocket-Accept: {accept}\r\n\r\n"
        );
        let resp = resp.as_bytes();
        assert_eq!(
            hs.parse_response(resp),
            Err(ClientHandshakeError::Malformed)
        );
        assert_eq!(
            hs.parse_response(&resp[..8193]),
            Err(ClientHandshakeError::Malformed)
        );
        // Just under the limit is fine.
        let pad = "a".repeat(8192 - (resp.len() - 9000));
        let ok = String::from_utf8_lossy(resp).replace(&"a".repeat(9000), &pad);
        assert_eq!(ok.len(), 8192);
        assert!(hs.parse_response(ok.as_bytes()).unwrap().is_some());
    }

    #[test]
    fn keys_are_random() {
        let mut rng = MaskRng::new();
        let a = ClientHandshake::new(&mut rng);
        let b = ClientHandshake::new(&mut rng);
        assert_ne!(a.key(), b.key());
        assert_eq!(BASE64.decode(a.key()).unwrap().len(), 16);
        assert_ne!(rng.mask_key(), rng.mask_key());
    }

    #[test]
    fn bad_responses_are_refused_with_clear_errors() {
        let mut rng = MaskRng::new();
        let hs = ClientHandshake::new(&mut rng);
        let good =
            crate::protocol::handshake::accept_response(&accept_key(hs.key().as_bytes()), None);
        let good = String::from_utf8(good).unwrap();
        assert!(hs.parse_response(good.as_bytes()).unwrap().is_some());
        let cases = [
            (
                "HTTP/1.1 404 Not Found\r\n\r\n".to_string(),
                ClientHandshakeError::Status(404),
            ),
            (
                good.replace("Upgrade: websocket\r\n", ""),
                ClientHandshakeError::MissingUpgrade,
            ),
            (
                good.replace("Connection: Upgrade\r\n", "Connection: close\r\n"),
                ClientHandshakeError::MissingConnection,
            ),
            (
                good.replace("Sec-WebSocket-Accept: ", "Sec-WebSocket-Accept: x"),
                ClientHandshakeError::BadAccept,
            ),
            (
                good.replace("\r\n\r\n", "\r\nSec-WebSocket-Protocol: x\r\n\r\n"),
                ClientHandshakeError::UnexpectedProtocol("x".into()),
            ),
            (
                "\x00\x01garbage\r\n\r\n".to_string(),
                ClientHandshakeError::Malformed,
            ),
        ];
        for (resp, err) in cases {
            assert_eq!(
                hs.parse_response(resp.as_bytes()),
                Err(err.clone()),
                "{resp:?}"
            );
            assert!(!err.to_string().is_empty());
        }
    }

    #[test]
    fn client_frames_decode_on_the_server() {
        use crate::protocol::frame::{FrameDecoder, Role};
        let mut out = Vec::new();
        encode_client_frame(
            true,
            OpCode::Text,
            b"Hello",
            [0x37, 0xfa, 0x21, 0x3d],
            &mut out,
        );
        assert_eq!(
            out,
            [0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58]
        );
        let d = FrameDecoder::new(Role::Server, 1024)
            .decode(&mut out)
            .unwrap()
            .unwrap();
        assert_eq!(&out[d.payload], b"Hello");
    }
}
