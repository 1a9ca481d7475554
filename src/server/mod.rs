//! The relay engine: per-core mio event loops ([`worker`]), each with its
//! own `SO_REUSEPORT` listener and table of connections, joined by bounded
//! cross-worker queues for room fan-out ([`mesh`]). Each connection's
//! protocol life is a sans-IO [`session::Session`].

pub mod accept;
pub mod admin;
pub mod admission;
pub mod api_backend;
pub mod api_redis;
pub mod awaiting;
pub mod buffer_pool;
pub mod client;
pub mod client_deadlines;
pub mod connection;
pub mod demo;
pub mod directory;
pub mod frame_pool;
pub mod housekeeping;
pub mod http;
pub mod local_rooms;
pub mod memory;
pub mod mesh;
pub mod node_status;
pub mod outbound;
pub mod push;
pub mod rate_limit;
pub mod router;
pub mod session;
pub mod table;
pub mod timer;
pub mod tls;
pub mod transport;
pub mod worker;

use crate::config::Config;
use crate::metrics::{self, Totals, WorkerMetrics};
use crate::pubsub::hub::Hub;
use admission::Admission;
use directory::{RoomDirectory, MAX_WORKERS};
use mesh::Mesh;
use mio::net::TcpListener;
use mio::{Poll, Waker};
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

/// State every worker can see.
pub struct Shared {
    pub config: Config,
    pub directory: RoomDirectory,
    pub mesh: Mesh,
    pub metrics: Vec<Arc<WorkerMetrics>>,
    /// Set once shutdown begins.
    pub shutdown: AtomicBool,
    /// Upgraded connections across all workers (shutdown waits for them).
    pub ws_connections: AtomicUsize,
    /// Every connection, counted from accept, in total and per client.
    pub admission: Admission,
    /// Pub/sub state: channel options, history, presence, tokens.
    pub hub: Hub,
    /// Which listener serves which routes (`admin_listen`, `public_routes`).
    pub routes: admin::RouteSplit,
    /// With `broker = "redis"`: the bridge's state, for `/healthz` and
    /// `/metrics`.
    pub broker: Option<BrokerStatus>,
}

/// What the HTTP side sees of the broker.
pub struct BrokerStatus {
    pub metrics: Arc<crate::broker::BrokerMetrics>,
    /// Redis shards (`redis_url` entries).
    pub shards: usize,
}

impl BrokerStatus {
    /// Every shard's connections are up.
    pub fn is_up(&self) -> bool {
        crate::broker::BrokerMetrics::get(&self.metrics.shards_up) == self.shards as u64
    }
}

/// Why the relay could not start.
#[derive(Debug)]
pub enum StartError {
    /// The listen address could not be bound.
    Bind {
        addr: SocketAddr,
        error: std::io::Error,
    },
    /// A configuration value the engine cannot honour.
    Config(String),
    Io(std::io::Error),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::Bind { addr, error } => write!(f, "cannot listen on {addr}: {error}"),
            StartError::Config(m) => write!(f, "config error: {m}"),
            StartError::Io(e) => write!(f, "start-up failed: {e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// A running relay.
pub struct ServerHandle {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
    local_addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    tls_addr: Option<SocketAddr>,
    /// The TLS certificate new handshakes present (`SIGHUP` reloads it).
    tls_certs: Option<Arc<tls::Certificates>>,
    reuseport: bool,
    /// The Redis bridge (`broker = "redis"`), stopped after the workers.
    broker: Option<crate::broker::Broker>,
}

impl ServerHandle {
    /// The bound address (useful with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The admin listener's bound address, when `admin_listen` is set.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The TLS listener's bound address, when `tls_listen` is set.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls_addr
    }

    /// Reads `tls_cert` / `tls_key` again for new TLS handshakes (open
    /// connections keep theirs). `Ok(false)`: no TLS listener. On error the
    /// previous certificate stays in use.
    pub fn reload_tls(&self) -> Result<bool, String> {
        match &self.tls_certs {
            Some(c) => c.reload().map(|()| true),
            None => Ok(false),
        }
    }

    /// Whether every worker has its own `SO_REUSEPORT` listener.
    pub fn reuseport(&self) -> bool {
        self.reuseport
    }

    pub fn workers(&self) -> usize {
        self.shared.metrics.len()
    }

    /// Starts graceful shutdown: stop accepting, close every connection
    /// with 1001, exit once all are closed or `shutdown_timeout` passes.
    pub fn shutdown(&self) {
        self.shared.shutdown.store(true, Ordering::Release);
        for w in 0..self.shared.mesh.len() {
            self.shared.mesh.wake(w);
        }
    }

    pub fn is_finished(&self) -> bool {
        self.threads.iter().all(|t| t.is_finished())
    }

    /// Waits for every worker to exit.
    pub fn join(self) {
        for t in self.threads {
            let _ = t.join();
        }
        if let Some(b) = self.broker {
            b.shutdown();
        }
    }

    /// Counters summed over workers.
    pub fn totals(&self) -> Totals {
        metrics::totals(self.shared.metrics.iter().map(|m| m.as_ref()))
    }

    pub fn rooms_open(&self) -> usize {
        self.shared.directory.len()
    }

    pub fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }
}

/// Binds a listener with `SO_REUSEADDR` and, where `reuseport`,
/// `SO_REUSEPORT`, so each worker can own one on the same address and the
/// kernel spreads incoming connections between them.
fn bind(addr: SocketAddr, reuseport: bool) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    #[cfg(all(unix, not(any(target_os = "solaris", target_os = "illumos"))))]
    if reuseport {
        socket.set_reuse_port(true)?;
    }
    #[cfg(not(all(unix, not(any(target_os = "solaris", target_os = "illumos")))))]
    if reuseport {
        return Err(std::io::Error::new(
            std::io::ErrorKind::Unsupported,
            "SO_REUSEPORT",
        ));
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// Fails with `AddrInUse` if anything listens on `addr`: a bind without
/// `SO_REUSEPORT` conflicts with every listener, including a group of
/// `SO_REUSEPORT` listeners. The probe is closed straight away.
fn probe_exclusive(addr: SocketAddr) -> std::io::Result<()> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.bind(&addr.into())
}

/// Starts the workers and returns once every listener is bound.
pub fn start(config: Config) -> Result<ServerHandle, StartError> {
    let workers = config.effective_workers();
    if workers == 0 || workers > MAX_WORKERS {
        return Err(StartError::Config(format!(
            "key \"workers\": {workers} workers requested, this build supports 1 to {MAX_WORKERS}"
        )));
    }
    // The first listener fixes the port (the configured one, or one the
    // kernel picks for port 0); the others join it with SO_REUSEPORT.
    // Where SO_REUSEPORT is unavailable, every worker polls a duplicate of
    // one listening socket instead (the kernel then wakes them in turn).
    // SO_REUSEPORT would also let this process silently join a port that
    // another relay (same user) already listens on, each then getting half
    // of the connections. A plain bind first makes that an error.
    if config.listen.port() != 0 {
        probe_exclusive(config.listen).map_err(|error| StartError::Bind {
            addr: config.listen,
            error,
        })?;
    }
    let (first, reuseport) = match bind(config.listen, true) {
        Ok(l) => (l, true),
        Err(e)
            if e.kind() == std::io::ErrorKind::AddrInUse
                || e.kind() == std::io::ErrorKind::AddrNotAvailable
                || e.kind() == std::io::ErrorKind::PermissionDenied =>
        {
            return Err(StartError::Bind {
                addr: config.listen,
                error: e,
            })
        }
        Err(_) => (
            bind(config.listen, false).map_err(|error| StartError::Bind {
                addr: config.listen,
                error,
            })?,
            false,
        ),
    };
    let local_addr = first.local_addr().map_err(StartError::Io)?;
    let mut listeners = vec![first];
    for _ in 1..workers {
        let l = if reuseport {
            bind(local_addr, true).map_err(|error| StartError::Bind {
                addr: local_addr,
                error,
            })?
        } else {
            let std_listener: std::net::TcpListener = {
                use std::os::fd::{AsRawFd, FromRawFd};
                // SAFETY: `dup` returns a new descriptor we own exclusively;
                // on failure (-1) we return before wrapping it.
                let fd = unsafe { libc::dup(listeners[0].as_raw_fd()) };
                if fd < 0 {
                    return Err(StartError::Io(std::io::Error::last_os_error()));
                }
                // SAFETY: `fd` is a freshly duplicated, valid listening
                // socket owned by nothing else.
                unsafe { std::net::TcpListener::from_raw_fd(fd) }
            };
            TcpListener::from_std(std_listener)
        };
        listeners.push(l);
    }

    // The admin listener: one socket, owned by worker 0, bound without
    // SO_REUSEPORT so nothing else can share its port.
    let mut admin_listener = match config.admin_listen {
        Some(addr) => Some(bind(addr, false).map_err(|error| StartError::Bind { addr, error })?),
        None => None,
    };
    let admin_addr = match &admin_listener {
        Some(l) => Some(l.local_addr().map_err(StartError::Io)?),
        None => None,
    };

    // The TLS listener: like the public one, one SO_REUSEPORT socket per
    // worker; without SO_REUSEPORT, worker 0 alone accepts TLS (a TLS
    // connection then still runs on worker 0 only).
    let mut tls_listeners: Vec<Option<(TcpListener, Arc<rustls::ServerConfig>)>> =
        (0..workers).map(|_| None).collect();
    let mut tls_addr = None;
    let mut tls_certs = None;
    if let Some(addr) = config.tls_listen {
        let (tls_config, certs) =
            tls::server_config(&config.tls_cert, &config.tls_key).map_err(StartError::Config)?;
        tls_certs = Some(certs);
        if addr.port() != 0 {
            probe_exclusive(addr).map_err(|error| StartError::Bind { addr, error })?;
        }
        let first = bind(addr, reuseport).map_err(|error| StartError::Bind { addr, error })?;
        let bound = first.local_addr().map_err(StartError::Io)?;
        tls_addr = Some(bound);
        tls_listeners[0] = Some((first, tls_config.clone()));
        if reuseport {
            for slot in tls_listeners.iter_mut().skip(1) {
                let l =
                    bind(bound, true).map_err(|error| StartError::Bind { addr: bound, error })?;
                *slot = Some((l, tls_config.clone()));
            }
        }
    }

    let mut polls = Vec::with_capacity(workers);
    let mut wakers = Vec::with_capacity(workers);
    for _ in 0..workers {
        let poll = Poll::new().map_err(StartError::Io)?;
        let waker = Arc::new(Waker::new(poll.registry(), worker::WAKER).map_err(StartError::Io)?);
        polls.push(poll);
        wakers.push(waker);
    }
    let hub = Hub::new(&config)
        .map_err(|e| StartError::Config(format!("key \"{}\": {}", e.key, e.reason)))?;
    let (broker, broker_ports) =
        match crate::broker::BrokerSettings::from_config(&config).map_err(StartError::Config)? {
            Some(settings) => {
                let shards = settings.targets.len();
                let (b, ports) = crate::broker::Broker::start(settings, wakers.clone())
                    .map_err(StartError::Io)?;
                let status = BrokerStatus {
                    metrics: b.metrics().clone(),
                    shards,
                };
                (Some((b, status)), ports.into_iter().map(Some).collect())
            }
            None => (None, (0..workers).map(|_| None).collect::<Vec<_>>()),
        };
    let (broker, broker_status) = match broker {
        Some((b, s)) => (Some(b), Some(s)),
        None => (None, None),
    };
    let (mesh, receivers) = Mesh::new(wakers, config.fanout_queue_len);
    let pin = config.pin_cores;
    let shared = Arc::new(Shared {
        directory: RoomDirectory::new(config.max_rooms),
        mesh,
        metrics: (0..workers)
            .map(|_| Arc::new(WorkerMetrics::default()))
            .collect(),
        shutdown: AtomicBool::new(false),
        ws_connections: AtomicUsize::new(0),
        admission: Admission::new(
            config.max_connections,
            config.max_connections_per_ip,
            config.ipv6_prefix_len,
        ),
        hub,
        routes: admin::RouteSplit::from_config(&config),
        broker: broker_status,
        config,
    });
    if let Some(b) = &broker {
        // Weak: the bridge outlives nothing of the engine's, and a record
        // is simply not sent once the engine is gone.
        let weak = Arc::downgrade(&shared);
        b.set_reporter(Box::new(move |max| {
            weak.upgrade().map(|s| node_status::record(&s, max))
        }));
    }
    let cores = if pin {
        core_affinity::get_core_ids().unwrap_or_default()
    } else {
        Vec::new()
    };
    let mut threads = Vec::with_capacity(workers);
    for (i, ((((poll, listener), rx), tls), port)) in polls
        .into_iter()
        .zip(listeners)
        .zip(receivers)
        .zip(tls_listeners)
        .zip(broker_ports)
        .enumerate()
    {
        let admin = if i == 0 { admin_listener.take() } else { None };
        let worker = worker::Worker::new(i, poll, listener, admin, tls, shared.clone(), rx, port)
            .map_err(StartError::Io)?;
        let core = if cores.is_empty() {
            None
        } else {
            Some(cores[i % cores.len()])
        };
        let t = std::thread::Builder::new()
            .name(format!("wsrelay-w{i}"))
            .spawn(move || {
                if let Some(core) = core {
                    if !core_affinity::set_for_current(core) {
                        log::warn!("worker {i}: could not pin to core {}", core.id);
                    }
                }
                worker.run();
            })
            .map_err(StartError::Io)?;
        threads.push(t);
    }
    Ok(ServerHandle {
        shared,
        threads,
        local_addr,
        admin_addr,
        tls_addr,
        tls_certs,
        reuseport,
        broker,
    })
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit. Returns the (soft,
/// hard) limits now in force.
pub fn raise_nofile_limit() -> std::io::Result<(u64, u64)> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass; no other effects.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass; raising the soft
        // limit up to the hard limit is always permitted.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            lim = raised;
        }
    }
    #[allow(clippy::unnecessary_cast)] // rlim_t is not u64 everywhere
    Ok((lim.rlim_cur as u64, lim.rlim_max as u64))
}

/// Descriptors a relay needs beyond its connections: listeners, epoll and
/// waker descriptors per worker, stdio and some slack, the admin listener
/// with its connections when there is one, and the Redis broker's
/// (`broker::descriptors`, 0 without it).
pub fn nofile_overhead(workers: usize, admin: bool, broker: u64) -> u64 {
    let admin = if admin {
        1 + admin::ADMIN_MAX_CONNECTIONS as u64
    } else {
        0
    };
    64 + 3 * workers as u64 + admin + broker
}
