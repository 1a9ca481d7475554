//! Value syntax shared by the file, the environment and the flags, and the
//! value *kinds* the key table is written in: each kind says how one Rust
//! type is read from TOML and from text, and how it is printed back.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use ipnet::IpNet;
use toml::Value;

use super::{RateLimitPolicy, SlowConsumerPolicy, LOG_LEVELS};

/// How one configuration type is read and written. Implemented by marker
/// types (`Size`, `Dur`, `Count<u32>`...) because one Rust type can have
/// several syntaxes (`usize` is a count or a byte size).
pub(crate) trait Kind {
    /// The field type.
    type Value;
    /// Kind name in the docs table.
    const TYPE: &'static str;
    /// Placeholder in `--help` (`--max-frame-bytes <SIZE>`).
    const VALUE_NAME: &'static str;
    /// Accepted values when they are a short fixed list (docs "range" column).
    const CHOICES: &'static str = "";
    /// A flag that may be given alone to mean true.
    const SWITCH: bool = false;
    /// Parses a flag or environment value.
    fn parse(s: &str) -> Result<Self::Value, String>;
    /// Reads a TOML value.
    fn from_toml(v: &Value) -> Result<Self::Value, String>;
    /// The canonical TOML form, which `from_toml` reads back identically.
    fn to_toml(v: &Self::Value) -> Value;
    /// The value as typed on the command line (help, docs, error messages).
    fn show(v: &Self::Value) -> String {
        flag_display(&Self::to_toml(v))
    }
}

/// `IP:port`.
pub(crate) struct Addr;
/// `IP:port`, or empty for "not set".
pub(crate) struct OptAddr;
/// A byte size (`64KiB`, or a plain integer in TOML).
pub(crate) struct Size;
/// A duration (`30s`, `500ms`, `0`).
pub(crate) struct Dur;
/// A non-negative integer of type `T`.
pub(crate) struct Count<T>(PhantomData<T>);
/// A boolean; the flag alone means true.
pub(crate) struct Flag;
/// A list of strings (TOML array; comma-separated on flags and in env).
pub(crate) struct List;
/// Free text, kept verbatim.
pub(crate) struct Text;
/// One of [`LOG_LEVELS`].
pub(crate) struct Level;
/// A `close | drop` policy enum.
pub(crate) struct Policy<P>(PhantomData<P>);
/// A list of IP networks (`10.0.0.0/8`, `::1/128`; a bare address is
/// its own /32 or /128).
pub(crate) struct Cidrs;

impl Kind for Addr {
    type Value = SocketAddr;
    const TYPE: &'static str = "address";
    const VALUE_NAME: &'static str = "ADDR";
    fn parse(s: &str) -> Result<SocketAddr, String> {
        s.trim().parse().map_err(|_| {
            format!("invalid socket address {s:?} (expected e.g. 127.0.0.1:9001 or [::]:9001)")
        })
    }
    fn from_toml(v: &Value) -> Result<SocketAddr, String> {
        Self::parse(&toml_str(v)?)
    }
    fn to_toml(v: &SocketAddr) -> Value {
        Value::String(v.to_string())
    }
}

impl Kind for OptAddr {
    type Value = Option<SocketAddr>;
    const TYPE: &'static str = "address";
    const VALUE_NAME: &'static str = "ADDR";
    fn parse(s: &str) -> Result<Option<SocketAddr>, String> {
        if s.trim().is_empty() {
            return Ok(None);
        }
        Addr::parse(s).map(Some)
    }
    fn from_toml(v: &Value) -> Result<Option<SocketAddr>, String> {
        Self::parse(&toml_str(v)?)
    }
    fn to_toml(v: &Option<SocketAddr>) -> Value {
        Value::String(v.map(|a| a.to_string()).unwrap_or_default())
    }
}

impl Kind for Size {
    type Value = usize;
    const TYPE: &'static str = "size";
    const VALUE_NAME: &'static str = "SIZE";
    fn parse(s: &str) -> Result<usize, String> {
        parse_size(s)
    }
    fn from_toml(v: &Value) -> Result<usize, String> {
        match v {
            Value::Integer(i) => usize::try_from(*i)
                .map_err(|_| format!("invalid size {i} (must be a non-negative number of bytes)")),
            Value::String(s) => parse_size(s),
            other => Err(format!(
                "expected a size such as 1MiB or a number of bytes, got {}",
                describe(other)
            )),
        }
    }
    /// A "1MiB"-style string, or a plain integer when no unit fits.
    fn to_toml(v: &usize) -> Value {
        let s = format_size(*v);
        match s.parse::<i64>() {
            Ok(i) => Value::Integer(i),
            Err(_) => Value::String(s),
        }
    }
}

impl Kind for Dur {
    type Value = Duration;
    const TYPE: &'static str = "duration";
    const VALUE_NAME: &'static str = "DURATION";
    fn parse(s: &str) -> Result<Duration, String> {
        parse_duration(s)
    }
    fn from_toml(v: &Value) -> Result<Duration, String> {
        match v {
            Value::String(s) => parse_duration(s),
            Value::Integer(0) => Ok(Duration::ZERO),
            Value::Integer(i) => Err(format!(
                "invalid duration {i} (a unit is required except for 0; expected e.g. \"{i}s\", \"500ms\")"
            )),
            other => Err(format!(
                "expected a duration string such as \"30s\" or \"500ms\", got {}",
                describe(other)
            )),
        }
    }
    fn to_toml(v: &Duration) -> Value {
        Value::String(format_duration(*v))
    }
}

impl<T> Kind for Count<T>
where
    T: TryFrom<u64> + TryInto<u64> + Copy,
{
    type Value = T;
    const TYPE: &'static str = "integer";
    const VALUE_NAME: &'static str = "N";
    fn parse(s: &str) -> Result<T, String> {
        parse_int(s)
    }
    /// Digit strings are accepted too, so values above i64::MAX (TOML's
    /// integer range) still round-trip through `to_toml`.
    fn from_toml(v: &Value) -> Result<T, String> {
        match v {
            Value::Integer(i) => u64::try_from(*i)
                .ok()
                .and_then(|u| T::try_from(u).ok())
                .ok_or_else(|| format!("{i} is out of range (expected a non-negative integer)")),
            Value::String(s) => parse_int(s),
            other => Err(format!(
                "expected a non-negative integer, got {}",
                describe(other)
            )),
        }
    }
    fn to_toml(v: &T) -> Value {
        let n: u64 = (*v).try_into().unwrap_or(u64::MAX);
        match i64::try_from(n) {
            Ok(i) => Value::Integer(i),
            Err(_) => Value::String(n.to_string()),
        }
    }
}

impl Kind for Flag {
    type Value = bool;
    const TYPE: &'static str = "boolean";
    const VALUE_NAME: &'static str = "BOOL";
    const SWITCH: bool = true;
    fn parse(s: &str) -> Result<bool, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "true" | "yes" | "on" | "1" => Ok(true),
            "false" | "no" | "off" | "0" => Ok(false),
            _ => Err(format!("invalid boolean {s:?} (expected true or false)")),
        }
    }
    fn from_toml(v: &Value) -> Result<bool, String> {
        match v {
            Value::Boolean(b) => Ok(*b),
            other => Err(format!("expected true or false, got {}", describe(other))),
        }
    }
    fn to_toml(v: &bool) -> Value {
        Value::Boolean(*v)
    }
}

impl Kind for List {
    type Value = Vec<String>;
    const TYPE: &'static str = "list";
    const VALUE_NAME: &'static str = "LIST";
    /// Comma-separated; an empty value is the empty list.
    fn parse(s: &str) -> Result<Vec<String>, String> {
        Ok(s.split(',')
            .map(str::trim)
            .filter(|x| !x.is_empty())
            .map(str::to_string)
            .collect())
    }
    fn from_toml(v: &Value) -> Result<Vec<String>, String> {
        match v {
            Value::Array(items) => items
                .iter()
                .map(|item| match item {
                    Value::String(s) => Ok(s.clone()),
                    other => Err(format!(
                        "expected an array of strings, found {}",
                        describe(other)
                    )),
                })
                .collect(),
            other => Err(format!(
                "expected an array of strings such as [\"a\", \"b\"], got {}",
                describe(other)
            )),
        }
    }
    fn to_toml(v: &Vec<String>) -> Value {
        Value::Array(v.iter().map(|x| Value::String(x.clone())).collect())
    }
}

impl Kind for Text {
    type Value = String;
    const TYPE: &'static str = "string";
    const VALUE_NAME: &'static str = "TEXT";
    fn parse(s: &str) -> Result<String, String> {
        Ok(s.to_string())
    }
    fn from_toml(v: &Value) -> Result<String, String> {
        toml_str(v)
    }
    fn to_toml(v: &String) -> Value {
        Value::String(v.clone())
    }
}

impl Kind for Level {
    type Value = String;
    const TYPE: &'static str = "string";
    const VALUE_NAME: &'static str = "LEVEL";
    fn parse(s: &str) -> Result<String, String> {
        let level = s.trim().to_ascii_lowercase();
        if LOG_LEVELS.contains(&level.as_str()) {
            Ok(level)
        } else {
            Err(format!(
                "invalid level {s:?} (expected one of {})",
                LOG_LEVELS.join(", ")
            ))
        }
    }
    fn from_toml(v: &Value) -> Result<String, String> {
        Self::parse(&toml_str(v)?)
    }
    fn to_toml(v: &String) -> Value {
        Value::String(v.clone())
    }
}

impl<P> Kind for Policy<P>
where
    P: FromStr<Err = String> + fmt::Display,
{
    type Value = P;
    const TYPE: &'static str = "policy";
    const VALUE_NAME: &'static str = "POLICY";
    const CHOICES: &'static str = "`close`, `drop`";
    fn parse(s: &str) -> Result<P, String> {
        s.parse()
    }
    fn from_toml(v: &Value) -> Result<P, String> {
        toml_str(v)?.parse()
    }
    fn to_toml(v: &P) -> Value {
        Value::String(v.to_string())
    }
}

impl Kind for Cidrs {
    type Value = Vec<IpNet>;
    const TYPE: &'static str = "CIDR list";
    const VALUE_NAME: &'static str = "CIDRS";
    fn parse(s: &str) -> Result<Vec<IpNet>, String> {
        List::parse(s)?.iter().map(|x| parse_cidr(x)).collect()
    }
    fn from_toml(v: &Value) -> Result<Vec<IpNet>, String> {
        List::from_toml(v)?.iter().map(|x| parse_cidr(x)).collect()
    }
    fn to_toml(v: &Vec<IpNet>) -> Value {
        Value::Array(v.iter().map(|n| Value::String(n.to_string())).collect())
    }
}

/// `10.0.0.0/8`, `2001:db8::/32`, or a single address. Host bits set
/// (`10.0.0.1/8`) are refused: such a typo would trust a whole network
/// where one host was meant, or the other way round.
fn parse_cidr(s: &str) -> Result<IpNet, String> {
    let t = s.trim();
    if let Ok(ip) = t.parse::<std::net::IpAddr>() {
        return Ok(IpNet::from(ip));
    }
    let net: IpNet = t.parse().map_err(|_| {
        format!(
            "invalid network {s:?} (expected a CIDR such as 10.0.0.0/8 or ::1/128, or an address)"
        )
    })?;
    if net.trunc() != net {
        return Err(format!(
            "invalid network {s:?}: host bits are set (did you mean {}?)",
            net.trunc()
        ));
    }
    Ok(net)
}

/// A value check declared with each key: what `validate` enforces, and what
/// the docs table prints in its "range" column.
pub(crate) enum Check<T: 'static> {
    /// Every value the syntax accepts.
    Any,
    /// `min..=max`.
    Range(T, T),
    /// Zero (meaning "off"), or `min..=max`.
    OffOr(T, T),
    /// A rule with its description for the docs.
    Rule(fn(&T) -> Result<(), String>, &'static str),
}

impl<T: Bound> Check<T> {
    pub(crate) fn check(&self, v: &T, show: fn(&T) -> String) -> Result<(), String> {
        match self {
            Check::Any => Ok(()),
            Check::Range(lo, hi) if v.within(lo, hi) => Ok(()),
            Check::OffOr(lo, hi) if v.is_zero() || v.within(lo, hi) => Ok(()),
            Check::Range(..) | Check::OffOr(..) => Err(format!(
                "{} is out of range (allowed: {})",
                show(v),
                self.describe(show, "")
            )),
            Check::Rule(rule, _) => rule(v),
        }
    }

    /// `1 ..= 1GiB`, `0 (off) or 100ms ..= 1d`, or the rule's description.
    pub(crate) fn describe(&self, show: fn(&T) -> String, choices: &str) -> String {
        match self {
            Check::Any if choices.is_empty() => "any".to_string(),
            Check::Any => choices.to_string(),
            Check::Range(lo, hi) => format!("{} ..= {}", show(lo), show(hi)),
            Check::OffOr(lo, hi) => format!("0 (off) or {} ..= {}", show(lo), show(hi)),
            Check::Rule(_, text) => text.to_string(),
        }
    }
}

/// Ordering for [`Check::Range`] and [`Check::OffOr`]; types without one
/// only ever use `Any` or `Rule`.
pub(crate) trait Bound {
    fn is_zero(&self) -> bool {
        false
    }
    fn within(&self, _lo: &Self, _hi: &Self) -> bool {
        true
    }
}

macro_rules! ordered_bound {
    ($($t:ty = $zero:expr),*) => {$(
        impl Bound for $t {
            fn is_zero(&self) -> bool {
                *self == $zero
            }
            fn within(&self, lo: &Self, hi: &Self) -> bool {
                lo <= self && self <= hi
            }
        }
    )*};
}
ordered_bound!(usize = 0, u32 = 0, u8 = 0, Duration = Duration::ZERO);
impl Bound for bool {}
impl Bound for String {}
impl Bound for Vec<String> {}
impl Bound for Vec<IpNet> {}
impl Bound for SocketAddr {}
impl Bound for Option<SocketAddr> {}
impl Bound for SlowConsumerPolicy {}
impl Bound for RateLimitPolicy {}

// ---- TOML helpers -------------------------------------------------------------

fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("string {s:?}"),
        Value::Integer(i) => format!("integer {i}"),
        Value::Float(f) => format!("float {f}"),
        Value::Boolean(b) => format!("boolean {b}"),
        Value::Datetime(d) => format!("datetime {d}"),
        Value::Array(_) => "an array".to_string(),
        Value::Table(_) => "a table".to_string(),
    }
}

fn toml_str(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) => Ok(s.clone()),
        other => Err(format!("expected a string, got {}", describe(other))),
    }
}

/// A TOML value as it would be typed on the command line.
pub(crate) fn flag_display(v: &Value) -> String {
    let s = match v {
        Value::String(s) => s.clone(),
        // Arrays of tables (namespaces) keep TOML inline syntax.
        Value::Array(items) if items.iter().any(Value::is_table) => v.to_string(),
        Value::Array(items) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_string))
            .collect::<Vec<_>>()
            .join(","),
        other => other.to_string(),
    };
    if s.is_empty() {
        "\"\"".to_string()
    } else {
        s
    }
}

// ---- durations ------------------------------------------------------------------

const DURATION_HINT: &str = "expected e.g. 30s, 500ms";
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Parses `30s`, `500ms`, `2m`, `1h`, `1d`, `250us`, `10ns`, compound `1h30m`,
/// or `0`, with `humantime` (its long unit names such as `5min` work too).
/// Stricter than `humantime` in three ways: a unit is mandatory for
/// non-zero values (a bare `30` could mean seconds or milliseconds, so it is
/// rejected rather than guessed), decimals are refused (`1500ms`, not
/// `1.5s`), and units are case-insensitive, so `M` is minutes, never months.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: &str| format!("invalid duration {s:?} ({why})");
    let t = s.trim();
    if t.is_empty() {
        return Err(bad(&format!("empty; {DURATION_HINT}")));
    }
    if t.starts_with('-') {
        return Err(bad("must not be negative"));
    }
    if t.bytes().all(|b| b.is_ascii_digit()) {
        return if t.bytes().all(|b| b == b'0') {
            Ok(Duration::ZERO)
        } else {
            Err(bad(&format!(
                "a unit is required except for 0; {DURATION_HINT}"
            )))
        };
    }
    if t.contains('.') {
        return Err(bad("decimals are not accepted; write 1500ms, not 1.5s"));
    }
    let lower = t.to_lowercase();
    humantime::parse_duration(&lower).map_err(|e| {
        use humantime::DurationError as E;
        match e {
            E::UnknownUnit { unit, .. } if unit.is_empty() => {
                bad(&format!("missing unit; {DURATION_HINT}"))
            }
            E::UnknownUnit { start, end, .. } => {
                // Quote the unit as the user typed it, not lower-cased.
                let unit = t.get(start..end).unwrap_or(&lower[start..end]);
                bad(&format!("unknown unit {unit:?}; {DURATION_HINT}"))
            }
            E::NumberOverflow => bad("too large"),
            E::Empty => bad(&format!("empty; {DURATION_HINT}")),
            _ => bad(DURATION_HINT),
        }
    })
}

/// Formats with the largest unit that represents `d` exactly (`90s`, `2m`,
/// `1500us`), so [`parse_duration`] returns the identical value.
/// (`humantime::format_duration` writes `1m 30s`, which also parses back,
/// but this form is the shortest and the one the docs use.)
pub fn format_duration(d: Duration) -> String {
    let total = d.as_nanos();
    if total == 0 {
        return "0".to_string();
    }
    const UNITS: [(&str, u128); 7] = [
        ("d", 86_400 * NANOS_PER_SEC),
        ("h", 3600 * NANOS_PER_SEC),
        ("m", 60 * NANOS_PER_SEC),
        ("s", NANOS_PER_SEC),
        ("ms", 1_000_000),
        ("us", 1_000),
        ("ns", 1),
    ];
    UNITS
        .iter()
        .find(|(_, per)| total.is_multiple_of(*per))
        .map(|(unit, per)| format!("{}{unit}", total / per))
        .unwrap_or_else(|| format!("{total}ns"))
}

// ---- sizes ------------------------------------------------------------------------

const SIZE_HINT: &str = "expected e.g. 512, 64KiB, 1MiB, 1MB";
const BINARY_UNITS: [(&str, u128); 4] = [
    ("TiB", 1 << 40),
    ("GiB", 1 << 30),
    ("MiB", 1 << 20),
    ("KiB", 1 << 10),
];
const DECIMAL_UNITS: [(&str, u128); 4] = [
    ("TB", 1_000_000_000_000),
    ("GB", 1_000_000_000),
    ("MB", 1_000_000),
    ("KB", 1_000),
];

/// Parses a byte size: `512`, `512B`, `64KiB`, `1MiB`, `1GiB`, `1TiB` (powers of
/// 1024) or `1KB`, `1MB`, `1GB`, `1TB` (powers of 1000). Units are
/// case-insensitive; bare `K`/`M`/`G` are rejected as ambiguous, and so are
/// decimals. (Hand-written: the `parse-size` and `bytesize` crates both read
/// a bare `M` and `1.5MiB`, which this syntax refuses.)
pub fn parse_size(s: &str) -> Result<usize, String> {
    let bad = |why: &str| format!("invalid size {s:?} ({why})");
    let t = s.trim();
    if t.is_empty() {
        return Err(bad(&format!("empty; {SIZE_HINT}")));
    }
    if t.starts_with('-') {
        return Err(bad("must not be negative"));
    }
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err(bad(SIZE_HINT));
    }
    let number: u128 = t[..digits_end].parse().map_err(|_| bad("too large"))?;
    let unit = t[digits_end..].trim_start();
    let lower = unit.to_ascii_lowercase();
    let multiplier = if lower.is_empty() || lower == "b" {
        Some(1)
    } else {
        BINARY_UNITS
            .iter()
            .chain(DECIMAL_UNITS.iter())
            .find(|(name, _)| name.eq_ignore_ascii_case(&lower))
            .map(|(_, m)| *m)
    };
    let Some(multiplier) = multiplier else {
        let why = match lower.as_str() {
            "k" | "m" | "g" | "t" => {
                let u = lower.to_ascii_uppercase();
                format!(
                    "ambiguous unit {unit:?}: use {u}iB (powers of 1024) or {u}B (powers of 1000)"
                )
            }
            _ => format!("unknown unit {unit:?}; {SIZE_HINT}"),
        };
        return Err(bad(&why));
    };
    number
        .checked_mul(multiplier)
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| bad("too large"))
}

/// Formats exactly: the largest binary unit that divides `n` (`1MiB`,
/// `64KiB`), else the largest decimal one (`1MB`), else plain bytes (`1500`).
pub fn format_size(n: usize) -> String {
    let n = n as u128;
    if n == 0 {
        return "0".to_string();
    }
    BINARY_UNITS
        .iter()
        .chain(DECIMAL_UNITS.iter())
        .find(|(_, per)| n.is_multiple_of(*per))
        .map_or_else(|| n.to_string(), |(unit, per)| format!("{}{unit}", n / per))
}

fn parse_int<T: TryFrom<u64>>(s: &str) -> Result<T, String> {
    let t = s.trim();
    if t.is_empty() || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!(
            "invalid number {s:?} (expected a non-negative integer)"
        ));
    }
    t.parse::<u64>()
        .ok()
        .and_then(|n| T::try_from(n).ok())
        .ok_or_else(|| format!("invalid number {s:?} (too large)"))
}
