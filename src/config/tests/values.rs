//! Value syntax: durations and sizes.

use super::super::*;
use std::time::Duration;

#[test]
fn durations_parse() {
    let ok = [
        ("30s", Duration::from_secs(30)),
        ("500ms", Duration::from_millis(500)),
        ("2m", Duration::from_secs(120)),
        ("1h", Duration::from_secs(3600)),
        ("1d", Duration::from_secs(86_400)),
        ("0", Duration::ZERO),
        ("000", Duration::ZERO),
        ("0s", Duration::ZERO),
        ("1h30m", Duration::from_secs(5400)),
        ("1m 30s", Duration::from_secs(90)),
        (" 10 s ", Duration::from_secs(10)),
        ("250us", Duration::from_micros(250)),
        ("250µs", Duration::from_micros(250)),
        ("7ns", Duration::from_nanos(7)),
        ("10MS", Duration::from_millis(10)),
    ];
    for (s, want) in ok {
        assert_eq!(parse_duration(s), Ok(want), "{s}");
    }
}

#[test]
fn durations_reject_garbage() {
    for (s, needle) in [
        ("", "empty"),
        ("   ", "empty"),
        ("30", "a unit is required except for 0"),
        ("30x", "unknown unit \"x\""),
        ("-5s", "negative"),
        ("s", "expected e.g. 30s"),
        ("1.5s", "decimals are not accepted"),
        ("abc", "expected e.g. 30s"),
        ("10s5", "missing unit"),
        ("99999999999999999999999999999999999999999h", "too large"),
        ("18446744073709551616s", "too large"),
        ("300000000000000000d", "too large"),
    ] {
        let e = parse_duration(s).expect_err(s);
        assert!(e.contains(needle), "{s:?}: {e}");
        assert!(e.starts_with("invalid duration"), "{e}");
    }
    assert_eq!(
        parse_duration("30x").unwrap_err(),
        "invalid duration \"30x\" (unknown unit \"x\"; expected e.g. 30s, 500ms)"
    );
}

#[test]
fn durations_format_and_round_trip() {
    let cases = [
        (Duration::ZERO, "0"),
        (Duration::from_secs(30), "30s"),
        (Duration::from_secs(90), "90s"),
        (Duration::from_secs(120), "2m"),
        (Duration::from_secs(3600), "1h"),
        (Duration::from_secs(86_400 * 3), "3d"),
        (Duration::from_millis(1500), "1500ms"),
        (Duration::from_micros(1), "1us"),
        (Duration::new(1, 1), "1000000001ns"),
    ];
    for (d, s) in cases {
        assert_eq!(format_duration(d), s);
        assert_eq!(parse_duration(s), Ok(d));
    }
    // Beyond what humantime represents: an error, never a wrap-around.
    let e = parse_duration(&format_duration(Duration::MAX)).unwrap_err();
    assert!(e.contains("too large"), "{e}");
}

#[test]
fn sizes_parse() {
    let ok = [
        ("1MiB", 1 << 20),
        ("64KiB", 64 << 10),
        ("512", 512),
        ("512B", 512),
        ("1GiB", 1 << 30),
        ("1MB", 1_000_000),
        ("1KB", 1_000),
        ("0", 0),
        ("1 MiB", 1 << 20),
        ("2mib", 2 << 20),
        (" 8KiB ", 8192),
    ];
    for (s, want) in ok {
        assert_eq!(parse_size(s), Ok(want), "{s}");
    }
}

#[test]
fn sizes_reject_garbage() {
    for (s, needle) in [
        ("", "empty"),
        ("-1", "negative"),
        ("-1MiB", "negative"),
        ("1M", "ambiguous"),
        ("1k", "ambiguous"),
        ("1.5MiB", "unknown unit"),
        ("abc", "expected e.g. 512"),
        ("MiB", "expected e.g. 512"),
        ("12 parsecs", "unknown unit"),
        ("999999999999999999999999999999999999999999", "too large"),
        ("17179869184GiB", "too large"),
    ] {
        let e = parse_size(s).expect_err(s);
        assert!(e.contains(needle), "{s:?}: {e}");
        assert!(e.starts_with("invalid size"), "{e}");
    }
}

#[test]
fn sizes_format_and_round_trip() {
    let cases = [
        (0, "0"),
        (1500, "1500"),
        (1024, "1KiB"),
        (64 * 1024, "64KiB"),
        (1 << 20, "1MiB"),
        (1 << 30, "1GiB"),
        (1_000_000, "1MB"),
        (2000, "2KB"),
        (1_048_575, "1048575"),
    ];
    for (n, s) in cases {
        assert_eq!(format_size(n), s);
        assert_eq!(parse_size(s), Ok(n));
    }
    for n in [usize::MAX, usize::MAX - 1, 1 << 40, 3 * (1 << 40) + 1] {
        assert_eq!(parse_size(&format_size(n)), Ok(n), "{n}");
    }
}
