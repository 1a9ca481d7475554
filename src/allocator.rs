//! Start-up tuning of the C allocator: glibc's per-thread cache.
//!
//! glibc gives every thread a cache of recently freed small blocks
//! ("tcache", up to 7 blocks for each size up to 1 KiB). The allocator
//! counts cached blocks as in use, so they never coalesce with their free
//! neighbours and `malloc_trim` cannot hand their pages back. After a
//! connection burst has grown a worker's heap, the cached blocks sit
//! scattered over it and keep those pages resident. In the abuse soak
//! (`docs/reliability.md`) RSS stayed 14-17 % above its pre-abuse figure
//! with the cache and came back within 9 % without it. The hot path
//! allocates little, so the speed the cache buys is small; the cost is
//! measured in `docs/benchmarks.md`.
//!
//! glibc reads the switch only from the `GLIBC_TUNABLES` environment
//! variable when a process starts; there is no `mallopt` for it. So,
//! unless `malloc_thread_cache = true` or the operator already set the
//! tunable, the relay re-executes itself once, before any thread
//! exists, with `glibc.malloc.tcache_count=0` added. `exec` keeps the
//! process id, open descriptors and arguments, so supervisors see one
//! process. [`plan`] decides (pure, unit-tested); [`reexec`] acts.

use std::ffi::{OsStr, OsString};

/// The environment variable glibc reads its tunables from.
pub const TUNABLES_VAR: &str = "GLIBC_TUNABLES";
/// The tunable that sizes each thread's cache.
pub const TCACHE_TUNABLE: &str = "glibc.malloc.tcache_count";
/// Set on the re-executed process, so a tunable that glibc drops (it
/// erases tunables for set-user-ID programs) cannot cause an exec loop.
pub const REEXEC_MARKER_VAR: &str = "WSRELAY_MALLOC_REEXEC";

/// What to do about the thread cache at start-up.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// Re-execute with this `GLIBC_TUNABLES` value.
    Reexec(OsString),
    /// The cache is off: this process is the re-executed one (`true`) or
    /// the operator turned it off (`false`).
    Off { by_relay: bool },
    /// `malloc_thread_cache = true`: keep glibc's default.
    Kept,
    /// The operator set the tunable to this value; it is left alone.
    OperatorValue(String),
    /// The relay re-executed itself but the tunable did not arrive
    /// (glibc erased it): the cache stays on.
    NotApplied,
    /// Not a glibc target: there is no such cache to turn off.
    Unsupported,
}

/// Decides from the configuration and the two environment variables.
pub fn plan(thread_cache: bool, tunables: Option<&OsStr>, marker: Option<&OsStr>) -> Plan {
    if !cfg!(all(target_os = "linux", target_env = "gnu")) {
        return Plan::Unsupported;
    }
    let current = tunables.map(|t| t.to_string_lossy().into_owned());
    let set = current.as_deref().and_then(tcache_value);
    match (set, marker.is_some()) {
        (Some(v), by_relay) if v.trim() == "0" => Plan::Off { by_relay },
        (Some(v), _) => Plan::OperatorValue(v.to_string()),
        (None, _) if thread_cache => Plan::Kept,
        (None, true) => Plan::NotApplied,
        (None, false) => {
            let ours = format!("{TCACHE_TUNABLE}=0");
            let value = match tunables {
                Some(t) if !t.is_empty() => {
                    let mut v = t.to_os_string();
                    v.push(":");
                    v.push(&ours);
                    v
                }
                _ => OsString::from(ours),
            };
            Plan::Reexec(value)
        }
    }
}

/// The value of `glibc.malloc.tcache_count` in a `GLIBC_TUNABLES` string
/// (`name=value` pairs separated by `:`; the last one wins, as in glibc).
fn tcache_value(tunables: &str) -> Option<&str> {
    tunables
        .split(':')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(name, _)| *name == TCACHE_TUNABLE)
        .map(|(_, value)| value)
        .next_back()
}

/// Replaces the process image with the same program, arguments and
/// environment plus `tunables`. Returns only if the exec failed; the
/// caller then carries on with the cache on.
///
/// `/proc/self/exe` rather than `argv[0]`: it names the running binary
/// even when it was started through `PATH` or has been replaced on disk
/// since (an upgrade in place).
pub fn reexec(tunables: &OsStr) -> std::io::Error {
    #[cfg(unix)]
    {
        use std::os::unix::process::CommandExt;
        let mut args = std::env::args_os();
        let arg0 = args.next().unwrap_or_else(|| OsString::from("wsrelay"));
        std::process::Command::new("/proc/self/exe")
            .arg0(arg0)
            .args(args)
            .env(TUNABLES_VAR, tunables)
            .env(REEXEC_MARKER_VAR, "1")
            .exec()
    }
    #[cfg(not(unix))]
    {
        let _ = tunables;
        std::io::Error::new(std::io::ErrorKind::Unsupported, "no exec on this platform")
    }
}

/// Whether glibc's thread cache is in use in the calling thread, found
/// out by freeing a small block and seeing where it went: glibc counts a
/// block parked in the thread cache as in use, and one in a fast bin as
/// free (`fsmblks`). `None` off glibc. Run at start-up, so the log says
/// what glibc does, not what the relay asked for.
///
/// The statistics cover every arena, so another thread freeing small
/// blocks at the same moment can blur one reading; the answer is the
/// majority of several (the relay asks before its workers exist).
pub fn thread_cache_active() -> Option<bool> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        const TRIES: usize = 7;
        let cached = (0..TRIES).filter(|_| free_is_cached()).count();
        Some(cached > TRIES / 2)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        None
    }
}

/// One reading for [`thread_cache_active`]. An 88-byte request (96-byte
/// chunk) is fast-bin sized. With a cache, the allocation takes a cached
/// block if there is one, so the free always finds room in the cache;
/// without one, the free lands in a fast bin. Only the free is measured.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn free_is_cached() -> bool {
    let free_fast = || {
        // SAFETY: mallinfo only reads the allocator's statistics under its
        // own locks and returns them by value. Covered by the
        // `thread_cache_probe_*` tests below and by every start of the
        // binary (tests/engine_lifecycle.rs).
        unsafe { libc::mallinfo() }.fsmblks
    };
    let block = std::hint::black_box(Box::new([0u8; 88]));
    let before = free_fast();
    drop(block);
    free_fast() == before
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::*;

    /// The test binary runs with glibc's default unless the environment
    /// turned the cache off; the probe must tell which.
    #[test]
    fn thread_cache_probe_matches_the_environment() {
        let off = cache_off_by_environment();
        // Its own thread, so other tests' frees do not fill the slot.
        let active = std::thread::spawn(thread_cache_active).join().unwrap();
        assert_eq!(active, Some(!off));
    }

    #[test]
    fn thread_cache_probe_is_not_fooled_by_a_full_slot() {
        // Eight frees of the probe's size fill its cache slot and put one
        // block in a fast bin (or, without a cache, all eight); the probe's
        // own allocation takes one of them, and only its free is measured.
        let off = cache_off_by_environment();
        let active = std::thread::spawn(|| {
            let blocks: Vec<Box<[u8; 88]>> = (0..8).map(|_| Box::new([1u8; 88])).collect();
            drop(std::hint::black_box(blocks));
            thread_cache_active()
        })
        .join()
        .unwrap();
        assert_eq!(active, Some(!off));
    }

    /// Whether this test process was started with the cache off.
    fn cache_off_by_environment() -> bool {
        let tunables = std::env::var_os(TUNABLES_VAR);
        matches!(plan(true, tunables.as_deref(), None), Plan::Off { .. })
    }

    fn os(s: &str) -> OsString {
        OsString::from(s)
    }

    #[test]
    fn unset_tunables_get_the_cache_turned_off() {
        assert_eq!(
            plan(false, None, None),
            Plan::Reexec(os("glibc.malloc.tcache_count=0"))
        );
        assert_eq!(
            plan(false, Some(&os("")), None),
            Plan::Reexec(os("glibc.malloc.tcache_count=0"))
        );
    }

    #[test]
    fn other_tunables_are_kept_and_ours_appended() {
        assert_eq!(
            plan(false, Some(&os("glibc.malloc.trim_threshold=131072")), None),
            Plan::Reexec(os(
                "glibc.malloc.trim_threshold=131072:glibc.malloc.tcache_count=0"
            ))
        );
    }

    #[test]
    fn the_reexecuted_process_does_not_exec_again() {
        let t = os("glibc.malloc.tcache_count=0");
        assert_eq!(
            plan(false, Some(&t), Some(&os("1"))),
            Plan::Off { by_relay: true }
        );
        // Even if glibc erased the tunable, the marker stops a loop.
        assert_eq!(plan(false, None, Some(&os("1"))), Plan::NotApplied);
    }

    #[test]
    fn an_operator_setting_is_respected() {
        let t = os("glibc.malloc.tcache_count=3");
        assert_eq!(plan(false, Some(&t), None), Plan::OperatorValue("3".into()));
        assert_eq!(plan(true, Some(&t), None), Plan::OperatorValue("3".into()));
        let off = os("glibc.malloc.arena_max=2:glibc.malloc.tcache_count=0");
        assert_eq!(plan(true, Some(&off), None), Plan::Off { by_relay: false });
        // The last assignment wins, as in glibc.
        let twice = os("glibc.malloc.tcache_count=0:glibc.malloc.tcache_count=5");
        assert_eq!(
            plan(false, Some(&twice), None),
            Plan::OperatorValue("5".into())
        );
    }

    #[test]
    fn thread_cache_true_keeps_glibc_default() {
        assert_eq!(plan(true, None, None), Plan::Kept);
        let other = os("glibc.malloc.arena_max=2");
        assert_eq!(plan(true, Some(&other), None), Plan::Kept);
    }

    #[test]
    fn look_alike_names_are_not_the_tunable() {
        let t = os("glibc.malloc.tcache_count_x=0:xglibc.malloc.tcache_count=0");
        assert!(matches!(plan(false, Some(&t), None), Plan::Reexec(_)));
    }
}
