//! The server's control socket, for its operator on the same host: `dots-agent server
//! reload`, and `dots-agent xdp mitigation add|remove|list` and `xdp status` while a server
//! owns the filter. A Unix socket in the store directory (`control.sock`, mode 0600),
//! root or the server's own user only (checked with SO_PEERCRED); one JSON request per
//! connection, one JSON reply, each a line.
//!
//! The command line finds the socket from the process that holds the pinned datapath's
//! lock (see [`crate::datapath::lock`]): its listening Unix sockets are in
//! /proc/PID/net/unix, matched to its descriptors by inode. So `xdp` commands need no
//! flag to reach the server that owns the pins they name.

use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

use crate::datapath::MitigationSpec;

/// The socket's name in the store directory.
pub const SOCKET: &str = "control.sock";
/// Longest request line (a mitigation file of many specs fits).
const MAX_REQUEST: u64 = 8 << 20;
const TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// Re-read server.toml's clients and their policies.
    Reload,
    /// Install or replace operator mitigations, all or none.
    OperatorAdd {
        specs: Vec<MitigationSpec>,
    },
    OperatorRemove {
        id: u32,
    },
    OperatorList,
    /// Who each datapath id belongs to (for `xdp status`).
    Names,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    Ok(serde_json::Value),
    Error(String),
}

/// Serves the control socket until the task is dropped; `handle` answers each request.
pub async fn serve<F, Fut>(listener: tokio::net::UnixListener, handle: F)
where
    F: Fn(Request) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Reply> + Send,
{
    // SAFETY: geteuid has no preconditions.
    let own_uid = unsafe { libc::geteuid() };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let allowed = stream
            .peer_cred()
            .is_ok_and(|c| c.uid() == 0 || c.uid() == own_uid);
        if !allowed {
            tracing::warn!("control socket: a connection from another user was refused");
            continue;
        }
        let handle = handle.clone();
        tokio::spawn(async move {
            let work = async {
                let (read, mut write) = stream.into_split();
                let mut line = String::new();
                tokio::io::BufReader::new(read)
                    .take(MAX_REQUEST)
                    .read_line(&mut line)
                    .await?;
                let reply = match serde_json::from_str::<Request>(&line) {
                    Ok(req) => handle(req).await,
                    Err(e) => Reply::Error(format!("not a control request: {e}")),
                };
                let mut out = serde_json::to_vec(&reply).map_err(std::io::Error::other)?;
                out.push(b'\n');
                write.write_all(&out).await
            };
            match tokio::time::timeout(TIMEOUT, work).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!("control socket: {e}"),
                Err(_) => tracing::warn!("control socket: a request took over {TIMEOUT:?}"),
            }
        });
    }
}

/// Binds the control socket in `dir` (replacing a stale one: the caller holds the store's
/// lock, so no live server owns it), readable and writable by the owner only.
pub fn bind(dir: &Path) -> Result<tokio::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(SOCKET);
    match std::fs::remove_file(&path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => bail!("removing the stale control socket {}: {e}", path.display()),
    }
    let listener = tokio::net::UnixListener::bind(&path)
        .with_context(|| format!("creating the control socket {}", path.display()))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}

/// Sends one request to the server at `socket` and returns its answer.
pub fn call(socket: &Path, req: &Request) -> Result<serde_json::Value> {
    let mut s = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the server's control socket {}",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    s.write_all(&line)?;
    let mut answer = String::new();
    BufReader::new(s)
        .read_line(&mut answer)
        .context("reading the server's answer")?;
    match serde_json::from_str::<Reply>(&answer)
        .with_context(|| format!("the server's answer is not understood: {answer:?}"))?
    {
        Reply::Ok(v) => Ok(v),
        Reply::Error(e) => bail!("{e}"),
    }
}

/// The control socket of a running server process: the listening Unix socket named
/// `control.sock` among its descriptors.
pub fn socket_of(pid: u32) -> Option<PathBuf> {
    let inodes: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .ok()?
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            Some(l.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let table = std::fs::read_to_string(format!("/proc/{pid}/net/unix")).ok()?;
    table.lines().skip(1).find_map(|line| {
        // Num RefCount Protocol Flags Type St Inode Path
        let f: Vec<&str> = line.split_whitespace().collect();
        let (inode, path) = (f.get(6)?, f.get(7)?);
        (inodes.iter().any(|i| i == inode) && path.ends_with(&format!("/{SOCKET}")))
            .then(|| PathBuf::from(path))
    })
}
