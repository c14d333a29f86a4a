//! What the fleet scenario found: the summary and the plot.
//!
//! The plot draws counters (packets dropped since the request), not rates: the DOTS
//! status' `pkts-dropped` is a counter that moves in steps (each time the server's query of
//! Prometheus returns a newer scrape), so its rate would jump between 0 and twice the
//! attack's; as counters, the status line climbs behind the nodes' sum and the gap
//! between the two is the lag a user asks about.

use crate::lab::plot::{Chart, Series, LINE};

use super::attack::{k, FleetSummary};

/// The nodes' colours, in turn.
const NODE_COLOURS: [&str; 6] = [
    "#1f77b4", "#2ca02c", "#17becf", "#bcbd22", "#7f7f7f", "#e377c2",
];

pub fn print_summary(s: &FleetSummary) {
    println!(
        "\n== summary: {} ({} scrubber nodes, the attack spread over them by destination)",
        s.scenario, s.nodes
    );
    println!("{:<12} {:>12} {:>12}", "NODE", "SENT", "DROPPED");
    for (i, (sent, dropped)) in s.sent.iter().zip(&s.dropped).enumerate() {
        println!("{:<12} {sent:>12} {dropped:>12}", format!("node{i}"));
    }
    println!(
        "{:<12} {:>12} {:>12}",
        "nodes' sum",
        s.sent.iter().sum::<u64>(),
        s.nodes_sum
    );
    println!();
    println!(
        "mitigation requested at                 0.0 s  (answer {} after {:.0} ms)",
        s.response_code,
        1000.0 * s.answered_at
    );
    println!(
        "its rule live on every node's filter {:>6.1} s",
        s.live_everywhere_at
    );
    println!(
        "attack                               {:>6.1} s to {:.1} s  ({} pps over {} nodes)",
        s.attack_started_at,
        s.attack_stopped_at,
        k(s.pps),
        s.nodes
    );
    match s.status_equal_at {
        Some(at) => println!(
            "DOTS status pkts-dropped             {:>8}  (= the nodes' sum from {at:.1} s, {:.1} s after the attack stopped)",
            s.status_pkts_dropped,
            at - s.attack_stopped_at
        ),
        None => println!(
            "DOTS status pkts-dropped             {:>8}  (the nodes' sum is {}: not reached within 30 s of the attack's end)",
            s.status_pkts_dropped, s.nodes_sum
        ),
    }
    println!(
        "mitigation withdrawn at              {:>6.1} s  ({})",
        s.withdrawn_at, s.withdraw_code
    );
}

/// The plot: each node's drops, their sum and the status' count over time.
pub fn svg(s: &FleetSummary) -> String {
    let n = s.nodes;
    let points = |pick: &dyn Fn(&super::attack::FleetSample) -> u64| {
        s.samples
            .iter()
            .map(|x| (x.t, pick(x) as f64))
            .collect::<Vec<_>>()
    };
    // With an even split the nodes' lines coincide: each is drawn wider than the next, so
    // every one stays visible as a band.
    let mut series: Vec<Series> = (0..n)
        .map(|i| Series {
            name: format!("node{i} dropped"),
            colour: NODE_COLOURS[i % NODE_COLOURS.len()],
            dashed: false,
            width: LINE + (2.5 * (n - 1 - i) as f64).min(12.0),
            points: points(&|x| x.nodes.get(i).copied().unwrap_or(0)),
        })
        .collect();
    series.push(Series {
        name: "nodes' sum".into(),
        colour: "#9467bd",
        dashed: false,
        width: 6.0,
        points: points(&|x| x.sum),
    });
    series.push(Series {
        name: "DOTS pkts-dropped".into(),
        colour: "#ff7f0e",
        dashed: false,
        width: LINE,
        points: points(&|x| x.status),
    });
    let marks = [
        (Some(s.answered_at), "2.01"),
        (Some(s.live_everywhere_at), "live on every node"),
        (s.status_equal_at, "status = sum"),
        (Some(s.withdrawn_at), "2.02"),
    ];
    Chart {
        title: format!("{} ({} nodes)", s.scenario, n),
        unit: "packets dropped since the request".into(),
        log_scale: false,
        // A second's room after the 2.02 for the last marks' labels.
        t_max: s.withdrawn_at + 1.0,
        shade: Some((s.attack_started_at, s.attack_stopped_at, "attack".into())),
        marks: marks
            .into_iter()
            .filter_map(|(at, what)| Some((at?, what.to_string())))
            .collect(),
        series,
    }
    .svg()
}

#[cfg(test)]
mod tests {
    use super::super::attack::FleetSample;
    use super::*;

    #[test]
    fn the_plot_names_every_node_the_sum_the_status_and_the_events() {
        let sample = |t: f64, each: u64, status: u64| FleetSample {
            t,
            nodes: vec![each; 3],
            sum: 3 * each,
            status,
        };
        let s = FleetSummary {
            scenario: "fleet".into(),
            nodes: 3,
            pps: 30_000,
            response_code: "2.01".into(),
            answered_at: 0.01,
            live_everywhere_at: 0.7,
            attack_started_at: 0.8,
            attack_stopped_at: 8.8,
            sent: vec![80_000; 3],
            dropped: vec![80_000; 3],
            nodes_sum: 240_000,
            status_pkts_dropped: 240_000,
            status_equal_at: Some(12.1),
            withdrawn_at: 12.3,
            withdraw_code: "2.02".into(),
            samples: vec![
                sample(0.8, 0, 0),
                sample(4.8, 40_000, 90_000),
                sample(12.1, 80_000, 240_000),
            ],
        };
        let svg = svg(&s);
        for want in [
            "node0 dropped",
            "node2 dropped",
            "nodes' sum",
            "DOTS pkts-dropped",
            ">2.01<",
            ">live on every node<",
            ">status = sum<",
            ">2.02<",
            ">attack<",
            ">250k<",
        ] {
            assert!(svg.contains(want), "{want}");
        }
        // Wider first: node0 under node1 under node2.
        let w = |name: &str| {
            let at = svg.find(name).unwrap();
            let line = &svg[svg[..at].rfind("<line").unwrap()..at];
            line.split("stroke-width=\"")
                .nth(1)
                .unwrap()
                .split('"')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            (w("node0 dropped"), w("node2 dropped")),
            ("7".into(), "2".into())
        );
    }
}
