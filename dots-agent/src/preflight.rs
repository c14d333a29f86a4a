//! What a server start checks before it touches anything (XDP attached, store created,
//! sockets bound): the certificates and key, the interfaces, the store (readable, valid,
//! every row decodable, not in use), the pinned datapath (not in use, not holding
//! mitigations a missing store would forget) and the state directory. `dots-agent server
//! --check` runs the same checks, and binds the listen addresses once to see that they are
//! free. Each error says what to fix.

use std::path::Path;

use anyhow::{bail, Result};

use crate::datapath::{check_interfaces, lock, DatapathId, Mitigator, XdpDatapath};
use crate::engine::journal::Snapshot;
use crate::server::ServerConfig;
use crate::store::{self, Inspected};

/// Choices of the operator at start.
#[derive(Clone, Debug, Default)]
pub struct StartOptions {
    /// Set a store that is not valid aside and start with an empty one (its mitigations
    /// are then removed from the filter).
    pub reset_store: bool,
}

/// What the checks found.
#[derive(Debug, Default)]
pub struct Checked {
    /// Worth a warning, not a refusal (a certificate about to expire, a store to set aside).
    pub notes: Vec<String>,
    /// The store is to be set aside (`--reset-store` and a store that is not valid).
    pub reset_store: bool,
    /// What the store holds (empty for a new or reset store).
    pub snapshot: Snapshot,
}

/// How to recover from a store that cannot be used.
fn store_help(dir: &Path) -> String {
    format!(
        "restore a backup (stop the server, copy the file made by `dots-agent store backup` \
         to {}), or start with --reset-store to set this file aside and start with an empty \
         store (its mitigations are then removed from the filter)",
        store::file(dir).display()
    )
}

/// Runs every check that needs no change; Err says what to fix.
pub fn check(config: &ServerConfig, opts: &StartOptions) -> Result<Checked> {
    let mut checked = Checked {
        notes: crate::pki::check_credentials(&config.tls.ca, &config.tls.cert, &config.tls.key)?,
        ..Default::default()
    };
    if let Some(u) = &config.upstream {
        // The same checks as [tls], named for the section they are about.
        let named = |e: String| e.replace("[tls]", "[upstream]");
        let notes = crate::pki::check_credentials(&u.ca, &u.cert, &u.key)
            .map_err(|e| anyhow::anyhow!(named(format!("{e:#}"))))?;
        checked.notes.extend(notes.into_iter().map(named));
    }
    let dir = &config.store.dir;
    if let Some(holder) = lock::holder(dir) {
        bail!(
            "the store at {} is in use by {holder}: one server per store (stop it, or give \
             this one another [store] dir)",
            dir.display()
        );
    }
    check_writable(dir)?;
    // The control socket lives in the store directory; a Unix socket path has 107 bytes.
    let socket = dir.join(crate::admin::SOCKET);
    if socket.as_os_str().len() > 107 {
        bail!(
            "[store] dir {}: the control socket {} would be longer than a Unix socket path              may be (107 bytes): choose a shorter directory",
            dir.display(),
            socket.display()
        );
    }
    let xdp = !config.datapath.interfaces.is_empty();
    let pin_root = &config.datapath.pin_root;
    if xdp {
        check_interfaces(&config.datapath.interfaces)?;
        if let Some(holder) = lock::holder(pin_root) {
            bail!(
                "the pinned XDP datapath at {} is in use by {holder}: one writer per pinned \
                 filter (stop it first, or give this server another [datapath] pin_root)",
                pin_root.display()
            );
        }
    }
    if let Some(d) = &config.diversion {
        let clients: Vec<_> = config
            .clients
            .iter()
            .map(|c| (c.name.clone(), c.prefixes.clone()))
            .collect();
        checked.notes.extend(d.preflight(&clients)?);
    }
    match store::inspect(dir) {
        Ok(Inspected::Valid { snapshot, .. }) => {
            let bad = crate::engine::unreadable(&snapshot);
            if bad.is_empty() {
                checked.snapshot = snapshot;
                if opts.reset_store {
                    checked.notes.push(format!(
                        "--reset-store: {} is a valid store and is kept",
                        store::file(dir).display()
                    ));
                }
            } else if opts.reset_store {
                checked.reset_store = true;
            } else {
                let shown: Vec<&str> = bad.iter().take(5).map(String::as_str).collect();
                bail!(
                    "{} holds {} row(s) that cannot be read ({}{}): {}",
                    store::file(dir).display(),
                    bad.len(),
                    shown.join("; "),
                    if bad.len() > 5 { "; ..." } else { "" },
                    store_help(dir)
                );
            }
        }
        Err(e) if opts.reset_store => {
            checked.notes.push(format!("{e:#}"));
            checked.reset_store = true;
        }
        Err(e) => bail!("{e:#}: {}", store_help(dir)),
        Ok(Inspected::Missing) => {
            let held = if xdp { pinned_mitigations(pin_root) } else { 0 };
            if held > 0 && !opts.reset_store {
                bail!(
                    "there is no store at {} but the pinned XDP filter at {} holds {held} \
                     mitigation(s) a server installed: starting with an empty store would \
                     remove them. Point [store] dir at the previous state directory, restore \
                     a backup there, or start with --reset-store to remove them",
                    store::file(dir).display(),
                    pin_root.display()
                );
            }
        }
    }
    if checked.reset_store {
        checked.notes.push(format!(
            "--reset-store: {} is set aside and the server starts with an empty store",
            store::file(dir).display()
        ));
    }
    Ok(checked)
}

/// Mitigations a server installed (DOTS requests and ACL baselines) in the pinned filter;
/// operator mitigations are kept by any server and do not count.
fn pinned_mitigations(pin_root: &Path) -> usize {
    if !XdpDatapath::is_pinned(pin_root) {
        return 0;
    }
    XdpDatapath::open_pinned(pin_root)
        .map(|dp| {
            dp.installed()
                .into_iter()
                .filter(|raw| !matches!(DatapathId::from_raw(*raw), DatapathId::Operator(_)))
                .count()
        })
        .unwrap_or(0)
}

/// The state directory can be written (or created): its nearest existing ancestor is a
/// directory this process may write to.
fn check_writable(dir: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let mut at = dir;
    while !at.exists() {
        match at.parent() {
            Some(p) if !p.as_os_str().is_empty() => at = p,
            _ => return Ok(()), // relative to the working directory
        }
    }
    if !at.is_dir() {
        bail!(
            "[store] dir {}: {} is not a directory",
            dir.display(),
            at.display()
        );
    }
    let c = std::ffi::CString::new(at.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path; access only reads it.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        bail!(
            "[store] dir {}: {} is not writable by this user ({})",
            dir.display(),
            at.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

/// Binds every listen address once and releases it: each is free and allowed (for
/// `--check`; a start keeps the sockets it binds).
pub fn check_ports(config: &ServerConfig) -> Result<()> {
    let mut tcp: Vec<(std::net::SocketAddr, &str)> = config
        .signal
        .listen
        .iter()
        .map(|a| (*a, "signal channel, TLS"))
        .collect();
    tcp.extend(
        config
            .data
            .iter()
            .flat_map(|d| &d.listen)
            .map(|a| (*a, "data channel")),
    );
    tcp.extend(config.metrics.listen.iter().map(|a| (*a, "metrics")));
    for (addr, what) in tcp {
        std::net::TcpListener::bind(addr)
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} ({what}, TCP): {e}"))?;
    }
    for addr in &config.signal.listen {
        std::net::UdpSocket::bind(addr).map_err(|e| {
            anyhow::anyhow!("cannot listen on {addr} (signal channel, DTLS on UDP): {e}")
        })?;
    }
    Ok(())
}
