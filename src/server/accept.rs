//! Accepting connections: a worker's listener, in batches, with a pause
//! when the process runs out of descriptors (keep serving what we have,
//! retry shortly, warn at most every few seconds).

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};
use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::net::SocketAddr;

pub const LISTENER: Token = Token(usize::MAX - 1);

/// Connections accepted per wake-up before other work gets a turn.
pub const ACCEPT_BATCH: usize = 256;
/// Pause after the process runs out of file descriptors.
const BACKOFF_MS: u64 = 100;
/// Least time between two descriptor-exhaustion warnings.
const WARN_EVERY_MS: u64 = 5000;
/// Refused connections kept open (per worker) so their answer arrives.
const REFUSED_MAX: usize = 256;
/// How long a refused connection is kept for its answer to be read.
const REFUSED_LINGER_MS: u64 = 1000;
/// Interval between sweeps of the refused connections.
const REFUSED_SWEEP_MS: u64 = 50;

pub struct Acceptor {
    listener: Option<TcpListener>,
    /// The last batch stopped with connections possibly still waiting.
    more: bool,
    /// Accepting is paused until this time (0: not paused).
    paused_until: u64,
    last_warning: Option<u64>,
    refused: Refused,
}

/// Connections refused at accept, kept briefly after their answer: closing
/// a socket whose request is still unread sends RST, which can destroy the
/// answer in flight. Bounded in count and time; each is swept (its input
/// read and dropped) until the peer closes or the linger time ends.
#[derive(Default)]
struct Refused {
    list: VecDeque<(TcpStream, u64)>,
    next_sweep: u64,
}

impl Refused {
    fn add(&mut self, mut socket: TcpStream, answer: &[u8], now: u64) {
        let _ = socket.write(answer);
        let _ = socket.shutdown(std::net::Shutdown::Write);
        if self.list.len() >= REFUSED_MAX {
            // Under a flood of refusals the oldest simply closes.
            self.list.pop_front();
        }
        if self.list.is_empty() {
            self.next_sweep = now + REFUSED_SWEEP_MS;
        }
        self.list.push_back((socket, now + REFUSED_LINGER_MS));
    }

    fn sweep(&mut self, now: u64) {
        if self.list.is_empty() || now < self.next_sweep {
            return;
        }
        self.next_sweep = now + REFUSED_SWEEP_MS;
        let mut sink = [0u8; 1024];
        self.list.retain_mut(|(s, deadline)| {
            if now >= *deadline {
                return false;
            }
            loop {
                match s.read(&mut sink) {
                    Ok(0) => return false,
                    Ok(_) => continue,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => return false,
                }
            }
        });
        if self.list.capacity() > 2 * REFUSED_MAX.min(64) && self.list.len() < 16 {
            self.list.shrink_to(16);
        }
    }
}

/// What one accept attempt gave.
pub enum Accepted {
    Conn(TcpStream, SocketAddr),
    /// Nothing waiting (or paused, or closed).
    None,
    /// Out of descriptors: paused; the caller may warn with the message.
    Exhausted(Option<io::Error>),
}

impl Acceptor {
    /// An acceptor on `listener`, registered under `token` ([`LISTENER`]
    /// for the public listener).
    pub fn new(
        mut listener: TcpListener,
        registry: &Registry,
        token: Token,
    ) -> io::Result<Acceptor> {
        registry.register(&mut listener, token, Interest::READABLE)?;
        Ok(Acceptor {
            listener: Some(listener),
            more: false,
            paused_until: 0,
            last_warning: None,
            refused: Refused::default(),
        })
    }

    /// Stops accepting for good (shutdown).
    pub fn close(&mut self, registry: &Registry) {
        if let Some(mut l) = self.listener.take() {
            let _ = registry.deregister(&mut l);
        }
    }

    /// Whether accepting should be tried again without a new event.
    pub fn wants_retry(&self, now: u64) -> bool {
        self.more || (self.paused_until != 0 && now >= self.paused_until)
    }

    /// Milliseconds until the acceptor needs the loop again (a paused
    /// accept, or refused connections to sweep).
    pub fn retry_in(&self, now: u64) -> Option<u64> {
        if self.more {
            return Some(0);
        }
        let paused = (self.paused_until != 0).then(|| self.paused_until.saturating_sub(now));
        let sweep =
            (!self.refused.list.is_empty()).then(|| self.refused.next_sweep.saturating_sub(now));
        paused.into_iter().chain(sweep).min()
    }

    /// Answers a connection refused by admission and keeps it briefly so
    /// the answer arrives (see [`Refused`]).
    pub fn refuse(&mut self, socket: TcpStream, answer: &[u8], now: u64) {
        self.refused.add(socket, answer, now);
    }

    /// Reads and drops what refused connections sent; closes the finished.
    pub fn sweep_refused(&mut self, now: u64) {
        self.refused.sweep(now);
    }

    /// Starts a batch.
    pub fn begin(&mut self, now: u64) -> bool {
        self.more = false;
        if self.paused_until != 0 {
            if now < self.paused_until {
                return false;
            }
            self.paused_until = 0;
        }
        self.listener.is_some()
    }

    /// The batch used its share: come back next iteration.
    pub fn batch_full(&mut self) {
        self.more = true;
    }

    /// Accepts one connection.
    pub fn accept(&mut self, now: u64) -> Accepted {
        let Some(l) = &self.listener else {
            return Accepted::None;
        };
        loop {
            match l.accept() {
                Ok((s, a)) => return Accepted::Conn(s, a),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Accepted::None,
                Err(e) if is_resource_exhaustion(&e) => {
                    self.paused_until = now + BACKOFF_MS;
                    let warn = self.last_warning.is_none_or(|t| now >= t + WARN_EVERY_MS);
                    if warn {
                        self.last_warning = Some(now);
                    }
                    return Accepted::Exhausted(warn.then_some(e));
                }
                // The peer gave up before we accepted, and the like.
                Err(_) => continue,
            }
        }
    }
}

/// Accept errors that mean "out of descriptors or memory": back off.
fn is_resource_exhaustion(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMFILE) | Some(libc::ENFILE) | Some(libc::ENOBUFS) | Some(libc::ENOMEM)
    )
}
