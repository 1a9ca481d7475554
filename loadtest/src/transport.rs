//! The byte stream under a load connection: plain TCP (`ws://`) or TLS
//! over TCP (`wss://`, rustls with the aws-lc-rs provider, as the relay).
//!
//! TLS is driven by readiness on the worker's mio loop, as the relay's
//! `src/server/transport.rs` and rustls' `tlsclient-mio` example do: a read
//! pulls ciphertext from the socket into rustls, processes it (handshake
//! records are answered at once) and hands out plaintext; a write gives
//! plaintext to rustls (which holds it until the handshake is done) and
//! pushes the records it made to the socket. Records the socket refused
//! stay in rustls until the next WRITABLE edge ([`Stream::push`]).
//!
//! Both kinds count the bytes that crossed the socket (TLS records and
//! all), so the report can put wire bytes beside payload bytes.

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme};
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::Arc;

/// Most plaintext + ciphertext rustls holds for sending on one connection
/// (the relay's bound); beyond it a write takes nothing and the worker
/// keeps the rest in the connection's own queue.
pub const TLS_BUFFER_LIMIT: usize = 64 * 1024;

/// What every `wss://` connection of a run shares: the client
/// configuration (one per process; with `--tls-resume` its session cache
/// is shared by all workers) and the server name from the URL.
#[derive(Clone)]
pub struct TlsClient {
    pub config: Arc<ClientConfig>,
    pub name: ServerName<'static>,
}

impl std::fmt::Debug for TlsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsClient")
            .field("name", &self.name)
            .finish()
    }
}

/// How the server's certificate is checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trust {
    /// Against this CA (PEM file, one or more certificates).
    CaFile(std::path::PathBuf),
    /// Not at all (`--insecure`, test certificates only).
    Insecure,
}

impl TlsClient {
    /// The configuration for `host` (the URL's host: a DNS name, sent as
    /// SNI, or an IP literal, checked against the certificate's IP SANs).
    /// TLS 1.3 and 1.2, ALPN `http/1.1`; session resumption only with
    /// `resume` (otherwise every connection makes a full handshake, which
    /// is what a handshake benchmark should measure by default).
    pub fn new(host: &str, trust: &Trust, resume: bool) -> Result<TlsClient, String> {
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .map_err(|e| format!("TLS: {e}"))?;
        let mut config = match trust {
            Trust::CaFile(path) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in load_certs(path)? {
                    roots
                        .add(cert)
                        .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            Trust::Insecure => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
                .with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        config.resumption = if resume {
            rustls::client::Resumption::store(Arc::new(SessionStore::default()))
        } else {
            rustls::client::Resumption::disabled()
        };
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        let name = ServerName::try_from(bare.to_string())
            .map_err(|_| format!("{host:?} is not a valid TLS server name"))?;
        Ok(TlsClient {
            config: Arc::new(config),
            name,
        })
    }
}

/// `--tls-resume`: the client's session cache, shared by every worker.
///
/// rustls' own `ClientSessionMemoryCache` keeps at most 8 TLS 1.3 tickets
/// per server: with more connections than that opening at once (churn
/// with 20 slots), the rest would make full handshakes for want of a
/// ticket, and the figure would measure the cache, not the server. This
/// one keeps up to [`TICKETS`] tickets per server (each used at most
/// once, as rustls requires), oldest dropped first.
#[derive(Debug, Default)]
struct SessionStore {
    inner: std::sync::Mutex<Sessions>,
}

#[derive(Debug, Default)]
struct Sessions {
    kx: std::collections::HashMap<ServerName<'static>, rustls::NamedGroup>,
    tls12: std::collections::HashMap<ServerName<'static>, rustls::client::Tls12ClientSessionValue>,
    tls13: std::collections::HashMap<
        ServerName<'static>,
        std::collections::VecDeque<rustls::client::Tls13ClientSessionValue>,
    >,
}

/// TLS 1.3 tickets kept per server name.
const TICKETS: usize = 4096;

impl SessionStore {
    fn lock(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl rustls::client::ClientSessionStore for SessionStore {
    fn set_kx_hint(&self, name: ServerName<'static>, group: rustls::NamedGroup) {
        self.lock().kx.insert(name, group);
    }

    fn kx_hint(&self, name: &ServerName<'_>) -> Option<rustls::NamedGroup> {
        self.lock().kx.get(&name.to_owned()).copied()
    }

    fn set_tls12_session(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls12ClientSessionValue,
    ) {
        self.lock().tls12.insert(name, value);
    }

    fn tls12_session(
        &self,
        name: &ServerName<'_>,
    ) -> Option<rustls::client::Tls12ClientSessionValue> {
        self.lock().tls12.get(&name.to_owned()).cloned()
    }

    fn remove_tls12_session(&self, name: &ServerName<'static>) {
        self.lock().tls12.remove(name);
    }

    fn insert_tls13_ticket(
        &self,
        name: ServerName<'static>,
        value: rustls::client::Tls13ClientSessionValue,
    ) {
        let mut s = self.lock();
        let q = s.tls13.entry(name).or_default();
        if q.len() >= TICKETS {
            q.pop_front();
        }
        q.push_back(value);
    }

    fn take_tls13_ticket(
        &self,
        name: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        self.lock().tls13.get_mut(name).and_then(|q| q.pop_back())
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    use rustls::pki_types::pem::PemObject;
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("--ca-file {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "--ca-file {}: no CERTIFICATE in the file",
            path.display()
        ));
    }
    Ok(certs)
}

/// `--insecure`: accepts any certificate (still checks that the server
/// signed the handshake with the key of the certificate it sent).
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

pub enum Stream {
    Plain(Counted),
    Tls(Box<TlsStream>),
}

/// A TCP socket and the bytes that crossed it.
pub struct Counted {
    pub socket: TcpStream,
    pub wire_in: u64,
    pub wire_out: u64,
}

pub struct TlsStream {
    pub tls: ClientConnection,
    pub sock: Counted,
    /// The handshake's outcome was counted (see [`Stream::handshake_news`]).
    reported: bool,
    /// When the read that completed the handshake returned (0: not yet).
    done_ns: u64,
}

/// A TLS handshake that just completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HandshakeNews {
    Full,
    Resumed,
}

/// rustls' errors as I/O errors, named so the failure table says "tls".
fn tls_error(e: rustls::Error) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("tls: {e}"))
}

impl Stream {
    pub fn plain(socket: TcpStream) -> Stream {
        Stream::Plain(Counted {
            socket,
            wire_in: 0,
            wire_out: 0,
        })
    }

    /// A TLS stream over a connecting socket; the ClientHello leaves on
    /// the first [`Stream::push`] after the TCP connect completes.
    pub fn tls(client: &TlsClient, socket: TcpStream) -> io::Result<Stream> {
        let mut tls =
            ClientConnection::new(client.config.clone(), client.name.clone()).map_err(tls_error)?;
        tls.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Ok(Stream::Tls(Box::new(TlsStream {
            tls,
            sock: Counted {
                socket,
                wire_in: 0,
                wire_out: 0,
            },
            reported: false,
            done_ns: 0,
        })))
    }

    pub fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(s) => &s.socket,
            Stream::Tls(t) => &t.sock.socket,
        }
    }

    /// Bytes read from and written to the socket since the last call.
    pub fn take_wire(&mut self) -> (u64, u64) {
        let c = match self {
            Stream::Plain(s) => s,
            Stream::Tls(t) => &mut t.sock,
        };
        (
            std::mem::take(&mut c.wire_in),
            std::mem::take(&mut c.wire_out),
        )
    }

    /// Whether a read shorter than the buffer means the socket is empty
    /// (plain TCP). Over TLS it does not: one record's plaintext can end
    /// short while more ciphertext waits in the socket.
    pub fn short_read_drains(&self) -> bool {
        matches!(self, Stream::Plain(_))
    }

    /// Whether a TLS handshake is still in progress.
    pub fn tls_handshaking(&self) -> bool {
        matches!(self, Stream::Tls(t) if t.tls.is_handshaking())
    }

    /// Once per connection, when its TLS handshake has completed: whether
    /// it was a full handshake or a resumption, and when (`now_ns`) the
    /// read that completed it ended.
    pub fn handshake_news(&mut self) -> Option<(HandshakeNews, u64)> {
        let Stream::Tls(t) = self else { return None };
        if t.reported || t.done_ns == 0 {
            return None;
        }
        t.reported = true;
        let kind = match t.tls.handshake_kind() {
            Some(rustls::HandshakeKind::Resumed) => HandshakeNews::Resumed,
            _ => HandshakeNews::Full,
        };
        Some((kind, t.done_ns))
    }

    /// Writes what rustls holds for the socket (handshake records, or
    /// records the socket refused earlier); `WouldBlock` is not an error
    /// (WRITABLE will come).
    pub fn push(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(_) => Ok(()),
            Stream::Tls(t) => t.push(),
        }
    }
}

impl TlsStream {
    fn push(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.sock) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Fills `buf` with plaintext as far as the socket has records for it
    /// (one call, not one record per call: a large message over TLS would
    /// otherwise take a read per 16 KiB record). Short of `buf`: the socket
    /// is drained (`WouldBlock` next), or the stream ended (0 next).
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let mut filled = 0;
        loop {
            if filled == buf.len() {
                return Ok(filled);
            }
            // Plaintext already decrypted first.
            match self.tls.reader().read(&mut buf[filled..]) {
                Ok(0) => return Ok(filled), // the server sent close_notify
                Ok(n) => {
                    filled += n;
                    continue;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // EOF without close_notify: treated as EOF (the
                // WebSocket close handshake tells clean from not).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(filled),
                Err(e) => return Err(e),
            }
            match self.tls.read_tls(&mut self.sock) {
                Ok(0) => {
                    // EOF: what rustls still holds, then 0 on the next call.
                    return match self.tls.reader().read(&mut buf[filled..]) {
                        Ok(n) => Ok(filled + n),
                        Err(_) => Ok(filled),
                    };
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && filled > 0 => return Ok(filled),
                Err(e) => return Err(e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                // Tell the server why (rustls queued an alert), then fail.
                let _ = self.push();
                return Err(tls_error(e));
            }
            if self.done_ns == 0 && !self.tls.is_handshaking() {
                self.done_ns = crate::clock::now_ns();
            }
            // Handshake answers leave at once.
            self.push()?;
        }
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.push()?;
        let n = self.tls.writer().write(buf)?;
        self.push()?;
        if n == 0 && !buf.is_empty() {
            // rustls holds its limit: wait for the socket to take some.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.socket.read(buf)?;
        self.wire_in += n as u64;
        Ok(n)
    }
}

impl Write for Counted {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.socket.write(buf)?;
        self.wire_out += n as u64;
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[io::IoSlice<'_>]) -> io::Result<usize> {
        let n = self.socket.write_vectored(bufs)?;
        self.wire_out += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.read(buf),
            Stream::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(s) => s.write(buf),
            Stream::Tls(t) => t.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push()
    }
}

impl Source for Stream {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.socket.register(r, t, i),
            Stream::Tls(s) => s.sock.socket.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.socket.reregister(r, t, i),
            Stream::Tls(s) => s.sock.socket.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Stream::Plain(s) => s.socket.deregister(r),
            Stream::Tls(s) => s.sock.socket.deregister(r),
        }
    }
}
