//! The byte stream under a connection: plain TCP, or TLS (rustls) over TCP.
//! Both offer the same operations (read, write, register, shut down), so
//! nothing above this module knows which it has.
//!
//! TLS is driven by readiness on the worker's loop, as in rustls'
//! `tlsserver-mio` example: a read pulls ciphertext from the socket into
//! rustls, processes it (handshake records are answered at once) and hands
//! out plaintext; a write gives plaintext to rustls and pushes what it
//! encrypted to the socket. Ciphertext rustls could not send yet stays in
//! rustls; [`Transport::wants_write`] tells the connection to keep WRITABLE
//! interest until it has left.
//!
//! **What TLS holds for sending.** A write encrypts at most one record
//! ([`TLS_BUFFER_LIMIT`] of plaintext), and only when rustls holds no
//! ciphertext from an earlier write: while the socket refuses records the
//! write answers `WouldBlock` and the rest stays *plaintext* in the
//! session's outbound queue, where `max_outbound_bytes` judges it. So a
//! TLS connection holds at most `max_outbound_bytes` plus one record of
//! ciphertext (16 KiB + 22 bytes with TLS 1.3, + 29 with TLS 1.2), and a
//! client that stops reading is closed as a slow consumer at the same
//! queue bound as a plain one.

use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::ServerConnection;
use std::io::{self, IoSlice, Read, Write};

/// Most plaintext one write hands rustls: one full TLS record. rustls
/// holds the record's ciphertext until the socket takes it, and takes no
/// more plaintext until then (see the module documentation).
pub const TLS_BUFFER_LIMIT: usize = 16 * 1024;

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

/// A rustls server connection and its socket.
pub struct TlsStream {
    pub tls: ServerConnection,
    pub socket: TcpStream,
}

impl Transport {
    /// A TLS transport over `socket`, before the handshake.
    pub fn tls(mut tls: ServerConnection, socket: TcpStream) -> Transport {
        tls.set_buffer_limit(Some(TLS_BUFFER_LIMIT));
        Transport::Tls(Box::new(TlsStream { tls, socket }))
    }

    /// Ends our side after the last byte (the peer sees EOF, not RST);
    /// over TLS a close_notify alert goes first.
    pub fn shutdown_write(&mut self) {
        match self {
            Transport::Plain(s) => {
                let _ = s.shutdown(std::net::Shutdown::Write);
            }
            Transport::Tls(t) => {
                t.tls.send_close_notify();
                let _ = t.push();
                let _ = t.socket.shutdown(std::net::Shutdown::Write);
            }
        }
    }

    /// Whether the transport itself holds bytes for the socket (TLS
    /// records not yet written): the connection keeps WRITABLE interest.
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => t.tls.wants_write(),
        }
    }

    /// Writes what the transport holds for the socket (TLS records from a
    /// handshake, or encrypted output the socket refused earlier).
    pub fn push(&mut self) -> io::Result<()> {
        match self {
            Transport::Plain(_) => Ok(()),
            Transport::Tls(t) => t.push(),
        }
    }

    /// Whether a read shorter than the buffer means the socket is empty
    /// (plain TCP). Over TLS it does not: a record's plaintext can end
    /// before the buffer while more ciphertext waits in the socket.
    pub fn short_read_drains(&self) -> bool {
        matches!(self, Transport::Plain(_))
    }

    /// Whether this is a TLS connection whose handshake did not complete
    /// (still running, or failed).
    pub fn in_tls_handshake(&self) -> bool {
        matches!(self, Transport::Tls(t) if t.tls.is_handshaking())
    }

    /// Whether the TLS handshake is complete (always, for plain TCP).
    pub fn handshake_done(&self) -> bool {
        match self {
            Transport::Plain(_) => true,
            Transport::Tls(t) => !t.tls.is_handshaking(),
        }
    }
}

impl TlsStream {
    /// Writes pending TLS records until rustls has none or the socket
    /// refuses more (`WouldBlock`, returned as `Ok`: WRITABLE will come).
    fn push(&mut self) -> io::Result<()> {
        while self.tls.wants_write() {
            match self.tls.write_tls(&mut self.socket) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            // Plaintext already decrypted first.
            match self.tls.reader().read(buf) {
                Ok(n) => return Ok(n), // 0: the peer sent close_notify
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
            match self.tls.read_tls(&mut self.socket) {
                // EOF without close_notify: the reader reports it next.
                Ok(0) => {
                    return match self.tls.reader().read(buf) {
                        Ok(n) => Ok(n),
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(0),
                        Err(_) => Ok(0),
                    };
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
            if let Err(e) = self.tls.process_new_packets() {
                // Tell the peer why (rustls queued an alert), then fail.
                let _ = self.push();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            // Handshake answers (and key updates) leave at once.
            self.push()?;
        }
    }

    /// Pushes what rustls holds; `WouldBlock` while it still holds
    /// anything, so no more plaintext is encrypted before the socket took
    /// the previous record.
    fn ready_for_plaintext(&mut self) -> io::Result<()> {
        self.push()?;
        if self.tls.wants_write() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    }

    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.ready_for_plaintext()?;
        let n = self.tls.writer().write(buf)?;
        self.push()?;
        if n == 0 {
            // Before the handshake completed rustls buffers plaintext
            // under the same limit: wait for the handshake.
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        if bufs.iter().all(|b| b.is_empty()) {
            return Ok(0);
        }
        self.ready_for_plaintext()?;
        let n = self.tls.writer().write_vectored(bufs)?;
        self.push()?;
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    }
}

impl Read for Transport {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.read(buf),
            Transport::Tls(t) => t.read(buf),
        }
    }
}

impl Write for Transport {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write(buf),
            Transport::Tls(t) => t.write(buf),
        }
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Plain(s) => s.write_vectored(bufs),
            Transport::Tls(t) => t.write_vectored(bufs),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        self.push()
    }
}

impl Source for Transport {
    fn register(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.register(r, t, i),
            Transport::Tls(s) => s.socket.register(r, t, i),
        }
    }

    fn reregister(&mut self, r: &Registry, t: Token, i: Interest) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.reregister(r, t, i),
            Transport::Tls(s) => s.socket.reregister(r, t, i),
        }
    }

    fn deregister(&mut self, r: &Registry) -> io::Result<()> {
        match self {
            Transport::Plain(s) => s.deregister(r),
            Transport::Tls(s) => s.socket.deregister(r),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
    use std::sync::Arc;

    /// A self-signed certificate for `localhost`, made now, and configs for
    /// a server holding it and a client trusting it.
    fn configs() -> (Arc<rustls::ServerConfig>, Arc<rustls::ClientConfig>) {
        let key = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let cert = CertificateDer::from(key.cert.der().to_vec());
        let pkey = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.key_pair.serialize_der()));
        let provider = crate::server::tls::provider();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.clone()], pkey)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(cert).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(server), Arc::new(client))
    }

    /// A TLS echo over the readiness-driven transport, with more data than
    /// rustls' buffer limit so writes meet `WouldBlock` and WRITABLE
    /// interest carries the rest.
    #[test]
    fn tls_echo_over_readiness() {
        let (server, client) = configs();
        let mut listener = mio::net::TcpListener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = listener.local_addr().unwrap();
        let total = 4 * TLS_BUFFER_LIMIT + 123;
        let peer = std::thread::spawn(move || {
            let sock = std::net::TcpStream::connect(addr).unwrap();
            let name = "localhost".try_into().unwrap();
            let conn = rustls::ClientConnection::new(client, name).unwrap();
            let mut s = rustls::StreamOwned::new(conn, sock);
            let data: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
            // Write everything, then read the echo back.
            s.write_all(&data).unwrap();
            s.flush().unwrap();
            let mut back = vec![0u8; total];
            s.read_exact(&mut back).unwrap();
            assert!(back == data, "echo differs");
        });

        let mut poll = mio::Poll::new().unwrap();
        poll.registry()
            .register(&mut listener, Token(0), Interest::READABLE)
            .unwrap();
        let mut events = mio::Events::with_capacity(16);
        let mut conn: Option<Transport> = None;
        let mut pending: Vec<u8> = Vec::new();
        let mut echoed = 0usize;
        let mut buf = vec![0u8; 16 * 1024];
        while echoed < total {
            poll.poll(&mut events, Some(std::time::Duration::from_secs(10)))
                .unwrap();
            assert!(!events.is_empty(), "stalled after {echoed} bytes");
            for ev in events.iter() {
                if ev.token() == Token(0) {
                    let (sock, _) = listener.accept().unwrap();
                    let tls = ServerConnection::new(server.clone()).unwrap();
                    let mut t = Transport::tls(tls, sock);
                    poll.registry()
                        .register(&mut t, Token(1), Interest::READABLE)
                        .unwrap();
                    conn = Some(t);
                    continue;
                }
            }
            let t = conn.as_mut().unwrap();
            loop {
                match t.read(&mut buf) {
                    Ok(0) => panic!("peer closed early"),
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("read: {e}"),
                }
            }
            t.push().unwrap();
            while !pending.is_empty() {
                match t.write(&pending) {
                    Ok(n) => {
                        echoed += n;
                        pending.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => panic!("write: {e}"),
                }
            }
            let interest = if t.wants_write() || !pending.is_empty() {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            poll.registry().reregister(t, Token(1), interest).unwrap();
        }
        // The last records leave.
        let t = conn.as_mut().unwrap();
        while t.wants_write() {
            t.push().unwrap();
            if t.wants_write() {
                poll.registry()
                    .reregister(t, Token(1), Interest::WRITABLE)
                    .unwrap();
                poll.poll(&mut events, Some(std::time::Duration::from_secs(10)))
                    .unwrap();
            }
        }
        assert!(t.handshake_done());
        peer.join().unwrap();
    }

    /// A peer that completes the handshake and then never reads: writes
    /// end in `WouldBlock` once the socket is full, and rustls then holds
    /// at most one record of ciphertext (everything else stays with the
    /// caller, as plaintext under the session's bound).
    #[test]
    fn a_stalled_peer_leaves_at_most_one_record_in_rustls() {
        let (server, client) = configs();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
        let peer = std::thread::spawn(move || {
            let sock = std::net::TcpStream::connect(addr).unwrap();
            let name = "localhost".try_into().unwrap();
            let conn = rustls::ClientConnection::new(client, name).unwrap();
            let mut s = rustls::StreamOwned::new(conn, sock);
            while s.conn.is_handshaking() {
                s.conn.complete_io(&mut s.sock).unwrap();
            }
            // Never reads application data.
            let _ = stop_rx.recv();
        });
        let (sock, _) = listener.accept().unwrap();
        sock.set_nonblocking(true).unwrap();
        let sock = TcpStream::from_std(sock);
        let mut t = Transport::tls(ServerConnection::new(server).unwrap(), sock);
        let mut buf = [0u8; 1024];
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while !t.handshake_done() || t.wants_write() {
            assert!(std::time::Instant::now() < deadline, "no handshake");
            match t.read(&mut buf) {
                Ok(0) => panic!("peer closed"),
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => panic!("{e}"),
            }
            t.push().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let data = vec![7u8; 100 * 1024];
        let mut accepted = 0usize;
        loop {
            assert!(accepted < 1 << 30, "the socket never filled");
            match t.write(&data) {
                Ok(n) => {
                    assert!(n <= TLS_BUFFER_LIMIT, "{n} bytes taken in one write");
                    accepted += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(t.wants_write(), "the socket refused nothing?");
        // What rustls holds now: drain it into a Vec to count it.
        let Transport::Tls(s) = &mut t else {
            unreachable!()
        };
        let mut held = Vec::new();
        while s.tls.wants_write() {
            s.tls.write_tls(&mut held).unwrap();
        }
        assert!(
            !held.is_empty() && held.len() <= TLS_BUFFER_LIMIT + 64,
            "rustls held {} bytes of ciphertext ({accepted} accepted)",
            held.len()
        );
        stop_tx.send(()).unwrap();
        peer.join().unwrap();
    }
}
