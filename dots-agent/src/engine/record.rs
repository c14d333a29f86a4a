//! A mitigation as the store keeps it: one JSON document per (cuid, mid). Fields added
//! after the first release default when absent, so older rows still read.

use ipnet::IpNet;

use super::{Activity, Mitigation};
use crate::datapath::PortRange;
use crate::signal::message::{AclActivation, ActivationType, Lifetime, Scope, Status};

/// A mitigation as the store keeps it.
#[derive(serde::Serialize, serde::Deserialize)]
pub(super) struct Record {
    client: String,
    targets: Vec<IpNet>,
    ports: Vec<PortRange>,
    protocols: Vec<u8>,
    /// Granted lifetime in seconds, -1: indefinite.
    lifetime: i64,
    trigger_mitigation: bool,
    acl_list: Vec<(String, u8)>,
    /// The request's alias names (their targets are in `targets`); absent in older rows.
    #[serde(default)]
    alias_name: Vec<String>,
    status: u8,
    start: Option<u64>,
    expires: Option<u64>,
    terminating_until: Option<u64>,
    installed: bool,
    datapath_id: u64,
    #[serde(default)]
    ended_at: Option<u64>,
    #[serde(default)]
    announce_until: Option<u64>,
    /// The client domain a trusted gateway named (cdid); absent in older rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    cdid: Option<String>,
}

impl Record {
    pub(super) fn of(client: &str, m: &Mitigation) -> Record {
        Record {
            client: client.to_string(),
            targets: m.scope.target_prefix.clone(),
            ports: m.scope.target_port_range.clone(),
            protocols: m.scope.target_protocol.clone(),
            lifetime: match m.scope.lifetime {
                Lifetime::Indefinite => -1,
                Lifetime::Seconds(s) => s as i64,
            },
            trigger_mitigation: m.scope.trigger_mitigation,
            alias_name: m.scope.alias_name.clone(),
            acl_list: m
                .scope
                .acl_list
                .iter()
                .map(|a| (a.acl_name.clone(), a.activation_type as u8))
                .collect(),
            status: m.status as u8,
            start: m.start,
            expires: m.expires,
            terminating_until: m.terminating_until,
            installed: m.installed,
            datapath_id: m.datapath_id,
            ended_at: m.ended_at,
            announce_until: m.announce_until,
            cdid: m.cdid.clone(),
        }
    }

    pub(super) fn mitigation(self) -> (String, Mitigation) {
        let lifetime = if self.lifetime < 0 {
            Lifetime::Indefinite
        } else {
            Lifetime::Seconds(self.lifetime as u32)
        };
        let mut scope = Scope::new(self.targets, lifetime);
        scope.target_port_range = self.ports;
        scope.target_protocol = self.protocols;
        scope.trigger_mitigation = self.trigger_mitigation;
        scope.alias_name = self.alias_name;
        scope.acl_list = self
            .acl_list
            .into_iter()
            .map(|(acl_name, t)| AclActivation {
                acl_name,
                activation_type: match t {
                    2 => ActivationType::Immediate,
                    3 => ActivationType::Deactivate,
                    _ => ActivationType::ActivateWhenMitigating,
                },
            })
            .collect();
        let m = Mitigation {
            scope,
            // A stored code outside 1-8 (a damaged row) reads as signal loss.
            status: Status::from_code(self.status.into()).unwrap_or(Status::SignalLoss),
            start: self.start,
            expires: self.expires,
            terminating_until: self.terminating_until,
            installed: self.installed,
            datapath_id: self.datapath_id,
            ended_at: self.ended_at,
            announce_until: self.announce_until,
            activity: Activity::default(),
            client_attack: Vec::new(),
            cdid: self.cdid,
            unfit: None,
        };
        (self.client, m)
    }
}
