//! `dots-agent store check|backup`: the server's store for its operator. Both read the
//! store without changing it, also while a server runs.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use crate::engine::journal::Snapshot;
use crate::store::{self, Inspected};

#[derive(Subcommand, Debug)]
pub enum StoreCommand {
    /// Check the store: a valid SQLite database passing its integrity check, this agent's
    /// schema, every row readable; prints what it holds.
    Check(Which),
    /// Copy the store to a new file, consistent even while the server writes to it
    /// (SQLite's online backup API). To restore: stop the server and copy the file to
    /// STATE_DIR/dots-agent.sqlite.
    Backup {
        #[command(flatten)]
        which: Which,
        /// The copy to write (must not exist).
        #[arg(long)]
        to: PathBuf,
    },
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub struct Which {
    /// The server's configuration: its [store] dir.
    #[arg(long)]
    config: Option<PathBuf>,
    /// The state directory itself.
    #[arg(long)]
    dir: Option<PathBuf>,
}

impl Which {
    fn dir(&self) -> Result<PathBuf> {
        match (&self.config, &self.dir) {
            (Some(c), _) => Ok(crate::server::ServerConfig::load(c)?.store.dir),
            (None, Some(d)) => Ok(d.clone()),
            (None, None) => bail!("give --config FILE or --dir DIR"),
        }
    }
}

fn summary(s: &Snapshot) -> String {
    let mut clients: std::collections::BTreeMap<&str, usize> = Default::default();
    for (cuid, _, _) in &s.mitigations {
        *clients.entry(cuid.as_str()).or_default() += 1;
    }
    format!(
        "{} mitigation(s) of {} client(s), {} operator mitigation(s), {} session configuration(s), \
         {} telemetry setup(s), {} data-channel client(s)",
        s.mitigations.len(),
        clients.len(),
        s.operator_mitigations.len(),
        s.session_configs.len(),
        s.telemetry_setups.len(),
        s.data_clients.len()
    )
}

fn check_rows(path: &Path, s: &Snapshot) -> Result<()> {
    let bad = crate::engine::unreadable(s);
    if !bad.is_empty() {
        bail!(
            "{}: {} row(s) cannot be read:\n  {}",
            path.display(),
            bad.len(),
            bad.join("\n  ")
        );
    }
    Ok(())
}

pub fn run(cmd: StoreCommand) -> Result<()> {
    match cmd {
        StoreCommand::Check(which) => {
            let dir = which.dir()?;
            let path = store::file(&dir);
            match store::inspect(&dir)? {
                Inspected::Missing => bail!("there is no store at {}", path.display()),
                Inspected::Valid { schema, snapshot } => {
                    check_rows(&path, &snapshot)?;
                    println!(
                        "{}: ok (schema {schema}, integrity ok, every row readable): {}",
                        path.display(),
                        summary(&snapshot)
                    );
                }
            }
            Ok(())
        }
        StoreCommand::Backup { which, to } => {
            let dir = which.dir()?;
            let snapshot = store::backup(&dir, &to)?;
            check_rows(&to, &snapshot)?;
            println!(
                "backed up {} to {}: {}",
                store::file(&dir).display(),
                to.display(),
                summary(&snapshot)
            );
            Ok(())
        }
    }
}
