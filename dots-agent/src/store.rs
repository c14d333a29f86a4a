//! The embedded store (SQLite under the configured state directory): accepted mitigations
//! and session configurations, so both survive a restart of the agent. Rows hold JSON
//! documents; the schema carries a version for later migrations.
//!
//! Versions: 1 = mitigations and session configurations; 2 adds `data_client` (the data
//! channel's registrations, aliases and ACLs, one document per cuid) and `acl_counts` (ACL
//! counts of mitigations that have ended, per client). A v1 file is migrated in place on
//! open; its rows are kept.

use std::path::Path;

use anyhow::{Context, Result};
use rusqlite::{params, Connection};
use serde::{de::DeserializeOwned, Serialize};

const SCHEMA_VERSION: i64 = 2;

pub struct Store {
    conn: Connection,
}

impl Store {
    /// Opens (creating if needed) `<dir>/dots-agent.sqlite`.
    pub fn open(dir: &Path) -> Result<Store> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the state directory {}", dir.display()))?;
        let path = dir.join("dots-agent.sqlite");
        let conn =
            Connection::open(&path).with_context(|| format!("opening {}", path.display()))?;
        conn.execute_batch(
            "PRAGMA journal_mode = WAL;
             PRAGMA synchronous = NORMAL;
             CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE IF NOT EXISTS mitigation (
                 cuid TEXT NOT NULL, mid INTEGER NOT NULL, doc TEXT NOT NULL,
                 PRIMARY KEY (cuid, mid));
             CREATE TABLE IF NOT EXISTS session_config (client TEXT PRIMARY KEY, doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS data_client (cuid TEXT PRIMARY KEY, doc TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS acl_counts (client TEXT PRIMARY KEY, doc TEXT NOT NULL);",
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
            // v1 -> v2: only a new table, created above.
            Some(1) => {
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
            "CREATE TABLE IF NOT EXISTS telemetry_setup (client TEXT PRIMARY KEY, doc TEXT NOT NULL);",
        )
        .with_context(|| format!("creating the telemetry table in {}", path.display()))?;
        Ok(Store { conn })
    }

    pub fn put_mitigation<T: Serialize>(&self, cuid: &str, mid: u32, doc: &T) -> Result<()> {
        let json = serde_json::to_string(doc)?;
        self.conn.execute(
            "INSERT INTO mitigation (cuid, mid, doc) VALUES (?1, ?2, ?3)
             ON CONFLICT (cuid, mid) DO UPDATE SET doc = excluded.doc",
            params![cuid, mid, json],
        )?;
        Ok(())
    }

    pub fn delete_mitigation(&self, cuid: &str, mid: u32) -> Result<()> {
        self.conn.execute(
            "DELETE FROM mitigation WHERE cuid = ?1 AND mid = ?2",
            params![cuid, mid],
        )?;
        Ok(())
    }

    /// Every stored mitigation; a row that no longer parses is reported and skipped.
    pub fn mitigations<T: DeserializeOwned>(&self) -> Result<Vec<(String, u32, T)>> {
        let mut stmt = self
            .conn
            .prepare("SELECT cuid, mid, doc FROM mitigation ORDER BY cuid, mid")?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get::<_, String>(0)?,
                r.get::<_, u32>(1)?,
                r.get::<_, String>(2)?,
            ))
        })?;
        let mut out = Vec::new();
        for row in rows {
            let (cuid, mid, doc) = row?;
            match serde_json::from_str(&doc) {
                Ok(d) => out.push((cuid, mid, d)),
                Err(e) => {
                    tracing::error!("stored mitigation {mid} of {cuid} is unreadable, skipped: {e}")
                }
            }
        }
        Ok(out)
    }

    pub fn put_config<T: Serialize>(&self, client: &str, doc: &T) -> Result<()> {
        self.put_doc("session_config", "client", client, doc)
    }

    pub fn delete_config(&self, client: &str) -> Result<()> {
        self.delete_doc("session_config", "client", client)
    }

    pub fn configs<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>> {
        self.docs("session_config", "client")
    }

    /// A client's telemetry setup (RFC 9244 §7: kept across sessions and restarts).
    pub fn put_telemetry<T: Serialize>(&self, client: &str, doc: &T) -> Result<()> {
        self.put_doc("telemetry_setup", "client", client, doc)
    }

    pub fn delete_telemetry(&self, client: &str) -> Result<()> {
        self.delete_doc("telemetry_setup", "client", client)
    }

    pub fn telemetry<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>> {
        self.docs("telemetry_setup", "client")
    }

    // One JSON document per key in `table`, keyed by column `key` (names from this file,
    // never from input).
    fn put_doc<T: Serialize>(&self, table: &str, key: &str, id: &str, doc: &T) -> Result<()> {
        let json = serde_json::to_string(doc)?;
        self.conn.execute(
            &format!(
                "INSERT INTO {table} ({key}, doc) VALUES (?1, ?2)
                 ON CONFLICT ({key}) DO UPDATE SET doc = excluded.doc"
            ),
            params![id, json],
        )?;
        Ok(())
    }

    fn delete_doc(&self, table: &str, key: &str, id: &str) -> Result<()> {
        self.conn.execute(
            &format!("DELETE FROM {table} WHERE {key} = ?1"),
            params![id],
        )?;
        Ok(())
    }

    /// Every document of `table`; unreadable rows are reported and skipped.
    fn docs<T: DeserializeOwned>(&self, table: &str, key: &str) -> Result<Vec<(String, T)>> {
        let mut stmt = self
            .conn
            .prepare(&format!("SELECT {key}, doc FROM {table}"))?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (id, doc) = row?;
            match serde_json::from_str(&doc) {
                Ok(d) => out.push((id, d)),
                Err(e) => tracing::error!("stored {table} row {id} is unreadable, skipped: {e}"),
            }
        }
        Ok(out)
    }
}

impl Store {
    /// Writes (or replaces) a data-channel client's document.
    pub fn put_data_client<T: Serialize>(&self, cuid: &str, doc: &T) -> Result<()> {
        self.put_doc("data_client", "cuid", cuid, doc)
    }

    pub fn delete_data_client(&self, cuid: &str) -> Result<()> {
        self.delete_doc("data_client", "cuid", cuid)
    }

    /// Writes (or replaces) a client's counts of ended mitigations' ACL entries.
    pub fn put_acl_counts<T: Serialize>(&self, client: &str, doc: &T) -> Result<()> {
        self.put_doc("acl_counts", "client", client, doc)
    }

    pub fn acl_counts<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>> {
        self.docs("acl_counts", "client")
    }

    /// Every data-channel client; unreadable rows are reported and skipped.
    pub fn data_clients<T: DeserializeOwned>(&self) -> Result<Vec<(String, T)>> {
        self.docs("data_client", "cuid")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = Store::open(dir.path()).unwrap();
            s.put_mitigation("cu", 1, &serde_json::json!({"a": 1}))
                .unwrap();
            s.put_mitigation("cu", 1, &serde_json::json!({"a": 2}))
                .unwrap();
            s.put_mitigation("cu", 2, &serde_json::json!({"a": 3}))
                .unwrap();
            s.delete_mitigation("cu", 2).unwrap();
            s.put_config("client-a", &serde_json::json!({"sid": 5}))
                .unwrap();
            s.put_telemetry("client-a", &serde_json::json!({"pipes": 1}))
                .unwrap();
            s.put_telemetry("client-b", &serde_json::json!({"pipes": 2}))
                .unwrap();
            s.delete_telemetry("client-b").unwrap();
        }
        let s = Store::open(dir.path()).unwrap();
        let m: Vec<(String, u32, serde_json::Value)> = s.mitigations().unwrap();
        assert_eq!(m, vec![("cu".to_string(), 1, serde_json::json!({"a": 2}))]);
        let c: Vec<(String, serde_json::Value)> = s.configs().unwrap();
        assert_eq!(c[0].1["sid"], 5);
        let t: Vec<(String, serde_json::Value)> = s.telemetry().unwrap();
        assert_eq!(
            t,
            vec![("client-a".into(), serde_json::json!({"pipes": 1}))]
        );
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
        let s = Store::open(dir.path()).unwrap();
        let m: Vec<(String, u32, serde_json::Value)> = s.mitigations().unwrap();
        assert_eq!(m.len(), 1);
        s.put_data_client("cu", &serde_json::json!({"name": "a"}))
            .unwrap();
        drop(s);
        let s = Store::open(dir.path()).unwrap();
        let d: Vec<(String, serde_json::Value)> = s.data_clients().unwrap();
        assert_eq!(d[0].1["name"], "a");
        let v: i64 = s
            .conn
            .query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(v, 2);
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
