//! A private redis-server, relay processes (the real binary, killed on
//! drop: they are ours), and small clients.

use serde_json::{json, Value};
use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tungstenite::Message;

pub type Ws = tungstenite::WebSocket<TcpStream>;

const BIN: &str = env!("CARGO_BIN_EXE_wsrelay");
const API_KEY: &str = "cluster-api-key";
const PUBLISH_TOKEN: &str = "cluster-publish-token";

#[path = "../common/redis_server.rs"]
mod redis_server;
pub use redis_server::{have_redis, RedisServer};

fn temp_dir(what: &str) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wsrelay-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

impl RedisServer {
    /// Nodes subscribed to `channel` (their subscriber connections).
    pub fn numsub(&self, channel: &str) -> usize {
        let out = self.cli(&["PUBSUB", "NUMSUB", &format!("wsrelay.ch.{channel}")]);
        out.lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0)
    }

    pub fn wait_numsub(&self, channel: &str, n: usize) {
        let until = Instant::now() + Duration::from_secs(10);
        while self.numsub(channel) != n {
            assert!(
                Instant::now() < until,
                "{channel}: {} nodes subscribed, not {n}",
                self.numsub(channel)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// One relay process with `broker = "redis"`.
pub struct Node {
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

fn config_file(dir: &std::path::Path, port: u16, redis_url: &str, extra: &str) -> PathBuf {
    let path = dir.join("wsrelay.toml");
    let text = format!(
        "listen = \"127.0.0.1:{port}\"\nworkers = 2\nstats_interval = \"0s\"\nshutdown_timeout = \"500ms\"\n\
         broker = \"redis\"\nredis_url = [\"{redis_url}\"]\nredis_subscribe_linger = \"200ms\"\n\
         api_key = \"{API_KEY}\"\npublish_token = \"{PUBLISH_TOKEN}\"\n\
         token_hmac_secret_key = \"cluster-secret\"\nallow_anonymous_connect_without_token = true\n\
         allow_subscribe_for_client = true\nallow_subscribe_for_anonymous = true\n\
         allow_publish_for_client = true\nallow_publish_for_anonymous = true\n{extra}"
    );
    std::fs::write(&path, text).unwrap();
    path
}

impl Node {
    pub fn start(redis_url: &str, extra: &str) -> Node {
        let dir = temp_dir("cluster-node");
        let port = free_port();
        let cfg = config_file(&dir, port, redis_url, extra);
        let child = Command::new(BIN)
            .arg("-c")
            .arg(&cfg)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("wsrelay");
        Node {
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            child,
            dir,
        }
    }

    /// Waits until `/healthz` answers with a body starting with `body`.
    pub fn wait_health(&self, body: &str) {
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if TcpStream::connect(self.addr).is_ok() {
                let r = http_get(self.addr, "/healthz");
                if r.split("\r\n\r\n")
                    .nth(1)
                    .is_some_and(|b| b.starts_with(body))
                {
                    return;
                }
            }
            assert!(Instant::now() < until, "/healthz never said {body:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn metrics(&self) -> String {
        http_get(self.addr, "/metrics")
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A sample of an unlabelled metric.
pub fn metric(page: &str, name: &str) -> f64 {
    page.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in /metrics"))
}

fn http(addr: SocketAddr, req: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

fn status_of(resp: &str) -> u16 {
    resp.split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

pub fn http_get(addr: SocketAddr, path: &str) -> String {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
}

/// `POST /publish/{room}` (JSON body): (status, whole response).
pub fn http_publish(addr: SocketAddr, room: &str, body: &str) -> (u16, String) {
    let r = http(
        addr,
        &format!(
            "POST /publish/{room} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {PUBLISH_TOKEN}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    (status_of(&r), r)
}

/// `/api/{method}`: (status, JSON body).
pub fn api(addr: SocketAddr, method: &str, body: &Value) -> (u16, Value) {
    let body = body.to_string();
    let r = http(
        addr,
        &format!(
            "POST /api/{method} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-API-Key: {API_KEY}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    let json = r
        .split("\r\n\r\n")
        .nth(1)
        .and_then(|b| serde_json::from_str(b).ok())
        .unwrap_or(Value::Null);
    (status_of(&r), json)
}

pub fn ws_connect(addr: SocketAddr, path: &str) -> Ws {
    let stream = TcpStream::connect(addr).unwrap();
    stream.set_nodelay(true).unwrap();
    let (ws, _) = tungstenite::client(format!("ws://{addr}{path}"), stream).expect("upgrade");
    ws
}

pub fn ws_send_text(ws: &mut Ws, text: &str) {
    ws.send(Message::text(text)).unwrap();
}

/// The next text message within `timeout` (pings are answered by
/// tungstenite); `None` on timeout.
pub fn ws_read_text(ws: &mut Ws, timeout: Duration) -> Option<String> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return None;
        }
        ws.get_ref().set_read_timeout(Some(left)).unwrap();
        match ws.read() {
            Ok(Message::Text(t)) => return Some(t.as_str().to_string()),
            Ok(_) => {}
            Err(tungstenite::Error::Io(e))
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return None
            }
            Err(e) => panic!("websocket: {e}"),
        }
    }
}

/// A Centrifugo protocol (JSON) client.
pub struct Client {
    /// The client id the connect reply gave.
    pub id: String,
    ws: Ws,
    next_id: u32,
    pushes: VecDeque<Value>,
    replies: VecDeque<Value>,
}

impl Client {
    pub fn connected(addr: SocketAddr) -> Client {
        let (c, r) = Client::connect_with(addr, json!({}));
        assert!(r.get("connect").is_some(), "connect failed: {r}");
        c
    }

    /// Connects with this `connect` request; returns the reply too.
    pub fn connect_with(addr: SocketAddr, connect: Value) -> (Client, Value) {
        let mut c = Client {
            id: String::new(),
            ws: ws_connect(addr, "/connection/websocket"),
            next_id: 1,
            pushes: VecDeque::new(),
            replies: VecDeque::new(),
        };
        let r = c.call(json!({ "connect": connect }));
        c.id = r["connect"]["client"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        (c, r)
    }

    fn pump(&mut self, timeout: Duration) {
        let Some(t) = ws_read_text(&mut self.ws, timeout) else {
            return;
        };
        for line in t.split('\n').filter(|l| !l.is_empty()) {
            let v: Value = serde_json::from_str(line).unwrap();
            if v.get("push").is_some() {
                self.pushes.push_back(v["push"].clone());
            } else if v.get("id").is_some() {
                self.replies.push_back(v);
            } else if v == json!({}) {
                ws_send_text(&mut self.ws, "{}");
            }
        }
    }

    /// Sends a command with the next id; returns its reply.
    pub fn call(&mut self, mut body: Value) -> Value {
        let id = self.next_id;
        self.next_id += 1;
        body["id"] = json!(id);
        ws_send_text(&mut self.ws, &body.to_string());
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(i) = self.replies.iter().position(|r| r["id"] == json!(id)) {
                return self.replies.remove(i).unwrap();
            }
            assert!(Instant::now() < deadline, "no reply to command {id}");
            self.pump(Duration::from_millis(100));
        }
    }

    /// The next `join` or `leave` push about client `id` within
    /// `timeout`, other pushes kept.
    pub fn push_of(&mut self, kind: &str, id: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let about = |p: &Value| p[kind]["info"]["client"] == id;
            if let Some(i) = self.pushes.iter().position(about) {
                return self.pushes.remove(i);
            }
            if Instant::now() >= deadline {
                return None;
            }
            self.pump(Duration::from_millis(100));
        }
    }

    /// Up to `want` `pub` objects (data, offset, info) in `channel`,
    /// waiting at most `timeout` for them; other pushes kept.
    pub fn pub_objects(&mut self, channel: &str, want: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            let mut rest = VecDeque::new();
            while let Some(p) = self.pushes.pop_front() {
                if p["channel"] == channel && p.get("pub").is_some() && out.len() < want {
                    out.push(p["pub"].clone());
                } else {
                    rest.push_back(p);
                }
            }
            self.pushes = rest;
            if out.len() >= want || Instant::now() >= deadline {
                return out;
            }
            self.pump(
                Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now())),
            );
        }
    }

    /// The next push about `channel` with key `kind` (`unsubscribe`, ...)
    /// within `timeout`, other pushes kept.
    pub fn channel_push(&mut self, kind: &str, channel: &str, timeout: Duration) -> Option<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let hit = |p: &Value| p["channel"] == channel && p.get(kind).is_some();
            if let Some(i) = self.pushes.iter().position(hit) {
                return self.pushes.remove(i);
            }
            if Instant::now() >= deadline {
                return None;
            }
            self.pump(Duration::from_millis(100));
        }
    }

    /// The `data` of up to `want` publications in `channel`, waiting at
    /// most `timeout` for them.
    pub fn pubs(&mut self, channel: &str, want: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        let mut out = Vec::new();
        loop {
            while let Some(p) = self.pushes.pop_front() {
                if p["channel"] == channel && p.get("pub").is_some() {
                    out.push(p["pub"]["data"].clone());
                }
            }
            if out.len() >= want || Instant::now() >= deadline {
                return out;
            }
            self.pump(
                Duration::from_millis(100).min(deadline.saturating_duration_since(Instant::now())),
            );
        }
    }
}
