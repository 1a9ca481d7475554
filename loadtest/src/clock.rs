//! One process-wide monotonic clock, in nanoseconds since the process
//! epoch, and a timerfd that wakes an event loop at an absolute instant
//! with nanosecond precision (epoll's own timeout has millisecond
//! granularity, which would add up to 1 ms of schedule lag to open-loop
//! senders).
//!
//! Publishers put `now_ns()` values into payloads and subscribers subtract
//! them from their own `now_ns()`: this works because every connection
//! lives in this one process and shares the epoch.

use mio::unix::SourceFd;
use mio::{Interest, Registry, Token};
use std::io;
use std::os::unix::io::RawFd;
use std::sync::OnceLock;

static EPOCH: OnceLock<u64> = OnceLock::new();

fn mono_raw_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid pointer to a timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn epoch() -> u64 {
    // Start a little in the past so that 0 is never a valid timestamp.
    *EPOCH.get_or_init(|| mono_raw_ns().saturating_sub(1))
}

/// Fixes the epoch (call once at start-up, before any thread reads it).
pub fn init() {
    epoch();
}

/// Nanoseconds since the process epoch (CLOCK_MONOTONIC, vDSO: ~20 ns).
#[inline]
pub fn now_ns() -> u64 {
    // The epoch first: read after the clock, a first-ever call would set
    // it later than the reading and underflow.
    let e = epoch();
    mono_raw_ns() - e
}

pub const SEC: u64 = 1_000_000_000;

/// A timerfd armed at absolute `now_ns()` instants, registered in a Poll.
pub struct Timer {
    fd: RawFd,
    armed: u64,
}

impl Timer {
    pub fn new(registry: &Registry, token: Token) -> io::Result<Timer> {
        // SAFETY: plain syscall.
        let fd = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        registry.register(&mut SourceFd(&fd), token, Interest::READABLE)?;
        Ok(Timer { fd, armed: 0 })
    }

    /// Arms the timer for `at` (a `now_ns()` value). Re-arming resets the
    /// expiry count, so the edge-triggered registration fires again
    /// without the fd ever being read.
    pub fn arm(&mut self, at: u64) {
        if at == self.armed {
            return;
        }
        self.armed = at;
        let raw = at + epoch();
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: (raw / SEC) as libc::time_t,
                tv_nsec: (raw % SEC) as libc::c_long,
            },
        };
        // SAFETY: valid fd and itimerspec.
        unsafe {
            libc::timerfd_settime(
                self.fd,
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        // SAFETY: we own the fd.
        unsafe { libc::close(self.fd) };
    }
}

/// Parses "10s", "500ms", "2m", "1.5s", "250us" or a bare number of
/// seconds.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let v: f64 = num
        .parse()
        .map_err(|_| format!("bad duration {s:?} (examples: 10s, 500ms, 2m)"))?;
    let mult = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 1e-3,
        "us" | "µs" => 1e-6,
        "ns" => 1e-9,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        other => return Err(format!("bad duration unit {other:?} in {s:?}")),
    };
    if !v.is_finite() || v < 0.0 {
        return Err(format!("bad duration {s:?}"));
    }
    Ok(std::time::Duration::from_secs_f64(v * mult))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("5 parsecs").is_err());
    }

    #[test]
    fn clock_is_monotonic_and_positive() {
        init();
        let a = now_ns();
        let b = now_ns();
        assert!(a > 0 && b >= a);
    }
}
