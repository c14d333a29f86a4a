//! An in-kernel frame multiplier for the benchmark, for kernels that refuse XDP live frames.
//!
//! A socket sender's frames are skbs, and an skb costs the sending CPU more than any XDP
//! program costs the receiver: measured that way, nftables drops as fast as an empty XDP
//! program and the comparison says nothing. The fan-out turns each socket frame into
//! `copies` XDP frames: an XDP program on the receiving end of a generator veth pair
//! broadcasts every frame (`bpf_redirect_map` with `BPF_F_BROADCAST`) to a device map whose
//! every slot names the output interface, so the kernel clones it into `copies` xdp_frames
//! and transmits them (`ndo_xdp_xmit`). The interface under test then receives xdp_frames,
//! as from a NIC: XDP programs run on them without an skb, and the stack (nftables) has to
//! build one, so each dropper pays what it would pay on real hardware. The socket's
//! per-frame cost is divided by `copies`.
//!
//! Hand-assembled like [`super::live`]: five instructions and one map, loaded with bpf(2).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};

const BPF_MAP_CREATE: i64 = 0;
const BPF_MAP_UPDATE_ELEM: i64 = 2;
const BPF_PROG_LOAD: i64 = 5;
const BPF_LINK_CREATE: i64 = 28;
const BPF_MAP_TYPE_DEVMAP: u32 = 14;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const XDP_FLAGS_DRV_MODE: u32 = 1 << 2;
const BPF_F_BROADCAST: i32 = 1 << 3;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const FUNC_REDIRECT_MAP: i32 = 51;
/// Most copies per frame: the output veth's ring holds 256 frames per receive poll.
pub const MAX_COPIES: u32 = 128;

fn bpf(cmd: i64, attr: &mut [u8; 128]) -> io::Result<i64> {
    // SAFETY: attr is a zero-initialised bpf_attr-sized buffer laid out for `cmd`.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), attr.len() as u32) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(rc)
}

/// A command that returns a new descriptor (map or program load, link create).
fn bpf_fd(cmd: i64, attr: &mut [u8; 128]) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: the kernel returned a new descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn put(a: &mut [u8; 128], off: usize, v: &[u8]) {
    a[off..off + v.len()].copy_from_slice(v);
}

fn insn(code: u8, regs: u8, off: i16, imm: i32) -> [u8; 8] {
    let mut i = [0u8; 8];
    i[0] = code;
    i[1] = regs;
    i[2..4].copy_from_slice(&off.to_le_bytes());
    i[4..8].copy_from_slice(&imm.to_le_bytes());
    i
}

/// The multiplier: attached while this value lives (closing the link detaches it).
pub struct Fanout {
    _map: OwnedFd,
    _prog: OwnedFd,
    _link: OwnedFd,
    pub copies: u32,
}

impl Fanout {
    /// Broadcasts every frame arriving on `input` (native XDP) to `copies` slots that all
    /// transmit on `output`. Both interfaces are looked up in the calling thread's network
    /// namespace.
    pub fn attach(input: &str, output: &str, copies: u32) -> Result<Fanout> {
        if !(1..=MAX_COPIES).contains(&copies) {
            bail!("copies must be between 1 and {MAX_COPIES}");
        }
        let index = |name: &str| {
            crate::datapath::interface_index(name)
                .with_context(|| format!("no interface {name:?} in this network namespace"))
        };
        let (in_idx, out_idx) = (index(input)?, index(output)?);
        let mut attr = [0u8; 128];
        put(&mut attr, 0, &BPF_MAP_TYPE_DEVMAP.to_ne_bytes());
        put(&mut attr, 4, &4u32.to_ne_bytes());
        put(&mut attr, 8, &4u32.to_ne_bytes());
        put(&mut attr, 12, &copies.to_ne_bytes());
        let map = bpf_fd(BPF_MAP_CREATE, &mut attr).context("creating the fan-out device map")?;
        for slot in 0..copies {
            let mut attr = [0u8; 128];
            put(&mut attr, 0, &(map.as_raw_fd() as u32).to_ne_bytes());
            put(&mut attr, 8, &(&slot as *const u32 as u64).to_ne_bytes());
            put(
                &mut attr,
                16,
                &(&out_idx as *const u32 as u64).to_ne_bytes(),
            );
            // The pointers above are to slot and out_idx, which outlive the call.
            bpf(BPF_MAP_UPDATE_ELEM, &mut attr).context("filling the fan-out device map")?;
        }
        let prog = load_program(map.as_raw_fd())?;
        let mut attr = [0u8; 128];
        put(&mut attr, 0, &(prog.as_raw_fd() as u32).to_ne_bytes());
        put(&mut attr, 4, &in_idx.to_ne_bytes());
        put(&mut attr, 8, &BPF_XDP.to_ne_bytes());
        put(&mut attr, 12, &XDP_FLAGS_DRV_MODE.to_ne_bytes());
        let link = bpf_fd(BPF_LINK_CREATE, &mut attr)
            .with_context(|| format!("attaching the fan-out program to {input}"))?;
        Ok(Fanout {
            _map: map,
            _prog: prog,
            _link: link,
            copies,
        })
    }
}

/// `return bpf_redirect_map(&map, 0, BPF_F_BROADCAST);`
fn load_program(map_fd: i32) -> Result<OwnedFd> {
    let insns: Vec<u8> = [
        insn(0x18, 1 | (BPF_PSEUDO_MAP_FD << 4), 0, map_fd), // r1 = map (ld_imm64)
        insn(0, 0, 0, 0),
        insn(0xb7, 2, 0, 0),               // r2 = 0
        insn(0xb7, 3, 0, BPF_F_BROADCAST), // r3 = BPF_F_BROADCAST
        insn(0x85, 0, 0, FUNC_REDIRECT_MAP),
        insn(0x95, 0, 0, 0), // exit
    ]
    .concat();
    let license = c"GPL";
    let mut log = vec![0u8; 16 * 1024];
    let mut attr = [0u8; 128];
    put(&mut attr, 0, &BPF_PROG_TYPE_XDP.to_ne_bytes());
    put(&mut attr, 4, &((insns.len() / 8) as u32).to_ne_bytes());
    put(&mut attr, 8, &(insns.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 16, &(license.as_ptr() as u64).to_ne_bytes());
    put(&mut attr, 24, &1u32.to_ne_bytes());
    put(&mut attr, 28, &(log.len() as u32).to_ne_bytes());
    put(&mut attr, 32, &(log.as_mut_ptr() as u64).to_ne_bytes());
    bpf_fd(BPF_PROG_LOAD, &mut attr).map_err(|e| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        anyhow::anyhow!(
            "loading the fan-out program: {e}\n{}",
            String::from_utf8_lossy(&log[..end])
        )
    })
}
