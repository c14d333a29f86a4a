//! End to end: the DOTS server announces its accepted mitigations as BGP FlowSpec through
//! a real gobgpd, and a real bird2 in another namespace, playing the border router, shows
//! them in its FlowSpec tables: announced on 2.01, replaced when a newer mitigation takes over,
//! kept back past the per-client rule limit (and counted in /metrics), announced again
//! after gobgpd is killed and restarted, withdrawn when the mitigation ends.

use std::time::Duration;

use coap_lite::RequestType;
use dots_agent::client::{code_text, ClientConfig, TransportChoice};
use dots_agent::signal::message::{self, Lifetime, Scope};
use dots_e2e::bgp::{bird, gobgpd, wait_for, Neighbor};
use dots_e2e::dots::{ask_mid, http_get, start_server};
use dots_e2e::{Lab, Netns};

const METRICS: &str = "127.0.0.1:9464";
const SERVER_BGP: &str = "203.0.113.253";
const BORDER_BGP: &str = "203.0.113.254";

fn ask(
    ns: &Netns,
    cfg: &ClientConfig,
    method: RequestType,
    mid: u32,
    target: Option<&str>,
) -> String {
    let body = target.map(|t| {
        message::encode_mitigation_request(&Scope::new(
            vec![t.parse().unwrap()],
            Lifetime::Seconds(600),
        ))
    });
    code_text(&ask_mid(ns, cfg, mid, method, body, false).unwrap())
}

fn metric(ns: &Netns, line_start: &str) -> Option<String> {
    let (_, text) = http_get(ns, METRICS, "/metrics".into())?;
    text.lines()
        .find(|l| l.starts_with(line_start))
        .map(|l| l[line_start.len()..].trim().to_string())
}

/// IEEE-754 single of 1,000,000 bytes/s, as bird prints a traffic-rate community.
const RATE_1M: &str = "(generic, 0x80060000, 0x49742400)";
const DISCARD: &str = "(generic, 0x80060000, 0x0)";

#[test]
fn mitigations_reach_a_border_router_as_flowspec_and_leave_it() {
    let lab = Lab::new("fsa");
    let border = Netns::new("fsaborder");
    let b = &lab.pair.b;
    // The server's BGP link to the border router.
    std::process::Command::new("ip")
        .args([
            "link",
            "add",
            "veth-bgp",
            "netns",
            &b.name,
            "type",
            "veth",
            "peer",
            "name",
            "veth-up",
            "netns",
            &border.name,
        ])
        .status()
        .unwrap();
    b.ip(&[
        "addr",
        "add",
        &format!("{SERVER_BGP}/30"),
        "dev",
        "veth-bgp",
    ]);
    b.ip(&["link", "set", "veth-bgp", "up"]);
    border.ip(&["addr", "add", &format!("{BORDER_BGP}/30"), "dev", "veth-up"]);
    border.ip(&["link", "set", "veth-up", "up"]);

    let dir = lab.dir.path();
    let to_border = [Neighbor {
        address: BORDER_BGP,
        asn: 64513,
        rr_client: false,
    }];
    let mut speaker = gobgpd(b, dir, "gobgpd", 64512, &[SERVER_BGP], &to_border);
    let router = bird(&border, dir, BORDER_BGP, 64513, SERVER_BGP, 64512);
    wait_for(
        "bird's session with gobgpd",
        Duration::from_secs(30),
        || router.established().then_some(()),
    );

    let config = lab.server_config(
        r#""198.51.100.0/24", "2001:db8:6401::/48""#,
        "terminating_seconds = 0",
        &format!(
            "[metrics]\nlisten = [\"{METRICS}\"]\n\
             [flowspec]\nmax_rules_per_client = 4\nresync_seconds = 1\nshortest_prefix_v6 = 56"
        ),
        r#"countermeasures = { scope_bps = { rate = 1000000 }, syn_pps = { rate = 100 } }
acl = [{ name = "ntp", matches = { protocol = 17, source_port = { lower = 123 } }, action = "drop" }]"#,
    );
    let (server, stop) = start_server(b, &config);
    let client = lab.client(TransportChoice::Dtls);
    let a = &lab.pair.a;
    let v4 = || router.flow_rules("flowtab4");
    let v6 = || router.flow_rules("flowtab6");
    let expect_v4 = |net: &str| {
        vec![
            format!("flow4 {{ dst {net}; proto 17; sport 123; }} => {DISCARD}"),
            format!("flow4 {{ dst {net}; }} => {RATE_1M}"),
        ]
    };
    let wait_table = |what: &str, f: &dyn Fn() -> Vec<String>, want: &[String]| {
        let mut want = want.to_vec();
        want.sort();
        wait_for(what, Duration::from_secs(20), || {
            (f() == want).then_some(())
        });
    };

    // Announced on acceptance: the ACL entry (discard) and the pipe cap (traffic-rate);
    // the per-source SYN limit stays local.
    assert_eq!(
        ask(a, &client, RequestType::Put, 1, Some("198.51.100.0/25")),
        "2.01"
    );
    wait_table(
        "mitigation 1 at the border",
        &v4,
        &expect_v4("198.51.100.0/25"),
    );

    // Replaced (RFC 9132: a higher mid over an overlapping scope supersedes): the new
    // target's rules, and the old ones gone.
    assert_eq!(
        ask(a, &client, RequestType::Put, 10, Some("198.51.100.0/24")),
        "2.01"
    );
    wait_table(
        "mitigation 10 replacing 1 at the border",
        &v4,
        &expect_v4("198.51.100.0/24"),
    );

    // IPv6, then a third mitigation past max_rules_per_client (4): kept local, counted.
    assert_eq!(
        ask(
            a,
            &client,
            RequestType::Put,
            2,
            Some("2001:db8:6401:100::/56")
        ),
        "2.01"
    );
    wait_for(
        "mitigation 2 at the border",
        Duration::from_secs(20),
        || {
            let rules = v6();
            (rules.len() == 2
                && rules
                    .iter()
                    .all(|r| r.contains("dst 2001:db8:6401:100::/56")))
            .then_some(rules)
        },
    );
    assert_eq!(
        ask(
            a,
            &client,
            RequestType::Put,
            3,
            Some("2001:db8:6401:200::/56")
        ),
        "2.01"
    );
    wait_for("the rule limit counted", Duration::from_secs(20), || {
        metric(
            b,
            "dots_flowspec_over_limit_mitigations{client=\"client-a\"}",
        )
        .filter(|v| v == "1")
    });
    assert_eq!(
        metric(b, "dots_flowspec_local_only{client=\"client-a\"}").as_deref(),
        Some("3")
    );
    assert_eq!(
        metric(b, "dots_flowspec_rules_announced").as_deref(),
        Some("4")
    );
    assert!(
        v6().iter().all(|r| !r.contains("2001:db8:6401:200::")),
        "{:?}",
        v6()
    );

    // gobgpd killed: the border router loses the rules; restarted, it has forgotten them,
    // and the server announces them again.
    speaker.kill();
    wait_table("the border without its peer", &v4, &[]);
    speaker = gobgpd(b, dir, "gobgpd", 64512, &[SERVER_BGP], &to_border);
    wait_table(
        "mitigation 1 announced again",
        &v4,
        &expect_v4("198.51.100.0/24"),
    );
    wait_for(
        "mitigation 2 announced again",
        Duration::from_secs(20),
        || (v6().len() == 2).then_some(()),
    );

    // Withdrawn when the mitigation ends (terminating period 0: at the next tick).
    assert_eq!(ask(a, &client, RequestType::Delete, 10, None), "2.02");
    wait_table("mitigation 10 withdrawn at the border", &v4, &[]);

    let _ = stop.send(());
    server.join().unwrap().unwrap();
    drop(speaker);
}
