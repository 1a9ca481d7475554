//! Whole runs of the generator against three relay nodes in process,
//! sharing channels through a private redis-server (`broker = "redis"`):
//! receivers spread over the nodes, publishers on chosen nodes, and the
//! per-node report. Skipped, with a message, when redis-server is not
//! installed. Runs are bounded by `--max-messages`; the durations given are
//! upper bounds no assertion depends on.

use crate::cli::Cli;
use crate::report::Summary;
use crate::run;
use clap::Parser;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};
use wsrelay::config::Config;
use wsrelay::server::ServerHandle;

/// redis-server on a unix socket in a temp dir (no TCP port, no
/// persistence), shut down on drop.
struct Redis {
    dir: PathBuf,
}

impl Redis {
    /// None (and a message) when redis-server or redis-cli is missing.
    fn start() -> Option<Redis> {
        let have = ["redis-server", "redis-cli"].iter().all(|b| {
            Command::new(b)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        });
        if !have {
            eprintln!("SKIPPED: redis-server or redis-cli is not installed");
            return None;
        }
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsrelay-load-redis-{}-{}",
            std::process::id(),
            N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let r = Redis { dir };
        let ok = Command::new("redis-server")
            .args(["--port", "0", "--unixsocket"])
            .arg(r.socket())
            .args(["--daemonize", "yes", "--save", "", "--appendonly", "no"])
            .arg("--pidfile")
            .arg(r.dir.join("redis.pid"))
            .arg("--dir")
            .arg(&r.dir)
            .arg("--logfile")
            .arg(r.dir.join("redis.log"))
            .status()
            .unwrap()
            .success();
        assert!(ok, "redis-server did not start");
        let until = Instant::now() + Duration::from_secs(10);
        while r.cli(&["PING"]).trim() != "PONG" {
            assert!(Instant::now() < until, "redis-server did not answer");
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(r)
    }

    fn socket(&self) -> PathBuf {
        self.dir.join("redis.sock")
    }

    fn url(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    fn cli(&self, args: &[&str]) -> String {
        Command::new("redis-cli")
            .arg("-s")
            .arg(self.socket())
            .args(args)
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.cli(&["SHUTDOWN", "NOSAVE"]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One node on the shared Redis, once its bridge is connected.
fn node(redis: &Redis, extra: &str) -> ServerHandle {
    let toml = format!(
        "listen = \"127.0.0.1:0\"\nworkers = 1\nstats_interval = \"0s\"\n\
         shutdown_timeout = \"500ms\"\nbroker = \"redis\"\nredis_url = [\"{}\"]\n{extra}",
        redis.url()
    );
    let c = Config::from_toml_str(&toml, "test").expect("config");
    let h = wsrelay::server::start(c).expect("relay starts");
    let until = Instant::now() + Duration::from_secs(10);
    while !h.shared().broker.as_ref().is_some_and(|b| b.is_up()) {
        assert!(Instant::now() < until, "broker did not connect");
        std::thread::sleep(Duration::from_millis(10));
    }
    h
}

fn url(h: &ServerHandle) -> String {
    format!("ws://127.0.0.1:{}", h.local_addr().port())
}

fn run_gen(args: &[&str]) -> Summary {
    crate::clock::init();
    let mut all = vec!["wsrelay-load", "-q"];
    all.extend_from_slice(args);
    let cli = Cli::try_parse_from(&all).unwrap();
    let (setup, params) = run::build_setup(&cli).unwrap();
    let limits = run::check_limits(&setup);
    run::execute(setup, &cli.common, params, limits)
}

fn stop(nodes: Vec<ServerHandle>) {
    for h in &nodes {
        h.shutdown();
    }
    for h in nodes {
        h.join();
    }
}

/// Raw rooms over three nodes: 9 subscribers in 3 rooms (every room has a
/// member on every node), publishers on nodes 1 and 2. Every node gets
/// every message of its rooms once and in order, whichever node it was
/// published on; the per-node figures add up to the totals, and both
/// same-node and cross-node deliveries are timed.
#[test]
fn fanout_over_three_nodes_on_redis() {
    let Some(redis) = Redis::start() else { return };
    let nodes: Vec<ServerHandle> = (0..3).map(|_| node(&redis, "")).collect();
    let u: Vec<String> = nodes.iter().map(url).collect();
    let s = run_gen(&[
        "--url",
        &u[0],
        "--url",
        &u[1],
        "--url",
        &u[2],
        "--publish-url",
        &u[0],
        "--publish-url",
        &u[1],
        "--settle",
        "500ms",
        "--max-messages",
        "600",
        "--duration",
        "30s",
        "--drain",
        "10s",
        "fanout",
        "--subscribers",
        "9",
        "--publishers",
        "2",
        "--rooms",
        "3",
        "--rate",
        "1000",
        "--roles",
    ]);
    assert!(s.pass, "{:?}\n{}", s.problems, s.table());
    let m = &s.messages;
    // Each message goes to the 3 members of its room.
    assert_eq!((m.sent, m.expected, m.delivered_unique), (600, 1800, 1800));
    assert_eq!(m.lost + m.duplicated + m.reordered + m.misrouted, 0);
    let n = s.nodes.as_ref().expect("per-node report");
    assert_eq!(n.nodes.len(), 3);
    for (i, r) in n.nodes.iter().enumerate() {
        assert_eq!(r.url, u[i]);
        assert_eq!(r.receivers, 3, "node {i}");
        // One member of every room here: a third of all deliveries.
        assert_eq!((r.expected, r.delivered_unique), (600, 600), "node {i}");
        assert_eq!((r.lost, r.duplicated, r.reordered), (0, 0, 0), "node {i}");
        assert_eq!(r.received, 600);
        assert_eq!(r.latency.count, 600);
    }
    let pubs: Vec<(u64, u64)> = n
        .nodes
        .iter()
        .map(|r| (r.connections, r.publishers))
        .collect();
    assert_eq!(pubs, vec![(4, 1), (4, 1), (3, 0)]);
    // Of each publisher's 3 receivers one is on its own node.
    assert_eq!(n.same_node_latency.count, 600);
    assert_eq!(n.cross_node_latency.count, 1200);
    assert!(n.window_unix_s[1] > n.window_unix_s[0] && n.window_unix_s[0] > 1.6e9);
    // The table has the section, the JSON the object.
    assert!(s.table().contains("cross-node latency"));
    let j = serde_json::to_value(&s).unwrap();
    assert_eq!(j["nodes"]["nodes"][2]["delivered_unique"], 600);
    assert_eq!(j["url"], u.join(" "));
    stop(nodes);
}

/// Centrifugo clients over three nodes, split 1/2/3, one publisher on
/// node 3 over two channels without history: every subscription on every
/// node gets every publication of its channel once, in order.
#[test]
fn pubsub_split_over_three_nodes_on_redis() {
    let Some(redis) = Redis::start() else { return };
    let ns = "token_hmac_secret_key = \"s\"\n[[namespaces]]\nname = \"chat\"\n\
              allow_subscribe_for_client = true\nallow_publish_for_client = true\n";
    let nodes: Vec<ServerHandle> = (0..3).map(|_| node(&redis, ns)).collect();
    let u: Vec<String> = nodes.iter().map(url).collect();
    let s = run_gen(&[
        "--url",
        &u[0],
        "--url",
        &u[1],
        "--url",
        &u[2],
        "--publish-url",
        &u[2],
        "--split",
        "1,2,3",
        "--settle",
        "500ms",
        "--max-messages",
        "200",
        "--duration",
        "30s",
        "--drain",
        "10s",
        "pubsub",
        "--conns",
        "6",
        "--channels",
        "2",
        "--rate",
        "500",
        "--namespace",
        "chat",
        "--hmac-secret",
        "s",
    ]);
    assert!(s.pass, "{:?}\n{}", s.problems, s.table());
    let p = s.pubsub.as_ref().unwrap();
    // 100 publications per channel, 3 subscriptions per channel.
    assert_eq!(
        (p.publish_ok, p.expected, p.delivered_unique),
        (200, 600, 600)
    );
    let n = s.nodes.as_ref().unwrap();
    let got: Vec<(u64, u64, u64, u64)> = n
        .nodes
        .iter()
        .map(|r| (r.receivers, r.publishers, r.expected, r.delivered_unique))
        .collect();
    // Node 1: subscriber 0 (channel 0); node 2: 1, 2 (channels 1, 0);
    // node 3: 3, 4, 5 (channels 1, 0, 1) and the publisher.
    assert_eq!(
        got,
        vec![(1, 0, 100, 100), (2, 0, 200, 200), (3, 1, 300, 300)]
    );
    for r in &n.nodes {
        assert_eq!((r.lost, r.duplicated, r.reordered), (0, 0, 0));
    }
    assert_eq!(n.same_node_latency.count, 300);
    assert_eq!(n.cross_node_latency.count, 300);
    stop(nodes);
}
