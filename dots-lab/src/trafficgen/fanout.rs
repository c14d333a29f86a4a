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
//! Hand-assembled like [`super::live`]: five instructions and one map, loaded by aya (see
//! [`crate::xdp_asm`]), which also creates the map and attaches the program.

use anyhow::{bail, Context, Result};
use aya::maps::DevMap;
use aya::programs::xdp::XdpMode;

use crate::xdp_asm::{insn, HandXdp, MapRef};

const BPF_MAP_TYPE_DEVMAP: u32 = 14;
const BPF_F_BROADCAST: i32 = 1 << 3;
const FUNC_REDIRECT_MAP: i32 = 51;
const MAP: &str = "fanout_ports";
/// Most copies per frame (the output veth's ring holds 256 frames per receive poll).
pub const MAX_COPIES: u32 = 128;

/// The multiplier: attached while this value lives (dropping the program detaches it).
pub struct Fanout {
    _prog: HandXdp,
    pub copies: u32,
}

/// Loads `return bpf_redirect_map(&map, 0, BPF_F_BROADCAST);` with a device map of
/// `copies` slots.
fn load(copies: u32) -> Result<HandXdp> {
    let map = MapRef {
        name: MAP,
        map_type: BPF_MAP_TYPE_DEVMAP,
        key_size: 4, // slot
        // struct bpf_devmap_val (ifindex, program fd 0: none): what aya's DevMap expects on
        // kernels with BPF_F_BROADCAST (5.13+; they all have the program field).
        value_size: 8,
        max_entries: copies,
        insn: 0,
    };
    HandXdp::load(
        "dots_fanout",
        &[
            insn(0x18, 1, 0, 0, 0), // r1 = map (ld_imm64, relocated by aya)
            insn(0, 0, 0, 0, 0),
            insn(0xb7, 2, 0, 0, 0),               // r2 = 0
            insn(0xb7, 3, 0, 0, BPF_F_BROADCAST), // r3 = BPF_F_BROADCAST
            insn(0x85, 0, 0, 0, FUNC_REDIRECT_MAP),
            insn(0x95, 0, 0, 0, 0), // exit
        ],
        Some(&map),
    )
    .context("loading the fan-out program")
}

impl Fanout {
    /// Broadcasts every frame arriving on `input` (native XDP) to `copies` slots that all
    /// transmit on `output`. Both interfaces are looked up in the calling thread's network
    /// namespace.
    pub fn attach(input: &str, output: &str, copies: u32) -> Result<Fanout> {
        if !(1..=MAX_COPIES).contains(&copies) {
            bail!("copies must be between 1 and {MAX_COPIES}");
        }
        let out_idx = dots_agent::datapath::interface_index(output)
            .with_context(|| format!("no interface {output:?} in this network namespace"))?;
        let mut prog = load(copies)?;
        let mut ports = DevMap::try_from(prog.map_mut(MAP).context("the fan-out device map")?)?;
        for slot in 0..copies {
            ports
                .set(slot, out_idx, None, 0)
                .context("filling the fan-out device map")?;
        }
        prog.program_mut()
            .attach(input, XdpMode::Driver)
            .with_context(|| format!("attaching the fan-out program to {input}"))?;
        Ok(Fanout {
            _prog: prog,
            copies,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Without interfaces: the program loads with its map relocated (the verifier refuses an
    /// ld_imm64 without a map) and asks for a redirect.
    #[test]
    fn the_fanout_program_loads_with_its_map_and_redirects() {
        let mut prog = load(4).unwrap();
        let mut ports = DevMap::try_from(prog.map_mut(MAP).unwrap()).unwrap();
        ports.set(0, 1, None, 0).unwrap();
        let frame = crate::packet::PacketSpec::udp("192.0.2.1", "198.51.100.1", 1, 2).build();
        let t = crate::testrun::run(prog.program(), &frame, 1).unwrap();
        assert_eq!(t.return_value, 4, "XDP_REDIRECT");
    }
}
