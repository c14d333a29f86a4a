//! BPF_PROG_TEST_RUN through aya: the benchmarks' timing of any XDP program (with the
//! trivial program they compare against), and the generator's live-frames runs.

use std::io;
use std::time::Instant;

use aya::programs::{ProgramError, TestRun, TestRunAttrs, TestRunOptions, Xdp};
use aya::sys::SyscallError;

use crate::xdp_asm::{self, HandXdp};

/// Loads `r0 = action; exit`: the cheapest possible XDP program (2 = XDP_PASS, 1 = XDP_DROP).
pub fn load_trivial_xdp(action: u32) -> anyhow::Result<HandXdp> {
    xdp_asm::empty(action)
}

#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub return_value: u32,
    /// The kernel's per-run average (whole nanoseconds).
    pub kernel_ns: u32,
    /// Wall time of the whole syscall divided by the repeat count (sub-nanosecond).
    pub wall_ns: f64,
}

/// Runs the program `repeat` times on `frame`.
pub fn run(prog: &Xdp, frame: &[u8], repeat: u32) -> io::Result<Timing> {
    let repeat = repeat.max(1);
    let mut out = vec![0u8; frame.len() + 256];
    let t0 = Instant::now();
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(frame),
            data_out: Some(&mut out),
            repeat,
            ..Default::default()
        })
        .map_err(io_error)?;
    let wall = t0.elapsed();
    Ok(Timing {
        return_value: r.return_value,
        kernel_ns: u32::try_from(r.duration.as_nanos()).unwrap_or(u32::MAX),
        wall_ns: wall.as_secs_f64() * 1e9 / repeat as f64,
    })
}

/// Runs the program `repeat` times in XDP live-frames mode on `frame`: the kernel builds real
/// xdp_frames from it and carries out the program's redirects, `batch` frames per flush.
pub fn run_live(prog: &Xdp, frame: &[u8], repeat: u32, batch: u32) -> io::Result<()> {
    prog.test_run(TestRunOptions {
        data_in: Some(frame),
        repeat,
        attrs: TestRunAttrs::new().xdp_live_frames(batch),
        ..Default::default()
    })
    .map(|_| ())
    .map_err(io_error)
}

/// The syscall's own error where there is one, so callers can tell EINTR from EPERM and the
/// user reads the kernel's answer.
fn io_error(e: ProgramError) -> io::Error {
    match e {
        ProgramError::SyscallError(SyscallError { io_error, .. }) => io_error,
        other => io::Error::other(other),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trivial_program_returns_its_action() {
        let p = load_trivial_xdp(1).unwrap();
        let frame = crate::packet::PacketSpec::udp("192.0.2.1", "198.51.100.1", 1, 2).build();
        assert_eq!(run(p.program(), &frame, 10).unwrap().return_value, 1);
        let p = load_trivial_xdp(2).unwrap();
        assert_eq!(run(p.program(), &frame, 10).unwrap().return_value, 2);
    }
}
