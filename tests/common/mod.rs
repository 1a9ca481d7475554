//! Shared helpers for integration tests: an in-process relay on an
//! ephemeral port and a raw-bytes WebSocket client built on the protocol
//! core's client mode (independent clients, e.g. tungstenite, are used
//! directly in the tests).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use wsrelay::config::Config;
use wsrelay::protocol::{
    encode_client_frame, ClientHandshake, CloseCode, FrameDecoder, MaskRng, OpCode, Role,
};
use wsrelay::server::{self, ServerHandle};

/// A config for tests: ephemeral port, two workers, stats off.
pub fn test_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        stats_interval: Duration::ZERO,
        ..Config::default()
    }
}

pub fn start(config: Config) -> ServerHandle {
    server::start(config).expect("relay starts")
}

/// A frame as received by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub fin: bool,
    pub opcode: OpCode,
    pub payload: Vec<u8>,
}

impl Frame {
    /// Close code and reason of a close frame.
    pub fn close_code(&self) -> Option<(u16, String)> {
        if self.opcode != OpCode::Close || self.payload.len() < 2 {
            return None;
        }
        Some((
            u16::from_be_bytes([self.payload[0], self.payload[1]]),
            String::from_utf8_lossy(&self.payload[2..]).into_owned(),
        ))
    }
}

/// What a read produced.
#[derive(Debug)]
pub enum Read_ {
    Frame(Frame),
    /// The server closed TCP.
    Eof,
    Timeout,
}

/// A WebSocket client over a blocking socket, speaking raw bytes.
pub struct RawClient {
    pub stream: TcpStream,
    buf: Vec<u8>,
    rng: MaskRng,
    decoder: FrameDecoder,
}

impl RawClient {
    /// Connects and completes the handshake on `path`.
    pub fn connect(addr: SocketAddr, path: &str) -> RawClient {
        let mut c = RawClient::connect_tcp(addr);
        let hs = ClientHandshake::new(&mut c.rng);
        c.stream
            .write_all(&hs.request(&addr.to_string(), path))
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(resp) = hs.parse_response(&c.buf).expect("valid 101 response") {
                c.buf.drain(..resp.head_len);
                return c;
            }
            assert!(Instant::now() < deadline, "handshake timed out");
            c.fill().expect("connection open during handshake");
        }
    }

    /// A TCP connection with no handshake sent.
    pub fn connect_tcp(addr: SocketAddr) -> RawClient {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        RawClient {
            stream,
            buf: Vec::new(),
            rng: MaskRng::new(),
            decoder: FrameDecoder::new(Role::Client, 64 << 20),
        }
    }

    /// Reads more bytes; Ok(false) on timeout, Err on EOF/reset.
    fn fill(&mut self) -> Result<bool, ()> {
        let mut tmp = [0u8; 65536];
        match self.stream.read(&mut tmp) {
            Ok(0) => Err(()),
            Ok(n) => {
                self.buf.extend_from_slice(&tmp[..n]);
                Ok(true)
            }
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                Ok(false)
            }
            Err(_) => Err(()),
        }
    }

    /// Sends one frame (masked) with the given FIN bit.
    pub fn send_frame(&mut self, fin: bool, opcode: OpCode, payload: &[u8]) {
        let mut out = Vec::new();
        encode_client_frame(fin, opcode, payload, self.rng.mask_key(), &mut out);
        self.send_raw(&out);
    }

    pub fn send_text(&mut self, s: &str) {
        self.send_frame(true, OpCode::Text, s.as_bytes());
    }

    pub fn send_binary(&mut self, b: &[u8]) {
        self.send_frame(true, OpCode::Binary, b);
    }

    pub fn send_close(&mut self, code: u16, reason: &str) {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason.as_bytes());
        self.send_frame(true, OpCode::Close, &p);
    }

    /// Writes raw bytes (ignoring a reset: the server may have closed).
    pub fn send_raw(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// Next frame within `timeout`.
    pub fn read_frame(&mut self, timeout: Duration) -> Read_ {
        let deadline = Instant::now() + timeout;
        loop {
            match self.decoder.decode(&mut self.buf) {
                Ok(Some(f)) => {
                    let frame = Frame {
                        fin: f.header.fin,
                        opcode: f.header.opcode,
                        payload: self.buf[f.payload.clone()].to_vec(),
                    };
                    self.buf.drain(..f.consumed);
                    return Read_::Frame(frame);
                }
                Ok(None) => {}
                Err(e) => panic!("server sent an invalid frame: {e}"),
            }
            if Instant::now() >= deadline {
                return Read_::Timeout;
            }
            if self.fill().is_err() {
                return Read_::Eof;
            }
        }
    }

    /// Next frame, which must arrive within 5 s.
    pub fn expect_frame(&mut self) -> Frame {
        match self.read_frame(Duration::from_secs(5)) {
            Read_::Frame(f) => f,
            other => panic!("expected a frame, got {other:?}"),
        }
    }

    /// Reads frames (skipping data and pings) until a close frame; returns
    /// its code and reason.
    pub fn expect_close(&mut self, timeout: Duration) -> (u16, String) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                Read_::Frame(f) if f.opcode == OpCode::Close => {
                    return f
                        .close_code()
                        .unwrap_or((CloseCode::NO_STATUS.0, String::new()))
                }
                Read_::Frame(_) => continue,
                other => panic!("expected a close frame, got {other:?}"),
            }
        }
    }

    /// True once the server has closed TCP (within `timeout`).
    pub fn wait_eof(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            match self.read_frame(deadline.saturating_duration_since(Instant::now())) {
                Read_::Eof => return true,
                Read_::Timeout => return false,
                Read_::Frame(_) => continue,
            }
        }
        false
    }
}

/// Sends a raw HTTP request and returns the whole response (until the
/// server closes or 2 s pass).
pub fn http_raw(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    s.write_all(request).unwrap();
    let mut out = Vec::new();
    let mut tmp = [0u8; 8192];
    loop {
        match s.read(&mut tmp) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&tmp[..n]),
            Err(_) => break,
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Status code of an HTTP response text.
pub fn status_of(response: &str) -> u16 {
    response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A valid upgrade request for `path` with extra header lines.
pub fn upgrade_request(path: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
    .into_bytes()
}

/// Polls `cond` until true or `timeout`.
pub fn eventually(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    cond()
}
