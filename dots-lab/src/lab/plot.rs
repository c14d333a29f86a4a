//! The lab's plot: rates over time as an SVG line chart (logarithmic rate axis, since
//! legitimate traffic is a few thousand packets per second beside floods of tens of
//! thousands), phases shaded, the request and the withdrawal marked.

use std::fmt::Write;

use super::run::Summary;
use super::scenario::Scenario;

const W: f64 = 900.0;
const H: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 170.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 50.0;

pub fn svg(sc: &Scenario, s: &Summary) -> String {
    let t_max = s
        .samples
        .last()
        .map(|x| x.t)
        .unwrap_or(1.0)
        .max(sc.total_seconds())
        .max(1.0);
    let peak = s
        .samples
        .iter()
        .flat_map(|x| {
            [
                x.offered_legit,
                x.offered_attack,
                x.delivered_legit,
                x.delivered_attack,
                x.dropped,
            ]
        })
        .fold(10.0f64, f64::max);
    let decades = peak.log10().ceil().max(2.0);
    let pw = W - LEFT - RIGHT;
    let ph = H - TOP - BOTTOM;
    let x = |t: f64| LEFT + pw * (t / t_max).clamp(0.0, 1.0);
    // Rates under 1 pps sit on the axis.
    let y = |v: f64| TOP + ph * (1.0 - (v.max(1.0).log10() / decades).clamp(0.0, 1.0));
    let mut o = String::new();
    let _ = write!(
        o,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" font-size="12">
<rect width="100%" height="100%" fill="white"/>
<text x="{LEFT}" y="22" font-size="15">dots-agent lab: {} — packets per second</text>
"##,
        esc(&sc.name)
    );
    let a0 = sc.phases.legit_seconds;
    let a1 = a0 + sc.phases.attack_seconds;
    let _ = writeln!(
        o,
        r##"<rect x="{:.1}" y="{TOP}" width="{:.1}" height="{ph}" fill="#fbe3e3"/><text x="{:.1}" y="{:.1}" fill="#a33">attack</text>"##,
        x(a0),
        x(a1) - x(a0),
        x(a0) + 4.0,
        TOP + 14.0
    );
    for d in 0..=decades as i32 {
        let v = 10f64.powi(d);
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
    for (at, what, colour) in [
        (s.requested_at, "request", "#333"),
        (s.withdrawn_at, "withdraw", "#333"),
    ] {
        if let Some(at) = at {
            let _ = writeln!(
                o,
                r##"<line x1="{xv:.1}" x2="{xv:.1}" y1="{TOP}" y2="{:.1}" stroke="{colour}" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="{colour}">{what}</text>"##,
                TOP + ph,
                x(at) + 3.0,
                TOP + ph - 6.0,
                xv = x(at)
            );
        }
    }
    type Pick = fn(&super::run::Sample) -> f64;
    let series: [(&str, &str, Pick); 5] = [
        ("attack offered", "#d62728", |x| x.offered_attack),
        ("attack delivered", "#ff7f0e", |x| x.delivered_attack),
        ("XDP dropped", "#9467bd", |x| x.dropped),
        ("legit offered", "#1f77b4", |x| x.offered_legit),
        ("legit delivered", "#2ca02c", |x| x.delivered_legit),
    ];
    for (i, (name, colour, pick)) in series.iter().enumerate() {
        let pts: Vec<String> = s
            .samples
            .iter()
            .map(|p| format!("{:.1},{:.1}", x(p.t), y(pick(p))))
            .collect();
        let dash = if name.ends_with("offered") {
            r#" stroke-dasharray="6 3""#
        } else {
            ""
        };
        let _ = writeln!(
            o,
            r##"<polyline fill="none" stroke="{colour}" stroke-width="2"{dash} points="{}"/>"##,
            pts.join(" ")
        );
        let ly = TOP + 10.0 + i as f64 * 20.0;
        let _ = writeln!(
            o,
            r##"<line x1="{:.1}" x2="{:.1}" y1="{ly:.1}" y2="{ly:.1}" stroke="{colour}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{name}</text>"##,
            W - RIGHT + 12.0,
            W - RIGHT + 36.0,
            W - RIGHT + 42.0,
            ly + 4.0
        );
    }
    o.push_str("</svg>\n");
    o
}

fn label(v: f64) -> String {
    match v {
        v if v >= 1e6 => format!("{:.0}M", v / 1e6),
        v if v >= 1e3 => format!("{:.0}k", v / 1e3),
        v => format!("{v:.0}"),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}
