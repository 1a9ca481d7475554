//! The one set of helpers of the `relay` test binary: an in-process relay
//! on an ephemeral port, a raw-bytes WebSocket client built on the protocol
//! core's client mode, tungstenite helpers (an independent client), plain
//! HTTP helpers and a Prometheus exposition parser.
//!
//! Timing rule for every test in this binary: no assertion may depend on a
//! wall-clock window under one second. Waiting for something that should
//! happen uses a generous bound ([`WAIT`], which only bounds a failure);
//! a check that something does *not* happen uses [`QUIET`] (1 s) once, via
//! [`assert_raw_silent`] / [`assert_ws_silent`], or better an ordering
//! argument (a later message or a pong arrives first).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use wsrelay::config::Config;
use wsrelay::protocol::{
    encode_client_frame, ClientHandshake, CloseCode, FrameDecoder, MaskRng, OpCode, Role,
};
use wsrelay::server::{self, ServerHandle};

/// How long a test waits for something that should happen (it only
/// bounds a failure).
pub const WAIT: Duration = Duration::from_secs(5);

/// The window of a negative check ("nothing arrives"): 1 s, far longer
/// than anything in flight takes on loopback.
pub const QUIET: Duration = Duration::from_secs(1);

/// A config for tests: ephemeral port, two workers, stats off, and short
/// shutdown (500 ms) and close (2 s) timeouts so that tearing down a relay
/// whose clients never answer the closing handshake is fast. No test
/// asserts on these two timeouts (tests about shutdown set their own).
pub fn test_config() -> Config {
    Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 2,
        stats_interval: Duration::ZERO,
        shutdown_timeout: Duration::from_millis(500),
        close_timeout: Duration::from_secs(2),
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

    /// A frame already received (in the buffer or the socket), without
    /// waiting for one: the second half of a negative check, after
    /// [`QUIET`] has passed. `Read_::Timeout` when there is none.
    pub fn poll_frame(&mut self) -> Read_ {
        self.stream.set_nonblocking(true).unwrap();
        let filled = self.fill();
        self.stream.set_nonblocking(false).unwrap();
        match self.read_frame(Duration::ZERO) {
            Read_::Timeout if filled.is_err() => Read_::Eof,
            r => r,
        }
    }

    /// Sends a close (1000), expects the echoed 1000 and then EOF.
    pub fn close_gracefully(&mut self) {
        self.send_close(1000, "");
        assert_eq!(self.expect_close(WAIT).0, 1000);
        assert!(
            self.wait_eof(WAIT),
            "server closes TCP after the close handshake"
        );
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

// ----- tungstenite ------------------------------------------------------------

/// A tungstenite client over a plain blocking `TcpStream`.
pub type Ws = tungstenite::WebSocket<TcpStream>;

/// Completes a tungstenite client handshake on `path` over `stream` and
/// leaves a short read timeout (100 ms) on the socket, so reads can poll.
pub fn ws_over(stream: TcpStream, addr: SocketAddr, path: &str) -> Ws {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    let (ws, resp) = tungstenite::client(format!("ws://{addr}{path}"), stream)
        .unwrap_or_else(|e| panic!("tungstenite handshake on {path} failed: {e}"));
    assert_eq!(resp.status().as_u16(), 101);
    ws.get_ref()
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    ws
}

/// A tungstenite client connected to `path`.
pub fn ws_connect(addr: SocketAddr, path: &str) -> Ws {
    ws_over(TcpStream::connect(addr).unwrap(), addr, path)
}

/// Whether a tungstenite error is only a read timeout.
pub fn ws_is_timeout(e: &tungstenite::Error) -> bool {
    matches!(e, tungstenite::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock
        || io.kind() == std::io::ErrorKind::TimedOut)
}

/// Next message of any kind (pings and pongs included) within `timeout`;
/// `None` on timeout. Panics on any other error.
pub fn ws_read(ws: &mut Ws, timeout: Duration) -> Option<tungstenite::Message> {
    let deadline = Instant::now() + timeout;
    loop {
        match ws.read() {
            Ok(m) => return Some(m),
            Err(e) if ws_is_timeout(&e) => {
                if Instant::now() >= deadline {
                    return None;
                }
            }
            Err(e) => panic!("tungstenite read failed: {e}"),
        }
    }
}

/// Next data or close message (skipping pings and pongs) within 5 s.
pub fn ws_expect_data(ws: &mut Ws) -> tungstenite::Message {
    use tungstenite::Message;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws_read(ws, left) {
            Some(Message::Ping(_)) | Some(Message::Pong(_)) => continue,
            Some(m) => return m,
            None => panic!("no message within 5 s"),
        }
    }
}

/// Reads until a close frame; returns its code and reason (1005 and "" for
/// an empty close). Skips data, pings and pongs. Panics after `timeout`.
pub fn ws_expect_close(ws: &mut Ws, timeout: Duration) -> (u16, String) {
    use tungstenite::Message;
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match ws_read(ws, left) {
            Some(Message::Close(Some(f))) => return (u16::from(f.code), f.reason.into_owned()),
            Some(Message::Close(None)) => return (1005, String::new()),
            Some(_) => continue,
            None => panic!("no close frame within {timeout:?}"),
        }
    }
}

/// After a close exchange: true once tungstenite reports the connection
/// closed (the server closed TCP) within `timeout`.
pub fn ws_wait_closed(ws: &mut Ws, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match ws.read() {
            Err(tungstenite::Error::ConnectionClosed) | Err(tungstenite::Error::AlreadyClosed) => {
                return true
            }
            Err(e) if ws_is_timeout(&e) => continue,
            Err(tungstenite::Error::Io(_)) | Err(tungstenite::Error::Protocol(_)) => return true,
            Err(e) => panic!("unexpected error while waiting for close: {e}"),
            Ok(_) => continue,
        }
    }
    false
}

/// Each worker's `upgrades` counter.
pub fn upgrades_by_worker(h: &ServerHandle) -> Vec<u64> {
    h.shared()
        .metrics
        .iter()
        .map(|m| m.upgrades.get())
        .collect()
}

/// Runs `connect` (which must complete exactly one upgrade) and returns
/// its result with the index of the worker that accepted it.
pub fn on_which_worker<T>(h: &ServerHandle, connect: impl FnOnce() -> T) -> (T, usize) {
    let before = upgrades_by_worker(h);
    let t = connect();
    let after = upgrades_by_worker(h);
    let grew: Vec<usize> = (0..after.len())
        .filter(|&w| after[w] != before[w])
        .collect();
    assert_eq!(
        grew.len(),
        1,
        "one upgrade expected: {before:?} -> {after:?}"
    );
    (t, grew[0])
}

/// Connects tungstenite members to `path` until there are at least
/// `total` and every worker has at least `per_worker`. Returns each member
/// with the worker it landed on.
pub fn spread(h: &ServerHandle, path: &str, total: usize, per_worker: usize) -> Vec<(Ws, usize)> {
    let addr = h.local_addr();
    let mut members = Vec::new();
    let mut counts = vec![0usize; h.workers()];
    while members.len() < total || counts.iter().any(|&c| c < per_worker) {
        assert!(
            members.len() < 200,
            "connections never reached every worker: {counts:?}"
        );
        let (ws, w) = on_which_worker(h, || ws_connect(addr, path));
        counts[w] += 1;
        members.push((ws, w));
    }
    members
}

/// A counter summed over every worker.
pub fn sum(h: &ServerHandle, f: impl Fn(&wsrelay::metrics::WorkerMetrics) -> u64) -> u64 {
    h.shared().metrics.iter().map(|m| f(m)).sum()
}

/// Writes `request` on a fresh connection and reads the answer until the
/// server closes TCP or `timeout` passes. Returns the text and whether the
/// server closed the connection (EOF or reset) in time.
pub fn http_exchange(addr: SocketAddr, request: &[u8], timeout: Duration) -> (String, bool) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
    let _ = s.write_all(request);
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut tmp = [0u8; 8192];
    let closed = loop {
        match s.read(&mut tmp) {
            Ok(0) => break true,
            Ok(n) => out.extend_from_slice(&tmp[..n]),
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut =>
            {
                if Instant::now() >= deadline {
                    break false;
                }
            }
            Err(_) => break true,
        }
    };
    (String::from_utf8_lossy(&out).into_owned(), closed)
}

// ----- production-surface helpers (HTTP keep-alive, upgrades, metrics) -----

/// One HTTP response, read by its `Content-Length`.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A keep-alive HTTP/1.1 client connection that reads responses one by
/// one (each must carry `Content-Length`).
pub struct HttpConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl HttpConn {
    pub fn connect(addr: SocketAddr) -> HttpConn {
        let stream = TcpStream::connect(addr).unwrap();
        stream.set_nodelay(true).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        HttpConn {
            stream,
            buf: Vec::new(),
        }
    }

    /// Writes raw bytes (errors ignored: the server may have closed).
    pub fn send(&mut self, bytes: &[u8]) {
        let _ = self.stream.write_all(bytes);
    }

    /// The next complete response; `None` if the server closed (or reset)
    /// the connection or `timeout` passed first.
    pub fn read_response(&mut self, timeout: Duration) -> Option<HttpResponse> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).into_owned();
                let mut lines = head.split("\r\n");
                let status = status_of(lines.next().unwrap_or(""));
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .map(|(_, v)| v.parse().expect("numeric Content-Length"))
                    .expect("response has Content-Length");
                if self.buf.len() >= end + 4 + len {
                    let body = self.buf[end + 4..end + 4 + len].to_vec();
                    self.buf.drain(..end + 4 + len);
                    return Some(HttpResponse {
                        status,
                        headers,
                        body,
                    });
                }
            }
            if Instant::now() >= deadline {
                return None;
            }
            let mut tmp = [0u8; 16384];
            match self.stream.read(&mut tmp) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return None,
            }
        }
    }

    /// Sends a request and returns its response (within 5 s).
    pub fn request(&mut self, bytes: &[u8]) -> HttpResponse {
        self.send(bytes);
        self.read_response(Duration::from_secs(5))
            .expect("a response before close/timeout")
    }

    /// True once the server has closed the connection (within `timeout`),
    /// with no further bytes sent.
    pub fn wait_closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            let mut tmp = [0u8; 4096];
            match self.stream.read(&mut tmp) {
                Ok(0) => return true,
                Ok(n) => self.buf.extend_from_slice(&tmp[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(_) => return true,
            }
        }
        false
    }
}

/// `GET path` on a fresh keep-alive connection.
pub fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    HttpConn::connect(addr)
        .request(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())
}

/// Sends an upgrade request for `path` (with `extra` header lines) and
/// returns the status of the answer and the stream (still open after 101).
pub fn upgrade_status(addr: SocketAddr, path: &str, extra: &str) -> (u16, TcpStream) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(&upgrade_request(path, extra)).unwrap();
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

/// One sample of a Prometheus text exposition.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

/// A parsed Prometheus text-format (0.0.4) exposition.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    pub samples: Vec<Sample>,
    /// Family name → type.
    pub types: Vec<(String, String)>,
}

fn parse_labels(s: &str) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let mut rest = s;
    loop {
        rest = rest.trim_start_matches([' ', ',']);
        if rest.is_empty() {
            return Ok(out);
        }
        let (name, after) = rest
            .split_once("=\"")
            .ok_or_else(|| format!("bad label in {s:?}"))?;
        let name = name.trim();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let mut end = None;
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, c @ ('\\' | '"'))) => value.push(c),
                    other => return Err(format!("bad escape {other:?} in {s:?}")),
                },
                '"' => {
                    end = Some(i);
                    break;
                }
                c => value.push(c),
            }
        }
        let end = end.ok_or_else(|| format!("unterminated label value in {s:?}"))?;
        out.push((name.to_string(), value));
        rest = &after[end + 1..];
    }
}

impl Metrics {
    /// Parses and checks the exposition: every sample belongs to a family
    /// announced by `# HELP` and `# TYPE` (before its samples), types are
    /// valid, values are numbers, no sample appears twice.
    pub fn parse(text: &str) -> Result<Metrics, String> {
        let mut m = Metrics::default();
        let mut helps: Vec<String> = Vec::new();
        let mut seen: Vec<(String, Vec<(String, String)>)> = Vec::new();
        for line in text.lines() {
            if line.trim().is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap_or("").to_string();
                if helps.contains(&name) {
                    return Err(format!("HELP twice for {name}"));
                }
                helps.push(name);
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split(' ');
                let name = it.next().unwrap_or("").to_string();
                let kind = it.next().unwrap_or("").to_string();
                if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind.as_str())
                {
                    return Err(format!("bad TYPE line {line:?}"));
                }
                if m.types.iter().any(|(n, _)| *n == name) {
                    return Err(format!("TYPE twice for {name}"));
                }
                m.types.push((name, kind));
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            let (name_labels, value) = match line.find('}') {
                Some(close) => (&line[..close + 1], line[close + 1..].trim()),
                None => line
                    .split_once(' ')
                    .ok_or_else(|| format!("sample without value: {line:?}"))?,
            };
            let (name, labels) = match name_labels.split_once('{') {
                Some((n, l)) => (n, parse_labels(l.strip_suffix('}').unwrap_or(l))?),
                None => (name_labels, Vec::new()),
            };
            if name.is_empty()
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':')
            {
                return Err(format!("bad metric name in {line:?}"));
            }
            let value_str = value.split(' ').next().unwrap_or("");
            let value: f64 = match value_str {
                "+Inf" => f64::INFINITY,
                "-Inf" => f64::NEG_INFINITY,
                v => v
                    .parse()
                    .map_err(|_| format!("bad value {v:?} in {line:?}"))?,
            };
            let family = m
                .types
                .iter()
                .map(|(n, _)| n.as_str())
                .find(|f| {
                    *f == name
                        || ["_bucket", "_sum", "_count"]
                            .iter()
                            .any(|s| name.strip_suffix(s) == Some(f))
                })
                .ok_or_else(|| format!("sample {name} before/without # TYPE"))?
                .to_string();
            if !helps.contains(&family) {
                return Err(format!("sample {name} without # HELP"));
            }
            let mut key_labels = labels.clone();
            key_labels.sort();
            let key = (name.to_string(), key_labels);
            if seen.contains(&key) {
                return Err(format!("duplicate sample {line:?}"));
            }
            seen.push(key);
            m.samples.push(Sample {
                name: name.to_string(),
                labels,
                value,
            });
        }
        Ok(m)
    }

    /// The value of the sample with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|s| {
                s.name == name
                    && s.labels.len() == labels.len()
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.iter().any(|(a, b)| a == k && b == v))
            })
            .map(|s| s.value)
    }

    /// Value of an unlabelled sample; panics if absent.
    pub fn value(&self, name: &str) -> f64 {
        self.get(name, &[])
            .unwrap_or_else(|| panic!("no sample {name}"))
    }

    pub fn type_of(&self, name: &str) -> Option<&str> {
        self.types
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, t)| t.as_str())
    }
}

/// `GET /metrics`, checked (200, content type 0.0.4) and parsed.
pub fn scrape(addr: SocketAddr) -> Metrics {
    let r = http_get(addr, "/metrics");
    assert_eq!(r.status, 200, "{}", r.text());
    let ct = r.header("content-type").unwrap_or("");
    assert!(
        ct.starts_with("text/plain") && ct.contains("version=0.0.4"),
        "content type {ct:?}"
    );
    Metrics::parse(&r.text()).unwrap_or_else(|e| panic!("{e}\n{}", r.text()))
}

/// Connects room/echo clients to `path` until every worker holds at least
/// `min_each` of them (connecting one at a time and reading which
/// worker's upgrade counter moved). Returns (worker, client) pairs.
pub fn connect_on_every_worker(
    h: &ServerHandle,
    path: &str,
    min_each: usize,
) -> Vec<(usize, RawClient)> {
    let workers = h.workers();
    let mut out: Vec<(usize, RawClient)> = Vec::new();
    for _ in 0..200 {
        let done = (0..workers).all(|w| out.iter().filter(|(x, _)| *x == w).count() >= min_each);
        if done {
            return out;
        }
        let before = upgrades_by_worker(h);
        let c = RawClient::connect(h.local_addr(), path);
        let mut landed = None;
        assert!(
            eventually(Duration::from_secs(5), || {
                let now = upgrades_by_worker(h);
                landed = (0..workers).find(|&w| now[w] > before[w]);
                landed.is_some()
            }),
            "no worker counted the upgrade"
        );
        out.push((landed.unwrap(), c));
    }
    panic!("connections never spread over all {workers} workers");
}

/// A loopback port that was free a moment ago (for starting the binary).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Close frames with `code` the relay sent, over every worker.
pub fn close_codes_sent(h: &wsrelay::server::ServerHandle, code: u16) -> u64 {
    h.shared()
        .metrics
        .iter()
        .map(|m| m.close_sent[wsrelay::metrics::close_code_index(code)].get())
        .sum()
}

/// Expects a close frame with `code` (skipping data), then EOF.
#[track_caller]
pub fn expect_failed(c: &mut RawClient, code: u16) -> String {
    let (got, reason) = c.expect_close(Duration::from_secs(5));
    assert_eq!(got, code, "reason: {reason}");
    assert!(
        c.wait_eof(Duration::from_secs(3)),
        "TCP must be closed after a {code} failure"
    );
    reason
}

// ----- negative checks -----------------------------------------------------------

/// Waits [`QUIET`] once, then checks that none of `clients` has received
/// anything (frame or EOF).
#[track_caller]
pub fn assert_raw_silent(clients: &mut [(&str, &mut RawClient)]) {
    std::thread::sleep(QUIET);
    for (who, c) in clients.iter_mut() {
        match c.poll_frame() {
            Read_::Timeout => {}
            other => panic!("{who} should receive nothing, got {other:?}"),
        }
    }
}

/// [`assert_raw_silent`] for tungstenite clients.
#[track_caller]
pub fn assert_ws_silent(clients: &mut [(&str, &mut Ws)]) {
    std::thread::sleep(QUIET);
    for (who, ws) in clients.iter_mut() {
        // One read: returns what is already there, or times out (100 ms
        // socket read timeout) with nothing.
        if let Some(m) = ws_read(ws, Duration::ZERO) {
            panic!("{who} should receive nothing, got {m:?}");
        }
    }
}

// ----- HTTP requests and refusals ---------------------------------------------------

/// Writes `request` on a fresh connection and returns the response head
/// (up to and including the blank line), read within [`WAIT`]; the
/// connection is then dropped. For answers that keep the connection open
/// (101, keep-alive).
#[track_caller]
pub fn response_head(addr: SocketAddr, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(request).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!(
                "no complete response head ({other:?}) after {:?}",
                String::from_utf8_lossy(&head)
            ),
        }
    }
    String::from_utf8_lossy(&head).into_owned()
}

/// A request built from a request line and header lines (each without CRLF).
pub fn request(line: &str, headers: &[&str]) -> Vec<u8> {
    let mut s = format!("{line}\r\n");
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.into_bytes()
}

/// Header value (case-insensitive name) from a response text.
pub fn header<'a>(response: &'a str, name: &str) -> Option<&'a str> {
    let head = response.split("\r\n\r\n").next()?;
    head.lines().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim()
            .eq_ignore_ascii_case(name)
            .then_some(v.trim_matches([' ', '\r']))
    })
}

/// The body of a response text.
pub fn body(response: &str) -> &str {
    response.split_once("\r\n\r\n").map_or("", |(_, b)| b)
}

/// Sends `req`, expects `status` with `body_part` in the body, a correct
/// Content-Length, `Connection: close`, no `Sec-WebSocket-Accept`, and the
/// connection closed by the server afterwards. Returns the response.
#[track_caller]
pub fn expect_refusal(addr: SocketAddr, req: &[u8], status: u16, body_part: &str) -> String {
    let (resp, closed) = http_exchange(addr, req, WAIT);
    assert_eq!(
        status_of(&resp),
        status,
        "request:\n{}\nresponse:\n{resp}",
        String::from_utf8_lossy(req)
    );
    let line = resp.lines().next().unwrap_or("");
    assert!(line.starts_with(&format!("HTTP/1.1 {status} ")), "{line}");
    assert!(body(&resp).contains(body_part), "{resp}");
    assert_eq!(
        header(&resp, "content-length").and_then(|v| v.parse::<usize>().ok()),
        Some(body(&resp).len()),
        "{resp}"
    );
    assert_eq!(header(&resp, "connection"), Some("close"), "{resp}");
    assert!(
        header(&resp, "sec-websocket-accept").is_none(),
        "refusal must not accept: {resp}"
    );
    assert!(closed, "server must close after a refusal:\n{resp}");
    resp
}

/// After `shutdown()`: waits until every worker has begun shutting down,
/// observed as its listener being gone (connections refused).
#[track_caller]
pub fn wait_listeners_closed(addr: SocketAddr) {
    assert!(
        eventually(WAIT, || TcpStream::connect(addr).is_err()),
        "listeners still open after shutdown()"
    );
}

/// Polls `/metrics` until `cond` holds (or [`WAIT`] passes) and returns the
/// last scrape.
pub fn scrape_until(addr: SocketAddr, mut cond: impl FnMut(&Metrics) -> bool) -> Metrics {
    let mut last = scrape(addr);
    if eventually(WAIT, || {
        last = scrape(addr);
        cond(&last)
    }) {
        return last;
    }
    last
}
