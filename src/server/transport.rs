//! The byte stream under a connection: plain TCP, or TLS (rustls) over TCP.
//! Both offer the same operations (read, write, register, shut down), so
//! nothing above this module knows which it has.
//!
//! TLS is driven by readiness on the worker's loop with rustls'
//! *unbuffered* API ([`UnbufferedServerConnection`]): rustls keeps the
//! protocol state and the keys, and this module owns every buffer. A read
//! pulls ciphertext from the socket into the worker thread's scratch
//! buffer, has rustls process the records in it (handshake records are
//! answered at once) and hands out the plaintext; a write encrypts into
//! the worker's other scratch buffer and gives the records to the socket.
//! Only what must outlive the call stays with the connection, in buffers
//! allocated for the occasion and freed once empty: the tail of a record
//! that arrived in part, ciphertext the socket refused, plaintext of a
//! record longer than the reader's buffer. **An idle TLS connection holds
//! no buffer**: just rustls' state (keys, secrets for resumption), see
//! `tests/tls_memory.rs`.
//!
//! **What TLS holds for sending.** A write encrypts at most one record
//! ([`TLS_BUFFER_LIMIT`] of plaintext), and only when no ciphertext from
//! an earlier write is waiting: while the socket refuses records the
//! write answers `WouldBlock` and the rest stays *plaintext* in the
//! session's outbound queue, where `max_outbound_bytes` judges it. So a
//! TLS connection holds at most `max_outbound_bytes` plus one record of
//! ciphertext (16 KiB + 22 bytes with TLS 1.3, + 29 with TLS 1.2), and a
//! client that stops reading is closed as a slow consumer at the same
//! queue bound as a plain one.

use crate::metrics::TlsFailure;
use mio::event::Source;
use mio::net::TcpStream;
use mio::{Interest, Registry, Token};
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncodeError, EncryptError, UnbufferedStatus};
use std::cell::RefCell;
use std::io::{self, IoSlice, Read, Write};

/// Most plaintext one write encrypts: one full TLS record. Its ciphertext
/// stays with the connection until the socket takes it, and no more
/// plaintext is taken until then (see the module documentation).
pub const TLS_BUFFER_LIMIT: usize = 16 * 1024;

/// Largest record on the wire: 5 bytes of header, 2^14 bytes of plaintext
/// and up to 2048 bytes of expansion (TLS 1.2's limit; 1.3 allows 256).
const MAX_RECORD: usize = 5 + 16 * 1024 + 2048;

/// Most ciphertext received and not yet processed: a handshake message of
/// rustls' maximum size (64 KiB) arriving across records, plus the record
/// headers. A connection holding this much without progress is failed.
const MAX_INCOMING: usize = 64 * 1024 + MAX_RECORD;

/// A plaintext write of [`TLS_BUFFER_LIMIT`] encrypts to at most this.
const MAX_OUTGOING: usize = TLS_BUFFER_LIMIT + 2048 + 5;

thread_local! {
    /// The worker thread's buffers for TLS: ciphertext being read and
    /// processed, plaintext being gathered, ciphertext being written.
    /// Borrowed for the length of one read or write, never across calls.
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
}

/// Bytes of TLS scratch buffers the calling thread holds (one set per
/// worker, shared by all its connections).
pub fn scratch_bytes() -> usize {
    SCRATCH.with(|s| {
        let s = s.borrow();
        s.incoming.capacity() + s.plain.capacity() + s.outgoing.capacity()
    })
}

#[derive(Default)]
struct Scratch {
    incoming: Vec<u8>,
    plain: Vec<u8>,
    outgoing: Vec<u8>,
}

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream>),
}

/// A rustls server connection, its socket, and what must be kept between
/// calls (each empty, and unallocated, most of the time).
pub struct TlsStream {
    pub tls: UnbufferedServerConnection,
    pub socket: TcpStream,
    /// Ciphertext received and not yet processed (a record in part).
    incoming: Vec<u8>,
    /// Ciphertext for the socket that it has not taken yet, from `sent`.
    outgoing: Vec<u8>,
    sent: usize,
    /// Plaintext decrypted and not handed out yet, from `given`.
    plaintext: Vec<u8>,
    given: usize,
    /// The peer's close_notify arrived, or its side ended (EOF).
    read_closed: bool,
    /// Our close_notify was queued.
    close_notify_queued: bool,
    /// Why rustls failed the connection, if it did.
    failure: Option<TlsFailure>,
}

impl Transport {
    /// A TLS transport over `socket`, before the handshake.
    pub fn tls(tls: UnbufferedServerConnection, socket: TcpStream) -> Transport {
        Transport::Tls(Box::new(TlsStream {
            tls,
            socket,
            incoming: Vec::new(),
            outgoing: Vec::new(),
            sent: 0,
            plaintext: Vec::new(),
            given: 0,
            read_closed: false,
            close_notify_queued: false,
            failure: None,
        }))
    }

    /// Ends our side after the last byte (the peer sees EOF, not RST);
    /// over TLS a close_notify alert goes first (once the handshake is
    /// complete). Returns whether everything was handed to the kernel.
    pub fn shutdown_write(&mut self) -> bool {
        match self {
            Transport::Plain(s) => {
                let _ = s.shutdown(std::net::Shutdown::Write);
                true
            }
            Transport::Tls(t) => {
                t.queue_close_notify();
                let _ = t.push();
                let all = t.outgoing.is_empty();
                let _ = t.socket.shutdown(std::net::Shutdown::Write);
                all
            }
        }
    }

    /// The connection is done (everything the session had to say was
    /// written to the transport): over TLS, queues close_notify after it
    /// and pushes. Returns whether bytes still wait for the socket (the
    /// connection must stay until WRITABLE took them: closing now would
    /// cut the last records, e.g. a close frame or an HTTP refusal).
    pub fn finish(&mut self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => {
                t.queue_close_notify();
                t.push().is_ok() && !t.outgoing.is_empty()
            }
        }
    }

    /// Whether the transport itself holds bytes for the socket (TLS
    /// records not yet written): the connection keeps WRITABLE interest.
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(t) => !t.outgoing.is_empty(),
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

    /// Why a TLS connection failed or, for one that ends before its
    /// handshake completed without a TLS error, whether the client left
    /// (EOF) or the server ended it (deadline, shutdown). `None` for plain
    /// TCP and TLS connections that did not fail.
    pub fn tls_failure(&self) -> Option<TlsFailure> {
        match self {
            Transport::Plain(_) => None,
            Transport::Tls(t) if t.failure.is_some() => t.failure,
            Transport::Tls(t) if t.tls.is_handshaking() => Some(if t.read_closed {
                TlsFailure::Eof
            } else {
                TlsFailure::Timeout
            }),
            Transport::Tls(_) => None,
        }
    }

    /// Heap bytes the transport holds beyond rustls' own state (buffers
    /// kept between calls): 0 for plain TCP and idle TLS connections.
    pub fn buffered_bytes(&self) -> usize {
        match self {
            Transport::Plain(_) => 0,
            Transport::Tls(t) => {
                t.incoming.capacity() + t.outgoing.capacity() + t.plaintext.capacity()
            }
        }
    }
}

/// What processing the buffered ciphertext came to.
enum Step {
    /// Plaintext was produced (into the reader's buffer, and `plaintext`
    /// for what did not fit).
    Data,
    /// More ciphertext is needed (handshake, or the next record).
    NeedInput,
    /// The peer sent close_notify.
    PeerClosed,
}

impl TlsStream {
    /// Writes ciphertext held for the socket until none is left or the
    /// socket refuses more (`WouldBlock`, returned as `Ok`: WRITABLE will
    /// come). The buffer is freed once empty.
    fn push(&mut self) -> io::Result<()> {
        while self.sent < self.outgoing.len() {
            match self.socket.write(&self.outgoing[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Ok(())
    }

    /// Gives `data` (ciphertext) to the socket; what it refuses is kept.
    fn send(&mut self, data: &[u8]) -> io::Result<()> {
        if self.outgoing.is_empty() {
            let mut done = 0;
            while done < data.len() {
                match self.socket.write(&data[done..]) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => done += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
            if done < data.len() {
                self.outgoing = data[done..].to_vec();
            }
            Ok(())
        } else {
            self.outgoing.extend_from_slice(data);
            self.push()
        }
    }

    /// Has rustls process `incoming` (ciphertext, from the start) until it
    /// needs more; handshake records it emits are sent (or kept for the
    /// socket). Plaintext goes to `out` from `*filled` on, what does not
    /// fit to `plaintext`. Returns the step and how many bytes of
    /// `incoming` were consumed.
    fn process(
        &mut self,
        incoming: &mut [u8],
        out: &mut [u8],
        filled: &mut usize,
    ) -> (io::Result<Step>, usize) {
        let mut consumed = 0;
        loop {
            let UnbufferedStatus { discard, state } =
                self.tls.process_tls_records(&mut incoming[consumed..]);
            let step = match state {
                Err(e) => {
                    // Tell the peer why: rustls queued an alert, which
                    // the next call hands out for encoding.
                    consumed += discard;
                    self.send_alert(&mut incoming[consumed..]);
                    self.failure = Some(TlsFailure::of(&e));
                    return (Err(io::Error::new(io::ErrorKind::InvalidData, e)), consumed);
                }
                Ok(ConnectionState::ReadTraffic(mut r)) => {
                    let mut extra = 0;
                    while let Some(record) = r.next_record() {
                        match record {
                            Ok(rec) => {
                                extra += rec.discard;
                                let p = rec.payload;
                                // Straight to the reader while nothing is
                                // held (order kept), the rest held.
                                let direct = if self.plaintext.is_empty() {
                                    p.len().min(out.len() - *filled)
                                } else {
                                    0
                                };
                                out[*filled..*filled + direct].copy_from_slice(&p[..direct]);
                                *filled += direct;
                                self.plaintext.extend_from_slice(&p[direct..]);
                            }
                            Err(e) => {
                                self.failure = Some(TlsFailure::of(&e));
                                return (
                                    Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                                    consumed + discard + extra,
                                );
                            }
                        }
                    }
                    consumed += extra;
                    None
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    let mut buf = vec![0u8; 1024];
                    let n = loop {
                        match e.encode(&mut buf) {
                            Ok(n) => break n,
                            Err(EncodeError::InsufficientSize(s)) => buf.resize(s.required_size, 0),
                            Err(EncodeError::AlreadyEncoded) => break 0,
                        }
                    };
                    buf.truncate(n);
                    self.outgoing.extend_from_slice(&buf);
                    None
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    // Sent now or kept (in order) for WRITABLE: either
                    // way rustls may forget it.
                    t.done();
                    if let Err(e) = self.push() {
                        return (Err(e), consumed + discard);
                    }
                    None
                }
                Ok(ConnectionState::PeerClosed) | Ok(ConnectionState::Closed) => {
                    Some(Step::PeerClosed)
                }
                Ok(ConnectionState::BlockedHandshake) | Ok(ConnectionState::WriteTraffic(_)) => {
                    Some(Step::NeedInput)
                }
                Ok(_) => {
                    // Early data (never enabled) or a future state.
                    let e = rustls::Error::General("unexpected TLS state".into());
                    self.failure = Some(TlsFailure::of(&e));
                    return (
                        Err(io::Error::new(io::ErrorKind::InvalidData, e)),
                        consumed + discard,
                    );
                }
            };
            consumed += discard;
            if let Some(step) = step {
                let data = *filled > 0 || self.given < self.plaintext.len();
                if data && matches!(step, Step::NeedInput) {
                    return (Ok(Step::Data), consumed);
                }
                return (Ok(step), consumed);
            }
        }
    }

    /// After a failure: the alert rustls queued, sent best effort.
    /// `incoming` must be what rustls last saw (less what it discarded):
    /// it keeps positions in it. Called once: rustls hands out the queued
    /// alert before it looks at the input again, and looking again would
    /// fail again.
    fn send_alert(&mut self, incoming: &mut [u8]) {
        let UnbufferedStatus { state, .. } = self.tls.process_tls_records(incoming);
        if let Ok(ConnectionState::EncodeTlsData(mut e)) = state {
            let mut buf = [0u8; 64];
            if let Ok(n) = e.encode(&mut buf) {
                self.outgoing.extend_from_slice(&buf[..n]);
            }
        }
        let _ = self.push();
    }

    /// Hands out decrypted plaintext held from an earlier record.
    fn give(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.plaintext.len() - self.given);
        buf[..n].copy_from_slice(&self.plaintext[self.given..self.given + n]);
        self.given += n;
        if self.given == self.plaintext.len() {
            self.plaintext = Vec::new();
            self.given = 0;
        }
        n
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.given < self.plaintext.len() {
            return Ok(self.give(buf));
        }
        if self.failure.is_some() {
            return Err(io::ErrorKind::InvalidData.into());
        }
        if self.read_closed || buf.is_empty() {
            return Ok(0);
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let incoming = &mut scratch.incoming;
            if incoming.len() < MAX_INCOMING {
                incoming.resize(MAX_INCOMING, 0);
            }
            // What is left of the last read first.
            let mut used = self.incoming.len();
            incoming[..used].copy_from_slice(&self.incoming);
            self.incoming = Vec::new();
            let result = self.read_with(buf, incoming, &mut used);
            if used > 0 {
                self.incoming = incoming[..used].to_vec();
            }
            result
        })
    }

    /// [`TlsStream::read`] with the scratch buffer `incoming`, whose first
    /// `used` bytes are ciphertext not yet processed.
    fn read_with(
        &mut self,
        buf: &mut [u8],
        incoming: &mut [u8],
        used: &mut usize,
    ) -> io::Result<usize> {
        loop {
            let mut filled = 0;
            let (step, consumed) = self.process(&mut incoming[..*used], buf, &mut filled);
            incoming.copy_within(consumed..*used, 0);
            *used -= consumed;
            match step? {
                Step::Data => return Ok(filled + self.give(&mut buf[filled..])),
                Step::PeerClosed => {
                    self.read_closed = true;
                    // Data before the close_notify first (0: none).
                    return Ok(filled + self.give(&mut buf[filled..]));
                }
                Step::NeedInput => {}
            }
            // Read at most what fills the caller's buffer, and at least a
            // whole record: plaintext left over stays small.
            let want = (*used + buf.len().max(MAX_RECORD)).min(incoming.len());
            if *used >= want {
                let e = rustls::Error::General("TLS message too large".into());
                self.failure = Some(TlsFailure::of(&e));
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
            match self.socket.read(&mut incoming[*used..want]) {
                Ok(0) => {
                    // EOF without close_notify.
                    self.read_closed = true;
                    return Ok(0);
                }
                Ok(n) => *used += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Encrypts up to one record of `bufs` and gives it to the socket:
    /// `WouldBlock` while ciphertext from an earlier write is still held
    /// or the handshake is not complete.
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        let total: usize = bufs.iter().map(|b| b.len()).sum();
        if total == 0 {
            return Ok(0);
        }
        if self.failure.is_some() {
            return Err(io::ErrorKind::InvalidData.into());
        }
        self.push()?;
        if !self.outgoing.is_empty() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        SCRATCH.with(|scratch| {
            let mut scratch = scratch.borrow_mut();
            let Scratch {
                plain, outgoing, ..
            } = &mut *scratch;
            if outgoing.len() < MAX_OUTGOING {
                outgoing.resize(MAX_OUTGOING, 0);
            }
            // One record's worth: straight from the first slice when it
            // alone makes the record, else gathered into `plain`.
            let mut nonempty = bufs.iter().filter(|b| !b.is_empty());
            let first: &[u8] = nonempty.next().map_or(&[], |b| b);
            let record: &[u8] = if first.len() >= TLS_BUFFER_LIMIT || nonempty.next().is_none() {
                &first[..first.len().min(TLS_BUFFER_LIMIT)]
            } else {
                plain.clear();
                for b in bufs {
                    let room = TLS_BUFFER_LIMIT - plain.len();
                    if room == 0 {
                        break;
                    }
                    plain.extend_from_slice(&b[..b.len().min(room)]);
                }
                plain
            };
            let n = self.encrypt(record, outgoing)?;
            self.send(&outgoing[..n])?;
            Ok(record.len())
        })
    }

    /// Encrypts `plain` into `out` once rustls allows application data
    /// (emitting any handshake records it has first). Returns the
    /// ciphertext length.
    fn encrypt(&mut self, plain: &[u8], out: &mut [u8]) -> io::Result<usize> {
        let mut incoming = std::mem::take(&mut self.incoming);
        // Reads process every complete record, so nothing is discarded
        // here; should rustls consume something anyway, it is dropped.
        let mut discarded = 0;
        let result = loop {
            let UnbufferedStatus { discard, state } =
                self.tls.process_tls_records(&mut incoming[discarded..]);
            discarded += discard;
            match state {
                Ok(ConnectionState::WriteTraffic(mut w)) => {
                    break match w.encrypt(plain, out) {
                        Ok(n) => Ok(n),
                        Err(EncryptError::InsufficientSize(_)) => {
                            Err(io::Error::other("TLS record larger than the buffer"))
                        }
                        Err(e) => Err(io::Error::other(e)),
                    };
                }
                Ok(ConnectionState::EncodeTlsData(mut e)) => {
                    let mut buf = vec![0u8; 1024];
                    let n = loop {
                        match e.encode(&mut buf) {
                            Ok(n) => break n,
                            Err(EncodeError::InsufficientSize(s)) => buf.resize(s.required_size, 0),
                            Err(EncodeError::AlreadyEncoded) => break 0,
                        }
                    };
                    self.outgoing.extend_from_slice(&buf[..n]);
                }
                Ok(ConnectionState::TransmitTlsData(t)) => {
                    t.done();
                    self.push()?;
                    if !self.outgoing.is_empty() {
                        break Err(io::ErrorKind::WouldBlock.into());
                    }
                }
                Ok(ConnectionState::ReadTraffic(_)) | Ok(ConnectionState::PeerClosed) => {
                    // Left for the next read (readable interest is on).
                    break Err(io::ErrorKind::WouldBlock.into());
                }
                Ok(ConnectionState::Closed) => break Err(io::ErrorKind::BrokenPipe.into()),
                Ok(_) => break Err(io::ErrorKind::WouldBlock.into()),
                Err(e) => break Err(io::Error::new(io::ErrorKind::InvalidData, e)),
            }
        };
        incoming.drain(..discarded);
        self.incoming = incoming;
        result
    }

    /// Queues a close_notify alert for the socket, if the handshake is
    /// complete (before, there are no keys to send it with).
    fn queue_close_notify(&mut self) {
        if self.tls.is_handshaking() || self.failure.is_some() || self.close_notify_queued {
            return;
        }
        self.close_notify_queued = true;
        let mut incoming = std::mem::take(&mut self.incoming);
        let UnbufferedStatus { state, .. } = self.tls.process_tls_records(&mut incoming);
        if let Ok(ConnectionState::WriteTraffic(mut w)) = state {
            let mut buf = [0u8; 64];
            if let Ok(n) = w.queue_close_notify(&mut buf) {
                self.outgoing.extend_from_slice(&buf[..n]);
            }
        }
        self.incoming = incoming;
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
            Transport::Tls(t) => t.write_vectored(&[IoSlice::new(buf)]),
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

    #[test]
    fn a_tls_stream_adds_little_to_rustls_state() {
        // Boxed per TLS connection: rustls' unbuffered connection and
        // what this module keeps beside it (three empty buffers while idle).
        let ours =
            std::mem::size_of::<TlsStream>() - std::mem::size_of::<UnbufferedServerConnection>();
        assert!(ours <= 112, "{ours} bytes beside rustls' state");
    }

    /// A TLS echo over the readiness-driven transport, with more data than
    /// rustls' buffer limit so writes meet `WouldBlock` and WRITABLE
    /// interest carries the rest.
    #[test]
    fn tls_echo_over_readiness() {
        tls_echo_with_read_buffer(16 * 1024);
    }

    /// Records longer than the reader's buffer: their plaintext is held
    /// and handed out over several reads, in order.
    #[test]
    fn tls_echo_with_a_small_read_buffer() {
        tls_echo_with_read_buffer(1000);
    }

    fn tls_echo_with_read_buffer(size: usize) {
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
        let mut buf = vec![0u8; size];
        while echoed < total {
            poll.poll(&mut events, Some(std::time::Duration::from_secs(10)))
                .unwrap();
            assert!(!events.is_empty(), "stalled after {echoed} bytes");
            for ev in events.iter() {
                if ev.token() == Token(0) {
                    let (sock, _) = listener.accept().unwrap();
                    let tls = UnbufferedServerConnection::new(server.clone()).unwrap();
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
    fn a_stalled_peer_leaves_at_most_one_record_held() {
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
        let mut t = Transport::tls(UnbufferedServerConnection::new(server).unwrap(), sock);
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
        // The ciphertext held for the socket: at most one record.
        let Transport::Tls(s) = &t else {
            unreachable!()
        };
        let held = s.outgoing.len() - s.sent;
        assert!(
            held > 0 && held <= TLS_BUFFER_LIMIT + 64,
            "{held} bytes of ciphertext held ({accepted} accepted)"
        );
        assert!(s.incoming.is_empty() && s.plaintext.is_empty());
        stop_tx.send(()).unwrap();
        peer.join().unwrap();
    }
}
