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
    let r = match parse("GET /healthz?v=1 HTTP/1.1\r\nHost: x\r\nX-Thing: Yes\r\n\r\n").unwrap() {
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

#[test]
fn deflate_is_negotiated_across_extension_header_lines() {
    use crate::protocol::deflate::DeflateSettings;
    let req = GOOD.replace(
        "Sec-WebSocket-Version: 13\r\n",
        "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Extensions: x-foo; a=\"b, c\", permessage-deflate; server_max_window_bits=8\r\nSec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n",
    );
    let u = upgrade(&req);
    let n = u.negotiate_deflate(&DeflateSettings::default()).unwrap();
    let resp = String::from_utf8(u.accept_response_with(None, Some(&n))).unwrap();
    assert!(resp.contains(
        "Sec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover; client_no_context_takeover\r\n"
    ));
    assert!(resp.ends_with("\r\n\r\n"));
    // No offer: no header.
    let u = upgrade(GOOD);
    assert_eq!(u.negotiate_deflate(&DeflateSettings::default()), None);
    let resp = String::from_utf8(u.accept_response_with(None, None)).unwrap();
    assert!(!resp.contains("Sec-WebSocket-Extensions"));
}
