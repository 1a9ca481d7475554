//! Opening connections: the connect schedule, sockets, handshakes, churn retries.

use super::*;

impl Worker {
    pub(super) fn start_connects(&mut self, now: u64) {
        while let Some(&(at, pi)) = self.delayed.front() {
            if at > now || !self.may_connect() {
                break;
            }
            self.delayed.pop_front();
            self.start_conn(pi, now);
        }
        let interval = self.setup.connect_interval_ns;
        while self.may_connect()
            && !self.queue.is_empty()
            && self.pending < self.setup.connect_concurrency
            && now >= self.next_connect
        {
            let pi = self.queue.pop_front().unwrap();
            self.start_conn(pi, now);
            // Pace from the schedule, not from now, but never bank more
            // than a few milliseconds of credit.
            self.next_connect = (self.next_connect + interval).max(now.saturating_sub(5_000_000));
        }
    }

    pub(super) fn open_socket(&self, global: u32, node: u16) -> io::Result<TcpStream> {
        let addr = self.setup.targets[node as usize].addr;
        let sources = &self.setup.sources;
        let stream = if sources.is_empty() {
            TcpStream::connect(addr)?
        } else {
            use socket2::{Domain, Protocol, Socket, Type};
            let src = sources[global as usize % sources.len()];
            let sock = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
            sock.set_nonblocking(true)?;
            if src.is_ipv4() {
                // Pick the port at connect time, per (source, destination)
                // pair, instead of reserving one at bind.
                let one: libc::c_int = 1;
                // SAFETY: valid fd and option value.
                unsafe {
                    use std::os::unix::io::AsRawFd;
                    libc::setsockopt(
                        sock.as_raw_fd(),
                        libc::IPPROTO_IP,
                        libc::IP_BIND_ADDRESS_NO_PORT,
                        &one as *const _ as *const libc::c_void,
                        std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                    );
                }
            }
            sock.bind(&SocketAddr::new(src, 0).into())?;
            match sock.connect(&addr.into()) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
                Err(e) => return Err(e),
            }
            TcpStream::from_std(sock.into())
        };
        stream.set_nodelay(true)?;
        Ok(stream)
    }

    pub(super) fn start_conn(&mut self, pi: usize, now: u64) {
        if self.setup.kind == Kind::Churn {
            // --max-messages counts cycles started, so the cap is exact.
            self.cycles_started += 1;
            if self.cycle_budget != u64::MAX {
                self.cycle_budget -= 1;
            }
        }
        self.t.stats.attempted += 1;
        if self.first_attempt == 0 {
            self.first_attempt = now;
        }
        let (global, node) = (self.plans[pi].global, self.plans[pi].node);
        let opened = self
            .open_socket(global, node)
            .and_then(|s| match &self.setup.tls {
                Some(tls) => Stream::tls(tls, s),
                None => Ok(Stream::plain(s)),
            });
        let mut stream = match opened {
            Ok(s) => s,
            Err(e) => {
                self.t.stats.failed += 1;
                bump(&mut self.failures, format!("connect: {}", err_name(&e)));
                self.retry_churn(pi, now);
                return;
            }
        };
        let idx = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(idx),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            self.free.push(idx);
            self.t.stats.failed += 1;
            bump(&mut self.failures, format!("register: {}", err_name(&e)));
            self.retry_churn(pi, now);
            return;
        }
        self.gen = self.gen.wrapping_add(1);
        let mut core = ConnCore::new(&self.plans[pi], self.gen, self.setup.pubs_per_room, now);
        core.deadline_ns = now + self.setup.connect_timeout_ns;
        if self.setup.kind == Kind::PubSub {
            self.ps_attach(pi, &mut core, now);
        }
        self.conns[idx] = Some(Conn {
            stream,
            plan: pi,
            core,
        });
        self.pending += 1;
    }

    /// A churn cycle failed: give its budget back and retry after a
    /// short back-off.
    pub(super) fn retry_churn(&mut self, pi: usize, now: u64) {
        if self.setup.kind != Kind::Churn {
            return;
        }
        self.cycles_started -= 1;
        self.cycle_budget = self.cycle_budget.saturating_add(1);
        if self.may_connect() {
            self.delayed.push_back((now + CHURN_BACKOFF_NS, pi));
        }
    }
}
