//! Server side of the opening handshake (RFC 6455 §4.2) and plain HTTP
//! request parsing, over byte slices.
//!
//! [`parse_request`] is called with everything read so far; it answers
//! "need more" until the request head is complete, then either an upgrade
//! request (validated), a plain HTTP request (for routes such as
//! `/healthz`), or a [`Rejection`] carrying the HTTP status to answer.
//! Bytes after the head (a client's first frame, or a request body) are
//! left to the caller: `head_len` says where they start.

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine;
use sha1::{Digest, Sha1};

use super::deflate::{self, DeflateSettings, Negotiated};
use super::response::{RejectReason, Rejection};

/// The GUID of RFC 6455 §1.3.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Limits applied while parsing a request head.
#[derive(Clone, Debug)]
pub struct HandshakeLimits {
    /// Largest request head accepted (`431` beyond).
    pub max_head_bytes: usize,
    /// Most header lines accepted (`431` beyond).
    pub max_headers: usize,
}

impl Default for HandshakeLimits {
    fn default() -> Self {
        HandshakeLimits {
            max_head_bytes: 8 * 1024,
            max_headers: 64,
        }
    }
}

/// A validated WebSocket upgrade request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpgradeRequest {
    /// Path without the query string.
    pub path: String,
    /// Query string without the `?`, if any.
    pub query: Option<String>,
    pub host: String,
    pub origin: Option<String>,
    /// The `Sec-WebSocket-Accept` value to answer with.
    pub accept: String,
    /// Subprotocols the client offered, in its order.
    pub offered_protocols: Vec<String>,
    /// Extensions the client offered, one list element each (split at
    /// commas); permessage-deflate is negotiated from them
    /// ([`UpgradeRequest::negotiate_deflate`]).
    pub offered_extensions: Vec<String>,
    /// Length of the request head; bytes after it belong to the frame
    /// decoder.
    pub head_len: usize,
    /// Values of the `X-Forwarded-For` headers, in order (read only from
    /// trusted proxies; see `forwarded`).
    pub x_forwarded_for: Vec<String>,
    /// Values of the `Forwarded` headers (RFC 7239), in order.
    pub forwarded: Vec<String>,
}

impl UpgradeRequest {
    /// Picks a subprotocol: the first entry of `supported` (server
    /// preference order) that the client offered.
    pub fn negotiate_protocol<'a>(&self, supported: &'a [String]) -> Option<&'a str> {
        supported
            .iter()
            .find(|s| self.offered_protocols.iter().any(|o| o == *s))
            .map(|s| s.as_str())
    }

    /// permessage-deflate parameters for this connection, from the
    /// client's offers (`None`: uncompressed).
    pub fn negotiate_deflate(&self, settings: &DeflateSettings) -> Option<Negotiated> {
        deflate::negotiate(&self.offered_extensions.join(","), settings)
    }

    /// The `101 Switching Protocols` response.
    pub fn accept_response(&self, protocol: Option<&str>) -> Vec<u8> {
        accept_response(&self.accept, protocol)
    }

    /// The `101 Switching Protocols` response, with the negotiated
    /// permessage-deflate parameters when there are some.
    pub fn accept_response_with(
        &self,
        protocol: Option<&str>,
        deflate: Option<&Negotiated>,
    ) -> Vec<u8> {
        accept_response_with(&self.accept, protocol, deflate)
    }
}

/// The `101 Switching Protocols` response for an accept value.
pub fn accept_response(accept: &str, protocol: Option<&str>) -> Vec<u8> {
    accept_response_with(accept, protocol, None)
}

/// The `101 Switching Protocols` response for an accept value, with a
/// `Sec-WebSocket-Extensions` answer when deflate was negotiated.
pub fn accept_response_with(
    accept: &str,
    protocol: Option<&str>,
    deflate: Option<&Negotiated>,
) -> Vec<u8> {
    let mut s = String::with_capacity(160);
    s.push_str("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    s.push_str(accept);
    s.push_str("\r\n");
    if let Some(p) = protocol {
        s.push_str("Sec-WebSocket-Protocol: ");
        s.push_str(p);
        s.push_str("\r\n");
    }
    if let Some(d) = deflate {
        s.push_str("Sec-WebSocket-Extensions: ");
        s.push_str(&d.response_value());
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// A plain (non-upgrade) HTTP request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HttpRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// HTTP minor version (0 or 1).
    pub minor_version: u8,
    /// Header names lower-cased, values as sent (lossy UTF-8).
    pub headers: Vec<(String, String)>,
    pub head_len: usize,
}

impl HttpRequest {
    /// First header with this (lower-case) name.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether the connection may stay open after the response.
    pub fn keep_alive(&self) -> bool {
        match self.header("connection") {
            Some(v) if has_token(v, "close") => false,
            Some(v) if has_token(v, "keep-alive") => true,
            _ => self.minor_version >= 1,
        }
    }

    /// `Content-Length` as a number: `Ok(None)` when absent, `Err` when
    /// malformed or given twice with different values.
    // The caller only needs "bad" (answer 400); no detail to carry.
    #[allow(clippy::result_unit_err)]
    pub fn content_length(&self) -> Result<Option<usize>, ()> {
        let mut found: Option<usize> = None;
        for (n, v) in &self.headers {
            if n == "content-length" {
                // Only the field's optional whitespace (SP / HTAB), not
                // Unicode whitespace: "5\u{a0}" is not a length.
                let v = v.trim_matches([' ', '\t']);
                if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(());
                }
                let n: usize = v.parse().map_err(|_| ())?;
                if found.is_some_and(|f| f != n) {
                    return Err(());
                }
                found = Some(n);
            }
        }
        Ok(found)
    }
}

/// Result of parsing what has arrived so far.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ParsedRequest {
    /// The request head is not complete yet.
    Partial,
    Upgrade(UpgradeRequest),
    Http(HttpRequest),
}

/// Whether a comma-separated header value contains `token`
/// (case-insensitive).
pub fn has_token(value: &str, token: &str) -> bool {
    value
        .split(',')
        .any(|t| t.trim().eq_ignore_ascii_case(token))
}

/// Whether `key` is base64 of exactly 16 bytes (§4.1: the nonce), decoded
/// into a stack buffer (a longer value does not fit and is refused).
fn is_nonce(key: &str) -> bool {
    let mut nonce = [0u8; 18];
    matches!(BASE64.decode_slice(key.as_bytes(), &mut nonce), Ok(16))
}

/// `Sec-WebSocket-Accept` for a key (§4.2.2).
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(WS_GUID);
    BASE64.encode(h.finalize())
}

fn split_target(target: &str) -> (String, Option<String>) {
    match target.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (target.to_string(), None),
    }
}

/// Position just past the blank line ending the head, if present. A bare
/// LF also ends a line (RFC 9112 section 2.2 allows a recipient to accept
/// it, and httparse does), so the head ends at the first line terminator
/// followed by an empty line: `\r\n\r\n`, `\n\n`, `\r\n\n` or `\n\r\n`.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while let Some(p) = buf[i..].iter().position(|&b| b == b'\n') {
        let lf = i + p;
        match buf.get(lf + 1..) {
            Some([b'\n', ..]) => return Some(lf + 2),
            Some([b'\r', b'\n', ..]) => return Some(lf + 3),
            _ => i = lf + 1,
        }
    }
    None
}

/// Header slots kept on the stack by [`parse_request`] (the default
/// `max_request_headers`); a higher limit puts them on the heap.
const STACK_HEADER_SLOTS: usize = 64;

/// Parses a request head from `buf` (all bytes received so far).
pub fn parse_request(buf: &[u8], limits: &HandshakeLimits) -> Result<ParsedRequest, Rejection> {
    // Look for the end of the head first: cheap, and it bounds the work a
    // byte-at-a-time sender can cause.
    let scan = &buf[..buf.len().min(limits.max_head_bytes.saturating_add(4))];
    // httparse's header slots: on the stack up to the default limit, so
    // parsing allocates nothing for them.
    let mut stack_slots = [httparse::EMPTY_HEADER; STACK_HEADER_SLOTS];
    let mut heap_slots;
    let slots: &mut [httparse::Header<'_>] = if limits.max_headers <= STACK_HEADER_SLOTS {
        &mut stack_slots[..limits.max_headers]
    } else {
        heap_slots = vec![httparse::EMPTY_HEADER; limits.max_headers];
        &mut heap_slots
    };
    let end = match head_end(scan) {
        Some(end) if end <= limits.max_head_bytes => end,
        found => {
            // No complete head within the limit (yet). Garbage already
            // visible within the limit is refused as such, before the size
            // check: the answer must not depend on how the bytes were split
            // into reads (a prefix read alone would be refused as garbage,
            // so the whole must be too). Otherwise wait, up to the limit.
            let visible = &buf[..buf.len().min(limits.max_head_bytes)];
            let mut req = httparse::Request::new(slots);
            return match req.parse(visible) {
                Err(httparse::Error::TooManyHeaders) => Err(RejectReason::TooManyHeaders),
                Err(_) => Err(RejectReason::Malformed),
                Ok(_) if found.is_some() || buf.len() >= limits.max_head_bytes => {
                    Err(RejectReason::HeadTooLarge)
                }
                Ok(_) => Ok(ParsedRequest::Partial),
            };
        }
    };
    let mut req = httparse::Request::new(slots);
    let head_len = match req.parse(&buf[..end]) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Err(RejectReason::Malformed),
        Err(httparse::Error::TooManyHeaders) => return Err(RejectReason::TooManyHeaders),
        Err(_) => return Err(RejectReason::Malformed),
    };
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("/");
    let minor = req.version.unwrap_or(0);

    // Only what the answer needs is copied out; the checks run on the
    // borrowed values (a handshake allocates little: connection storms
    // are made of handshakes).
    let mut host = None;
    let mut origin = None;
    let mut upgrade: Option<bool> = None; // present; names "websocket"
    let mut connection_upgrade = false;
    let mut version: Option<bool> = None; // present; is "13"
    let mut key = None;
    let mut protocols = Vec::new();
    let mut extensions = Vec::new();
    let mut x_forwarded_for = Vec::new();
    let mut forwarded = Vec::new();
    for h in req.headers.iter() {
        let name = h.name;
        let value = String::from_utf8_lossy(h.value);
        if name.eq_ignore_ascii_case("host") {
            host = Some(value.trim().to_string());
        } else if name.eq_ignore_ascii_case("origin") {
            origin = Some(value.trim().to_string());
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = Some(has_token(&value, "websocket"));
        } else if name.eq_ignore_ascii_case("connection") {
            connection_upgrade |= has_token(&value, "upgrade");
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            version = Some(value.trim() == "13");
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            key = Some(value);
        } else if name.eq_ignore_ascii_case("sec-websocket-protocol") {
            protocols.extend(
                value
                    .split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty()),
            );
        } else if name.eq_ignore_ascii_case("x-forwarded-for") {
            x_forwarded_for.push(value.into_owned());
        } else if name.eq_ignore_ascii_case("forwarded") {
            forwarded.push(value.into_owned());
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions") {
            extensions.extend(
                value
                    .split(',')
                    .map(|p| p.trim().to_string())
                    .filter(|p| !p.is_empty()),
            );
        }
    }

    let is_upgrade_attempt = upgrade.is_some() || key.is_some() || version.is_some();
    if !is_upgrade_attempt {
        let (path, query) = split_target(target);
        let headers = req
            .headers
            .iter()
            .map(|h| {
                (
                    h.name.to_ascii_lowercase(),
                    String::from_utf8_lossy(h.value).into_owned(),
                )
            })
            .collect();
        return Ok(ParsedRequest::Http(HttpRequest {
            method: method.to_string(),
            path,
            query,
            minor_version: minor,
            headers,
            head_len,
        }));
    }

    if method != "GET" {
        return Err(RejectReason::MethodNotAllowed);
    }
    if minor != 1 {
        return Err(RejectReason::HttpVersion);
    }
    let host = match host {
        Some(h) if !h.is_empty() => h,
        _ => return Err(RejectReason::MissingHost),
    };
    if upgrade != Some(true) {
        return Err(RejectReason::BadUpgradeHeader);
    }
    if !connection_upgrade {
        return Err(RejectReason::BadConnectionHeader);
    }
    if version != Some(true) {
        return Err(RejectReason::UnsupportedVersion);
    }
    let key = match key.as_deref().map(str::trim) {
        Some(k) if is_nonce(k) => k,
        _ => return Err(RejectReason::BadKey),
    };
    let (path, query) = split_target(target);
    Ok(ParsedRequest::Upgrade(UpgradeRequest {
        path,
        query,
        host,
        origin,
        accept: accept_key(key.as_bytes()),
        offered_protocols: protocols,
        offered_extensions: extensions,
        head_len,
        x_forwarded_for,
        forwarded,
    }))
}

#[cfg(test)]
mod tests;
