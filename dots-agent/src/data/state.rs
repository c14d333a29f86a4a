//! The data channel's state: registrations, aliases and ACLs per cuid, and how they
//! change. A request (or an expiry) that changes a client's data is planned as an [`Edit`],
//! which the engine applies to the datapath and stores in one transaction before
//! [`DataChannel::apply`] makes it; so a change the datapath refuses, or the store cannot
//! record, changes nothing. Also the restart: the stored documents, and every client's ACL
//! entries for the engine.

use std::collections::BTreeMap;

use ipnet::IpNet;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::model::{Acl, Activation, Alias};
use super::restconf::{ErrorTag, RestconfError};
use crate::engine::journal::{self, Change};
use crate::engine::AclEntries;
use crate::signal::message::ActivationType;

#[derive(Clone, Debug, PartialEq)]
pub struct Response {
    pub status: u16,
    pub body: Option<Value>,
}

impl Response {
    pub(super) fn empty(status: u16) -> Self {
        Response { status, body: None }
    }
    pub(super) fn json(status: u16, body: Value) -> Self {
        Response {
            status,
            body: Some(body),
        }
    }
}

impl From<RestconfError> for Response {
    fn from(e: RestconfError) -> Self {
        Response::json(e.status(), e.body())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub(super) struct Expiring<T> {
    pub(super) item: T,
    /// Epoch seconds.
    pub(super) expires: u64,
}

/// The stored data-channel documents (cuid, JSON) that do not decode, named.
pub fn unreadable(docs: &[(String, String)]) -> Vec<String> {
    docs.iter()
        .filter_map(|(cuid, doc)| {
            serde_json::from_str::<ClientData>(doc)
                .err()
                .map(|e| format!("data-channel client {cuid}: {e}"))
        })
        .collect()
}

/// One registered client, as stored.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub(super) struct ClientData {
    /// Configured client name (certificate CN).
    pub(super) name: String,
    pub(super) aliases: Vec<Expiring<Alias>>,
    /// In the client's order (RESTCONF `insert`/`point`).
    pub(super) acls: Vec<Expiring<Acl>>,
}

pub struct DataChannel {
    pub(super) clients: BTreeMap<String, ClientData>,
    /// Client name -> configured prefixes.
    pub(super) prefixes: BTreeMap<String, Vec<IpNet>>,
    /// The change the request being routed makes (see [`DataChannel::handle`]).
    pub(super) staged: Option<Edit>,
    /// A DOTS gateway (no filter of its own): ACL writes are answered 501 (`gateway.rs`).
    pub(super) gateway: bool,
}

pub(super) type Result<T> = std::result::Result<T, RestconfError>;

pub(super) fn activation_type(a: Activation) -> ActivationType {
    match a {
        Activation::WhenMitigating => ActivationType::ActivateWhenMitigating,
        Activation::Immediate => ActivationType::Immediate,
        Activation::Deactivate => ActivationType::Deactivate,
    }
}

/// A change to one client's data, not made yet.
#[derive(Debug)]
pub struct Edit {
    pub cuid: String,
    /// The configured client it belongs to.
    pub client: String,
    data: Option<ClientData>,
    /// The client's ACL entries after the change, if they change.
    pub entries: Option<AclEntries>,
    /// Its document as it will be stored.
    pub change: Change,
    /// The answer once it is made.
    pub response: Response,
}

impl DataChannel {
    pub fn new(prefixes: BTreeMap<String, Vec<IpNet>>) -> DataChannel {
        DataChannel {
            clients: BTreeMap::new(),
            prefixes,
            staged: None,
            gateway: false,
        }
    }

    /// Serves as a DOTS gateway's data channel (ACLs are not relayed: 501).
    pub fn set_gateway(&mut self, gateway: bool) {
        self.gateway = gateway;
    }

    /// The configured clients' prefixes after a reload of server.toml.
    pub fn set_prefixes(&mut self, prefixes: BTreeMap<String, Vec<IpNet>>) {
        self.prefixes = prefixes;
    }

    /// Loads the stored documents (cuid, JSON). Data of clients no longer configured is
    /// dropped: the returned changes delete it.
    pub fn restore(
        prefixes: BTreeMap<String, Vec<IpNet>>,
        docs: &[(String, String)],
    ) -> (DataChannel, Vec<Change>) {
        let mut dc = DataChannel::new(prefixes);
        let mut changes = Vec::new();
        for (cuid, doc) in docs {
            let data: ClientData = match serde_json::from_str(doc) {
                Ok(d) => d,
                Err(e) => {
                    tracing::error!(
                        "stored data-channel client {cuid} is unreadable, skipped: {e}"
                    );
                    continue;
                }
            };
            if !dc.prefixes.contains_key(&data.name) {
                tracing::warn!(
                    "data channel: client {} is no longer configured; its data is dropped",
                    data.name
                );
                changes.push(Change::DataClient {
                    cuid: cuid.clone(),
                    doc: None,
                });
                continue;
            }
            dc.clients.insert(cuid.clone(), data);
        }
        (dc, changes)
    }

    /// Every client's ACL entries, for the engine at a restart.
    pub fn acl_entries(&self) -> Vec<(String, AclEntries)> {
        let mut out: BTreeMap<String, AclEntries> = BTreeMap::new();
        for (cuid, data) in &self.clients {
            match self.entries(data) {
                Ok(e) => out.entry(data.name.clone()).or_default().extend(e),
                Err(e) => tracing::error!("stored ACLs of {cuid} no longer map: {}", e.message),
            }
        }
        out.into_iter().collect()
    }

    /// The client's datapath entries, all its ACLs in order.
    pub(super) fn entries(&self, data: &ClientData) -> Result<AclEntries> {
        let allowed = self.prefixes.get(&data.name).cloned().unwrap_or_default();
        let mut out = Vec::new();
        for a in &data.acls {
            let act = activation_type(a.item.activation());
            out.extend(a.item.entries(&allowed)?.into_iter().map(|e| (act, e)));
        }
        Ok(out)
    }

    /// The change of a client's data to `data` (None: unregistered), and what it means for
    /// the datapath and the store.
    pub(super) fn plan(
        &self,
        cuid: &str,
        data: Option<ClientData>,
        response: Response,
    ) -> Result<Edit> {
        let old = self.clients.get(cuid);
        let client = match (&data, old) {
            (Some(d), _) => d.name.clone(),
            (None, Some(o)) => o.name.clone(),
            (None, None) => String::new(),
        };
        let new_entries = match &data {
            Some(d) => self.entries(d)?,
            None => Vec::new(),
        };
        let old_entries = match old {
            Some(o) => self.entries(o).unwrap_or_default(),
            None => Vec::new(),
        };
        let doc = match &data {
            Some(d) => Some(
                journal::document(d)
                    .map_err(|e| RestconfError::new(ErrorTag::OperationFailed, e.0))?,
            ),
            None => None,
        };
        Ok(Edit {
            cuid: cuid.to_string(),
            client,
            entries: (new_entries != old_entries).then_some(new_entries),
            change: Change::DataClient {
                cuid: cuid.to_string(),
                doc,
            },
            data,
            response,
        })
    }

    /// Routing found that the request changes a client's data: the change waits in
    /// `staged` for [`DataChannel::handle`] to hand it out.
    pub(super) fn commit(&mut self, cuid: &str, data: Option<ClientData>) -> Result<()> {
        if data.is_none() && !self.clients.contains_key(cuid) {
            return Ok(());
        }
        self.staged = Some(self.plan(cuid, data, Response::empty(0))?);
        Ok(())
    }

    /// Makes a change the engine has applied and stored; returns its answer.
    pub fn apply(&mut self, edit: Edit) -> Response {
        match edit.data {
            Some(d) => self.clients.insert(edit.cuid, d),
            None => self.clients.remove(&edit.cuid),
        };
        edit.response
    }

    /// Expired aliases and ACLs: one edit per client that has any.
    pub fn expire(&self, now: u64) -> Vec<Edit> {
        let mut out = Vec::new();
        for (cuid, d) in &self.clients {
            if !d.aliases.iter().any(|a| a.expires <= now)
                && !d.acls.iter().any(|a| a.expires <= now)
            {
                continue;
            }
            let mut d = d.clone();
            d.aliases.retain(|a| a.expires > now);
            d.acls.retain(|a| a.expires > now);
            tracing::info!(cuid, "data channel: aliases/ACLs expired");
            match self.plan(cuid, Some(d), Response::empty(204)) {
                Ok(e) => out.push(e),
                Err(e) => tracing::error!(cuid, "expiring ACLs: {}", e.message),
            }
        }
        out
    }
}
