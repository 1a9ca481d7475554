//! One Redis connection over a std socket we own (TCP, TLS over TCP or
//! unix), with the `redis` crate's RESP parser and command packing. The
//! socket is cloned so that one thread blocks reading while another
//! writes: redis-rs' own sync `Connection`/`PubSub` cannot subscribe while
//! a read is blocked, which is why the bridge drives the socket itself.
//! Both connection kinds use [`Stream`], so plain and TLS share every line
//! of the bridge; TLS clones share one rustls connection (`tls.rs`).

use std::io::{self, Read, Write};
use std::net::{Shutdown, TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use redis::{ConnectionAddr, Value};

use super::tls::TlsStream;
use super::RedisTarget;

/// A connected socket.
#[derive(Debug)]
pub enum Stream {
    Tcp(TcpStream),
    Tls(TlsStream),
    Unix(UnixStream),
}

impl Stream {
    /// Connects (each address of the host within `timeout`) and, for
    /// `rediss://`, runs the TLS handshake within `timeout` more.
    pub fn connect(target: &RedisTarget, timeout: Duration) -> io::Result<Stream> {
        match target.info.addr() {
            ConnectionAddr::Tcp(host, port) => {
                let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
                for addr in (host.as_str(), *port).to_socket_addrs()? {
                    match TcpStream::connect_timeout(&addr, timeout) {
                        Ok(s) => {
                            s.set_nodelay(true)?;
                            let Some(tls) = &target.tls else {
                                return Ok(Stream::Tcp(s));
                            };
                            let config = tls.config.clone().ok_or_else(|| {
                                io::Error::other(
                                    "rediss:// without a TLS configuration (redis_tls_ca)",
                                )
                            })?;
                            return TlsStream::handshake(s, config, tls.name.clone(), timeout)
                                .map(Stream::Tls);
                        }
                        Err(e) => last = e,
                    }
                }
                Err(last)
            }
            ConnectionAddr::Unix(path) => Ok(Stream::Unix(UnixStream::connect(path)?)),
            _ => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "only redis:// and unix:// URLs are supported",
            )),
        }
    }

    pub fn try_clone(&self) -> io::Result<Stream> {
        Ok(match self {
            Stream::Tcp(s) => Stream::Tcp(s.try_clone()?),
            Stream::Tls(s) => Stream::Tls(s.try_clone()?),
            Stream::Unix(s) => Stream::Unix(s.try_clone()?),
        })
    }

    pub fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_read_timeout(t),
            Stream::Tls(s) => s.socket().set_read_timeout(t),
            Stream::Unix(s) => s.set_read_timeout(t),
        }
    }

    pub fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Stream::Tcp(s) => s.set_write_timeout(t),
            Stream::Tls(s) => s.socket().set_write_timeout(t),
            Stream::Unix(s) => s.set_write_timeout(t),
        }
    }

    /// Unblocks a reader on another clone.
    pub fn shutdown(&self) {
        let _ = match self {
            Stream::Tcp(s) => s.shutdown(Shutdown::Both),
            Stream::Tls(s) => {
                s.shutdown();
                Ok(())
            }
            Stream::Unix(s) => s.shutdown(Shutdown::Both),
        };
    }
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.read(buf),
            Stream::Tls(s) => s.read(buf),
            Stream::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Tcp(s) => s.write(buf),
            Stream::Tls(s) => s.write(buf),
            Stream::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A fresh connection: authenticated, database selected, and (for the
/// command connection) the scripts loaded. Returns the socket and the
/// parser holding whatever it read past the handshake replies.
pub fn open(
    target: &RedisTarget,
    timeout: Duration,
    scripts: &[&str],
) -> io::Result<(Stream, redis::Parser)> {
    let mut s = Stream::connect(target, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let settings = target.info.redis_settings();
    let mut out = Vec::new();
    let mut replies = 0;
    if let Some(pass) = settings.password() {
        let mut c = redis::cmd("AUTH");
        if let Some(user) = settings.username() {
            c.arg(user);
        }
        c.arg(pass);
        out.extend_from_slice(&c.get_packed_command());
        replies += 1;
    }
    if settings.db() != 0 {
        out.extend_from_slice(&redis::cmd("SELECT").arg(settings.db()).get_packed_command());
        replies += 1;
    }
    for body in scripts {
        out.extend_from_slice(
            &redis::cmd("SCRIPT")
                .arg("LOAD")
                .arg(*body)
                .get_packed_command(),
        );
        replies += 1;
    }
    // A PING last proves the server answers even with nothing else to say.
    out.extend_from_slice(&redis::cmd("PING").get_packed_command());
    replies += 1;
    s.write_all(&out)?;
    let mut parser = redis::Parser::new();
    for _ in 0..replies {
        let v = read_value(&mut parser, &mut s)?;
        if let Value::ServerError(e) = v {
            return Err(io::Error::other(format!("redis handshake: {e:?}")));
        }
    }
    s.set_read_timeout(None)?;
    Ok((s, parser))
}

/// Reads one value (blocking); I/O and protocol errors become io::Error.
pub fn read_value(parser: &mut redis::Parser, s: &mut Stream) -> io::Result<Value> {
    parser.parse_value(s).map_err(|e| {
        if e.is_io_error() {
            io::Error::new(io::ErrorKind::ConnectionAborted, e.to_string())
        } else {
            io::Error::new(io::ErrorKind::InvalidData, e.to_string())
        }
    })
}
