//! `--plot FILE.svg`: throughput and latency per second, two panels, written
//! by hand (polylines, axes, a few tick labels).
//!
//! The latency panel has a logarithmic axis, one tick per decade (1µs, 10µs,
//! ..., 1s, 10s), so a run whose latency sits at 200µs and one that climbs to
//! 5s are both readable on the same chart: a linear axis scaled to the worst
//! second flattens everything under a few milliseconds onto the baseline. It
//! shows the p50-p99 band of each second, the p99 and p50 lines, and the
//! maximum as a dotted line. A second without received messages has no
//! latency and leaves a gap.

use std::fmt::Write;

#[derive(Clone, Debug)]
pub struct PlotPoint {
    /// End of the second, seconds since the load started.
    pub t: f64,
    pub sent_per_s: f64,
    pub recv_per_s: f64,
    /// Latency of the messages received in that second, in microseconds
    /// (0 when none were received: no point is drawn).
    pub p50_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

const W: f64 = 800.0;
const PANEL_H: f64 = 220.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 40.0;
const GAP: f64 = 60.0;

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// A "nice" upper bound for an axis (1, 2 or 5 times a power of ten).
fn nice_max(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(v.log10().floor());
    for m in [1.0, 2.0, 5.0, 10.0] {
        if v <= m * p {
            return m * p;
        }
    }
    10.0 * p
}

fn fmt_num(v: f64) -> String {
    if v.fract().abs() < 1e-9 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

fn fmt_us(v: f64) -> String {
    if v >= 1e6 {
        format!("{}s", fmt_num(v / 1e6))
    } else if v >= 1e3 {
        format!("{}ms", fmt_num(v / 1e3))
    } else {
        format!("{}µs", fmt_num(v))
    }
}

fn fmt_si(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.1}G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// A base-10 logarithmic axis from `10^lo` to `10^hi` microseconds, whole
/// decades, at least one decade wide.
#[derive(Clone, Copy, Debug, PartialEq)]
struct LogScale {
    lo: i32,
    hi: i32,
}

impl LogScale {
    /// Smallest and largest representable latencies: 0.1µs and ~27h; values
    /// outside are clamped to the edge (a NaN or non-positive value has no
    /// point at all, see `pos`).
    const MIN_EXP: i32 = -1;
    const MAX_EXP: i32 = 11;

    /// The decades that hold every positive, finite value; 1µs-1ms when there
    /// is none.
    fn fit(values: impl IntoIterator<Item = f64>) -> LogScale {
        let (mut min, mut max) = (f64::INFINITY, 0.0f64);
        for v in values {
            if v > 0.0 && v.is_finite() {
                min = min.min(v);
                max = max.max(v);
            }
        }
        if max == 0.0 {
            return LogScale { lo: 0, hi: 3 };
        }
        // The small epsilon keeps exact powers of ten (1000µs) on their own
        // decade line instead of opening the next decade.
        let lo = (min.log10() + 1e-9).floor() as i32;
        let hi = (max.log10() - 1e-9).ceil() as i32;
        let lo = lo.clamp(Self::MIN_EXP, Self::MAX_EXP - 1);
        let hi = hi.clamp(lo + 1, Self::MAX_EXP);
        LogScale { lo, hi }
    }

    /// Position of `v` on the axis: 0.0 at the bottom, 1.0 at the top; `None`
    /// for a value that cannot be drawn on a log axis (zero: no data).
    fn pos(&self, v: f64) -> Option<f64> {
        if v.is_nan() || v <= 0.0 {
            return None;
        }
        let f = (v.log10() - self.lo as f64) / (self.hi - self.lo) as f64;
        Some(f.clamp(0.0, 1.0))
    }

    /// One tick per decade, bottom to top, in microseconds.
    fn ticks(&self) -> Vec<f64> {
        (self.lo..=self.hi).map(|e| 10f64.powi(e)).collect()
    }
}

type Series<'a> = (&'a str, &'a str, Vec<(f64, f64)>);

struct Panel<'a> {
    top: f64,
    title: &'a str,
    unit: fn(f64) -> String,
    series: Vec<Series<'a>>,
}

fn panel(svg: &mut String, p: &Panel, tmax: f64) {
    let x0 = LEFT;
    let x1 = W - RIGHT;
    let y0 = p.top + PANEL_H;
    let y1 = p.top;
    let vmax = nice_max(
        p.series
            .iter()
            .flat_map(|s| s.2.iter().map(|&(_, v)| v))
            .fold(0.0, f64::max),
    );
    let sx = |t: f64| x0 + (t / tmax) * (x1 - x0);
    let sy = |v: f64| y0 - (v / vmax) * (y0 - y1);
    let _ = writeln!(
        svg,
        r#"<text x="{x0}" y="{:.1}" font-size="14" font-weight="bold">{}</text>"#,
        y1 - 8.0,
        escape(p.title)
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{x0}" y="{y1}" width="{:.1}" height="{PANEL_H}" fill="none" stroke="#888"/>"##,
        x1 - x0
    );
    for i in 0..=4 {
        let v = vmax * i as f64 / 4.0;
        let y = sy(v);
        let _ = writeln!(
            svg,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            x0 - 6.0,
            y + 4.0,
            escape(&(p.unit)(v))
        );
    }
    x_axis(svg, y0, tmax);
    for (i, (name, color, pts)) in p.series.iter().enumerate() {
        if !pts.is_empty() {
            let mut d = String::new();
            for &(t, v) in pts {
                let _ = write!(d, "{:.1},{:.1} ", sx(t), sy(v));
            }
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
                d.trim_end()
            );
        }
        legend(svg, i, y1, color, "", name);
    }
}

/// x axis of a panel whose bottom edge is at `y0`: time ticks in seconds.
fn x_axis(svg: &mut String, y0: f64, tmax: f64) {
    let (x0, x1) = (LEFT, W - RIGHT);
    let sx = |t: f64| x0 + (t / tmax) * (x1 - x0);
    let step = nice_max(tmax / 6.0);
    let mut i = 0;
    loop {
        let t = step * i as f64;
        if t > tmax + 1e-9 {
            break;
        }
        i += 1;
        let x = sx(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{y0}" x2="{x:.1}" y2="{:.1}" stroke="#888"/><text x="{x:.1}" y="{:.1}" font-size="11" text-anchor="middle">{}s</text>"##,
            y0 + 4.0,
            y0 + 16.0,
            fmt_num(t)
        );
    }
}

/// Legend entry `i` in the top right corner of a panel whose top is `y1`;
/// `dash` is an SVG stroke-dasharray ("" for a solid line).
fn legend(svg: &mut String, i: usize, y1: f64, color: &str, dash: &str, name: &str) {
    let lx = W - RIGHT - 150.0;
    let ly = y1 + 16.0 + 16.0 * i as f64;
    let dash = if dash.is_empty() {
        String::new()
    } else {
        format!(r#" stroke-dasharray="{dash}""#)
    };
    let _ = writeln!(
        svg,
        r#"<line x1="{lx}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
        lx + 20.0,
        lx + 26.0,
        ly + 4.0,
        escape(name)
    );
}

/// Runs of consecutive points that have a value (gaps where there is none).
fn runs(pts: &[(f64, Option<f64>)]) -> Vec<Vec<(f64, f64)>> {
    let mut out: Vec<Vec<(f64, f64)>> = Vec::new();
    let mut cur = Vec::new();
    for &(t, v) in pts {
        match v {
            Some(v) => cur.push((t, v)),
            None if !cur.is_empty() => out.push(std::mem::take(&mut cur)),
            None => {}
        }
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

/// A line of the latency panel: name, colour, dash pattern, value.
type LatencyLine = (
    &'static str,
    &'static str,
    &'static str,
    fn(&PlotPoint) -> f64,
);

/// The latency panel: log axis, p50-p99 band, p50, p99 and max lines.
fn latency_panel(svg: &mut String, top: f64, tmax: f64, points: &[PlotPoint]) {
    let (x0, x1) = (LEFT, W - RIGHT);
    let (y0, y1) = (top + PANEL_H, top);
    let scale = LogScale::fit(points.iter().flat_map(|p| [p.p50_us, p.p99_us, p.max_us]));
    let sx = |t: f64| x0 + (t / tmax) * (x1 - x0);
    let sy = |v: f64| scale.pos(v).map(|f| y0 - f * (y0 - y1));
    let _ = writeln!(
        svg,
        r#"<text x="{x0}" y="{:.1}" font-size="14" font-weight="bold">{}</text>"#,
        y1 - 8.0,
        escape("latency of the messages received in each second (log scale; shaded: p50 to p99)")
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{x0}" y="{y1}" width="{:.1}" height="{PANEL_H}" fill="none" stroke="#888"/>"##,
        x1 - x0
    );
    let decades = scale.ticks();
    for (k, &v) in decades.iter().enumerate() {
        let Some(y) = sy(v) else { continue };
        let _ = writeln!(
            svg,
            r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#ccc"/><text x="{:.1}" y="{:.1}" font-size="11" text-anchor="end">{}</text>"##,
            x0 - 6.0,
            y + 4.0,
            escape(&fmt_us(v))
        );
        // Fainter lines at 2x and 5x inside each decade.
        if k + 1 < decades.len() {
            for m in [2.0, 5.0] {
                if let Some(y) = sy(v * m) {
                    let _ = writeln!(
                        svg,
                        r##"<line x1="{x0}" y1="{y:.1}" x2="{x1}" y2="{y:.1}" stroke="#eee"/>"##
                    );
                }
            }
        }
    }
    x_axis(svg, y0, tmax);
    // p50-p99 band: one polygon per run of seconds that have both.
    let band: Vec<(f64, Option<(f64, f64)>)> = points
        .iter()
        .map(|p| (sx(p.t), sy(p.p50_us).zip(sy(p.p99_us))))
        .collect();
    let mut i = 0;
    while i < band.len() {
        if band[i].1.is_none() {
            i += 1;
            continue;
        }
        let start = i;
        while i < band.len() && band[i].1.is_some() {
            i += 1;
        }
        let seg = &band[start..i];
        let mut d = String::new();
        for &(x, v) in seg {
            if let Some((_, hi)) = v {
                let _ = write!(d, "{x:.1},{hi:.1} ");
            }
        }
        for &(x, v) in seg.iter().rev() {
            if let Some((lo, _)) = v {
                let _ = write!(d, "{x:.1},{lo:.1} ");
            }
        }
        let _ = writeln!(
            svg,
            r##"<polygon fill="#d62728" fill-opacity="0.15" stroke="none" points="{}"/>"##,
            d.trim_end()
        );
    }
    let lines: [LatencyLine; 3] = [
        ("max", "#7f7f7f", "4 3", |p| p.max_us),
        ("p99", "#d62728", "", |p| p.p99_us),
        ("p50", "#ff7f0e", "", |p| p.p50_us),
    ];
    for (k, (name, color, dash, get)) in lines.into_iter().enumerate() {
        let pts: Vec<(f64, Option<f64>)> = points.iter().map(|p| (sx(p.t), sy(get(p)))).collect();
        let dash_attr = if dash.is_empty() {
            String::new()
        } else {
            format!(r#" stroke-dasharray="{dash}""#)
        };
        for run in runs(&pts) {
            let mut d = String::new();
            for (x, y) in run {
                let _ = write!(d, "{x:.1},{y:.1} ");
            }
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash_attr} points="{}"/>"#,
                d.trim_end()
            );
        }
        legend(svg, k, y1, color, dash, name);
    }
}

/// Renders the chart; `title` goes on top.
pub fn render(title: &str, points: &[PlotPoint]) -> String {
    let raw = points.iter().map(|p| p.t).fold(1.0, f64::max);
    let step = nice_max(raw / 6.0);
    let tmax = (raw / step).ceil() * step;
    let h = TOP + 2.0 * PANEL_H + GAP + 40.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<?xml version="1.0" encoding="UTF-8"?>
<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{h}" viewBox="0 0 {W} {h}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="18" font-size="15">{}</text>"#,
        escape(title)
    );
    panel(
        &mut svg,
        &Panel {
            top: TOP + 10.0,
            title: "messages per second, each 1-second interval",
            unit: fmt_si,
            series: vec![
                (
                    "sent",
                    "#2ca02c",
                    points.iter().map(|p| (p.t, p.sent_per_s)).collect(),
                ),
                (
                    "received",
                    "#1f77b4",
                    points.iter().map(|p| (p.t, p.recv_per_s)).collect(),
                ),
            ],
        },
        tmax,
    );
    latency_panel(&mut svg, TOP + 10.0 + PANEL_H + GAP, tmax, points);
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Minimal XML well-formedness check: tags balance, attributes quoted.
    fn well_formed(s: &str) -> Result<(), String> {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = s;
        while let Some(i) = rest.find('<') {
            let text = &rest[..i];
            if text.contains('>') {
                return Err(format!("stray > in {text:?}"));
            }
            let end = rest[i..].find('>').ok_or("unclosed tag")? + i;
            let tag = &rest[i + 1..end];
            rest = &rest[end + 1..];
            if tag.starts_with('?') || tag.starts_with('!') {
                continue;
            }
            if tag.matches('"').count() & 1 == 1 {
                return Err(format!("unbalanced quotes in <{tag}>"));
            }
            if let Some(name) = tag.strip_prefix('/') {
                let open = stack.pop().ok_or("close without open")?;
                if open != name.trim() {
                    return Err(format!("</{name}> closes <{open}>"));
                }
            } else if !tag.ends_with('/') {
                let name = tag.split_whitespace().next().unwrap_or("").to_string();
                stack.push(name);
            }
        }
        if stack.is_empty() {
            Ok(())
        } else {
            Err(format!("unclosed {stack:?}"))
        }
    }

    #[test]
    fn svg_is_well_formed_with_data_and_without() {
        let pts: Vec<PlotPoint> = (1..=10)
            .map(|i| PlotPoint {
                t: i as f64,
                sent_per_s: 1e6,
                recv_per_s: 0.9e6 + i as f64,
                p50_us: 50.0 * i as f64,
                p99_us: 100.0 * i as f64,
                max_us: 150.0 * i as f64,
            })
            .collect();
        let svg = render("echo <64 B> & friends", &pts);
        well_formed(&svg).unwrap();
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("&lt;64 B&gt; &amp;"));
        // sent, received; p50, p99, max; one band.
        assert_eq!(svg.matches("<polyline").count(), 5);
        assert_eq!(svg.matches("<polygon").count(), 1);
        well_formed(&render("empty", &[])).unwrap();
        assert!(well_formed("<a><b></a>").is_err());
    }

    #[test]
    fn log_scale_spans_sub_millisecond_and_multi_second() {
        // A run at ~150µs that degrades to 3.2s: 100µs .. 10s, five decades.
        let s = LogScale::fit([150.0, 180.0, 0.0, 2_500_000.0, 3_200_000.0]);
        assert_eq!(s, LogScale { lo: 2, hi: 7 });
        let p = |v: f64| s.pos(v).unwrap();
        // 150µs and 300µs are a sixteenth of the height apart (a linear axis up
        // to 10s would put them 0.0015% apart, on the same pixel).
        assert!(p(300.0) - p(150.0) > 0.05, "{}", p(300.0) - p(150.0));
        assert!(p(150.0) > 0.0 && p(150.0) < 0.1);
        assert!(p(3_200_000.0) > 0.9 && p(3_200_000.0) < 1.0);
        // Each decade takes the same height.
        assert!((p(1e3) - 0.2).abs() < 1e-9 && (p(1e6) - 0.8).abs() < 1e-9);
        let labels: Vec<String> = s.ticks().into_iter().map(fmt_us).collect();
        assert_eq!(labels, ["100µs", "1ms", "10ms", "100ms", "1s", "10s"]);
    }

    #[test]
    fn log_scale_edges() {
        // No data: a default 1µs-1ms axis; zero and NaN have no position.
        let s = LogScale::fit([0.0, f64::NAN, -3.0]);
        assert_eq!(s, LogScale { lo: 0, hi: 3 });
        assert_eq!(s.pos(0.0), None);
        assert_eq!(s.pos(f64::NAN), None);
        assert_eq!(s.pos(-1.0), None);
        // Exact powers of ten stay on their decade line; one value still gets
        // a decade of height.
        assert_eq!(LogScale::fit([1000.0]), LogScale { lo: 3, hi: 4 });
        assert_eq!(LogScale::fit([1000.0, 1e6]), LogScale { lo: 3, hi: 6 });
        assert_eq!(LogScale::fit([999.0, 1001.0]), LogScale { lo: 2, hi: 4 });
        // Sub-microsecond and absurd values are clamped to the axis' range.
        let s = LogScale::fit([1e-6, f64::INFINITY, 1e15]);
        assert_eq!(s, LogScale { lo: -1, hi: 11 });
        assert_eq!(s.pos(1e-6), Some(0.0));
        assert_eq!(s.pos(1e15), Some(1.0));
        assert_eq!(fmt_us(0.1), "0.1µs");
    }

    #[test]
    fn seconds_without_latency_leave_gaps() {
        let pts: Vec<PlotPoint> = (1..=6)
            .map(|i| {
                // Seconds 3 and 4 received nothing.
                let lat = if i == 3 || i == 4 { 0.0 } else { 200.0 };
                PlotPoint {
                    t: i as f64,
                    sent_per_s: 1000.0,
                    recv_per_s: if lat == 0.0 { 0.0 } else { 1000.0 },
                    p50_us: lat,
                    p99_us: lat * 2.0,
                    max_us: lat * 4.0,
                }
            })
            .collect();
        let svg = render("gaps", &pts);
        well_formed(&svg).unwrap();
        // 2 throughput lines, then 3 latency lines in 2 runs each; 2 bands.
        assert_eq!(svg.matches("<polyline").count(), 2 + 3 * 2);
        assert_eq!(svg.matches("<polygon").count(), 2);
        assert!(svg.contains("log scale"));
        let runs_of = runs(&[(1.0, Some(1.0)), (2.0, None), (3.0, None), (4.0, Some(2.0))]);
        assert_eq!(runs_of, vec![vec![(1.0, 1.0)], vec![(4.0, 2.0)]]);
    }

    #[test]
    fn nice_axis_bounds() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(1.5e6), 2e6);
        assert_eq!(nice_max(2e6), 2e6);
        assert_eq!(nice_max(3e6), 5e6);
    }
}
