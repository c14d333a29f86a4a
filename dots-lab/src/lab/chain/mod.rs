//! The chain scenario (issue 16, recursive signalling): a scenario with a `[chain]`
//! section runs the customer's DOTS client against the customer's own **gateway** (no
//! datapath), which relays to the **provider's scrubber** (a recursive server: XDP, and
//! `[upstream]` with `escalate = "exceeded"` and the capacity given here), which escalates
//! to the **upstream provider's scrubber** (XDP) once the attack exceeds that capacity.
//! Each hop is measured every second: offered, dropped upstream, dropped at the provider,
//! delivered to the customer; and the customer's DOTS status (through its gateway) counts
//! the drops of both filters.
//!
//! - [`net`]: the namespaces' wiring and the three agents' configurations (shared with
//!   tests/chain.rs).
//! - [`run`]: the run itself; [`print_summary`] and [`svg`] what it found.

pub mod net;
pub mod run;

use anyhow::{bail, Result};
use serde::Deserialize;

use super::plot::{Chart, Series};
use super::scenario::{Filters, Scenario};
pub use run::{run, ChainSummary};

/// `[chain]` in a scenario file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChainSpec {
    /// What the provider's filter holds (`[upstream] capacity_pps` / `capacity_bps`): the
    /// request goes upstream once the traffic to its targets exceeds it.
    #[serde(default)]
    pub capacity_pps: Option<u64>,
    #[serde(default)]
    pub capacity_bps: Option<u64>,
    /// The upstream scrubber's policy for the provider (its `[[client]]`), as `[filters]`
    /// is the provider's for the customer's gateway.
    #[serde(default)]
    pub upstream: Filters,
}

impl ChainSpec {
    pub(super) fn validate(&self, s: &Scenario) -> Result<()> {
        if self.capacity_pps.is_none() && self.capacity_bps.is_none() {
            bail!("[chain] needs capacity_pps or capacity_bps: what the provider's scrubber holds before it escalates");
        }
        if self.capacity_pps == Some(0) || self.capacity_bps == Some(0) {
            bail!(
                "[chain] a capacity of 0 escalates at once; give what the provider's filter holds"
            );
        }
        for t in &s.traffic {
            if t.destination.to_string() != net::CUSTOMER_HOST {
                bail!(
                    "[[traffic]] {:?}: in a chain scenario every flow goes to the customer's host {} (IPv4 only)",
                    t.name,
                    net::CUSTOMER_HOST
                );
            }
        }
        let mut spec = dots_agent::datapath::MitigationSpec::new(
            1,
            vec![net::CUSTOMER_PREFIX.parse().expect("constant prefix")],
        );
        spec.acl = self.upstream.acl.clone();
        if let Some(c) = &self.upstream.countermeasures {
            spec.countermeasures = c.clone();
        }
        dots_agent::datapath::compile::validate(&spec)
            .map_err(|e| anyhow::anyhow!("[chain.upstream]: {e}"))?;
        Ok(())
    }

    /// The provider's `escalate` lines.
    pub fn escalate(&self) -> String {
        let mut e = "escalate = \"exceeded\"".to_string();
        if let Some(c) = self.capacity_pps {
            e.push_str(&format!("\ncapacity_pps = {c}"));
        }
        if let Some(c) = self.capacity_bps {
            e.push_str(&format!("\ncapacity_bps = {c}"));
        }
        e
    }
}

/// The rest of a `[[client]]` table for a policy (countermeasures, ACL entries), as
/// inline values: it follows the table's `name` and `prefixes` lines.
pub fn policy_toml(f: &Filters) -> Result<String> {
    let mut lines = Vec::new();
    if let Some(c) = &f.countermeasures {
        lines.push(format!("countermeasures = {}", toml::Value::try_from(c)?));
    }
    if !f.acl.is_empty() {
        lines.push(format!("acl = {}", toml::Value::try_from(&f.acl)?));
    }
    Ok(lines.join("\n"))
}

/// A DOTS mitigation status as words (RFC 9132 §4.4.2).
pub fn status_name(n: u64) -> &'static str {
    match n {
        1 => "attack-mitigation-in-progress",
        2 => "attack-successfully-mitigated",
        3 => "attack-stopped",
        4 => "attack-exceeded-capability",
        5 => "dots-client-withdrawn-mitigation",
        6 => "attack-mitigation-terminated",
        7 => "attack-mitigation-withdrawn",
        8 => "attack-mitigation-signal-loss",
        _ => "?",
    }
}

/// The summary, for a newcomer: what each hop did.
pub fn print_summary(s: &ChainSummary) {
    println!(
        "\n== summary: {} (customer -> its gateway -> provider's scrubber -> upstream scrubber)",
        s.scenario
    );
    super::harness::print_flows(&s.flows);
    let pct = super::harness::percent;
    println!();
    println!(
        "attack packets offered                 {:>10}",
        s.attack_offered
    );
    println!(
        "  dropped by the upstream scrubber     {:>10}  ({:.1}%)",
        s.dropped_upstream,
        pct(s.dropped_upstream, s.attack_offered)
    );
    println!(
        "  dropped by the provider's scrubber   {:>10}  ({:.1}%)",
        s.dropped_provider,
        pct(s.dropped_provider, s.attack_offered)
    );
    println!(
        "  delivered to the customer            {:>10}  ({:.1}%: before the request, and what the provider let through before the escalation)",
        s.attack_delivered,
        pct(s.attack_delivered, s.attack_offered)
    );
    println!(
        "legitimate traffic delivered           {:>9.2}%  ({} of {})",
        pct(s.legit_delivered, s.legit_offered),
        s.legit_delivered,
        s.legit_offered
    );
    match (s.requested_at, &s.response_code) {
        (Some(at), Some(code)) => {
            println!("mitigation requested (to the gateway)  {at:>8.1} s  (answer {code})")
        }
        _ => println!("mitigation requested                   never (threshold not crossed)"),
    }
    match (&s.escalated_at, &s.escalation) {
        (Some(at), Some(why)) => {
            // The log line names the mitigation; the reason follows the first colon.
            let why = why.split_once(": ").map_or(why.as_str(), |(_, w)| w);
            println!("escalated by the provider's scrubber   {at:>8.1} s  ({why})")
        }
        _ => println!("escalated by the provider's scrubber   no"),
    }
    for (at, status) in &s.statuses {
        println!(
            "customer's DOTS status from            {at:>8.1} s  {status} ({})",
            status_name(*status)
        );
    }
    if let Some(last) = &s.last_status {
        println!(
            "customer's status at {:.1} s: pkts-dropped {} (the filters' own counters then: provider {} + upstream {} = {})",
            last.at,
            last.pkts_dropped,
            last.provider,
            last.upstream,
            last.provider + last.upstream
        );
    }
    match (&s.withdrawn_at, &s.withdraw_code) {
        (Some(at), Some(code)) => {
            println!(
                "mitigation withdrawn at                {at:>8.1} s  ({code}, through the chain)"
            )
        }
        _ => println!("mitigation withdrawn                   no"),
    }
    if s.receiver_drops > 0 {
        println!(
            "note: the receiver's socket dropped {} frames (delivered counts are low by that much)",
            s.receiver_drops
        );
    }
}

/// The plot: each hop over time.
pub fn svg(sc: &Scenario, s: &ChainSummary) -> String {
    type Pick = fn(&run::HopSample) -> f64;
    let lines: [(&str, &'static str, bool, Pick); 5] = [
        ("attack offered", "#d62728", true, |x| x.offered_attack),
        ("dropped upstream", "#8c564b", false, |x| x.dropped_upstream),
        ("dropped at provider", "#9467bd", false, |x| {
            x.dropped_provider
        }),
        ("attack to customer", "#ff7f0e", false, |x| {
            x.delivered_attack
        }),
        ("legit to customer", "#2ca02c", false, |x| x.delivered_legit),
    ];
    let a0 = sc.phases.legit_seconds;
    let marks = [
        (s.requested_at, "request"),
        (s.escalated_at, "escalated"),
        (s.withdrawn_at, "withdraw"),
    ];
    Chart {
        title: format!("{} (each hop)", sc.name),
        unit: "packets per second".into(),
        log_scale: true,
        t_max: sc.total_seconds(),
        shade: Some((a0, a0 + sc.phases.attack_seconds, "attack".into())),
        marks: marks
            .into_iter()
            .filter_map(|(at, what)| Some((at?, what.to_string())))
            .collect(),
        series: lines
            .into_iter()
            .map(|(name, colour, dashed, pick)| Series {
                name: name.into(),
                colour,
                dashed,
                width: super::plot::LINE,
                points: s.samples.iter().map(|p| (p.t, pick(p))).collect(),
            })
            .collect(),
    }
    .svg()
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHAIN: &str = include_str!("../../../../examples/scenarios/chain.toml");

    #[test]
    fn the_shipped_chain_scenario_is_valid_and_its_mistakes_are_named() {
        let s = Scenario::parse(CHAIN).unwrap();
        let c = s.chain.as_ref().unwrap();
        assert!(c
            .escalate()
            .starts_with("escalate = \"exceeded\"\ncapacity_pps = "));
        // Inline values, inside the [[client]] table they follow.
        let up = policy_toml(&c.upstream).unwrap();
        assert!(up.contains("\nacl = [{"), "{up}");
        let table = format!("[[client]]\nname = \"p\"\n{up}");
        let parsed: toml::Table = table.parse().unwrap();
        let client = &parsed["client"][0];
        assert_eq!(client["acl"][0]["name"].as_str(), Some("udp-9999-flood"));
        // The upstream scrubber leaves the reflection to the provider.
        assert_eq!(
            client["countermeasures"]["amplification"].as_bool(),
            Some(false)
        );
        let no_capacity = CHAIN.replace("capacity_pps", "# capacity_pps");
        let e = format!("{:#}", Scenario::parse(&no_capacity).unwrap_err());
        assert!(e.contains("[chain] needs capacity_pps"), "{e}");
        let elsewhere = CHAIN.replacen(
            "destination = \"198.51.100.10\"",
            "destination = \"198.51.100.11\"",
            1,
        );
        let e = format!("{:#}", Scenario::parse(&elsewhere).unwrap_err());
        assert!(e.contains("every flow goes to the customer's host"), "{e}");
    }
}
