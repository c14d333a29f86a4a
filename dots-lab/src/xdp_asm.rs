//! Raw bpf(2) for the programs that are not object files: the benchmarks' empty baseline and
//! the generator's hand-assembled programs (live frames, fan-out), their test runs, run
//! statistics and links. aya loads object files; these are a few instructions each.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

pub const BPF_MAP_CREATE: i64 = 0;
pub const BPF_MAP_UPDATE_ELEM: i64 = 2;
pub const BPF_PROG_LOAD: i64 = 5;
pub const BPF_PROG_TEST_RUN: i64 = 10;
pub const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;
pub const BPF_LINK_CREATE: i64 = 28;
pub const BPF_ENABLE_STATS: i64 = 32;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;

/// A `union bpf_attr`, zeroed, large enough for every command used here.
pub type Attr = [u8; 128];

/// bpf(2); returns the syscall's non-negative result.
pub fn bpf(cmd: i64, attr: &mut Attr) -> io::Result<i64> {
    // SAFETY: attr is a zero-initialised bpf_attr-sized buffer laid out for `cmd`.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// bpf(2) for a command that returns a new descriptor (map or program load, link create).
pub fn bpf_fd(cmd: i64, attr: &mut Attr) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

pub fn put_u32(a: &mut Attr, off: usize, v: u32) {
    a[off..off + 4].copy_from_slice(&v.to_ne_bytes());
}

pub fn put_u64(a: &mut Attr, off: usize, v: u64) {
    a[off..off + 8].copy_from_slice(&v.to_ne_bytes());
}

/// One eBPF instruction: opcode, dst/src registers, offset, immediate.
pub fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut i = [0u8; 8];
    i[0] = code;
    i[1] = (src << 4) | (dst & 0x0f);
    i[2..4].copy_from_slice(&off.to_le_bytes());
    i[4..8].copy_from_slice(&imm.to_le_bytes());
    i
}

/// Loads an XDP program; a refusal carries the verifier's log.
pub fn load_xdp(insns: &[[u8; 8]]) -> io::Result<OwnedFd> {
    let code: Vec<u8> = insns.concat();
    let license = c"GPL";
    let mut log = vec![0u8; 64 * 1024];
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, BPF_PROG_TYPE_XDP);
    put_u32(&mut attr, 4, insns.len() as u32);
    put_u64(&mut attr, 8, code.as_ptr() as u64);
    put_u64(&mut attr, 16, license.as_ptr() as u64);
    put_u32(&mut attr, 24, 1); // log_level
    put_u32(&mut attr, 28, log.len() as u32);
    put_u64(&mut attr, 32, log.as_mut_ptr() as u64);
    bpf_fd(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        if end == 0 {
            return e;
        }
        io::Error::new(
            e.kind(),
            format!("{e}\n{}", String::from_utf8_lossy(&log[..end])),
        )
    })
}

/// Attaches an XDP program to an interface in native mode with a bpf_link; closing the
/// returned fd detaches it. The ifindex is of the calling thread's network namespace.
pub fn link_xdp(prog: BorrowedFd<'_>, ifindex: u32) -> io::Result<OwnedFd> {
    let mut attr = [0u8; 128];
    put_u32(&mut attr, 0, prog.as_raw_fd() as u32);
    put_u32(&mut attr, 4, ifindex);
    put_u32(&mut attr, 8, BPF_XDP);
    put_u32(&mut attr, 12, XDP_FLAGS_DRV_MODE);
    bpf_fd(BPF_LINK_CREATE, &mut attr)
}
