//! Loss curves as hand-written SVG: axes, "nice" ticks, grid, one polyline
//! per series and a legend. No plotting dependency.

use std::fmt::Write as _;
use std::path::Path;

use super::metrics::StepMetrics;
use crate::Result;

/// One curve of a chart.
#[derive(Clone, Copy, Debug)]
pub struct Series<'a> {
    /// Legend label.
    pub name: &'a str,
    /// Stroke color (any SVG color: `#1f77b4`, `orange`).
    pub color: &'a str,
    /// `(x, y)` points in drawing order; non-finite points are skipped.
    pub points: &'a [(f64, f64)],
}

const WIDTH: f64 = 800.0;
const HEIGHT: f64 = 480.0;
const LEFT: f64 = 72.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 56.0;
/// Longer series are averaged into this many buckets.
const MAX_POINTS: usize = 2000;

/// The train and validation loss curves of a run's history.
pub fn loss_curve_svg(history: &[StepMetrics]) -> String {
    let train: Vec<(f64, f64)> = history
        .iter()
        .map(|m| (m.step as f64, m.train_loss))
        .collect();
    let val: Vec<(f64, f64)> = history
        .iter()
        .filter_map(|m| m.val_loss.map(|v| (m.step as f64, v)))
        .collect();
    line_chart_svg(
        "Loss",
        "step",
        "loss",
        &[
            Series {
                name: "train",
                color: "#1f77b4",
                points: &train,
            },
            Series {
                name: "val",
                color: "#ff7f0e",
                points: &val,
            },
        ],
    )
}

/// Writes [`loss_curve_svg`] to `path` atomically.
pub fn write_loss_svg(path: impl AsRef<Path>, history: &[StepMetrics]) -> Result<()> {
    crate::io::write_atomic(path.as_ref(), loss_curve_svg(history).as_bytes())
}

/// A line chart of `series` with a title, axis labels, ticks, a grid and a
/// legend, as a standalone SVG document.
pub fn line_chart_svg(title: &str, x_label: &str, y_label: &str, series: &[Series<'_>]) -> String {
    let finite: Vec<Vec<(f64, f64)>> = series
        .iter()
        .map(|s| {
            downsample(
                s.points
                    .iter()
                    .copied()
                    .filter(|(x, y)| x.is_finite() && y.is_finite())
                    .collect(),
            )
        })
        .collect();
    let all = finite.iter().flatten();
    let (mut x0, mut x1, mut y0, mut y1) = (
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::INFINITY,
        f64::NEG_INFINITY,
    );
    for &(x, y) in all {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if !x0.is_finite() {
        (x0, x1, y0, y1) = (0.0, 1.0, 0.0, 1.0);
    }
    let xt = Ticks::new(x0, x1);
    let yt = Ticks::new(y0, y1);
    let (pw, ph) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let px = |x: f64| LEFT + (x - xt.lo) / (xt.hi - xt.lo) * pw;
    let py = |y: f64| TOP + (1.0 - (y - yt.lo) / (yt.hi - yt.lo)) * ph;

    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="24" text-anchor="middle" font-size="16">{}</text>"#,
        LEFT + pw / 2.0,
        escape(title)
    );
    // grid and tick labels
    let _ = writeln!(s, r##"<g stroke="#e0e0e0" stroke-width="1">"##);
    for &v in &xt.values {
        let _ = writeln!(
            s,
            r#"<line x1="{0:.1}" y1="{TOP:.1}" x2="{0:.1}" y2="{1:.1}"/>"#,
            px(v),
            TOP + ph
        );
    }
    for &v in &yt.values {
        let _ = writeln!(
            s,
            r#"<line x1="{LEFT:.1}" y1="{0:.1}" x2="{1:.1}" y2="{0:.1}"/>"#,
            py(v),
            LEFT + pw
        );
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(s, r#"<g fill="black">"#);
    for &v in &xt.values {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            px(v),
            TOP + ph + 18.0,
            xt.label(v)
        );
    }
    for &v in &yt.values {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"#,
            LEFT - 8.0,
            py(v) + 4.0,
            yt.label(v)
        );
    }
    let _ = writeln!(
        s,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        LEFT + pw / 2.0,
        HEIGHT - 14.0,
        escape(x_label)
    );
    let _ = writeln!(
        s,
        r#"<text x="18" y="{0:.1}" text-anchor="middle" transform="rotate(-90 18 {0:.1})">{1}</text>"#,
        TOP + ph / 2.0,
        escape(y_label)
    );
    let _ = writeln!(s, "</g>");
    // axes and tick marks
    let _ = writeln!(
        s,
        r#"<path d="M{LEFT:.1} {TOP:.1} V{0:.1} H{1:.1}" fill="none" stroke="black" stroke-width="1"/>"#,
        TOP + ph,
        LEFT + pw
    );
    let _ = write!(s, r#"<path d=""#);
    for &v in &xt.values {
        let _ = write!(s, "M{:.1} {:.1} v5 ", px(v), TOP + ph);
    }
    for &v in &yt.values {
        let _ = write!(s, "M{LEFT:.1} {:.1} h-5 ", py(v));
    }
    let _ = writeln!(s, r#"" stroke="black" stroke-width="1"/>"#);
    // curves
    for (ser, pts) in series.iter().zip(&finite) {
        let color = escape(ser.color);
        if pts.len() >= 2 {
            let _ = write!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="1.5" points=""#
            );
            for (i, &(x, y)) in pts.iter().enumerate() {
                let sep = if i == 0 { "" } else { " " };
                let _ = write!(s, "{sep}{:.1},{:.1}", px(x), py(y));
            }
            let _ = writeln!(s, r#""/>"#);
        }
        if pts.len() <= 100 {
            for &(x, y) in pts {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="2.5" fill="{color}"/>"#,
                    px(x),
                    py(y)
                );
            }
        }
    }
    // legend
    let lx = LEFT + pw - 110.0;
    let _ = writeln!(
        s,
        r##"<rect x="{lx:.1}" y="{:.1}" width="100" height="{:.1}" fill="white" stroke="#999999"/>"##,
        TOP + 8.0,
        8.0 + 18.0 * series.len() as f64
    );
    for (i, ser) in series.iter().enumerate() {
        let y = TOP + 22.0 + 18.0 * i as f64;
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{}" stroke-width="2"/>"#,
            lx + 8.0,
            lx + 30.0,
            escape(ser.color)
        );
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 36.0,
            y + 4.0,
            escape(ser.name)
        );
    }
    s.push_str("</svg>\n");
    s
}

/// Averages a long series into at most [`MAX_POINTS`] buckets.
fn downsample(points: Vec<(f64, f64)>) -> Vec<(f64, f64)> {
    if points.len() <= MAX_POINTS {
        return points;
    }
    let per = points.len().div_ceil(MAX_POINTS);
    points
        .chunks(per)
        .map(|c| {
            let n = c.len() as f64;
            let (sx, sy) = c.iter().fold((0.0, 0.0), |(a, b), &(x, y)| (a + x, b + y));
            (sx / n, sy / n)
        })
        .collect()
}

/// Axis ticks at 1, 2 or 5 times a power of ten, covering `[lo, hi]`.
struct Ticks {
    lo: f64,
    hi: f64,
    step: f64,
    values: Vec<f64>,
}

impl Ticks {
    fn new(lo: f64, hi: f64) -> Self {
        let (mut lo, mut hi) = (lo, hi);
        if hi - lo <= f64::EPSILON * lo.abs().max(1.0) {
            let pad = (lo.abs() * 0.1).max(0.5);
            lo -= pad;
            hi += pad;
        }
        let raw = (hi - lo) / 6.0;
        let mag = 10f64.powf(raw.log10().floor());
        let norm = raw / mag;
        let step = mag
            * if norm <= 1.0 {
                1.0
            } else if norm <= 2.0 {
                2.0
            } else if norm <= 5.0 {
                5.0
            } else {
                10.0
            };
        let first = (lo / step).floor();
        let last = (hi / step).ceil();
        let values = (0..=((last - first) as usize))
            .map(|i| (first + i as f64) * step)
            .collect();
        Ticks {
            lo: first * step,
            hi: last * step,
            step,
            values,
        }
    }

    fn label(&self, v: f64) -> String {
        let decimals = (-self.step.log10().floor()).max(0.0) as usize;
        let v = if v.abs() < self.step * 1e-9 { 0.0 } else { v };
        if v != 0.0 && (v.abs() >= 1e6 || v.abs() < 1e-4) {
            format!("{v:.1e}")
        } else {
            format!("{v:.decimals$}")
        }
    }
}

/// Escapes text for SVG content and attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_are_nice_and_cover_the_range() {
        let t = Ticks::new(0.13, 0.97);
        assert_eq!(t.step, 0.2);
        assert!(t.lo <= 0.13 && t.hi >= 0.97);
        assert_eq!(t.label(0.4), "0.4");
        let t = Ticks::new(1.0, 1000.0);
        assert_eq!(t.step, 200.0);
        assert_eq!(t.values.first(), Some(&0.0));
        assert_eq!(t.label(600.0), "600");
        let flat = Ticks::new(2.0, 2.0);
        assert!(flat.lo < 2.0 && flat.hi > 2.0);
    }

    #[test]
    fn chart_escapes_and_skips_non_finite() {
        let pts = [(0.0, 1.0), (1.0, f64::NAN), (2.0, 0.5)];
        let svg = line_chart_svg(
            "a<b",
            "x",
            "y",
            &[Series {
                name: "s&t",
                color: "red",
                points: &pts,
            }],
        );
        assert!(svg.contains("a&lt;b") && svg.contains("s&amp;t"));
        assert!(!svg.contains("NaN"));
        assert_eq!(svg.matches("<polyline").count(), 1);
        let empty = line_chart_svg("t", "x", "y", &[]);
        assert!(empty.starts_with("<svg") && empty.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn long_series_are_downsampled() {
        let pts: Vec<(f64, f64)> = (0..10_000).map(|i| (i as f64, 1.0)).collect();
        assert!(downsample(pts).len() <= MAX_POINTS);
    }
}
