//! Trusted proxies over real sockets: `X-Forwarded-For` / `Forwarded` from
//! trusted and untrusted peers, and the PROXY protocol (v1 and v2: valid,
//! truncated, garbage, slow), with `max_connections_per_ip` counting the
//! client the proxy names. Every test client connects from 127.0.0.1;
//! whether that is a trusted proxy is what each relay's `trusted_proxies`
//! says.

use crate::support::*;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use wsrelay::config::Config;
use wsrelay::metrics::{ForwardedSource, ProxyRefusal};
use wsrelay::protocol::proxy::{encode_v1, encode_v2, V2_SIGNATURE};

fn proxied(trusted: &[&str], proxy_protocol: bool) -> Config {
    Config {
        trusted_proxies: trusted.iter().map(|s| s.parse().unwrap()).collect(),
        proxy_protocol,
        max_connections_per_ip: 1,
        ..test_config()
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

/// Sends `prefix` then an upgrade request for `/echo` with `extra` header
/// lines; returns the answer's status and the stream (open after 101).
fn upgrade_via(addr: SocketAddr, prefix: &[u8], extra: &str) -> (u16, TcpStream) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(&upgrade_request("/echo", extra));
    s.write_all(&bytes).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    (status_of(&String::from_utf8_lossy(&head)), s)
}

fn refusals(h: &wsrelay::server::ServerHandle, why: ProxyRefusal) -> u64 {
    sum(h, |m| m.proxy_refusal(why).get())
}

fn forwarded(h: &wsrelay::server::ServerHandle, source: ForwardedSource) -> u64 {
    sum(h, |m| m.forwarded(source).get())
}

/// Reads until the server closes; returns what it sent and whether it
/// closed within [`WAIT`].
fn read_until_closed(s: &mut TcpStream) -> (String, bool) {
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut out = Vec::new();
    let closed = s.read_to_end(&mut out).is_ok();
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

#[test]
fn forged_forwarding_headers_from_an_untrusted_peer_are_ignored() {
    // 127.0.0.1 is not in the list: its headers are the client's own words.
    let h = start(proxied(&["10.0.0.0/8"], false));
    let addr = h.local_addr();
    let (status, _a) = upgrade_via(addr, b"", "X-Forwarded-For: 203.0.113.1\r\n");
    assert_eq!(status, 101);
    // Another "client" by its headers, the same one by its address.
    for extra in [
        "X-Forwarded-For: 203.0.113.2\r\n",
        "Forwarded: for=203.0.113.3\r\n",
    ] {
        let (status, _) = upgrade_via(addr, b"", extra);
        assert_eq!(status, 429, "{extra}");
    }
    for source in ForwardedSource::ALL {
        assert_eq!(forwarded(&h, source), 0);
    }
    h.shutdown();
    h.join();
}

#[test]
fn a_trusted_proxy_names_the_client_and_the_per_ip_limit_counts_it() {
    let h = start(proxied(&["127.0.0.1/32"], false));
    let addr = h.local_addr();
    let mut open = Vec::new();
    // The client wrote the first entry; the proxy appended the real one.
    let (status, a) = upgrade_via(addr, b"", "X-Forwarded-For: 6.6.6.6, 203.0.113.1\r\n");
    assert_eq!(status, 101);
    open.push(a);
    // A second client through the same proxy: its own slot.
    let (status, b) = upgrade_via(addr, b"", "X-Forwarded-For: 203.0.113.2\r\n");
    assert_eq!(status, 101);
    open.push(b);
    // The first client again, through the same proxy: over its limit of 1.
    expect_refusal(
        addr,
        &upgrade_request("/echo", "X-Forwarded-For: 203.0.113.1\r\n"),
        429,
        "too many connections",
    );
    // Plain HTTP is counted the same way.
    expect_refusal(
        addr,
        &request(
            "GET /healthz HTTP/1.1",
            &["Host: x", "X-Forwarded-For: 203.0.113.2"],
        ),
        429,
        "too many connections",
    );
    // Forwarded (RFC 7239), IPv6 client.
    let fwd = "Forwarded: for=\"[2001:db8::1]:4711\";proto=http\r\n";
    let (status, c) = upgrade_via(addr, b"", fwd);
    assert_eq!(status, 101);
    open.push(c);
    let (status, _) = upgrade_via(addr, b"", "Forwarded: for=\"[2001:db8::2]\"\r\n");
    assert_eq!(status, 429, "same /64 as 2001:db8::1");
    // No header: the proxy itself is the client (one slot, then 429).
    let (status, d) = upgrade_via(addr, b"", "");
    assert_eq!(status, 101);
    open.push(d);
    let (status, _) = upgrade_via(addr, b"", "");
    assert_eq!(status, 429);
    // Closing a client gives its slot back.
    drop(open.remove(0));
    assert!(eventually(WAIT, || {
        let (status, s) = upgrade_via(addr, b"", "X-Forwarded-For: 203.0.113.1\r\n");
        if status == 101 {
            open.push(s);
        }
        status == 101
    }));
    assert!(forwarded(&h, ForwardedSource::XForwardedFor) >= 4);
    assert_eq!(forwarded(&h, ForwardedSource::Forwarded), 2);
    h.shutdown();
    h.join();
}

#[test]
fn proxy_protocol_v1_and_v2_name_the_client() {
    let h = start(proxied(&["127.0.0.1/32"], true));
    let addr = h.local_addr();
    let dest = sa("10.0.0.1:443");
    let v1 = encode_v1(sa("203.0.113.7:50000"), dest);
    let (status, s) = upgrade_via(addr, &v1, "");
    assert_eq!(status, 101);
    // The connection works as any other.
    let mut ws = ws_opened(s);
    ws.send(tungstenite::Message::text("through the proxy"))
        .unwrap();
    assert_eq!(
        ws_expect_data(&mut ws),
        tungstenite::Message::text("through the proxy")
    );
    // Same client, other port, v2 this time: over its limit.
    let v2 = encode_v2(sa("203.0.113.7:50001"), dest);
    let (status, _) = upgrade_via(addr, &v2, "");
    assert_eq!(status, 429);
    // Other clients, IPv4 and IPv6.
    let (status, _b) = upgrade_via(addr, &encode_v2(sa("203.0.113.8:1"), dest), "");
    assert_eq!(status, 101);
    let six = encode_v1(sa("[2001:db8::8]:1"), sa("[2001:db8::1]:443"));
    let (status, _c) = upgrade_via(addr, &six, "");
    assert_eq!(status, 101);
    // The header and the request may arrive in pieces.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_nodelay(true).unwrap();
    let whole = [
        encode_v2(sa("203.0.113.9:1"), dest),
        upgrade_request("/echo", ""),
    ]
    .concat();
    for piece in whole.chunks(7) {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    s.set_read_timeout(Some(WAIT)).unwrap();
    let mut head = [0u8; 12];
    s.read_exact(&mut head).unwrap();
    assert_eq!(&head, b"HTTP/1.1 101");
    // A LOCAL header (the proxy's own health check): the proxy is the client.
    let mut local = V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    let (resp, closed) = http_exchange(
        addr,
        &[
            local,
            request("GET /healthz HTTP/1.1", &["Host: x", "Connection: close"]),
        ]
        .concat(),
        WAIT,
    );
    assert_eq!(status_of(&resp), 200, "{resp}");
    assert!(closed);
    assert_eq!(forwarded(&h, ForwardedSource::ProxyProtocol), 5);
    h.shutdown();
    h.join();
}

/// A tungstenite client over a stream whose handshake is already done.
fn ws_opened(s: TcpStream) -> Ws {
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    tungstenite::WebSocket::from_raw_socket(s, tungstenite::protocol::Role::Client, None)
}

#[test]
fn a_proxy_header_from_a_trusted_hop_defers_to_its_forwarding_headers() {
    // HAProxy (PROXY header) in front of another trusted proxy that sets
    // X-Forwarded-For: the header names the inner proxy, which is trusted.
    let h = start(proxied(&["127.0.0.1/32", "10.0.0.0/8"], true));
    let addr = h.local_addr();
    let inner = encode_v1(sa("10.1.1.1:1000"), sa("10.0.0.1:443"));
    let (status, _a) = upgrade_via(addr, &inner, "X-Forwarded-For: 203.0.113.20\r\n");
    assert_eq!(status, 101);
    let (status, _) = upgrade_via(addr, &inner, "X-Forwarded-For: 203.0.113.20\r\n");
    assert_eq!(status, 429);
    let (status, _b) = upgrade_via(addr, &inner, "X-Forwarded-For: 203.0.113.21\r\n");
    assert_eq!(status, 101);
    // An untrusted source's own forwarding headers are ignored.
    let outside = encode_v1(sa("198.51.100.1:1000"), sa("10.0.0.1:443"));
    let (status, _c) = upgrade_via(addr, &outside, "X-Forwarded-For: 203.0.113.30\r\n");
    assert_eq!(status, 101);
    let (status, _) = upgrade_via(addr, &outside, "X-Forwarded-For: 203.0.113.31\r\n");
    assert_eq!(status, 429, "198.51.100.1 is the client");
    h.shutdown();
    h.join();
}

#[test]
fn invalid_proxy_headers_are_refused_with_400() {
    let h = start(proxied(&["127.0.0.1/32"], true));
    let addr = h.local_addr();
    let mut bad_v2 = encode_v2(sa("203.0.113.1:1"), sa("10.0.0.1:2"));
    bad_v2[12] = 0x31; // version 3
    let mut too_long = V2_SIGNATURE.to_vec();
    too_long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    let cases: [&[u8]; 6] = [
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n",
        b"\x16\x03\x01\x00\xa5\x01\x00\x00",
        b"PROXY TCP4 203.0.113.1 10.0.0.1 99999 443\r\n",
        b"PROXY TCP4 not-an-address\r\n",
        &bad_v2,
        &too_long,
    ];
    for bytes in cases {
        let (resp, closed) = http_exchange(addr, bytes, WAIT);
        assert_eq!(
            status_of(&resp),
            400,
            "{:?}: {resp}",
            String::from_utf8_lossy(bytes)
        );
        assert!(
            body(&resp).contains("invalid PROXY protocol header"),
            "{resp}"
        );
        assert_eq!(header(&resp, "connection"), Some("close"));
        assert!(closed);
    }
    // A v1 line that never ends is refused at 107 bytes.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(format!("PROXY UNKNOWN {}", "x".repeat(200)).as_bytes())
        .unwrap();
    let (resp, closed) = read_until_closed(&mut s);
    assert_eq!(status_of(&resp), 400, "{resp}");
    assert!(closed);
    assert_eq!(refusals(&h, ProxyRefusal::InvalidHeader), 7);
    h.shutdown();
    h.join();
}

#[test]
fn truncated_and_slow_proxy_headers_are_closed() {
    let h = start(Config {
        proxy_header_timeout: Duration::from_secs(1),
        handshake_timeout: Duration::from_secs(30),
        ..proxied(&["127.0.0.1/32"], true)
    });
    let addr = h.local_addr();
    let v1 = encode_v1(sa("203.0.113.1:1"), sa("10.0.0.1:2"));
    let v2 = encode_v2(sa("203.0.113.1:1"), sa("10.0.0.1:2"));
    // Truncated: part of a header, then the proxy closes its side.
    for part in [&v1[..20], &v2[..20]] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(part).unwrap();
        s.shutdown(std::net::Shutdown::Write).unwrap();
        let (resp, closed) = read_until_closed(&mut s);
        assert!(resp.is_empty(), "{resp}");
        assert!(closed);
    }
    assert!(eventually(WAIT, || refusals(&h, ProxyRefusal::Truncated) == 2));
    // Slow: part of a header, or nothing, then silence. Closed once
    // proxy_header_timeout (1 s) passes, well before handshake_timeout.
    let started = Instant::now();
    let mut slow = Vec::new();
    for part in [&v1[..20], &v2[..13], &b""[..]] {
        let mut s = TcpStream::connect(addr).unwrap();
        s.write_all(part).unwrap();
        slow.push(s);
    }
    for s in &mut slow {
        let (resp, closed) = read_until_closed(s);
        assert!(resp.is_empty(), "{resp}");
        assert!(closed, "closed within {WAIT:?}");
    }
    assert!(started.elapsed() < Duration::from_secs(20));
    assert_eq!(refusals(&h, ProxyRefusal::Timeout), 3);
    // A complete header leaves the rest of the handshake its own deadline:
    // the connection is still open after the header timeout.
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(&v2).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut byte = [0u8; 1];
    let r = s.read(&mut byte);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut),
        "{r:?}"
    );
    assert_eq!(refusals(&h, ProxyRefusal::Timeout), 3);
    h.shutdown();
    h.join();
}

#[test]
fn untrusted_peers_are_refused_on_a_proxy_protocol_listener() {
    let h = start(proxied(&["10.0.0.0/8"], true));
    let addr = h.local_addr();
    let v1 = encode_v1(sa("203.0.113.1:1"), sa("10.0.0.1:2"));
    let (resp, closed) = http_exchange(addr, &[v1, upgrade_request("/echo", "")].concat(), WAIT);
    assert_eq!(status_of(&resp), 403, "{resp}");
    assert!(body(&resp).contains("trusted proxies only"), "{resp}");
    assert!(closed);
    assert_eq!(refusals(&h, ProxyRefusal::UntrustedPeer), 1);
    assert_eq!(sum(&h, |m| m.upgrades.get()), 0);
    h.shutdown();
    h.join();
}

#[test]
fn without_proxy_protocol_a_proxy_header_is_bad_http() {
    // Even from a trusted proxy: the listener does not expect the header.
    let h = start(proxied(&["127.0.0.1/32"], false));
    let addr = h.local_addr();
    let v1 = encode_v1(sa("203.0.113.1:1"), sa("10.0.0.1:2"));
    let v2 = encode_v2(sa("203.0.113.1:1"), sa("10.0.0.1:2"));
    for header in [v1, v2] {
        let bytes = [header, upgrade_request("/echo", "")].concat();
        expect_refusal(addr, &bytes, 400, "malformed HTTP request");
    }
    h.shutdown();
    h.join();
}

#[test]
fn the_admin_listener_needs_no_proxy_header() {
    // Public side behind a PROXY-protocol balancer; probes and scrapes on
    // the admin listener, which never reads a header (nor forwarding
    // headers: its connections are not counted per client).
    let h = start(Config {
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..proxied(&["10.0.0.0/8"], true)
    });
    let admin = h.admin_addr().expect("admin listener");
    let (resp, _) = http_exchange(h.local_addr(), &upgrade_request("/echo", ""), WAIT);
    assert_eq!(status_of(&resp), 403, "{resp}");
    let m = scrape(admin);
    assert_eq!(
        m.get(
            "wsrelay_proxy_protocol_refusals_total",
            &[("reason", "untrusted_peer")]
        ),
        Some(1.0)
    );
    for path in ["/healthz", "/readyz"] {
        assert_eq!(http_get(admin, path).status, 200, "{path}");
    }
    h.shutdown();
    h.join();
}
