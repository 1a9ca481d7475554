//! `tls_listen`: wss:// beside ws://. Certificates are generated at run
//! time with rcgen (a CA and a leaf it signs; nothing secret in the
//! repository): echo and rooms over TLS for ECDSA, Ed25519 and RSA keys
//! with a chain, ALPN `http/1.1`, resumption by ticket, and a client that
//! sends garbage instead of a ClientHello (closed, counted, nobody else
//! disturbed).

use crate::support::*;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SignatureAlgorithm};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tungstenite::Message;
use wsrelay::config::Config;
use wsrelay::metrics::TlsFailure;
use wsrelay::protocol::RejectReason;
use wsrelay::server::ServerHandle;

type Wss = tungstenite::WebSocket<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>;

/// PEM files of a leaf certificate for `localhost` (chain: leaf, CA) and
/// its key, in a fresh temporary directory, and the CA a client trusts.
pub(crate) struct Pki {
    pub dir: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: rustls::pki_types::CertificateDer<'static>,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub(crate) fn pki(alg: &'static SignatureAlgorithm) -> Pki {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wsrelay-tls-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_key = KeyPair::generate_for(alg).unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate_for(alg).unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let cert_path = dir.join("chain.pem");
    let key_path = dir.join("key.pem");
    std::fs::write(&cert_path, format!("{}{}", leaf.pem(), ca.pem())).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    Pki {
        dir,
        cert: cert_path,
        key: key_path,
        ca: ca.der().clone(),
    }
}

fn tls_config(p: &Pki) -> Config {
    Config {
        tls_listen: Some("127.0.0.1:0".parse().unwrap()),
        tls_cert: p.cert.to_str().unwrap().into(),
        tls_key: p.key.to_str().unwrap().into(),
        ..test_config()
    }
}

/// A client trusting `ca` only, with its own session (ticket) store.
fn client_config(ca: &rustls::pki_types::CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

/// [`client_config`] speaking only `version`.
fn client_config_for(
    ca: &rustls::pki_types::CertificateDer<'static>,
    version: &'static rustls::SupportedProtocolVersion,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let mut c = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::aws_lc_rs::default_provider(),
    ))
    .with_protocol_versions(&[version])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    c.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(c)
}

fn tls_addr(h: &ServerHandle) -> SocketAddr {
    h.tls_addr().expect("TLS listener bound")
}

/// A tungstenite client over rustls on `path` (wss://).
fn wss_connect(addr: SocketAddr, client: &Arc<rustls::ClientConfig>, path: &str) -> Wss {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let conn =
        rustls::ClientConnection::new(client.clone(), "localhost".try_into().unwrap()).unwrap();
    let stream = rustls::StreamOwned::new(conn, sock);
    let (ws, resp) = tungstenite::client(format!("wss://localhost{path}"), stream)
        .unwrap_or_else(|e| panic!("wss handshake on {path} failed: {e}"));
    assert_eq!(resp.status().as_u16(), 101);
    ws
}

fn wss_expect_data(ws: &mut Wss) -> Message {
    loop {
        match ws.read().expect("a message") {
            m @ (Message::Text(_) | Message::Binary(_)) => return m,
            _ => continue,
        }
    }
}

/// The sum of a metric over its lines in `/metrics`.
fn metric(addr: SocketAddr, name: &str) -> u64 {
    let text = http_raw(
        addr,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn echo_over_tls(alg: &'static SignatureAlgorithm) {
    let p = pki(alg);
    let h = start(tls_config(&p));
    // TLS 1.2 first (a chain, the key type's signature in its
    // ServerKeyExchange), then TLS 1.3 for the rest.
    let mut ws12 = wss_connect(
        tls_addr(&h),
        &client_config_for(&p.ca, &rustls::version::TLS12),
        "/echo",
    );
    assert_eq!(
        ws12.get_ref().conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_2)
    );
    let big12: Vec<u8> = (0..100_000u32).map(|i| (i % 249) as u8).collect();
    ws12.send(Message::binary(big12.clone())).unwrap();
    assert_eq!(wss_expect_data(&mut ws12), Message::binary(big12));
    let client = client_config(&p.ca);
    let mut ws = wss_connect(tls_addr(&h), &client, "/echo");
    assert_eq!(
        ws.get_ref().conn.protocol_version(),
        Some(rustls::ProtocolVersion::TLSv1_3)
    );
    assert_eq!(
        ws.get_ref().conn.alpn_protocol(),
        Some(&b"http/1.1"[..]),
        "ALPN"
    );
    ws.send(Message::text("over tls")).unwrap();
    assert_eq!(wss_expect_data(&mut ws), Message::text("over tls"));
    // Larger than one TLS record and rustls' send buffer limit.
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    ws.send(Message::binary(big.clone())).unwrap();
    assert_eq!(wss_expect_data(&mut ws), Message::binary(big));
    // The plain listener still serves ws://.
    let mut plain = ws_connect(h.local_addr(), "/echo");
    plain.send(Message::text("plain")).unwrap();
    assert_eq!(ws_expect_data(&mut plain), Message::text("plain"));
}

#[test]
fn wss_echo_with_an_ecdsa_chain() {
    echo_over_tls(&rcgen::PKCS_ECDSA_P256_SHA256);
}

#[test]
fn wss_echo_with_an_ed25519_chain() {
    echo_over_tls(&rcgen::PKCS_ED25519);
}

#[test]
fn wss_echo_with_an_rsa_chain() {
    echo_over_tls(&rcgen::PKCS_RSA_SHA256);
}

#[test]
fn rooms_mix_tls_and_plain_members() {
    let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let h = start(tls_config(&p));
    let client = client_config(&p.ca);
    let mut a = wss_connect(tls_addr(&h), &client, "/rooms/x");
    let mut b = wss_connect(tls_addr(&h), &client, "/rooms/x");
    let mut c = ws_connect(h.local_addr(), "/rooms/x");
    // Everyone joined before the message is sent.
    assert!(eventually(WAIT, || metric(
        h.local_addr(),
        "wsrelay_connections_open"
    ) == 3));
    a.send(Message::text("hello room")).unwrap();
    assert_eq!(wss_expect_data(&mut b), Message::text("hello room"));
    assert_eq!(ws_expect_data(&mut c), Message::text("hello room"));
    c.send(Message::text("from plain")).unwrap();
    assert_eq!(wss_expect_data(&mut a), Message::text("from plain"));
    assert_eq!(wss_expect_data(&mut b), Message::text("from plain"));
}

#[test]
fn a_second_connection_resumes_its_session() {
    resumes(&rustls::version::TLS13);
}

#[test]
fn a_second_tls12_connection_resumes_its_session() {
    resumes(&rustls::version::TLS12);
}

fn resumes(version: &'static rustls::SupportedProtocolVersion) {
    let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let h = start(tls_config(&p));
    let client = client_config_for(&p.ca, version);
    let mut first = wss_connect(tls_addr(&h), &client, "/echo");
    // TLS 1.3 tickets arrive after the handshake: let the client read them.
    first.send(Message::text("x")).unwrap();
    assert_eq!(wss_expect_data(&mut first), Message::text("x"));
    assert_eq!(
        first.get_ref().conn.handshake_kind(),
        Some(rustls::HandshakeKind::Full)
    );
    let mut second = wss_connect(tls_addr(&h), &client, "/echo");
    second.send(Message::text("y")).unwrap();
    assert_eq!(wss_expect_data(&mut second), Message::text("y"));
    assert_eq!(
        second.get_ref().conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
}

#[test]
fn a_missing_key_file_fails_start_up_with_its_path() {
    let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let mut c = tls_config(&p);
    c.tls_key = p.dir.join("nope.pem").to_str().unwrap().into();
    let e = wsrelay::server::start(c)
        .err()
        .expect("start fails")
        .to_string();
    assert!(e.contains("tls_key") && e.contains("nope.pem"), "{e}");
}

#[test]
fn a_reloaded_certificate_serves_new_handshakes_and_open_connections_stay() {
    let old = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let h = start(tls_config(&old));
    let old_client = client_config(&old.ca);
    let mut open: Vec<Wss> = (0..8)
        .map(|_| wss_connect(tls_addr(&h), &old_client, "/echo"))
        .collect();

    // A broken file is refused and the old certificate stays.
    let fresh = pki(&rcgen::PKCS_ED25519);
    std::fs::write(&old.key, b"not a key").unwrap();
    let e = h.reload_tls().expect_err("a broken key is refused");
    assert!(e.contains("tls_key"), "{e}");
    let mut still_old = wss_connect(tls_addr(&h), &old_client, "/echo");
    still_old.send(Message::text("old")).unwrap();
    assert_eq!(wss_expect_data(&mut still_old), Message::text("old"));

    // The new certificate and key replace the files; reload.
    std::fs::copy(&fresh.cert, &old.cert).unwrap();
    std::fs::copy(&fresh.key, &old.key).unwrap();
    assert_eq!(h.reload_tls(), Ok(true));

    // New full handshakes present the new certificate: a client trusting
    // only the old CA (and holding no ticket: a resumption would not see
    // a certificate at all) fails, one trusting the new CA connects.
    let new_client = client_config(&fresh.ca);
    let mut n = wss_connect(tls_addr(&h), &new_client, "/echo");
    n.send(Message::text("new")).unwrap();
    assert_eq!(wss_expect_data(&mut n), Message::text("new"));
    let sock = TcpStream::connect(tls_addr(&h)).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let conn =
        rustls::ClientConnection::new(client_config(&old.ca), "localhost".try_into().unwrap())
            .unwrap();
    let stream = rustls::StreamOwned::new(conn, sock);
    assert!(tungstenite::client("wss://localhost/echo", stream).is_err());

    // Every connection opened before the reload still works.
    for (i, ws) in open.iter_mut().enumerate() {
        ws.send(Message::text(format!("m{i}"))).unwrap();
        assert_eq!(wss_expect_data(ws), Message::text(format!("m{i}")));
    }
}

#[test]
fn a_silent_tls_client_meets_the_handshake_deadline_and_is_counted() {
    let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let h = start(Config {
        handshake_timeout: std::time::Duration::from_secs(1),
        ..tls_config(&p)
    });
    let mut raw = TcpStream::connect(tls_addr(&h)).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    // Nothing sent: no ClientHello. The deadline closes it, without a
    // plaintext HTTP answer.
    let mut got = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match raw.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("not closed: {e}"),
        }
    }
    assert!(!got.starts_with(b"HTTP/"), "{got:?}");
    assert!(eventually(WAIT, || metric(
        h.local_addr(),
        "wsrelay_tls_handshake_failures_total"
    ) == 1));
}

// ----- the outbound bound covers what TLS holds ------------------------------------

/// A room member that completes its (ws:// or wss://) upgrade, then never
/// reads: 4 KiB receive buffer, kept alive by the returned value.
fn stalled_member(
    h: &ServerHandle,
    tls: Option<&Arc<rustls::ClientConfig>>,
) -> Box<dyn std::any::Any> {
    use socket2::{Domain, Socket, Type};
    let addr = match tls {
        Some(_) => tls_addr(h),
        None => h.local_addr(),
    };
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&addr.into()).unwrap();
    let sock: TcpStream = s.into();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    match tls {
        None => Box::new(ws_over(sock, addr, "/rooms/feed?role=sub")),
        Some(client) => {
            let conn =
                rustls::ClientConnection::new(client.clone(), "localhost".try_into().unwrap())
                    .unwrap();
            let stream = rustls::StreamOwned::new(conn, sock);
            let (ws, _) =
                tungstenite::client("wss://localhost/rooms/feed?role=sub", stream).unwrap();
            Box::new(ws)
        }
    }
}

/// 1 KiB messages published into room "feed" (one worker; a reading
/// member proves each was relayed before the next) until its stalled member,
/// over TLS or not, is closed as a slow consumer. Returns the count.
fn messages_until_the_stalled_member_is_closed(p: &Pki, tls: bool) -> u64 {
    let h = start(Config {
        workers: 1,
        max_outbound_bytes: 64 << 10,
        // The smallest kernel send buffer (Linux: 4608 bytes doubled), so
        // the queue bound dominates what a stalled reader absorbs.
        send_buffer_bytes: 4096,
        ..tls_config(p)
    });
    let client = client_config(&p.ca);
    let _stalled = stalled_member(&h, tls.then_some(&client));
    let mut reader = ws_connect(h.local_addr(), "/rooms/feed?role=sub");
    let mut publisher = ws_connect(h.local_addr(), "/rooms/feed?role=pub");
    let payload = vec![0x5a; 1024];
    let mut seq = 0u64;
    while sum(&h, |m| m.slow_consumer_closes.get()) == 0 {
        assert!(seq < 10_000, "never closed as a slow consumer");
        publisher.send(Message::binary(payload.clone())).unwrap();
        seq += 1;
        assert_eq!(
            ws_expect_data(&mut reader),
            Message::binary(payload.clone())
        );
    }
    h.shutdown();
    h.join();
    seq
}

#[test]
fn a_stalled_tls_reader_is_closed_at_the_same_bound_as_a_plain_one() {
    // 64 KiB queue bound, minimal kernel buffers: a stalled ws:// member
    // is closed after 69 messages of 1 KiB (measured; 64 KiB in the queue,
    // the rest in the kernel), a wss:// one after 66. Over TLS at most one
    // more record (16 KiB: 16 messages) may be held, as ciphertext in
    // rustls. Before the bound covered it, rustls took plaintext up to
    // 64 KiB beside the queue: 128 messages (measured).
    let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let plain = messages_until_the_stalled_member_is_closed(&p, false);
    let tls = messages_until_the_stalled_member_is_closed(&p, true);
    println!("slow-consumer close after {plain} messages (ws://), {tls} (wss://)");
    assert!(
        tls <= plain + 16,
        "a stalled TLS reader absorbed {tls} KiB, a plain one {plain} KiB"
    );
}

// ----- graceful close over TLS -------------------------------------------------------

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

/// A TLS client stream to the TLS listener (no WebSocket yet).
fn tls_stream(addr: SocketAddr, client: &Arc<rustls::ClientConfig>) -> TlsStream {
    let sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let conn =
        rustls::ClientConnection::new(client.clone(), "localhost".try_into().unwrap()).unwrap();
    rustls::StreamOwned::new(conn, sock)
}

/// Reads until the end of the stream. `Ok` only for a clean end: the
/// server's close_notify, then EOF (rustls reports an EOF without
/// close_notify as `UnexpectedEof`).
fn read_to_clean_end(s: &mut TlsStream) -> Result<Vec<u8>, String> {
    let mut got = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Ok(got),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) => {
                return Err(format!(
                    "{e} after {} bytes: {:?}",
                    got.len(),
                    String::from_utf8_lossy(&got[..got.len().min(200)])
                ))
            }
        }
    }
}

#[test]
fn http_refusals_over_tls_arrive_whole_then_close_notify() {
    let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let h = start(Config {
        allowed_origins: vec!["https://ok.example".into()],
        ..tls_config(&p)
    });
    let client = client_config(&p.ca);
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let cases: [(&str, String, u16); 3] = [
        (
            "unknown path",
            upgrade_request("/nope", "").into_ascii(),
            404,
        ),
        (
            "origin not allowed",
            upgrade_request("/echo", "Origin: https://evil.example\r\n").into_ascii(),
            403,
        ),
        (
            "bad version",
            format!(
                "GET /echo HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                 {key}Sec-WebSocket-Version: 99\r\n\r\n"
            ),
            400,
        ),
    ];
    for (what, request, status) in cases {
        let mut s = tls_stream(tls_addr(&h), &client);
        s.write_all(request.as_bytes()).unwrap();
        s.flush().unwrap();
        let answer = read_to_clean_end(&mut s).unwrap_or_else(|e| panic!("{what}: {e}"));
        let text = String::from_utf8_lossy(&answer);
        let got = status_of(&text);
        // A bad version may be answered 426 (with the version we speak).
        assert!(
            got == status || (status == 400 && got == 426),
            "{what}: {text}"
        );
        let (head, body) = text.split_once("\r\n\r\n").expect("a whole head");
        let len: usize = header(head, "content-length")
            .expect("content-length")
            .parse()
            .unwrap();
        assert_eq!(body.len(), len, "{what}: the whole body");
    }
    assert_eq!(
        metric(h.local_addr(), "wsrelay_tls_handshake_failures_total"),
        0
    );
}

trait IntoAscii {
    fn into_ascii(self) -> String;
}

impl IntoAscii for Vec<u8> {
    fn into_ascii(self) -> String {
        String::from_utf8(self).unwrap()
    }
}

/// A wss:// client over a socket with a 4 KiB receive buffer.
fn small_window_wss(h: &ServerHandle, client: &Arc<rustls::ClientConfig>, path: &str) -> Wss {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&tls_addr(h).into()).unwrap();
    let sock: TcpStream = s.into();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let conn =
        rustls::ClientConnection::new(client.clone(), "localhost".try_into().unwrap()).unwrap();
    let (ws, _) = tungstenite::client(
        format!("wss://localhost{path}"),
        rustls::StreamOwned::new(conn, sock),
    )
    .unwrap();
    ws
}

#[test]
fn the_last_records_and_close_notify_are_not_cut_by_the_close() {
    // The echo of 1 MiB and the close answer are still in flight (the
    // client reads nothing until it has sent its close, through a 4 KiB
    // window, and the server's send buffer is minimal) when the session
    // is done: the connection stays until TLS handed over its last
    // records, then close_notify.
    let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let h = start(Config {
        send_buffer_bytes: 4096,
        ..tls_config(&p)
    });
    let client = client_config(&p.ca);
    for round in 0..3 {
        let mut ws = small_window_wss(&h, &client, "/echo");
        let big: Vec<u8> = (0..1u32 << 20).map(|i| (i % 253) as u8).collect();
        ws.send(Message::binary(big.clone())).unwrap();
        ws.close(None).unwrap();
        ws.flush().unwrap();
        assert_eq!(
            wss_expect_data(&mut ws),
            Message::binary(big),
            "round {round}"
        );
        loop {
            match ws.read() {
                Ok(Message::Close(_)) => continue,
                Ok(other) => panic!("round {round}: {other:?}"),
                Err(tungstenite::Error::ConnectionClosed) => break,
                Err(e) => panic!("round {round}: {e}"),
            }
        }
        // Then the server's close_notify and EOF, nothing cut.
        let rest = read_to_clean_end(ws.get_mut()).unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert!(rest.is_empty(), "round {round}: {rest:?}");
    }
}

#[test]
fn shutdown_sends_1001_over_tls_then_close_notify() {
    let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let h = start(Config {
        shutdown_timeout: std::time::Duration::from_secs(5),
        ..tls_config(&p)
    });
    let client = client_config(&p.ca);
    let mut ws = wss_connect(tls_addr(&h), &client, "/echo");
    ws.send(Message::text("before")).unwrap();
    assert_eq!(wss_expect_data(&mut ws), Message::text("before"));
    h.shutdown();
    let close = loop {
        match ws.read() {
            Ok(Message::Close(Some(f))) => break f,
            Ok(Message::Ping(_) | Message::Pong(_)) => {}
            other => panic!("no 1001: {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1001);
    // tungstenite queued the answer; it leaves with the next call.
    loop {
        match ws.read() {
            Ok(_) => {}
            Err(tungstenite::Error::ConnectionClosed) => break,
            Err(e) => panic!("{e}"),
        }
    }
    let rest = read_to_clean_end(ws.get_mut()).expect("close_notify, then EOF");
    assert!(rest.is_empty());
    h.join();
}

#[test]
fn a_long_http_answer_over_tls_is_not_cut_by_the_close() {
    // /metrics (over 8 KiB) with `Connection: close` to a client with a
    // 4 KiB window that reads only later, the server's send buffer
    // minimal: the session is done while records still wait for the
    // socket. The client waits a moment before reading so that, were the
    // socket closed at that point, the answer would arrive cut (the
    // test's outcome does not depend on the wait otherwise).
    use socket2::{Domain, Socket, Type};
    let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let h = start(Config {
        send_buffer_bytes: 4096,
        ..tls_config(&p)
    });
    let client = client_config(&p.ca);
    let expected = http_raw(
        h.local_addr(),
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .len();
    assert!(expected > 8 * 1024, "/metrics is {expected} bytes");
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    s.set_recv_buffer_size(4096).unwrap();
    s.connect(&tls_addr(&h).into()).unwrap();
    let sock: TcpStream = s.into();
    sock.set_read_timeout(Some(WAIT)).unwrap();
    let conn =
        rustls::ClientConnection::new(client.clone(), "localhost".try_into().unwrap()).unwrap();
    let mut s = rustls::StreamOwned::new(conn, sock);
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    s.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let answer = read_to_clean_end(&mut s).expect("the whole answer, then close_notify");
    let text = String::from_utf8_lossy(&answer);
    assert_eq!(status_of(&text), 200);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    let len: usize = header(head, "content-length").unwrap().parse().unwrap();
    assert_eq!(body.len(), len, "the whole body");
}

// ----- bad clients on the TLS port ----------------------------------------------------

/// Reads until the server closes; returns what it sent.
fn read_until_closed(raw: &mut TcpStream) -> Vec<u8> {
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        match raw.read(&mut buf) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
            Err(e) => panic!("not closed: {e}"),
        }
    }
}

/// A wss:// echo client in a thread, exchanging messages until told to
/// stop; returns how many round trips it made (panics on any failure).
fn busy_echo(
    addr: SocketAddr,
    client: &Arc<rustls::ClientConfig>,
) -> (
    Arc<std::sync::atomic::AtomicBool>,
    std::thread::JoinHandle<u64>,
) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut ws = wss_connect(addr, client, "/echo");
    let flag = stop.clone();
    let t = std::thread::spawn(move || {
        let mut n = 0u64;
        while !flag.load(Ordering::Relaxed) {
            let m = Message::text(format!("m{n}"));
            ws.send(m.clone()).unwrap();
            assert_eq!(wss_expect_data(&mut ws), m);
            n += 1;
        }
        n
    });
    (stop, t)
}

/// The first bytes of a real ClientHello, for a client that stalls in
/// the middle of it.
fn part_of_a_client_hello(client: &Arc<rustls::ClientConfig>) -> Vec<u8> {
    let mut c =
        rustls::ClientConnection::new(client.clone(), "localhost".try_into().unwrap()).unwrap();
    let mut hello = Vec::new();
    c.write_tls(&mut hello).unwrap();
    assert!(hello.len() > 100 && hello[0] == 0x16);
    hello.truncate(hello.len() / 2);
    hello
}

#[test]
fn bad_clients_on_the_tls_port_are_closed_counted_by_reason_and_disturb_nobody() {
    let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let h = start(Config {
        workers: 1,
        handshake_timeout: std::time::Duration::from_secs(1),
        ..tls_config(&p)
    });
    let client = client_config(&p.ca);
    let failures = |reason: &str| {
        metric(
            h.local_addr(),
            &format!("wsrelay_tls_handshake_failures_total{{reason=\"{reason}\"}}"),
        )
    };
    // Someone keeps echoing over TLS on the same (only) worker meanwhile.
    let (stop, echo) = busy_echo(tls_addr(&h), &client);

    // Plain HTTP to the TLS port: an alert at most, never an HTTP answer.
    let mut raw = TcpStream::connect(tls_addr(&h)).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    raw.write_all(b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let got = read_until_closed(&mut raw);
    assert!(got.len() <= 7 && !got.starts_with(b"HTTP/"), "{got:?}");
    if !got.is_empty() {
        assert_eq!(got[0], 0x15, "a TLS alert record");
    }
    assert!(eventually(WAIT, || failures("not_tls") == 1));

    // Garbage bytes, and a handshake record header announcing garbage.
    for junk in [
        &[0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0x02, 0x03][..],
        &[0x16, 0x03, 0x01, 0x00, 0x05, 0xff, 0xff, 0xff, 0xff, 0xff][..],
    ] {
        let mut raw = TcpStream::connect(tls_addr(&h)).unwrap();
        raw.set_read_timeout(Some(WAIT)).unwrap();
        raw.write_all(junk).unwrap();
        let got = read_until_closed(&mut raw);
        assert!(got.len() <= 7, "{junk:?}: {got:?}");
    }
    assert!(eventually(WAIT, || failures("not_tls")
        + failures("misbehaved")
        == 3));

    // Half a ClientHello, then silence: the handshake deadline (1 s).
    let mut raw = TcpStream::connect(tls_addr(&h)).unwrap();
    raw.set_read_timeout(Some(WAIT)).unwrap();
    raw.write_all(&part_of_a_client_hello(&client)).unwrap();
    let got = read_until_closed(&mut raw);
    assert!(got.len() <= 7, "{got:?}");
    assert!(eventually(WAIT, || failures("timeout") == 1));

    // A client that leaves mid-handshake.
    let mut raw = TcpStream::connect(tls_addr(&h)).unwrap();
    raw.write_all(&part_of_a_client_hello(&client)).unwrap();
    drop(raw);
    assert!(eventually(WAIT, || failures("eof") == 1));

    // A client that refuses our certificate (it trusts another CA).
    let other = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let mut s = tls_stream(tls_addr(&h), &client_config(&other.ca));
    assert!(s.write_all(b"GET / HTTP/1.1\r\n\r\n").is_err() || s.flush().is_err());
    drop(s);
    assert!(eventually(WAIT, || failures("alert") == 1));

    // The echo client never noticed; nothing was counted as established
    // TLS errors; the next handshake works.
    stop.store(true, Ordering::Relaxed);
    assert!(echo.join().unwrap() > 0);
    assert_eq!(metric(h.local_addr(), "wsrelay_tls_errors_total"), 0);
    let mut next = wss_connect(tls_addr(&h), &client, "/echo");
    next.send(Message::text("next")).unwrap();
    assert_eq!(wss_expect_data(&mut next), Message::text("next"));
    assert_eq!(
        metric(h.local_addr(), "wsrelay_tls_handshake_failures_total"),
        6
    );
}

#[test]
fn pending_tls_handshakes_are_bounded_by_admission_and_the_deadline() {
    // max_connections = 3: three silent TLS clients take every slot, a
    // fourth connection is closed at once (over TLS no plaintext 503 can
    // be sent); once the handshake deadline freed the slots a handshake
    // works again.
    let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let h = start(Config {
        workers: 1,
        max_connections: 3,
        handshake_timeout: std::time::Duration::from_secs(1),
        ..tls_config(&p)
    });
    let client = client_config(&p.ca);
    let silent: Vec<TcpStream> = (0..3)
        .map(|_| TcpStream::connect(tls_addr(&h)).unwrap())
        .collect();
    assert!(eventually(WAIT, || h.totals().connections_accepted == 3));
    let mut fourth = TcpStream::connect(tls_addr(&h)).unwrap();
    fourth.set_read_timeout(Some(WAIT)).unwrap();
    fourth.write_all(&part_of_a_client_hello(&client)).unwrap();
    assert!(read_until_closed(&mut fourth).is_empty());
    // (Counted in process: /metrics over HTTP would need a slot too.)
    assert!(eventually(WAIT, || {
        sum(&h, |m| m.rejection(RejectReason::Unavailable).get()) == 1
    }));
    // The deadline closes the three; their slots come back.
    assert!(eventually(WAIT, || {
        sum(&h, |m| m.tls_handshake_failure(TlsFailure::Timeout).get()) == 3
    }));
    drop(silent);
    let mut ws = wss_connect(tls_addr(&h), &client, "/echo");
    ws.send(Message::text("in")).unwrap();
    assert_eq!(wss_expect_data(&mut ws), Message::text("in"));
}

// ----- certificate reload under load (the real binary, SIGHUP) ------------------------

/// The wsrelay binary with a plain and a TLS listener on free ports, its
/// stderr collected by a thread.
struct Relay {
    child: std::process::Child,
    plain: SocketAddr,
    tls: SocketAddr,
    log: Arc<std::sync::Mutex<String>>,
}

impl Relay {
    fn spawn(cert: &std::path::Path, key: &std::path::Path) -> Relay {
        use std::process::{Command, Stdio};
        let (plain, tls): (SocketAddr, SocketAddr) = (
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
            format!("127.0.0.1:{}", free_port()).parse().unwrap(),
        );
        let mut child = Command::new(env!("CARGO_BIN_EXE_wsrelay"))
            .args(["--listen", &plain.to_string()])
            .args(["--tls-listen", &tls.to_string()])
            .args(["--tls-cert", cert.to_str().unwrap()])
            .args(["--tls-key", key.to_str().unwrap()])
            .args(["--workers", "2", "--max-connections", "1000"])
            .args(["--stats-interval", "0", "--shutdown-timeout", "5s"])
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let sink = log.clone();
        let mut stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let relay = Relay {
            child,
            plain,
            tls,
            log,
        };
        assert!(
            eventually(std::time::Duration::from_secs(15), || TcpStream::connect(
                relay.tls
            )
            .is_ok()),
            "the relay did not start: {}",
            relay.log()
        );
        relay
    }

    fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on the pid of a child we spawned and have not
        // reaped.
        assert_eq!(
            unsafe { libc::kill(self.child.id() as libc::pid_t, sig) },
            0
        );
    }

    /// Sends SIGHUP and waits for the `n`th line containing `what`.
    fn hup_until(&self, what: &str, n: usize) {
        self.signal(libc::SIGHUP);
        assert!(
            eventually(WAIT, || self.log().matches(what).count() >= n),
            "no {what:?} after SIGHUP: {}",
            self.log()
        );
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Replaces `to` with the contents of `from` atomically (a reload never
/// sees half a file).
fn replace_file(from: &std::path::Path, to: &std::path::Path) {
    let tmp = to.with_extension("tmp");
    std::fs::copy(from, &tmp).unwrap();
    std::fs::rename(&tmp, to).unwrap();
}

/// `clients` wss:// echo connections driven round-robin by one thread:
/// each round sends one numbered message on every connection and checks
/// every echo. Runs until `stop`; `rounds` counts completed rounds.
fn echo_load(
    addr: SocketAddr,
    client: Arc<rustls::ClientConfig>,
    clients: usize,
    rounds: Arc<AtomicUsize>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> std::thread::JoinHandle<Vec<Wss>> {
    std::thread::spawn(move || {
        let mut conns: Vec<Wss> = (0..clients)
            .map(|_| wss_connect(addr, &client, "/echo"))
            .collect();
        let mut round = 0u64;
        while !stop.load(Ordering::Relaxed) {
            for (i, ws) in conns.iter_mut().enumerate() {
                ws.send(Message::text(format!("{i}:{round}"))).unwrap();
            }
            for (i, ws) in conns.iter_mut().enumerate() {
                let got = wss_expect_data(ws);
                assert_eq!(
                    got,
                    Message::text(format!("{i}:{round}")),
                    "lost or reordered"
                );
            }
            round += 1;
            rounds.fetch_add(1, Ordering::Relaxed);
        }
        conns
    })
}

#[test]
fn sighup_reloads_the_certificate_under_load_without_dropping_anything() {
    let old = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let relay = Relay::spawn(&old.cert, &old.key);
    let old_client = client_config(&old.ca);

    // 200 TLS clients in 4 threads, echoing continuously.
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let counters: Vec<Arc<AtomicUsize>> = (0..4).map(|_| Arc::new(AtomicUsize::new(0))).collect();
    let loads: Vec<_> = counters
        .iter()
        .map(|c| echo_load(relay.tls, old_client.clone(), 50, c.clone(), stop.clone()))
        .collect();
    let rounds = || {
        counters
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .min()
            .unwrap()
    };
    assert!(eventually(std::time::Duration::from_secs(30), || rounds() >= 5));

    // A broken certificate file: refused, logged, the old one serves on.
    std::fs::write(&old.cert, b"-----BEGIN CERTIFICATE-----\nbroken\n").unwrap();
    relay.hup_until("TLS reload failed, keeping the previous certificate", 1);
    let mut ws = wss_connect(relay.tls, &old_client, "/echo");
    ws.send(Message::text("old")).unwrap();
    assert_eq!(wss_expect_data(&mut ws), Message::text("old"));

    // A new certificate (another CA, Ed25519): reloaded while the load
    // goes on.
    let fresh = pki(&rcgen::PKCS_ED25519);
    replace_file(&fresh.key, &old.key);
    replace_file(&fresh.cert, &old.cert);
    let before = rounds();
    relay.hup_until("SIGHUP: TLS certificate reloaded", 1);

    // New full handshakes present the new certificate: a fresh client
    // trusting the new CA connects, one trusting only the old CA (and
    // holding no ticket) is refused.
    let mut n = wss_connect(relay.tls, &client_config(&fresh.ca), "/echo");
    n.send(Message::text("new")).unwrap();
    assert_eq!(wss_expect_data(&mut n), Message::text("new"));
    let mut s = tls_stream(relay.tls, &client_config(&old.ca));
    assert!(s.write_all(b"x").and_then(|()| s.flush()).is_err());

    // The load carried on through both reloads: every connection still
    // echoes, nothing lost (each thread checks every echo).
    assert!(eventually(std::time::Duration::from_secs(30), || rounds()
        >= before + 5));
    stop.store(true, Ordering::Relaxed);
    let mut total = 0;
    for l in loads {
        let conns = l.join().expect("a load thread failed");
        total += conns.len();
    }
    assert_eq!(total, 200);
    assert!(relay.child.id() > 0);
    let http = http_raw(
        relay.plain,
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    );
    let errors: u64 = http
        .lines()
        .filter(|l| l.starts_with("wsrelay_tls_errors_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    assert_eq!(errors, 0, "{http}");

    // Bad clients are counted, not logged (the binary logs at info).
    let lines = relay.log().lines().count();
    for junk in [&b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"[..], &[0xde, 0xad][..]] {
        let mut raw = TcpStream::connect(relay.tls).unwrap();
        raw.set_read_timeout(Some(WAIT)).unwrap();
        raw.write_all(junk).unwrap();
        let _ = read_until_closed(&mut raw);
    }
    let failures = || {
        http_raw(
            relay.plain,
            b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        )
        .lines()
        .filter(|l| l.starts_with("wsrelay_tls_handshake_failures_total{reason=\"not_tls\"}"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum::<u64>()
    };
    assert!(eventually(WAIT, || failures() >= 1));
    assert_eq!(relay.log().lines().count(), lines, "{}", relay.log());
    relay.signal(libc::SIGTERM);
}

#[test]
fn a_forged_record_on_an_established_connection_is_closed_and_counted() {
    let p = pki(&rcgen::PKCS_ECDSA_P256_SHA256);
    let h = start(tls_config(&p));
    let client = client_config(&p.ca);
    let mut ws = wss_connect(tls_addr(&h), &client, "/echo");
    ws.send(Message::text("fine")).unwrap();
    assert_eq!(wss_expect_data(&mut ws), Message::text("fine"));
    // An application-data record that does not decrypt, written under
    // the client's TLS layer.
    let mut forged = vec![0x17, 0x03, 0x03, 0x00, 0x30];
    forged.extend((0..0x30u8).map(|i| i.wrapping_mul(37)));
    let sock = &mut ws.get_mut().sock;
    sock.write_all(&forged).unwrap();
    let got = read_until_closed(sock);
    assert!(got.len() <= 64, "an alert at most: {got:?}");
    assert!(eventually(WAIT, || metric(
        h.local_addr(),
        "wsrelay_tls_errors_total{reason=\"misbehaved\"}"
    ) == 1));
    assert_eq!(
        metric(h.local_addr(), "wsrelay_tls_handshake_failures_total"),
        0
    );
    // Others are not affected.
    let mut other = wss_connect(tls_addr(&h), &client, "/echo");
    other.send(Message::text("ok")).unwrap();
    assert_eq!(wss_expect_data(&mut other), Message::text("ok"));
}
