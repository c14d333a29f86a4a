//! Session configuration per client (RFC 9132 §4.5): the current one (defaults until the
//! client sets one), replaced only by a higher sid, stored like mitigations.

use super::journal::{self, Change};
use super::{Engine, Refusal};
use crate::datapath::Mitigator;
use crate::signal::session_config::SessionConfig;

impl<M: Mitigator> Engine<M> {
    /// The configuration in force for a client (the defaults until it sets one).
    pub fn config(&self, client: &str) -> SessionConfig {
        self.configs.get(client).cloned().unwrap_or_default()
    }

    /// GET /config[/sid].
    pub fn config_get(&self, client: &str, sid: Option<u32>) -> Result<SessionConfig, Refusal> {
        let current = self.config(client);
        match sid {
            Some(s) if current.sid != Some(s) => {
                Err(Refusal::NotFound(format!("no session configuration {s}")))
            }
            _ => Ok(current),
        }
    }

    /// PUT /config/sid with the configuration it asks for (decoded over the current one):
    /// Ok(true) for a new sid (2.01), Ok(false) for the current one (2.04).
    pub fn config_put(
        &mut self,
        client: &str,
        sid: u32,
        mut next: SessionConfig,
    ) -> Result<bool, Refusal> {
        let current = self.config(client);
        if current.sid.is_some_and(|c| sid < c) {
            return Err(Refusal::BadRequest(format!(
                "sid {sid} is lower than the current {}: a new configuration needs a higher sid",
                current.sid.unwrap_or(0)
            )));
        }
        let created = current.sid != Some(sid);
        next.sid = Some(sid);
        let change = journal::document(&next).map(|doc| Change::SessionConfig {
            client: client.to_string(),
            doc: Some(doc),
        });
        self.stage(change);
        let previous = self.configs.insert(client.to_string(), next);
        let result = self.finish(Ok(created));
        if result.is_err() {
            self.restore_config(client, previous);
        }
        result
    }

    /// DELETE /config[/sid]: back to the defaults.
    pub fn config_delete(&mut self, client: &str) -> Result<(), Refusal> {
        self.stage(Ok(Change::SessionConfig {
            client: client.to_string(),
            doc: None,
        }));
        let previous = self.configs.remove(client);
        let result = self.finish(Ok(()));
        if result.is_err() {
            self.restore_config(client, previous);
        }
        result
    }

    fn restore_config(&mut self, client: &str, previous: Option<SessionConfig>) {
        match previous {
            Some(c) => self.configs.insert(client.to_string(), c),
            None => self.configs.remove(client),
        };
    }
}
