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

use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use anyhow::{bail, Context, Result};

use crate::xdp_asm::{
    bpf, bpf_fd, insn, link_xdp, load_xdp, put_u32, put_u64, BPF_MAP_CREATE, BPF_MAP_UPDATE_ELEM,
};

const BPF_MAP_TYPE_DEVMAP: u32 = 14;
const BPF_F_BROADCAST: i32 = 1 << 3;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const FUNC_REDIRECT_MAP: i32 = 51;
/// Most copies per frame (the output veth's ring holds 256 frames per receive poll).
pub const MAX_COPIES: u32 = 128;

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
            dots_agent::datapath::interface_index(name)
                .with_context(|| format!("no interface {name:?} in this network namespace"))
        };
        let (in_idx, out_idx) = (index(input)?, index(output)?);
        let mut attr = [0u8; 128];
        put_u32(&mut attr, 0, BPF_MAP_TYPE_DEVMAP);
        put_u32(&mut attr, 4, 4); // key: slot
        put_u32(&mut attr, 8, 4); // value: ifindex
        put_u32(&mut attr, 12, copies);
        let map = bpf_fd(BPF_MAP_CREATE, &mut attr).context("creating the fan-out device map")?;
        for slot in 0..copies {
            let mut attr = [0u8; 128];
            put_u32(&mut attr, 0, map.as_raw_fd() as u32);
            put_u64(&mut attr, 8, &slot as *const u32 as u64);
            put_u64(&mut attr, 16, &out_idx as *const u32 as u64);
            // The pointers above are to slot and out_idx, which outlive the call.
            bpf(BPF_MAP_UPDATE_ELEM, &mut attr).context("filling the fan-out device map")?;
        }
        // return bpf_redirect_map(&map, 0, BPF_F_BROADCAST);
        let prog = load_xdp(&[
            insn(0x18, 1, BPF_PSEUDO_MAP_FD, 0, map.as_raw_fd()), // r1 = map (ld_imm64)
            insn(0, 0, 0, 0, 0),
            insn(0xb7, 2, 0, 0, 0),               // r2 = 0
            insn(0xb7, 3, 0, 0, BPF_F_BROADCAST), // r3 = BPF_F_BROADCAST
            insn(0x85, 0, 0, 0, FUNC_REDIRECT_MAP),
            insn(0x95, 0, 0, 0, 0), // exit
        ])
        .context("loading the fan-out program")?;
        let link = link_xdp(prog.as_fd(), in_idx)
            .with_context(|| format!("attaching the fan-out program to {input}"))?;
        Ok(Fanout {
            _map: map,
            _prog: prog,
            _link: link,
            copies,
        })
    }
}
