//! wsrelay-load: WebSocket load generator (loopback only). See
//! docs/loadtest.md.

mod addr;
mod cli;
mod clock;
#[cfg(test)]
mod cluster_tests;
mod conn;
mod deflate;
mod nodes;
mod payload;
mod plan;
mod plot;
mod pubsub;
#[cfg(test)]
mod relay_tests;
mod report;
mod run;
mod selftest;
mod sys;
mod tracker;
mod transport;
mod worker;

use clap::Parser;
use cli::{Cli, Cmd};
use std::process::ExitCode;

fn main() -> ExitCode {
    clock::init();
    let cli = Cli::parse();
    if let Cmd::SelftestDecode(a) = &cli.cmd {
        if a.pubsub {
            let r = selftest::run_pubsub(a.time);
            let rate = r.messages as f64 / r.secs;
            println!(
                "selftest-decode --pubsub: {} pub pushes in {:.2}s: {}/s ({:.1} ns/push; {:.0}% of one core, {:.1} ns CPU/push)",
                r.messages,
                r.secs,
                report::si(rate),
                1e9 / rate,
                100.0 * r.cpu_secs / r.secs,
                1e9 * r.cpu_secs / r.messages as f64
            );
            return ExitCode::SUCCESS;
        }
        let format = match (cli.common.text, cli.common.payload) {
            (true, _) | (_, Some(cli::PayloadKind::Text)) => payload::Format::Text,
            (_, Some(cli::PayloadKind::Json)) => payload::Format::Json,
            _ => payload::Format::Binary,
        };
        let r = selftest::run(a.size, format, cli.common.deflate, a.time);
        let rate = r.messages as f64 / r.secs;
        println!(
            "selftest-decode{}: {} messages of {} B in {:.2}s: {}/s ({:.1} ns/message, {:.0}% of one core)",
            if cli.common.deflate { " --deflate" } else { "" },
            r.messages,
            a.size.max(format.header_len()),
            r.secs,
            report::si(rate),
            1e9 / rate,
            100.0 * r.cpu_secs / r.secs
        );
        return ExitCode::SUCCESS;
    }
    let (setup, params) = match run::build_setup(&cli) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("wsrelay-load: {e}");
            return ExitCode::from(2);
        }
    };
    let limits = run::check_limits(&setup);
    let summary = run::execute(setup, &cli.common, params, limits);
    print!("{}", summary.table());
    if let Some(path) = &cli.common.json {
        match serde_json::to_string_pretty(&summary) {
            Ok(j) => {
                if let Err(e) = std::fs::write(path, j + "\n") {
                    eprintln!("wsrelay-load: writing {}: {e}", path.display());
                    return ExitCode::from(2);
                }
            }
            Err(e) => eprintln!("wsrelay-load: JSON: {e}"),
        }
    }
    if let Some(path) = &cli.common.plot {
        let t0_warm = summary.warmup_s;
        let points: Vec<plot::PlotPoint> = summary
            .per_second
            .iter()
            .filter(|s| s.dur_s >= 0.25)
            .map(|s| {
                let dur = s.dur_s.max(1e-3);
                plot::PlotPoint {
                    t: s.t_s,
                    sent_per_s: s.sent as f64 / dur,
                    recv_per_s: s.received as f64 / dur,
                    p50_us: s.p50_us,
                    p99_us: s.p99_us,
                    max_us: s.max_us,
                }
            })
            .collect();
        let title = format!(
            "wsrelay-load {} → {} ({} thread{}{})",
            summary.scenario,
            summary.url,
            summary.threads,
            if summary.threads == 1 { "" } else { "s" },
            if t0_warm > 0.0 {
                format!(", first {t0_warm:.0}s warm-up")
            } else {
                String::new()
            }
        );
        if let Err(e) = std::fs::write(path, plot::render(&title, &points)) {
            eprintln!("wsrelay-load: writing {}: {e}", path.display());
            return ExitCode::from(2);
        }
    }
    if summary.pass {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    }
}
