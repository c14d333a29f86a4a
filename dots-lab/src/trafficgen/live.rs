//! The fast sender: `BPF_PROG_RUN` in XDP live-frames mode.
//!
//! The kernel builds real xdp_frames from our template in a page pool and runs an XDP
//! program on each; the program picks a source at random, writes it (and the compensating
//! words, see [`super::Template`]) into the frame and returns `bpf_redirect(ifindex)`, so the
//! frame leaves through that interface (a veth: it arrives at the peer's XDP hook, then its
//! stack). Modifications persist across recycled frames (see [`program`]), so the program
//! writes the template's headers back into every frame before its per-packet changes.
//!
//! Why hand-assembled instructions (loaded by aya, see [`crate::xdp_asm`]) rather than a
//! second program in the xdp-filter crate: the program is a few dozen instructions whose
//! constants (offsets, values, source count, ifindex) are baked in per flow, it needs no maps,
//! and keeping it here leaves the filter's object and its build untouched.

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::{Pace, Pacer, Template};

use crate::testrun::run_live;
use crate::xdp_asm::{insn, HandXdp};

const FUNC_GET_PRANDOM_U32: i32 = 7;
const FUNC_REDIRECT: i32 = 23;

// Opcodes used below (class | op | source).
const MOV64_X: u8 = 0xbf;
const MOV64_K: u8 = 0xb7;
const ADD64_X: u8 = 0x0f;
const ADD64_K: u8 = 0x07;
const SUB64_X: u8 = 0x1f;
const MOD64_K: u8 = 0x97;
const TO_BE: u8 = 0xdc; // BPF_ALU | BPF_END | BPF_TO_BE
const LDX_W: u8 = 0x61;
const STX_H: u8 = 0x6b;
const ST_W: u8 = 0x62; // BPF_ST | BPF_MEM | BPF_W
const JGT_X: u8 = 0x2d;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;

/// The instructions of the generator program for `t`, redirecting to `ifindex`.
///
/// Every packet gets the template's headers written back (Ethernet, IP, transport and the
/// first payload word) before the per-source words: pages recycled by the live-frames page
/// pool keep whatever was written into them, and a frame that the scrubber forwarded comes
/// back with its MAC addresses rewritten and its TTL decremented (seen in the lab: such
/// frames were not addressed to the scrubber any more and vanished).
pub fn program(t: &Template, ifindex: u32) -> Vec<[u8; 8]> {
    let mut p = Vec::new();
    let header = header_len(t).min(t.frame.len() / 4 * 4);
    let mut writes = Vec::new();
    if t.sources > 1 {
        writes.push((t.source_word.0, t.source_word.1, ADD64_X));
        writes.extend(t.compensation.iter().map(|&(o, v)| (o, v, SUB64_X)));
    }
    let end = writes
        .iter()
        .map(|w| w.0 + 2)
        .max()
        .unwrap_or(0)
        .max(header);
    p.push(insn(MOV64_X, 6, 1, 0, 0)); // r6 = ctx
    p.push(insn(MOV64_K, 7, 0, 0, 0)); // r7 = k = 0
    if t.sources > 1 {
        p.push(insn(CALL, 0, 0, 0, FUNC_GET_PRANDOM_U32));
        p.push(insn(MOD64_K, 0, 0, 0, t.sources as i32)); // r0 %= sources
        p.push(insn(MOV64_X, 7, 0, 0, 0)); // r7 = k
    }
    p.push(insn(LDX_W, 2, 6, 0, 0)); // r2 = ctx->data
    p.push(insn(LDX_W, 3, 6, 4, 0)); // r3 = ctx->data_end
    p.push(insn(MOV64_X, 4, 2, 0, 0));
    p.push(insn(ADD64_K, 4, 0, 0, end as i32));
    let mut body = Vec::new();
    for off in (0..header).step_by(4) {
        let word = i32::from_le_bytes(t.frame[off..off + 4].try_into().expect("4 bytes"));
        body.push(insn(ST_W, 2, 0, off as i16, word)); // *(u32 *)(data + off) = template
    }
    for (off, base, op) in writes {
        body.push(insn(MOV64_K, 5, 0, 0, base as i32)); // r5 = base
        body.push(insn(op, 5, 7, 0, 0)); // r5 +/-= k
        body.push(insn(TO_BE, 5, 0, 0, 16)); // network order
        body.push(insn(STX_H, 2, 5, off as i16, 0)); // *(u16 *)(data + off) = r5
    }
    // if data + end > data_end: skip the writes.
    p.push(insn(JGT_X, 4, 3, body.len() as i16, 0));
    p.extend(body);
    p.push(insn(MOV64_K, 1, 0, 0, ifindex as i32));
    p.push(insn(MOV64_K, 2, 0, 0, 0));
    p.push(insn(CALL, 0, 0, 0, FUNC_REDIRECT));
    p.push(insn(EXIT, 0, 0, 0, 0));
    p
}

/// Bytes of the template to restore per packet: up to the end of the first payload word
/// (or of the transport header), rounded up to whole 32-bit words.
fn header_len(t: &Template) -> usize {
    let v4 = t.frame.get(12..14) == Some(&[0x08, 0x00][..]);
    let l4: usize = if v4 { 34 } else { 54 };
    let proto = if v4 { t.frame[23] } else { t.frame[20] };
    let l4_header = if proto == 6 { 20 } else { 8 };
    (l4 + l4_header + 2).div_ceil(4) * 4
}

/// Loads the generator program (the verifier's log is part of the error).
pub fn load(t: &Template, ifindex: u32) -> Result<HandXdp> {
    HandXdp::load("dots_gen", &program(t, ifindex), None)
        .context("loading the generator's XDP program")
}

/// Frames per redirect flush in live-frames mode.
const LIVE_BATCH: u32 = 64;

/// A live-frames sender for one flow, bound to an interface of the calling thread's network
/// namespace (the redirect resolves the ifindex in the namespace of the thread that runs).
pub struct LiveSender {
    prog: HandXdp,
    frame: Vec<u8>,
    /// Frames sent by `new`'s probe, counted by the first `run`.
    probe: AtomicU64,
}

impl LiveSender {
    pub fn new(t: &Template, iface: &str) -> Result<LiveSender> {
        let ifindex = dots_agent::datapath::interface_index(iface)
            .with_context(|| format!("no interface {iface:?} in this network namespace"))?;
        let prog = load(t, ifindex)?;
        let s = LiveSender {
            prog,
            frame: t.frame.clone(),
            probe: AtomicU64::new(1),
        };
        // One frame first: a kernel without live frames (or an interface that cannot take
        // redirected frames) fails here with a clear message instead of mid-run.
        run_live(s.prog.program(), &s.frame, 1, LIVE_BATCH).map_err(|e| {
            anyhow::anyhow!(
                "BPF_PROG_RUN with XDP live frames on {iface}: {e} (needs Linux 5.18+; a veth \
                 only takes redirected frames when its peer has an XDP program or GRO enabled)"
            )
        })?;
        Ok(s)
    }

    /// Sends per `pace`, adding each batch to `sent` as it goes; stops early when `stop` is
    /// set. Returns the number of packets sent.
    ///
    /// Each BPF_PROG_RUN call sets up and tears down a page pool, which costs milliseconds
    /// (an RCU grace period; measured 2 to 25 ms here, depending on load), so calls must be
    /// few and large: a paced flow sends what is due every [`PACE_PERIOD`] in one call (a
    /// burst at full speed, then a pause); an unpaced one sizes its calls to about
    /// [`FULL_SPEED_CALL`] of sending at the rate the previous call achieved.
    pub fn run(&self, pace: Pace, sent: &AtomicU64, stop: &AtomicBool) -> Result<u64> {
        let mut pacer = Pacer::new(pace, PACE_PERIOD);
        let mut total = self.probe.swap(0, Ordering::Relaxed);
        sent.fetch_add(total, Ordering::Relaxed);
        let mut rate_estimate = 1_000_000.0f64;
        while let Some(due) = pacer.next(total, stop) {
            let n = due.packets.unwrap_or_else(|| {
                let left = due.left.min(FULL_SPEED_CALL).as_secs_f64();
                (rate_estimate * left) as u64
            });
            let n = n.clamp(1, MAX_CALL).min(due.remaining);
            let t = Instant::now();
            match run_live(self.prog.program(), &self.frame, n as u32, LIVE_BATCH) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => bail!("BPF_PROG_RUN live frames: {e}"),
            }
            rate_estimate = (n as f64 / t.elapsed().as_secs_f64().max(1e-6)).max(10_000.0);
            total += n;
            sent.fetch_add(n, Ordering::Relaxed);
        }
        Ok(total)
    }
}

/// A paced flow sends every this often.
pub const PACE_PERIOD: Duration = Duration::from_millis(100);
/// An unpaced flow's calls last about this long.
pub const FULL_SPEED_CALL: Duration = Duration::from_millis(500);
/// At most this many packets per call.
const MAX_CALL: u64 = 1 << 26;
