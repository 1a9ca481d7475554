//! Whole runs of the generator against the relay, in process, over
//! loopback: `wss://` (TLS handshakes, verification, resumption) and
//! `--deflate` (negotiation, compressed sends and receives, bandwidth
//! figures). Runs are bounded by `--max-messages`; the durations given are
//! upper bounds that no assertion depends on.

use crate::cli::Cli;
use crate::report::Summary;
use crate::run;
use clap::Parser;
use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use wsrelay::config::Config;
use wsrelay::server::ServerHandle;

/// A CA, a `localhost` / 127.0.0.1 leaf it signs (chain and key), in a
/// fresh directory removed on drop.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn new() -> Pki {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "wsrelay-load-tls-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])
            .unwrap()
            .signed_by(&key, &ca, &ca_key)
            .unwrap();
        std::fs::write(dir.join("chain.pem"), format!("{}{}", leaf.pem(), ca.pem())).unwrap();
        std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
        std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
        // A CA that signed nothing here.
        let other_key = KeyPair::generate().unwrap();
        let mut other = CertificateParams::new(Vec::<String>::new()).unwrap();
        other.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let other = other.self_signed(&other_key).unwrap();
        std::fs::write(dir.join("other-ca.pem"), other.pem()).unwrap();
        Pki { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_str().unwrap().to_string()
    }
}

impl Drop for Pki {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn relay(pki: Option<&Pki>, compression: bool) -> ServerHandle {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        workers: 1,
        stats_interval: std::time::Duration::ZERO,
        shutdown_timeout: std::time::Duration::from_millis(500),
        compression,
        ..Config::default()
    };
    if let Some(p) = pki {
        c.tls_listen = Some("127.0.0.1:0".parse().unwrap());
        c.tls_cert = p.path("chain.pem");
        c.tls_key = p.path("key.pem");
    }
    wsrelay::server::start(c).expect("relay starts")
}

fn run_gen(args: &[&str]) -> Summary {
    // As main does: fix the process epoch before any thread reads the clock.
    crate::clock::init();
    let mut all = vec!["wsrelay-load", "-q"];
    all.extend_from_slice(args);
    let cli = Cli::try_parse_from(&all).unwrap();
    let (setup, params) = run::build_setup(&cli).unwrap();
    let limits = run::check_limits(&setup);
    run::execute(setup, &cli.common, params, limits)
}

fn wss_url(h: &ServerHandle, host: &str) -> String {
    format!("wss://{host}:{}", h.tls_addr().unwrap().port())
}

fn stop(h: ServerHandle) {
    h.shutdown();
    h.join();
}

/// Fan-out over wss:// with deflate and JSON payloads: every connection
/// makes a verified TLS handshake and negotiates compression; what the
/// publisher sends and what the subscribers get travels compressed,
/// arrives intact and complete, and costs fewer wire bytes than payload.
#[test]
fn wss_fanout_with_deflate_against_the_relay() {
    let pki = Pki::new();
    let h = relay(Some(&pki), true);
    let url = wss_url(&h, "localhost");
    let ca = pki.path("ca.pem");
    let s = run_gen(&[
        "--url",
        &url,
        "--ca-file",
        &ca,
        "--deflate",
        "--payload",
        "json",
        "--max-messages",
        "200",
        "--duration",
        "30s",
        "--drain",
        "10s",
        "fanout",
        "--subscribers",
        "3",
        "--rate",
        "1000",
        "--size",
        "400",
    ]);
    assert!(s.pass, "{:?}\n{}", s.problems, s.table());
    assert_eq!(s.connections.established, 4);
    let t = s.tls.as_ref().expect("tls figures");
    assert_eq!(
        (
            t.handshakes_full,
            t.handshakes_resumed,
            t.handshake_failures
        ),
        (4, 0, 0)
    );
    assert_eq!(t.verification, "ca-file");
    // The TLS handshake is part of the opening handshake and ends first.
    assert_eq!(t.handshake_latency.count, 4);
    let ws = &s.connections.handshake_latency;
    assert!(t.handshake_latency.max_us <= ws.max_us, "{t:?} {ws:?}");
    let m = &s.messages;
    assert_eq!((m.sent, m.expected, m.delivered_unique), (200, 600, 600));
    assert_eq!(m.corrupted + m.lost, 0);
    let b = &s.bandwidth;
    assert!(b.deflate_offered);
    assert_eq!((b.deflate_negotiated, b.deflate_not_negotiated), (4, 0));
    // Sent: all 200 JSON messages compressed (they shrink).
    assert_eq!((b.messages_out, b.compressed_out), (200, 200));
    assert_eq!(b.payload_out_bytes, 200 * 400);
    // Received: 3 subscribers' copies (the relay does not send the
    // publisher its own), compressed by the relay (over
    // compression_min_bytes).
    assert_eq!(b.messages_in, 600);
    assert_eq!(b.compressed_in, 600);
    assert_eq!(b.payload_in_bytes, 600 * 400);
    assert!(
        b.wire_in_bytes < b.payload_in_bytes && b.wire_out_bytes < b.payload_out_bytes,
        "{b:?}"
    );
    stop(h);
}

/// The same relay without compression: the offer is declined, every
/// message travels plain, and wire bytes exceed payload bytes.
#[test]
fn deflate_declined_by_the_relay_runs_plain() {
    let h = relay(None, false);
    let url = format!("ws://127.0.0.1:{}", h.local_addr().port());
    let s = run_gen(&[
        "--url",
        &url,
        "--deflate",
        "--max-messages",
        "50",
        "--duration",
        "30s",
        "echo",
        "-c",
        "2",
        "--size",
        "256",
    ]);
    assert!(s.pass, "{:?}", s.problems);
    assert!(s.tls.is_none());
    let b = &s.bandwidth;
    assert_eq!((b.deflate_negotiated, b.deflate_not_negotiated), (0, 2));
    assert_eq!((b.compressed_in, b.compressed_out), (0, 0));
    assert_eq!(b.messages_out, 50);
    assert!(b.wire_out_bytes > b.payload_out_bytes && b.wire_in_bytes > b.payload_in_bytes);
    stop(h);
}

/// A certificate from a CA we do not trust: every handshake fails, is
/// counted as a TLS failure with rustls' reason, nothing panics; the same
/// server with --insecure works (and an IP-literal URL checks the IP SAN).
#[test]
fn untrusted_certificates_fail_counted_and_insecure_skips_the_check() {
    let pki = Pki::new();
    let h = relay(Some(&pki), false);
    let url = wss_url(&h, "localhost");
    let other = pki.path("other-ca.pem");
    let s = run_gen(&[
        "--url",
        &url,
        "--ca-file",
        &other,
        "--duration",
        "1s",
        "--connect-timeout",
        "20s",
        "echo",
        "-c",
        "3",
    ]);
    assert!(!s.pass);
    assert_eq!((s.connections.established, s.connections.failed), (0, 3));
    assert_eq!(s.tls.as_ref().unwrap().handshake_failures, 3);
    let reasons: Vec<&String> = s.connections.failures.keys().collect();
    assert!(
        reasons
            .iter()
            .all(|r| r.contains("tls: invalid peer certificate")),
        "{reasons:?}"
    );

    let url = wss_url(&h, "127.0.0.1");
    let s = run_gen(&[
        "--url",
        &url,
        "--insecure",
        "--max-messages",
        "30",
        "--duration",
        "30s",
        "echo",
        "-c",
        "3",
    ]);
    assert!(s.pass, "{:?}", s.problems);
    let t = s.tls.as_ref().unwrap();
    assert_eq!((t.handshakes_full, t.handshake_failures), (3, 0));
    assert_eq!(t.verification, "insecure");
    assert_eq!(s.messages.delivered_unique, 30);
    stop(h);
}

/// Churn over wss://: without --tls-resume every cycle is a full
/// handshake; with it, cycles after the first resume from the ticket.
#[test]
fn churn_over_tls_resumes_only_when_asked() {
    let pki = Pki::new();
    let h = relay(Some(&pki), false);
    let url = wss_url(&h, "localhost");
    let ca = pki.path("ca.pem");
    let churn = |resume: bool| {
        let mut args = vec![
            "--url",
            &url,
            "--ca-file",
            &ca,
            "--max-messages",
            "6",
            "--duration",
            "30s",
        ];
        if resume {
            args.push("--tls-resume");
        }
        args.extend_from_slice(&["churn", "-c", "1"]);
        run_gen(&args)
    };
    let s = churn(false);
    assert!(s.pass, "{:?}", s.problems);
    assert_eq!(s.churn.as_ref().unwrap().cycles, 6);
    let t = s.tls.as_ref().unwrap();
    assert_eq!((t.handshakes_full, t.handshakes_resumed), (6, 0));

    let s = churn(true);
    assert!(s.pass, "{:?}", s.problems);
    let t = s.tls.as_ref().unwrap();
    assert_eq!(t.handshakes_full + t.handshakes_resumed, 6);
    // One slot: each cycle ends (ticket received) before the next starts.
    assert_eq!((t.handshakes_full, t.handshakes_resumed), (1, 5));

    // Twenty slots starting together: the first round makes full
    // handshakes, every later cycle finds a ticket (each slot's previous
    // connection stored its tickets before its 101 was read).
    let mut args = vec![
        "--url",
        &url,
        "--ca-file",
        &ca,
        "--max-messages",
        "100",
        "--duration",
        "30s",
        "--tls-resume",
    ];
    args.extend_from_slice(&["churn", "-c", "20"]);
    let s = run_gen(&args);
    assert!(s.pass, "{:?}", s.problems);
    let t = s.tls.as_ref().unwrap();
    assert_eq!(t.handshakes_full + t.handshakes_resumed, 100);
    assert!(t.handshakes_full <= 20, "{t:?}");
    stop(h);
}

/// wss:// without a way to check the certificate is refused up front, and
/// the TLS flags without wss:// too.
#[test]
fn tls_flags_are_checked() {
    let bad = |args: &[&str]| {
        let mut all = vec!["wsrelay-load"];
        all.extend_from_slice(args);
        let cli = Cli::try_parse_from(&all).unwrap();
        run::build_setup(&cli).err().unwrap()
    };
    assert!(bad(&["--url", "wss://127.0.0.1:1", "echo"]).contains("--ca-file"));
    assert!(bad(&["--url", "ws://127.0.0.1:1", "--insecure", "echo"]).contains("wss://"));
    assert!(bad(&["--url", "ws://127.0.0.1:1", "--tls-resume", "echo"]).contains("wss://"));
    let missing = Path::new("/nonexistent/ca.pem").to_str().unwrap();
    assert!(bad(&["--url", "wss://127.0.0.1:1", "--ca-file", missing, "echo"]).contains("ca.pem"));
    assert!(bad(&["--payload", "json", "echo", "--size", "64"]).contains("header"));
}

/// wss:// pointed at a plain listener: the server answers the ClientHello
/// with an HTTP error, rustls refuses it; counted as TLS handshake
/// failures with the reason, the run ends on its own.
#[test]
fn wss_to_a_plain_listener_fails_counted() {
    let h = relay(None, false);
    let url = format!("wss://127.0.0.1:{}", h.local_addr().port());
    let s = run_gen(&[
        "--url",
        &url,
        "--insecure",
        "--duration",
        "1s",
        "echo",
        "-c",
        "2",
    ]);
    assert!(!s.pass);
    assert_eq!((s.connections.established, s.connections.failed), (0, 2));
    let t = s.tls.as_ref().unwrap();
    assert_eq!((t.handshakes_full, t.handshake_failures), (0, 2));
    assert!(
        s.connections
            .failures
            .keys()
            .all(|r| r.starts_with("handshake read: tls: ")),
        "{:?}",
        s.connections.failures
    );
    stop(h);
}

/// Messages of many TLS records each (200 KB: 13 records), several in
/// flight per connection, over wss://: rustls' 64 KiB send bound meets
/// WouldBlock, the reads gather records until a frame is whole; every
/// echo arrives intact and every close handshake completes.
#[test]
fn large_messages_over_tls() {
    let pki = Pki::new();
    let h = relay(Some(&pki), false);
    let url = wss_url(&h, "localhost");
    let ca = pki.path("ca.pem");
    let s = run_gen(&[
        "--url",
        &url,
        "--ca-file",
        &ca,
        "--max-messages",
        "120",
        "--duration",
        "60s",
        "--drain",
        "30s",
        "echo",
        "-c",
        "4",
        "--in-flight",
        "4",
        "--size",
        "200000",
    ]);
    assert!(s.pass, "{:?}\n{}", s.problems, s.table());
    assert_eq!((s.messages.sent, s.messages.delivered_unique), (120, 120));
    assert_eq!(s.messages.corrupted, 0);
    let c = &s.connections;
    assert_eq!((c.closes_clean, c.closes_unclean, c.lost), (4, 0, 0));
    assert!(s.bandwidth.wire_in_bytes > 120 * 200_000);
    stop(h);
}
