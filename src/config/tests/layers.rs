//! Environment, precedence of the layers, ranges, rules between keys, and
//! the docs table.

use super::super::cli::env_name;
use super::super::keys::KEY_NAMES;
use super::super::*;
use super::*;
use std::ffi::OsString;
use std::time::Duration;

/// Differs from `non_default()` in every key (so it can be told apart as a
/// layer over it), and is valid.
fn alt() -> Config {
    Config {
        listen: "0.0.0.0:7000".parse().unwrap(),
        workers: 3,
        pin_cores: false,
        max_connections: 999,
        max_connections_per_ip: 5,
        ipv6_prefix_len: 56,
        trusted_proxies: vec!["192.168.0.0/16".parse().unwrap()],
        proxy_protocol: false,
        proxy_header_timeout: Duration::from_secs(3),
        max_request_head_bytes: 4 << 10,
        max_request_headers: 20,
        max_frame_bytes: 512 << 10,
        max_message_bytes: 16 << 20,
        max_outbound_bytes: 2 << 20,
        compression: false,
        compression_level: 6,
        compression_min_bytes: 1 << 10,
        slow_consumer: SlowConsumerPolicy::Close,
        fanout_queue_len: 100,
        read_buffer_bytes: 8 << 10,
        read_budget_bytes: 128 << 10,
        buffer_pool_size: 10,
        send_buffer_bytes: 256 << 10,
        handshake_timeout: Duration::from_secs(3),
        close_timeout: Duration::from_secs(1),
        ping_interval: Duration::from_millis(100),
        pong_timeout: Duration::from_secs(60),
        shutdown_timeout: Duration::from_secs(1),
        stats_interval: Duration::from_secs(86_400),
        echo_self: false,
        subprotocols: vec!["mqtt".into()],
        allowed_origins: vec!["https://c.example".into()],
        max_rooms: 6,
        max_room_name_bytes: 1,
        rate_limit_messages: 10,
        rate_limit_burst: 20,
        rate_limit_bytes: 16 << 20,
        rate_limit_policy: RateLimitPolicy::Close,
        publish_token: "env-secret".into(),
        metrics: true,
        admin_listen: Some("127.0.0.1:7001".parse().unwrap()),
        public_routes: vec!["metrics".into(), "api".into()],
        tls_listen: Some("127.0.0.1:7443".parse().unwrap()),
        tls_cert: "/alt/chain.pem".into(),
        tls_key: "/alt/key.pem".into(),
        log_level: "warn".into(),
        log_format: "text".into(),
        token_hmac_secret_key: "hmac-alt".into(),
        token_rsa_public_key: "rsa-alt.pem".into(),
        token_ecdsa_public_key: "ec-alt.pem".into(),
        token_audience: "aud-alt".into(),
        token_issuer: "iss-alt".into(),
        allow_anonymous_connect_without_token: false,
        disallow_anonymous_connection_tokens: false,
        client_channel_limit: 11,
        client_stale_close_delay: Duration::from_secs(1),
        client_expired_close_delay: Duration::from_secs(2),
        client_expired_sub_close_delay: Duration::from_secs(3),
        history_max_bytes: 1 << 20,
        presence_max_clients: 101,
        api_key: "api-alt".into(),
        max_api_body_bytes: 1 << 16,
        demo: false,
        history_size: 1,
        history_ttl: Duration::from_secs(60),
        force_recovery: false,
        force_positioning: false,
        presence: false,
        join_leave: false,
        allow_subscribe_for_client: false,
        allow_subscribe_for_anonymous: false,
        allow_publish_for_subscriber: false,
        allow_publish_for_client: false,
        allow_publish_for_anonymous: false,
        allow_history_for_subscriber: false,
        allow_history_for_client: false,
        allow_presence_for_subscriber: false,
        allow_presence_for_client: false,
        allow_user_limited_channels: false,
        namespaces: crate::config::namespaces::test_namespaces("alt"),
        broker: "memory".to_string(),
        redis_url: vec!["redis://:secret@10.0.0.2:6379/1".to_string()],
        redis_prefix: "alt".to_string(),
        redis_publish_timeout: Duration::from_millis(250),
        redis_connect_timeout: Duration::from_millis(3000),
        redis_tls_ca: "/alt/redis-ca.pem".into(),
        redis_tls_cert: "/alt/redis-node.pem".into(),
        redis_tls_key: "/alt/redis-node.key".into(),
        redis_reconnect_max_delay: Duration::from_millis(4000),
        redis_subscribe_linger: Duration::from_millis(1500),
        redis_outbox_len: 1000,
        redis_inbox_len: 2000,
        redis_batch: 64,
        redis_node_info_interval: Duration::from_millis(1500),
        redis_node_channels_max: 500,
        presence_ttl: Duration::from_secs(90),
    }
}

/// Differs from `alt()` in every key, and is valid.
fn third() -> Config {
    Config {
        listen: "127.0.0.2:6000".parse().unwrap(),
        workers: 1,
        pin_cores: true,
        max_connections: 1,
        max_connections_per_ip: 1,
        ipv6_prefix_len: 128,
        trusted_proxies: vec!["127.0.0.1/32".parse().unwrap(), "fd00::/8".parse().unwrap()],
        proxy_protocol: true,
        proxy_header_timeout: Duration::from_millis(1),
        max_request_head_bytes: 1 << 20,
        max_request_headers: 1024,
        max_frame_bytes: 1,
        max_message_bytes: 1 << 30,
        max_outbound_bytes: 1 << 30,
        compression: true,
        compression_level: 9,
        compression_min_bytes: 0,
        slow_consumer: SlowConsumerPolicy::Drop,
        fanout_queue_len: 1 << 20,
        read_buffer_bytes: 1,
        read_budget_bytes: 1,
        buffer_pool_size: 1 << 20,
        send_buffer_bytes: 1 << 30,
        handshake_timeout: Duration::from_millis(1),
        close_timeout: Duration::from_secs(86_400),
        ping_interval: Duration::from_secs(86_400),
        pong_timeout: Duration::from_millis(1),
        shutdown_timeout: Duration::from_secs(86_400),
        stats_interval: Duration::from_millis(100),
        echo_self: true,
        subprotocols: vec!["a".into(), "b".into()],
        allowed_origins: vec!["null".into()],
        max_rooms: 10_000_000,
        max_room_name_bytes: 1024,
        rate_limit_messages: 10_000_000,
        rate_limit_burst: 0,
        rate_limit_bytes: 1 << 30,
        rate_limit_policy: RateLimitPolicy::Drop,
        publish_token: "flag-secret".into(),
        metrics: false,
        admin_listen: Some("127.0.0.2:6001".parse().unwrap()),
        public_routes: vec!["publish".into()],
        tls_listen: Some("127.0.0.2:6443".parse().unwrap()),
        tls_cert: "/third/chain.pem".into(),
        tls_key: "/third/key.pem".into(),
        log_level: "error".into(),
        log_format: "json".into(),
        token_hmac_secret_key: "hmac-third".into(),
        token_rsa_public_key: "rsa-third.pem".into(),
        token_ecdsa_public_key: "ec-third.pem".into(),
        token_audience: "aud-third".into(),
        token_issuer: "iss-third".into(),
        allow_anonymous_connect_without_token: true,
        disallow_anonymous_connection_tokens: true,
        client_channel_limit: 12,
        client_stale_close_delay: Duration::from_secs(2),
        client_expired_close_delay: Duration::from_secs(3),
        client_expired_sub_close_delay: Duration::from_secs(4),
        history_max_bytes: 2 << 20,
        presence_max_clients: 102,
        api_key: "api-third".into(),
        max_api_body_bytes: 2 << 16,
        demo: true,
        history_size: 2,
        history_ttl: Duration::from_secs(120),
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
        namespaces: crate::config::namespaces::test_namespaces("third"),
        broker: "redis".to_string(),
        redis_url: vec![
            "redis://10.0.0.3:6379/0".to_string(),
            "redis://10.0.0.4:6379/0".to_string(),
            "redis://10.0.0.5:6379/0".to_string(),
        ],
        redis_prefix: "third".to_string(),
        redis_publish_timeout: Duration::from_millis(999),
        redis_connect_timeout: Duration::from_millis(700),
        redis_tls_ca: "/third/redis-ca.pem".into(),
        redis_tls_cert: "/third/redis-node.pem".into(),
        redis_tls_key: "/third/redis-node.key".into(),
        redis_reconnect_max_delay: Duration::from_millis(30000),
        redis_subscribe_linger: Duration::from_millis(60000),
        redis_outbox_len: 1,
        redis_inbox_len: 1,
        redis_batch: 1,
        redis_node_info_interval: Duration::from_millis(700),
        redis_node_channels_max: 0,
        presence_ttl: Duration::from_secs(7),
    }
}

/// Every key as (key, flag text) pairs, in the syntax flags and variables take.
fn texts(c: &Config) -> Vec<(&'static str, String)> {
    c.entries()
        .into_iter()
        .map(|(k, v)| (k, crate::config::values::flag_display(&v)))
        .collect()
}

#[test]
fn every_key_from_file_env_and_flag_with_precedence() {
    let layers = [Config::default(), non_default(), alt(), third()];
    for pair in layers.windows(2) {
        for ((k, a), (_, b)) in pair[0].entries().iter().zip(pair[1].entries()) {
            assert_ne!(*a, b, "consecutive layers must differ in {k}");
        }
    }
    for c in &layers[1..] {
        c.validate().unwrap();
    }
    let file = temp_file(&non_default().to_toml());
    let f = file.to_str().unwrap();
    let env: Vec<(String, String)> = texts(&alt())
        .into_iter()
        .map(|(k, v)| (env_name(k), v))
        .collect();
    let env_refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (&**k, &**v)).collect();
    let mut flags: Vec<String> = vec!["-c".into(), f.into()];
    for (k, v) in texts(&third()) {
        flags.push(format!("--{}={v}", k.replace('_', "-")));
    }
    let flag_refs: Vec<&str> = flags.iter().map(String::as_str).collect();

    // File over defaults.
    assert_eq!(run(&["-c", f]).unwrap(), non_default());
    // Environment over the file.
    assert_eq!(run_env(&["-c", f], &env_refs).unwrap(), alt());
    // Flags over the environment (and over the file).
    assert_eq!(run_env(&flag_refs, &env_refs).unwrap(), third());
    assert_eq!(run(&flag_refs).unwrap(), third());
    // Environment alone, over the defaults.
    assert_eq!(run_env(&[], &env_refs).unwrap(), alt());
    std::fs::remove_file(file).ok();
}

#[test]
fn env_values_use_flag_syntax() {
    let c = run_env(
        &[],
        &[
            ("WSRELAY_PUBLISH_TOKEN", "t0k"),
            ("WSRELAY_ECHO_SELF", "yes"),
            ("WSRELAY_SUBPROTOCOLS", "a, b"),
            ("WSRELAY_PING_INTERVAL", "1m"),
            ("PATH", "/bin"),
            ("wsrelay_workers", "9"),
        ],
    )
    .unwrap();
    assert_eq!(c.publish_token, "t0k");
    assert!(c.echo_self);
    assert_eq!(c.subprotocols, ["a", "b"]);
    assert_eq!(c.ping_interval, Duration::from_secs(60));
    assert_eq!(c.workers, 0, "lower-case names are not ours");
    // An empty value clears a list the file set.
    let path = temp_file("subprotocols = [\"x\"]\n");
    let c = run_env(
        &["-c", path.to_str().unwrap()],
        &[("WSRELAY_SUBPROTOCOLS", "")],
    )
    .unwrap();
    assert!(c.subprotocols.is_empty());
    std::fs::remove_file(path).ok();
    // Variables of the scripts are not keys, and are ignored.
    let reserved = [
        ("WSRELAY_CONFORMANCE_PATH", "/echo"),
        ("WSRELAY_BIN", "x"),
        ("WSRELAY_UPDATE_DOCS", "1"),
    ];
    assert_eq!(run_env(&[], &reserved).unwrap(), Config::default());
}

fn env_err(env: &[(&str, &str)]) -> String {
    let e = run_env(&[], env).expect_err("expected an error");
    assert_eq!(e.exit_code(), 2);
    let s = e.to_string();
    assert!(!s.contains('\n'), "{s}");
    s
}

#[test]
fn env_errors_name_the_variable() {
    assert_eq!(
        env_err(&[("WSRELAY_PING_INTERVAL", "30")]),
        "config error: environment variable WSRELAY_PING_INTERVAL (key \"ping_interval\"): invalid duration \"30\" (a unit is required except for 0; expected e.g. 30s, 500ms)"
    );
    let e = env_err(&[("WSRELAY_ECHO_SELF", "maybe")]);
    assert!(
        e.contains("WSRELAY_ECHO_SELF") && e.contains("invalid boolean"),
        "{e}"
    );
    // Range errors are found after merging, and name the key.
    let e = env_err(&[("WSRELAY_WORKERS", "65")]);
    assert!(
        e.contains("key \"workers\"") && e.contains("out of range"),
        "{e}"
    );
    // A flag can fix an out-of-range variable, but not a malformed one.
    assert_eq!(
        run_env(&["--workers", "2"], &[("WSRELAY_WORKERS", "65")])
            .unwrap()
            .workers,
        2
    );
    assert!(run_env(&["--workers", "2"], &[("WSRELAY_WORKERS", "two")]).is_err());
}

#[test]
fn env_non_utf8_value_names_the_variable() {
    use std::os::unix::ffi::OsStringExt;
    let env = vec![(
        OsString::from("WSRELAY_PUBLISH_TOKEN"),
        OsString::from_vec(vec![0xff, 0xfe]),
    )];
    let e = parse_args_with_env(args(&[]), env).unwrap_err().to_string();
    assert!(
        e.contains("WSRELAY_PUBLISH_TOKEN") && e.contains("UTF-8"),
        "{e}"
    );
}

#[test]
fn unknown_env_variable_suggests_the_right_one() {
    assert_eq!(
        env_err(&[("WSRELAY_PIGN_INTERVAL", "30s")]),
        "config error: unknown environment variable WSRELAY_PIGN_INTERVAL (did you mean WSRELAY_PING_INTERVAL?; a WSRELAY_* variable must name a config key)"
    );
    let e = env_err(&[("WSRELAY_PUBLISH_TOKN", "x")]);
    assert!(e.contains("did you mean WSRELAY_PUBLISH_TOKEN?"), "{e}");
    let e = env_err(&[("WSRELAY_Workers", "2")]);
    assert!(e.contains("did you mean WSRELAY_WORKERS?"), "{e}");
    let e = env_err(&[("WSRELAY_ZZZZZZZZZZZZZZ", "1")]);
    assert!(
        !e.contains("did you mean") && e.contains("WSRELAY_ZZZZZZZZZZZZZZ"),
        "{e}"
    );
}

#[test]
fn misspelt_file_key_suggests_with_transpositions() {
    let e = file_err("max_frame_btyes = 1\n");
    assert!(e.contains("did you mean \"max_frame_bytes\""), "{e}");
    let e = file_err("ipv6-prefix-len = 48\n");
    assert!(e.contains("did you mean \"ipv6_prefix_len\""), "{e}");
}

#[test]
fn range_errors_name_the_key() {
    let check = |f: &dyn Fn(&mut Config), key: &str, needle: &str| {
        let mut c = Config::default();
        f(&mut c);
        let e = c.validate().expect_err(key).to_string();
        assert!(
            e.starts_with(&format!("config error: key \"{key}\": ")),
            "{e}"
        );
        assert!(e.contains(needle), "{key}: {e}");
    };
    check(
        &|c| c.workers = 65,
        "workers",
        "65 is out of range (allowed: 0 ..= 64)",
    );
    check(
        &|c| c.ipv6_prefix_len = 0,
        "ipv6_prefix_len",
        "(allowed: 1 ..= 128)",
    );
    check(
        &|c| c.ipv6_prefix_len = 129,
        "ipv6_prefix_len",
        "129 is out of range",
    );
    check(
        &|c| c.max_message_bytes = (1 << 30) + 1,
        "max_message_bytes",
        "1 ..= 1GiB",
    );
    check(
        &|c| c.send_buffer_bytes = 2 << 30,
        "send_buffer_bytes",
        "2GiB is out of range",
    );
    check(
        &|c| c.ping_interval = Duration::from_millis(99),
        "ping_interval",
        "99ms is out of range (allowed: 0 (off) or 100ms ..= 1d)",
    );
    check(
        &|c| c.shutdown_timeout = Duration::from_secs(86_401),
        "shutdown_timeout",
        "1d",
    );
    check(
        &|c| c.handshake_timeout = Duration::from_micros(999),
        "handshake_timeout",
        "1ms ..= 1d",
    );
    check(
        &|c| c.pong_timeout = Duration::from_micros(1),
        "pong_timeout",
        "out of range",
    );
    check(
        &|c| c.max_request_head_bytes = 2 << 20,
        "max_request_head_bytes",
        "1MiB",
    );
    // The edges themselves are accepted; 16 MiB messages and more are allowed.
    let ok = Config {
        ipv6_prefix_len: 128,
        ping_interval: Duration::from_millis(100),
        stats_interval: Duration::ZERO,
        max_message_bytes: 64 << 20,
        close_timeout: Duration::from_secs(86_400),
        ..Config::default()
    };
    ok.validate().unwrap();
    // Through the flags: the same message, after the flag was parsed.
    let e = err(&["--ipv6-prefix-len", "129"]);
    assert!(
        e.contains("key \"ipv6_prefix_len\": 129 is out of range"),
        "{e}"
    );
    let e = err(&["--ipv6-prefix-len", "300"]);
    assert!(
        e.contains("(flag --ipv6-prefix-len): invalid number \"300\" (too large)"),
        "{e}"
    );
    assert_eq!(
        run(&["--ipv6-prefix-len", "48"]).unwrap().ipv6_prefix_len,
        48
    );
    assert_eq!(Config::default().ipv6_prefix_len, 64);
}

#[test]
fn cross_key_errors_name_both_keys() {
    let check = |f: &dyn Fn(&mut Config), a: &str, b: &str| {
        let mut c = Config::default();
        f(&mut c);
        let e = c.validate().expect_err(a).to_string();
        assert!(
            e.starts_with(&format!(
                "config error: key \"{a}\" conflicts with key \"{b}\": "
            )),
            "{e}"
        );
        assert!(!e.contains('\n'));
    };
    check(
        &|c| c.max_frame_bytes = (1 << 20) + 1,
        "max_frame_bytes",
        "max_message_bytes",
    );
    check(
        &|c| c.rate_limit_bytes = (1 << 20) - 1,
        "rate_limit_bytes",
        "max_message_bytes",
    );
    check(
        &|c| c.pong_timeout = Duration::ZERO,
        "pong_timeout",
        "ping_interval",
    );
    check(
        &|c| c.rate_limit_burst = 5,
        "rate_limit_burst",
        "rate_limit_messages",
    );
    check(
        &|c| c.public_routes = vec!["health".into()],
        "public_routes",
        "admin_listen",
    );
    check(
        &|c| c.admin_listen = Some(c.listen),
        "admin_listen",
        "listen",
    );
    check(
        &|c| c.tls_listen = Some("127.0.0.1:9443".parse().unwrap()),
        "tls_listen",
        "tls_cert",
    );
    check(
        &|c| {
            c.tls_listen = Some("127.0.0.1:9443".parse().unwrap());
            c.tls_cert = "chain.pem".into();
        },
        "tls_listen",
        "tls_key",
    );
    check(
        &|c| {
            c.tls_listen = Some(c.listen);
            c.tls_cert = "chain.pem".into();
            c.tls_key = "key.pem".into();
        },
        "tls_listen",
        "listen",
    );
    check(
        &|c| c.redis_tls_cert = "node.pem".into(),
        "redis_tls_cert",
        "redis_tls_key",
    );
    check(
        &|c| c.redis_tls_key = "node.key".into(),
        "redis_tls_key",
        "redis_tls_cert",
    );
    check(
        &|c| {
            c.broker = "redis".into();
            c.redis_url = vec!["redis://a:1".into(), "rediss://b:1".into()];
        },
        "redis_url",
        "redis_tls_ca",
    );
    // A rediss:// URL is only checked against its CA when it is used.
    let unused = Config {
        redis_url: vec!["rediss://b:1".into()],
        ..Config::default()
    };
    unused.validate().unwrap();
    let tls = Config {
        broker: "redis".into(),
        redis_tls_ca: "ca.pem".into(),
        ..unused
    };
    tls.validate().unwrap();
    // Allowed: equal frame and message limits, a byte limit of exactly one
    // max-size message, and a pong wait longer than the ping interval
    // (one ping is outstanding at a time, so nothing piles up).
    let ok = Config {
        rate_limit_bytes: 1 << 20,
        ping_interval: Duration::from_secs(1),
        pong_timeout: Duration::from_secs(30),
        ..Config::default()
    };
    ok.validate().unwrap();
    let e = err(&["--max-frame-bytes", "2MiB"]);
    assert!(
        e.contains("a 2MiB frame could never be accepted into a message of at most 1MiB"),
        "{e}"
    );
}

#[test]
fn admin_listener_and_log_format_keys() {
    // Empty = no admin listener, from every source.
    assert_eq!(run(&["--admin-listen", ""]).unwrap().admin_listen, None);
    let c = run(&[
        "--admin-listen",
        "127.0.0.1:9002",
        "--public-routes",
        "health,api",
        "--log-format",
        "json",
    ])
    .unwrap();
    assert_eq!(c.admin_listen, Some("127.0.0.1:9002".parse().unwrap()));
    assert_eq!(c.public_routes, ["health", "api"]);
    assert_eq!(c.log_format, "json");
    let e = err(&["--admin-listen", "localhost:9002"]);
    assert!(
        e.contains("invalid socket address \"localhost:9002\""),
        "{e}"
    );
    let e = err(&[
        "--admin-listen",
        "127.0.0.1:9002",
        "--public-routes",
        "health,websocket",
    ]);
    assert!(
        e.contains("key \"public_routes\": unknown route group \"websocket\" (expected any of health, metrics, publish, api; WebSocket routes always stay public)"),
        "{e}"
    );
    let e = err(&[
        "--admin-listen",
        "127.0.0.1:9002",
        "--public-routes",
        "api,api",
    ]);
    assert!(e.contains("\"api\" is listed twice"), "{e}");
    let e = err(&["--log-format", "logfmt"]);
    assert!(
        e.contains(
            "key \"log_format\": invalid log format \"logfmt\" (expected one of text, json)"
        ),
        "{e}"
    );
    // Port 0 on both is allowed (the kernel picks two ports).
    let c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: Some("127.0.0.1:0".parse().unwrap()),
        ..Config::default()
    };
    c.validate().unwrap();
}

#[test]
fn help_names_the_variables_and_print_config_the_ranges() {
    let help = parse_args_with_env(args(&["--help"]), no_env())
        .unwrap_err()
        .to_string();
    assert!(help.contains("[env: WSRELAY_MAX_FRAME_BYTES]"), "{help}");
    assert!(help.contains("--ipv6-prefix-len <N>"), "{help}");
    assert!(
        help.contains("WSRELAY_<KEY> environment variables"),
        "{help}"
    );
    let text = Config::default().to_toml();
    assert!(
        text.contains("(range: 1 ..= 128)\nipv6_prefix_len = 64\n"),
        "{text}"
    );
    assert!(
        text.contains("(range: 0 (off) or 100ms ..= 1d)\nping_interval = \"30s\"\n"),
        "{text}"
    );
}

#[test]
fn docs_reference_table_is_current() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/configuration.md");
    let doc = std::fs::read_to_string(path).expect("read docs/configuration.md");
    let table = docs::reference_table();
    for key in KEY_NAMES {
        let row = format!("| `{key}` | `--{}", key.replace('_', "-"));
        assert!(table.contains(&row), "no row for {key}");
        assert!(table.contains(&format!("`{}`", env_name(key))));
    }
    let want = docs::splice(&doc, &table).unwrap_or_else(|| {
        panic!(
            "docs/configuration.md lacks the lines {} and {}",
            docs::BEGIN,
            docs::END
        )
    });
    if want == doc {
        return;
    }
    if std::env::var_os("WSRELAY_UPDATE_DOCS").is_some_and(|v| v == "1") {
        std::fs::write(path, want).expect("rewrite docs/configuration.md");
        return;
    }
    panic!(
        "the key table in docs/configuration.md differs from the key table in src/config/keys.rs; \
         regenerate it with: WSRELAY_UPDATE_DOCS=1 cargo test --lib config::tests::layers::docs_reference_table_is_current"
    );
}

#[test]
fn docs_splice_replaces_only_between_markers() {
    let doc = format!("intro\n{}\nold table\n{}\noutro\n", docs::BEGIN, docs::END);
    let out = docs::splice(&doc, "| new |\n").unwrap();
    assert_eq!(
        out,
        format!("intro\n{}\n| new |\n{}\noutro\n", docs::BEGIN, docs::END)
    );
    assert_eq!(docs::splice(&out, "| new |\n").unwrap(), out);
    assert!(docs::splice("no markers", "x").is_none());
}
