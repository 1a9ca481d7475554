//! The Redis bridge end to end, per transport: node A publishes a burst of
//! envelopes (raw text, 128 B payload), node B (subscribed) receives them
//! all through a private redis-server; both bridges in this process, as in
//! tests/broker. One shard, each node one worker port.
//!
//! - `broker_burst/unix/1000`: Redis on its unix socket;
//! - `broker_burst/tcp/1000`: on 127.0.0.1 over TCP;
//! - `broker_burst/tls/1000`: on 127.0.0.1 over TLS 1.3 (`rediss://`,
//!   rustls with aws-lc-rs against Redis' OpenSSL), certificates from
//!   rcgen.
//!
//! - `node_record/{encode,decode}/10000`: a node record with 10,000
//!   channels (cluster-wide `info`/`channels`), no Redis.
//!
//! Throughput is set to the burst, so "elements/s" is envelopes published
//! and delivered per second (Redis, both bridges and the bench on the same
//! cores). Skipped with a message without redis-server.
//!
//! Run (figures in docs/cluster.md):
//!   cargo bench --bench broker -- --warm-up-time 1 --measurement-time 5

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mio::{Events, Poll, Token as MioToken, Waker};
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use wsrelay::broker::{
    Broker, BrokerEvent, BrokerPort, BrokerSettings, Envelope, Kind, NodeId, NodeRecord,
};
use wsrelay::config::Config;
use wsrelay::pubsub::api::NodeInfo;

// Shared with the test crates; the bench needs only part of it.
#[allow(dead_code)]
#[path = "../tests/common/redis_server.rs"]
mod redis_server;
use redis_server::{have_redis, RedisServer};

const BURST: usize = 1000;
const PAYLOAD: usize = 128;

struct Node {
    _broker: Broker,
    port: BrokerPort,
    poll: Poll,
    _waker: Arc<Waker>,
    events: Vec<BrokerEvent>,
}

impl Node {
    fn start(c: &Config) -> Node {
        let poll = Poll::new().unwrap();
        let waker = Arc::new(Waker::new(poll.registry(), MioToken(0)).unwrap());
        let mut s = BrokerSettings::from_config(c).unwrap().unwrap();
        s.linger = Duration::ZERO;
        let (broker, mut ports) = Broker::start(s, vec![waker.clone()]).unwrap();
        Node {
            _broker: broker,
            port: ports.remove(0),
            poll,
            _waker: waker,
            events: Vec::new(),
        }
    }

    /// Takes events (and drops replies) until `done` or 10 s.
    fn wait(&mut self, mut done: impl FnMut(&mut Node) -> bool) {
        let until = Instant::now() + Duration::from_secs(10);
        let mut ev = Events::with_capacity(8);
        let mut replies = Vec::new();
        loop {
            self.port.flush_interest();
            self.port.recv_events(&mut self.events);
            self.port.recv_replies(&mut replies);
            replies.clear();
            if done(self) {
                return;
            }
            assert!(Instant::now() < until, "the bridge stalled");
            if self.port.prepare_sleep() {
                self.poll
                    .poll(&mut ev, Some(Duration::from_millis(20)))
                    .unwrap();
                self.port.awake();
            }
        }
    }
}

/// Files of a CA and a server certificate for 127.0.0.1 in `dir`.
fn certificates(dir: &std::path::Path) {
    std::fs::create_dir_all(dir).unwrap();
    let ca_key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = p.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), leaf.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn broker_burst(c: &mut Criterion) {
    if !have_redis() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("wsrelay-bench-pki-{}", std::process::id()));
    certificates(&dir);
    let file = |n: &str| dir.join(n).to_str().unwrap().to_string();
    let (tcp, tls) = (free_port(), free_port());
    let args = [
        "--port",
        &tcp.to_string(),
        "--bind",
        "127.0.0.1",
        "--tls-port",
        &tls.to_string(),
        "--tls-cert-file",
        &file("server.pem"),
        "--tls-key-file",
        &file("server.key"),
        "--tls-ca-cert-file",
        &file("ca.pem"),
        "--tls-auth-clients",
        "no",
    ]
    .map(String::from);
    let redis = RedisServer::start_with(&args);
    let payload: Vec<u8> = (0..PAYLOAD).map(|i| b'a' + (i % 26) as u8).collect();
    let mut g = c.benchmark_group("broker_burst");
    g.throughput(Throughput::Elements(BURST as u64));
    for (name, url) in [
        ("unix", redis.url()),
        ("tcp", format!("redis://127.0.0.1:{tcp}/0")),
        ("tls", format!("rediss://127.0.0.1:{tls}/0")),
    ] {
        let config = Config {
            broker: "redis".to_string(),
            redis_url: vec![url],
            redis_tls_ca: file("ca.pem"),
            ..Config::default()
        };
        let mut a = Node::start(&config);
        let mut b = Node::start(&config);
        let channel = format!("bench-{name}");
        b.port.interest(&channel, true);
        b.wait(|n| {
            n.events
                .iter()
                .any(|e| matches!(e, BrokerEvent::Subscribed { .. }))
        });
        a.wait(|n| n.port.is_up(&channel));
        let env = Envelope {
            kind: Kind::RawText,
            origin: a.port.node(),
            channel: channel.clone(),
            position: None,
            info: None,
            payload: payload.clone(),
        };
        g.bench_function(BenchmarkId::new(name, BURST), |bench| {
            bench.iter_custom(|iters| {
                let started = Instant::now();
                for _ in 0..iters {
                    b.events.clear();
                    for _ in 0..BURST {
                        a.port.publish(&env).expect("publish accepted");
                    }
                    b.wait(|n| n.events.len() >= BURST);
                    // A's replies, so its reply queue never fills.
                    a.wait(|_| true);
                }
                started.elapsed()
            })
        });
    }
    g.finish();
    drop(redis);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A node record at the default bound (10,000 channels, 20-byte names):
/// what a node spends every `redis_node_info_interval` to encode its own
/// and, per other node, to decode theirs (no Redis needed).
fn node_record(c: &mut Criterion) {
    let record = NodeRecord {
        node: NodeId([7; 16]),
        info: NodeInfo {
            uid: "0123456789abcdef".into(),
            name: "wsrelay@web-1:8000".into(),
            version: "1.0.0".into(),
            num_clients: 100_000,
            num_users: 90_000,
            num_channels: 10_000,
            num_subs: 500_000,
            uptime: 86_400,
        },
        channels: (0..10_000u32)
            .map(|i| (format!("chat:room-{i:010}"), i % 97 + 1))
            .collect(),
        truncated: false,
    };
    let bytes = record.encode();
    eprintln!("node record, 10,000 channels: {} bytes", bytes.len());
    let mut g = c.benchmark_group("node_record");
    g.throughput(Throughput::Elements(record.channels.len() as u64));
    g.bench_function("encode/10000", |b| b.iter(|| record.encode()));
    g.bench_function("decode/10000", |b| {
        b.iter(|| NodeRecord::decode(&bytes, 10_000).expect("a record"))
    });
    g.finish();
}

criterion_group!(benches, broker_burst, node_record);
criterion_main!(benches);
