//! What happens as time passes: lifetimes and terminating periods run out, ended
//! mitigations are forgotten, preconfigured requests are re-armed, attacks stop (the drop
//! counters go quiet), and silent sessions are declared lost (RFC 9132 §4.7), which
//! activates the client's requests armed for signal loss.

use super::{Engine, Status, ACTIVITY_CHECK, ENDED_RETENTION};
use crate::datapath::Mitigator;

enum Due {
    End,
    Forget,
    Rearm,
    Check,
}

impl<M: Mitigator> Engine<M> {
    /// Runs the clock: expires lifetimes and terminating periods (status 6), forgets ended
    /// mitigations after ENDED_RETENTION, re-arms preconfigured requests after their
    /// announcement, and watches drop counters for the end of attacks (status 3; a
    /// preconfigured request is then taken out and re-armed). Returns (cuid, mid) of what
    /// ended now.
    pub fn tick(&mut self, now: u64) -> Vec<(String, u32)> {
        let due: Vec<(String, u32, Due)> = self
            .ledger
            .iter()
            .filter_map(|(cuid, _, mid, m)| {
                let what = if let Some(t) = m.ended_at {
                    (now >= t + ENDED_RETENTION).then_some(Due::Forget)
                } else if m.expires.is_some_and(|e| e <= now)
                    || m.terminating_until.is_some_and(|t| t <= now)
                {
                    Some(Due::End)
                } else if m.announce_until.is_some_and(|t| t <= now) {
                    Some(Due::Rearm)
                } else if m.installed && now >= m.activity.checked_at + ACTIVITY_CHECK {
                    Some(Due::Check)
                } else {
                    None
                };
                what.map(|w| (cuid.to_string(), mid, w))
            })
            .collect();
        self.measure(now);
        self.dp.maintain();
        let mut ended = Vec::new();
        for (cuid, mid, what) in due {
            match what {
                Due::End => {
                    self.end(&cuid, mid, Status::Terminated, now);
                    ended.push((cuid, mid));
                }
                Due::Forget => self.remove(&cuid, mid),
                Due::Rearm => {
                    self.ledger.update(&cuid, mid, |m| {
                        m.status = Status::SignalLoss;
                        m.announce_until = None;
                    });
                }
                Due::Check => self.check_activity(&cuid, mid, now),
            }
        }
        self.finish_unattended();
        self.tick_escalation(now);
        ended
    }

    /// Reads the drop counter of an active mitigation. Not stored (a restart watches
    /// afresh), so it changes the entry without the ledger unless the attack is over.
    fn check_activity(&mut self, cuid: &str, mid: u32, now: u64) {
        let Some(m) = self.ledger.get(cuid, mid) else {
            return;
        };
        let dropped = self
            .mitigator()
            .counters(m.id().raw())
            .ok()
            .flatten()
            .map(|c| c.dropped_total().packets);
        let quiet = self.attack_quiet;
        self.ledger.watch(cuid, mid, |m| {
            let a = &mut m.activity;
            if let Some(d) = dropped {
                if d != a.dropped_packets {
                    a.dropped_packets = d;
                    a.last_drop_at = Some(now);
                }
            }
            a.checked_at = now;
        });
        let Some(m) = self.ledger.get(cuid, mid) else {
            return;
        };
        if !m.scope.trigger_mitigation && m.quiet(quiet, now) {
            // Signal loss started it and the attack is over: nobody will withdraw it, so
            // the server does (3 announced, then 8).
            self.uninstall(cuid, mid);
            self.announce(cuid, mid, Status::Stopped, now);
        }
    }

    /// The heartbeat interval in force for a client's session (0: heartbeats off): its
    /// mitigating configuration while it has active mitigations, else its idle one.
    pub fn heartbeat_interval(&self, client: &str, cuid: &str) -> u64 {
        let config = self.configs.get(client).cloned().unwrap_or_default();
        if self.cuid_mitigating(cuid) {
            config.mitigating.heartbeat_interval()
        } else {
            config.idle.heartbeat_interval()
        }
    }

    fn cuid_mitigating(&self, cuid: &str) -> bool {
        self.ledger
            .of(cuid)
            .is_some_and(|m| m.values().any(|x| x.installed))
    }

    /// Records traffic from a client: its session is alive, for every cuid it holds (a
    /// heartbeat names none, and the session's certificate is the client's).
    pub fn seen(&mut self, client: &str, cuid: &str, now: u64) {
        let held: Vec<String> = self.cuids.of(client).map(str::to_string).collect();
        for other in held.iter().filter(|c| c.as_str() != cuid) {
            self.seen_cuid(client, other, now);
        }
        self.seen_cuid(client, cuid, now);
    }

    fn seen_cuid(&mut self, client: &str, cuid: &str, now: u64) {
        self.last_seen
            .insert(cuid.to_string(), (client.to_string(), now));
        if self.lost.remove(cuid) {
            // Back: preconfigured requests that could not be enforced are armed again.
            let failed: Vec<u32> = self.ledger.of(cuid).map_or(Vec::new(), |m| {
                m.iter()
                    .filter(|(_, m)| m.status == Status::ExceededCapability && !m.installed)
                    .map(|(k, _)| *k)
                    .collect()
            });
            for mid in failed {
                self.ledger
                    .update(cuid, mid, |m| m.status = Status::SignalLoss);
            }
            self.finish_unattended();
        }
    }

    /// Sessions silent for longer than the client's heartbeat interval times the missing
    /// heartbeats allowed (its idle or mitigating configuration, as it has active
    /// mitigations or not) are lost: their armed requests become active. Returns the cuids.
    pub fn detect_lost_sessions(&mut self, now: u64) -> Vec<String> {
        let mut lost = Vec::new();
        for (cuid, (client, seen)) in &self.last_seen {
            if self.lost.contains(cuid) {
                continue;
            }
            let config = self.configs.get(client).cloned().unwrap_or_default();
            let set = if self.cuid_mitigating(cuid) {
                &config.mitigating
            } else {
                &config.idle
            };
            let interval = set.heartbeat_interval();
            if interval == 0 {
                continue; // heartbeats switched off
            }
            if now.saturating_sub(*seen) > interval * set.missing_hb_allowed() {
                lost.push(cuid.clone());
            }
        }
        for cuid in &lost {
            self.lost.insert(cuid.clone());
            let activated = self.activate_armed(cuid, now);
            tracing::warn!(
                cuid,
                "session lost; activated armed mitigations {activated:?}"
            );
        }
        if !lost.is_empty() {
            self.finish_unattended();
        }
        lost
    }

    /// The client's session is lost: requests armed for signal loss become active.
    pub fn session_lost(&mut self, cuid: &str, now: u64) -> Vec<u32> {
        let activated = self.activate_armed(cuid, now);
        self.finish_unattended();
        activated
    }

    fn activate_armed(&mut self, cuid: &str, now: u64) -> Vec<u32> {
        let Some(client) = self.ledger.client_of(cuid).map(str::to_string) else {
            return Vec::new();
        };
        let Some(policy) = self.policies.get(&client).cloned() else {
            return Vec::new();
        };
        let armed: Vec<u32> = self.ledger.of(cuid).map_or(Vec::new(), |mits| {
            mits.iter()
                .filter(|(_, m)| !m.scope.trigger_mitigation && !m.installed && m.live())
                .map(|(k, _)| *k)
                .collect()
        });
        let mut activated = Vec::new();
        for mid in armed {
            let Some(mut m) = self.ledger.get(cuid, mid).cloned() else {
                continue;
            };
            // The client's active requests overlapping a preconfigured one are withdrawn
            // at once (RFC 9132 §4.4.1: no active-but-terminating period).
            let overlapping: Vec<u32> = self.ledger.of(cuid).map_or(Vec::new(), |mits| {
                mits.iter()
                    .filter(|(_, o)| {
                        o.scope.trigger_mitigation
                            && o.live()
                            && o.installed
                            && super::scopes_overlap(&o.scope, &m.scope)
                    })
                    .map(|(k, _)| *k)
                    .collect()
            });
            for other in overlapping {
                self.end(cuid, other, Status::Withdrawn, now);
            }
            m.announce_until = None;
            match self.install(&mut m, &policy, now) {
                Ok(()) => activated.push(mid),
                Err(r) => {
                    // Armed but beyond what this datapath can hold now: status 4.
                    tracing::error!("preconfigured mitigation {mid} of {cuid}: {r:?}");
                    m.status = Status::ExceededCapability;
                }
            }
            self.ledger.insert(cuid, &client, mid, m);
        }
        activated
    }
}
