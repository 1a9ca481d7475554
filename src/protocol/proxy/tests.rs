use super::*;

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

fn complete(buf: &[u8]) -> ProxyHeader {
    match parse_proxy_header(buf) {
        Ok(ProxyParse::Complete(h)) => h,
        other => panic!("{:?}: {other:?}", String::from_utf8_lossy(buf)),
    }
}

/// Every proper prefix is `Partial` or the same error as the whole, and
/// the whole gives `whole`: the answer does not depend on the reads.
fn consistent(buf: &[u8]) -> Result<ProxyParse, ProxyError> {
    let whole = parse_proxy_header(buf);
    for n in 0..buf.len() {
        match parse_proxy_header(&buf[..n]) {
            Ok(ProxyParse::Partial) => {}
            Ok(ProxyParse::Complete(h)) => {
                // Only possible when the header ends before `buf` does.
                assert!(h.len <= n, "complete at {n} before its end");
                assert_eq!(whole, Ok(ProxyParse::Complete(h)));
            }
            Err(e) => assert_eq!(whole, Err(e), "prefix of {n} bytes"),
        }
    }
    whole
}

#[test]
fn v1_tcp4_tcp6_and_unknown() {
    let h = complete(b"PROXY TCP4 192.0.2.1 198.51.100.2 56324 443\r\nGET / HTTP/1.1\r\n");
    assert_eq!(h.len, 45);
    assert_eq!(h.version, 1);
    assert_eq!(h.source, Some(sa("192.0.2.1:56324")));
    let h = complete(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 65535\r\n");
    assert_eq!(h.source, Some(sa("[2001:db8::1]:1")));
    let h = complete(b"PROXY UNKNOWN\r\n");
    assert_eq!((h.len, h.source), (15, None));
    let h = complete(b"PROXY UNKNOWN ffff:f...f:ffff 1.2.3.4 65535 65535\r\n");
    assert_eq!(h.source, None);
    // Round trip with the encoder.
    let h = complete(&encode_v1(sa("10.1.2.3:4000"), sa("10.0.0.1:9001")));
    assert_eq!(h.source, Some(sa("10.1.2.3:4000")));
}

#[test]
fn v1_longest_header_is_107_bytes() {
    let longest = format!(
        "PROXY UNKNOWN {a} {a} 65535 65535\r\n",
        a = "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff"
    );
    assert_eq!(longest.len(), V1_MAX_BYTES);
    assert_eq!(complete(longest.as_bytes()).len, 107);
    let tcp6 = longest.replace("UNKNOWN", "TCP6");
    assert_eq!(
        complete(tcp6.as_bytes()).source,
        Some(sa("[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535"))
    );
    // 107 bytes without a line end: refused, not waited for.
    let long = format!("PROXY UNKNOWN {}", "x".repeat(93));
    assert_eq!(long.len(), 107);
    assert_eq!(parse_proxy_header(long.as_bytes()), Err(ProxyError::BadV1));
    assert_eq!(
        parse_proxy_header(&long.as_bytes()[..106]),
        Ok(ProxyParse::Partial)
    );
    // CR as the 107th byte: its LF would be the 108th.
    let cr_last = format!("{}\r\n", &long[..106]);
    assert_eq!(
        parse_proxy_header(cr_last.as_bytes()),
        Err(ProxyError::BadV1)
    );
}

#[test]
fn v1_grammar_errors() {
    for bad in [
        "PROXY TCP4 192.0.2.1 198.51.100.2 56324\r\n",
        "PROXY TCP4 192.0.2.1 198.51.100.2 56324 443 9\r\n",
        "PROXY TCP4 192.0.2.1  198.51.100.2 56324 443\r\n",
        "PROXY TCP4 2001:db8::1 198.51.100.2 1 2\r\n",
        "PROXY TCP6 192.0.2.1 198.51.100.2 1 2\r\n",
        "PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",
        "PROXY TCP4 192.0.2.1 198.51.100.2 0443 443\r\n",
        "PROXY TCP4 192.0.2.1 198.51.100.2 -1 443\r\n",
        "PROXY TCP4 192.0.2.1 198.51.100.2 +1 443\r\n",
        "PROXY tcp4 192.0.2.1 198.51.100.2 1 443\r\n",
        "PROXY UDP4 192.0.2.1 198.51.100.2 1 443\r\n",
        "PROXY TCP4 192.0.2.1 198.51.100.2 1 443\n",
        "PROXY TCP4 192.0.2.1 198.51.100.2 1 443\rX",
        "PROXY \r\n",
        "PROXY UNKNOWNX\r\n",
    ] {
        assert_eq!(
            consistent(bad.as_bytes()),
            Err(ProxyError::BadV1),
            "{bad:?}"
        );
    }
    // Found by the proxy_header fuzz target: a bare LF before a CR that
    // ends the input was refused on a prefix but "need more" as a whole.
    assert_eq!(
        consistent(b"PROXY \0m\nTPROXPROY\xe0\xf2\xf5\xc7w_\r"),
        Err(ProxyError::BadV1)
    );
    // Non-ASCII bytes in the line.
    assert_eq!(
        consistent(b"PROXY TCP4 1.2.3.4 \xff 1 2\r\n"),
        Err(ProxyError::BadV1)
    );
}

#[test]
fn anything_else_is_not_proxy() {
    for garbage in [
        &b"GET / HTTP/1.1\r\n\r\n"[..],
        b"PROXI TCP4",
        b"proxy TCP4 1.2.3.4 1.2.3.4 1 2\r\n",
        b"\x16\x03\x01\x02\x00",
        b"\r\n\r\n\0\r\nQUIX\n",
        b"\0",
    ] {
        assert_eq!(
            consistent(garbage),
            Err(ProxyError::NotProxy),
            "{garbage:?}"
        );
    }
    assert_eq!(parse_proxy_header(b""), Ok(ProxyParse::Partial));
    assert_eq!(parse_proxy_header(b"PRO"), Ok(ProxyParse::Partial));
    assert_eq!(parse_proxy_header(b"\r\n\r\n"), Ok(ProxyParse::Partial));
}

#[test]
fn v2_inet_inet6_local_and_unspec() {
    let hdr = encode_v2(sa("203.0.113.9:50000"), sa("10.0.0.1:443"));
    let mut buf = hdr.clone();
    buf.extend_from_slice(b"GET /");
    let h = complete(&buf);
    assert_eq!((h.len, h.version), (28, 2));
    assert_eq!(h.source, Some(sa("203.0.113.9:50000")));
    assert_eq!(consistent(&hdr), Ok(ProxyParse::Complete(h)));

    let h = complete(&encode_v2(sa("[2001:db8::7]:1234"), sa("[::1]:443")));
    assert_eq!((h.len, h.source), (52, Some(sa("[2001:db8::7]:1234"))));

    // LOCAL (a health check of the proxy itself): no address, whatever
    // the family says.
    let mut local = V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    assert_eq!(complete(&local).source, None);
    let mut local4 = V2_SIGNATURE.to_vec();
    local4.extend_from_slice(&[0x20, 0x11, 0, 0]);
    assert_eq!(complete(&local4).len, 16);

    // PROXY with AF_UNSPEC and AF_UNIX: no address we can count.
    let mut unspec = V2_SIGNATURE.to_vec();
    unspec.extend_from_slice(&[0x21, 0x00, 0, 3, 1, 2, 3]);
    assert_eq!(complete(&unspec).source, None);
    assert_eq!(complete(&unspec).len, 19);
    let mut unix = V2_SIGNATURE.to_vec();
    unix.extend_from_slice(&[0x21, 0x31, 0, 216]);
    unix.extend_from_slice(&[b'/'; 216]);
    assert_eq!(complete(&unix).source, None);
}

#[test]
fn v2_tlvs_are_skipped_within_the_cap() {
    let mut buf = encode_v2(sa("192.0.2.1:1"), sa("192.0.2.2:2"));
    // Announce 12 address bytes + a TLV of 100 bytes.
    buf[14..16].copy_from_slice(&112u16.to_be_bytes());
    buf.extend_from_slice(&[0x04, 0, 97]);
    buf.extend_from_slice(&[7u8; 97]);
    assert_eq!(
        consistent(&buf).map(|p| match p {
            ProxyParse::Complete(h) => h.len,
            ProxyParse::Partial => 0,
        }),
        Ok(128)
    );
    // At the cap: fine; one byte over: refused from the length alone.
    let mut max = V2_SIGNATURE.to_vec();
    max.extend_from_slice(&[0x21, 0x11]);
    max.extend_from_slice(&(V2_MAX_PAYLOAD as u16).to_be_bytes());
    max.extend_from_slice(&vec![1u8; V2_MAX_PAYLOAD]);
    assert_eq!(complete(&max).len, MAX_HEADER_BYTES);
    let mut over = V2_SIGNATURE.to_vec();
    over.extend_from_slice(&[0x21, 0x11]);
    over.extend_from_slice(&(V2_MAX_PAYLOAD as u16 + 1).to_be_bytes());
    assert_eq!(consistent(&over), Err(ProxyError::TooLong));
}

#[test]
fn v2_errors() {
    let base = encode_v2(sa("192.0.2.1:1"), sa("192.0.2.2:2"));
    let with = |i: usize, v: u8| {
        let mut b = base.clone();
        b[i] = v;
        b
    };
    // Version 1 in the binary form, version 3, command 2.
    for b in [with(12, 0x11), with(12, 0x31), with(12, 0x22)] {
        assert_eq!(consistent(&b), Err(ProxyError::BadV2));
    }
    // Family 4, transport 3, datagram, unspecified transport for INET.
    for b in [
        with(13, 0x41),
        with(13, 0x13),
        with(13, 0x12),
        with(13, 0x10),
    ] {
        assert_eq!(consistent(&b), Err(ProxyError::BadV2), "{:x}", b[13]);
    }
    // INET with fewer than 12 address bytes, INET6 with fewer than 36.
    let mut short = base.clone();
    short[14..16].copy_from_slice(&11u16.to_be_bytes());
    assert_eq!(consistent(&short[..27]), Err(ProxyError::BadV2));
    let mut short6 = base.clone();
    short6[13] = 0x21;
    assert_eq!(consistent(&short6), Err(ProxyError::BadV2));
}

#[test]
fn truncated_headers_wait() {
    let v2 = encode_v2(sa("192.0.2.1:1"), sa("192.0.2.2:2"));
    for n in 0..v2.len() {
        assert_eq!(parse_proxy_header(&v2[..n]), Ok(ProxyParse::Partial), "{n}");
    }
    let v1 = encode_v1(sa("192.0.2.1:1"), sa("192.0.2.2:2"));
    for n in 0..v1.len() {
        assert_eq!(parse_proxy_header(&v1[..n]), Ok(ProxyParse::Partial), "{n}");
    }
}

#[test]
fn labels_are_distinct() {
    let all = [
        ProxyError::NotProxy,
        ProxyError::BadV1,
        ProxyError::BadV2,
        ProxyError::TooLong,
    ];
    let mut labels: Vec<_> = all.iter().map(|e| e.label()).collect();
    labels.dedup();
    assert_eq!(labels.len(), all.len());
}
