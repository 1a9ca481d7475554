//! End-to-end tests of the configuration: real argv vectors and real config
//! files on disk through `parse_args_with_env` (with an explicit, usually
//! empty, environment so the developer's own `WSRELAY_*` variables cannot
//! change the results), and the real binary for the process environment.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use wsrelay::config::{
    parse_args_with_env, Command, Config, ConfigError, RateLimitPolicy, SlowConsumerPolicy,
};

/// `parse_args` as `main` calls it, but with no environment variables.
fn parse_args(args: Vec<String>) -> Result<Command, ConfigError> {
    parse_args_with_env(args, std::iter::empty::<(String, String)>())
}

/// A config file under the temp dir, removed on drop; the name is unique per
/// process and per call so parallel tests (and parallel test runs) never collide.
struct TempConfig(PathBuf);

impl TempConfig {
    fn new(contents: &str) -> TempConfig {
        static N: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::temp_dir().join(format!(
            "wsrelay-config-cli-{}-{}.toml",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::write(&path, contents).expect("write temp config file");
        TempConfig(path)
    }

    fn path(&self) -> &str {
        self.0.to_str().expect("temp dir path is UTF-8")
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn argv(extra: &[&str]) -> Vec<String> {
    std::iter::once("wsrelay")
        .chain(extra.iter().copied())
        .map(String::from)
        .collect()
}

fn run_config(extra: &[&str]) -> Config {
    match parse_args(argv(extra)) {
        Ok(Command::Run(c)) => c,
        Ok(Command::PrintConfig(_)) => panic!("unexpected PrintConfig for {extra:?}"),
        Err(e) => panic!("unexpected error for {extra:?}: {e}"),
    }
}

/// The error line for a failing argv; checks the one-line / exit-code-2 contract.
fn error_line(extra: &[&str]) -> String {
    let e = match parse_args(argv(extra)) {
        Ok(_) => panic!("expected an error for {extra:?}"),
        Err(e) => e,
    };
    assert_eq!(e.exit_code(), 2, "{e}");
    let line = e.to_string();
    assert!(
        !line.contains('\n'),
        "error must be a single line: {line:?}"
    );
    assert!(line.starts_with("config error: "), "{line}");
    line
}

const FILE: &str = r#"
# A realistic deployment file.
listen = "0.0.0.0:9443"
workers = 4
max_frame_bytes = "256KiB"
max_message_bytes = 4194304        # plain integers are bytes
ping_interval = "20s"
pong_timeout = "5s"
slow_consumer = "drop"
subprotocols = ["chat.v2", "chat.v1"]
echo_self = true
rate_limit_messages = 100
publish_token = "from-file"
"#;

#[test]
fn file_values_override_defaults() {
    let f = TempConfig::new(FILE);
    let c = run_config(&["--config", f.path()]);
    assert_eq!(c.listen, "0.0.0.0:9443".parse().unwrap());
    assert_eq!(c.workers, 4);
    assert_eq!(c.max_frame_bytes, 256 * 1024);
    assert_eq!(c.max_message_bytes, 4 * 1024 * 1024);
    assert_eq!(c.ping_interval, Duration::from_secs(20));
    assert_eq!(c.slow_consumer, SlowConsumerPolicy::Drop);
    assert_eq!(c.subprotocols, ["chat.v2", "chat.v1"]);
    assert!(c.echo_self);
    // Untouched keys keep their defaults.
    let d = Config::default();
    assert_eq!(c.handshake_timeout, d.handshake_timeout);
    assert_eq!(c.max_outbound_bytes, d.max_outbound_bytes);
    assert_eq!(c.rate_limit_policy, RateLimitPolicy::Close);
}

#[test]
fn flags_override_file() {
    let f = TempConfig::new(FILE);
    let c = run_config(&[
        "--workers",
        "2",
        "--config",
        f.path(),
        "--max-frame-bytes",
        "1MB",
        "--ping-interval",
        "0",
        "--echo-self=false",
        "--subprotocols",
        "json",
        "--publish-token",
        "from-flag",
        "--rate-limit-policy",
        "drop",
    ]);
    assert_eq!(c.workers, 2);
    assert_eq!(c.max_frame_bytes, 1_000_000);
    assert_eq!(c.ping_interval, Duration::ZERO);
    assert!(!c.echo_self);
    assert_eq!(c.subprotocols, ["json"]);
    assert_eq!(c.publish_token, "from-flag");
    assert_eq!(c.rate_limit_policy, RateLimitPolicy::Drop);
    // Not given as flags: still from the file.
    assert_eq!(c.listen, "0.0.0.0:9443".parse().unwrap());
    assert_eq!(c.max_message_bytes, 4 * 1024 * 1024);
    assert_eq!(c.slow_consumer, SlowConsumerPolicy::Drop);
}

#[test]
fn unknown_key_error_names_key_and_file() {
    let f = TempConfig::new("workers = 2\npign_interval = \"30s\"\n");
    let line = error_line(&["--config", f.path()]);
    assert!(
        line.starts_with(&format!(
            "config error: unknown key \"pign_interval\" in {}",
            f.path()
        )),
        "{line}"
    );
    assert!(line.contains("line 2"), "{line}");
    assert!(line.contains("did you mean \"ping_interval\""), "{line}");
}

#[test]
fn bad_duration_in_file_names_key() {
    let f = TempConfig::new("ping_interval = \"30x\"\n");
    let line = error_line(&["-c", f.path()]);
    assert!(line.contains("key \"ping_interval\""), "{line}");
    assert!(line.contains("invalid duration \"30x\""), "{line}");
    assert!(line.contains("expected e.g. 30s, 500ms"), "{line}");

    let f = TempConfig::new("close_timeout = 5\n");
    let line = error_line(&["-c", f.path()]);
    assert!(line.contains("key \"close_timeout\""), "{line}");
    assert!(line.contains("a unit is required except for 0"), "{line}");
}

#[test]
fn bad_duration_flag_names_key() {
    let line = error_line(&["--pong-timeout", "soon"]);
    assert!(line.contains("key \"pong_timeout\""), "{line}");
    assert!(line.contains("--pong-timeout"), "{line}");
    assert!(line.contains("invalid duration \"soon\""), "{line}");
}

#[test]
fn invalid_combination_is_rejected_after_merge() {
    // The file alone is fine; the flag makes it invalid (heartbeats on, no pong wait).
    let f = TempConfig::new("ping_interval = \"10s\"\n");
    let line = error_line(&["-c", f.path(), "--pong-timeout", "0"]);
    assert!(line.contains("key \"pong_timeout\""), "{line}");
    // ...and a flag can rescue an out-of-range file value.
    let f = TempConfig::new("workers = 100000\n");
    assert!(error_line(&["-c", f.path()]).contains("key \"workers\""));
    assert_eq!(run_config(&["-c", f.path(), "--workers", "0"]).workers, 0);
}

#[test]
fn missing_file_is_a_one_line_error() {
    let missing = Path::new("/nonexistent-dir-for-wsrelay-tests/wsrelay.toml");
    let line = error_line(&["--config", missing.to_str().unwrap()]);
    assert!(line.contains("cannot read config file"), "{line}");
    assert!(line.contains("wsrelay.toml"), "{line}");
}

#[test]
fn print_config_output_reparses_identically() {
    let f = TempConfig::new(FILE);
    let cmd = parse_args(argv(&[
        "--print-config",
        "--config",
        f.path(),
        "--stats-interval",
        "1m30s",
        "--allowed-origins",
        "https://a.example,https://b.example",
        "--rate-limit-bytes",
        "8MiB", // at least max_message_bytes (4MiB in FILE)
    ]))
    .expect("parse");
    let printed = match cmd {
        Command::PrintConfig(c) => c,
        Command::Run(_) => panic!("--print-config must yield PrintConfig"),
    };
    let text = printed.to_toml();
    assert!(text.contains("stats_interval = \"90s\""), "{text}");
    assert!(text.contains("rate_limit_bytes = \"8MiB\""), "{text}");

    // Parsed back as a string...
    let again = Config::from_toml_str(&text, "printed").expect("printed TOML parses");
    assert_eq!(again, printed);
    // ...and as a real --config file, through the CLI path.
    let printed_file = TempConfig::new(&text);
    assert_eq!(run_config(&["--config", printed_file.path()]), printed);
}

#[test]
fn help_and_version_are_exit_code_zero() {
    let e = match parse_args(argv(&["--help"])) {
        Err(e) => e,
        Ok(_) => panic!("--help must not run"),
    };
    assert_eq!(e.exit_code(), 0);
    let text = e.to_string();
    assert!(text.contains("--config <FILE>"), "{text}");
    assert!(text.contains("--print-config"), "{text}");

    let e = match parse_args(argv(&["--version"])) {
        Err(e) => e,
        Ok(_) => panic!("--version must not run"),
    };
    assert_eq!(e.exit_code(), 0);
    assert!(e.to_string().contains(env!("CARGO_PKG_VERSION")));
}

/// The complete example in docs/configuration.md must stay a valid file, and
/// apart from listening on all interfaces it documents exactly the defaults.
#[test]
fn documented_example_file_parses_to_defaults() {
    let doc = include_str!("../../docs/configuration.md");
    let section = doc
        .split("## Complete example")
        .nth(1)
        .expect("docs have a complete example");
    let toml = section
        .split("```toml")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("example is a ```toml block");
    let c = Config::from_toml_str(toml, "docs/configuration.md").expect("example parses");
    let expected = Config {
        listen: "0.0.0.0:9001".parse().unwrap(),
        ..Config::default()
    };
    assert_eq!(c, expected);
}

/// The real binary reads `WSRELAY_*` from its environment, between the
/// file and the flags, and reports a misspelt variable on one line.
#[test]
fn binary_reads_environment_between_file_and_flags() {
    let f = TempConfig::new(FILE);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsrelay"))
        .args(["--print-config", "-c", f.path(), "--workers", "3"])
        .env("WSRELAY_PUBLISH_TOKEN", "from-env")
        .env("WSRELAY_WORKERS", "7")
        .output()
        .expect("run wsrelay");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let c = Config::from_toml_str(&text, "stdout").expect("printed TOML parses");
    assert_eq!(c.publish_token, "from-env"); // env beats file
    assert_eq!(c.workers, 3); // flag beats env
    assert_eq!(c.ping_interval, Duration::from_secs(20)); // file beats default

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_wsrelay"))
        .arg("--print-config")
        .env("WSRELAY_PUBLISH_TOKN", "x")
        .output()
        .expect("run wsrelay");
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("did you mean WSRELAY_PUBLISH_TOKEN?"), "{err}");
}
