//! The coordinator: builds the plan, starts the workers, moves them
//! through the phases (connect, load, drain, close), prints progress and
//! assembles the summary.

use crate::addr::parse_sources;
use crate::cli::{Cli, Cmd, Common, PayloadKind, PubSubArgs};
use crate::clock::{now_ns, SEC};
use crate::conn::new_hist;
use crate::nodes::parse_placement;
use crate::payload::Format;
use crate::plan::{self, Kind, Setup};
use crate::plan::{NodesSetup, PsSetup};
use crate::pubsub::client::{PsConfig, TokenMode};
use crate::report::{si, us, Churn, Generator, Lat, PubSubReport, Recovery, Second, Summary};
use crate::sys;
use crate::worker::{Interval, Shared, Worker, CLOSING, DRAINING, RUNNING};
use hdrhistogram::Histogram;
use std::sync::atomic::Ordering::*;
use std::sync::Arc;
use std::time::Duration;

fn check_size(size: usize, format: Format) -> Result<usize, String> {
    let min = format.header_len();
    if size < min {
        return Err(format!(
            "--size {size} is below the {min}-byte message header{}",
            match format {
                Format::Text => " (--text)",
                Format::Json => " (--payload json)",
                Format::Binary => "",
            }
        ));
    }
    if size > crate::conn::MAX_MESSAGE {
        return Err(format!("--size {size} is over the 64 MiB limit"));
    }
    Ok(size)
}

/// Builds the run's setup from the command line.
pub fn build_setup(cli: &Cli) -> Result<(Setup, serde_json::Value), String> {
    let c = &cli.common;
    let place = parse_placement(&c.url, &c.publish_url, c.split.as_deref())?;
    let target = place.targets[0].clone();
    let sources = match &c.source {
        Some(s) => parse_sources(s)?,
        None => Vec::new(),
    };
    if c.threads == 0 {
        return Err("--threads must be at least 1".into());
    }
    if c.connect_rate <= 0.0 || c.connect_rate.is_nan() {
        return Err("--connect-rate must be positive".into());
    }
    if c.duration.is_zero() {
        return Err("--duration must be positive".into());
    }
    let format = match (c.text, c.payload) {
        (true, _) | (_, Some(PayloadKind::Text)) => Format::Text,
        (_, Some(PayloadKind::Json)) => Format::Json,
        _ => Format::Binary,
    };
    let tls = tls_client(c, &target)?;
    let cpus = match &c.cpus {
        Some(s) => s
            .split(',')
            .map(|x| x.trim().parse::<usize>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| format!("bad --cpus {s:?} (example: 1 or 0,1)"))?,
        None => Vec::new(),
    };
    let mut ps_setup = None;
    let (kind, all, rooms, pubs_per_room, subs_in_room, n_pubs, size, in_flight, params) =
        match &cli.cmd {
            Cmd::Echo(a) => {
                if a.connections == 0 {
                    return Err("-c must be at least 1".into());
                }
                if let Some(r) = a.rate {
                    if r <= 0.0 || r.is_nan() {
                        return Err("--rate must be positive".into());
                    }
                }
                if a.in_flight == 0 && a.rate.is_none() {
                    return Err("--in-flight must be at least 1".into());
                }
                let plans = plan::echo_plans(a.connections, a.rate, &a.path);
                (
                    Kind::Echo,
                    plans,
                    a.connections as u32,
                    1,
                    vec![1; a.connections],
                    a.connections,
                    check_size(a.size, format)?,
                    a.in_flight,
                    serde_json::to_value(a).unwrap_or_default(),
                )
            }
            Cmd::Fanout(a) => {
                if a.rate <= 0.0 || a.rate.is_nan() {
                    return Err("--rate must be positive".into());
                }
                if a.rooms == 0 {
                    return Err("--rooms must be at least 1".into());
                }
                if a.subscribers == 0 || (!a.all_publish && a.publishers == 0) {
                    return Err("fanout needs at least one subscriber and one publisher".into());
                }
                let f = plan::fanout_plans(
                    a.subscribers,
                    a.publishers,
                    a.rooms,
                    a.rate,
                    &a.room_prefix,
                    a.roles,
                    a.all_publish,
                );
                (
                    Kind::Fanout,
                    f.plans,
                    a.rooms as u32,
                    f.pubs_per_room,
                    f.subs_in_room,
                    f.n_pubs,
                    check_size(a.size, format)?,
                    1,
                    serde_json::to_value(a).unwrap_or_default(),
                )
            }
            Cmd::Connect(a) => (
                Kind::Connect,
                plan::idle_plans(a.connections, &a.path, false),
                1,
                1,
                vec![0],
                0,
                format.header_len(),
                1,
                serde_json::to_value(a).unwrap_or_default(),
            ),
            Cmd::Churn(a) => (
                Kind::Churn,
                plan::idle_plans(a.connections, &a.path, true),
                1,
                1,
                vec![0],
                0,
                check_size(a.size, format)?,
                1,
                serde_json::to_value(a).unwrap_or_default(),
            ),
            Cmd::PubSub(a) => {
                ps_setup = Some(Arc::new(pubsub_setup(a, c)?));
                let path = if target.prefix.is_empty() {
                    "/connection/websocket"
                } else {
                    ""
                };
                let p = plan::pubsub_plans(a.conns, a.subs, a.channels, a.publishers, a.rate, path);
                (
                    Kind::PubSub,
                    p.plans,
                    1,
                    1,
                    vec![0],
                    0,
                    format.header_len(),
                    1,
                    serde_json::to_value(a).unwrap_or_default(),
                )
            }
            Cmd::SelftestDecode(_) => return Err("not a load scenario".into()),
        };
    if all.is_empty() {
        return Err("nothing to connect".into());
    }
    let mut all = all;
    let nodes = place_nodes(cli, &place, &mut all, rooms as usize, n_pubs)?;
    let planned = all.len();
    let threads = c.threads.min(planned);
    let plans = plan::deal(all, threads);
    let budgets = plan::split_budget(c.max_messages, &plan::senders_per_thread(&plans));
    let mut params = params;
    if let (Some(obj), Ok(common)) = (params.as_object_mut(), serde_json::to_value(c)) {
        obj.insert("common".into(), common);
    }
    Ok((
        Setup {
            kind,
            targets: place.targets,
            sources,
            size,
            format,
            threads,
            rooms,
            pubs_per_room,
            subs_in_room,
            n_pubs,
            skip_own: matches!(&cli.cmd, Cmd::Fanout(a) if a.all_publish),
            in_flight,
            connect_interval_ns: (1e9 / c.connect_rate) as u64,
            connect_concurrency: c.connect_concurrency.max(1),
            connect_timeout_ns: c.connect_timeout.as_nanos() as u64,
            close_timeout_ns: c.close_timeout.as_nanos() as u64,
            fin_wait_ns: c.fin_wait.as_nanos() as u64,
            tick_ns: c.tick.as_nanos() as u64,
            warmup_ns: c.warmup.as_secs_f64().ceil() as u64 * SEC,
            duration_ns: c.duration.as_nanos() as u64,
            cpus,
            plans,
            budgets,
            planned,
            ps: ps_setup,
            tls,
            deflate: c.deflate,
            nodes,
        },
        params,
    ))
}

/// Puts every connection on its node (`--url`, `--publish-url`,
/// `--split`); with several nodes, what the per-node accounting needs.
fn place_nodes(
    cli: &Cli,
    place: &crate::nodes::Placement,
    plans: &mut [plan::Plan],
    rooms: usize,
    n_pubs: usize,
) -> Result<Option<NodesSetup>, String> {
    let publishes = match &cli.cmd {
        Cmd::Fanout(a) => !a.all_publish,
        Cmd::PubSub(_) => true,
        _ => false,
    };
    if !cli.common.publish_url.is_empty() && !publishes {
        return Err(
            "--publish-url is for fanout (without --all-publish) and pubsub, which have publishers"
                .into(),
        );
    }
    // Receivers are dealt round robin per room (fanout) or per pass over
    // the channels (pubsub), so every room/channel has members everywhere.
    let group = match &cli.cmd {
        Cmd::Fanout(_) => rooms,
        Cmd::PubSub(a) => a.channels.div_ceil(a.subs.max(1)),
        _ => 1,
    };
    crate::nodes::assign(plans, place, group)?;
    if !place.several() {
        return Ok(None);
    }
    let n = place.targets.len();
    let mut pub_node = vec![
        0u16;
        n_pubs.max(match &cli.cmd {
            Cmd::PubSub(a) => a.publishers,
            _ => 0,
        })
    ];
    let mut subs_in_room = vec![vec![0u32; rooms.max(1)]; n];
    for p in plans.iter() {
        if let Some(s) = &p.publisher {
            if let Some(v) = pub_node.get_mut(s.id as usize) {
                *v = p.node;
            }
        }
        if p.tracks {
            if let Some(v) = subs_in_room[p.node as usize].get_mut(p.room as usize) {
                *v += 1;
            }
        }
    }
    Ok(Some(NodesSetup {
        pub_node: Arc::new(pub_node),
        subs_in_room,
    }))
}

/// The TLS client for a wss:// URL; the TLS flags without one are a
/// mistake worth saying.
fn tls_client(
    c: &Common,
    target: &crate::addr::Target,
) -> Result<Option<crate::transport::TlsClient>, String> {
    use crate::transport::{TlsClient, Trust};
    if !target.tls {
        if c.ca_file.is_some() || c.insecure || c.tls_resume {
            return Err("--ca-file, --insecure and --tls-resume need a wss:// --url".into());
        }
        return Ok(None);
    }
    let trust = match (&c.ca_file, c.insecure) {
        (Some(f), _) => Trust::CaFile(f.clone()),
        (None, true) => Trust::Insecure,
        (None, false) => {
            return Err(
                "wss:// needs --ca-file PEM (the CA that signed the server's certificate) or --insecure (tests only: no verification)"
                    .into(),
            )
        }
    };
    TlsClient::new(&target.hostname, &trust, c.tls_resume).map(Some)
}

fn pubsub_setup(a: &PubSubArgs, c: &Common) -> Result<PsSetup, String> {
    if a.rate <= 0.0 || a.rate.is_nan() {
        return Err("--rate must be positive".into());
    }
    if a.channels == 0 || a.subs == 0 {
        return Err("--channels and --subs must be at least 1".into());
    }
    if a.conns == 0 || a.publishers == 0 {
        return Err("pubsub needs at least one subscriber (--conns) and one --publishers".into());
    }
    if !(a.reconnect_fraction > 0.0 && a.reconnect_fraction <= 1.0) {
        return Err("--reconnect-fraction must be in (0, 1]".into());
    }
    if a.reconnect_every.is_some_and(|d| d.is_zero()) {
        return Err("--reconnect-every must be positive".into());
    }
    if let Some(n) = a.recover_burst {
        if n == 0 {
            return Err("--recover-burst must be at least 1".into());
        }
        let secs = (n * a.channels as u64 * a.publishers as u64) as f64 / a.rate;
        if secs > c.duration.as_secs_f64() {
            return Err(format!(
                "--recover-burst {n} over {} channel(s) and {} publisher(s) takes {secs:.1}s at --rate {}: \
                 raise --rate or --duration",
                a.channels, a.publishers, a.rate
            ));
        }
    }
    let channels = (0..a.channels)
        .map(|k| match &a.namespace {
            Some(ns) => format!("{ns}:c{k}"),
            None => format!("c{k}"),
        })
        .collect();
    let token = match (&a.token, &a.hmac_secret) {
        (Some(t), _) => TokenMode::Fixed(t.clone()),
        (None, Some(s)) => {
            // Fail now rather than on every connection.
            crate::pubsub::client::mint_hs256(s, "load-0")?;
            TokenMode::Hmac(s.clone())
        }
        (None, None) => TokenMode::None,
    };
    Ok(PsSetup {
        cfg: Arc::new(PsConfig {
            channels,
            publishers: a.publishers as u32,
            pad_to: a.size,
            token,
        }),
        subscribers: a.conns,
        publishers: a.publishers,
        reconnect_every_ns: a.reconnect_every.map_or(0, |d| d.as_nanos() as u64),
        reconnect_fraction: a.reconnect_fraction,
        reconnect_away_ns: a.reconnect_away.as_nanos() as u64,
        burst: a.recover_burst,
    })
}

/// Warns about limits that would cap the run.
pub fn check_limits(setup: &Setup) -> (u64, u64) {
    let (soft, hard) = sys::raise_nofile();
    let need = setup.planned as u64 + 64;
    if soft < need {
        eprintln!(
            "warning: open files limit is {soft} (hard {hard}) but {} connections need about {need}: \
             at most ~{} will open; run several processes for more",
            setup.planned,
            soft.saturating_sub(64)
        );
    } else {
        eprintln!("open files limit: {soft} (raised to the hard limit {hard})");
    }
    if let Some((lo, hi)) = sys::local_port_range() {
        let ports = (hi - lo) as usize + 1;
        let per_source = setup.planned.div_ceil(setup.sources.len().max(1));
        if per_source > ports {
            eprintln!(
                "warning: {per_source} connections per source address but only {ports} ephemeral ports \
                 ({lo}-{hi}); spread them with --source 127.0.0.1-127.0.0.N"
            );
        }
    }
    (soft, hard)
}

#[derive(Default)]
struct Agg {
    sent: u64,
    recv: u64,
    hist: Option<Histogram<u64>>,
    reports: usize,
    end_ns: u64,
}

struct Sample {
    at: u64,
    sent: u64,
    recv: u64,
    sent_bytes: u64,
    recv_bytes: u64,
    cpu: u64,
    cycles: u64,
}

fn sample(shared: &Shared) -> Sample {
    Sample {
        at: now_ns(),
        sent: shared.sum(|w| &w.sent),
        recv: shared.sum(|w| &w.recv),
        sent_bytes: shared.sum(|w| &w.sent_bytes),
        recv_bytes: shared.sum(|w| &w.recv_bytes),
        cpu: sys::cpu_ns(),
        cycles: shared.sum(|w| &w.cycles),
    }
}

struct Progress {
    quiet: bool,
    threads: usize,
    t0: u64,
    warmup_ns: u64,
    send_end: u64,
    secs: Vec<Agg>,
    printed: usize,
    last_cpu: (u64, u64),
}

impl Progress {
    fn add(&mut self, iv: Interval) {
        let i = iv.idx as usize;
        if self.secs.len() <= i {
            self.secs.resize_with(i + 1, Agg::default);
        }
        let a = &mut self.secs[i];
        a.sent += iv.sent;
        a.recv += iv.recv;
        a.reports += 1;
        a.end_ns = a.end_ns.max(iv.end_ns);
        match &mut a.hist {
            Some(h) => {
                let _ = h.add(&iv.hist);
            }
            None => a.hist = Some(iv.hist),
        }
    }

    fn print_ready(&mut self, shared: &Shared, force: bool) {
        while self.printed < self.secs.len()
            && (self.secs[self.printed].reports >= self.threads || force)
        {
            let i = self.printed;
            self.printed += 1;
            if self.quiet {
                continue;
            }
            let a = &self.secs[i];
            let start = self.t0 + i as u64 * SEC;
            let dur = (a.end_ns.saturating_sub(start) as f64 / 1e9).max(1e-3);
            let p99 = a
                .hist
                .as_ref()
                .filter(|h| !h.is_empty())
                .map_or("-".to_string(), |h| {
                    us(h.value_at_quantile(0.99) as f64 / 1e3)
                });
            let (now, cpu) = (now_ns(), sys::cpu_ns());
            let cpu_pct = 100.0 * (cpu - self.last_cpu.1) as f64
                / (now.saturating_sub(self.last_cpu.0)).max(1) as f64;
            self.last_cpu = (now, cpu);
            let phase = if start >= self.send_end {
                Phase::After
            } else if start < self.t0 + self.warmup_ns {
                Phase::Warmup
            } else {
                Phase::Measured
            };
            eprintln!(
                "{}",
                progress_line(&ProgressLine {
                    second: i + 1,
                    phase,
                    open: shared.sum(|w| &w.open_now),
                    failed: shared.sum(|w| &w.failed),
                    lost: shared.sum(|w| &w.lost_conns),
                    sent_per_s: a.sent as f64 / dur,
                    recv_per_s: a.recv as f64 / dur,
                    p99,
                    cpu_pct,
                })
            );
        }
    }
}

/// Which part of the run a progress line's second belongs to.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Phase {
    /// Warm-up: not counted in the summary.
    Warmup,
    /// The measured window.
    Measured,
    /// After sending stopped: drain and close.
    After,
}

/// One progress line's figures: connection counts are totals at the end of
/// the second, rates, latency and CPU cover that second alone.
struct ProgressLine {
    second: usize,
    phase: Phase,
    open: u64,
    failed: u64,
    lost: u64,
    sent_per_s: f64,
    recv_per_s: f64,
    /// p99 latency already formatted, "-" when nothing was received.
    p99: String,
    cpu_pct: f64,
}

/// `[   3s] conns: 5 open, 0 failed, 0 lost (totals) | this second: sent 500.0k msg/s,
/// recv 2.0M msg/s, p99 1.23ms, cpu 41% of a core`, with "warm-up" or "drain"
/// after the second outside the measured window.
fn progress_line(l: &ProgressLine) -> String {
    let phase = match l.phase {
        Phase::Warmup => " warm-up",
        Phase::Measured => "",
        Phase::After => " drain",
    };
    format!(
        "[{:>4}s{phase}] conns: {} open, {} failed, {} lost (totals) | this second: sent {} msg/s, recv {} msg/s, p99 {}, cpu {:.0}% of a core",
        l.second,
        l.open,
        l.failed,
        l.lost,
        si(l.sent_per_s),
        si(l.recv_per_s),
        l.p99,
        l.cpu_pct
    )
}

pub fn execute(
    setup: Setup,
    common: &Common,
    params: serde_json::Value,
    limits: (u64, u64),
) -> Summary {
    let setup = Arc::new(setup);
    let threads = setup.threads;
    let channels = setup.ps.as_ref().map_or(0, |p| p.cfg.channels.len());
    let nodes = if setup.nodes.is_some() {
        setup.targets.len()
    } else {
        1
    };
    let shared = Arc::new(Shared::new(threads, channels, nodes));
    // Wall clock against the monotonic one, for the window's Unix times.
    let unix_at_0 = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
        - now_ns() as f64 / 1e9;
    let (tx, rx) = crossbeam_channel::unbounded::<Interval>();
    let run_start = (now_ns(), sys::cpu_ns());
    let mut handles = Vec::new();
    for id in 0..threads {
        let w = match Worker::new(id, setup.clone(), shared.clone(), tx.clone()) {
            Ok(w) => w,
            Err(e) => {
                eprintln!("worker {id}: {e}");
                std::process::exit(2);
            }
        };
        handles.push(
            std::thread::Builder::new()
                .name(format!("load-{id}"))
                .spawn(move || w.run())
                .expect("spawn worker"),
        );
    }
    drop(tx);

    // Connect phase.
    let connect_start = now_ns();
    let guard = connect_start
        + (setup.planned as f64 / threads as f64 * setup.connect_interval_ns as f64) as u64
        + setup.connect_timeout_ns
        + 30 * SEC;
    let mut next_line = connect_start + SEC;
    while shared.ready.load(Acquire) < threads {
        std::thread::sleep(Duration::from_millis(5));
        let now = now_ns();
        if now >= next_line && !common.quiet {
            next_line += SEC;
            eprintln!(
                "[connect] conns: {} of {} open, {} failed (totals)",
                shared.sum(|w| &w.open_now),
                setup.planned,
                shared.sum(|w| &w.failed)
            );
        }
        if now > guard {
            eprintln!("warning: connect phase overran; starting the load anyway");
            break;
        }
    }
    let connect_end = now_ns();
    let open_at_start = shared.sum(|w| &w.open_now);
    if !common.settle.is_zero() {
        std::thread::sleep(common.settle);
    }

    // Load.
    let t0 = now_ns() + 20_000_000;
    let send_end = t0 + setup.warmup_ns + setup.duration_ns;
    shared.t0.store(t0, Release);
    shared.send_end.store(send_end, Release);
    shared.phase.store(RUNNING, Release);
    let mut progress = Progress {
        quiet: common.quiet,
        threads,
        t0,
        warmup_ns: setup.warmup_ns,
        send_end,
        secs: Vec::new(),
        printed: 0,
        last_cpu: (t0, sys::cpu_ns()),
    };
    let measure_start = t0 + setup.warmup_ns;
    let mut m0: Option<Sample> = None;
    // Recovery burst: publications to wait for before everyone reconnects.
    let burst_total = setup.ps.as_ref().and_then(|p| {
        p.burst
            .map(|b| b * p.cfg.channels.len() as u64 * p.publishers as u64)
    });
    let mut reconnect_at = 0u64;
    let m1 = loop {
        // Sleep rather than block in the channel: a blocking receive
        // spins and yields, stealing CPU from a worker on the same core.
        std::thread::sleep(Duration::from_millis(2));
        while let Ok(iv) = rx.try_recv() {
            progress.add(iv);
        }
        progress.print_ready(&shared, false);
        let now = now_ns();
        if m0.is_none() && now >= measure_start {
            m0 = Some(sample(&shared));
        }
        if let Some(total) = burst_total {
            let acked = shared.sum(|w| &w.pub_acked);
            if reconnect_at == 0 && (acked >= total || now >= send_end) {
                reconnect_at = now;
                shared.reconnect_at.store(now, Release);
                if !common.quiet {
                    eprintln!(
                        "[burst] {acked} of {total} publications acknowledged, {} subscribers away: all reconnect now",
                        shared.sum(|w| &w.dropped)
                    );
                }
            }
            if reconnect_at != 0 {
                let back = shared.sum(|w| &w.resubscribed);
                let away = shared.sum(|w| &w.dropped);
                let limit = reconnect_at + setup.duration_ns.max(30 * SEC);
                if back >= away || now >= limit {
                    break sample(&shared);
                }
            }
            continue;
        }
        if now >= send_end || shared.done_sending.load(Acquire) >= threads {
            break sample(&shared);
        }
    };
    let m0 = m0.unwrap_or(Sample {
        at: t0,
        sent: 0,
        recv: 0,
        sent_bytes: 0,
        recv_bytes: 0,
        cpu: progress.last_cpu.1,
        cycles: 0,
    });

    // Drain.
    if matches!(setup.kind, Kind::Echo | Kind::Fanout | Kind::PubSub) {
        shared.phase.store(DRAINING, Release);
        // Subscribers dropped near the end come back during the drain.
        let away = setup
            .ps
            .as_ref()
            .filter(|p| p.reconnect_every_ns > 0)
            .map_or(0, |p| p.reconnect_away_ns + 2 * SEC);
        let drain_end = now_ns() + (common.drain.as_nanos() as u64).max(away);
        loop {
            std::thread::sleep(Duration::from_millis(2));
            while let Ok(iv) = rx.try_recv() {
                progress.add(iv);
            }
            progress.print_ready(&shared, false);
            let delivered = shared.sum(|w| &w.delivered);
            let expected = shared.sum(|w| &w.expected);
            // pubsub: a publication is expected once its ack arrives, and
            // deliveries may overtake the ack: wait for all acks too.
            let acked = setup.kind != Kind::PubSub
                || shared.sum(|w| &w.pub_acked) >= shared.sum(|w| &w.sent);
            if now_ns() >= drain_end || (delivered >= expected && acked) {
                break;
            }
        }
    }
    shared.phase.store(CLOSING, Release);
    let mut results = Vec::new();
    for h in handles {
        while !h.is_finished() {
            std::thread::sleep(Duration::from_millis(5));
            while let Ok(iv) = rx.try_recv() {
                progress.add(iv);
            }
            progress.print_ready(&shared, false);
        }
        results.push(h.join().expect("worker panicked"));
    }
    while let Ok(iv) = rx.try_recv() {
        progress.add(iv);
    }
    progress.print_ready(&shared, true);
    let run_end = (now_ns(), sys::cpu_ns());

    // Assemble.
    let mut s = Summary {
        tool: format!("wsrelay-load {}", env!("CARGO_PKG_VERSION")),
        scenario: setup.kind.name().into(),
        params,
        url: common.url.join(" "),
        threads,
        warmup_s: setup.warmup_ns as f64 / 1e9,
        ..Default::default()
    };
    let window = (m1.at.saturating_sub(m0.at) as f64 / 1e9).max(1e-9);
    s.measured_s = window;
    let mut stats = crate::conn::Stats::default();
    let mut handshake = new_hist();
    let mut tls_handshake = new_hist();
    let mut lag = new_hist();
    let mut cycle = new_hist();
    let mut unique = vec![0u64; setup.n_pubs];
    let mut sent_by_pub = vec![0u64; setup.n_pubs];
    let (mut dup, mut reordered, mut no_fin, mut unsent) = (0, 0, 0, 0);
    let (mut first, mut last) = (u64::MAX, 0u64);
    let c = &mut s.connections;
    for r in &results {
        let st = &r.stats;
        stats.sent += st.sent;
        stats.recv += st.recv;
        stats.other_recv += st.other_recv;
        stats.delivered += st.delivered;
        stats.corrupted += st.corrupted;
        stats.misrouted += st.misrouted;
        stats.pings += st.pings;
        c.attempted += st.attempted;
        c.established += st.established;
        c.failed += st.failed;
        c.lost += st.lost_conns;
        c.closes_clean += st.closes_clean;
        c.closes_unclean += st.closes_unclean;
        stats.cycles += st.cycles;
        stats.deflate_conns += st.deflate_conns;
        stats.plain_conns += st.plain_conns;
        stats.wire_in += st.wire_in;
        stats.wire_out += st.wire_out;
        stats.payload_in += st.payload_in;
        stats.payload_out += st.payload_out;
        stats.compressed_in += st.compressed_in;
        stats.compressed_out += st.compressed_out;
        stats.inflate_reused += st.inflate_reused;
        stats.data_in += st.data_in;
        stats.data_out += st.data_out;
        stats.tls_full += st.tls_full;
        stats.tls_resumed += st.tls_resumed;
        stats.tls_failed += st.tls_failed;
        let _ = handshake.add(&r.handshake);
        let _ = tls_handshake.add(&r.tls_handshake);
        let _ = lag.add(&r.lag);
        let _ = cycle.add(&r.cycle);
        for (a, b) in unique.iter_mut().zip(&r.unique_by_pub) {
            *a += b;
        }
        for (a, b) in sent_by_pub.iter_mut().zip(&r.sent_by_pub) {
            *a += b;
        }
        dup += r.dup;
        reordered += r.reordered;
        no_fin += r.close_no_fin;
        unsent += r.unsent;
        for (k, v) in &r.failures {
            *c.failures.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &r.lost {
            *c.lost_reasons.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &r.unclean {
            *c.unclean_reasons.entry(k.clone()).or_insert(0) += v;
        }
        if r.first_attempt_ns > 0 {
            first = first.min(r.first_attempt_ns);
        }
        last = last.max(r.last_open_ns);
    }
    c.planned = setup.planned as u64;
    c.open_at_start = open_at_start;
    let ratio = |w: u64, p: u64| if p > 0 { w as f64 / p as f64 } else { 0.0 };
    s.bandwidth = crate::report::Bandwidth {
        deflate_offered: setup.deflate,
        deflate_negotiated: stats.deflate_conns,
        deflate_not_negotiated: stats.plain_conns,
        wire_in_bytes: stats.wire_in,
        wire_out_bytes: stats.wire_out,
        payload_in_bytes: stats.payload_in,
        payload_out_bytes: stats.payload_out,
        messages_in: stats.data_in,
        messages_out: stats.data_out,
        compressed_in: stats.compressed_in,
        compressed_out: stats.compressed_out,
        inflate_reused: stats.inflate_reused,
        wire_per_payload_in: ratio(stats.wire_in, stats.payload_in),
        wire_per_payload_out: ratio(stats.wire_out, stats.payload_out),
    };
    if setup.tls.is_some() {
        s.tls = Some(crate::report::TlsReport {
            verification: if common.insecure {
                "insecure".into()
            } else {
                "ca-file".into()
            },
            resumption: common.tls_resume,
            handshakes_full: stats.tls_full,
            handshakes_resumed: stats.tls_resumed,
            handshake_failures: stats.tls_failed,
            handshake_latency: Lat::from_hist(&tls_handshake),
        });
    }
    let c = &mut s.connections;
    c.close_without_server_fin = no_fin;
    c.handshake_latency = Lat::from_hist(&handshake);
    if setup.kind == Kind::Churn {
        let cyc = m1.cycles - m0.cycles;
        s.churn = Some(Churn {
            cycles: stats.cycles,
            cycles_per_s: cyc as f64 / window,
            cycle_latency: Lat::from_hist(&cycle),
        });
        c.connect_phase_s = window;
        c.connect_rate_per_s = cyc as f64 / window;
    } else {
        let end = if last > first { last } else { connect_end };
        let span = (end.saturating_sub(first.min(connect_start)) as f64 / 1e9).max(1e-9);
        c.connect_phase_s = (connect_end - connect_start) as f64 / 1e9;
        c.connect_rate_per_s = c.established as f64 / span;
    }

    let mut expected = 0u64;
    let mut lost = 0u64;
    for (p, &sent) in sent_by_pub.iter().enumerate() {
        let room = p % setup.rooms.max(1) as usize;
        let e = sent * setup.subs_in_room.get(room).copied().unwrap_or(0) as u64;
        expected += e;
        lost += e.saturating_sub(unique[p]);
    }
    let m = &mut s.messages;
    m.size = setup.size;
    m.sent = stats.sent - unsent;
    m.unsent_at_end = unsent;
    m.received = stats.recv;
    m.sent_per_s = (m1.sent - m0.sent) as f64 / window;
    m.received_per_s = (m1.recv - m0.recv) as f64 / window;
    m.sent_bytes_per_s = (m1.sent_bytes - m0.sent_bytes) as f64 / window;
    m.received_bytes_per_s = (m1.recv_bytes - m0.recv_bytes) as f64 / window;
    m.untracked_received = stats.other_recv;
    m.expected = expected;
    m.delivered_unique = stats.delivered;
    m.lost = lost;
    m.duplicated = dup;
    m.reordered = reordered;
    m.corrupted = stats.corrupted;
    m.misrouted = stats.misrouted;
    let bad = lost + dup + reordered + stats.corrupted + stats.misrouted;
    m.error_ratio = if expected > 0 {
        bad as f64 / expected as f64
    } else if bad > 0 {
        1.0
    } else {
        0.0
    };
    m.pings_answered = stats.pings;

    let warm_secs = (setup.warmup_ns / SEC) as usize;
    let mut lat = new_hist();
    for (i, a) in progress.secs.iter().enumerate() {
        let start = t0 + i as u64 * SEC;
        let dur = (a.end_ns.saturating_sub(start) as f64 / 1e9).max(1e-3);
        let h = a.hist.as_ref();
        let q = |q: f64| {
            h.filter(|h| !h.is_empty())
                .map_or(0.0, |h| h.value_at_quantile(q) as f64 / 1e3)
        };
        s.per_second.push(Second {
            t_s: (a.end_ns.saturating_sub(t0)) as f64 / 1e9,
            dur_s: dur,
            sent: a.sent,
            received: a.recv,
            p50_us: q(0.5),
            p99_us: q(0.99),
            max_us: h.map_or(0.0, |h| h.max() as f64 / 1e3),
            warmup: i < warm_secs,
        });
        if i >= warm_secs {
            if let Some(h) = h {
                let _ = lat.add(h);
            }
        }
    }
    s.latency = Lat::from_hist(&lat);
    s.send_lag = Lat::from_hist(&lag);
    s.generator = Generator {
        cpu_percent_of_one_core: 100.0 * (m1.cpu - m0.cpu) as f64 / (window * 1e9),
        cpu_percent_whole_run: 100.0 * (run_end.1 - run_start.1) as f64
            / (run_end.0 - run_start.0).max(1) as f64,
        cpu_s: (run_end.1 - run_start.1) as f64 / 1e9,
        wall_s: (run_end.0 - run_start.0) as f64 / 1e9,
        nofile_soft: limits.0,
        nofile_hard: limits.1,
    };

    if let Some(ns) = &setup.nodes {
        let mut n = nodes_report(&setup, ns, &results, &sent_by_pub, &shared, window);
        n.window_unix_s = [
            unix_at_0 + m0.at as f64 / 1e9,
            unix_at_0 + m1.at as f64 / 1e9,
        ];
        s.nodes = Some(n);
    }

    if let Some(ps) = &setup.ps {
        let r = pubsub_report(ps, &results, &shared, reconnect_at);
        let m = &mut s.messages;
        m.size = 0;
        m.expected = r.expected;
        m.delivered_unique = r.delivered_unique;
        m.lost = r.lost;
        m.duplicated = r.duplicated;
        m.reordered = r.reordered;
        m.misrouted = r.misrouted;
        m.corrupted = r.foreign;
        let bad = r.lost + r.duplicated + r.reordered + r.misrouted + r.foreign;
        m.error_ratio = if r.expected > 0 {
            bad as f64 / r.expected as f64
        } else if bad > 0 {
            1.0
        } else {
            0.0
        };
        if !r.errors.is_empty() {
            let n: u64 = r.errors.values().sum();
            s.problems
                .push(format!("{n} error replies (see pubsub errors)"));
        }
        if r.subscribe_ok < r.subscriptions_planned {
            s.problems.push(format!(
                "{} of {} subscriptions succeeded",
                r.subscribe_ok, r.subscriptions_planned
            ));
        }
        if r.offset_gaps + r.offset_repeats > 0 {
            s.problems.push(format!(
                "offset continuity: {} gaps, {} repeats",
                r.offset_gaps, r.offset_repeats
            ));
        }
        if let Some(rc) = &r.recovery {
            if rc.recovered_false > 0 {
                s.problems
                    .push(format!("{} resubscribes not recovered", rc.recovered_false));
            }
            if rc.resubscribed < rc.drops {
                s.problems.push(format!(
                    "{} of {} dropped clients resubscribed",
                    rc.resubscribed, rc.drops
                ));
            }
        }
        if r.bad_lines + r.unexpected_replies > 0 {
            s.problems.push(format!(
                "{} unreadable lines, {} unexpected replies",
                r.bad_lines, r.unexpected_replies
            ));
        }
        s.pubsub = Some(r);
    }

    let c = &s.connections;
    if c.failed > 0 {
        s.problems
            .push(format!("{} connection attempts failed", c.failed));
    }
    if setup.kind != Kind::Churn && c.established < c.planned {
        s.problems.push(format!(
            "only {} of {} connections were established",
            c.established, c.planned
        ));
    }
    if c.lost > 0 {
        s.problems
            .push(format!("{} connections were lost during the run", c.lost));
    }
    if s.messages.error_ratio > common.max_loss {
        s.problems.push(format!(
            "error ratio {:.3e} (lost {}, dup {}, reordered {}, corrupted {}, misrouted {}) exceeds --max-loss {}",
            s.messages.error_ratio,
            s.messages.lost,
            s.messages.duplicated,
            s.messages.reordered,
            s.messages.corrupted,
            s.messages.misrouted,
            common.max_loss
        ));
    }
    s.pass = s.problems.is_empty();
    s
}

/// Several nodes: each receiving node's deliveries, loss, duplicates,
/// order and latency. Fanout: publisher p's messages are owed to the
/// tracked members of its room on each node (without the publisher itself
/// with --all-publish); pubsub: each acknowledged publication to the
/// subscriptions its channel had on each node after the connect phase.
fn nodes_report(
    setup: &Setup,
    ns: &NodesSetup,
    results: &[crate::worker::WorkerResult],
    sent_by_pub: &[u64],
    shared: &Shared,
    window: f64,
) -> crate::report::NodesReport {
    let n = setup.targets.len();
    let mut out = crate::report::NodesReport::default();
    let (mut same, mut cross) = (new_hist(), new_hist());
    let mut per: Vec<crate::report::NodeReport> = setup
        .targets
        .iter()
        .map(|t| crate::report::NodeReport {
            url: format!(
                "{}://{}{}",
                if t.tls { "wss" } else { "ws" },
                t.host,
                t.prefix
            ),
            ..Default::default()
        })
        .collect();
    for p in setup.plans.iter().flatten() {
        let r = &mut per[p.node as usize];
        r.connections += 1;
        if p.tracks || !p.channels.is_empty() {
            r.receivers += 1;
        }
        if p.publisher.is_some() {
            r.publishers += 1;
        }
    }
    // pubsub: acknowledged publications per (publisher, channel).
    let c = setup.ps.as_ref().map_or(0, |p| p.cfg.channels.len());
    let mut acked: Vec<u64> = Vec::new();
    for w in results {
        if let Some(p) = &w.ps {
            acked.resize(acked.len().max(p.acked_pk.len()), 0);
            for (a, b) in acked.iter_mut().zip(&p.acked_pk) {
                *a += b;
            }
        }
    }
    let mut hists: Vec<Histogram<u64>> = (0..n).map(|_| new_hist()).collect();
    let mut unique: Vec<Vec<u64>> = vec![Vec::new(); n];
    for w in results {
        let Some(t) = &w.nodes else { continue };
        let _ = same.add(&t.same);
        let _ = cross.add(&t.cross);
        for (i, a) in t.per.iter().enumerate() {
            let r = &mut per[i];
            r.received += a.received;
            r.received_per_s += a.window_received as f64 / window;
            r.duplicated += a.dup;
            r.reordered += a.reordered;
            let _ = hists[i].add(&a.hist);
            let u = &mut unique[i];
            u.resize(u.len().max(a.unique.len()), 0);
            for (x, y) in u.iter_mut().zip(&a.unique) {
                *x += y;
            }
        }
    }
    let rooms = setup.rooms.max(1) as usize;
    for (i, r) in per.iter_mut().enumerate() {
        let owed: Vec<u64> = if setup.ps.is_some() {
            // Slot p × C + k.
            acked
                .iter()
                .enumerate()
                .map(|(slot, &a)| {
                    let k = slot % c.max(1);
                    a * shared
                        .ps_subs_node
                        .get(i * c + k)
                        .map_or(0, |x| x.load(Acquire))
                })
                .collect()
        } else {
            sent_by_pub
                .iter()
                .enumerate()
                .map(|(p, &sent)| {
                    let mut subs = ns.subs_in_room[i].get(p % rooms).copied().unwrap_or(0) as u64;
                    if setup.skip_own && ns.pub_node.get(p) == Some(&(i as u16)) {
                        subs = subs.saturating_sub(1);
                    }
                    sent * subs
                })
                .collect()
        };
        for (slot, &e) in owed.iter().enumerate() {
            let u = unique[i].get(slot).copied().unwrap_or(0);
            r.expected += e;
            r.delivered_unique += u;
            r.lost += e.saturating_sub(u);
        }
        r.latency = Lat::from_hist(&hists[i]);
    }
    out.nodes = per;
    out.same_node_latency = Lat::from_hist(&same);
    out.cross_node_latency = Lat::from_hist(&cross);
    out
}

/// Sums the workers' pubsub figures; loss per (publisher, channel) is
/// acknowledged publications × subscriptions made in the connect phase −
/// unique deliveries.
fn pubsub_report(
    ps: &PsSetup,
    results: &[crate::worker::WorkerResult],
    shared: &Shared,
    reconnect_at: u64,
) -> PubSubReport {
    let c = ps.cfg.channels.len();
    let n = c * ps.publishers;
    let (mut unique, mut sent, mut acked) = (vec![0u64; n], vec![0u64; n], vec![0u64; n]);
    let mut ack = new_hist();
    let mut resub = new_hist();
    let mut acc = crate::pubsub::track::SubAcc::default();
    let mut r = PubSubReport {
        subscribers: ps.subscribers,
        publishers: ps.publishers,
        channels: c,
        ..Default::default()
    };
    let mut last_resub = 0u64;
    let (mut drops, mut reconnects, mut resubscribed, mut retries) = (0, 0, 0, 0);
    for w in results {
        let Some(p) = &w.ps else { continue };
        for i in 0..n {
            unique[i] += p.unique_pk[i];
            sent[i] += p.sent_pk[i];
            acked[i] += p.acked_pk[i];
        }
        let _ = ack.add(&p.ack);
        let _ = resub.add(&p.resub);
        acc.add(&p.acc);
        let st = &p.st;
        r.subscriptions_planned += p.subscriptions;
        r.connect_ok += st.connect_ok;
        r.publish_ok += st.publish_ok;
        r.publish_errors += st.publish_err;
        r.publish_unacked += st.publish_unacked;
        r.pings_answered += st.pings;
        r.bad_lines += st.bad_lines;
        r.unexpected_replies += st.unexpected_replies;
        r.unknown_channel += st.unknown_channel;
        r.duplicated += p.dup;
        r.reordered += p.reordered;
        for (k, v) in &st.errors {
            *r.errors.entry(k.clone()).or_insert(0) += v;
        }
        for (k, v) in &st.other_pushes {
            *r.other_pushes.entry(k.clone()).or_insert(0) += v;
        }
        drops += st.drops;
        reconnects += st.reconnects;
        retries += st.retries;
        resubscribed += st.resubscribe_ok;
        last_resub = last_resub.max(st.last_resub_ns);
    }
    let subs: Vec<u64> = shared.ps_subs.iter().map(|a| a.load(Acquire)).collect();
    for i in 0..n {
        let k = i % c;
        let e = acked[i] * subs[k];
        r.expected += e;
        r.lost += e.saturating_sub(unique[i]);
        r.delivered_unique += unique[i];
    }
    r.publish_sent = sent.iter().sum();
    r.subscribe_ok = subs.iter().sum();
    r.subscriptions_per_channel_min = subs.iter().copied().min().unwrap_or(0);
    r.subscriptions_per_channel_max = subs.iter().copied().max().unwrap_or(0);
    r.ack_latency = Lat::from_hist(&ack);
    r.misrouted = acc.misrouted;
    r.foreign = acc.foreign;
    r.offset_gaps = acc.offset_gaps;
    r.offset_repeats = acc.offset_repeats;
    r.history_on_subscribe = acc.history_on_subscribe;
    if ps.reconnect_every_ns > 0 || ps.burst.is_some() {
        r.recovery = Some(Recovery {
            drops,
            reconnects,
            retries,
            resubscribed,
            recovered_true: acc.recovered_true,
            recovered_false: acc.recovered_false,
            recovered_publications: acc.recovered_pubs,
            epoch_changes: acc.epoch_changes,
            resubscribe_latency: Lat::from_hist(&resub),
            burst_per_channel: ps.burst.map(|b| b * ps.publishers as u64),
            time_to_recover_all_s: (ps.burst.is_some() && reconnect_at > 0 && last_resub > 0)
                .then(|| last_resub.saturating_sub(reconnect_at) as f64 / 1e9),
        });
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_line_names_units_and_what_is_a_total() {
        let mut l = ProgressLine {
            second: 3,
            phase: Phase::Measured,
            open: 5,
            failed: 1,
            lost: 2,
            sent_per_s: 500_000.0,
            recv_per_s: 2_000_000.0,
            p99: us(1230.0),
            cpu_pct: 41.4,
        };
        let line = progress_line(&l);
        assert!(
            line.starts_with(
                "[   3s] conns: 5 open, 1 failed, 2 lost (totals) | this second: sent "
            ),
            "{line}"
        );
        assert!(line.contains(" msg/s, recv "), "{line}");
        assert!(
            line.ends_with(&format!("p99 {}, cpu 41% of a core", us(1230.0))),
            "{line}"
        );
        l.phase = Phase::Warmup;
        assert!(progress_line(&l).starts_with("[   3s warm-up] "));
        l.phase = Phase::After;
        l.p99 = "-".into();
        let line = progress_line(&l);
        assert!(
            line.starts_with("[   3s drain] ") && line.contains("p99 -,"),
            "{line}"
        );
    }
}
