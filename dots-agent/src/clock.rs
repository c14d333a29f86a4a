//! The shell's clock. The engine and the protocol core take time as an argument; this is
//! where the process reads it.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the epoch (the engine's time).
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Now, as a signal-channel session takes it.
pub fn now() -> crate::signal::session::Now {
    crate::signal::session::Now {
        at: std::time::Instant::now(),
        unix: unix_now(),
    }
}
