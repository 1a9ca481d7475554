//! Routing and the plain-HTTP side of the listener: which path is which
//! endpoint, and the pure parts of `/healthz`, `/metrics` and
//! `POST /publish/{room}` (authorization, body rules, responses).

use super::directory::valid_room_name;
use crate::protocol::handshake::has_token;
use crate::protocol::response::http_response;
use crate::protocol::{HttpRequest, MessageKind, RejectReason};

/// How a room member takes part.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemberRole {
    /// Publishes and receives (default).
    Both,
    /// `?role=sub`: receives only; a data message from it closes it (1008).
    Subscriber,
    /// `?role=pub`: publishes without receiving.
    Publisher,
}

impl MemberRole {
    pub fn receives(self) -> bool {
        self != MemberRole::Publisher
    }
    pub fn publishes(self) -> bool {
        self != MemberRole::Subscriber
    }
}

/// A WebSocket endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WsRoute {
    Echo,
    /// The pub/sub protocol (`/connection/websocket`).
    PubSub,
    Room {
        name: String,
        role: MemberRole,
    },
}

/// Maps an upgrade path (and query) to an endpoint.
pub fn ws_route(
    path: &str,
    query: Option<&str>,
    max_room_name_bytes: usize,
) -> Result<WsRoute, RejectReason> {
    if path == "/echo" {
        return Ok(WsRoute::Echo);
    }
    if path == PUBSUB_PATH {
        return Ok(WsRoute::PubSub);
    }
    let Some(name) = path.strip_prefix("/rooms/") else {
        return Err(RejectReason::NotFound);
    };
    if !valid_room_name(name, max_room_name_bytes) {
        return Err(RejectReason::BadRoomName);
    }
    let mut role = MemberRole::Both;
    for pair in query.unwrap_or("").split('&') {
        if let Some(v) = pair.strip_prefix("role=") {
            role = match v {
                "sub" => MemberRole::Subscriber,
                "pub" => MemberRole::Publisher,
                "" | "both" => MemberRole::Both,
                _ => return Err(RejectReason::BadRole),
            };
        }
    }
    Ok(WsRoute::Room {
        name: name.to_string(),
        role,
    })
}

/// The room-name rule, stated with the configured limit.
pub fn room_name_rule(max: usize) -> String {
    format!("room name must be 1-{max} bytes of [A-Za-z0-9._~-], with an optional namespace prefix (`chat:`)\n")
}

/// Whether a path is a WebSocket endpoint (for 426 on plain requests).
pub fn is_ws_path(path: &str) -> bool {
    path == "/echo" || path == PUBSUB_PATH || path.starts_with("/rooms/")
}

/// The pub/sub protocol endpoint (the SDKs' default path).
pub const PUBSUB_PATH: &str = "/connection/websocket";

/// Whether an `Origin` may upgrade: empty list = any; requests without an
/// `Origin` header (non-browser clients) are allowed.
pub fn origin_allowed(origin: Option<&str>, allowed: &[String]) -> bool {
    match origin {
        None => true,
        Some(_) if allowed.is_empty() => true,
        Some(o) => allowed
            .iter()
            .any(|a| a.eq_ignore_ascii_case(o.trim_end_matches('/'))),
    }
}

/// A plain-text response.
pub fn text(status: u16, body: &str, keep_alive: bool) -> Vec<u8> {
    http_response(
        status,
        "",
        "text/plain; charset=utf-8",
        body.as_bytes(),
        keep_alive,
    )
}

/// `503` for a publish whose room's workers are backed up: the client
/// retries shortly instead of the relay queueing without bound.
pub fn busy() -> Vec<u8> {
    http_response(
        503,
        "Retry-After: 1\r\n",
        "text/plain; charset=utf-8",
        b"room is backed up (cross-worker queue full); retry shortly\n",
        false,
    )
}

/// `POST /publish` when the broker refused the message (`broker =
/// "redis"`: Redis down or the outbox full): published nowhere.
pub fn broker_unavailable(e: &crate::broker::BrokerError) -> Vec<u8> {
    http_response(
        503,
        "Retry-After: 1\r\n",
        "text/plain; charset=utf-8",
        format!("{e}: not published; retry shortly\n").as_bytes(),
        false,
    )
}

/// Why a publish request is refused before its body is read.
#[derive(Debug, PartialEq, Eq)]
pub struct PublishReject {
    pub status: u16,
    pub body: String,
    pub extra: &'static str,
}

/// Checks a `POST /publish/{room}` request head. Returns the room name and
/// body length to read.
pub fn check_publish<'a>(
    req: &'a HttpRequest,
    token: &str,
    max_body: usize,
    max_room_name_bytes: usize,
) -> Result<(&'a str, usize), PublishReject> {
    let reject = |status, body: &str| PublishReject {
        status,
        body: body.to_string(),
        extra: "",
    };
    let room = req.path.strip_prefix("/publish/").unwrap_or("");
    if token.is_empty() {
        return Err(reject(404, "not found\n"));
    }
    if req.method != "POST" {
        return Err(PublishReject {
            status: 405,
            body: "publish requires POST\n".into(),
            extra: "Allow: POST\r\n",
        });
    }
    let authorized = req
        .header("authorization")
        .and_then(|v| v.strip_prefix("Bearer "))
        .is_some_and(|t| constant_time_eq(t.trim().as_bytes(), token.as_bytes()));
    if !authorized {
        return Err(PublishReject {
            status: 401,
            body: "missing or wrong bearer token\n".into(),
            extra: "WWW-Authenticate: Bearer\r\n",
        });
    }
    if !valid_room_name(room, max_room_name_bytes) {
        return Err(reject(400, &room_name_rule(max_room_name_bytes)));
    }
    if req.header("transfer-encoding").is_some() {
        return Err(reject(
            411,
            "Content-Length required (chunked bodies are not accepted)\n",
        ));
    }
    let len = match req.content_length() {
        Ok(Some(n)) => n,
        Ok(None) => return Err(reject(411, "Content-Length required\n")),
        Err(()) => return Err(reject(400, "invalid Content-Length\n")),
    };
    if len > max_body {
        return Err(reject(413, "body larger than max_message_bytes\n"));
    }
    Ok((room, len))
}

/// Text for `text/*` and JSON content types, binary otherwise.
pub fn publish_kind(req: &HttpRequest) -> MessageKind {
    let ct = req
        .header("content-type")
        .unwrap_or("")
        .to_ascii_lowercase();
    let mime = ct.split(';').next().unwrap_or("").trim();
    if mime.starts_with("text/") || mime == "application/json" || mime.ends_with("+json") {
        MessageKind::Text
    } else {
        MessageKind::Binary
    }
}

/// The 202 answer to a publish.
pub fn publish_accepted(room: &str, local: usize, remote: usize, keep_alive: bool) -> Vec<u8> {
    let body =
        format!("{{\"room\":\"{room}\",\"local_workers\":{local},\"remote_workers\":{remote}}}\n");
    http_response(202, "", "application/json", body.as_bytes(), keep_alive)
}

/// Whether the client asked to keep the connection open.
pub fn wants_keep_alive(req: &HttpRequest) -> bool {
    req.keep_alive()
        && !req
            .header("connection")
            .is_some_and(|c| has_token(c, "upgrade"))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{parse_request, HandshakeLimits, ParsedRequest};

    fn req(s: &str) -> HttpRequest {
        match parse_request(s.as_bytes(), &HandshakeLimits::default()).unwrap() {
            ParsedRequest::Http(r) => r,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn routes() {
        assert_eq!(ws_route("/echo", None, 128), Ok(WsRoute::Echo));
        assert_eq!(
            ws_route("/rooms/a.b", Some("role=sub"), 128),
            Ok(WsRoute::Room {
                name: "a.b".into(),
                role: MemberRole::Subscriber
            })
        );
        assert_eq!(
            ws_route("/rooms/x", Some("foo=1&role=pub"), 128),
            Ok(WsRoute::Room {
                name: "x".into(),
                role: MemberRole::Publisher
            })
        );
        assert_eq!(
            ws_route("/rooms/x", Some("role=admin"), 128),
            Err(RejectReason::BadRole)
        );
        assert_eq!(
            ws_route("/rooms/", None, 128),
            Err(RejectReason::BadRoomName)
        );
        assert_eq!(
            ws_route("/rooms/a/b", None, 128),
            Err(RejectReason::BadRoomName)
        );
        assert_eq!(
            ws_route("/rooms/abcd", None, 3),
            Err(RejectReason::BadRoomName)
        );
        assert_eq!(ws_route("/other", None, 128), Err(RejectReason::NotFound));
        assert_eq!(ws_route("/echo/x", None, 128), Err(RejectReason::NotFound));
    }

    #[test]
    fn origins() {
        let allowed = vec!["https://app.example".to_string()];
        assert!(origin_allowed(None, &allowed));
        assert!(origin_allowed(Some("https://app.example"), &allowed));
        assert!(!origin_allowed(Some("https://evil.example"), &allowed));
        assert!(origin_allowed(Some("https://evil.example"), &[]));
    }

    #[test]
    fn publish_rules() {
        let ok = req("POST /publish/r1 HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nContent-Length: 5\r\nContent-Type: application/json\r\n\r\n");
        assert_eq!(check_publish(&ok, "s3cret", 100, 128), Ok(("r1", 5)));
        assert_eq!(publish_kind(&ok), MessageKind::Text);
        assert_eq!(check_publish(&ok, "", 100, 128).unwrap_err().status, 404);
        assert_eq!(
            check_publish(&ok, "other", 100, 128).unwrap_err().status,
            401
        );
        assert_eq!(
            check_publish(&ok, "s3cret", 4, 128).unwrap_err().status,
            413
        );
        let no_len = req("POST /publish/r1 HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n");
        assert_eq!(
            check_publish(&no_len, "s3cret", 100, 128)
                .unwrap_err()
                .status,
            411
        );
        let bad_room = req("POST /publish/a%20b HTTP/1.1\r\nAuthorization: Bearer s3cret\r\nContent-Length: 1\r\n\r\n");
        assert_eq!(
            check_publish(&bad_room, "s3cret", 100, 128)
                .unwrap_err()
                .status,
            400
        );
        let get = req("GET /publish/r1 HTTP/1.1\r\nAuthorization: Bearer s3cret\r\n\r\n");
        assert_eq!(
            check_publish(&get, "s3cret", 100, 128).unwrap_err().status,
            405
        );
        let bin =
            req("POST /publish/r1 HTTP/1.1\r\nContent-Type: application/octet-stream\r\n\r\n");
        assert_eq!(publish_kind(&bin), MessageKind::Binary);
        let txt =
            req("POST /publish/r1 HTTP/1.1\r\nContent-Type: Text/Plain; charset=utf-8\r\n\r\n");
        assert_eq!(publish_kind(&txt), MessageKind::Text);
    }
}
