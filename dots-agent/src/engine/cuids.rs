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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::MemoryMitigator;
    use crate::engine::journal::MemoryJournal;
    use crate::engine::ClientPolicy;

    fn engine(journal: &MemoryJournal) -> Engine<MemoryMitigator> {
        Engine::new(
            MemoryMitigator::new(),
            vec![
                ClientPolicy::fixture("client-a", &["198.51.100.0/24"]),
                ClientPolicy::fixture("client-b", &["203.0.113.0/24"]),
            ],
        )
        .with_journal(Box::new(journal.clone()))
    }

    #[test]
    fn a_cuid_is_held_by_its_first_client_across_a_restart() {
        let journal = MemoryJournal::new();
        let mut e = engine(&journal);
        e.claim_cuid("client-a", "uuid-1").unwrap();
        e.claim_cuid("client-a", "uuid-2").unwrap();
        e.claim_cuid("client-a", "uuid-1").unwrap();
        assert_eq!(journal.transactions(), 2, "a new binding is committed once");
        assert!(matches!(
            e.claim_cuid("client-b", "uuid-1"),
            Err(Refusal::Conflict { cause: 3, .. })
        ));
        // A restart: the store's bindings come back.
        let mut again = engine(&journal);
        again
            .restore(&journal.snapshot(), Vec::new(), Vec::new(), 0)
            .unwrap();
        assert_eq!(again.cuid_holder("uuid-2"), Some("client-a"));
        assert!(again.claim_cuid("client-b", "uuid-2").is_err());
        again.claim_cuid("client-b", "uuid-3").unwrap();
    }

    #[test]
    fn cuids_per_client_are_bounded_and_unstored_bindings_refused() {
        let journal = MemoryJournal::new();
        let mut e = engine(&journal);
        for i in 0..MAX_CUIDS_PER_CLIENT {
            e.claim_cuid("client-a", &format!("c{i}")).unwrap();
        }
        assert!(matches!(
            e.claim_cuid("client-a", "one-more"),
            Err(Refusal::Forbidden(_))
        ));
        journal.fail(true);
        assert!(matches!(
            e.claim_cuid("client-b", "unstored"),
            Err(Refusal::Unavailable(_))
        ));
        assert_eq!(
            e.cuid_holder("unstored"),
            None,
            "not bound without its record"
        );
    }
}
