//! The labs' plots: values over time as an SVG line chart, phases shaded, events marked.
//! Rates go on a logarithmic axis (legitimate traffic is a few thousand packets per second
//! beside floods of tens of thousands); counters that only grow (the fleet's drops) on a
//! linear one.

use std::fmt::Write;

use super::run::Summary;
use super::scenario::Scenario;

const W: f64 = 900.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

/// One line of a chart: (seconds, per second) points.
pub struct Series {
    pub name: String,
    pub colour: &'static str,
    /// Dashed (what was offered), or solid.
    pub dashed: bool,
    /// Stroke width; a wider line drawn first stays visible under a narrower one that
    /// coincides with it.
    pub width: f64,
    pub points: Vec<(f64, f64)>,
}

/// The line width of most series.
pub const LINE: f64 = 2.0;

/// A chart over time: the lab's plot, the chain scenario's (one line per hop) and the
/// fleet's (one line per node).
pub struct Chart {
    pub title: String,
    /// What the values are, after the title: "packets per second".
    pub unit: String,
    /// A logarithmic value axis (rates), else a linear one from 0 (counters).
    pub log_scale: bool,
    /// The time axis ends here at least (seconds).
    pub t_max: f64,
    /// A shaded span (start, end) and its label, e.g. the attack phase.
    pub shade: Option<(f64, f64, String)>,
    /// Vertical dashed lines: (seconds, label).
    pub marks: Vec<(f64, String)>,
    pub series: Vec<Series>,
}

/// The lab run's plot.
pub fn svg(sc: &Scenario, s: &Summary) -> String {
    type Pick = fn(&super::run::Sample) -> f64;
    let lines: [(&str, &'static str, Pick); 5] = [
        ("attack offered", "#d62728", |x| x.offered_attack),
        ("attack delivered", "#ff7f0e", |x| x.delivered_attack),
        ("XDP dropped", "#9467bd", |x| x.dropped),
        ("legit offered", "#1f77b4", |x| x.offered_legit),
        ("legit delivered", "#2ca02c", |x| x.delivered_legit),
    ];
    let a0 = sc.phases.legit_seconds;
    Chart {
        title: sc.name.clone(),
        unit: "packets per second".into(),
        log_scale: true,
        t_max: sc.total_seconds(),
        shade: Some((a0, a0 + sc.phases.attack_seconds, "attack".into())),
        marks: [(s.requested_at, "request"), (s.withdrawn_at, "withdraw")]
            .into_iter()
            .filter_map(|(at, what)| Some((at?, what.to_string())))
            .collect(),
        series: lines
            .into_iter()
            .map(|(name, colour, pick)| Series {
                name: name.into(),
                colour,
                dashed: name.ends_with("offered"),
                width: LINE,
                points: s.samples.iter().map(|p| (p.t, pick(p))).collect(),
            })
            .collect(),
    }
    .svg()
}

impl Chart {
    pub fn svg(&self) -> String {
        let t_max = self
            .series
            .iter()
            .flat_map(|l| l.points.last().map(|p| p.0))
            .fold(self.t_max, f64::max)
            .max(1.0);
        let peak = self
            .series
            .iter()
            .flat_map(|l| l.points.iter().map(|p| p.1))
            .fold(10.0f64, f64::max);
        let pw = W - LEFT - RIGHT;
        let ph = H - TOP - BOTTOM;
        let x = |t: f64| LEFT + pw * (t / t_max).clamp(0.0, 1.0);
        let decades = peak.log10().ceil().max(2.0);
        let top = nice_above(peak);
        // Rates under 1 pps sit on the axis.
        let y = |v: f64| {
            let share = if self.log_scale {
                v.max(1.0).log10() / decades
            } else {
                v / top
            };
            TOP + ph * (1.0 - share.clamp(0.0, 1.0))
        };
        let ticks: Vec<f64> = if self.log_scale {
            (0..=decades as i32).map(|d| 10f64.powi(d)).collect()
        } else {
            (0..=5).map(|i| top * i as f64 / 5.0).collect()
        };
        let mut o = String::new();
        let _ = write!(
            o,
            r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="22" font-size="15">dots-agent lab: {} — {}</text>
"##,
            esc(&self.title),
            esc(&self.unit)
        );
        if let Some((a0, a1, what)) = &self.shade {
            let _ = writeln!(
                o,
                r##"<rect x="{:.1}" y="{TOP}" width="{:.1}" height="{ph}" fill="#fbe3e3"/><text x="{:.1}" y="{:.1}" fill="#a33">{}</text>"##,
                x(*a0),
                x(*a1) - x(*a0),
                x(*a0) + 4.0,
                TOP + 14.0,
                esc(what)
            );
        }
        for v in ticks {
            let _ = writeln!(
                o,
                r##"<line x1="{LEFT}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
                LEFT + pw,
                LEFT - 6.0,
                y(v) + 4.0,
                label(v),
                y = y(v)
            );
        }
        let step = if t_max > 60.0 { 10.0 } else { 5.0 };
        let mut t = 0.0;
        while t <= t_max + 1e-9 {
            let _ = writeln!(
                o,
                r##"<line x1="{xv:.1}" x2="{xv:.1}" y1="{:.1}" y2="{:.1}" stroke="#999"/><text x="{xv:.1}" y="{:.1}" text-anchor="middle">{t:.0}</text>"##,
                TOP + ph,
                TOP + ph + 5.0,
                TOP + ph + 18.0,
                xv = x(t)
            );
            t += step;
        }
        let _ = writeln!(
            o,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle">seconds</text><rect x="{LEFT}" y="{TOP}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>"##,
            LEFT + pw / 2.0,
            H - 12.0
        );
        for (i, l) in self.series.iter().enumerate() {
            let pts: Vec<String> = l
                .points
                .iter()
                .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
                .collect();
            let dash = if l.dashed {
                r#" stroke-dasharray="6 3""#
            } else {
                ""
            };
            let (colour, width) = (l.colour, l.width);
            let _ = writeln!(
                o,
                r##"<polyline fill="none" stroke="{colour}" stroke-width="{width}"{dash} points="{}"/>"##,
                pts.join(" ")
            );
            let ly = TOP + 10.0 + i as f64 * 20.0;
            let _ = writeln!(
                o,
                r##"<line x1="{:.1}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="{}"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"##,
                W - RIGHT + 12.0,
                W - RIGHT + 36.0,
                width.min(8.0),
                W - RIGHT + 42.0,
                ly + 4.0,
                esc(&l.name)
            );
        }
        // Marks last, so their labels stay on top of the lines.
        for (i, (at, what)) in self.marks.iter().enumerate() {
            // Labels of marks close together are stacked, not overprinted; a white halo
            // keeps them legible over the lines.
            let ly = TOP + ph - 6.0 - 14.0 * (i % 3) as f64;
            let _ = writeln!(
                o,
                r##"<line x1="{xv:.1}" x2="{xv:.1}" y1="{TOP}" y2="{:.1}" stroke="#333" stroke-dasharray="4 3"/><text x="{:.1}" y="{ly:.1}" fill="#333" stroke="white" stroke-width="3" paint-order="stroke">{}</text>"##,
                TOP + ph,
                x(*at) + 3.0,
                esc(what),
                xv = x(*at)
            );
        }
        o.push_str("</svg>\n");
        o
    }
}

/// The smallest 1, 2 or 5 times a power of ten at or above `v` times 5, divided by 5: the top
/// of a linear axis with five even steps.
fn nice_above(v: f64) -> f64 {
    let step = (v.max(5.0) / 5.0).max(1.0);
    let pow = 10f64.powf(step.log10().floor());
    let m = [1.0, 2.0, 5.0, 10.0]
        .into_iter()
        .find(|m| m * pow >= step - 1e-9)
        .unwrap_or(10.0);
    5.0 * m * pow
}

fn label(v: f64) -> String {
    // One decimal only where the whole number would round (a 2.5k step).
    let short = |x: f64, unit: &str| {
        if (x - x.round()).abs() < 1e-9 {
            format!("{x:.0}{unit}")
        } else {
            format!("{x:.1}{unit}")
        }
    };
    match v {
        v if v >= 1e6 => short(v / 1e6, "M"),
        v if v >= 1e3 => short(v / 1e3, "k"),
        v => format!("{v:.0}"),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_linear_axis_ends_on_a_round_value_above_the_peak() {
        assert_eq!(nice_above(240_000.0), 250_000.0);
        assert_eq!(nice_above(90_000.0), 100_000.0);
        assert_eq!(nice_above(12_001.0), 25_000.0);
        assert_eq!(nice_above(0.0), 5.0);
        assert_eq!(label(50_000.0), "50k");
        assert_eq!(label(2_500.0), "2.5k");
        assert_eq!(label(1_000_000.0), "1M");
    }

    #[test]
    fn counters_are_drawn_on_a_linear_axis() {
        let chart = |log_scale| {
            Chart {
                title: "t".into(),
                unit: "packets".into(),
                log_scale,
                t_max: 10.0,
                shade: None,
                marks: vec![(1.0, "2.01".into())],
                series: vec![Series {
                    name: "sum".into(),
                    colour: "#000",
                    dashed: false,
                    width: 5.0,
                    points: vec![(0.0, 0.0), (10.0, 240_000.0)],
                }],
            }
            .svg()
        };
        let linear = chart(false);
        assert!(linear.contains(">250k</text>") && linear.contains(">50k</text>"));
        assert!(linear.contains("stroke-width=\"5\""));
        assert!(linear.contains("— packets</text>") && linear.contains(">2.01</text>"));
        assert!(linear.contains("paint-order=\"stroke\">2.01</text>"));
        let log = chart(true);
        assert!(log.contains(">1M</text>") && !log.contains(">250k</text>"));
    }
}
