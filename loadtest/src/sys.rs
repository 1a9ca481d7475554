//! Operating-system figures: the open-files limit, CPU time used, the
//! ephemeral port range.

/// Raises the RLIMIT_NOFILE soft limit to the hard limit; returns
/// (soft, hard) as they are afterwards.
pub fn raise_nofile() -> (u64, u64) {
    let mut rl = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointer.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) != 0 {
            return (0, 0);
        }
        if rl.rlim_cur < rl.rlim_max {
            let want = libc::rlimit {
                rlim_cur: rl.rlim_max,
                rlim_max: rl.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
                rl.rlim_cur = rl.rlim_max;
            }
        }
    }
    (rl.rlim_cur, rl.rlim_max)
}

/// User + system CPU time of this process, in nanoseconds.
pub fn cpu_ns() -> u64 {
    // SAFETY: zeroed rusage is a valid out-parameter.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// The kernel's ephemeral port range (ports per source address).
pub fn local_port_range() -> Option<(u16, u16)> {
    let s = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = s.split_whitespace().map(|p| p.parse::<u16>());
    match (it.next(), it.next()) {
        (Some(Ok(a)), Some(Ok(b))) if b >= a => Some((a, b)),
        _ => None,
    }
}

/// A short name for an I/O error: the errno name when there is one.
pub fn err_name(e: &std::io::Error) -> String {
    let name = match e.raw_os_error() {
        Some(libc::ECONNREFUSED) => "ECONNREFUSED",
        Some(libc::ECONNRESET) => "ECONNRESET",
        Some(libc::ECONNABORTED) => "ECONNABORTED",
        Some(libc::ETIMEDOUT) => "ETIMEDOUT",
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL (out of ephemeral ports? use --source)",
        Some(libc::EADDRINUSE) => "EADDRINUSE",
        Some(libc::EMFILE) => "EMFILE (open files limit)",
        Some(libc::ENFILE) => "ENFILE (system file table full)",
        Some(libc::EPIPE) => "EPIPE",
        Some(libc::ENOBUFS) => "ENOBUFS",
        Some(libc::ENETUNREACH) => "ENETUNREACH",
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH",
        Some(n) => return format!("errno {n}"),
        // Errors of our own making (TLS: "tls: <rustls error>") say what.
        None if e.get_ref().is_some() => return e.to_string(),
        None => return format!("{:?}", e.kind()),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_and_cpu() {
        let (soft, hard) = raise_nofile();
        assert!(soft > 0 && soft <= hard);
        let a = cpu_ns();
        let mut x = 0u64;
        for i in 0..1_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(cpu_ns() >= a);
        assert!(
            err_name(&std::io::Error::from_raw_os_error(libc::ECONNREFUSED))
                .starts_with("ECONNREFUSED")
        );
    }
}
