//! One writer per pinned datapath (and per store): an exclusive `flock` on the directory,
//! held for the writer's lifetime, as xdp-tools' prog lock serialises its writers on the
//! bpffs directory. The kernel drops the lock when the process exits, however it exits, so
//! there is no stale lock file to clean up. A refused writer names the holder: the kernel
//! lists flock holders (pid, device, inode) in /proc/locks, and /proc/PID/cmdline says what
//! it runs; nothing is written for that.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

#[derive(Debug, Error)]
pub enum LockError {
    #[error("{what} at {} is in use by {holder}: stop it first (or use it instead of starting another writer)", dir.display())]
    Held {
        what: String,
        dir: PathBuf,
        holder: Holder,
    },
    #[error("locking {what} at {}: {source}", dir.display())]
    Io {
        what: String,
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The process holding a lock, as the kernel reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its command line (empty if it could not be read).
    pub command: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.command.is_empty() {
            write!(f, "PID {}", self.pid)
        } else {
            write!(f, "PID {} ({})", self.pid, self.command)
        }
    }
}

/// An exclusive lock on a directory; released when dropped (or when the process ends).
#[derive(Debug)]
pub struct WriterLock {
    _dir: File,
    path: PathBuf,
}

impl WriterLock {
    /// Takes the lock on `dir` (which must exist) without waiting. `what` names the
    /// resource in messages ("the pinned datapath", "the store").
    pub fn acquire(dir: &Path, what: &str) -> Result<WriterLock, LockError> {
        let io = |source| LockError::Io {
            what: what.into(),
            dir: dir.into(),
            source,
        };
        let file = File::open(dir).map_err(io)?;
        // SAFETY: a valid open fd; flock only reads its arguments.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let holder = holder(dir).unwrap_or(Holder {
                    pid: 0,
                    command: "another process (not listed in /proc/locks)".into(),
                });
                return Err(LockError::Held {
                    what: what.into(),
                    dir: dir.into(),
                    holder,
                });
            }
            return Err(io(e));
        }
        Ok(WriterLock {
            _dir: file,
            path: dir.into(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The process holding an exclusive flock on `dir`, if any.
pub fn holder(dir: &Path) -> Option<Holder> {
    let meta = std::fs::metadata(dir).ok()?;
    let (major, minor, ino) = (
        libc::major(meta.dev()) as u64,
        libc::minor(meta.dev()) as u64,
        meta.ino(),
    );
    let locks = std::fs::read_to_string("/proc/locks").ok()?;
    let pid = locks
        .lines()
        .find_map(|l| holder_in_line(l, major, minor, ino))?;
    let command = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| {
            raw.split(|b| *b == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default();
    Some(Holder { pid, command })
}

/// The pid of a /proc/locks line that is a FLOCK on (major, minor, inode), e.g.
/// `3: FLOCK  ADVISORY  WRITE 4242 00:1e:1234 0 EOF` (device numbers in hex).
fn holder_in_line(line: &str, major: u64, minor: u64, ino: u64) -> Option<u32> {
    let f: Vec<&str> = line.split_whitespace().collect();
    // A blocked waiter's line starts "N: ->"; only holders count.
    if f.len() < 6 || f[1] != "FLOCK" || f[3] != "WRITE" {
        return None;
    }
    let mut dev = f[5].split(':');
    let maj = u64::from_str_radix(dev.next()?, 16).ok()?;
    let min = u64::from_str_radix(dev.next()?, 16).ok()?;
    let i: u64 = dev.next()?.parse().ok()?;
    (maj == major && min == minor && i == ino)
        .then(|| f[4].parse().ok())
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_locks_lines_are_read() {
        let l = "3: FLOCK  ADVISORY  WRITE 4242 00:1e:1234 0 EOF";
        assert_eq!(holder_in_line(l, 0, 0x1e, 1234), Some(4242));
        assert_eq!(holder_in_line(l, 0, 0x1e, 1235), None);
        assert_eq!(
            holder_in_line(
                "3: -> FLOCK  ADVISORY  WRITE 7 00:1e:1234 0 EOF",
                0,
                0x1e,
                1234
            ),
            None
        );
        assert_eq!(
            holder_in_line(
                "1: POSIX  ADVISORY  WRITE 9 00:1e:1234 0 EOF",
                0,
                0x1e,
                1234
            ),
            None
        );
    }

    #[test]
    fn a_second_writer_is_refused_with_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let first = WriterLock::acquire(dir.path(), "the store").unwrap();
        // flock locks belong to the open file: a second open in this process conflicts
        // as another process would.
        let err = WriterLock::acquire(dir.path(), "the store").unwrap_err();
        match &err {
            LockError::Held { holder, .. } => {
                assert_eq!(holder.pid, std::process::id());
                assert!(!holder.command.is_empty());
            }
            other => panic!("{other}"),
        }
        assert!(err.to_string().contains("is in use by PID"), "{err}");
        drop(first);
        WriterLock::acquire(dir.path(), "the store").unwrap();
        assert_eq!(holder(dir.path()), None);
    }
}
