//! Command line and environment: the flags and the `WSRELAY_*` variables
//! are generated from the key table, and merged as
//! defaults < config file < environment < flags.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Arg, ArgAction};

use super::keys::{key_infos, KEY_NAMES};
use super::{suggest, Command, Config, ConfigError, ENV_PREFIX};

/// `WSRELAY_*` variables that are not configuration keys and are ignored:
/// the test suite's docs switch and the scripts' own settings (which the
/// relay may inherit from them).
pub const RESERVED_ENV: &[&str] = &[
    "WSRELAY_UPDATE_DOCS",
    "WSRELAY_BIN",
    "WSRELAY_LOAD",
    "WSRELAY_SHARED_DIR",
];
/// Every `WSRELAY_CONFORMANCE_*` variable belongs to scripts/conformance.sh.
pub const RESERVED_ENV_PREFIX: &str = "WSRELAY_CONFORMANCE_";

const AFTER_HELP: &str = "\
Precedence: flags > WSRELAY_<KEY> environment variables > --config FILE > built-in defaults.
Every flag has a variable: --max-frame-bytes <=> WSRELAY_MAX_FRAME_BYTES (same value syntax).
Durations: 30s, 500ms, 2m, 1h, 1h30m, 0 (a unit is required except for 0).
Sizes: 512, 64KiB, 1MiB, 1GiB (x1024) or 1KB, 1MB (x1000).
Booleans: --flag means true; --flag=false / --flag false to turn off.
Lists: comma-separated; an empty value clears the list.
RUST_LOG, when set, overrides --log-level.";

/// `max_frame_bytes` -> `WSRELAY_MAX_FRAME_BYTES`.
pub(crate) fn env_name(key: &str) -> String {
    format!("{ENV_PREFIX}{}", key.to_ascii_uppercase())
}

/// `max_frame_bytes` -> `--max-frame-bytes`.
pub(crate) fn flag_name(key: &str) -> String {
    format!("--{}", key.replace('_', "-"))
}

/// The clap command: two fixed flags, then one flag per key with its help,
/// default and variable from the key table.
pub(crate) fn cli_command() -> clap::Command {
    let mut cmd = clap::Command::new("wsrelay")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Standalone WebSocket relay: rooms, cross-core fan-out, backpressure")
        .after_help(AFTER_HELP)
        .args_override_self(true)
        .arg(
            Arg::new("config")
                .long("config")
                .short('c')
                .value_name("FILE")
                .value_parser(clap::value_parser!(PathBuf))
                .help("TOML configuration file (environment and flags override its values)"),
        )
        .arg(
            Arg::new("print_config")
                .long("print-config")
                .action(ArgAction::SetTrue)
                .help("Print the effective configuration as TOML and exit"),
        );
    for info in key_infos() {
        let arg = Arg::new(info.name)
            .long(info.name.replace('_', "-"))
            .value_name(info.value_name)
            .help(format!(
                "{} [default: {}] [env: {}]",
                info.help,
                info.default,
                env_name(info.name)
            ));
        // Switches may stand alone (`--echo-self`); other flags let "-5s"
        // or "-1" reach our parsers (which explain the problem) instead of
        // clap reporting an unknown flag.
        let arg = if info.switch {
            arg.num_args(0..=1).default_missing_value("true")
        } else {
            arg.allow_hyphen_values(true)
        };
        cmd = cmd.arg(arg);
    }
    cmd
}

/// Parses the command line (`args` includes argv\[0\]) with the process
/// environment; see [`parse_args_with_env`].
pub fn parse_args<I, T>(args: I) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    parse_args_with_env(args, std::env::vars_os())
}

/// Parses the command line, loads `--config FILE` if given, applies the
/// `WSRELAY_<KEY>` variables found in `env`, then the flags, and validates
/// the result. Variables not starting with `WSRELAY_` are ignored; an
/// unknown `WSRELAY_*` variable (other than [`RESERVED_ENV`] and
/// `WSRELAY_CONFORMANCE_*`) is an error, since logging is not set up yet and
/// a misspelt secret must not be ignored silently.
///
/// `--help` and `--version` are returned as `Err(e)` with
/// `e.exit_code() == 0` and `e.to_string()` = the text to print on stdout;
/// this function never prints or exits by itself.
pub fn parse_args_with_env<I, T, E, K, V>(args: I, env: E) -> Result<Command, ConfigError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
    E: IntoIterator<Item = (K, V)>,
    K: Into<OsString>,
    V: Into<OsString>,
{
    let matches = cli_command()
        .try_get_matches_from(args)
        .map_err(from_clap)?;

    let mut cfg = match matches.get_one::<PathBuf>("config") {
        Some(path) => {
            let origin = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::invalid(format!("cannot read config file {origin}: {e}"))
            })?;
            Config::from_toml_str(&text, &origin)?
        }
        None => Config::default(),
    };
    apply_env(&mut cfg, env)?;
    for key in KEY_NAMES {
        if let Some(value) = matches.get_one::<String>(key) {
            if let Some(Err(msg)) = cfg.set_text(key, value) {
                let flag = flag_name(key);
                return Err(ConfigError::invalid(format!(
                    "key \"{key}\" (flag {flag}): {msg}"
                )));
            }
        }
    }
    cfg.validate()?;
    Ok(if matches.get_flag("print_config") {
        Command::PrintConfig(cfg)
    } else {
        Command::Run(cfg)
    })
}

/// Applies every `WSRELAY_<KEY>` variable, in name order so the first
/// error reported does not depend on the environment's order.
fn apply_env<E, K, V>(cfg: &mut Config, env: E) -> Result<(), ConfigError>
where
    E: IntoIterator<Item = (K, V)>,
    K: Into<OsString>,
    V: Into<OsString>,
{
    let mut vars: Vec<(String, OsString)> = env
        .into_iter()
        .filter_map(|(k, v)| {
            let name = k.into().into_string().ok()?;
            let ours = name.starts_with(ENV_PREFIX)
                && !name.starts_with(RESERVED_ENV_PREFIX)
                && !RESERVED_ENV.contains(&name.as_str());
            ours.then(|| (name, v.into()))
        })
        .collect();
    vars.sort();
    for (name, value) in vars {
        let key = name[ENV_PREFIX.len()..].to_ascii_lowercase();
        // Exact spelling only: WSRELAY_Workers is reported, not guessed.
        let known = KEY_NAMES.contains(&key.as_str()) && env_name(&key) == name;
        if !known {
            let hint = match suggest(&key) {
                Some(k) => format!("did you mean {}?", env_name(k)),
                None => "no config key has that name".to_string(),
            };
            return Err(ConfigError::invalid(format!(
                "unknown environment variable {name} ({hint}; a WSRELAY_* variable must name a config key)"
            )));
        }
        let value = value.into_string().map_err(|_| {
            ConfigError::invalid(format!(
                "environment variable {name} (key \"{key}\"): value is not valid UTF-8"
            ))
        })?;
        if let Some(Err(msg)) = cfg.set_text(&key, &value) {
            return Err(ConfigError::invalid(format!(
                "environment variable {name} (key \"{key}\"): {msg}"
            )));
        }
    }
    Ok(())
}

/// Turns a clap error into a one-line [`ConfigError`], or into the
/// help/version text (exit code 0).
fn from_clap(e: clap::Error) -> ConfigError {
    use clap::error::{ContextKind, ContextValue, ErrorKind as K};
    let ctx = |kind| match e.get(kind) {
        Some(ContextValue::String(s)) => Some(s.clone()),
        Some(ContextValue::Strings(v)) => v.first().cloned(),
        _ => None,
    };
    match e.kind() {
        K::DisplayHelp | K::DisplayVersion | K::DisplayHelpOnMissingArgumentOrSubcommand => {
            let text = e.render().to_string();
            return ConfigError::help(text.trim_end().to_string());
        }
        K::UnknownArgument => {
            if let Some(arg) = ctx(ContextKind::InvalidArg) {
                let hint = match ctx(ContextKind::SuggestedArg) {
                    Some(s) => format!(" (did you mean {s}?)"),
                    None => " (see --help)".to_string(),
                };
                return ConfigError::invalid(format!("unexpected argument {arg}{hint}"));
            }
        }
        _ => {}
    }
    // Anything else: clap's own text minus usage/boilerplate, joined to one line.
    let text = e.render().to_string();
    let msg = text
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty() && !l.starts_with("Usage:") && !l.starts_with("For more information")
        })
        .map(|l| l.strip_prefix("error: ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("; ");
    ConfigError::invalid(msg)
}
