//! `--plot FILE.svg`: throughput and p99 latency per second, two panels,
//! written by hand (polylines, axes, a few tick labels).

use std::fmt::Write;

#[derive(Clone, Debug)]
pub struct PlotPoint {
    /// End of the second, seconds since the load started.
    pub t: f64,
    pub sent_per_s: f64,
    pub recv_per_s: f64,
    /// p99 latency of messages received in that second, in microseconds.
    pub p99_us: f64,
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
        let lx = x1 - 150.0;
        let ly = y1 + 16.0 + 16.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{ly:.1}" x2="{:.1}" y2="{ly:.1}" stroke="{color}" stroke-width="2"/><text x="{:.1}" y="{:.1}" font-size="11">{}</text>"#,
            lx + 20.0,
            lx + 26.0,
            ly + 4.0,
            escape(name)
        );
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
            title: "throughput (messages/s)",
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
    panel(
        &mut svg,
        &Panel {
            top: TOP + 10.0 + PANEL_H + GAP,
            title: "p99 latency of the messages received in each second",
            unit: fmt_us,
            series: vec![(
                "p99",
                "#d62728",
                points.iter().map(|p| (p.t, p.p99_us)).collect(),
            )],
        },
        tmax,
    );
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
                p99_us: 100.0 * i as f64,
            })
            .collect();
        let svg = render("echo <64 B> & friends", &pts);
        well_formed(&svg).unwrap();
        assert!(svg.contains("<polyline"));
        assert!(svg.contains("&lt;64 B&gt; &amp;"));
        assert_eq!(svg.matches("<polyline").count(), 3);
        well_formed(&render("empty", &[])).unwrap();
        assert!(well_formed("<a><b></a>").is_err());
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
