//! TLS to Redis (`rediss://`, `valkeys://`): the client configuration from
//! `redis_tls_ca` / `redis_tls_cert` / `redis_tls_key`, and [`TlsStream`],
//! one rustls connection shared by the clones of a socket.
//!
//! The bridge splits every Redis connection into a reader thread blocked
//! in `read` and a writer thread (`conn.rs`). Over TLS both need the one
//! `rustls::ClientConnection` (keys, record sequence numbers), so each
//! clone has its own `TcpStream` and shares the connection behind a mutex
//! that is **never held across a socket call**: the reader blocks on its
//! socket with no lock, then locks only to hand the ciphertext to rustls
//! and take the plaintext out; the writer locks only to encrypt into its
//! own buffer. A second mutex orders ciphertext onto the socket (records
//! must leave in sequence): the writer holds it while writing, the reader
//! only in the rare case it must answer something itself (an alert, a TLS
//! 1.3 key update). So a slow socket write never delays the reader's
//! processing of replies and messages, and the blocking writes are bounded
//! by the socket's write timeout exactly as on the plain path.

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore};

/// Ciphertext read from the socket at once by the reader: one full TLS
/// record and then some (fewer system calls under a stream of messages).
const READ_CHUNK: usize = 32 * 1024;

/// The client configuration for `rediss://` URLs: trust the CA
/// certificates in `ca` (PEM; required: the platform's roots are not
/// bundled and rustls-native-certs is not a dependency), present the chain
/// in `cert` with its key in `key` when both are given (mutual TLS). TLS
/// 1.3 and 1.2, the relay's crypto provider (aws-lc-rs, see
/// `server::tls::provider`).
pub fn client_config(ca: &str, cert: &str, key: &str) -> Result<Arc<ClientConfig>, String> {
    if ca.is_empty() {
        return Err("a rediss:// URL needs redis_tls_ca (the PEM file of the CA that signed the Redis server's certificate)".into());
    }
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("redis_tls_ca {ca:?}: {e}"))?;
    if certs.is_empty() {
        return Err(format!("redis_tls_ca {ca:?}: no CERTIFICATE in the file"));
    }
    for c in certs {
        roots
            .add(c)
            .map_err(|e| format!("redis_tls_ca {ca:?}: {e}"))?;
    }
    let builder = ClientConfig::builder_with_provider(crate::server::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| format!("TLS to Redis: {e}"))?
        .with_root_certificates(roots);
    let config = match (cert.is_empty(), key.is_empty()) {
        (true, true) => builder.with_no_client_auth(),
        (false, false) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| format!("redis_tls_cert {cert:?}: {e}"))?;
            if chain.is_empty() {
                return Err(format!(
                    "redis_tls_cert {cert:?}: no CERTIFICATE in the file"
                ));
            }
            let key_der = PrivateKeyDer::from_pem_file(key)
                .map_err(|e| format!("redis_tls_key {key:?}: {e}"))?;
            // Also checks that the key belongs to the certificate.
            builder
                .with_client_auth_cert(chain, key_der)
                .map_err(|e| format!("redis_tls_cert {cert:?} and redis_tls_key {key:?}: {e}"))?
        }
        _ => return Err("redis_tls_cert and redis_tls_key go together".into()),
    };
    Ok(Arc::new(config))
}

/// The server name a certificate must carry for `host` (a URL host: a DNS
/// name, or an IP literal, which rustls checks against IP SANs).
pub fn server_name(host: &str) -> Result<ServerName<'static>, String> {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(host.to_string())
        .map_err(|_| format!("{host:?} is not a valid TLS server name"))
}

/// What the clones of one TLS connection share.
#[derive(Debug)]
struct Shared {
    /// rustls' state: locked only to move bytes in or out of it, never
    /// across a socket call.
    conn: Mutex<ClientConnection>,
    /// Held while writing ciphertext to the socket, so records leave in
    /// the order rustls numbered them whichever clone writes.
    send: Mutex<()>,
}

/// One clone of a TLS connection over TCP. Any clone may read or write;
/// the bridge uses one for reading, one for writing and one to shut the
/// socket down.
#[derive(Debug)]
pub struct TlsStream {
    sock: TcpStream,
    shared: Arc<Shared>,
    /// Ciphertext read from the socket that rustls has not taken yet
    /// (`start..end`); allocated on first read, so writing clones hold none.
    inbox: Vec<u8>,
    start: usize,
    end: usize,
    /// Records taken out of rustls, to write: at most rustls' send
    /// buffer limit (64 KiB) per `write`, which takes no more plaintext.
    outbox: Vec<u8>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A TLS failure as an I/O error that says what happened, with the usual
/// remedy for a certificate rustls did not accept.
fn tls_error(during: &str, e: rustls::Error) -> io::Error {
    use rustls::AlertDescription;
    use rustls::CertificateError::{NotValidForName, NotValidForNameContext};
    let hint = match e {
        rustls::Error::InvalidCertificate(NotValidForName | NotValidForNameContext { .. }) => {
            " (the host in redis_url must be a name or address the certificate carries)"
        }
        rustls::Error::InvalidCertificate(_) => {
            " (is redis_tls_ca the CA that signed the server's certificate?)"
        }
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            " (Redis requires a client certificate: set redis_tls_cert and redis_tls_key)"
        }
        rustls::Error::AlertReceived(
            AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateUnknown
            | AlertDescription::CertificateExpired,
        ) => " (Redis refused redis_tls_cert: is it signed by a CA in Redis' tls-ca-cert-file, and valid?)",
        _ => "",
    };
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("TLS {during}: {e}{hint}"),
    )
}

impl TlsStream {
    /// Runs the handshake on a connected socket, within `timeout` in all.
    pub fn handshake(
        mut sock: TcpStream,
        config: Arc<ClientConfig>,
        name: ServerName<'static>,
        timeout: Duration,
    ) -> io::Result<TlsStream> {
        let deadline = Instant::now() + timeout;
        let mut conn = ClientConnection::new(config, name).map_err(|e| tls_error("setup", e))?;
        let timed_out = || {
            io::Error::new(
                io::ErrorKind::TimedOut,
                "TLS handshake with Redis timed out",
            )
        };
        while conn.is_handshaking() || conn.wants_write() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(timed_out());
            }
            sock.set_read_timeout(Some(left))?;
            sock.set_write_timeout(Some(left))?;
            if conn.wants_write() {
                conn.write_tls(&mut sock).map_err(|e| match e.kind() {
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(),
                    _ => e,
                })?;
                continue;
            }
            let n = conn.read_tls(&mut sock).map_err(|e| match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => timed_out(),
                _ => e,
            })?;
            if n == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "TLS handshake: Redis closed the connection (is it a TLS port?)",
                ));
            }
            if let Err(e) = conn.process_new_packets() {
                // Tell the server why (best effort: an alert is queued).
                let _ = conn.write_tls(&mut sock);
                return Err(tls_error("handshake", e));
            }
        }
        sock.set_read_timeout(None)?;
        sock.set_write_timeout(None)?;
        Ok(TlsStream {
            sock,
            shared: Arc::new(Shared {
                conn: Mutex::new(conn),
                send: Mutex::new(()),
            }),
            inbox: Vec::new(),
            start: 0,
            end: 0,
            outbox: Vec::new(),
        })
    }

    /// Another handle on the same connection (a clone of the socket).
    pub fn try_clone(&self) -> io::Result<TlsStream> {
        Ok(TlsStream {
            sock: self.sock.try_clone()?,
            shared: self.shared.clone(),
            inbox: Vec::new(),
            start: 0,
            end: 0,
            outbox: Vec::new(),
        })
    }

    pub fn socket(&self) -> &TcpStream {
        &self.sock
    }

    /// Unblocks a reader on another clone (no close_notify: the bridge
    /// drops the connection, and Redis does not need one).
    pub fn shutdown(&self) {
        let _ = self.sock.shutdown(Shutdown::Both);
    }

    /// Writes whatever rustls has to send, in order with other clones.
    fn flush_records(&mut self) -> io::Result<()> {
        let _order = lock(&self.shared.send);
        self.outbox.clear();
        {
            let mut c = lock(&self.shared.conn);
            while c.wants_write() {
                c.write_tls(&mut self.outbox)?;
            }
        }
        self.sock.write_all(&self.outbox)
    }
}

impl Read for TlsStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            let (got, must_send) = {
                let mut c = lock(&self.shared.conn);
                let got = loop {
                    match c.reader().read(buf) {
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                        // Data, a close_notify (0) or an unclean EOF.
                        r => break Some(r),
                    }
                    if self.start == self.end {
                        break None;
                    }
                    // rustls takes what it has room for; its plaintext
                    // buffer is empty here, so this never refuses.
                    let n = c.read_tls(&mut &self.inbox[self.start..self.end])?;
                    self.start += n;
                    if let Err(e) = c.process_new_packets() {
                        drop(c);
                        let _ = self.flush_records();
                        return Err(tls_error("error from Redis", e));
                    }
                };
                (got, c.wants_write())
            };
            if must_send {
                self.flush_records()?;
            }
            if let Some(r) = got {
                return r;
            }
            // Nothing buffered: block on the socket, no lock held.
            if self.inbox.is_empty() {
                self.inbox = vec![0; READ_CHUNK];
            }
            let n = self.sock.read(&mut self.inbox)?;
            self.start = 0;
            self.end = n;
            if n == 0 {
                // EOF: rustls answers Ok(0) after a close_notify, an
                // UnexpectedEof error otherwise.
                let mut c = lock(&self.shared.conn);
                let _ = c.read_tls(&mut io::empty());
                return match c.reader().read(buf) {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                    r => r,
                };
            }
        }
    }
}

impl Write for TlsStream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let _order = lock(&self.shared.send);
        self.outbox.clear();
        let n = {
            let mut c = lock(&self.shared.conn);
            let n = c.writer().write(buf)?;
            while c.wants_write() {
                c.write_tls(&mut self.outbox)?;
            }
            n
        };
        // A partial write (timeout) leaves a broken record stream: the
        // bridge then shuts the connection down, as on the plain path.
        self.sock.write_all(&self.outbox)?;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! Against an in-process rustls server (redis-server over TLS is in
    //! tests/broker/tls.rs): the split reader/writer on one connection,
    //! with the server rotating keys under it; refusals and their words.

    use super::*;
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
    use rustls::pki_types::PrivatePkcs8KeyDer;
    use std::net::TcpListener;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A CA (PEM file), and a server certificate it signed for `names`.
    struct Pki {
        dir: PathBuf,
        ca: String,
        chain: Vec<CertificateDer<'static>>,
        key: Vec<u8>,
        ca_cert: rcgen::Certificate,
        ca_key: KeyPair,
    }

    impl Drop for Pki {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    impl Pki {
        fn new(names: &[&str]) -> Pki {
            static N: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "wsrelay-redis-tls-unit-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            let ca_key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            // A name of its own, as two real CAs have.
            p.distinguished_name
                .push(rcgen::DnType::CommonName, format!("test CA {dir:?}"));
            let ca_cert = p.self_signed(&ca_key).unwrap();
            let key = KeyPair::generate().unwrap();
            let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
            let leaf = CertificateParams::new(names)
                .unwrap()
                .signed_by(&key, &ca_cert, &ca_key)
                .unwrap();
            let ca = dir.join("ca.pem");
            std::fs::write(&ca, ca_cert.pem()).unwrap();
            Pki {
                ca: ca.to_str().unwrap().to_string(),
                chain: vec![leaf.der().clone(), ca_cert.der().clone()],
                key: key.serialize_der(),
                dir,
                ca_cert,
                ca_key,
            }
        }

        fn file(&self, name: &str, text: &str) -> String {
            let p = self.dir.join(name);
            std::fs::write(&p, text).unwrap();
            p.to_str().unwrap().to_string()
        }

        /// A client certificate this CA signed: (chain file, key file).
        fn client_files(&self) -> (String, String) {
            let key = KeyPair::generate().unwrap();
            let cert = CertificateParams::new(vec!["node".to_string()])
                .unwrap()
                .signed_by(&key, &self.ca_cert, &self.ca_key)
                .unwrap();
            (
                self.file("client.pem", &cert.pem()),
                self.file("client.key", &key.serialize_pem()),
            )
        }

        fn server_config(&self) -> Arc<rustls::ServerConfig> {
            let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
            Arc::new(
                rustls::ServerConfig::builder_with_provider(crate::server::tls::provider())
                    .with_protocol_versions(&[&rustls::version::TLS13])
                    .unwrap()
                    .with_no_client_auth()
                    .with_single_cert(self.chain.clone(), key)
                    .unwrap(),
            )
        }
    }

    /// Serves one TLS connection: echoes everything, and asks for a key
    /// update after every `rotate` bytes (the client must answer with its
    /// own while its writer keeps writing). Returns the address and the
    /// thread, which ends with the bytes echoed and key updates sent.
    fn echo_server(
        config: Arc<rustls::ServerConfig>,
        rotate: usize,
    ) -> (
        std::net::SocketAddr,
        std::thread::JoinHandle<(usize, usize)>,
    ) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut sock, _) = l.accept().unwrap();
            sock.set_read_timeout(Some(Duration::from_secs(20)))
                .unwrap();
            let mut conn = rustls::ServerConnection::new(config).unwrap();
            conn.set_buffer_limit(None);
            let (mut echoed, mut updates, mut next) = (0, 0, rotate);
            let mut buf = vec![0; 64 * 1024];
            loop {
                while conn.wants_write() {
                    if conn.write_tls(&mut sock).is_err() {
                        return (echoed, updates);
                    }
                }
                match conn.read_tls(&mut sock) {
                    Ok(0) | Err(_) => return (echoed, updates),
                    Ok(_) => {}
                }
                if conn.process_new_packets().is_err() {
                    let _ = conn.write_tls(&mut sock);
                    return (echoed, updates);
                }
                while let Ok(n @ 1..) = conn.reader().read(&mut buf) {
                    conn.writer().write_all(&buf[..n]).unwrap();
                    echoed += n;
                    if echoed >= next {
                        conn.refresh_traffic_keys().unwrap();
                        updates += 1;
                        next += rotate;
                    }
                }
            }
        });
        (addr, t)
    }

    fn connect(
        addr: std::net::SocketAddr,
        config: Arc<ClientConfig>,
        name: &str,
    ) -> io::Result<TlsStream> {
        let sock = TcpStream::connect(addr).unwrap();
        TlsStream::handshake(
            sock,
            config,
            server_name(name).unwrap(),
            Duration::from_secs(10),
        )
    }

    fn byte(i: usize) -> u8 {
        (i % 251) as u8
    }

    #[test]
    fn a_reader_and_a_writer_thread_share_one_connection() {
        let pki = Pki::new(&["127.0.0.1"]);
        let (addr, server) = echo_server(pki.server_config(), 256 * 1024);
        // An IP literal as the server name, checked against the IP SAN.
        let config = client_config(&pki.ca, "", "").unwrap();
        let mut writer = connect(addr, config, "127.0.0.1").unwrap();
        let mut reader = writer.try_clone().unwrap();
        let closer = writer.try_clone().unwrap();
        const TOTAL: usize = 4 << 20;
        // The reader blocks in read while the writer writes: both at once.
        let (all_tx, all_rx) = std::sync::mpsc::channel();
        let read = std::thread::spawn(move || {
            let mut got = 0;
            let mut buf = vec![0; 7000];
            while got < TOTAL {
                let n = reader.read(&mut buf).unwrap();
                assert!(n > 0, "EOF after {got} bytes");
                for (k, b) in buf[..n].iter().enumerate() {
                    assert_eq!(*b, byte(got + k), "byte {}", got + k);
                }
                got += n;
            }
            all_tx.send(()).unwrap();
            // Blocked with nothing to read: the closer's shutdown ends it.
            let end = reader.read(&mut buf);
            assert!(matches!(end, Ok(0) | Err(_)), "{end:?}");
        });
        let mut sent = 0;
        let mut size = 1;
        while sent < TOTAL {
            let n = size.min(TOTAL - sent);
            let chunk: Vec<u8> = (sent..sent + n).map(byte).collect();
            writer.write_all(&chunk).unwrap();
            sent += n;
            size = size * 7 % 40_000 + 1; // 1 byte to about two records
        }
        // The reader has everything (or failed): unblock it.
        let all = all_rx.recv_timeout(Duration::from_secs(60));
        closer.shutdown();
        read.join().expect("reader checked every byte");
        all.expect("the reader got every byte");
        let (echoed, updates) = server.join().unwrap();
        assert_eq!(echoed, TOTAL);
        assert!(updates >= 15, "the server rotated keys {updates} times");
    }

    #[test]
    fn a_writer_blocked_on_a_full_socket_does_not_hold_up_the_reader() {
        let pki = Pki::new(&["localhost"]);
        let config = pki.server_config();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        // Reads nothing after the handshake until the client's reader got
        // what it sent: the client's writer stays blocked meanwhile.
        let server = std::thread::spawn(move || {
            let (mut sock, _) = l.accept().unwrap();
            let mut conn = rustls::ServerConnection::new(config).unwrap();
            while conn.is_handshaking() {
                conn.complete_io(&mut sock).unwrap();
            }
            go_rx.recv().unwrap();
            conn.writer().write_all(b"while you write").unwrap();
            while conn.wants_write() {
                conn.write_tls(&mut sock).unwrap();
            }
            done_rx.recv().unwrap();
            let mut sink = vec![0; 64 * 1024];
            let mut s = rustls::Stream::new(&mut conn, &mut sock);
            loop {
                match s.read(&mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        });
        let config = client_config(&pki.ca, "", "").unwrap();
        let mut writer = connect(addr, config, "localhost").unwrap();
        let mut reader = writer.try_clone().unwrap();
        let closer = writer.try_clone().unwrap();
        let written = Arc::new(AtomicUsize::new(0));
        let w = written.clone();
        // Far more than the kernel buffers of both ends hold.
        const TOTAL: usize = 256 << 20;
        let writing = std::thread::spawn(move || {
            let chunk = vec![7u8; 64 * 1024];
            while w.load(Ordering::SeqCst) < TOTAL {
                if writer.write_all(&chunk).is_err() {
                    return;
                }
                w.fetch_add(chunk.len(), Ordering::SeqCst);
            }
        });
        // Until the writer stopped making progress (blocked in write).
        let mut last = usize::MAX;
        while written.load(Ordering::SeqCst) != last {
            last = written.load(Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(300));
        }
        assert!(last < TOTAL, "the socket never filled");
        go_tx.send(()).unwrap();
        let (got_tx, got_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut got = [0u8; 15];
            let r = reader.read_exact(&mut got).map(|()| got);
            let _ = got_tx.send(r);
        });
        let got = got_rx
            .recv_timeout(Duration::from_secs(20))
            .expect("the reader was held up by the blocked writer")
            .unwrap();
        assert_eq!(&got, b"while you write");
        assert!(!writing.is_finished(), "the writer was still blocked");
        done_tx.send(()).unwrap();
        // The writer need not send its 256 MiB: stop it.
        closer.shutdown();
        writing.join().unwrap();
        server.join().unwrap();
    }

    #[test]
    fn a_certificate_it_cannot_trust_is_refused_with_the_remedy() {
        let pki = Pki::new(&["localhost"]);
        let other = Pki::new(&["localhost"]);
        let (addr, server) = echo_server(pki.server_config(), usize::MAX);
        let e = connect(addr, client_config(&other.ca, "", "").unwrap(), "localhost")
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid peer certificate: UnknownIssuer"), "{e}");
        assert!(e.contains("is redis_tls_ca the CA"), "{e}");
        server.join().unwrap();
        // Trusted CA, but not the name in the URL.
        let (addr, server) = echo_server(pki.server_config(), usize::MAX);
        let e = connect(
            addr,
            client_config(&pki.ca, "", "").unwrap(),
            "redis.example",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains(
                "invalid peer certificate: certificate not valid for name \"redis.example\""
            ),
            "{e}"
        );
        assert!(e.contains("the host in redis_url must be"), "{e}");
        server.join().unwrap();
    }

    #[test]
    fn a_silent_server_fails_the_handshake_at_its_timeout() {
        let pki = Pki::new(&["localhost"]);
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let _accepted = l.accept().unwrap(); // and never answered
        let config = client_config(&pki.ca, "", "").unwrap();
        // The kind of error says the deadline ended it (no wall-clock
        // window is asserted: socket timeouts may fire a tick early).
        let timeout = Duration::from_millis(200);
        let e = TlsStream::handshake(sock, config, server_name("localhost").unwrap(), timeout)
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut, "{e}");
        // A plain-text server (the wrong port) is told apart from a silent one.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let t = std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            let _ = s.write_all(b"-ERR wrong protocol\r\n");
        });
        let e = connect(addr, client_config(&pki.ca, "", "").unwrap(), "localhost")
            .unwrap_err()
            .to_string();
        t.join().unwrap();
        assert!(e.starts_with("TLS handshake"), "{e}");
    }

    #[test]
    fn the_client_configuration_says_what_is_wrong() {
        let pki = Pki::new(&["localhost"]);
        let err = |ca: &str, cert: &str, key: &str| client_config(ca, cert, key).unwrap_err();
        assert!(err("", "", "").contains("needs redis_tls_ca"));
        let e = err("/nonexistent/ca.pem", "", "");
        assert!(
            e.starts_with("redis_tls_ca \"/nonexistent/ca.pem\": "),
            "{e}"
        );
        let empty = pki.file("empty.pem", "no pem here\n");
        assert!(err(&empty, "", "").contains("no CERTIFICATE in the file"));
        let (cert, key) = pki.client_files();
        assert!(client_config(&pki.ca, &cert, &key).is_ok());
        assert!(err(&pki.ca, &cert, "").contains("go together"));
        // A key of another certificate.
        let stranger = Pki::new(&["x"]);
        let (_, other_key) = stranger.client_files();
        let other = pki.file("other.key", &std::fs::read_to_string(other_key).unwrap());
        let e = err(&pki.ca, &cert, &other);
        assert!(
            e.starts_with(&format!("redis_tls_cert {cert:?} and redis_tls_key")),
            "{e}"
        );
        assert!(err(&pki.ca, &cert, &empty).starts_with("redis_tls_key"));
    }
}
