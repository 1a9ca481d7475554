//! HTTP answers: why a request is refused (each reason one status, one
//! body, one metrics label), the reason phrases, and the response writer
//! every plain answer goes through.

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
