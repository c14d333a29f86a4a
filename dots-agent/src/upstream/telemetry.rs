//! Pre-or-ongoing-mitigation telemetry (RFC 9244 §8) relayed upstream with the same
//! mapping as mitigations: each downstream (cuid, tmid) gets a tmid of the server's own
//! upstream session, stored with the relay's rows (key `tm/cuid/tmid`), so a restart keeps
//! it. The report goes up as the engine resolved it (an alias-name's targets already among
//! its prefixes, this hop's aliases not named) with its mid-list mapped to our upstream
//! mids (a mitigation not relayed is left out). A report the downstream client supersedes
//! or deletes is deleted upstream. Telemetry setup (/tm-setup) stays on each hop, as
//! session configuration does: it configures what each hop measures and sends.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::engine::journal::{document, Change, JournalError};
use crate::signal::telemetry::{encode_pre_mitigation, PreMitigation};

/// Store keys of relayed telemetry start with this.
pub const KEY_PREFIX: &str = "tm/";

/// One relayed report, as stored.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TmRow {
    pub cuid: String,
    pub tmid: u32,
    pub client: String,
    pub upstream_tmid: u32,
    /// The PUT /tm body relayed, and its version (each new body, +1).
    pub body: Vec<u8>,
    pub version: u64,
    /// Superseded or deleted downstream: deleted upstream, then forgotten.
    pub withdrawn: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cdid: Option<String>,
}

pub fn key(cuid: &str, tmid: u32) -> String {
    format!("{KEY_PREFIX}{cuid}/{tmid}")
}

/// What one upstream tmid should be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TmWant {
    Present {
        body: Vec<u8>,
        version: u64,
        cdid: Option<String>,
    },
    Absent {
        cdid: Option<String>,
    },
}

/// What the relay wants of upstream's telemetry, by upstream tmid.
pub type TmDesired = BTreeMap<u32, TmWant>;

enum Edit {
    Put(TmRow),
    Remove(String),
}

pub(super) struct TmRelay {
    rows: BTreeMap<String, TmRow>,
    pending: Vec<Edit>,
    desired: watch::Sender<TmDesired>,
    /// Upstream's refusal of a report (code and diagnostic), by upstream tmid.
    refused: BTreeMap<u32, String>,
}

impl TmRelay {
    pub(super) fn new(rows: BTreeMap<String, TmRow>) -> TmRelay {
        let relay = TmRelay {
            rows,
            pending: Vec::new(),
            desired: watch::channel(TmDesired::new()).0,
            refused: BTreeMap::new(),
        };
        relay.publish();
        relay
    }

    pub(super) fn subscribe(&self) -> watch::Receiver<TmDesired> {
        self.desired.subscribe()
    }

    fn publish(&self) {
        let want: TmDesired = self
            .rows
            .values()
            .map(|r| {
                let cdid = r.cdid.clone();
                let w = match r.withdrawn {
                    true => TmWant::Absent { cdid },
                    false => TmWant::Present {
                        body: r.body.clone(),
                        version: r.version,
                        cdid,
                    },
                };
                (r.upstream_tmid, w)
            })
            .collect();
        self.desired.send_if_modified(|d| {
            let changed = *d != want;
            *d = want;
            changed
        });
    }

    fn current(&self, k: &str) -> Option<TmRow> {
        for e in self.pending.iter().rev() {
            match e {
                Edit::Put(r) if key(&r.cuid, r.tmid) == k => return Some(r.clone()),
                Edit::Remove(x) if x == k => return None,
                _ => {}
            }
        }
        self.rows.get(k).cloned()
    }

    fn put(&mut self, row: TmRow) -> Result<Change, JournalError> {
        let k = key(&row.cuid, row.tmid);
        let doc = document(&row);
        self.pending.push(Edit::Put(row));
        Ok(Change::Upstream {
            key: k,
            doc: Some(doc?),
        })
    }

    fn next_upstream_tmid(&self) -> u32 {
        let pending = self.pending.iter().filter_map(|e| match e {
            Edit::Put(r) => Some(r.upstream_tmid),
            Edit::Remove(_) => None,
        });
        self.rows
            .values()
            .map(|r| r.upstream_tmid)
            .chain(pending)
            .max()
            .unwrap_or(0)
            + 1
    }

    /// A client's reports changed: `report` (resolved, mid-list already mapped) is its
    /// report `tmid` now (None: deleted); `keep` are the tmids it still has. Returns the
    /// changes to store.
    pub(super) fn changed(
        &mut self,
        cuid: &str,
        client: &str,
        tmid: Option<u32>,
        report: Option<&PreMitigation>,
        keep: &[u32],
        cdid: Option<String>,
    ) -> Vec<Result<Change, JournalError>> {
        let mut out = Vec::new();
        let gone: Vec<TmRow> = self
            .rows
            .values()
            .filter(|r| r.cuid == cuid && !r.withdrawn && !keep.contains(&r.tmid))
            .filter(|r| report.is_none() || Some(r.tmid) != tmid)
            .cloned()
            .collect();
        for r in gone {
            out.push(self.put(TmRow {
                withdrawn: true,
                ..r
            }));
        }
        let (Some(tmid), Some(report)) = (tmid, report) else {
            return out;
        };
        let body = encode_pre_mitigation(&[(None, report.clone())]);
        let row = match self.current(&key(cuid, tmid)) {
            Some(r) if r.body == body && !r.withdrawn => return out,
            Some(r) => TmRow {
                body,
                version: r.version + 1,
                withdrawn: false,
                ..r
            },
            None => TmRow {
                cuid: cuid.to_string(),
                tmid,
                client: client.to_string(),
                upstream_tmid: self.next_upstream_tmid(),
                body,
                version: 1,
                withdrawn: false,
                cdid,
            },
        };
        out.push(self.put(row));
        out
    }

    /// Upstream no longer holds `upstream_tmid`: the mapping ends.
    pub(super) fn deleted(&mut self, upstream_tmid: u32) -> Vec<Result<Change, JournalError>> {
        self.refused.remove(&upstream_tmid);
        let Some(k) = self
            .rows
            .iter()
            .find(|(_, r)| r.upstream_tmid == upstream_tmid && r.withdrawn)
            .map(|(k, _)| k.clone())
        else {
            return Vec::new();
        };
        self.pending.push(Edit::Remove(k.clone()));
        vec![Ok(Change::Upstream { key: k, doc: None })]
    }

    pub(super) fn answered(&mut self, upstream_tmid: u32, refusal: Option<String>) {
        match refusal {
            Some(why) => {
                tracing::warn!("upstream refused telemetry tmid {upstream_tmid}: {why}");
                self.refused.insert(upstream_tmid, why);
            }
            None => {
                self.refused.remove(&upstream_tmid);
            }
        }
    }

    /// The upstream tmid of a downstream report, and upstream's refusal of it if any.
    pub(super) fn upstream(&self, cuid: &str, tmid: u32) -> Option<(u32, Option<String>)> {
        let r = self.rows.get(&key(cuid, tmid)).filter(|r| !r.withdrawn)?;
        Some((r.upstream_tmid, self.refused.get(&r.upstream_tmid).cloned()))
    }

    pub(super) fn committed(&mut self) {
        for e in std::mem::take(&mut self.pending) {
            match e {
                Edit::Put(r) => {
                    self.rows.insert(key(&r.cuid, r.tmid), r);
                }
                Edit::Remove(k) => {
                    self.rows.remove(&k);
                }
            }
        }
        self.publish();
    }

    pub(super) fn undone(&mut self) {
        self.pending.clear();
    }
}
