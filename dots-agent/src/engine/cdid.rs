//! cdid (RFC 9132 §4.4.1.2): a server-domain gateway names the domain of the client it relays
//! for in the Uri-Path (`cdid=...` before `cuid`). Only gateways the operator trusts
//! (`[[client]] gateway = true`) may: from any other client a cdid is refused (4.03), so a
//! client cannot pose as another domain and a misconfigured gateway learns why. Behind one
//! gateway (one cuid) each cdid is a client of its own: its mitigations conflict with the
//! other cdids' as another client's would, and a request of one cdid cannot change, withdraw
//! or read the mitigations of another.

use std::collections::BTreeSet;

use super::{Engine, Mitigation, Refusal};
use crate::datapath::Mitigator;

#[derive(Default)]
pub(super) struct CdidState {
    /// Clients trusted to supply cdid.
    trusted: BTreeSet<String>,
    /// The cdid of the request at hand (set around one request).
    acting: Option<String>,
}

impl<M: Mitigator> Engine<M> {
    /// The clients trusted to supply cdid (server-domain gateways).
    pub fn with_cdid_gateways(mut self, clients: impl IntoIterator<Item = String>) -> Self {
        self.set_cdid_gateways(clients);
        self
    }

    /// Replaces the trusted gateways (a reload).
    pub fn set_cdid_gateways(&mut self, clients: impl IntoIterator<Item = String>) {
        self.cdid.trusted = clients.into_iter().collect();
    }

    /// Before a request of `client` whose path carries `cdid`: Err (4.03) when the client
    /// may not supply one. Until [`Engine::end_request_cdid`], the request acts for that
    /// domain.
    pub fn begin_request_cdid(&mut self, client: &str, cdid: Option<&str>) -> Result<(), Refusal> {
        self.cdid.acting = None;
        let Some(cdid) = cdid else {
            return Ok(());
        };
        if !self.cdid.trusted.contains(client) {
            return Err(Refusal::Forbidden(format!(
                "cdid {cdid:?} refused: client {client} is not a trusted DOTS gateway (only \
                 server-domain gateways configured with `gateway = true` may name their \
                 clients' domain, RFC 9132 §4.4.1.2)"
            )));
        }
        self.cdid.acting = Some(cdid.to_string());
        Ok(())
    }

    /// After the request: no cdid applies.
    pub fn end_request_cdid(&mut self) {
        self.cdid.acting = None;
    }

    /// The cdid of the request at hand.
    pub fn request_cdid(&self) -> Option<&str> {
        self.cdid.acting.as_deref()
    }

    /// Whether a mitigation belongs to the domain the request at hand acts for.
    pub(super) fn same_domain(&self, m: &Mitigation) -> bool {
        m.cdid == self.cdid.acting
    }

    /// 4.03 when the request at hand may not touch mitigation `mid` (another domain's).
    pub(super) fn check_domain(&self, cuid: &str, mid: u32) -> Result<(), Refusal> {
        match self.ledger.get(cuid, mid) {
            Some(m) if !self.same_domain(m) => Err(Refusal::Forbidden(format!(
                "mid {mid} belongs to {}, not to {}",
                domain_name(m.cdid.as_deref()),
                domain_name(self.request_cdid())
            ))),
            _ => Ok(()),
        }
    }

    /// The cdid a mitigation was requested for (None: the client's own).
    pub fn cdid_of(&self, cuid: &str, mid: u32) -> Option<String> {
        self.ledger.get(cuid, mid)?.cdid.clone()
    }
}

fn domain_name(cdid: Option<&str>) -> String {
    match cdid {
        Some(c) => format!("client domain cdid={c}"),
        None => "the gateway's own domain (no cdid)".into(),
    }
}
