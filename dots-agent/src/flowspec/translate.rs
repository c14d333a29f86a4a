//! A DOTS mitigation as FlowSpec rules: what of its datapath spec FlowSpec can say, under the
//! guard rails, and what stays on this box's filter only, with the reason.
//!
//! Expressible: ACL entries that drop or limit bytes per second (over the mitigation's scope:
//! targets, protocols, destination ports), the drop list, the scope-wide byte cap. Not: TTL
//! matches, packet-rate limits, per-source limits (SYN, packets), the amplification and
//! fragment countermeasures, accept entries and the accept list (FlowSpec orders rules by
//! specificity, RFC 8955 §5.1, not as listed, so whatever an accept protects could be dropped
//! at the border: entries after an accept stay local too).

use ipnet::IpNet;

use super::rule::{FlowAction, FlowMatch, FlowRule};
use crate::datapath::{AclAction, AclEntry, MitigationSpec, PortRange, RateLimit};

/// Limits on what one server announces.
#[derive(Clone, Debug, PartialEq)]
pub struct GuardRails {
    pub max_rules_per_client: usize,
    pub max_rules_total: usize,
    /// No rule's destination may be shorter than these.
    pub shortest_prefix_v4: u8,
    pub shortest_prefix_v6: u8,
}

/// What a mitigation becomes: the rules to announce, and what stays local (one line each).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Translation {
    pub rules: Vec<FlowRule>,
    pub local_only: Vec<String>,
}

/// The rules of `spec` whose destinations lie inside `allowed` (the client's prefixes) and
/// are no broader than the rails allow; everything else is listed in `local_only`.
pub fn translate(spec: &MitigationSpec, allowed: &[IpNet], rails: &GuardRails) -> Translation {
    let mut t = Translation::default();
    let mut targets = Vec::new();
    for target in &spec.targets {
        match target_refusal(target, allowed, rails) {
            Some(why) => t.local_only.push(why),
            None => targets.push(*target),
        }
    }
    let scope = Scope {
        protocols: &spec.protocols,
        ports: &spec.ports,
    };
    let cm = &spec.countermeasures;
    for (on, what) in [
        (cm.amplification, "the amplification countermeasure"),
        (cm.fragments, "the fragment countermeasure"),
        (cm.source_pps.is_some(), "the per-source packet limit"),
        (cm.syn_pps.is_some(), "the per-source SYN limit"),
    ] {
        if on {
            t.local_only.push(format!(
                "{what}: FlowSpec has no per-source or port-set action"
            ));
        }
    }
    if !spec.accept_list.is_empty() {
        t.local_only.push(format!(
            "the accept list ({} prefixes) and the drop list: FlowSpec cannot order an accept ahead of a drop",
            spec.accept_list.len()
        ));
    } else {
        for source in &spec.drop_list {
            for target in &targets {
                let m = FlowMatch {
                    destination: Some(*target),
                    source: Some(*source),
                    ..Default::default()
                };
                if same_family(target, source) {
                    t.rules.push(FlowRule {
                        matches: m,
                        action: FlowAction::Discard,
                    });
                }
            }
        }
    }
    let mut after_accept = None;
    for entry in &spec.acl {
        if let Some(accept) = &after_accept {
            t.local_only.push(format!(
                "ACL entry {:?}: follows accept entry {accept:?}, which FlowSpec cannot order ahead of it",
                entry.name
            ));
            continue;
        }
        match entry_rules(entry, &targets, &scope) {
            Ok(rules) => t.rules.extend(rules),
            Err(why) => {
                if matches!(entry.action, AclAction::Accept) {
                    after_accept = Some(entry.name.clone());
                }
                t.local_only
                    .push(format!("ACL entry {:?}: {why}", entry.name));
            }
        }
    }
    if let Some(cap) = cm.scope_bps {
        for target in &targets {
            t.rules.push(FlowRule {
                matches: scope.on(*target),
                action: FlowAction::RateBytes(cap.rate as f32),
            });
        }
    }
    t
}

fn target_refusal(target: &IpNet, allowed: &[IpNet], rails: &GuardRails) -> Option<String> {
    let shortest = match target {
        IpNet::V4(_) => rails.shortest_prefix_v4,
        IpNet::V6(_) => rails.shortest_prefix_v6,
    };
    if !allowed.iter().any(|a| a.contains(target)) {
        return Some(format!("target {target}: outside the client's prefixes"));
    }
    if target.prefix_len() < shortest {
        return Some(format!(
            "target {target}: broader than /{shortest}, the shortest prefix announced"
        ));
    }
    None
}

fn same_family(a: &IpNet, b: &IpNet) -> bool {
    matches!(
        (a, b),
        (IpNet::V4(_), IpNet::V4(_)) | (IpNet::V6(_), IpNet::V6(_))
    )
}

struct Scope<'a> {
    protocols: &'a [u8],
    ports: &'a [PortRange],
}

impl Scope<'_> {
    fn on(&self, target: IpNet) -> FlowMatch {
        FlowMatch {
            destination: Some(target),
            protocols: self.protocols.to_vec(),
            destination_ports: self.ports.to_vec(),
            ..Default::default()
        }
    }
}

/// One rule per target the entry reaches, the entry's fields narrowed to the scope.
fn entry_rules(
    entry: &AclEntry,
    targets: &[IpNet],
    scope: &Scope,
) -> Result<Vec<FlowRule>, String> {
    let action = match entry.action {
        AclAction::Drop => FlowAction::Discard,
        AclAction::RateLimit(RateLimit::BytesPerSecond(r)) => FlowAction::RateBytes(r.rate as f32),
        AclAction::RateLimit(RateLimit::PacketsPerSecond(_)) => {
            return Err("a packet-rate limit (FlowSpec traffic-rate counts bytes)".into())
        }
        AclAction::Accept => return Err("an accept entry".into()),
    };
    let m = &entry.matches;
    if m.ttl.is_some() {
        return Err("a TTL match (FlowSpec has no TTL component)".into());
    }
    let protocols = match m.protocol {
        Some(p) if scope.protocols.is_empty() || scope.protocols.contains(&p) => vec![p],
        Some(_) => return Ok(Vec::new()), // outside the scope: never applies
        None => scope.protocols.to_vec(),
    };
    let destination_ports = match m.destination_port {
        Some(r) if scope.ports.is_empty() => vec![r],
        Some(r) => {
            let cut: Vec<PortRange> = scope
                .ports
                .iter()
                .filter_map(|s| {
                    let (lo, hi) = (s.lower.max(r.lower), s.upper().min(r.upper()));
                    (lo <= hi).then(|| PortRange::new(lo, hi))
                })
                .collect();
            if cut.is_empty() {
                return Ok(Vec::new());
            }
            cut
        }
        None => scope.ports.to_vec(),
    };
    let mut rules = Vec::new();
    for target in targets {
        let destination = match m.destination {
            None => *target,
            Some(d) if target.contains(&d) => d,
            Some(d) if d.contains(target) => *target,
            Some(_) => continue,
        };
        if m.source.is_some_and(|s| !same_family(&s, target)) {
            continue;
        }
        rules.push(FlowRule {
            matches: FlowMatch {
                destination: Some(destination),
                source: m.source,
                protocols: protocols.clone(),
                destination_ports: destination_ports.clone(),
                source_ports: m.source_port.into_iter().collect(),
                icmp_type: m.icmp_type,
                icmp_code: m.icmp_code,
                tcp_flags: m.tcp_flags.clone(),
                length: m.length,
                dscp: m.dscp,
                fragment: m.fragment.clone(),
            },
            action,
        });
    }
    Ok(rules)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::{AclMatch, Rate, ValueRange};

    fn rails() -> GuardRails {
        GuardRails {
            max_rules_per_client: 10,
            max_rules_total: 100,
            shortest_prefix_v4: 24,
            shortest_prefix_v6: 48,
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn entry(name: &str, matches: AclMatch, action: AclAction) -> AclEntry {
        AclEntry {
            name: name.into(),
            matches,
            action,
        }
    }

    #[test]
    fn expressible_parts_become_rules_and_the_rest_is_named() {
        let mut spec = MitigationSpec::new(1, vec![net("198.51.100.0/24"), net("10.0.0.0/8")]);
        spec.protocols = vec![17];
        spec.countermeasures.syn_pps = Some(Rate::new(10));
        spec.countermeasures.scope_bps = Some(Rate::new(1_000_000));
        spec.drop_list = vec![net("192.0.2.0/24")];
        spec.acl = vec![
            entry(
                "ntp",
                AclMatch {
                    protocol: Some(17),
                    source_port: Some(PortRange::single(123)),
                    ..Default::default()
                },
                AclAction::Drop,
            ),
            entry(
                "tcp",
                AclMatch {
                    protocol: Some(6),
                    ..Default::default()
                },
                AclAction::Drop,
            ),
            entry(
                "ttl",
                AclMatch {
                    ttl: Some(ValueRange { min: 1, max: 2 }),
                    ..Default::default()
                },
                AclAction::Drop,
            ),
        ];
        let t = translate(&spec, &[net("198.51.100.0/24")], &rails());
        let words: Vec<String> = t.rules.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            words,
            [
                "destination 198.51.100.0/24 source 192.0.2.0/24 then discard",
                "destination 198.51.100.0/24 protocol ==17 source-port ==123 then discard",
                "destination 198.51.100.0/24 protocol ==17 then rate-limit 1000000",
            ]
        );
        assert_eq!(t.local_only.len(), 3, "{:?}", t.local_only);
        assert!(t.local_only[0].contains("10.0.0.0/8: outside the client's prefixes"));
        assert!(t.local_only[1].contains("SYN"));
        assert!(t.local_only[2].contains("\"ttl\": a TTL match"));
    }

    #[test]
    fn broad_targets_and_entries_after_an_accept_stay_local() {
        let mut spec = MitigationSpec::new(1, vec![net("2001:db8::/32"), net("2001:db8:1::/48")]);
        spec.acl = vec![
            entry("ok", AclMatch::default(), AclAction::Accept),
            entry("later", AclMatch::default(), AclAction::Drop),
        ];
        let t = translate(&spec, &[net("2001:db8::/32")], &rails());
        assert!(t.rules.is_empty());
        assert!(t.local_only[0].contains("broader than /48"));
        assert!(t.local_only[1].contains("\"ok\": an accept entry"));
        assert!(t.local_only[2].contains("\"later\": follows accept entry"));
    }
}
