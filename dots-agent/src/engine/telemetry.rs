//! The engine's telemetry (RFC 9244): telemetry setup and pre-mitigation reports per
//! client, the rates measured for mitigation-status telemetry, and the acts (pipe
//! capacity as the scope cap, reported top talkers dropped by policy).

use ipnet::IpNet;

use super::journal::{self, Change};
use super::{overlaps, Engine, Mitigation, Refusal};
use crate::datapath::{Mitigator, PortRange};
use crate::signal::message::{Lifetime, Scope};
use crate::signal::telemetry::{self, TelemetryError, TelemetrySetup};

/// Traffic to a mitigation's targets (in scope) and the dropped part, sampled at the
/// client's measurement-sample period over its measurement interval.
pub(super) struct Measured {
    total: telemetry::RateSeries,
    attack: telemetry::RateSeries,
    /// The last reading: time, in-scope and dropped counters.
    last: (u64, xdp_common::Counter, xdp_common::Counter),
    /// The datapath's top talkers (dropped, sampled estimates) at the last reading.
    talkers_then: std::collections::HashMap<std::net::IpAddr, xdp_common::Counter>,
    /// Their drop rates (packets/s, bytes/s) over the last sample period and at their
    /// peak, in the datapath's order (most dropped first).
    talker_rates: Vec<(std::net::IpAddr, Rates, Rates)>,
}

/// Packets/s and bytes/s.
type Rates = (u64, u64);

/// How many top talkers a status carries.
const STATUS_TALKERS: usize = 10;

impl From<TelemetryError> for Refusal {
    fn from(e: TelemetryError) -> Refusal {
        match e {
            TelemetryError::Bad(t) => Refusal::BadRequest(t),
            TelemetryError::Unacceptable(t) => Refusal::Unprocessable(t),
        }
    }
}

impl<M: Mitigator> Engine<M> {
    /// The sources a client reported as top talkers toward these targets, if the server's
    /// policy drops them (spoofed ones are left out: their addresses are not the attackers').
    pub(super) fn talkers_to_drop(&self, client: &str, targets: &[IpNet]) -> Vec<IpNet> {
        if !self.drop_talkers_of.contains(client) {
            return Vec::new();
        }
        let mut out: Vec<IpNet> = self
            .reports
            .get(client)
            .into_iter()
            .flat_map(|r| r.values())
            .filter(|r| {
                r.targets
                    .iter()
                    .any(|t| targets.iter().any(|m| overlaps(t, m)))
            })
            .flat_map(|r| r.talkers.iter())
            .filter(|t| t.spoofed != Some(true))
            .map(|t| t.source)
            .collect();
        out.sort();
        out.dedup();
        out.truncate(telemetry::MAX_TALKERS);
        out
    }

    /// Adds what alias-names (the client's data-channel aliases, as for mitigation
    /// requests) and mids (the client's mitigations: their target prefixes) stand for to
    /// explicit targets. An unknown alias or mid is refused (4.00): telemetry about
    /// targets the server cannot place would be silently useless.
    fn resolve_targets(
        &self,
        cuid: &str,
        aliases: &[String],
        mids: &[u32],
        prefixes: &mut Vec<IpNet>,
        ports: &mut Vec<PortRange>,
        protocols: &mut Vec<u8>,
    ) -> Result<(), Refusal> {
        if !aliases.is_empty() {
            let mut scope = Scope::new(Vec::new(), Lifetime::Indefinite);
            scope.alias_name = aliases.to_vec();
            let scope = self.expand_aliases(cuid, scope)?;
            for p in scope.target_prefix {
                if !prefixes.contains(&p) {
                    prefixes.push(p);
                }
            }
            for r in scope.target_port_range {
                if !ports.contains(&r) {
                    ports.push(r);
                }
            }
            for p in scope.target_protocol {
                if !protocols.contains(&p) {
                    protocols.push(p);
                }
            }
        }
        for mid in mids {
            let m = self
                .ledger
                .of(cuid)
                .and_then(|m| m.get(mid))
                .ok_or_else(|| {
                    Refusal::BadRequest(format!(
                        "mid-list (186): no mitigation {mid} of this client"
                    ))
                })?;
            for p in &m.scope.target_prefix {
                if !prefixes.contains(p) {
                    prefixes.push(*p);
                }
            }
        }
        Ok(())
    }

    /// A telemetry-setup PUT with its baselines' alias-names resolved (see
    /// `resolve_targets`); other items pass unchanged.
    pub fn tm_setup_resolve(
        &self,
        cuid: &str,
        item: telemetry::SetupItem,
    ) -> Result<telemetry::SetupItem, Refusal> {
        let telemetry::SetupItem::Baselines(mut baselines) = item else {
            return Ok(item);
        };
        for b in &mut baselines {
            let aliases = b.aliases.clone();
            self.resolve_targets(
                cuid,
                &aliases,
                &[],
                &mut b.targets,
                &mut b.ports,
                &mut b.protocols,
            )?;
        }
        Ok(telemetry::SetupItem::Baselines(baselines))
    }

    /// A pre-mitigation report with its alias-names and mid-list resolved (see
    /// `resolve_targets`).
    pub fn tm_resolve(
        &self,
        cuid: &str,
        mut report: telemetry::PreMitigation,
    ) -> Result<telemetry::PreMitigation, Refusal> {
        let (aliases, mids) = (report.aliases.clone(), report.mids.clone());
        self.resolve_targets(
            cuid,
            &aliases,
            &mids,
            &mut report.targets,
            &mut report.ports,
            &mut report.protocols,
        )?;
        Ok(report)
    }

    /// PUT /tm/cuid/tmid: a client's pre-mitigation telemetry. A higher tmid supersedes
    /// lower ones with overlapping targets; with the talker-drop policy, the client's
    /// mitigations are updated at once. Reports are not stored (they describe the moment).
    pub fn tm_put(
        &mut self,
        client: &str,
        tmid: u32,
        report: telemetry::PreMitigation,
        _now: u64,
    ) -> Result<(), Refusal> {
        let policy = self
            .policies
            .get(client)
            .ok_or_else(|| Refusal::Forbidden(format!("client {client:?} is not configured")))?;
        if let Some(p) = report
            .targets
            .iter()
            .find(|p| !policy.prefixes.iter().any(|a| a.contains(*p)))
        {
            return Err(Refusal::Forbidden(format!(
                "target {p} is outside the prefixes of client {client}"
            )));
        }
        let mine = self.reports.entry(client.to_string()).or_default();
        let overlap = |a: &telemetry::PreMitigation| {
            a.targets
                .iter()
                .any(|x| report.targets.iter().any(|y| overlaps(x, y)))
        };
        if let Some((newer, _)) = mine.iter().find(|(t, r)| **t > tmid && overlap(r)) {
            return Err(Refusal::BadRequest(format!(
                "tmid {tmid} is lower than {newer} for overlapping targets: use a higher tmid"
            )));
        }
        mine.retain(|t, r| *t == tmid || !overlap(r));
        mine.insert(tmid, report);
        self.talkers_changed(client);
        Ok(())
    }

    /// The client's reported talkers changed: with the talker-drop policy its mitigations
    /// drop the new set (one that cannot is logged and keeps its rules).
    fn talkers_changed(&mut self, client: &str) {
        if self.drop_talkers_of.contains(client) {
            self.policy_changed(client);
        }
    }

    /// The client's policy as the datapath applies it changed (talkers, pipe capacity).
    fn policy_changed(&mut self, client: &str) {
        if let Err(r) = self.reinstall_client(client) {
            tracing::error!("mitigations of {client}: new policy refused: {r:?}");
        }
        self.finish_unattended();
    }

    /// GET /tm/cuid[/tmid]: the client's reports (for a client that lost its state).
    pub fn tm_get(
        &self,
        client: &str,
        tmid: Option<u32>,
    ) -> Result<Vec<(Option<u32>, telemetry::PreMitigation)>, Refusal> {
        let reports: Vec<(Option<u32>, telemetry::PreMitigation)> = self
            .reports
            .get(client)
            .into_iter()
            .flat_map(|r| r.iter())
            .filter(|(t, _)| tmid.is_none_or(|x| x == **t))
            .map(|(t, r)| (Some(*t), r.clone()))
            .collect();
        if reports.is_empty() {
            return Err(Refusal::NotFound(match tmid {
                Some(t) => format!("no telemetry {t}"),
                None => "no telemetry".into(),
            }));
        }
        Ok(reports)
    }

    /// DELETE /tm/cuid[/tmid].
    pub fn tm_delete(&mut self, client: &str, tmid: Option<u32>, _now: u64) {
        if let Some(r) = self.reports.get_mut(client) {
            match tmid {
                Some(t) => {
                    r.remove(&t);
                }
                None => r.clear(),
            }
        }
        self.talkers_changed(client);
    }

    /// GET /tm-setup/cuid[/tsid]: the client's setup (the handler adds the server's
    /// limits).
    pub fn tm_setup_get(&self, client: &str, tsid: Option<u32>) -> Result<TelemetrySetup, Refusal> {
        let setup = self.telemetry.get(client).cloned().unwrap_or_default();
        if let Some(t) = tsid {
            if !setup.has(t) {
                return Err(Refusal::NotFound(format!("no telemetry setup {t}")));
            }
        }
        Ok(setup)
    }

    /// PUT /tm-setup/cuid/tsid: Ok(true) for a new tsid (2.01). A pipe capacity becomes the
    /// scope-wide cap of the client's mitigations at once.
    pub fn tm_setup_put(
        &mut self,
        client: &str,
        tsid: u32,
        item: telemetry::SetupItem,
        _now: u64,
    ) -> Result<bool, Refusal> {
        let pipes = matches!(item, telemetry::SetupItem::Pipes(_));
        let mut setup = self.telemetry.get(client).cloned().unwrap_or_default();
        let created = setup.put(tsid, item).map_err(Refusal::from)?;
        self.replace_setup(client, setup, pipes).map(|()| created)
    }

    /// DELETE /tm-setup/cuid[/tsid]: what that tsid set (or everything) is forgotten.
    pub fn tm_setup_delete(
        &mut self,
        client: &str,
        tsid: Option<u32>,
        _now: u64,
    ) -> Result<(), Refusal> {
        let mut setup = self.telemetry.get(client).cloned().unwrap_or_default();
        let had_pipes = !setup.pipes.is_empty();
        match tsid {
            Some(t) => setup.delete(t),
            None => setup = TelemetrySetup::default(),
        }
        self.replace_setup(client, setup, had_pipes)
    }

    /// The telemetry configuration in force for a client.
    pub fn telemetry_config(&self, client: &str) -> telemetry::TelemetryConfig {
        self.telemetry
            .get(client)
            .map(|t| t.current())
            .unwrap_or_default()
    }

    /// Makes `setup` the client's, stored in this operation; with `pipes` its mitigations
    /// take the new pipe capacity at once.
    fn replace_setup(
        &mut self,
        client: &str,
        setup: TelemetrySetup,
        pipes: bool,
    ) -> Result<(), Refusal> {
        let doc = if setup == TelemetrySetup::default() {
            Ok(None)
        } else {
            journal::document(&setup).map(Some)
        };
        self.stage(doc.map(|doc| Change::TelemetrySetup {
            client: client.to_string(),
            doc,
        }));
        let previous = if setup == TelemetrySetup::default() {
            self.telemetry.remove(client)
        } else {
            self.telemetry.insert(client.to_string(), setup)
        };
        if pipes {
            if let Err(r) = self.reinstall_client(client) {
                tracing::error!("mitigations of {client}: new pipe capacity refused: {r:?}");
            }
        }
        let result = self.finish(Ok(()));
        if result.is_err() {
            match previous {
                Some(p) => self.telemetry.insert(client.to_string(), p),
                None => self.telemetry.remove(client),
            };
        }
        result
    }

    /// Loads a stored setup (a restart).
    pub(super) fn load_setup(&mut self, client: &str, setup: TelemetrySetup) {
        self.telemetry.insert(client.to_string(), setup);
    }

    /// Samples traffic rates of the installed mitigations of clients that asked for
    /// server-originated telemetry, at their measurement-sample period.
    pub(super) fn measure(&mut self, now: u64) {
        let mut live = std::collections::HashSet::new();
        let configs: std::collections::BTreeMap<&str, telemetry::TelemetryConfig> = self
            .telemetry
            .iter()
            .map(|(client, t)| (client.as_str(), t.current()))
            .filter(|(_, c)| c.server_originated)
            .collect();
        if configs.is_empty() {
            self.measured.clear();
            return;
        }
        for (_, client, _, m) in self.ledger.iter() {
            let Some(config) = configs.get(client) else {
                continue;
            };
            if m.installed {
                live.insert(m.datapath_id);
                let Ok(Some(c)) = self.dp.mitigator().counters(m.datapath_id) else {
                    continue;
                };
                let (in_scope, dropped) = (c.in_scope, c.dropped_total());
                let entry = self
                    .measured
                    .entry(m.datapath_id)
                    .or_insert_with(|| Measured {
                        total: telemetry::RateSeries::new(config.samples()),
                        attack: telemetry::RateSeries::new(config.samples()),
                        last: (now, in_scope, dropped),
                        talkers_then: Default::default(),
                        talker_rates: Vec::new(),
                    });
                let (then, t0, d0) = entry.last;
                let elapsed = now.saturating_sub(then);
                if elapsed < config.sample_seconds() {
                    continue;
                }
                entry.total.capacity = config.samples();
                entry.attack.capacity = config.samples();
                entry.total.push(
                    in_scope.packets.saturating_sub(t0.packets) / elapsed,
                    in_scope.bytes.saturating_sub(t0.bytes) / elapsed,
                );
                entry.attack.push(
                    dropped.packets.saturating_sub(d0.packets) / elapsed,
                    dropped.bytes.saturating_sub(d0.bytes) / elapsed,
                );
                entry.last = (now, in_scope, dropped);
                // Talkers: the change of each one's (estimated) drops since the last
                // reading; one seen for the first time counts from zero.
                let talkers = self
                    .dp
                    .mitigator()
                    .top_talkers(m.datapath_id, STATUS_TALKERS);
                let peaks: std::collections::HashMap<_, _> = entry
                    .talker_rates
                    .iter()
                    .map(|(a, _, peak)| (*a, *peak))
                    .collect();
                entry.talker_rates = talkers
                    .iter()
                    .map(|(addr, c)| {
                        let before = entry.talkers_then.get(addr).copied().unwrap_or_default();
                        let now = (
                            c.packets.saturating_sub(before.packets) / elapsed,
                            c.bytes.saturating_sub(before.bytes) / elapsed,
                        );
                        let peak = peaks.get(addr).copied().unwrap_or_default();
                        (*addr, now, (peak.0.max(now.0), peak.1.max(now.1)))
                    })
                    .collect();
                entry.talkers_then = talkers.into_iter().collect();
            }
        }
        self.measured.retain(|id, _| live.contains(id));
    }

    /// Mitigation-status telemetry of an installed mitigation, if its client asked for it.
    pub(super) fn status_telemetry(
        &self,
        client: &str,
        m: &Mitigation,
    ) -> Option<telemetry::StatusTelemetry> {
        let config = self.telemetry.get(client)?.current();
        if !config.server_originated || !m.installed {
            return None;
        }
        let measured = self.measured.get(&m.datapath_id)?;
        let classes = config.classes();
        Some(telemetry::StatusTelemetry {
            total: measured.total.traffic(&classes, &config.percentiles),
            attack: measured.attack.traffic(&classes, &config.percentiles),
            talkers: measured
                .talker_rates
                .iter()
                .map(|(addr, now, peak)| telemetry::Talker {
                    source: IpNet::from(*addr),
                    attack: classes
                        .iter()
                        .map(|class| {
                            let (current, peak) =
                                (class.of(now.0, now.1), class.of(peak.0, peak.1));
                            let unit = telemetry::Unit::auto(*class, peak);
                            let s = telemetry::Stats {
                                peak: Some(peak),
                                current: Some(current),
                                ..Default::default()
                            };
                            (unit, s.scaled(unit))
                        })
                        .collect(),
                })
                .collect(),
            attack_start: m.activity.last_drop_at.and(m.start),
        })
    }
}
