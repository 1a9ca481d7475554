//! Unit tests of the config module: value syntax, the key table, file,
//! environment and flag parsing, validation, and the docs table.

use super::cli::cli_command;
use super::keys::KEY_NAMES;
use super::*;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

mod layers;
mod values;

pub(super) fn temp_file(contents: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "wsrelay-config-unit-{}-{}.toml",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, contents).expect("write temp config");
    path
}

pub(super) fn args(extra: &[&str]) -> Vec<String> {
    std::iter::once("wsrelay")
        .chain(extra.iter().copied())
        .map(str::to_string)
        .collect()
}

/// Parses with no environment at all (the process's is never read).
pub(super) fn run(extra: &[&str]) -> Result<Config, ConfigError> {
    run_env(extra, &[])
}

pub(super) fn run_env(extra: &[&str], env: &[(&str, &str)]) -> Result<Config, ConfigError> {
    match parse_args_with_env(args(extra), env.iter().map(|(k, v)| (*k, *v)))? {
        Command::Run(c) => Ok(c),
        Command::PrintConfig(_) => panic!("unexpected PrintConfig"),
    }
}

pub(super) fn no_env() -> Vec<(OsString, OsString)> {
    Vec::new()
}

pub(super) fn err(extra: &[&str]) -> String {
    let e = run(extra).expect_err("expected an error");
    assert_eq!(e.exit_code(), 2);
    let s = e.to_string();
    assert!(!s.contains('\n'), "error must be one line: {s}");
    assert!(s.starts_with("config error: "), "{s}");
    s
}

pub(super) fn file_err(toml: &str) -> String {
    let e = Config::from_toml_str(toml, "/etc/wsrelay.toml").expect_err("expected an error");
    let s = e.to_string();
    assert!(!s.contains('\n'), "error must be one line: {s}");
    assert_eq!(e.exit_code(), 2);
    s
}

#[test]
fn defaults_are_valid_and_documented_values() {
    let c = Config::default();
    c.validate().expect("defaults validate");
    assert_eq!(c.listen, "127.0.0.1:9001".parse().unwrap());
    assert_eq!(c.max_request_head_bytes, 8192);
    assert_eq!(c.ping_interval, Duration::from_secs(30));
    assert!(c.metrics);
    assert_eq!(c.log_level, "info");
    assert!(c.effective_workers() >= 1);
    assert_eq!(run(&[]).unwrap(), c);
}

#[test]
fn keys_table_matches_entries_and_flags() {
    let names: Vec<_> = Config::default()
        .entries()
        .iter()
        .map(|(k, _)| *k)
        .collect();
    let keys = KEY_NAMES.to_vec();
    assert_eq!(names, keys);
    let cmd = cli_command();
    for k in keys {
        let arg = cmd
            .get_arguments()
            .find(|a| a.get_id().as_str() == k)
            .unwrap_or_else(|| panic!("no flag for key {k}"));
        assert_eq!(arg.get_long(), Some(k.replace('_', "-").as_str()));
    }
}

#[test]
fn toml_accepts_integers_and_strings_for_sizes() {
    let c = Config::from_toml_str(
        "max_frame_bytes = 1048576\nmax_message_bytes = \"2MiB\"\n",
        "t",
    )
    .unwrap();
    assert_eq!(c.max_frame_bytes, 1 << 20);
    assert_eq!(c.max_message_bytes, 2 << 20);
    let c = Config::from_toml_str("ping_interval = 0\nstats_interval = \"0\"", "t").unwrap();
    assert!(c.ping_interval.is_zero() && c.stats_interval.is_zero());
}

#[test]
fn unknown_key_is_named_with_file_and_suggestion() {
    let e = file_err("workers = 2\npign_interval = \"30s\"\n");
    assert_eq!(
        e,
        "config error: unknown key \"pign_interval\" in /etc/wsrelay.toml (line 2 column 1; did you mean \"ping_interval\"?)"
    );
    let e = file_err("[server]\nlisten = \"0.0.0.0:80\"\n");
    assert!(e.contains("unknown key \"server\""), "{e}");
    let e = file_err("zzzzzzzzzzzzzz = 1");
    assert!(
        e.contains("unknown key \"zzzzzzzzzzzzzz\"") && !e.contains("did you mean"),
        "{e}"
    );
}

#[test]
fn bad_values_name_the_key() {
    let e = file_err("\n\nping_interval = \"30x\"\n");
    assert_eq!(
        e,
        "config error: key \"ping_interval\" in /etc/wsrelay.toml (line 3 column 1): invalid duration \"30x\" (unknown unit \"x\"; expected e.g. 30s, 500ms)"
    );
    for (toml, needles) in [
        (
            "ping_interval = 30",
            &["key \"ping_interval\"", "a unit is required"][..],
        ),
        (
            "max_frame_bytes = -1",
            &["key \"max_frame_bytes\"", "non-negative"],
        ),
        (
            "max_frame_bytes = \"1M\"",
            &["key \"max_frame_bytes\"", "ambiguous"],
        ),
        ("workers = \"four\"", &["key \"workers\"", "invalid number"]),
        ("workers = -3", &["key \"workers\"", "out of range"]),
        (
            "rate_limit_messages = 5000000000",
            &["key \"rate_limit_messages\"", "out of range"],
        ),
        (
            "echo_self = \"yes\"",
            &["key \"echo_self\"", "expected true or false"],
        ),
        (
            "slow_consumer = \"block\"",
            &["key \"slow_consumer\"", "\"close\" or \"drop\""],
        ),
        (
            "listen = \"localhost\"",
            &["key \"listen\"", "invalid socket address"],
        ),
        (
            "subprotocols = \"chat\"",
            &["key \"subprotocols\"", "array of strings"],
        ),
        ("subprotocols = [1]", &["key \"subprotocols\"", "integer 1"]),
        (
            "log_level = \"loud\"",
            &["key \"log_level\"", "error, warn, info"],
        ),
        (
            "handshake_timeout = 1.5",
            &["key \"handshake_timeout\"", "float"],
        ),
    ] {
        let e = file_err(toml);
        for n in needles {
            assert!(e.contains(n), "{toml}: {e}");
        }
    }
}

#[test]
fn toml_syntax_error_is_one_line_with_position() {
    let e = file_err("workers = 2\nlisten = \n");
    assert!(
        e.starts_with("config error: invalid TOML in /etc/wsrelay.toml line 2"),
        "{e}"
    );
    let e = file_err("workers = 1\nworkers = 2\n");
    assert!(e.contains("invalid TOML"), "{e}");
}

#[test]
fn precedence_flags_over_file_over_defaults() {
    let path = temp_file(
        "workers = 3\nping_interval = \"1m\"\nmax_frame_bytes = \"64KiB\"\necho_self = true\nsubprotocols = [\"a\", \"b\"]\n",
    );
    let p = path.to_str().unwrap();
    let c = run(&[
        "--config",
        p,
        "--workers",
        "5",
        "--echo-self=false",
        "--subprotocols",
        "c",
    ])
    .unwrap();
    assert_eq!(c.workers, 5); // flag beats file
    assert!(!c.echo_self); // flag beats file
    assert_eq!(c.subprotocols, vec!["c".to_string()]); // flag replaces list
    assert_eq!(c.ping_interval, Duration::from_secs(60)); // file beats default
    assert_eq!(c.max_frame_bytes, 64 * 1024); // file beats default
    assert_eq!(c.max_message_bytes, 1 << 20); // default
                                              // Flag order relative to --config does not matter; last repeated flag wins.
    let c = run(&["--workers", "5", "--workers", "7", "-c", p]).unwrap();
    assert_eq!(c.workers, 7);
    std::fs::remove_file(path).ok();
}

#[test]
fn flags_fix_invalid_file_values() {
    let path = temp_file("workers = 5000\n");
    let p = path.to_str().unwrap();
    assert!(err(&["-c", p]).contains("key \"workers\""));
    assert_eq!(run(&["-c", p, "--workers", "8"]).unwrap().workers, 8);
    std::fs::remove_file(path).ok();
}

#[test]
fn bool_and_list_flag_forms() {
    assert!(run(&["--echo-self"]).unwrap().echo_self);
    assert!(run(&["--echo-self", "true"]).unwrap().echo_self);
    assert!(run(&["--echo-self=yes"]).unwrap().echo_self);
    assert!(!run(&["--metrics", "false"]).unwrap().metrics);
    assert!(!run(&["--metrics=off"]).unwrap().metrics);
    let c = run(&["--pin-cores", "--echo-self", "--metrics=0"]).unwrap();
    assert!(c.pin_cores && c.echo_self && !c.metrics);
    let c = run(&["--allowed-origins", "https://a.example, https://b.example"]).unwrap();
    assert_eq!(
        c.allowed_origins,
        ["https://a.example", "https://b.example"]
    );
    let path = temp_file("subprotocols = [\"x\"]\n");
    let c = run(&["-c", path.to_str().unwrap(), "--subprotocols", ""]).unwrap();
    assert!(c.subprotocols.is_empty());
    std::fs::remove_file(path).ok();
}

#[test]
fn bad_flags_name_the_key() {
    assert_eq!(
        err(&["--ping-interval", "30x"]),
        "config error: key \"ping_interval\" (flag --ping-interval): invalid duration \"30x\" (unknown unit \"x\"; expected e.g. 30s, 500ms)"
    );
    assert!(err(&["--max-frame-bytes", "lots"]).contains("key \"max_frame_bytes\""));
    assert_eq!(
        err(&["--workers", "-1"]),
        "config error: key \"workers\" (flag --workers): invalid number \"-1\" (expected a non-negative integer)"
    );
    assert!(err(&["--ping-interval", "-5s"]).contains("must not be negative"));
    // A missing value is reported, not silently filled with the next flag.
    assert!(err(&["--workers", "--echo-self"]).contains("key \"workers\""));
    assert!(err(&["--echo-self=maybe"]).contains("key \"echo_self\""));
    assert!(err(&["--log-level", "loud"]).contains("key \"log_level\""));
    assert!(err(&["--slow-consumer", "block"]).contains("key \"slow_consumer\""));
    let e = err(&["--pign-interval", "30s"]);
    assert!(
        e.contains("--pign-interval") && e.contains("--ping-interval"),
        "{e}"
    );
    let e = err(&["--workers"]);
    assert!(e.contains("--workers"), "{e}");
    let e = err(&["stray"]);
    assert!(e.contains("stray"), "{e}");
    let e = err(&["--config", "/nonexistent/wsrelay-no-such.toml"]);
    assert!(
        e.contains("cannot read config file /nonexistent/wsrelay-no-such.toml"),
        "{e}"
    );
}

#[test]
fn help_and_version_exit_zero() {
    for flag in ["--help", "-h", "--version", "-V"] {
        let e = parse_args_with_env(args(&[flag]), no_env()).expect_err(flag);
        assert_eq!(e.exit_code(), 0, "{flag}");
        assert!(e.is_help());
        assert!(e.to_string().contains("wsrelay"), "{flag}: {e}");
    }
    let help = parse_args_with_env(args(&["--help"]), no_env())
        .unwrap_err()
        .to_string();
    assert!(help.contains("--max-frame-bytes <SIZE>"), "{help}");
    assert!(help.contains("[default: 1MiB]"), "{help}");
    assert!(help.contains("[default: 30s]"), "{help}");
    assert!(help.contains("Precedence"), "{help}");
}

#[test]
fn validate_cross_field_checks() {
    let check = |f: &dyn Fn(&mut Config), key: &str| {
        let mut c = Config::default();
        f(&mut c);
        let e = c.validate().expect_err(key).to_string();
        assert!(e.contains(&format!("key \"{key}\"")), "{key}: {e}");
        assert!(!e.contains('\n'));
    };
    check(&|c| c.workers = MAX_WORKERS + 1, "workers");
    check(&|c| c.max_frame_bytes = 0, "max_frame_bytes");
    check(&|c| c.max_connections = 0, "max_connections");
    check(&|c| c.max_room_name_bytes = 0, "max_room_name_bytes");
    check(&|c| c.max_room_name_bytes = 1025, "max_room_name_bytes");
    check(
        &|c| c.handshake_timeout = Duration::ZERO,
        "handshake_timeout",
    );
    check(&|c| c.pong_timeout = Duration::ZERO, "pong_timeout");
    check(&|c| c.rate_limit_burst = 10, "rate_limit_burst");
    check(
        &|c| c.subprotocols = vec!["bad token".into()],
        "subprotocols",
    );
    check(
        &|c| c.subprotocols = vec!["a".into(), "a".into()],
        "subprotocols",
    );
    check(
        &|c| c.allowed_origins = vec![String::new()],
        "allowed_origins",
    );
    check(&|c| c.publish_token = " secret".into(), "publish_token");
    check(&|c| c.log_level = "verbose".into(), "log_level");

    let mut c = Config {
        workers: MAX_WORKERS,
        max_room_name_bytes: 1024,
        ping_interval: Duration::ZERO,
        pong_timeout: Duration::ZERO, // fine: heartbeats are off
        rate_limit_messages: 100,
        ..Config::default()
    };
    assert_eq!(c.effective_rate_limit_burst(), 100);
    c.rate_limit_burst = 10;
    assert_eq!(c.effective_rate_limit_burst(), 10);
    c.validate().unwrap();
}

pub(super) fn non_default() -> Config {
    Config {
        listen: "[::1]:8080".parse().unwrap(),
        workers: 7,
        pin_cores: true,
        max_connections: 12_345,
        max_connections_per_ip: 17,
        ipv6_prefix_len: 48,
        trusted_proxies: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
        proxy_protocol: true,
        proxy_header_timeout: Duration::from_secs(2),
        max_request_head_bytes: 1500,
        max_request_headers: 33,
        max_frame_bytes: 2 << 20,
        max_message_bytes: 3_000_000,
        max_outbound_bytes: 1,
        compression: true,
        compression_level: 5,
        compression_min_bytes: 128,
        slow_consumer: SlowConsumerPolicy::Drop,
        fanout_queue_len: 99,
        read_buffer_bytes: 16 << 10,
        read_budget_bytes: 1 << 30,
        buffer_pool_size: 0,
        send_buffer_bytes: 12_345,
        handshake_timeout: Duration::from_millis(2500),
        close_timeout: Duration::ZERO,
        ping_interval: Duration::from_secs(90),
        pong_timeout: Duration::from_millis(7),
        shutdown_timeout: Duration::from_secs(7200),
        stats_interval: Duration::ZERO,
        echo_self: true,
        subprotocols: vec!["chat.v2".into(), "json".into()],
        allowed_origins: vec!["https://a.example".into(), "http://b.example:8080".into()],
        max_rooms: 5,
        max_room_name_bytes: 1024,
        rate_limit_messages: 50,
        rate_limit_burst: 200,
        rate_limit_bytes: 4_000_000,
        rate_limit_policy: RateLimitPolicy::Drop,
        publish_token: "s3cr\"et\\'#".into(),
        metrics: false,
        admin_listen: Some("[::1]:8081".parse().unwrap()),
        public_routes: vec!["health".into()],
        tls_listen: Some("[::1]:8443".parse().unwrap()),
        tls_cert: "/etc/wsrelay/chain.pem".into(),
        tls_key: "/etc/wsrelay/key.pem".into(),
        log_level: "trace".into(),
        log_format: "json".into(),
        token_hmac_secret_key: "hmac-nd".into(),
        token_rsa_public_key: "rsa-nd.pem".into(),
        token_ecdsa_public_key: "ec-nd.pem".into(),
        token_audience: "aud-nd".into(),
        token_issuer: "iss-nd".into(),
        allow_anonymous_connect_without_token: true,
        disallow_anonymous_connection_tokens: true,
        client_channel_limit: 13,
        client_stale_close_delay: Duration::from_secs(3),
        client_expired_close_delay: Duration::from_secs(4),
        client_expired_sub_close_delay: Duration::from_secs(5),
        history_max_bytes: 3 << 20,
        presence_max_clients: 103,
        api_key: "api-nd".into(),
        max_api_body_bytes: 3 << 16,
        demo: true,
        history_size: 3,
        history_ttl: Duration::from_secs(180),
        force_recovery: true,
        force_positioning: true,
        presence: true,
        join_leave: true,
        allow_subscribe_for_client: true,
        allow_subscribe_for_anonymous: true,
        allow_publish_for_subscriber: true,
        allow_publish_for_client: true,
        allow_publish_for_anonymous: true,
        allow_history_for_subscriber: true,
        allow_history_for_client: true,
        allow_presence_for_subscriber: true,
        allow_presence_for_client: true,
        allow_user_limited_channels: true,
        namespaces: crate::config::namespaces::test_namespaces("nd"),
        broker: "redis".to_string(),
        redis_url: vec![
            "redis://10.0.0.1:6380/2".to_string(),
            "unix:///run/redis.sock?db=3".to_string(),
        ],
        redis_prefix: "nd".to_string(),
        redis_publish_timeout: Duration::from_millis(150),
        redis_connect_timeout: Duration::from_millis(2500),
        redis_tls_ca: "/etc/wsrelay/redis-ca.pem".into(),
        redis_tls_cert: "/etc/wsrelay/redis-node.pem".into(),
        redis_tls_key: "/etc/wsrelay/redis-node.key".into(),
        redis_reconnect_max_delay: Duration::from_millis(9000),
        redis_subscribe_linger: Duration::from_millis(0),
        redis_outbox_len: 100,
        redis_inbox_len: 200,
        redis_batch: 16,
        redis_node_info_interval: Duration::from_millis(5000),
        redis_node_channels_max: 2000,
        presence_ttl: Duration::from_secs(30),
    }
}

#[test]
fn to_toml_round_trips() {
    for c in [Config::default(), non_default()] {
        let text = c.to_toml();
        assert_eq!(
            Config::from_toml_str(&text, "printed").unwrap(),
            c,
            "{text}"
        );
    }
    // Values beyond TOML's i64 range still round-trip (as strings).
    let c = Config {
        max_connections: usize::MAX,
        max_frame_bytes: usize::MAX,
        ..Config::default()
    };
    assert_eq!(Config::from_toml_str(&c.to_toml(), "printed").unwrap(), c);
    // Every field in non_default() differs from the default, so a key
    // missing from to_toml would fail the round trip above.
    let (d, n) = (Config::default().entries(), non_default().entries());
    for ((k, a), (_, b)) in d.iter().zip(&n) {
        assert_ne!(a, b, "non_default() must change {k}");
    }
}

#[test]
fn print_config_command_round_trips() {
    let path = temp_file("ping_interval = \"45s\"\npublish_token = \"tok\"\n");
    let p = path.to_str().unwrap();
    let cmd = parse_args_with_env(
        args(&["--print-config", "-c", p, "--max-frame-bytes", "64KiB"]),
        no_env(),
    )
    .unwrap();
    let Command::PrintConfig(c) = cmd else {
        panic!("expected PrintConfig")
    };
    assert_eq!(c.workers, 0, "print-config keeps the stored workers value");
    assert_eq!(c.ping_interval, Duration::from_secs(45));
    assert_eq!(c.max_frame_bytes, 64 << 10);
    let text = c.to_toml();
    assert!(text.contains("max_frame_bytes = \"64KiB\""), "{text}");
    assert!(text.contains("ping_interval = \"45s\""), "{text}");
    assert_eq!(Config::from_toml_str(&text, "printed").unwrap(), c);
    std::fs::remove_file(path).ok();
}

#[test]
fn the_documented_pubsub_example_is_a_valid_config() {
    let doc = include_str!("../../../docs/configuration.md");
    let at = doc
        .find("A chat application's configuration")
        .expect("section");
    let block = &doc[at..];
    let start = block.find("```toml\n").expect("toml block") + 8;
    let end = start + block[start..].find("```").expect("end");
    let c = Config::from_toml_str(&block[start..end], "docs").unwrap();
    c.validate().unwrap();
    let chat = c.channel_options("chat").expect("chat namespace");
    assert_eq!(chat.history_size, 100);
    assert!(chat.presence && chat.force_recovery);
    assert!(c.channel_options("other").is_none());
}

#[test]
fn namespaces_are_checked_like_top_level_keys() {
    let err = |text: &str| {
        Config::from_toml_str(text, "t.toml")
            .unwrap_err()
            .to_string()
    };
    let e = err("[[namespaces]]\nname = \"chat\"\npresense = true\n");
    assert!(e.contains("\"presense\" is not a channel option"), "{e}");
    let e = err("[[namespaces]]\nname = \"chat\"\n[[namespaces]]\nname = \"chat\"\n");
    assert!(e.contains("defined twice"), "{e}");
    let e = err("[[namespaces]]\nname = \"a b\"\n");
    assert!(e.contains("invalid name"), "{e}");
    let e = err("[[namespaces]]\nname = \"chat\"\nhistory_size = 10\n");
    assert!(e.contains("history_ttl"), "{e}");
    let e = err("[[namespaces]]\nname = \"chat\"\nhistory_ttl = \"30\"\n");
    assert!(e.contains("unit is required"), "{e}");
    let e = err("[[namespaces]]\npresence = true\n");
    assert!(e.contains("needs a `name`"), "{e}");
    // Top level: history keys must come together too.
    let c = Config::from_toml_str("history_size = 5\n", "t.toml").unwrap();
    assert!(c
        .validate()
        .unwrap_err()
        .to_string()
        .contains("history_ttl"));
}
