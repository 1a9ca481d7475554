//! `wsrelay`: parse configuration, start the workers, handle signals and
//! print the periodic stats line. Everything else lives in the library.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use wsrelay::config::{parse_args, Command, Config};
use wsrelay::{logs, server};

// No `#[global_allocator]`: the system allocator (glibc malloc on Linux)
// gives a burst's memory back as fully and as fast as mimalloc or jemalloc
// did in the burst test, without a dependency (docs/reliability.md,
// "Allocator choice"). Operators can tune it with GLIBC_TUNABLES.
fn main() {
    let config = match parse_args(std::env::args_os()) {
        Ok(Command::Run(c)) => c,
        Ok(Command::PrintConfig(c)) => {
            print!("{}", c.to_toml());
            return;
        }
        Err(e) if e.exit_code() == 0 => {
            println!("{e}");
            return;
        }
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(e.exit_code());
        }
    };
    init_logging(&config);
    check_nofile(&config);

    // Before the listeners open: a signal sent as soon as the relay
    // answers must find its handler (SIGHUP's default action kills).
    let signals = install_signals();
    let handle = match server::start(config.clone()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let started = logs::Started {
        version: env!("CARGO_PKG_VERSION"),
        addr: handle.local_addr(),
        admin: handle.admin_addr(),
        tls: handle.tls_addr(),
        workers: handle.workers(),
        reuseport: handle.reuseport(),
    };
    log::info!("{}", logs::startup_line(&started, &config));
    run_until_stopped(handle, &config, signals);
}

/// `env_logger` with the configured level (`RUST_LOG` overrides it) and
/// format: its own text lines, or one JSON object per line through a
/// custom format (`logs::json_line`), so no second logging crate is needed.
fn init_logging(config: &Config) {
    let env = env_logger::Env::default().default_filter_or(config.log_level.as_str());
    let mut builder = env_logger::Builder::from_env(env);
    if config.log_format == "json" {
        builder.format(|buf, record| {
            let ts = buf.timestamp_millis().to_string();
            let msg = record.args().to_string();
            writeln!(
                buf,
                "{}",
                logs::json_line(&ts, record.level(), record.target(), &msg)
            )
        });
    } else {
        builder.format_timestamp_millis();
    }
    builder.init();
}

/// Raises the open-files limit and says so, in one line with the remedy,
/// when it cannot hold `max_connections`.
fn check_nofile(config: &Config) {
    match server::raise_nofile_limit() {
        Ok((soft, hard)) => {
            let overhead = server::nofile_overhead(
                config.effective_workers(),
                config.admin_listen.is_some(),
                wsrelay::broker::descriptors(config),
            );
            if let Some(w) = logs::nofile_warning(soft, hard, config.max_connections, overhead) {
                log::warn!("{w}");
            }
        }
        Err(e) => log::warn!("cannot read RLIMIT_NOFILE: {e}"),
    }
}

/// The read ends of the signal pipes: SIGINT/SIGTERM, and SIGHUP (a pipe
/// of its own: the byte does not say which signal).
struct Signals {
    stop: UnixStream,
    hup: UnixStream,
}

fn install_signals() -> Signals {
    let (rx, tx) = match UnixStream::pair() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot create signal pipe: {e}");
            std::process::exit(1);
        }
    };
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        let registered = tx
            .try_clone()
            .and_then(|t| signal_hook::low_level::pipe::register(sig, t));
        if let Err(e) = registered {
            eprintln!("cannot install signal handler: {e}");
            std::process::exit(1);
        }
    }
    let (hup_rx, hup_tx) = match UnixStream::pair() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("cannot create signal pipe: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = hup_rx
        .set_nonblocking(true)
        .and_then(|()| signal_hook::low_level::pipe::register(signal_hook::consts::SIGHUP, hup_tx))
    {
        eprintln!("cannot install SIGHUP handler: {e}");
        std::process::exit(1);
    }
    Signals {
        stop: rx,
        hup: hup_rx,
    }
}

/// Waits for SIGINT/SIGTERM (first: graceful shutdown; second: exit at
/// once), reloads the TLS certificate on SIGHUP, and prints the stats line
/// every `stats_interval`.
fn run_until_stopped(handle: server::ServerHandle, config: &Config, signals: Signals) {
    let Signals {
        stop: mut rx,
        hup: hup_rx,
    } = signals;
    let stats_every = config.stats_interval;
    let mut last = (Instant::now(), handle.totals(), handle.rooms_open());
    let mut next_stats = Instant::now() + stats_every;
    let mut stopping = false;
    loop {
        let wait = if stopping || stats_every.is_zero() {
            Duration::from_millis(100)
        } else {
            next_stats
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_millis(1), Duration::from_millis(500))
        };
        let _ = rx.set_read_timeout(Some(wait));
        let mut byte = [0u8; 16];
        match rx.read(&mut byte) {
            Ok(n) if n > 0 => {
                if stopping {
                    log::warn!("second signal: exiting now");
                    std::process::exit(1);
                }
                stopping = true;
                log::info!(
                    "shutting down: closing connections with 1001 (up to {})",
                    wsrelay::config::format_duration(config.shutdown_timeout)
                );
                handle.shutdown();
            }
            _ => {}
        }
        let mut hup = [0u8; 16];
        if matches!((&hup_rx).read(&mut hup), Ok(n) if n > 0) {
            while matches!((&hup_rx).read(&mut hup), Ok(n) if n > 0) {}
            match handle.reload_tls() {
                Ok(true) => log::info!(
                    "SIGHUP: TLS certificate reloaded from {} (new handshakes; open connections keep theirs)",
                    config.tls_cert
                ),
                Ok(false) => log::info!("SIGHUP: no tls_listen, nothing to reload"),
                Err(e) => log::error!("SIGHUP: TLS reload failed, keeping the previous certificate: {e}"),
            }
        }
        if stopping && handle.is_finished() {
            break;
        }
        if !stopping && !stats_every.is_zero() && Instant::now() >= next_stats {
            // Skipped when nothing happened since the last look.
            let now = (Instant::now(), handle.totals(), handle.rooms_open());
            let secs = now.0.duration_since(last.0).as_secs_f64();
            if let Some(line) = logs::stats_line(&last.1, last.2, &now.1, now.2, secs) {
                log::info!("{line}");
            }
            last = now;
            next_stats += stats_every;
            if next_stats < Instant::now() {
                next_stats = Instant::now() + stats_every;
            }
        }
    }
    handle.join();
    log::info!("shutdown complete");
}
