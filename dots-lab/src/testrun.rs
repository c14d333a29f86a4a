//! BPF_PROG_TEST_RUN timing for any XDP program fd, and a trivial XDP program loaded from
//! two raw instructions (the baseline benchmarks compare against). Raw syscalls because the
//! baseline is not an object file, and so every program is timed the same way.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use crate::xdp_asm::{
    bpf, bpf_fd, insn, load_xdp, put_u32, put_u64, BPF_ENABLE_STATS, BPF_OBJ_GET_INFO_BY_FD,
    BPF_PROG_TEST_RUN,
};

const BPF_STATS_RUN_TIME: u32 = 0;

/// Loads `r0 = action; exit`: the cheapest possible XDP program (2 = XDP_PASS, 1 = XDP_DROP).
pub fn load_trivial_xdp(action: u32) -> io::Result<OwnedFd> {
    load_xdp(&[
        insn(0xb7, 0, 0, 0, action as i32), // BPF_ALU64 | BPF_MOV | BPF_K: r0 = action
        insn(0x95, 0, 0, 0, 0),             // BPF_JMP | BPF_EXIT
    ])
}

/// Turns on the kernel's per-program run statistics (run_time_ns, run_cnt) for as long as
/// the returned fd is open. They cost every program a clock read per run while on.
pub fn enable_run_stats() -> io::Result<OwnedFd> {
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, BPF_STATS_RUN_TIME);
    bpf_fd(BPF_ENABLE_STATS, &mut attr)
}

/// A program's accumulated run statistics: (nanoseconds spent in it, runs). Both stay 0
/// unless statistics are on (`enable_run_stats`).
pub fn run_stats(prog: BorrowedFd<'_>) -> io::Result<(u64, u64)> {
    // struct bpf_prog_info is 232 bytes on 6.x kernels; run_time_ns at 192, run_cnt at 200.
    let mut info = [0u8; 232];
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
    put_u32(&mut attr, 4, info.len() as u32);
    put_u64(&mut attr, 8, info.as_mut_ptr() as u64);
    bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    let len = u32::from_ne_bytes(attr[4..8].try_into().expect("4 bytes")) as usize;
    if len < 208 {
        return Err(io::Error::other(
            "kernel's bpf_prog_info has no run statistics",
        ));
    }
    let at = |o: usize| u64::from_ne_bytes(info[o..o + 8].try_into().expect("8 bytes"));
    Ok((at(192), at(200)))
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
pub fn run(prog: BorrowedFd<'_>, frame: &[u8], repeat: u32) -> io::Result<Timing> {
    let mut out = vec![0u8; frame.len() + 256];
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
    put_u32(&mut attr, 8, frame.len() as u32);
    put_u32(&mut attr, 12, out.len() as u32);
    put_u64(&mut attr, 16, frame.as_ptr() as u64);
    put_u64(&mut attr, 24, out.as_mut_ptr() as u64);
    put_u32(&mut attr, 32, repeat.max(1));
    let t0 = Instant::now();
    bpf(BPF_PROG_TEST_RUN, &mut attr)?;
    let wall = t0.elapsed();
    let return_value = u32::from_ne_bytes(attr[4..8].try_into().expect("4 bytes"));
    let kernel_ns = u32::from_ne_bytes(attr[36..40].try_into().expect("4 bytes"));
    Ok(Timing {
        return_value,
        kernel_ns,
        wall_ns: wall.as_secs_f64() * 1e9 / repeat.max(1) as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn trivial_program_returns_its_action() {
        let fd = load_trivial_xdp(1).unwrap();
        let frame = crate::packet::PacketSpec::udp("192.0.2.1", "198.51.100.1", 1, 2).build();
        assert_eq!(run(fd.as_fd(), &frame, 10).unwrap().return_value, 1);
    }
}
