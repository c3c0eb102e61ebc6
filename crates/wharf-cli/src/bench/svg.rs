//! Line charts as SVG, written by hand: axes with ticks and labels, a
//! light grid, a legend, a title, and optional markers.
//!
//! Every series is one `<polyline class="series" data-series="NAME">` with
//! one point per data point, so that the files can be checked (and
//! re-plotted) by reading them.

use std::fmt::Write as _;

use super::report::{latency_histogram, SweepSummary};
use super::strategy::{RunResult, Strategy};

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 470.0;
const LEFT: f64 = 80.0;
const RIGHT: f64 = 30.0;
/// Room for the title, the subtitle and the legend.
const TOP: f64 = 100.0;
const BOTTOM: f64 = 62.0;
const FONT: &str = "system-ui, -apple-system, 'Segoe UI', Helvetica, Arial, sans-serif";

/// How values map to positions along an axis.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Scale {
    /// Evenly spaced values.
    Linear,
    /// Evenly spaced ratios (positive values only).
    Log,
}

/// One axis: its range, its ticks and its label.
#[derive(Debug, Clone)]
pub struct Axis {
    /// Written along the axis.
    pub label: String,
    /// Linear or logarithmic.
    pub scale: Scale,
    /// The value at the axis's start.
    pub min: f64,
    /// The value at the axis's end.
    pub max: f64,
    /// Tick positions and their labels.
    pub ticks: Vec<(f64, String)>,
}

impl Axis {
    /// A linear axis from 0 to a round number at or above `max`, with
    /// about five round steps.
    pub fn from_zero(label: &str, max: f64) -> Axis {
        let max = if max.is_finite() && max > 0.0 {
            max
        } else {
            1.0
        };
        let step = nice_step(max / 5.0);
        let top = (max / step).ceil() * step;
        let steps = (top / step).round() as usize;
        let ticks = (0..=steps)
            .map(|i| {
                let v = i as f64 * step;
                (v, fmt_tick(v))
            })
            .collect();
        Axis {
            label: label.to_owned(),
            scale: Scale::Linear,
            min: 0.0,
            max: top,
            ticks,
        }
    }

    /// A logarithmic axis over whole decades around `min..=max`, ticked at
    /// 1, 2 and 5 of each decade (only 1 when that would be crowded).
    pub fn log_decades(label: &str, min: f64, max: f64) -> Axis {
        let min = if min.is_finite() && min > 0.0 {
            min
        } else {
            0.001
        };
        let max = if max.is_finite() && max > min {
            max
        } else {
            min * 10.0
        };
        let lo = min.log10().floor() as i32;
        let mut hi = max.log10().ceil() as i32;
        if hi <= lo {
            hi = lo + 1;
        }
        let multiples: &[f64] = if hi - lo > 4 {
            &[1.0]
        } else {
            &[1.0, 2.0, 5.0]
        };
        let mut ticks = Vec::new();
        for exp in lo..=hi {
            for &m in multiples {
                let v = m * 10f64.powi(exp);
                if v <= 10f64.powi(hi) * 1.000_001 {
                    ticks.push((v, fmt_tick(v)));
                }
            }
        }
        Axis {
            label: label.to_owned(),
            scale: Scale::Log,
            min: 10f64.powi(lo),
            max: 10f64.powi(hi),
            ticks,
        }
    }

    /// A logarithmic axis ticked at exactly `values` (pool sizes), with a
    /// little room at both ends so that no point sits on the frame.
    pub fn log_at(label: &str, values: &[f64]) -> Axis {
        let positive: Vec<f64> = values.iter().copied().filter(|v| *v > 0.0).collect();
        let lo = positive.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = positive.iter().copied().fold(0.0, f64::max);
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (1.0, 1.0) };
        let (llo, lhi) = if hi > lo {
            (lo.ln(), hi.ln())
        } else {
            (lo.ln() - 1.0, hi.ln() + 1.0)
        };
        let pad = (lhi - llo) * 0.05;
        Axis {
            label: label.to_owned(),
            scale: Scale::Log,
            min: (llo - pad).exp(),
            max: (lhi + pad).exp(),
            ticks: positive.iter().map(|&v| (v, fmt_tick(v))).collect(),
        }
    }

    /// Where `v` lies along the axis, 0 at the start and 1 at the end.
    fn fraction(&self, v: f64) -> f64 {
        let f = match self.scale {
            Scale::Linear => (v - self.min) / (self.max - self.min),
            Scale::Log => {
                (v.max(f64::MIN_POSITIVE).ln() - self.min.ln()) / (self.max.ln() - self.min.ln())
            }
        };
        if f.is_finite() {
            f.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }
}

/// One line of the chart.
#[derive(Debug, Clone)]
pub struct Series {
    /// Shown in the legend and in the polyline's `data-series`.
    pub name: String,
    /// Its stroke colour.
    pub color: &'static str,
    /// `(x, y)` in axis units.
    pub points: Vec<(f64, f64)>,
    /// Whether to draw a dot on every point.
    pub dots: bool,
}

/// A chart ready to render.
#[derive(Debug, Clone)]
pub struct Chart {
    /// The heading.
    pub title: String,
    /// The line under it.
    pub subtitle: String,
    /// The horizontal axis.
    pub x: Axis,
    /// The vertical axis.
    pub y: Axis,
    /// The lines.
    pub series: Vec<Series>,
    /// Dashed vertical reference lines at an x value, with a label.
    pub vlines: Vec<(f64, String)>,
    /// Circled points `(x, y)` with a label.
    pub highlights: Vec<(f64, f64, String)>,
}

/// The colour a strategy has in every chart.
pub fn color_of(strategy: Strategy) -> &'static str {
    match strategy {
        Strategy::PerRequest => "#d62728",
        Strategy::Pool => "#1f77b4",
        Strategy::Proxy => "#2ca02c",
    }
}

fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let magnitude = 10f64.powf(raw.log10().floor());
    let norm = raw / magnitude;
    let nice = if norm <= 1.0 {
        1.0
    } else if norm <= 2.0 {
        2.0
    } else if norm <= 5.0 {
        5.0
    } else {
        10.0
    };
    nice * magnitude
}

/// A tick label: no trailing zeros, thousands separated.
fn fmt_tick(v: f64) -> String {
    let rounded = v.round();
    if (v - rounded).abs() < 1e-9 * v.abs().max(1.0) {
        let n = rounded as i64;
        if n.abs() >= 10_000 {
            return super::report::fmt_count(n.unsigned_abs());
        }
        return n.to_string();
    }
    let text = format!("{v:.4}");
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// Escapes text for XML content and attribute values.
fn esc(text: &str) -> String {
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

/// Renders `chart` as a standalone SVG document.
pub fn render(chart: &Chart) -> String {
    let (px0, px1) = (LEFT, WIDTH - RIGHT);
    let (py0, py1) = (TOP, HEIGHT - BOTTOM);
    let sx = |v: f64| px0 + chart.x.fraction(v) * (px1 - px0);
    let sy = |v: f64| py1 - chart.y.fraction(v) * (py1 - py0);
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="{FONT}" font-size="12">"#
    );
    let _ = writeln!(s, "<title>{}</title>", esc(&chart.title));
    let _ = writeln!(s, r##"<rect width="100%" height="100%" fill="#ffffff"/>"##);
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="30" font-size="17" font-weight="600" fill="#111">{}</text>"##,
        esc(&chart.title)
    );
    let _ = writeln!(
        s,
        r##"<text x="{LEFT}" y="50" fill="#555">{}</text>"##,
        esc(&chart.subtitle)
    );

    // Grid first, so that axes and lines draw over it.
    let _ = writeln!(s, r##"<g class="grid" stroke="#e6e6e6" stroke-width="1">"##);
    for (v, _) in &chart.y.ticks {
        let y = sy(*v);
        let _ = writeln!(
            s,
            r#"<line x1="{px0:.1}" y1="{y:.1}" x2="{px1:.1}" y2="{y:.1}"/>"#
        );
    }
    for (v, _) in &chart.x.ticks {
        let x = sx(*v);
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{py0:.1}" x2="{x:.1}" y2="{py1:.1}"/>"#
        );
    }
    let _ = writeln!(s, "</g>");

    let _ = writeln!(s, r##"<g class="axes" stroke="#333" stroke-width="1">"##);
    let _ = writeln!(s, r#"<line x1="{px0}" y1="{py1}" x2="{px1}" y2="{py1}"/>"#);
    let _ = writeln!(s, r#"<line x1="{px0}" y1="{py0}" x2="{px0}" y2="{py1}"/>"#);
    for (v, _) in &chart.x.ticks {
        let x = sx(*v);
        let _ = writeln!(
            s,
            r#"<line x1="{x:.1}" y1="{py1}" x2="{x:.1}" y2="{:.1}"/>"#,
            py1 + 5.0
        );
    }
    for (v, _) in &chart.y.ticks {
        let y = sy(*v);
        let _ = writeln!(
            s,
            r#"<line x1="{:.1}" y1="{y:.1}" x2="{px0}" y2="{y:.1}"/>"#,
            px0 - 5.0
        );
    }
    let _ = writeln!(s, "</g>");

    let _ = writeln!(s, r##"<g class="tick-labels" fill="#333">"##);
    for (v, label) in &chart.x.ticks {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
            sx(*v),
            py1 + 19.0,
            esc(label)
        );
    }
    for (v, label) in &chart.y.ticks {
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="end" dy="0.32em">{}</text>"#,
            px0 - 9.0,
            sy(*v),
            esc(label)
        );
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(
        s,
        r##"<text class="axis-label" x="{:.1}" y="{:.1}" text-anchor="middle" fill="#111">{}</text>"##,
        (px0 + px1) / 2.0,
        HEIGHT - 16.0,
        esc(&chart.x.label)
    );
    let mid = (py0 + py1) / 2.0;
    let _ = writeln!(
        s,
        r##"<text class="axis-label" x="20" y="{mid:.1}" text-anchor="middle" fill="#111" transform="rotate(-90 20 {mid:.1})">{}</text>"##,
        esc(&chart.y.label)
    );

    for (x, label) in &chart.vlines {
        let x = sx(*x);
        let anchor = if x > (px0 + px1) / 2.0 {
            "end"
        } else {
            "start"
        };
        let dx = if anchor == "end" { -5.0 } else { 5.0 };
        let _ = writeln!(
            s,
            r##"<g class="reference"><line x1="{x:.1}" y1="{py0}" x2="{x:.1}" y2="{py1}" stroke="#777" stroke-width="1.2" stroke-dasharray="5 4"/><text x="{:.1}" y="{:.1}" text-anchor="{anchor}" fill="#555">{}</text></g>"##,
            x + dx,
            py0 + 14.0,
            esc(label)
        );
    }

    for series in &chart.series {
        let points: Vec<String> = series
            .points
            .iter()
            .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
            .collect();
        let _ = writeln!(
            s,
            r#"<polyline class="series" data-series="{}" points="{}" fill="none" stroke="{}" stroke-width="2.2" stroke-linejoin="round" stroke-linecap="round"/>"#,
            esc(&series.name),
            points.join(" "),
            series.color
        );
        if series.dots {
            let _ = writeln!(s, r#"<g class="dots" fill="{}">"#, series.color);
            for &(x, y) in &series.points {
                let _ = writeln!(
                    s,
                    r#"<circle cx="{:.1}" cy="{:.1}" r="3.5"/>"#,
                    sx(x),
                    sy(y)
                );
            }
            let _ = writeln!(s, "</g>");
        }
    }

    for (x, y, label) in &chart.highlights {
        let (cx, cy) = (sx(*x), sy(*y));
        // Below the point when it is near the top, so the label stays inside.
        let ly = if cy - py0 < 24.0 {
            cy + 22.0
        } else {
            cy - 12.0
        };
        // Near a side, the label grows away from it, so it is not cut off.
        let (lx, anchor) = if cx > px1 - 90.0 {
            (cx + 8.0, "end")
        } else if cx < px0 + 90.0 {
            (cx - 8.0, "start")
        } else {
            (cx, "middle")
        };
        let _ = writeln!(
            s,
            r##"<g class="highlight"><circle cx="{cx:.1}" cy="{cy:.1}" r="7.5" fill="none" stroke="#111" stroke-width="1.6"/><text x="{lx:.1}" y="{ly:.1}" text-anchor="{anchor}" font-weight="600" fill="#111">{}</text></g>"##,
            esc(label)
        );
    }

    // The legend runs along the top, under the subtitle.
    let _ = writeln!(s, r#"<g class="legend">"#);
    let mut lx = LEFT;
    let ly = 74.0;
    for series in &chart.series {
        let _ = writeln!(
            s,
            r##"<line x1="{lx:.1}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{}" stroke-width="3"/><text x="{:.1}" y="{ly}" dy="0.32em" fill="#222">{}</text>"##,
            lx + 20.0,
            series.color,
            lx + 26.0,
            esc(&series.name)
        );
        lx += 46.0 + 7.0 * series.name.chars().count() as f64;
    }
    let _ = writeln!(s, "</g>");
    let _ = writeln!(s, "</svg>");
    s
}

/// The percentiles plotted on the latency chart, as "nines":
/// `x = -log10(1 - q)`, so 0 is the minimum, 1 is p90, 2 p99, 3 p99.9.
pub const LATENCY_POINTS: usize = 31;

/// The latency chart: one percentile curve per strategy that had
/// successful requests.
pub fn latency_chart(runs: &[RunResult], subtitle: &str) -> String {
    let mut series = Vec::new();
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for run in runs {
        let Some(histogram) = latency_histogram(run) else {
            continue;
        };
        let points: Vec<(f64, f64)> = (0..LATENCY_POINTS)
            .map(|i| {
                let nines = 3.0 * i as f64 / (LATENCY_POINTS - 1) as f64;
                let q = 1.0 - 10f64.powf(-nines);
                let ms = histogram.value_at_quantile(q) as f64 / 1000.0;
                (nines, ms)
            })
            .collect();
        for &(_, ms) in &points {
            lo = lo.min(ms);
            hi = hi.max(ms);
        }
        series.push(Series {
            name: run.label(),
            color: color_of(run.strategy),
            points,
            dots: false,
        });
    }
    let x = Axis {
        label: "percentile".to_owned(),
        scale: Scale::Linear,
        min: 0.0,
        max: 3.0,
        ticks: vec![
            (0.0, "0% (min)".to_owned()),
            (2f64.log10(), "50%".to_owned()),
            (1.0, "90%".to_owned()),
            (2.0, "99%".to_owned()),
            (3.0, "99.9%".to_owned()),
        ],
    };
    let chart = Chart {
        title: "Request latency by percentile".to_owned(),
        subtitle: subtitle.to_owned(),
        x,
        y: Axis::log_decades("latency (ms, log scale)", lo, hi),
        series,
        vlines: Vec::new(),
        highlights: Vec::new(),
    };
    render(&chart)
}

/// The sweep's two charts: throughput by pool size, and p99 by pool size.
/// The best size is circled; (cores × 2) + 1 is a dashed line when the
/// database is on this host.
pub fn sweep_charts(sweep: &SweepSummary, cores: usize, subtitle: &str) -> (String, String) {
    let sizes: Vec<f64> = sweep
        .runs
        .iter()
        .filter_map(|r| r.pool_size.map(|s| s as f64))
        .collect();
    let x = Axis::log_at("pool size (connections, log scale)", &sizes);
    let vlines: Vec<(f64, String)> = sweep
        .rule_of_thumb_pool_size
        .map(|rule| {
            (
                rule as f64,
                format!("(cores × 2) + 1 = {rule} ({cores} cores)"),
            )
        })
        .filter(|(rule, _)| *rule >= x.min && *rule <= x.max)
        .into_iter()
        .collect();
    let color = color_of(Strategy::Pool);

    let tput: Vec<(f64, f64)> = sweep
        .runs
        .iter()
        .filter_map(|r| r.pool_size.map(|s| (s as f64, r.throughput_rps)))
        .collect();
    let best = sweep.best_pool_size.map(|size| size as f64);
    let tput_max = tput.iter().map(|p| p.1).fold(0.0, f64::max);
    let throughput = Chart {
        title: "Throughput by pool size".to_owned(),
        subtitle: subtitle.to_owned(),
        x: x.clone(),
        y: Axis::from_zero("requests per second", tput_max * 1.08),
        highlights: tput
            .iter()
            .filter(|p| Some(p.0) == best)
            .map(|&(sx, sy)| (sx, sy, format!("best: {sx}")))
            .collect(),
        series: vec![Series {
            name: "in-process wharf pool".to_owned(),
            color,
            points: tput,
            dots: true,
        }],
        vlines: vlines.clone(),
    };

    let p99: Vec<(f64, f64)> = sweep
        .runs
        .iter()
        .filter_map(|r| Some((r.pool_size? as f64, r.latency_ms?.p99)))
        .collect();
    let p99_max = p99.iter().map(|p| p.1).fold(0.0, f64::max);
    let latency = Chart {
        title: "p99 latency by pool size".to_owned(),
        subtitle: subtitle.to_owned(),
        x,
        y: Axis::from_zero("p99 latency (ms)", p99_max * 1.08),
        highlights: p99
            .iter()
            .filter(|p| Some(p.0) == best)
            .map(|&(sx, sy)| (sx, sy, format!("best throughput: {sx}")))
            .collect(),
        series: vec![Series {
            name: "in-process wharf pool".to_owned(),
            color,
            points: p99,
            dots: true,
        }],
        vlines,
    };
    (render(&throughput), render(&latency))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linear_axes_end_on_round_numbers() {
        let axis = Axis::from_zero("x", 4321.0);
        assert_eq!(axis.max, 5000.0);
        let labels: Vec<&str> = axis.ticks.iter().map(|t| t.1.as_str()).collect();
        assert_eq!(labels, ["0", "1000", "2000", "3000", "4000", "5000"]);
        let small = Axis::from_zero("x", 0.37);
        assert_eq!(small.ticks.last().map(|t| t.1.as_str()), Some("0.4"));
    }

    #[test]
    fn log_axes_cover_whole_decades() {
        let axis = Axis::log_decades("ms", 0.35, 42.0);
        assert_eq!(axis.min, 0.1);
        assert_eq!(axis.max, 100.0);
        assert!(axis.ticks.iter().any(|t| t.1 == "0.2"));
        assert!(axis.ticks.iter().any(|t| t.1 == "50"));
        assert!((axis.fraction(1.0) - 1.0 / 3.0).abs() < 1e-9);
    }

    #[test]
    fn text_is_escaped() {
        assert_eq!(esc("a<b & \"c\""), "a&lt;b &amp; &quot;c&quot;");
    }

    #[test]
    fn a_chart_has_one_polyline_per_series_with_all_its_points() {
        let chart = Chart {
            title: "T & t".into(),
            subtitle: "s".into(),
            x: Axis::log_at("size", &[2.0, 4.0, 8.0]),
            y: Axis::from_zero("rps", 100.0),
            series: vec![
                Series {
                    name: "a".into(),
                    color: "#000",
                    points: vec![(2.0, 10.0), (4.0, 50.0), (8.0, 40.0)],
                    dots: true,
                },
                Series {
                    name: "b <2>".into(),
                    color: "#111",
                    points: vec![(2.0, 1.0), (8.0, 2.0)],
                    dots: false,
                },
            ],
            vlines: vec![(5.0, "rule".into())],
            highlights: vec![(4.0, 50.0, "best".into())],
        };
        let svg = render(&chart);
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains(r#"data-series="b &lt;2&gt;""#), "{svg}");
        assert_eq!(svg.matches(r#"r="3.5""#).count(), 3);
        assert!(svg.contains("<title>T &amp; t</title>"));
    }
}
