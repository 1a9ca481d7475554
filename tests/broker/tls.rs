//! TLS to Redis (`rediss://`) against redis-server's own TLS port
//! (Debian's redis-server is built with TLS): certificates made at run
//! time with rcgen, the server listening on `--tls-port` only (`--port 0`;
//! its unix socket stays plain for redis-cli), so a node that reaches it
//! speaks TLS.
//!
//! - publish, subscribe on demand and a `CLIENT KILL TYPE pubsub`
//!   reconnect over TLS;
//! - a CA that did not sign the server's certificate: a connect error,
//!   counted, logged with the remedy, the node degraded (no panic);
//! - mutual TLS: refused without a client certificate, working with one;
//! - the descriptors the bridge holds, against the open-files reserve.

use std::collections::HashSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use wsrelay::broker::{BrokerError, BrokerEvent, BrokerSettings, Kind, Reply};
use wsrelay::config::Config;

use crate::support::{have_redis, Node, RedisServer};

const T: Duration = Duration::from_secs(10);

/// A CA and files signed by it, in a temporary directory.
struct Pki {
    dir: PathBuf,
    ca_cert: rcgen::Certificate,
    ca_key: KeyPair,
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Pki {
    fn new() -> Pki {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsrelay-redis-pki-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name
            .push(DnType::CommonName, format!("wsrelay test CA {dir:?}"));
        let ca_cert = p.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
        Pki {
            dir,
            ca_cert,
            ca_key,
        }
    }

    fn ca(&self) -> String {
        self.path("ca.pem")
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }

    /// A certificate for `names` signed by this CA: (chain, key) paths.
    fn issue(&self, file: &str, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().unwrap();
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &self.ca_cert, &self.ca_key)
            .unwrap();
        let (c, k) = (format!("{file}.pem"), format!("{file}.key"));
        std::fs::write(self.dir.join(&c), cert.pem()).unwrap();
        std::fs::write(self.dir.join(&k), key.serialize_pem()).unwrap();
        (self.path(&c), self.path(&k))
    }
}

/// redis-server serving TLS on a port of 127.0.0.1 (and plain on its
/// unix socket, for redis-cli).
struct TlsRedis {
    redis: RedisServer,
    port: u16,
    pki: Pki,
}

impl TlsRedis {
    fn start(client_certs: bool) -> TlsRedis {
        let pki = Pki::new();
        let (cert, key) = pki.issue("server", &["127.0.0.1", "localhost"]);
        // A free port: the kernel picks it, redis-server takes it over.
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let args = [
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &pki.ca(),
            "--tls-auth-clients",
            if client_certs { "yes" } else { "no" },
        ]
        .map(String::from);
        let redis = RedisServer::start_with(&args);
        TlsRedis { redis, port, pki }
    }

    /// An IP literal, checked against the certificate's IP SAN.
    fn url(&self, db: u8) -> String {
        format!("rediss://127.0.0.1:{}/{db}", self.port)
    }
}

fn config(urls: Vec<String>, ca: &str, client: Option<&(String, String)>) -> Config {
    Config {
        broker: "redis".to_string(),
        redis_url: urls,
        redis_tls_ca: ca.to_string(),
        redis_tls_cert: client.map(|c| c.0.clone()).unwrap_or_default(),
        redis_tls_key: client.map(|c| c.1.clone()).unwrap_or_default(),
        ..Config::default()
    }
}

fn settings(c: &Config) -> BrokerSettings {
    c.validate().unwrap();
    let mut s = BrokerSettings::from_config(c).unwrap().unwrap();
    s.linger = Duration::ZERO;
    s
}

/// Log lines at warn and above, from every test of this binary.
fn logs() -> &'static Mutex<Vec<String>> {
    struct Capture(Mutex<Vec<String>>);
    impl log::Log for Capture {
        fn enabled(&self, m: &log::Metadata) -> bool {
            m.level() <= log::Level::Warn
        }
        fn log(&self, r: &log::Record) {
            if self.enabled(r.metadata()) {
                let mut l = self.0.lock().unwrap();
                if l.len() < 10_000 {
                    l.push(r.args().to_string());
                }
            }
        }
        fn flush(&self) {}
    }
    static LOGGER: OnceLock<&'static Capture> = OnceLock::new();
    let l = LOGGER.get_or_init(|| {
        let l: &'static Capture = Box::leak(Box::new(Capture(Mutex::new(Vec::new()))));
        // Another test may have set one first; then nothing is captured
        // and the assertion on the log says so.
        let _ = log::set_logger(l);
        log::set_max_level(log::LevelFilter::Warn);
        l
    });
    &l.0
}

fn wait_connect_errors(n: &mut Node, at_least: u64) {
    assert!(
        n.wait(T, |n| n
            .broker
            .metrics()
            .connect_errors
            .load(Ordering::SeqCst)
            >= at_least),
        "no connect errors counted"
    );
}

#[test]
fn publish_subscribe_and_reconnect_over_tls() {
    if !have_redis() {
        return;
    }
    let r = TlsRedis::start(false);
    let c = config(vec![r.url(0)], &r.pki.ca(), None);
    let mut a = Node::start(settings(&c));
    let mut b = Node::start(settings(&c));
    a.wait_up("x");
    b.wait_up("x");
    assert!(!b.subscribe("room"), "subscribed on demand, first time");
    a.subscribe("a-side");
    for i in 0..300u32 {
        // Up to ~6 KiB: envelopes across TLS records.
        let payload = i.to_string().repeat(1 + i as usize * 7 % 2000);
        let env = a.envelope("room", Kind::RawText, payload.as_bytes());
        a.port.publish(&env).unwrap();
    }
    assert!(b.wait(T, |n| n.events.len() >= 300));
    let got = b.take_messages();
    for (i, m) in got.iter().enumerate() {
        let want = i.to_string().repeat(1 + i * 7 % 2000);
        assert_eq!(m.payload, want.as_bytes(), "message {i} in order");
    }
    assert!(a.wait(T, |n| n.replies.len() == 300));
    assert!(a.replies.iter().all(|(_, r)| *r == Ok(Reply::Published)));
    // The subscriber connections are killed: reopened over TLS and
    // resubscribed, the command connections untouched.
    let killed = r.redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    assert_eq!(killed.trim(), "2", "both nodes' subscriber connections");
    assert!(b.wait(T, |n| n.events.iter().any(|e| matches!(
        e,
        BrokerEvent::Subscribed { channel, resubscribed: true } if channel == "room"
    ))));
    assert!(b.broker.metrics().reconnects.load(Ordering::SeqCst) >= 1);
    b.events.clear();
    let t = a
        .port
        .publish(&a.envelope("room", Kind::RawBinary, b"after the kill"))
        .unwrap();
    assert_eq!(a.reply(t, T), Ok(Reply::Published));
    assert!(b.wait(T, |n| !n.take_messages_peek().is_empty()));
    assert_eq!(b.take_messages()[0].payload, b"after the kill");
    assert_eq!(a.broker.metrics().connect_errors.load(Ordering::SeqCst), 0);
    assert_eq!(b.broker.metrics().connect_errors.load(Ordering::SeqCst), 0);
}

#[test]
fn a_ca_that_did_not_sign_the_server_is_a_counted_connect_error() {
    if !have_redis() {
        return;
    }
    let logs = logs();
    let r = TlsRedis::start(false);
    let stranger = Pki::new();
    let mut n = Node::start(settings(&config(vec![r.url(0)], &stranger.ca(), None)));
    // Both connections failed, more than once (backoff retries).
    wait_connect_errors(&mut n, 4);
    assert!(!n.broker.is_up());
    assert!(!n.port.is_up("x"));
    assert_eq!(
        n.port
            .publish(&n.envelope("room", Kind::RawText, b"x"))
            .unwrap_err(),
        BrokerError::Unavailable,
        "refused at once, not queued"
    );
    let lines = logs.lock().unwrap().clone();
    let wanted = "connection failed: TLS handshake: invalid peer certificate: UnknownIssuer (is redis_tls_ca the CA that signed the server's certificate?); retrying";
    assert!(
        lines.iter().any(|l| l.contains(wanted)),
        "no log line with {wanted:?} in {lines:?}"
    );
    assert!(
        lines.iter().all(|l| !l.contains("rediss://")),
        "never the URL"
    );
    // The node still stops cleanly.
    let Node { broker, .. } = n;
    broker.shutdown();
}

#[test]
fn mutual_tls_when_redis_requires_client_certificates() {
    if !have_redis() {
        return;
    }
    let logs = logs();
    let r = TlsRedis::start(true);
    // Without a certificate: refused by Redis (after the handshake, TLS
    // 1.3 sends its alert on the first read), counted, degraded.
    let mut anon = Node::start(settings(&config(vec![r.url(0)], &r.pki.ca(), None)));
    wait_connect_errors(&mut anon, 2);
    assert!(!anon.broker.is_up());
    let lines = logs.lock().unwrap().clone();
    let wanted = "connection failed: TLS error from Redis: received fatal alert: CertificateRequired (Redis requires a client certificate: set redis_tls_cert and redis_tls_key); retrying";
    assert!(
        lines.iter().any(|l| l.contains(wanted)),
        "no log line with {wanted:?} in {lines:?}"
    );
    let Node { broker, .. } = anon;
    broker.shutdown();
    // With one signed by the CA Redis trusts: works both ways.
    let client = r.pki.issue("node", &["node-a"]);
    let c = config(vec![r.url(0)], &r.pki.ca(), Some(&client));
    let mut a = Node::start(settings(&c));
    let mut b = Node::start(settings(&c));
    a.wait_up("x");
    b.wait_up("x");
    b.subscribe("mtls");
    let t = a
        .port
        .publish(&a.envelope("mtls", Kind::RawText, b"hello"))
        .unwrap();
    assert_eq!(a.reply(t, T), Ok(Reply::Published));
    assert!(b.wait(T, |n| !n.take_messages_peek().is_empty()));
    assert_eq!(b.take_messages()[0].payload, b"hello");
    assert_eq!(a.broker.metrics().connect_errors.load(Ordering::SeqCst), 0);
}

/// Inodes of this process' TCP sockets connected to `port` on 127.0.0.1.
fn sockets_to(port: u16) -> HashSet<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let remote = format!("0100007F:{port:04X}");
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(2) == Some(&remote.as_str())).then(|| f.get(9)?.parse().ok())?
        })
        .collect()
}

/// Descriptors of this process open on sockets connected to `port`
/// (a cloned socket counts once per descriptor).
fn descriptors_to(port: u16) -> usize {
    let inodes = sockets_to(port);
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_str()?.to_string();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .filter(|i| inodes.contains(i))
        .count()
}

#[test]
fn the_open_files_reserve_covers_what_the_bridge_holds() {
    if !have_redis() {
        return;
    }
    let r = TlsRedis::start(false);
    // Two shards (two databases of one server: separate connections).
    let c = config(vec![r.url(0), r.url(1)], &r.pki.ca(), None);
    let reserve = wsrelay::broker::descriptors(&c) as usize;
    let mut n = Node::start(settings(&c));
    n.wait_up("x");
    // A subscription on each shard (a subscriber connection is "pubsub"
    // for CLIENT KILL only once it subscribed).
    for shard in 0..2 {
        let ch = (0..)
            .map(|i| format!("c{i}"))
            .find(|ch| wsrelay::broker::shard_of(ch, 2) == shard)
            .unwrap();
        n.subscribe(&ch);
    }
    // Two connections per shard, each held three times (writer, reader
    // thread, the clone that unblocks the reader at shutdown).
    let steady = 2 * 2 * 3;
    assert!(
        n.wait(T, |_| descriptors_to(r.port) == steady),
        "{} descriptors",
        descriptors_to(r.port)
    );
    assert!(steady <= reserve, "{steady} > reserve {reserve}");
    // Reconnects leave nothing behind.
    for _ in 0..3 {
        let before = n.broker.metrics().reconnects.load(Ordering::SeqCst);
        assert_eq!(
            r.redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]).trim(),
            "2"
        );
        assert!(
            n.wait(T, |n| n.broker.metrics().reconnects.load(Ordering::SeqCst)
                >= before + 2
                && n.broker.is_up())
        );
        assert!(
            n.wait(T, |_| descriptors_to(r.port) == steady),
            "{} descriptors after a reconnect",
            descriptors_to(r.port)
        );
    }
    let Node { broker, .. } = n;
    broker.shutdown();
    // The reader threads let go of theirs as their sockets close.
    let until = std::time::Instant::now() + T;
    while descriptors_to(r.port) != 0 {
        assert!(
            std::time::Instant::now() < until,
            "{} descriptors left after shutdown",
            descriptors_to(r.port)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
