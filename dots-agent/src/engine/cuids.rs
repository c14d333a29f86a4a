//! Which client may use which cuid (RFC 9132 §4.4.1.1). The RFC recommends the hash of
//! the certificate's public key but lets a client use another cuid (a UUID after a
//! collision; go-dots takes it from its operator), so the server does not insist on the
//! hash: the first configured client to use a cuid holds it, may hold several, and no other
//! client may use one it holds (4.09 with conflict-cause 3, cuid collision). Bindings are
//! stored, so a restart keeps them.

use std::collections::BTreeMap;

use super::journal::Change;
use super::{Engine, Refusal};
use crate::datapath::Mitigator;

/// cuids one client may hold: each may carry its own mitigations and data, so the bound
/// keeps a client from growing the server's state without limit by inventing cuids.
pub const MAX_CUIDS_PER_CLIENT: usize = 16;

/// The cuid -> client bindings, with a count per client.
#[derive(Default)]
pub(super) struct Cuids {
    holder: BTreeMap<String, String>,
    held: BTreeMap<String, usize>,
}

impl Cuids {
    fn insert(&mut self, cuid: &str, client: &str) {
        if self.holder.insert(cuid.into(), client.into()).is_none() {
            *self.held.entry(client.into()).or_default() += 1;
        }
    }

    /// The cuids `client` holds.
    pub(super) fn of<'a>(&'a self, client: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.holder
            .iter()
            .filter(move |(_, c)| c.as_str() == client)
            .map(|(cuid, _)| cuid.as_str())
    }
}

impl<M: Mitigator> Engine<M> {
    /// Lets `client` act as `cuid`: Ok if it holds it already or the cuid is free (then
    /// the binding is committed first); a cuid another client holds is refused with 4.09
    /// conflict-cause 3 (cuid collision: the client should pick another, RFC 9132
    /// §4.4.1.3); a client at [`MAX_CUIDS_PER_CLIENT`] gets 4.03.
    pub fn claim_cuid(&mut self, client: &str, cuid: &str) -> Result<(), Refusal> {
        match self.cuids.holder.get(cuid) {
            Some(c) if c == client => return Ok(()),
            Some(_) => {
                return Err(Refusal::Conflict {
                    cause: 3,
                    mid: None,
                    diagnostic: format!(
                        "cuid {cuid} is held by another client: use the hash of your \
                         certificate's public key or another unique cuid"
                    ),
                })
            }
            None => {}
        }
        if self.cuids.held.get(client).copied().unwrap_or(0) >= MAX_CUIDS_PER_CLIENT {
            return Err(Refusal::Forbidden(format!(
                "client {client} uses {MAX_CUIDS_PER_CLIENT} cuids already, the most it may"
            )));
        }
        let change = Change::CuidBinding {
            cuid: cuid.into(),
            client: Some(client.into()),
        };
        if let Err(e) = self.journal.commit(&[change]) {
            self.commit_failures += 1;
            return Err(Refusal::Unavailable(format!(
                "the binding of cuid {cuid} could not be stored: {e}"
            )));
        }
        self.cuids.insert(cuid, client);
        Ok(())
    }

    /// The client holding `cuid`, if any.
    pub fn cuid_holder(&self, cuid: &str) -> Option<&str> {
        self.cuids.holder.get(cuid).map(String::as_str)
    }

    /// Takes back stored bindings, and binds the cuids of stored mitigations and
    /// data-channel clients to their clients (stores written before bindings were kept).
    pub(super) fn restore_cuids(
        &mut self,
        stored: &[(String, String)],
        derived: impl IntoIterator<Item = (String, String)>,
    ) {
        for (cuid, client) in stored {
            self.cuids.insert(cuid, client);
        }
        for (cuid, client) in derived {
            if !self.cuids.holder.contains_key(&cuid) {
                self.cuids.insert(&cuid, &client);
            }
        }
    }
}
