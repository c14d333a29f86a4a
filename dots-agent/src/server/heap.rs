//! Gives freed heap back to the system after a load peak.
//!
//! A flood of handshakes or sessions grows the heap by hundreds of MiB; once it ends, glibc
//! keeps the freed pages (they lie below live allocations, so the heap's top cannot shrink),
//! and RSS stays at the peak (measured: `dots-lab bounds`, README "Resource bounds").
//! `malloc_trim` releases free pages anywhere in every arena (madvise), so a quiet server
//! goes back to its working set. A thread of its own: a trim walks every arena, which takes
//! milliseconds on a large heap, time the async workers should not lose.

use std::time::Duration;

/// How often to trim: a flood's memory comes back within this, and the cost (one walk of
/// the heap) is nothing at this rate.
const EVERY: Duration = Duration::from_secs(15);
/// A trim that released less than this is not worth a log line.
const WORTH_LOGGING: u64 = 16 << 20;

/// Starts the trimming thread (glibc only: other allocators return memory themselves).
pub fn spawn_trimmer() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let started = std::thread::Builder::new()
            .name("heap-trim".into())
            .spawn(|| loop {
                std::thread::sleep(EVERY);
                let before = resident_bytes();
                // SAFETY: malloc_trim takes the allocator's own locks; 0 keeps no pad.
                unsafe { libc::malloc_trim(0) };
                let (Some(before), Some(after)) = (before, resident_bytes()) else {
                    continue;
                };
                if before.saturating_sub(after) >= WORTH_LOGGING {
                    tracing::info!(
                        "returned {} MiB of freed heap to the system (resident {} -> {} MiB)",
                        (before - after) >> 20,
                        before >> 20,
                        after >> 20
                    );
                }
            });
        if let Err(e) = started {
            tracing::warn!("no heap-trim thread ({e}): memory freed after a flood stays resident");
        }
    }
}

/// This process's resident set, from /proc/self/statm (pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_resident_set_is_read() {
        let rss = super::resident_bytes().expect("/proc/self/statm");
        assert!(rss > 1 << 20, "a test process holds more than 1 MiB: {rss}");
    }
}
