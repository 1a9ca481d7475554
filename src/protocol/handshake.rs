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

/// Why a request was refused; each maps to one HTTP status (and a metrics
/// label).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Request head over `max_head_bytes` (431).
    HeadTooLarge,
    /// More than `max_headers` headers (431).
    TooManyHeaders,
    /// Not parseable as HTTP/1.x (400).
    Malformed,
    /// Upgrade attempted with a method other than GET (405).
    MethodNotAllowed,
    /// Upgrade attempted over HTTP/1.0 (400).
    HttpVersion,
    /// No `Host` header (400).
    MissingHost,
    /// `Upgrade` header without the `websocket` token (400).
    BadUpgradeHeader,
    /// `Connection` header without the `upgrade` token (400).
    BadConnectionHeader,
    /// `Sec-WebSocket-Version` missing or not 13 (426).
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` missing or not 16 base64-encoded bytes (400).
    BadKey,
    /// A WebSocket route requested without an upgrade (426).
    UpgradeRequired,
    /// Origin not allowed (403).
    ForbiddenOrigin,
    /// No such route (404).
    NotFound,
    /// Bad room name (400).
    BadRoomName,
    /// `role` query parameter other than `sub` or `pub` (400).
    BadRole,
    /// Too many connections from this address (429).
    TooManyPerIp,
    /// Server at `max_connections`, `max_rooms`, or shutting down (503).
    Unavailable,
}

impl RejectReason {
    pub fn status(self) -> u16 {
        match self {
            RejectReason::HeadTooLarge | RejectReason::TooManyHeaders => 431,
            RejectReason::MethodNotAllowed => 405,
            RejectReason::UnsupportedVersion | RejectReason::UpgradeRequired => 426,
            RejectReason::ForbiddenOrigin => 403,
            RejectReason::NotFound => 404,
            RejectReason::TooManyPerIp => 429,
            RejectReason::Unavailable => 503,
            RejectReason::Malformed
            | RejectReason::HttpVersion
            | RejectReason::MissingHost
            | RejectReason::BadUpgradeHeader
            | RejectReason::BadConnectionHeader
            | RejectReason::BadKey
            | RejectReason::BadRoomName
            | RejectReason::BadRole => 400,
        }
    }

    /// Stable snake_case label (metrics, logs).
    pub fn label(self) -> &'static str {
        match self {
            RejectReason::HeadTooLarge => "head_too_large",
            RejectReason::TooManyHeaders => "too_many_headers",
            RejectReason::Malformed => "malformed",
            RejectReason::MethodNotAllowed => "method_not_allowed",
            RejectReason::HttpVersion => "http_version",
            RejectReason::MissingHost => "missing_host",
            RejectReason::BadUpgradeHeader => "bad_upgrade_header",
            RejectReason::BadConnectionHeader => "bad_connection_header",
            RejectReason::UnsupportedVersion => "unsupported_version",
            RejectReason::BadKey => "bad_key",
            RejectReason::UpgradeRequired => "upgrade_required",
            RejectReason::ForbiddenOrigin => "forbidden_origin",
            RejectReason::NotFound => "not_found",
            RejectReason::BadRoomName => "bad_room_name",
            RejectReason::BadRole => "bad_role",
            RejectReason::TooManyPerIp => "too_many_per_ip",
            RejectReason::Unavailable => "unavailable",
        }
    }

    /// All reasons, for metrics exposition.
    pub const ALL: [RejectReason; 17] = [
        RejectReason::HeadTooLarge,
        RejectReason::TooManyHeaders,
        RejectReason::Malformed,
        RejectReason::MethodNotAllowed,
        RejectReason::HttpVersion,
        RejectReason::MissingHost,
        RejectReason::BadUpgradeHeader,
        RejectReason::BadConnectionHeader,
        RejectReason::UnsupportedVersion,
        RejectReason::BadKey,
        RejectReason::UpgradeRequired,
        RejectReason::ForbiddenOrigin,
        RejectReason::NotFound,
        RejectReason::BadRoomName,
        RejectReason::BadRole,
        RejectReason::TooManyPerIp,
        RejectReason::Unavailable,
    ];

    /// Short plain-text body explaining the refusal.
    pub fn body(self) -> &'static str {
        match self {
            RejectReason::HeadTooLarge => "request header fields too large\n",
            RejectReason::TooManyHeaders => "too many header fields\n",
            RejectReason::Malformed => "malformed HTTP request\n",
            RejectReason::MethodNotAllowed => "websocket upgrade requires GET\n",
            RejectReason::HttpVersion => "websocket upgrade requires HTTP/1.1\n",
            RejectReason::MissingHost => "missing Host header\n",
            RejectReason::BadUpgradeHeader => "Upgrade header must contain websocket\n",
            RejectReason::BadConnectionHeader => "Connection header must contain upgrade\n",
            RejectReason::UnsupportedVersion => "unsupported Sec-WebSocket-Version (want 13)\n",
            RejectReason::BadKey => "Sec-WebSocket-Key must be 16 base64-encoded bytes\n",
            RejectReason::UpgradeRequired => "this endpoint requires a websocket upgrade\n",
            RejectReason::ForbiddenOrigin => "origin not allowed\n",
            RejectReason::NotFound => "not found\n",
            RejectReason::BadRoomName => "room name must be 1-128 bytes of [A-Za-z0-9._~-]\n",
            RejectReason::BadRole => "role must be sub or pub\n",
            RejectReason::TooManyPerIp => "too many connections from this address\n",
            RejectReason::Unavailable => "server unavailable\n",
        }
    }

    /// The complete HTTP response: status, plain-text body, `Connection:
    /// close`, plus the headers the status calls for.
    pub fn response(self) -> Vec<u8> {
        let extra: &str = match self {
            RejectReason::UnsupportedVersion => "Sec-WebSocket-Version: 13\r\n",
            RejectReason::UpgradeRequired => "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            RejectReason::MethodNotAllowed => "Allow: GET\r\n",
            RejectReason::Unavailable => "Retry-After: 5\r\n",
            _ => "",
        };
        http_response(
            self.status(),
            extra,
            "text/plain; charset=utf-8",
            self.body().as_bytes(),
            false,
        )
    }
}

/// A refused request: the reason decides the status and body.
pub type Rejection = RejectReason;

/// Canonical reason phrase for the statuses this server sends.
pub fn status_text(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        202 => "Accepted",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        411 => "Length Required",
        413 => "Content Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// Builds an HTTP/1.1 response with a body. `extra_headers` is zero or more
/// complete `Name: value\r\n` lines.
pub fn http_response(
    status: u16,
    extra_headers: &str,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(160 + extra_headers.len() + body.len());
    out.extend_from_slice(
        format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: {}\r\n{}\r\n",
            status,
            status_text(status),
            content_type,
            body.len(),
            if keep_alive { "keep-alive" } else { "close" },
            extra_headers
        )
        .as_bytes(),
    );
    out.extend_from_slice(body);
    out
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
    /// Extensions the client offered (raw header values); none are
    /// negotiated by this server.
    pub offered_extensions: Vec<String>,
    /// Length of the request head; bytes after it belong to the frame
    /// decoder.
    pub head_len: usize,
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

    /// The `101 Switching Protocols` response.
    pub fn accept_response(&self, protocol: Option<&str>) -> Vec<u8> {
        accept_response(&self.accept, protocol)
    }
}

/// The `101 Switching Protocols` response for an accept value.
pub fn accept_response(accept: &str, protocol: Option<&str>) -> Vec<u8> {
    let mut s = String::with_capacity(160);
    s.push_str("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: ");
    s.push_str(accept);
    s.push_str("\r\n");
    if let Some(p) = protocol {
        s.push_str("Sec-WebSocket-Protocol: ");
        s.push_str(p);
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
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "GET /chat?x=1 HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\nSec-WebSocket-Version: 13\r\n\r\n";

    fn parse(s: &str) -> Result<ParsedRequest, Rejection> {
        parse_request(s.as_bytes(), &HandshakeLimits::default())
    }

    fn upgrade(s: &str) -> UpgradeRequest {
        match parse(s).unwrap() {
            ParsedRequest::Upgrade(u) => u,
            other => panic!("{other:?}"),
        }
    }

    fn with(header: &str, replacement: &str) -> String {
        let mut out = String::new();
        for line in GOOD.split_inclusive("\r\n") {
            if line
                .to_ascii_lowercase()
                .starts_with(&header.to_ascii_lowercase())
            {
                out.push_str(replacement);
            } else {
                out.push_str(line);
            }
        }
        out
    }

    #[test]
    fn rfc_accept_vector() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn good_request_parses_with_route_information() {
        let u = upgrade(GOOD);
        assert_eq!(u.path, "/chat");
        assert_eq!(u.query.as_deref(), Some("x=1"));
        assert_eq!(u.host, "server.example.com");
        assert_eq!(u.origin.as_deref(), Some("http://example.com"));
        assert_eq!(u.accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(u.offered_protocols, vec!["chat", "superchat"]);
        assert_eq!(u.head_len, GOOD.len());
        let resp = String::from_utf8(u.accept_response(Some("chat"))).unwrap();
        assert!(resp.starts_with("HTTP/1.1 101 Switching Protocols\r\n"));
        assert!(resp.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(resp.contains("Sec-WebSocket-Protocol: chat\r\n"));
        assert!(resp.ends_with("\r\n\r\n"));
    }

    #[test]
    fn any_chunking_needs_more_until_complete() {
        let bytes = GOOD.as_bytes();
        for cut in 0..bytes.len() {
            assert_eq!(
                parse_request(&bytes[..cut], &HandshakeLimits::default()).unwrap(),
                ParsedRequest::Partial,
                "cut {cut}"
            );
        }
    }

    #[test]
    fn trailing_frame_bytes_are_not_consumed() {
        let mut buf = GOOD.as_bytes().to_vec();
        buf.extend_from_slice(&[0x81, 0x80, 1, 2, 3, 4]);
        let u = match parse_request(&buf, &HandshakeLimits::default()).unwrap() {
            ParsedRequest::Upgrade(u) => u,
            other => panic!("{other:?}"),
        };
        assert_eq!(&buf[u.head_len..], &[0x81, 0x80, 1, 2, 3, 4]);
    }

    #[test]
    fn subprotocol_negotiation_uses_server_preference() {
        let u = upgrade(GOOD);
        let supported = vec!["superchat".to_string(), "chat".to_string()];
        assert_eq!(u.negotiate_protocol(&supported), Some("superchat"));
        assert_eq!(u.negotiate_protocol(&["other".to_string()]), None);
        assert_eq!(u.negotiate_protocol(&[]), None);
    }

    #[test]
    fn token_lists_are_case_insensitive() {
        let s = with("Connection:", "Connection: keep-alive, UPGRADE\r\n");
        let s = s.replace("Upgrade: websocket", "Upgrade: h2c, WebSocket");
        upgrade(&s);
    }

    #[test]
    fn each_rejection_has_its_status() {
        let cases: Vec<(String, RejectReason, u16)> = vec![
            (
                GOOD.replacen("GET", "POST", 1),
                RejectReason::MethodNotAllowed,
                405,
            ),
            (
                GOOD.replacen("HTTP/1.1", "HTTP/1.0", 1),
                RejectReason::HttpVersion,
                400,
            ),
            (with("Host:", ""), RejectReason::MissingHost, 400),
            (
                with("Upgrade:", "Upgrade: h2c\r\n"),
                RejectReason::BadUpgradeHeader,
                400,
            ),
            (
                with("Connection:", "Connection: keep-alive\r\n"),
                RejectReason::BadConnectionHeader,
                400,
            ),
            (
                with("Connection:", ""),
                RejectReason::BadConnectionHeader,
                400,
            ),
            (
                with("Sec-WebSocket-Version:", "Sec-WebSocket-Version: 8\r\n"),
                RejectReason::UnsupportedVersion,
                426,
            ),
            (
                with("Sec-WebSocket-Version:", ""),
                RejectReason::UnsupportedVersion,
                426,
            ),
            (
                with("Sec-WebSocket-Key:", "Sec-WebSocket-Key: c2hvcnQ=\r\n"),
                RejectReason::BadKey,
                400,
            ),
            (
                with("Sec-WebSocket-Key:", "Sec-WebSocket-Key: !!!!\r\n"),
                RejectReason::BadKey,
                400,
            ),
            (with("Sec-WebSocket-Key:", ""), RejectReason::BadKey, 400),
            (
                "GARBAGE\x01\r\n\r\n".to_string(),
                RejectReason::Malformed,
                400,
            ),
        ];
        for (req, reason, status) in cases {
            assert_eq!(parse(&req), Err(reason), "{req:?}");
            assert_eq!(reason.status(), status);
            let resp = String::from_utf8(reason.response()).unwrap();
            assert!(resp.starts_with(&format!("HTTP/1.1 {status} ")), "{resp}");
            assert!(resp.contains("Connection: close\r\n"));
        }
        let resp = String::from_utf8(RejectReason::UnsupportedVersion.response()).unwrap();
        assert!(resp.contains("Sec-WebSocket-Version: 13\r\n"));
    }

    #[test]
    fn garbage_is_rejected_without_waiting_for_the_limit() {
        assert_eq!(parse("\x16\x03\x01\x02\x00"), Err(RejectReason::Malformed));
    }

    #[test]
    fn the_key_must_be_exactly_16_bytes_of_base64() {
        let key = |k: &str| {
            parse(&with(
                "Sec-WebSocket-Key:",
                &format!("Sec-WebSocket-Key: {k}\r\n"),
            ))
        };
        // RFC 6455's sample nonce, also with spaces around it.
        assert!(matches!(
            key("dGhlIHNhbXBsZSBub25jZQ=="),
            Ok(ParsedRequest::Upgrade(_))
        ));
        assert!(matches!(
            key("  dGhlIHNhbXBsZSBub25jZQ== "),
            Ok(ParsedRequest::Upgrade(_))
        ));
        for bad in [
            "dGhlIHNhbXBsZSBub25jZQ",       // no padding
            "dGhlIHNhbXBsZSBub25j",         // 15 bytes
            "dGhlIHNhbXBsZSBub25jZXg=",     // 17 bytes
            "dGhlIHNhbXBsZSBub25jZXh5eg==", // 19 bytes: does not fit the buffer
            "dGhlIHNhbXBsZSBub25jZQ==dGhl", // trailing data
            "dGhlIHNhbXBsZSBub25jZQ=!",     // bad character
        ] {
            assert_eq!(key(bad), Err(RejectReason::BadKey), "{bad}");
        }
        // Far longer than any nonce: refused, not decoded.
        assert_eq!(key(&"QUFB".repeat(500)), Err(RejectReason::BadKey));
    }

    #[test]
    fn header_limits_above_the_stack_slots_still_count_exactly() {
        let limits = |n| HandshakeLimits {
            max_head_bytes: 64 * 1024,
            max_headers: n,
        };
        let mut req = GOOD.trim_end_matches("\r\n").to_string();
        req.push_str("\r\n");
        for i in 0..100 {
            req.push_str(&format!("X-Extra-{i}: {i}\r\n"));
        }
        req.push_str("\r\n");
        // GOOD has 7 headers: 107 in all.
        for (n, ok) in [(64, false), (106, false), (107, true), (500, true)] {
            let got = parse_request(req.as_bytes(), &limits(n));
            if ok {
                assert!(matches!(got, Ok(ParsedRequest::Upgrade(_))), "{n}: {got:?}");
            } else {
                assert_eq!(got, Err(RejectReason::TooManyHeaders), "{n}");
            }
        }
    }

    #[test]
    fn head_and_header_count_limits_are_431() {
        let limits = HandshakeLimits {
            max_head_bytes: 200,
            max_headers: 4,
        };
        let long = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(300)
        );
        assert_eq!(
            parse_request(long.as_bytes(), &limits),
            Err(RejectReason::HeadTooLarge)
        );
        // Still incomplete but already too long.
        assert_eq!(
            parse_request(&long.as_bytes()[..250], &limits),
            Err(RejectReason::HeadTooLarge)
        );
        // GOOD is over 200 bytes, but its fifth header (past the limit of
        // four) shows up first.
        assert_eq!(
            parse_request(GOOD.as_bytes(), &limits),
            Err(RejectReason::TooManyHeaders)
        );
        let roomy = HandshakeLimits {
            max_head_bytes: 200,
            max_headers: 64,
        };
        assert_eq!(
            parse_request(GOOD.as_bytes(), &roomy),
            Err(RejectReason::HeadTooLarge)
        );
        let many = "GET / HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\n\r\n";
        assert_eq!(
            parse_request(many.as_bytes(), &limits),
            Err(RejectReason::TooManyHeaders)
        );
        assert_eq!(RejectReason::HeadTooLarge.status(), 431);
        assert_eq!(RejectReason::TooManyHeaders.status(), 431);
    }

    /// The first answer other than `Partial` while bytes arrive in reads
    /// of `step` bytes.
    fn first_decision(
        input: &[u8],
        limits: &HandshakeLimits,
        step: usize,
    ) -> Result<ParsedRequest, Rejection> {
        let mut end = 0;
        loop {
            end = (end + step).min(input.len());
            match parse_request(&input[..end], limits) {
                Ok(ParsedRequest::Partial) if end < input.len() => {}
                other => return other,
            }
        }
    }

    #[test]
    fn outcome_does_not_depend_on_read_sizes() {
        // Regression (found by tests/protocol_props.rs): garbage within the
        // first bytes was refused as malformed (400) when it arrived in small
        // reads, but as too large (431) when the whole over-limit head came
        // in one read.
        let limits = HandshakeLimits {
            max_head_bytes: 20,
            max_headers: 0,
        };
        let input = b"}ET /chat HTTP/1.1\r\nUpgrade: websocket\nHost: server.example.com\r\n\x00";
        let whole = parse_request(input, &limits);
        assert_eq!(whole, Err(RejectReason::Malformed));
        // Likewise too many headers before the size limit is reached.
        let few = HandshakeLimits {
            max_head_bytes: 200,
            max_headers: 4,
        };
        for (input, limits) in [(&input[..], &limits), (GOOD.as_bytes(), &few)] {
            let whole = parse_request(input, limits);
            for step in 1..=input.len() {
                assert_eq!(first_decision(input, limits, step), whole, "step {step}");
            }
        }
        // Garbage visible only past the limit is still "too large".
        let mut late = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
        late.resize(200, b'a');
        late.extend_from_slice(b"\x00\r\n\r\n");
        assert_eq!(
            parse_request(&late, &roomy_limits()),
            Err(RejectReason::HeadTooLarge)
        );
    }

    fn roomy_limits() -> HandshakeLimits {
        HandshakeLimits {
            max_head_bytes: 100,
            max_headers: 64,
        }
    }

    #[test]
    fn plain_get_is_an_http_request() {
        let r = match parse("GET /healthz?v=1 HTTP/1.1\r\nHost: x\r\nX-Thing: Yes\r\n\r\n").unwrap()
        {
            ParsedRequest::Http(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/healthz");
        assert_eq!(r.query.as_deref(), Some("v=1"));
        assert_eq!(r.header("x-thing"), Some("Yes"));
        assert!(r.keep_alive());
        assert_eq!(r.content_length(), Ok(None));
    }

    #[test]
    fn http_request_helpers() {
        let r = match parse("POST /publish/a HTTP/1.0\r\nContent-Length: 12\r\n\r\n").unwrap() {
            ParsedRequest::Http(r) => r,
            other => panic!("{other:?}"),
        };
        assert!(!r.keep_alive());
        assert_eq!(r.content_length(), Ok(Some(12)));
        let r = match parse("POST / HTTP/1.1\r\nContent-Length: -1\r\nConnection: close\r\n\r\n")
            .unwrap()
        {
            ParsedRequest::Http(r) => r,
            other => panic!("{other:?}"),
        };
        assert_eq!(r.content_length(), Err(()));
        assert!(!r.keep_alive());
    }

    /// Found while writing the `http_publish` fuzz target (its
    /// Content-Length invariant fails on such input): `str::trim` also
    /// strips Unicode whitespace, so `Content-Length: 5<NBSP>` (or `<NEL>`)
    /// was read as 5, where a proxy in front sees no valid length.
    #[test]
    fn content_length_allows_only_spaces_and_tabs_around_digits() {
        let len = |value: &[u8]| {
            let mut head = b"POST /publish/a HTTP/1.1\r\nContent-Length:".to_vec();
            head.extend_from_slice(value);
            head.extend_from_slice(b"\r\n\r\n");
            match parse_request(&head, &HandshakeLimits::default()).unwrap() {
                ParsedRequest::Http(r) => r.content_length(),
                other => panic!("{other:?}"),
            }
        };
        assert_eq!(len(b" 5"), Ok(Some(5)));
        assert_eq!(len(b"\t5 \t"), Ok(Some(5)));
        assert_eq!(len("5\u{a0}".as_bytes()), Err(()));
        assert_eq!(len("5\u{85}".as_bytes()), Err(()));
        assert_eq!(len("\u{2003}5".as_bytes()), Err(()));
    }

    #[test]
    fn heads_with_bare_lf_line_endings_complete() {
        for head in [
            "GET /healthz HTTP/1.1\nHost: x\n\n",
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\n",
            "GET /healthz HTTP/1.1\nHost: x\n\r\n",
            "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        ] {
            match parse(head) {
                Ok(ParsedRequest::Http(r)) => {
                    assert_eq!(r.path, "/healthz", "{head:?}");
                    assert_eq!(r.head_len, head.len(), "{head:?}");
                }
                other => panic!("{head:?}: {other:?}"),
            }
            // Byte by byte: partial until the last byte, then complete.
            let answer = first_decision(head.as_bytes(), &HandshakeLimits::default(), 1);
            assert!(
                matches!(answer, Ok(ParsedRequest::Http(_))),
                "{head:?}: {answer:?}"
            );
        }
        let upgrade = GOOD.replace("\r\n", "\n");
        match parse(&upgrade) {
            Ok(ParsedRequest::Upgrade(u)) => assert_eq!(u.head_len, upgrade.len()),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn head_end_finds_the_first_empty_line() {
        assert_eq!(head_end(b"a\r\n\r\nrest\r\n\r\n"), Some(5));
        assert_eq!(head_end(b"a\n\nb"), Some(3));
        assert_eq!(head_end(b"a\r\nb\r\n"), None);
        assert_eq!(head_end(b"a\r\n\r"), None);
        assert_eq!(head_end(b"\n"), None);
        assert_eq!(head_end(b""), None);
    }
}
