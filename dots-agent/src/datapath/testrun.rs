//! BPF_PROG_TEST_RUN timing for any XDP program fd, and a trivial XDP program loaded from
//! two raw instructions (the baseline benchmarks compare against). Raw syscalls because the
//! baseline is not an object file, and so every program is timed the same way.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::Instant;

const BPF_PROG_LOAD: i64 = 5;
const BPF_PROG_TEST_RUN: i64 = 10;
const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;
const BPF_ENABLE_STATS: i64 = 32;
const BPF_STATS_RUN_TIME: u32 = 0;
const BPF_PROG_TYPE_XDP: u32 = 6;

fn bpf(cmd: i64, attr: &mut [u8; 128]) -> io::Result<i64> {
    // SAFETY: attr is a zero-initialised bpf_attr-sized buffer laid out for `cmd`.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

fn put_u32(a: &mut [u8; 128], off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

fn put_u64(a: &mut [u8; 128], off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

/// Loads `r0 = action; exit`: the cheapest possible XDP program (2 = XDP_PASS, 1 = XDP_DROP).
pub fn load_trivial_xdp(action: u32) -> io::Result<OwnedFd> {
    let mut insns = [0u8; 16];
    insns[0] = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K, dst r0
    insns[4..8].copy_from_slice(&action.to_ne_bytes());
    insns[8] = 0x95; // BPF_JMP | BPF_EXIT
    let license = c"GPL";
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, BPF_PROG_TYPE_XDP);
    put_u32(&mut attr, 4, 2);
    put_u64(&mut attr, 8, insns.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    let fd = bpf(BPF_PROG_LOAD, &mut attr)?;
    // SAFETY: the kernel returned a new program fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// Turns on the kernel's per-program run statistics (run_time_ns, run_cnt) for as long as
/// the returned fd is open. They cost every program a clock read per run while on.
pub fn enable_run_stats() -> io::Result<OwnedFd> {
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, BPF_STATS_RUN_TIME);
    let fd = bpf(BPF_ENABLE_STATS, &mut attr)?;
    // SAFETY: the kernel returned a new fd that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
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
