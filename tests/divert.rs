//! End to end: diversion and re-injection with the loop closed, as `dots-lab divert` runs
//! it (the same code): a border router (bird2) that routes the customer's prefix directly,
//! a scrubber (the dots-agent server binary with XDP and `[diversion]`, and gobgpd) and a
//! customer reached through a tunnel from the scrubber. Before the mitigation the traffic
//! goes border -> customer; after the 2.01 the border's kernel routes the target to the
//! scrubber (more-specifics learned over BGP), the attack is dropped by XDP and the
//! legitimate traffic arrives through the tunnel; a restarted gobgpd gets the routes back;
//! a target without a re-injection route is mitigated but not diverted;
//! after the withdrawal and the terminating period the routes are gone and traffic flows
//! directly again.
//!
//! Runs the `dots-agent` binary beside the test's target directory (`cargo test
//! --workspace` builds it).

use dots_lab::lab::divert::{run, DivertArgs};

#[test]
fn diverted_traffic_is_scrubbed_and_reinjected_then_flows_directly_again() {
    let release = std::env::current_exe()
        .unwrap()
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap()
        .join("dots-agent");
    assert!(
        release.is_file(),
        "{} is missing: cargo build --release -p dots-agent",
        release.display()
    );
    let n = 100;
    let report = run(&DivertArgs {
        packets: n,
        agent: Some(release),
        json: false,
    })
    .unwrap_or_else(|e| panic!("{e:#}"));
    dots_lab::lab::divert::print(&report);
    let n = n as u64;

    assert_eq!(report.answer_put, "2.01");
    assert_eq!(report.answer_delete, "2.02");
    // The /24 as two /25 more-specifics with the scrubber as next hop, and the IPv6 /48.
    let routes = report.border_routes.join("\n");
    for want in [
        "198.51.100.0/25 via 192.0.2.2 dev b-scr",
        "198.51.100.128/25 via 192.0.2.2 dev b-scr",
        "2001:db8:6401::/48 via 2001:db8:ff::2 dev b-scr",
    ] {
        assert!(routes.contains(want), "{want:?} not in\n{routes}");
    }
    // Tagged with the configured community and NO_EXPORT, as bird received it.
    assert!(
        report.bird_route.contains("(64512,666)") && report.bird_route.contains("(65535,65281)"),
        "{}",
        report.bird_route
    );

    let phase = |name: &str| {
        report
            .phases
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("no phase {name}"))
    };
    let before = phase("before");
    assert_eq!(before.border_route, "via 203.0.113.6 dev b-cust");
    assert_eq!(
        (
            before.delivered.direct_legit,
            before.delivered.direct_attack
        ),
        (n, n),
        "{before:?}"
    );
    assert_eq!(
        (
            before.delivered.tunnel_legit,
            before.delivered.tunnel_attack
        ),
        (0, 0)
    );
    for name in ["mitigating", "gobgpd restarted"] {
        let p = phase(name);
        assert_eq!(p.border_route, "via 192.0.2.2 dev b-scr", "{name}");
        assert_eq!(
            (p.delivered.direct_legit, p.delivered.direct_attack),
            (0, 0),
            "{name}: nothing bypasses the scrubber: {p:?}"
        );
        assert_eq!(
            p.delivered.tunnel_attack, 0,
            "{name}: the attack is dropped"
        );
        assert_eq!(
            p.delivered.tunnel_legit, n,
            "{name}: the legitimate traffic comes back through the tunnel: {p:?}"
        );
    }
    assert!(report.status_dropped >= 2 * n, "{}", report.status_dropped);
    // A target whose scrubbed traffic would go back to the border: mitigated here, its
    // diversion refused and counted, no route at the border.
    assert_eq!(report.untunnelled_answer, "2.01");
    assert_eq!(report.untunnelled_refused, 1.0);
    assert!(!report.untunnelled_at_border, "{:?}", report.border_routes);
    assert!(
        report
            .server_log
            .iter()
            .any(|l| l.contains("192.0.2.128/25") && l.contains("not through reinject_via")),
        "the refusal is logged: {:?}",
        report.server_log
    );
    let after = phase("withdrawn");
    assert_eq!(after.border_route, "via 203.0.113.6 dev b-cust");
    assert_eq!(
        (after.delivered.direct_legit, after.delivered.tunnel_legit),
        (n, 0),
        "{after:?}"
    );
}
