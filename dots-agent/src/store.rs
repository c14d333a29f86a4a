//! The embedded store (SQLite under the configured state directory): the engine's journal.
//! One connection per process; each accepted change is one transaction, durable when its
//! commit returns (WAL with `synchronous = FULL`: the log is synced at each commit, so an
//! acknowledged change survives a crash of the machine, not only of the process). Rows hold
//! JSON documents whose formats belong to the core; the schema carries a version for later
//! migrations.
//!
//! Versions: 1 = mitigations and session configurations; 2 adds `data_client` (the data
//! channel's registrations, aliases and ACLs, one document per cuid) and `acl_counts` (ACL
//! counts of mitigations that have ended, per client). A v1 file is migrated in place on
//! open; its rows are kept. 3 adds `operator_mitigation` (the operator's own mitigations,
//! `dots-agent xdp mitigation add` through the server). `telemetry_setup` and
//! `cuid_binding` (which client holds which cuid) were added without a version change: a
//! new table needs no migration.
//!
//! A file that exists but is not a valid store (zero length included, which SQLite would
//! take for an empty database) is never opened for writing: [`inspect`] says what is wrong,
//! and the server refuses to start rather than take it for an empty store.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rusqlite::{params, Connection, OpenFlags};

use crate::datapath::lock::WriterLock;
use crate::engine::journal::{Change, Journal, JournalError, Snapshot};

const SCHEMA_VERSION: i64 = 4;
const FILE: &str = "dots-agent.sqlite";

pub struct Store {
    conn: Connection,
    path: std::path::PathBuf,
    /// One writer per store: a second server on the same directory is refused.
    _lock: WriterLock,
}

/// The store file of a state directory.
pub fn file(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// What is in a state directory, read without changing anything.
pub enum Inspected {
    /// No store file yet (a first start).
    Missing,
    /// A valid store: its schema version and everything it holds.
    Valid { schema: i64, snapshot: Snapshot },
}

/// Reads the store of `dir` read-only and checks it: a SQLite database (not empty) that
/// passes SQLite's integrity check and holds this agent's schema. The rows' documents are
/// not decoded here (that is the engine's format: `engine::unreadable`).
pub fn inspect(dir: &Path) -> Result<Inspected> {
    let path = file(dir);
    let meta = match std::fs::metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Inspected::Missing),
        Err(e) => bail!("{}: {e}", path.display()),
    };
    if meta.len() == 0 {
        bail!(
            "{} is empty (0 bytes), not a store; it is not taken for an empty one",
            path.display()
        );
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {} read-only", path.display()))?;
    let check: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(|e| anyhow::anyhow!("{} is not a valid SQLite database: {e}", path.display()))?;
    if check != "ok" {
        bail!("{} fails SQLite's integrity check: {check}", path.display());
    }
    let schema: i64 = conn
        .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
            r.get(0)
        })
        .map_err(|e| anyhow::anyhow!("{} holds no dots-agent schema: {e}", path.display()))?;
    if !(1..=SCHEMA_VERSION).contains(&schema) {
        bail!(
            "{} has schema version {schema}; this agent knows 1 to {SCHEMA_VERSION}",
            path.display()
        );
    }
    let snapshot =
        read_snapshot(&conn).with_context(|| format!("reading the rows of {}", path.display()))?;
    Ok(Inspected::Valid { schema, snapshot })
}

/// Copies the store of `dir` to `to` with SQLite's online backup API: a consistent copy
/// while a server writes to it. Returns the copy's snapshot (read back from the copy).
pub fn backup(dir: &Path, to: &Path) -> Result<Snapshot> {
    let path = file(dir);
    if !path.exists() {
        bail!("there is no store at {}", path.display());
    }
    if to.exists() {
        bail!("{} exists: name a new file", to.display());
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening {} read-only", path.display()))?;
    conn.backup(
        rusqlite::MAIN_DB,
        to,
        None::<fn(rusqlite::backup::Progress)>,
    )
    .with_context(|| format!("copying {} to {}", path.display(), to.display()))?;
    let copy = Connection::open_with_flags(to, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let check: String = copy.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
    if check != "ok" {
        bail!(
            "the copy {} fails SQLite's integrity check: {check}",
            to.display()
        );
    }
    read_snapshot(&copy)
}

/// Sets a bad store file aside (renamed with a `.bad-<unix time>` suffix, its WAL files
/// with it), so that the next open starts an empty store. Returns the new name.
pub fn set_aside(dir: &Path) -> Result<PathBuf> {
    let path = file(dir);
    let aside = dir.join(format!("{FILE}.bad-{}", crate::clock::unix_now()));
    for suffix in ["", "-wal", "-shm"] {
        let from = PathBuf::from(format!("{}{suffix}", path.display()));
        if from.exists() {
            let to = PathBuf::from(format!("{}{suffix}", aside.display()));
            std::fs::rename(&from, &to)
                .with_context(|| format!("renaming {} to {}", from.display(), to.display()))?;
        }
    }
    Ok(aside)
}

fn read_snapshot(conn: &Connection) -> Result<Snapshot> {
    let mut stmt = conn.prepare("SELECT cuid, mid, doc FROM mitigation ORDER BY cuid, mid")?;
    let mitigations = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
        .collect::<rusqlite::Result<Vec<(String, u32, String)>>>()?;
    Ok(Snapshot {
        mitigations,
        session_configs: docs(conn, "session_config", "client")?,
        telemetry_setups: docs(conn, "telemetry_setup", "client")?,
        data_clients: docs(conn, "data_client", "cuid")?,
        acl_counts: docs(conn, "acl_counts", "client")?,
        operator_mitigations: docs(conn, "operator_mitigation", "id")?,
        cuid_bindings: docs(conn, "cuid_binding", "cuid")?,
        upstream_mappings: docs(conn, "upstream_mapping", "key")?,
    })
}

// One JSON document per key in `table`, keyed by column `key` (names from this file, never
// from input). A table an older schema lacks reads as empty.
fn docs(conn: &Connection, table: &str, key: &str) -> Result<Vec<(String, String)>> {
    let exists: bool = conn.query_row(
        "SELECT count(*) > 0 FROM sqlite_master WHERE type = 'table' AND name = ?1",
        params![table],
        |r| r.get(0),
    )?;
    if !exists {
        return Ok(Vec::new());
    }
    let mut stmt = conn.prepare(&format!(
        "SELECT CAST({key} AS TEXT), doc FROM {table} ORDER BY {key}"
    ))?;
    let rows = stmt
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    Ok(rows)
}

impl Store {
    /// Opens (creating if needed) `<dir>/dots-agent.sqlite` as its one writer. A file that
    /// exists must pass [`inspect`] first (the server checks before it starts).
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
        let lock = WriterLock::acquire(dir, "the store")?;
        let path = file(dir);
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == 0) {
            bail!("{} is empty (0 bytes), not a store", path.display());
        }
        let conn =
            Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS mitigation (
                 cuid TEXT NOT NULL, mid INTEGER NOT NULL, doc TEXT NOT NULL,
                 PRIMARY KEY (cuid, mid));
             CREATE TABLE IF NOT EXISTS session_config (client TEXT PRIMARY KEY, doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS data_client (cuid TEXT PRIMARY KEY, doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS acl_counts (client TEXT PRIMARY KEY, doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS operator_mitigation (id INTEGER PRIMARY KEY, doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS upstream_mapping (key TEXT PRIMARY KEY, doc TEXT NOT NULL);",
        )
        .with_context(|| format!("creating the schema in {}", path.display()))?;
        let version: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .ok();
        match version {
            None => {
                conn.execute(
                    "INSERT INTO meta (key, value) VALUES ('schema', ?1)",
                    params![SCHEMA_VERSION],
                )?;
            }
            Some(SCHEMA_VERSION) => {}
            // v1 -> v2 -> v3 -> v4: only new tables, created above.
            Some(1..=3) => {
                conn.execute(
                    "UPDATE meta SET value = ?1 WHERE key = 'schema'",
                    params![SCHEMA_VERSION],
                )?;
            }
            Some(v) => anyhow::bail!(
                "{} has schema version {v}; this agent knows {SCHEMA_VERSION}",
                path.display()
            ),
        }
        // Added after schema 1 shipped; a new table needs no migration.
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS telemetry_setup (client TEXT PRIMARY KEY, doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS cuid_binding (cuid TEXT PRIMARY KEY, doc TEXT NOT NULL);",
        )
        .with_context(|| format!("creating the telemetry table in {}", path.display()))?;
        Ok(Store {
            conn,
            path,
            _lock: lock,
        })
    }

    /// Everything stored, as documents (what a restart restores).
    pub fn snapshot(&self) -> Result<Snapshot> {
        read_snapshot(&self.conn)
    }
}

/// Writes or deletes one document of `table` keyed by column `key` (names from this file).
fn put_doc(
    tx: &rusqlite::Transaction<'_>,
    table: &str,
    key: &str,
    id: &str,
    doc: &Option<String>,
) -> rusqlite::Result<()> {
    match doc {
        Some(doc) => tx
            .prepare_cached(&format!(
                "INSERT INTO {table} ({key}, doc) VALUES (?1, ?2)
                 ON CONFLICT ({key}) DO UPDATE SET doc = excluded.doc"
            ))?
            .execute(params![id, doc]),
        None => tx
            .prepare_cached(&format!("DELETE FROM {table} WHERE {key} = ?1"))?
            .execute(params![id]),
    }
    .map(|_| ())
}

fn write(tx: &rusqlite::Transaction<'_>, change: &Change) -> rusqlite::Result<()> {
    match change {
        Change::Mitigation { cuid, mid, doc } => match doc {
            Some(doc) => tx
                .prepare_cached(
                    "INSERT INTO mitigation (cuid, mid, doc) VALUES (?1, ?2, ?3)
                     ON CONFLICT (cuid, mid) DO UPDATE SET doc = excluded.doc",
                )?
                .execute(params![cuid, mid, doc]),
            None => tx
                .prepare_cached("DELETE FROM mitigation WHERE cuid = ?1 AND mid = ?2")?
                .execute(params![cuid, mid]),
        }
        .map(|_| ()),
        Change::SessionConfig { client, doc } => {
            put_doc(tx, "session_config", "client", client, doc)
        }
        Change::TelemetrySetup { client, doc } => {
            put_doc(tx, "telemetry_setup", "client", client, doc)
        }
        Change::DataClient { cuid, doc } => put_doc(tx, "data_client", "cuid", cuid, doc),
        Change::AclCounts { client, doc } => put_doc(tx, "acl_counts", "client", client, doc),
        Change::Operator { id, doc } => {
            put_doc(tx, "operator_mitigation", "id", &id.to_string(), doc)
        }
        // The doc is the client's name.
        Change::CuidBinding { cuid, client } => put_doc(tx, "cuid_binding", "cuid", cuid, client),
        Change::Upstream { key, doc } => put_doc(tx, "upstream_mapping", "key", key, doc),
    }
}

impl Journal for Store {
    fn commit(&mut self, changes: &[Change]) -> std::result::Result<(), JournalError> {
        let mut run = || -> rusqlite::Result<()> {
            let tx = self.conn.transaction()?;
            for c in changes {
                write(&tx, c)?;
            }
            tx.commit()
        };
        run().map_err(|e| JournalError(format!("{}: {e}", self.path.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mitigation(mid: u32, doc: Option<&str>) -> Change {
        Change::Mitigation {
            cuid: "cu".into(),
            mid,
            doc: doc.map(str::to_string),
        }
    }

    #[test]
    fn rows_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut s = Store::open(dir.path()).unwrap();
            s.commit(&[mitigation(1, Some(r#"{"a":1}"#))]).unwrap();
            s.commit(&[
                mitigation(1, Some(r#"{"a":2}"#)),
                mitigation(2, Some(r#"{"a":3}"#)),
            ])
            .unwrap();
            s.commit(&[mitigation(2, None)]).unwrap();
            s.commit(&[
                Change::SessionConfig {
                    client: "client-a".into(),
                    doc: Some(r#"{"sid":5}"#.into()),
                },
                Change::TelemetrySetup {
                    client: "client-a".into(),
                    doc: Some(r#"{"pipes":1}"#.into()),
                },
                Change::TelemetrySetup {
                    client: "client-b".into(),
                    doc: Some(r#"{"pipes":2}"#.into()),
                },
            ])
            .unwrap();
            s.commit(&[Change::TelemetrySetup {
                client: "client-b".into(),
                doc: None,
            }])
            .unwrap();
            s.commit(&[Change::CuidBinding {
                cuid: "chosen-1".into(),
                client: Some("client-a".into()),
            }])
            .unwrap();
        }
        let s = Store::open(dir.path()).unwrap().snapshot().unwrap();
        assert_eq!(
            s.cuid_bindings,
            vec![("chosen-1".to_string(), "client-a".to_string())]
        );
        assert_eq!(
            s.mitigations,
            vec![("cu".to_string(), 1, r#"{"a":2}"#.to_string())]
        );
        let c: serde_json::Value = serde_json::from_str(&s.session_configs[0].1).unwrap();
        assert_eq!(c["sid"], 5);
        assert_eq!(
            s.telemetry_setups,
            vec![("client-a".into(), r#"{"pipes":1}"#.into())]
        );
    }

    #[test]
    fn a_transaction_is_all_or_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(dir.path()).unwrap();
        s.commit(&[mitigation(1, Some("{}"))]).unwrap();
        // The second write fails (the table is gone): the first of the same commit is not
        // kept either.
        s.conn.execute_batch("DROP TABLE acl_counts").unwrap();
        let r = s.commit(&[
            mitigation(1, None),
            Change::AclCounts {
                client: "a".into(),
                doc: Some("[]".into()),
            },
        ]);
        assert!(r.is_err());
        let rows: i64 = s
            .conn
            .query_row("SELECT count(*) FROM mitigation", [], |r| r.get(0))
            .unwrap();
        assert_eq!(rows, 1, "the deletion was rolled back");
    }

    #[test]
    fn a_v1_file_is_migrated_and_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        {
            // What a v1 agent wrote.
            let conn = Connection::open(dir.path().join("dots-agent.sqlite")).unwrap();
            conn.execute_batch(
                "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
                 INSERT INTO meta VALUES ('schema', 1);
                 CREATE TABLE mitigation (cuid TEXT NOT NULL, mid INTEGER NOT NULL,
                     doc TEXT NOT NULL, PRIMARY KEY (cuid, mid));
                 INSERT INTO mitigation VALUES ('cu', 3, '{\"a\":1}');
                 CREATE TABLE session_config (client TEXT PRIMARY KEY, doc TEXT NOT NULL);",
            )
            .unwrap();
        }
        let mut s = Store::open(dir.path()).unwrap();
        assert_eq!(s.snapshot().unwrap().mitigations.len(), 1);
        s.commit(&[Change::DataClient {
            cuid: "cu".into(),
            doc: Some(r#"{"name":"a"}"#.into()),
        }])
        .unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        let d = s.snapshot().unwrap().data_clients;
        let v: serde_json::Value = serde_json::from_str(&d[0].1).unwrap();
        assert_eq!(v["name"], "a");
        let v: i64 = s
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join("dots-agent.sqlite")).unwrap();
        conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema'", [])
            .unwrap();
        drop(conn);
        assert!(Store::open(dir.path())
            .err()
            .unwrap()
            .to_string()
            .contains("schema version 99"));
    }
}
