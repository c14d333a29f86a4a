//! Mitigation requests (RFC 9132 §4.4.1, §4.4.3, §4.4.4): create, refresh, efficacy
//! update, same-client and cross-client conflicts, aliases and acl-list from the data
//! channel, withdrawal with the active-but-terminating period; and how a mitigation goes
//! into the datapath and out of it.

use super::{
    overlaps, refusal, scopes_overlap, AclEdit, Activity, ClientPolicy, Engine, Mitigation,
    PutOutcome, Refusal, ANNOUNCE_SECONDS,
};
use crate::datapath::{Countermeasures, DatapathId, MitigationSpec, Mitigator, PortRange};
use crate::signal::message::{AclActivation, Lifetime, Scope, Status};

impl<M: Mitigator> Engine<M> {
    /// RFC 9133: `acl-list` in a mitigation request names ACLs of the client (created over
    /// the data channel) whose activation type it sets: what that would make of them.
    pub(super) fn plan_acl_list(
        &self,
        cuid: &str,
        scope: &Scope,
    ) -> Result<Option<AclEdit>, Refusal> {
        if scope.acl_list.is_empty() {
            return Ok(None);
        }
        let Some(data) = &self.data else {
            return Err(Refusal::BadRequest(
                "acl-list is not supported by this server (no data channel)".into(),
            ));
        };
        data.plan_acl_list(cuid, &scope.acl_list)
            .map(Some)
            .map_err(Refusal::BadRequest)
    }

    /// Adds what the scope's aliases stand for to its explicit targets (RFC 9132 §4.4.1:
    /// an alias must be the client's own, else 4.00). The alias names stay in the scope.
    pub(super) fn expand_aliases(&self, cuid: &str, mut scope: Scope) -> Result<Scope, Refusal> {
        if scope.alias_name.is_empty() {
            return Ok(scope);
        }
        let Some(data) = &self.data else {
            return Err(Refusal::BadRequest(
                "alias-name is not resolved by this server (no data channel)".into(),
            ));
        };
        for name in &scope.alias_name {
            let t = data.alias(cuid, name).ok_or_else(|| {
                Refusal::BadRequest(format!(
                    "unknown alias-name {name:?} (create it over the data channel)"
                ))
            })?;
            if t.names > 0 {
                return Err(Refusal::BadRequest(format!(
                    "alias {name:?} holds FQDN or URI targets, which this server does not resolve"
                )));
            }
            for p in t.prefixes {
                if !scope.target_prefix.contains(&p) {
                    scope.target_prefix.push(p);
                }
            }
            for r in t.ports {
                if !scope.target_port_range.contains(&r) {
                    scope.target_port_range.push(r);
                }
            }
            for p in t.protocols {
                if !scope.target_protocol.contains(&p) {
                    scope.target_protocol.push(p);
                }
            }
        }
        Ok(scope)
    }

    /// PUT /mitigate/cuid/mid (`efficacy`: the request carried an empty If-Match). An
    /// `acl-list` (RFC 9133) is checked first and applied once the request is accepted, in
    /// the same transaction.
    pub fn put(
        &mut self,
        client: &str,
        cuid: &str,
        mid: u32,
        scope: Scope,
        efficacy: bool,
        now: u64,
    ) -> Result<PutOutcome, Refusal> {
        let result = self.put_with_acl_list(client, cuid, mid, scope, efficacy, now);
        let acl_list = match &result {
            Ok((_, Some(list))) => Some(list.clone()),
            _ => None,
        };
        let result = self.finish(result.map(|(outcome, _)| outcome));
        if let (Ok(_), Some(list), Some(data)) = (&result, acl_list, self.data.as_mut()) {
            data.apply_acl_list(cuid, &list);
        }
        result
    }

    /// The request, and the acl-list to apply to the data channel once it is stored.
    pub(super) fn put_with_acl_list(
        &mut self,
        client: &str,
        cuid: &str,
        mid: u32,
        scope: Scope,
        efficacy: bool,
        now: u64,
    ) -> Result<(PutOutcome, Option<Vec<AclActivation>>), Refusal> {
        let edit = if self.policies.contains_key(client) {
            self.plan_acl_list(cuid, &scope)?
        } else {
            None
        };
        let acl_list = scope.acl_list.clone();
        let outcome = self.put_scope(client, cuid, mid, scope, efficacy, now)?;
        let Some(edit) = edit else {
            return Ok((outcome, None));
        };
        if !matches!(outcome, PutOutcome::Created { .. } | PutOutcome::Changed) {
            return Ok((outcome, None));
        }
        match self.apply_acls(&edit.client, Some(edit.entries)) {
            Ok(()) => {
                self.stage(Ok(edit.change));
                Ok((outcome, Some(acl_list)))
            }
            Err(e) => {
                // The request itself stands; its filter control could not be applied.
                tracing::error!("acl-list of mitigation {mid} of {cuid}: {e:?}");
                Ok((outcome, None))
            }
        }
    }

    pub(super) fn put_scope(
        &mut self,
        client: &str,
        cuid: &str,
        mid: u32,
        scope: Scope,
        efficacy: bool,
        now: u64,
    ) -> Result<PutOutcome, Refusal> {
        let policy =
            self.policies.get(client).cloned().ok_or_else(|| {
                Refusal::Forbidden(format!("client {client:?} is not configured"))
            })?;
        let scope = self.expand_aliases(cuid, scope)?;
        if !scope.target_fqdn.is_empty() || !scope.target_uri.is_empty() {
            return Err(Refusal::BadRequest(
                "this server mitigates target-prefix scopes only (target-fqdn and target-uri are not resolved)".into(),
            ));
        }
        for p in &scope.target_prefix {
            if !policy.prefixes.iter().any(|allowed| allowed.contains(p)) {
                return Err(Refusal::Forbidden(format!(
                    "target {p} is outside the prefixes of client {client}"
                )));
            }
        }
        if self
            .ledger
            .client_of(cuid)
            .is_some_and(|owner| owner != client)
        {
            return Err(Refusal::Conflict {
                cause: 3,
                mid: None,
                diagnostic: "cuid collision".into(),
            });
        }
        if !efficacy && scope.attack_status.is_some() {
            return Err(Refusal::BadRequest(
                "attack-status (29) belongs in efficacy updates (a PUT with an empty If-Match)"
                    .into(),
            ));
        }
        // A mitigation of another client domain (cdid) behind the same gateway is not
        // this request's to change.
        self.check_domain(cuid, mid)?;
        let existing = self
            .ledger
            .get(cuid, mid)
            .filter(|m| m.live())
            .map(|m| m.scope.clone());
        if efficacy {
            let Some(old) = existing else {
                return Ok(PutOutcome::Discarded);
            };
            if !same_except_lifetime(&old, &scope) {
                return Err(Refusal::BadRequest(
                    "an efficacy update must repeat the mitigation's fields unchanged".into(),
                ));
            }
            let still_attacked = scope.attack_status == Some(1);
            self.ledger.update(cuid, mid, |m| {
                if still_attacked {
                    // The client still sees an attack: not attack-stopped, whatever we drop.
                    m.activity.last_drop_at = Some(now);
                }
                m.client_attack = scope.efficacy_attack.clone();
            });
            self.refresh(cuid, mid, scope.lifetime, &policy, now);
            return Ok(PutOutcome::Changed);
        }
        if let Some(old) = &existing {
            if same_except_lifetime(old, &scope) {
                self.refresh(cuid, mid, scope.lifetime, &policy, now);
                return Ok(PutOutcome::Changed);
            }
            return Err(Refusal::BadRequest(format!(
                "mid {mid} exists with other fields; use a higher mid to change a mitigation"
            )));
        }
        // Same client, overlapping scope, same trigger: the higher mid wins. A request with
        // trigger-mitigation true deactivates an overlapping preconfigured one that signal
        // loss made active (RFC 9132 §4.4.1: status 7, then 8).
        let mut superseded = Vec::new();
        let mut deactivated = Vec::new();
        for (other_mid, m) in self.ledger.of(cuid).into_iter().flatten() {
            if !m.live() || !scopes_overlap(&m.scope, &scope) || !self.same_domain(m) {
                continue; // another cdid's: a conflict with another client (below)
            }
            if scope.trigger_mitigation && !m.scope.trigger_mitigation && m.installed {
                deactivated.push(*other_mid);
                continue;
            }
            if m.scope.trigger_mitigation == scope.trigger_mitigation
                && m.terminating_until.is_none()
            {
                if *other_mid > mid {
                    return Err(Refusal::Conflict {
                        cause: 1,
                        mid: Some(*other_mid),
                        diagnostic: format!("mid {other_mid} of this client overlaps and is newer"),
                    });
                }
                superseded.push(*other_mid);
            }
        }
        // Other clients' active mitigations on overlapping targets: refused (policy), with
        // the contested targets and when the other mitigation's lifetime runs out.
        if let Some((_, _, _, other)) = self.ledger.iter().find(|(c, _, _, m)| {
            (*c != cuid || !self.same_domain(m)) && m.installed && scopes_overlap(&m.scope, &scope)
        }) {
            let targets = scope
                .target_prefix
                .iter()
                .filter(|p| other.scope.target_prefix.iter().any(|o| overlaps(p, o)))
                .cloned()
                .collect();
            return Err(Refusal::HeldByOther {
                targets,
                retry_timer: other
                    .expires
                    .map(|e| e.saturating_sub(now).min(u32::MAX as u64) as u32),
                diagnostic: "another client's active mitigation overlaps these targets".into(),
            });
        }
        let granted = grant(scope.lifetime, &policy);
        let id = self.next_id;
        self.next_id += 1;
        // Take out what this request supersedes first (its targets may be the same
        // prefixes); if the new one cannot be installed, the operation is undone.
        for old_mid in &deactivated {
            self.uninstall(cuid, *old_mid);
        }
        for old_mid in &superseded {
            self.remove(cuid, *old_mid);
        }
        let mut m = Mitigation {
            scope: Scope {
                lifetime: granted,
                ..scope
            },
            status: Status::SignalLoss,
            start: None,
            expires: expiry(granted, now),
            terminating_until: None,
            installed: false,
            datapath_id: id,
            ended_at: None,
            announce_until: None,
            activity: Activity::default(),
            client_attack: Vec::new(),
            cdid: self.request_cdid().map(str::to_string),
            unfit: None,
        };
        if m.scope.trigger_mitigation {
            self.install_or_escalate(&mut m, &policy, now)?;
        }
        for old_mid in &deactivated {
            self.announce(cuid, *old_mid, Status::Withdrawn, now);
        }
        self.ledger.insert(cuid, client, mid, m);
        Ok(PutOutcome::Created { granted })
    }

    /// The spec of a mitigation: its scope, the client's policy and pipe capacity, the
    /// talkers it reported, and its live data-channel ACL entries after the policy's.
    pub(super) fn spec(&self, m: &Mitigation, policy: &ClientPolicy) -> MitigationSpec {
        let mut acl = policy.acl.clone();
        acl.extend(self.acls.live(&policy.name, true));
        MitigationSpec {
            protocols: m.scope.target_protocol.clone(),
            ports: m
                .scope
                .target_port_range
                .iter()
                .map(|r| PortRange {
                    lower: r.lower,
                    upper: r.upper,
                })
                .collect(),
            countermeasures: self.countermeasures(policy),
            drop_list: self.talkers_to_drop(&policy.name, &m.scope.target_prefix),
            acl,
            ..MitigationSpec::new(m.id().raw(), m.scope.target_prefix.clone())
        }
    }

    /// Puts a mitigation into the datapath and marks it active. The client's baseline first
    /// gives up prefixes this one holds exactly (a prefix belongs to one mitigation) and
    /// takes on its activate-when-mitigating entries; a baseline that cannot be updated is
    /// logged, the mitigation's own install decides.
    pub(super) fn install(
        &mut self,
        m: &mut Mitigation,
        policy: &ClientPolicy,
        now: u64,
    ) -> Result<(), Refusal> {
        if let Err(e) = self.sync_baseline(&policy.name, Some(&m.scope.target_prefix)) {
            tracing::error!("ACL baseline of {}: {e}", policy.name);
        }
        self.put_in(m, policy, now)
    }

    /// Installs a mitigation's spec and marks it active (its baseline is the caller's).
    pub(super) fn put_in(
        &mut self,
        m: &mut Mitigation,
        policy: &ClientPolicy,
        now: u64,
    ) -> Result<(), Refusal> {
        self.put_in_datapath(m, policy, now).map_err(refusal)
    }

    /// [`Engine::put_in`], with the datapath's own error (which tells an unfit spec).
    pub(super) fn put_in_datapath(
        &mut self,
        m: &mut Mitigation,
        policy: &ClientPolicy,
        now: u64,
    ) -> Result<(), crate::datapath::DatapathError> {
        self.dp.install(self.spec(m, policy))?;
        m.installed = true;
        m.status = Status::SuccessfullyMitigated;
        m.start = Some(now);
        m.activity = Activity {
            checked_at: now,
            ..Activity::default()
        };
        Ok(())
    }

    /// The client's countermeasures: its policy, with the scope-wide cap lowered to the
    /// pipe capacity it told us (RFC 9244 §7.2), so cleaned traffic fits its link.
    pub(super) fn countermeasures(&self, policy: &ClientPolicy) -> Countermeasures {
        let mut c = policy.countermeasures.clone();
        let pipe = self
            .telemetry
            .get(&policy.name)
            .and_then(|t| t.pipe_bytes_per_second());
        if let Some(bps) = pipe {
            if c.scope_bps.is_none_or(|r| r.rate > bps) {
                c.scope_bps = Some(crate::datapath::Rate::new(bps));
            }
        }
        c
    }

    /// Installs the client's active mitigations again (their countermeasures or ACL
    /// entries changed): each whose spec changed, once, and its baseline.
    pub(super) fn reinstall_client(&mut self, client: &str) -> Result<(), Refusal> {
        let Some(policy) = self.policies.get(client).cloned() else {
            return Ok(());
        };
        let specs: Vec<MitigationSpec> = self
            .ledger
            .iter()
            .filter(|(_, c, _, m)| *c == client && m.installed)
            .map(|(_, _, _, m)| self.spec(m, &policy))
            .collect();
        // Same datapath ids: replaced atomically, counters kept. One that cannot take the
        // change keeps its rules; the others go on.
        let mut first_error = None;
        for spec in specs {
            if let Err(e) = self.dp.install(spec) {
                first_error.get_or_insert(refusal(e));
            }
        }
        if let Err(e) = self.sync_baseline(client, None) {
            first_error.get_or_insert(refusal(e));
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Takes a mitigation's rules out of the datapath, keeping the request.
    pub(super) fn uninstall(&mut self, cuid: &str, mid: u32) {
        let Some(m) = self.ledger.get(cuid, mid).filter(|m| m.installed) else {
            return;
        };
        let id = m.id();
        self.ledger.update(cuid, mid, |m| m.installed = false);
        self.take_out(cuid, id);
    }

    /// Removes a datapath mitigation of `cuid`'s client, keeps what its ACL entries
    /// counted, and updates the client's baseline.
    pub(super) fn take_out(&mut self, cuid: &str, id: DatapathId) {
        let counters = match self.dp.remove(id) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("removing {id}: {e}");
                None
            }
        };
        let Some(client) = self.ledger.client_of(cuid).map(str::to_string) else {
            return;
        };
        if let Some(c) = counters {
            self.acls.retire(&client, &c);
        }
        if let Err(e) = self.sync_baseline(&client, None) {
            tracing::error!("ACL baseline of {client}: {e}");
        }
    }

    /// A preconfigured request, just taken out of the datapath, announces `status` (3 or
    /// 7) for ANNOUNCE_SECONDS before it is armed again (8).
    pub(super) fn announce(&mut self, cuid: &str, mid: u32, status: Status, now: u64) {
        self.ledger.update(cuid, mid, |m| {
            m.status = status;
            m.start = None;
            m.announce_until = Some(now + ANNOUNCE_SECONDS);
        });
    }

    /// Ends a mitigation with `status` (6 or 7): out of the datapath, visible for
    /// ENDED_RETENTION more seconds.
    pub(super) fn end(&mut self, cuid: &str, mid: u32, status: Status, now: u64) {
        self.uninstall(cuid, mid);
        self.ledger.update(cuid, mid, |m| {
            m.status = status;
            m.ended_at = Some(now);
            m.terminating_until = None;
            m.announce_until = None;
        });
    }

    pub(super) fn refresh(
        &mut self,
        cuid: &str,
        mid: u32,
        asked: Lifetime,
        policy: &ClientPolicy,
        now: u64,
    ) {
        let granted = grant(asked, policy);
        self.ledger.update(cuid, mid, |m| {
            m.scope.lifetime = granted;
            m.expires = expiry(granted, now);
            if m.terminating_until.is_some() {
                // A renewed request during the terminating period makes it active again.
                m.terminating_until = None;
                m.status = if m.installed {
                    Status::SuccessfullyMitigated
                } else {
                    Status::SignalLoss
                };
            }
        });
    }

    pub(super) fn remove(&mut self, cuid: &str, mid: u32) {
        if let Some(m) = self.ledger.remove(cuid, mid) {
            if m.installed {
                self.take_out(cuid, m.id());
            }
        }
    }

    /// DELETE /mitigate/cuid/mid: always succeeds (2.02) unless it cannot be stored; an
    /// active mitigation keeps filtering for the active-but-terminating period.
    pub fn delete(&mut self, cuid: &str, mid: u32, now: u64) -> Result<(), Refusal> {
        let result = self
            .check_domain(cuid, mid)
            .and_then(|()| self.withdraw(cuid, mid, now));
        self.finish(result)
    }

    pub(super) fn withdraw(&mut self, cuid: &str, mid: u32, now: u64) -> Result<(), Refusal> {
        let Some(m) = self.ledger.get(cuid, mid) else {
            return Ok(());
        };
        if !m.installed {
            self.remove(cuid, mid);
            return Ok(());
        }
        let until = now + self.terminating;
        self.ledger.update(cuid, mid, |m| {
            m.status = Status::ClientWithdrawn;
            m.terminating_until = Some(until);
        });
        Ok(())
    }
}

/// The same request but for lifetime (a refresh), and attack-status and efficacy
/// telemetry (an efficacy update).
pub(super) fn same_except_lifetime(a: &Scope, b: &Scope) -> bool {
    Scope {
        lifetime: b.lifetime,
        attack_status: b.attack_status,
        efficacy_attack: b.efficacy_attack.clone(),
        ..a.clone()
    } == *b
}

pub(super) fn grant(asked: Lifetime, policy: &ClientPolicy) -> Lifetime {
    match asked {
        Lifetime::Indefinite if policy.allow_indefinite => Lifetime::Indefinite,
        Lifetime::Indefinite => Lifetime::Seconds(policy.max_lifetime),
        Lifetime::Seconds(s) => Lifetime::Seconds(s.min(policy.max_lifetime)),
    }
}

pub(super) fn expiry(l: Lifetime, now: u64) -> Option<u64> {
    match l {
        Lifetime::Indefinite => None,
        Lifetime::Seconds(s) => Some(now + s as u64),
    }
}
