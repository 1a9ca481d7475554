//! `wsrelay`: parse configuration, start the workers, handle signals and
//! print the periodic stats line. Everything else lives in the library.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};
use wsrelay::config::{parse_args, Command, Config};
use wsrelay::metrics::Totals;
use wsrelay::server;

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

    let handle = match server::start(config.clone()) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    log::info!(
        "wsrelay {} listening on ws://{} ({} workers{}, {}) max_connections={} max_frame_bytes={} max_message_bytes={} max_outbound_bytes={} slow_consumer={} ping_interval={} pong_timeout={}",
        env!("CARGO_PKG_VERSION"),
        handle.local_addr(),
        handle.workers(),
        if config.pin_cores { ", pinned" } else { "" },
        if handle.reuseport() { "SO_REUSEPORT" } else { "shared listener" },
        config.max_connections,
        wsrelay::config::format_size(config.max_frame_bytes),
        wsrelay::config::format_size(config.max_message_bytes),
        wsrelay::config::format_size(config.max_outbound_bytes),
        config.slow_consumer,
        wsrelay::config::format_duration(config.ping_interval),
        wsrelay::config::format_duration(config.pong_timeout),
    );
    run_until_stopped(handle, &config);
}

fn init_logging(config: &Config) {
    let env = env_logger::Env::default().default_filter_or(config.log_level.as_str());
    env_logger::Builder::from_env(env)
        .format_timestamp_millis()
        .init();
}

/// Raises the open-files limit and says so when it cannot hold
/// `max_connections`.
fn check_nofile(config: &Config) {
    match server::raise_nofile_limit() {
        Ok((soft, hard)) => {
            let need =
                config.max_connections as u64 + server::nofile_overhead(config.effective_workers());
            if soft < need {
                log::warn!(
                    "open-files limit is {soft} (hard limit {hard}) but max_connections = {} needs about {need}: at most ~{} connections can be held; raise the hard limit (ulimit -Hn / LimitNOFILE) or lower max_connections",
                    config.max_connections,
                    soft.saturating_sub(server::nofile_overhead(config.effective_workers()))
                );
            }
        }
        Err(e) => log::warn!("cannot read RLIMIT_NOFILE: {e}"),
    }
}

/// Waits for SIGINT/SIGTERM (first: graceful shutdown; second: exit at
/// once) and prints the stats line every `stats_interval`.
fn run_until_stopped(handle: server::ServerHandle, config: &Config) {
    let (mut rx, tx) = match UnixStream::pair() {
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
    let stats_every = config.stats_interval;
    let mut last = (Instant::now(), handle.totals());
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
        if stopping && handle.is_finished() {
            break;
        }
        if !stopping && !stats_every.is_zero() && Instant::now() >= next_stats {
            let now = (Instant::now(), handle.totals());
            log_stats(&last, &now, handle.rooms_open());
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

fn log_stats(prev: &(Instant, Totals), now: &(Instant, Totals), rooms: usize) {
    let secs = now.0.duration_since(prev.0).as_secs_f64().max(1e-3);
    let rate = |a: u64, b: u64| (b.saturating_sub(a)) as f64 / secs;
    let (p, n) = (&prev.1, &now.1);
    log::info!(
        "stats: connections={} rooms={} msgs_in/s={:.0} msgs_out/s={:.0} bytes_in/s={:.0} bytes_out/s={:.0} fanout_deliveries/s={:.0} drops={} slow_consumer_closes={} ping_timeouts={}",
        n.connections_open,
        rooms,
        rate(p.messages_in, n.messages_in),
        rate(p.messages_out, n.messages_out),
        rate(p.bytes_in, n.bytes_in),
        rate(p.bytes_out, n.bytes_out),
        rate(p.fanout_deliveries, n.fanout_deliveries),
        n.drops,
        n.slow_consumer_closes,
        n.ping_timeouts,
    );
}
