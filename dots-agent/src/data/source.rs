//! The data channel as the engine asks it ([`DataSource`]): `alias-name` in a mitigation
//! request resolves through the client's aliases, and `acl-list` (RFC 9133) sets its ACLs'
//! activation types, planned first and made once the engine has stored the request.

use super::model::Activation;
use super::state::{ClientData, DataChannel, Response};
use crate::engine::{AclEdit, AliasTargets, DataSource};
use crate::signal::message::{AclActivation, ActivationType};

/// The data channel as the engine asks it: `alias-name` resolves through the client's
/// aliases, `acl-list` (RFC 9133) sets its ACLs' activation types. It shares the channel
/// with the HTTPS side (both run on the engine's thread, one at a time).
#[derive(Clone)]
pub struct SharedData(pub std::sync::Arc<std::sync::Mutex<DataChannel>>);

impl SharedData {
    pub fn new(channel: DataChannel) -> Self {
        SharedData(std::sync::Arc::new(std::sync::Mutex::new(channel)))
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, DataChannel> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl DataSource for SharedData {
    fn alias(&self, cuid: &str, name: &str) -> Option<AliasTargets> {
        let a = self.lock().alias(cuid, name)?;
        Some(AliasTargets {
            prefixes: a.target_prefix,
            ports: a
                .target_port_range
                .iter()
                .map(|r| crate::datapath::PortRange {
                    lower: r.lower_port,
                    upper: r.upper_port,
                })
                .collect(),
            protocols: a.target_protocol,
            names: a.target_fqdn.len() + a.target_uri.len(),
        })
    }

    fn plan_acl_list(
        &self,
        cuid: &str,
        acls: &[AclActivation],
    ) -> std::result::Result<AclEdit, String> {
        let dc = self.lock();
        let data = dc.with_acl_list(cuid, acls)?;
        let edit = dc
            .plan(cuid, Some(data), Response::empty(0))
            .map_err(|e| e.message)?;
        Ok(AclEdit {
            client: edit.client,
            entries: edit.entries.unwrap_or_default(),
            change: edit.change,
        })
    }

    fn apply_acl_list(&mut self, cuid: &str, acls: &[AclActivation]) {
        let mut dc = self.lock();
        if let Ok(data) = dc.with_acl_list(cuid, acls) {
            dc.clients.insert(cuid.to_string(), data);
        }
    }
}

impl DataChannel {
    /// RFC 9133 filter control: the client's data with the named ACLs (all must exist)
    /// set to these activation types.
    fn with_acl_list(
        &self,
        cuid: &str,
        acls: &[AclActivation],
    ) -> std::result::Result<ClientData, String> {
        let Some(d) = self.clients.get(cuid) else {
            return Err(
                "acl-list: this client has no ACLs (not registered on the data channel)".into(),
            );
        };
        if let Some(a) = acls
            .iter()
            .find(|a| !d.acls.iter().any(|x| x.item.name == a.acl_name))
        {
            return Err(format!("acl-list: unknown acl-name {:?}", a.acl_name));
        }
        let mut d = d.clone();
        for a in acls {
            let activation = match a.activation_type {
                ActivationType::ActivateWhenMitigating => Activation::WhenMitigating,
                ActivationType::Immediate => Activation::Immediate,
                ActivationType::Deactivate => Activation::Deactivate,
            };
            for x in d.acls.iter_mut().filter(|x| x.item.name == a.acl_name) {
                x.item.activation_type = Some(activation.label().to_string());
            }
        }
        Ok(d)
    }
}
