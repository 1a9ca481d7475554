//! The plain-HTTP path of the listener: `parse_request` on arbitrary bytes
//! with small limits, then what the worker does with the answer
//! (`check_publish`, `publish_kind`, `content_length`, `keep_alive`, and
//! for upgrades `ws_route` and `origin_allowed`), over a keep-alive
//! connection that may carry several requests (publish bodies included).
//!
//! Input: byte 0 picks `max_head_bytes` (16..1036), byte 1 `max_headers`
//! (0..15) and the read size (1..16), byte 2 the publish body limit
//! (0..255); the rest is what the client sent. Checks, besides "no panic":
//! - `check_publish` `Ok((room, len))` only for `POST /publish/{room}` with
//!   the right bearer token, a valid room name, no `Transfer-Encoding`, and
//!   `Content-Length` = `len` ≤ the body limit; refusals only with 400, 401,
//!   404, 405, 411 or 413, each for its reason, and they build a response;
//!   an empty token is always 404, a wrong one never `Ok`;
//! - `content_length` agrees with the `Content-Length` headers, `keep_alive`
//!   with the version when there is no `Connection` header, `publish_kind`
//!   ignores case;
//! - `ws_route` gives `NotFound` exactly off the WebSocket paths, rooms only
//!   with valid names, `BadRole` only for an unknown `role=`;
//!   `origin_allowed` lets through missing origins, any origin with an
//!   empty list, and an origin that is on the list;
//! - the sequence of answers on the connection (the worker's loop: parse,
//!   answer, drop the head and body, go on while keep-alive) is the same
//!   whether the bytes arrive at once or in reads of 1-16 bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use wsrelay::protocol::handshake::http_response;
use wsrelay::protocol::{
    parse_request, HandshakeLimits, HttpRequest, MessageKind, ParsedRequest, RejectReason,
    UpgradeRequest,
};
use wsrelay::server::http::{
    check_publish, is_ws_path, origin_allowed, publish_kind, wants_keep_alive, ws_route,
    MemberRole, WsRoute,
};
use wsrelay::server::rooms::valid_room_name;

const TOKEN: &str = "token";
const MAX_ROOM: usize = 128;

/// What the worker does with one request.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// `parse_request` refused the head; the connection closes.
    Rejected(RejectReason),
    /// An upgrade: routed (or refused) and the connection leaves HTTP.
    Upgrade(Result<WsRoute, RejectReason>),
    /// A publish refused before its body.
    PublishRefused(u16),
    /// A publish with its whole body; `false` when a text body is not UTF-8.
    Published {
        room: String,
        kind: MessageKind,
        body: Vec<u8>,
        accepted: bool,
    },
    /// Any other plain request.
    Plain { method: String, path: String },
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 3 {
        return;
    }
    let limits = HandshakeLimits {
        max_head_bytes: 16 + data[0] as usize * 4,
        max_headers: (data[1] & 0x0f) as usize,
    };
    let step = 1 + (data[1] >> 4) as usize;
    let max_body = data[2] as usize;
    let input = &data[3..];

    // All at once.
    let mut whole_buf = input.to_vec();
    let mut whole = Vec::new();
    let whole_stopped = serve(&mut whole_buf, &limits, max_body, &mut whole);

    // In reads of `step` bytes, answering after each read.
    let mut buf = Vec::new();
    let mut answers = Vec::new();
    let mut stopped = false;
    for chunk in input.chunks(step) {
        buf.extend_from_slice(chunk);
        if serve(&mut buf, &limits, max_body, &mut answers) {
            stopped = true;
            break;
        }
    }
    assert_eq!(answers, whole, "answers differ with reads of {step}");
    assert_eq!(stopped, whole_stopped);
    if !stopped {
        assert_eq!(buf, whole_buf, "left-over bytes differ");
    }
});

/// The worker's HTTP loop over the bytes buffered so far: answers every
/// complete request, drops what it used. Returns `true` once the
/// connection stops being plain HTTP (closed or upgraded).
fn serve(
    buf: &mut Vec<u8>,
    limits: &HandshakeLimits,
    max_body: usize,
    out: &mut Vec<Answer>,
) -> bool {
    loop {
        if buf.is_empty() {
            return false;
        }
        match parse_request(buf, limits) {
            Ok(ParsedRequest::Partial) => {
                assert!(buf.len() < limits.max_head_bytes);
                return false;
            }
            Err(reason) => {
                let resp = reason.response();
                let status = format!("HTTP/1.1 {} ", reason.status());
                assert!(resp.starts_with(status.as_bytes()));
                out.push(Answer::Rejected(reason));
                return true;
            }
            Ok(ParsedRequest::Upgrade(u)) => {
                assert!(u.head_len <= buf.len() && u.head_len <= limits.max_head_bytes);
                out.push(Answer::Upgrade(check_upgrade(&u)));
                return true;
            }
            Ok(ParsedRequest::Http(req)) => {
                assert!(req.head_len <= buf.len() && req.head_len <= limits.max_head_bytes);
                check_request(&req, max_body);
                let Some((answer, used, keep_alive)) = answer_http(&req, buf, max_body) else {
                    return false; // the publish body is not all here yet
                };
                assert!(used <= buf.len());
                out.push(answer);
                if !keep_alive {
                    return true;
                }
                buf.drain(..used);
            }
        }
    }
}

/// Mirrors `Worker::serve_http`: the answer, the bytes used (head and
/// body), and whether the connection stays open; `None` while a publish
/// body is incomplete.
fn answer_http(req: &HttpRequest, buf: &[u8], max_body: usize) -> Option<(Answer, usize, bool)> {
    let keep_alive = wants_keep_alive(req);
    if req.path.starts_with("/publish/") {
        return match check_publish(req, TOKEN, max_body, MAX_ROOM) {
            Err(r) => Some((Answer::PublishRefused(r.status), req.head_len, false)),
            Ok((room, len)) => {
                let end = req.head_len + len;
                if buf.len() < end {
                    return None;
                }
                let body = buf[req.head_len..end].to_vec();
                let kind = publish_kind(req);
                let accepted = kind == MessageKind::Binary || std::str::from_utf8(&body).is_ok();
                let answer = Answer::Published {
                    room: room.to_string(),
                    kind,
                    body,
                    accepted,
                };
                Some((answer, end, keep_alive))
            }
        };
    }
    // A body we do not read ends the connection after the answer.
    let has_body = req.content_length().map_or(true, |n| n.unwrap_or(0) > 0)
        || req.header("transfer-encoding").is_some();
    let answer = Answer::Plain {
        method: req.method.clone(),
        path: req.path.clone(),
    };
    Some((answer, req.head_len, keep_alive && !has_body))
}

/// Invariants of one plain request and of the publish checks on it.
fn check_request(req: &HttpRequest, max_body: usize) {
    assert!(req.minor_version <= 1);
    for (name, _) in &req.headers {
        assert_eq!(
            *name,
            name.to_ascii_lowercase(),
            "header names are lower-cased"
        );
    }

    // Content-Length: digits only, between optional spaces and tabs (the
    // field's OWS); several headers must agree.
    let declared: Vec<Option<usize>> = req
        .headers
        .iter()
        .filter(|(n, _)| n == "content-length")
        .map(|(_, v)| {
            let v = v.trim_matches([' ', '\t']);
            if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
                v.parse().ok()
            } else {
                None
            }
        })
        .collect();
    let expected = match declared.first() {
        None => Ok(None),
        Some(&Some(n)) if declared.iter().all(|d| *d == Some(n)) => Ok(Some(n)),
        Some(_) => Err(()),
    };
    assert_eq!(req.content_length(), expected, "{declared:?}");

    // Keep-alive.
    let keep_alive = req.keep_alive();
    if req.header("connection").is_none() {
        assert_eq!(keep_alive, req.minor_version >= 1);
    }
    if wants_keep_alive(req) {
        assert!(keep_alive);
    }

    // Publish checks.
    let checked = check_publish(req, TOKEN, max_body, MAX_ROOM);
    match &checked {
        Ok((room, len)) => {
            assert_eq!(req.method, "POST");
            assert!(valid_room_name(room, MAX_ROOM), "room {room:?}");
            assert_eq!(req.path.strip_prefix("/publish/"), Some(*room));
            assert!(*len <= max_body, "len {len} > {max_body}");
            assert_eq!(req.content_length(), Ok(Some(*len)));
            assert!(req.header("transfer-encoding").is_none());
            let auth = req
                .header("authorization")
                .expect("authorized without a header");
            let t = auth.strip_prefix("Bearer ").expect("not a bearer token");
            assert_eq!(t.trim(), TOKEN);
        }
        Err(r) => {
            assert!(
                matches!(r.status, 400 | 401 | 404 | 405 | 411 | 413),
                "status {}",
                r.status
            );
            assert!(r.body.ends_with('\n'));
            assert!(r.extra.is_empty() || r.extra.ends_with("\r\n"));
            match r.status {
                405 => {
                    assert_ne!(req.method, "POST");
                    assert_eq!(r.extra, "Allow: POST\r\n");
                }
                413 => assert!(matches!(req.content_length(), Ok(Some(n)) if n > max_body)),
                411 => assert!(
                    req.header("transfer-encoding").is_some() || req.content_length() == Ok(None)
                ),
                _ => {}
            }
            let resp = http_response(r.status, r.extra, "text/plain", r.body.as_bytes(), false);
            let status = format!("HTTP/1.1 {} ", r.status);
            assert!(resp.starts_with(status.as_bytes()) && resp.ends_with(r.body.as_bytes()));
        }
    }
    // A larger limit never refuses what a smaller one accepted.
    if let Ok(ok) = &checked {
        assert_eq!(
            check_publish(req, TOKEN, max_body + 1, MAX_ROOM).as_ref(),
            Ok(ok)
        );
    }
    assert_eq!(
        check_publish(req, "", max_body, MAX_ROOM)
            .unwrap_err()
            .status,
        404
    );
    // Another token: accepted only when the request carries that one.
    for other in ["tokem", "token "] {
        if check_publish(req, other, max_body, MAX_ROOM).is_ok() {
            let bearer = req
                .header("authorization")
                .and_then(|a| a.strip_prefix("Bearer "));
            assert_eq!(bearer.map(str::trim), Some(other));
        }
    }

    // Content type: case does not matter; no type is binary.
    let kind = publish_kind(req);
    let mut upper = req.clone();
    for (n, v) in upper.headers.iter_mut() {
        if n == "content-type" {
            *v = v.to_ascii_uppercase();
        }
    }
    assert_eq!(publish_kind(&upper), kind);
    if req.header("content-type").is_none() {
        assert_eq!(kind, MessageKind::Binary);
    }

    // The same path as an upgrade target.
    let _ = check_route(&req.path, req.query.as_deref());
    check_origin(req.header("origin").map(str::trim));
}

/// What the worker does with an upgrade: origin check, then route.
fn check_upgrade(u: &UpgradeRequest) -> Result<WsRoute, RejectReason> {
    assert_eq!(u.accept.len(), 28);
    check_origin(u.origin.as_deref());
    check_route(&u.path, u.query.as_deref())
}

fn check_route(path: &str, query: Option<&str>) -> Result<WsRoute, RejectReason> {
    let route = ws_route(path, query, MAX_ROOM);
    match &route {
        Ok(WsRoute::Echo) => assert_eq!(path, "/echo"),
        Ok(WsRoute::Room { name, role }) => {
            assert!(valid_room_name(name, MAX_ROOM), "room {name:?}");
            assert_eq!(path.strip_prefix("/rooms/"), Some(name.as_str()));
            let roles: Vec<&str> = query
                .unwrap_or("")
                .split('&')
                .filter_map(|p| p.strip_prefix("role="))
                .collect();
            let want = match roles.last().copied() {
                Some("sub") => MemberRole::Subscriber,
                Some("pub") => MemberRole::Publisher,
                _ => MemberRole::Both,
            };
            assert_eq!(*role, want);
            assert_eq!(role.receives(), *role != MemberRole::Publisher);
            assert_eq!(role.publishes(), *role != MemberRole::Subscriber);
        }
        Err(RejectReason::NotFound) => assert!(!is_ws_path(path)),
        Err(RejectReason::BadRoomName) => {
            assert!(!valid_room_name(
                path.strip_prefix("/rooms/").unwrap(),
                MAX_ROOM
            ))
        }
        Err(RejectReason::BadRole) => assert!(query
            .unwrap_or("")
            .split('&')
            .filter_map(|p| p.strip_prefix("role="))
            .any(|v| !matches!(v, "sub" | "pub" | "" | "both"))),
        Err(other) => panic!("ws_route refused with {other:?}"),
    }
    if route != Err(RejectReason::NotFound) {
        assert!(is_ws_path(path));
    }
    // A longer limit accepts every name a shorter one did.
    if route.is_ok() {
        assert_eq!(ws_route(path, query, usize::MAX), route);
    }
    route
}

fn check_origin(origin: Option<&str>) {
    let listed = vec!["https://app.example".to_string(), "http://a".to_string()];
    assert!(origin_allowed(None, &listed));
    assert!(origin_allowed(origin, &[]));
    let Some(o) = origin else { return };
    let expected = listed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(o.trim_end_matches('/')));
    assert_eq!(origin_allowed(Some(o), &listed), expected);
    let own = vec![o.trim_end_matches('/').to_ascii_uppercase()];
    assert!(origin_allowed(Some(o), &own));
}
