//! File descriptors: the limit raised as far as the system lets us, then shared between the
//! TCP listeners so that a flood on one cannot take the descriptors another needs. The
//! signal channel is what protection depends on: it gets the larger share (and DTLS needs
//! no descriptor per session at all); the data channel and /metrics are capped below it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The next connection on `listener`, once one of `slots` is free (the slot goes with the
/// connection); None once the slots are closed. A failed accept (descriptors run out, ...) is
/// logged as `what: error` and tried again after a pause, so that failing does not spin.
pub async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
    what: &str,
) -> Option<(OwnedSemaphorePermit, TcpStream, SocketAddr)> {
    let slot = slots.clone().acquire_owned().await.ok()?;
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => return Some((slot, tcp, peer)),
            Err(e) => {
                tracing::warn!("{what}: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Descriptors kept for everything that is not a connection: the store, BPF maps and
/// links, listening sockets, logs, and a margin for accept().
const RESERVED: u64 = 64;

/// Raises RLIMIT_NOFILE's soft limit to the hard one; returns (before, now).
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let mut l = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid rlimit.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let before = l.rlim_cur;
        if l.rlim_cur < l.rlim_max {
            l.rlim_cur = l.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        Ok((before, l.rlim_cur))
    }
}

/// Raises the limit, logs it, and shares it between `config`'s listeners.
pub fn plan(config: &super::ServerConfig) -> Budget {
    let limit = match raise_nofile() {
        Ok((before, now)) if before < now => {
            tracing::info!("open files limit raised from {before} to {now} (RLIMIT_NOFILE)");
            now
        }
        Ok((_, now)) => {
            tracing::info!("open files limit {now} (RLIMIT_NOFILE, already at its hard limit)");
            now
        }
        Err(e) => {
            tracing::warn!("open files limit: {e}; assuming 1024");
            1024
        }
    };
    let listeners = Budget {
        signal_tls: config.signal.listen.len(),
        data: config.data.as_ref().map_or(0, |d| d.listen.len()),
        metrics: config.metrics.listen.len(),
    };
    let b = budget(
        limit,
        open_descriptors(),
        listeners,
        super::https::MAX_CONNECTIONS,
        config.metrics.max_connections,
    );
    tracing::info!(
        "connections at once per address: signal channel TLS {}, data channel {}, metrics {}",
        b.signal_tls,
        b.data,
        b.metrics
    );
    b
}

/// Descriptors this process has open now.
pub fn open_descriptors() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// Connections each TCP listener may hold at once (per listener address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub signal_tls: usize,
    pub data: usize,
    pub metrics: usize,
}

/// Shares what is left of `limit` once `open` descriptors and the reserve are taken:
/// the data channel up to `data_wanted` but at most a quarter, /metrics up to
/// `metrics_wanted` but at most an eighth, the signal channel's TLS the rest (so at least
/// five eighths), each at least 1. `listeners` counts each kind's addresses, which divide
/// its share.
pub fn budget(
    limit: u64,
    open: u64,
    listeners: Budget,
    data_wanted: usize,
    metrics_wanted: usize,
) -> Budget {
    let free = limit.saturating_sub(open + RESERVED) as usize;
    let per = |total: usize, n: usize| (total / n.max(1)).max(1);
    let data_total = if listeners.data == 0 {
        0
    } else {
        (free / 4).min(data_wanted * listeners.data)
    };
    let metrics_total = if listeners.metrics == 0 {
        0
    } else {
        (free / 8).min(metrics_wanted * listeners.metrics)
    };
    let signal_total = free.saturating_sub(data_total + metrics_total);
    Budget {
        signal_tls: per(signal_total, listeners.signal_tls),
        data: per(data_total, listeners.data),
        metrics: per(metrics_total, listeners.metrics),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE_EACH: Budget = Budget {
        signal_tls: 1,
        data: 1,
        metrics: 1,
    };

    #[test]
    fn the_signal_channel_keeps_most() {
        // The machine: 1,024 descriptors.
        let b = budget(1024, 20, ONE_EACH, 1024, 64);
        assert_eq!(
            b,
            Budget {
                signal_tls: 641,
                data: 235,
                metrics: 64
            }
        );
        // A raised limit: each gets what it asks, the signal channel the rest.
        let b = budget(1 << 20, 20, ONE_EACH, 1024, 64);
        assert_eq!((b.data, b.metrics), (1024, 64));
        assert!(b.signal_tls > 1_000_000);
        // A tiny limit still leaves everyone one.
        let b = budget(64, 20, ONE_EACH, 1024, 64);
        assert_eq!(b, ONE_EACH);
    }

    #[test]
    fn shares_divide_between_addresses() {
        let two = Budget {
            signal_tls: 2,
            data: 2,
            metrics: 0,
        };
        let b = budget(1 << 20, 0, two, 1024, 64);
        assert_eq!(b.data, 1024);
        assert_eq!(
            b.metrics, 1,
            "no metrics listener: nothing taken from the others"
        );
    }

    #[test]
    fn the_limit_is_raised_to_the_hard_one() {
        let (_, now) = raise_nofile().unwrap();
        let mut l = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) };
        assert_eq!((now, l.rlim_cur), (l.rlim_max, l.rlim_max));
    }
}
