//! xdp-filter: the dots-agent hot path.
//!
//! Per packet: parse; find the mitigation covering the destination (IPv4: one read of a
//! direct array per /24, plus a hash probe per longer target length present in that /24;
//! IPv6: a summary slot per hashed /48, then one hash probe per target length present),
//! which also fast-rejects every unmitigated destination; narrow by the mitigation's
//! protocol/port scope; then accept-list, drop-list, ACL entries (tuple-space search behind
//! a key filter), built-in countermeasures, pass. Everything is counted per CPU. Map
//! layouts: `xdp-common`.
#![no_std]
#![no_main]
// Atomic add on map values (core's AtomicU64 has no fetch_add on this target).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod parse;
mod rate;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns},
    macros::{map, xdp},
    maps::{Array, HashMap, LruHashMap, LruPerCpuHashMap, PerCpuArray},
    programs::XdpContext,
};
use xdp_common::{
    acl_action, bit_op, dst_v4, dst_v4_index, flags, list, prefix_tag, residual, source_kind,
    summary_index_v6, word_mask, AclKey, AclFilterBits, AclNarrowKey, AclRule, AclSlots, AclStats, AclTuple, AclTupleKeys,
    Bucket, Counter,
    DropReason, InterfaceSlot, InterfaceStats, LengthMask, MitigationConfig, MitigationStats, PrefixV4,
    PrefixV6, RateKey, TalkerKey, TargetValue, ACL_INDEX_VALUES, ACL_RULE_SLOTS,
    AMP_PORT_WORDS, BPF_F_MMAPABLE, CONFIG_SLOTS, DST_V4_VALUES, IF_STATS_SLOTS, MAX_CHAIN, SCRATCH_WORDS,
    MAX_MITIGATIONS, MAX_PREFIX_LENGTHS, MAX_SCOPE_PORT_RANGES, MAX_SRC_PREFIXES, MAX_TALKERS,
    MAX_TARGETS_PER_FAMILY, MAX_TRACKED_SOURCES, MAX_TUPLES, NO_RULE, SUMMARY_SLOTS,
    TALKER_SAMPLE,
};

use parse::{Packet, ParseError, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_SYN};

/// Big, sparse hash maps allocate entries on demand rather than up front.
const BPF_F_NO_PREALLOC: u32 = 1;

#[map]
static TARGETS_V4: HashMap<PrefixV4, TargetValue> =
    HashMap::pinned(MAX_TARGETS_PER_FAMILY, BPF_F_NO_PREALLOC);
#[map]
static TARGETS_V6: HashMap<PrefixV6, TargetValue> =
    HashMap::pinned(MAX_TARGETS_PER_FAMILY, BPF_F_NO_PREALLOC);
/// One entry per IPv4 /24: the covering mitigation, and which longer targets lie inside
/// ([`dst_v4`]).
#[map]
static DST_V4: Array<u64> = Array::pinned(DST_V4_VALUES, BPF_F_MMAPABLE);
#[map]
static TGT_SUM_V6: Array<LengthMask> = Array::pinned(SUMMARY_SLOTS, BPF_F_MMAPABLE);
#[map]
static MITIGATIONS: Array<MitigationConfig> = Array::pinned(CONFIG_SLOTS, BPF_F_MMAPABLE);
#[map]
static MIT_STATS: PerCpuArray<MitigationStats> = PerCpuArray::pinned(MAX_MITIGATIONS, 0);
/// ACL keys to their first rule (see `AclKey::slots`): two `u32` slots per value.
#[map]
static ACL_INDEX: Array<u64> = Array::pinned(ACL_INDEX_VALUES, BPF_F_MMAPABLE);
#[map]
static ACL_RULES: Array<AclRule> = Array::pinned(ACL_RULE_SLOTS, BPF_F_MMAPABLE);
#[map]
static ACL_STATS: PerCpuArray<AclStats> = PerCpuArray::pinned(ACL_RULE_SLOTS, 0);
/// Counts carried over from earlier generations of a rule; written by user space only.
#[map]
static ACL_BASE: Array<AclStats> = Array::pinned(ACL_RULE_SLOTS, 0);
/// Counts of a mitigation's ACL entries that a replacement dropped (so the mitigation's
/// totals never go down); written by user space only.
#[map]
static MIT_BASE: Array<MitigationStats> = Array::pinned(MAX_MITIGATIONS, 0);
#[map]
static ACL_BUCKETS: Array<Bucket> = Array::pinned(ACL_RULE_SLOTS, 0);
/// Source accept/drop-lists of every mitigation generation (room for two generations).
#[map]
static SOURCES_V4: HashMap<PrefixV4, u8> = HashMap::pinned(2 * MAX_SRC_PREFIXES, BPF_F_NO_PREALLOC);
#[map]
static SOURCES_V6: HashMap<PrefixV6, u8> = HashMap::pinned(2 * MAX_SRC_PREFIXES, BPF_F_NO_PREALLOC);
#[map]
static SRC_RATE: LruHashMap<RateKey, Bucket> = LruHashMap::pinned(MAX_TRACKED_SOURCES, 0);
#[map]
static SCOPE_BUCKETS: Array<Bucket> = Array::pinned(MAX_MITIGATIONS, 0);
#[map]
static AMP_PORTS: Array<u64> = Array::pinned(AMP_PORT_WORDS, 0);
#[map]
static IF_STATS: PerCpuArray<InterfaceSlot> = PerCpuArray::pinned(IF_STATS_SLOTS, 0);
/// Sampled sources of dropped traffic per mitigation slot. Per CPU, so the hot path adds
/// without atomics; user space sums the CPUs and scales by `TALKER_SAMPLE`.
#[map]
static TOP_TALKERS: LruPerCpuHashMap<TalkerKey, Counter> = LruPerCpuHashMap::pinned(MAX_TALKERS, 0);
/// Set by the loader (`.rodata`, frozen): 0 turns talker sampling off. The verifier knows
/// the constant, so with 0 it removes the sampling code (helper call included).
#[no_mangle]
static TALKER_SAMPLING: u32 = 1;
/// Per-CPU working state: the parsed packet of a mitigated destination, with what the fast
/// path found for it, and the talker sampler's random state. Kept in the interface's
/// `IF_STATS` slot ([`InterfaceSlot::scratch`]), beside the counters every packet updates:
/// in map memory on purpose, since the verifier does not track values stored there, so the
/// many parse paths (VLAN, IPv4/IPv6, fragments, protocols) converge into one state before
/// the lookups and the classifier, instead of each being verified through them separately
/// (over the 1M-instruction budget).
#[repr(C)]
struct Scratch {
    pkt: Packet,
    /// The destination's `DST_V4` entry (IPv4) or summary mask (IPv6).
    v4_entry: u32,
    /// xorshift64 state; 0 until the first sampled drop on this CPU seeds it.
    rng: u64,
    v6_lengths: LengthMask,
}

const _: () = assert!(
    core::mem::size_of::<Scratch>() <= 8 * SCRATCH_WORDS
        && core::mem::align_of::<Scratch>() <= 8
);

/// The scratch of an `IF_STATS` slot.
#[inline(always)]
fn scratch_of(slot: *mut InterfaceSlot) -> *mut Scratch {
    // SAFETY: a field of a valid map value; Scratch fits and is no more aligned (above).
    unsafe { core::ptr::addr_of_mut!((*slot).scratch) as *mut Scratch }
}

#[xdp]
pub fn xdp_filter(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    // SAFETY: ctx.ctx points at the kernel's xdp_md for this packet.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let if_slot = if ifindex < IF_STATS_SLOTS { ifindex } else { 0 };
    let Some(slot) = IF_STATS.get_ptr_mut(if_slot) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: per-CPU value, only this CPU writes it while we run.
    let ifs = unsafe { &mut (*slot).stats };
    ifs.rx.packets += 1;
    ifs.rx.bytes += len;

    let l3 = match parse::locate(&ctx) {
        Ok(l3) => l3,
        Err(e) => return not_parsed(ifs, e),
    };
    let scratch = scratch_of(slot);
    // The fast path: one array read tells unmitigated destinations apart.
    match l3 {
        parse::L3::V4(off) => {
            let dst = match parse::ipv4_destination(&ctx, off) {
                Ok(dst) => dst,
                Err(e) => return not_parsed(ifs, e),
            };
            let i = dst_v4_index(dst);
            let entry = match DST_V4.get(i >> 1) {
                // Two entries per value, the even one in the low half (see DST_V4_VALUES).
                Some(pair) => (*pair >> ((i & 1) << 5)) as u32,
                None => 0,
            };
            if entry == 0 {
                return xdp_action::XDP_PASS;
            }
            // SAFETY: per-CPU scratch value, only this program run uses it.
            unsafe { (*scratch).v4_entry = entry };
        }
        parse::L3::V6(off) => {
            let lengths = match parse::ipv6_destination_top48(&ctx, off) {
                Ok(top48) => match TGT_SUM_V6.get(summary_index_v6(top48)) {
                    Some(m) if m[0] | m[1] != 0 => *m,
                    _ => return xdp_action::XDP_PASS,
                },
                Err(e) => return not_parsed(ifs, e),
            };
            // SAFETY: as above. Word by word: a whole-array store becomes a memmove call.
            unsafe {
                core::ptr::write_volatile(&mut (*scratch).v6_lengths[0], lengths[0]);
                core::ptr::write_volatile(&mut (*scratch).v6_lengths[1], lengths[1]);
            }
        }
    }

    // A destination that may be mitigated: parse everything, into map memory.
    // SAFETY: as above.
    parse::parse(&ctx, l3, unsafe { &mut (*scratch).pkt });
    // A second lookup, so the compiler re-reads the fields from map memory instead of
    // reusing registers (see Scratch).
    let Some(again) = IF_STATS.get_ptr_mut(if_slot) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: as above.
    let s = unsafe { &*scratch_of(again) };
    let pkt = &s.pkt;
    let ruleset = if pkt.family == 4 {
        find_target_v4(pkt.dst[0], s.v4_entry)
    } else {
        find_target_v6(pkt, s.v6_lengths)
    };
    let Some(ruleset) = ruleset else {
        return xdp_action::XDP_PASS;
    };
    ifs.to_target += 1;
    let Some(cfg) = MITIGATIONS.get(ruleset) else {
        return xdp_action::XDP_PASS;
    };
    let verdict = mitigate(cfg, cfg.slot, pkt, len, scratch);
    if verdict == xdp_action::XDP_DROP {
        ifs.dropped += 1;
    }
    verdict
}

#[inline(always)]
fn not_parsed(ifs: &mut InterfaceStats, e: ParseError) -> u32 {
    match e {
        ParseError::NotIp => ifs.non_ip += 1,
        ParseError::Invalid => ifs.parse_errors += 1,
    }
    xdp_action::XDP_PASS
}

/// Highest set bit of a non-zero word. BPF has no count-leading-zeros instruction; this is
/// branch-free on purpose: a branchy version hands the verifier a different constant on
/// each path, which it then walks through every later probe separately.
#[inline(always)]
fn highest_bit(mut x: u64) -> u32 {
    // Smear the highest bit downwards, then count the ones.
    x |= x >> 1;
    x |= x >> 2;
    x |= x >> 4;
    x |= x >> 8;
    x |= x >> 16;
    x |= x >> 32;
    x -= (x >> 1) & 0x5555_5555_5555_5555;
    x = (x & 0x3333_3333_3333_3333) + ((x >> 2) & 0x3333_3333_3333_3333);
    x = (x + (x >> 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    ((x.wrapping_mul(0x0101_0101_0101_0101) >> 56) as u32).wrapping_sub(1) & 63
}

/// Takes the longest length out of a mask.
#[inline(always)]
fn pop_longest(mask: &mut LengthMask) -> u8 {
    if mask[1] != 0 {
        let b = highest_bit(mask[1]);
        mask[1] &= !(1u64 << b);
        (b + 65) as u8
    } else {
        let b = highest_bit(mask[0]);
        mask[0] &= !(1u64 << b);
        (b + 1) as u8
    }
}

/// Network-order masks of every prefix length, read from .rodata. A table rather than
/// computed: computing a mask branches per word, and the verifier would follow each of
/// the 3^4 outcomes through every later probe.
static PREFIX_MASKS: [[u32; 4]; 129] = {
    let mut t = [[0u32; 4]; 129];
    let mut len = 0;
    while len < 129 {
        let mut w = 0;
        while w < 4 {
            t[len][w] = word_mask(len as u32, w as u32);
            w += 1;
        }
        len += 1;
    }
    t
};

/// Looks a prefix of `addr` up in the table of its family.
#[inline(always)]
fn lookup_prefix<V>(
    v4: &HashMap<PrefixV4, V>,
    v6: &HashMap<PrefixV6, V>,
    tag: u32,
    family: u8,
    len: u8,
    addr: &[u32; 4],
) -> Option<*const V> {
    let m = PREFIX_MASKS.get(len as usize)?;
    if family == 4 {
        v4.get_ptr(&PrefixV4 {
            tag,
            addr: addr[0] & m[0],
        })
    } else {
        let key = PrefixV6 {
            tag,
            addr: [
                addr[0] & m[0],
                addr[1] & m[1],
                addr[2] & m[2],
                addr[3] & m[3],
            ],
        };
        v6.get_ptr(&key)
    }
}

/// The ruleset of the IPv4 mitigation whose target is the longest prefix covering `dst`:
/// a target longer than /24 inside the destination's /24 (one hash probe per such length
/// present, longest first), else the /24's cover from `DST_V4`.
#[inline(always)]
fn find_target_v4(dst: u32, entry: u32) -> Option<u32> {
    let longer = entry >> dst_v4::LONGER_SHIFT;
    if longer != 0 {
        for i in (0..8u32).rev() {
            if longer & (1 << i) == 0 {
                continue;
            }
            let len = 25 + i as usize;
            let Some(m) = PREFIX_MASKS.get(len) else {
                break;
            };
            let key = PrefixV4 {
                tag: prefix_tag(0, 0, len as u8),
                addr: dst & m[0],
            };
            // SAFETY: hash values are replaced whole, never written in place.
            if let Some(v) = unsafe { TARGETS_V4.get(&key) } {
                return Some(v.ruleset);
            }
        }
    }
    let cover = entry & dst_v4::RULESET_MASK;
    if cover == 0 {
        None
    } else {
        Some(cover - 1)
    }
}

/// The ruleset of the IPv6 mitigation whose target is the longest prefix covering the
/// destination: one hash probe per candidate length, longest first.
#[inline(always)]
fn find_target_v6(pkt: &Packet, mut lengths: LengthMask) -> Option<u32> {
    for _ in 0..MAX_PREFIX_LENGTHS {
        if lengths[0] | lengths[1] == 0 {
            break;
        }
        let len = pop_longest(&mut lengths);
        if let Some(v) = lookup_prefix(
            &TARGETS_V4,
            &TARGETS_V6,
            prefix_tag(0, 0, len),
            6,
            len,
            &pkt.dst,
        ) {
            // SAFETY: hash values are replaced whole, never written in place.
            return Some(unsafe { (*v).ruleset });
        }
    }
    None
}

#[inline(always)]
fn in_scope(cfg: &MitigationConfig, pkt: &Packet) -> bool {
    if cfg.flags & flags::SCOPE_PROTOCOLS != 0 {
        let word = cfg.proto_mask[(pkt.proto >> 6) as usize & 3];
        if word & (1u64 << (pkt.proto & 63)) == 0 {
            return false;
        }
    }
    if cfg.n_port_ranges == 0 || pkt.later_fragment || pkt.malformed {
        // Later fragments and cut-short headers carry no port: keep them in scope so the
        // fragment and malformed countermeasures see them.
        return true;
    }
    if !pkt.has_ports {
        return false;
    }
    for i in 0..MAX_SCOPE_PORT_RANGES {
        if i as u32 >= cfg.n_port_ranges {
            break;
        }
        let r = &cfg.port_ranges[i];
        if pkt.dport >= r.lo && pkt.dport <= r.hi {
            return true;
        }
    }
    false
}

#[inline(always)]
fn mitigate(
    cfg: &MitigationConfig,
    slot: u32,
    pkt: &Packet,
    len: u64,
    scratch: *mut Scratch,
) -> u32 {
    if !in_scope(cfg, pkt) {
        return xdp_action::XDP_PASS;
    }
    let verdict = decide(cfg, slot, pkt, len);
    // An ACL entry's verdict is counted in its ACL_STATS only (see AclStats).
    match verdict {
        Verdict::AclPass => return xdp_action::XDP_PASS,
        Verdict::AclDrop => {
            sample_talker(slot, pkt, len, scratch);
            return xdp_action::XDP_DROP;
        }
        _ => {}
    }
    let Some(stats) = MIT_STATS.get_ptr_mut(slot) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: per-CPU value.
    let stats = unsafe { &mut *stats };
    match verdict {
        Verdict::AclPass => xdp_action::XDP_PASS,
        Verdict::AclDrop => xdp_action::XDP_DROP,
        Verdict::Pass => {
            count(&mut stats.passed, len);
            xdp_action::XDP_PASS
        }
        Verdict::Accept => {
            count(&mut stats.passed, len);
            count(&mut stats.accepted, len);
            xdp_action::XDP_PASS
        }
        Verdict::Drop(reason) => {
            if let Some(c) = stats.dropped.get_mut(reason as usize) {
                count(c, len);
            }
            sample_talker(slot, pkt, len, scratch);
            xdp_action::XDP_DROP
        }
    }
}

#[inline(always)]
fn count(c: &mut Counter, len: u64) {
    c.packets += 1;
    c.bytes += len;
}

/// Records one drop in `TALKER_SAMPLE` under its source: a few ALU instructions per drop
/// (a per-CPU xorshift generator, no helper call), one map operation per sampled drop,
/// nothing on pass paths.
#[inline(always)]
fn sample_talker(slot: u32, pkt: &Packet, len: u64, scratch: *mut Scratch) {
    // SAFETY: reads a constant; volatile so the loader's value is used, not the default.
    if unsafe { core::ptr::read_volatile(&TALKER_SAMPLING) } == 0 {
        return;
    }
    // SAFETY: this CPU's scratch value; XDP runs are not preempted.
    let rng = unsafe { core::ptr::addr_of_mut!((*scratch).rng) };
    let mut x = unsafe { core::ptr::read_volatile(rng) };
    if x == 0 {
        // SAFETY: helper with no arguments.
        x = unsafe { bpf_get_prandom_u32() } as u64 | 1 << 32;
    }
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    // SAFETY: as above.
    unsafe { core::ptr::write_volatile(rng, x) };
    if (x >> 32) as u32 & (TALKER_SAMPLE - 1) != 0 {
        return;
    }
    // Built whole with its padding zeroed (a `[0; 3]` field becomes a memset call).
    let mut key: TalkerKey = unsafe { core::mem::zeroed() };
    key.slot = slot;
    key.family = pkt.family;
    key.addr = pkt.src;
    match TOP_TALKERS.get_ptr_mut(&key) {
        // SAFETY: this CPU's value; no other CPU writes it and XDP runs are not preempted.
        Some(c) => count(unsafe { &mut *c }, len),
        None => {
            // BPF_ANY: if another CPU created the key since the lookup, this writes only
            // this CPU's share of it (still zero), losing nothing.
            let _ = TOP_TALKERS.insert(
                &key,
                &Counter {
                    packets: 1,
                    bytes: len,
                },
                0,
            );
        }
    }
}

enum Verdict {
    Pass,
    Accept,
    Drop(DropReason),
    /// Decided by an ACL entry, and counted there.
    AclPass,
    AclDrop,
}

#[inline(always)]
fn decide(cfg: &MitigationConfig, slot: u32, pkt: &Packet, len: u64) -> Verdict {
    if pkt.malformed {
        return Verdict::Drop(DropReason::Malformed);
    }
    let (accept, drop) = if pkt.family == 4 {
        (list::ACCEPT_V4, list::DROP_V4)
    } else {
        (list::ACCEPT_V6, list::DROP_V6)
    };
    if on_list(cfg, accept, pkt) {
        return Verdict::Accept;
    }
    if on_list(cfg, drop, pkt) {
        return Verdict::Drop(DropReason::DropList);
    }
    if cfg.n_tuples > 0 {
        if let Some(idx) = classify(cfg, pkt) {
            if let Some(v) = apply_rule(idx, len) {
                return v;
            }
        }
    }
    countermeasures(cfg, slot, pkt, len)
}

/// Is the packet's source on one of the mitigation's lists? One hash probe per prefix
/// length present in the list.
#[inline(always)]
fn on_list(cfg: &MitigationConfig, which: u8, pkt: &Packet) -> bool {
    if cfg.flags & (1 << (flags::LISTS + which as u32)) == 0 {
        return false;
    }
    let Some(mask) = cfg.source_lengths.get(which as usize) else {
        return false;
    };
    let mut lengths = *mask;
    for _ in 0..MAX_PREFIX_LENGTHS {
        if lengths[0] | lengths[1] == 0 {
            break;
        }
        let len = pop_longest(&mut lengths);
        let tag = prefix_tag(cfg.ruleset, which, len);
        if lookup_prefix(&SOURCES_V4, &SOURCES_V6, tag, pkt.family, len, &pkt.src).is_some() {
            return true;
        }
    }
    false
}

/// The `u32` slot `i` of `ACL_INDEX` (two per value, the even one in the low half).
#[inline(always)]
fn acl_slot(i: u32) -> u32 {
    match ACL_INDEX.get(i >> 1) {
        Some(pair) => (*pair >> ((i & 1) << 5)) as u32,
        None => 0,
    }
}

/// Does `rule` carry `key` (all words: a wide key's tuple matches IPv6 addresses)?
/// Branch-free on purpose: one comparison per word would hand the verifier a path per
/// word in every tuple of the probe loop.
#[inline(always)]
fn wide_matches(rule: &AclRule, key: &AclKey) -> bool {
    let k = &rule.key;
    let mut d = (k.ruleset ^ key.ruleset)
        | (k.fields_word() ^ key.fields_word())
        | ((k.sport ^ key.sport) as u32)
        | ((k.dport ^ key.dport) as u32);
    for w in 0..4 {
        d |= (k.src[w] ^ key.src[w]) | (k.dst[w] ^ key.dst[w]);
    }
    d == 0
}

/// The rule a slot value names (`rule + 1`; 0: empty), if its key passes `matches`.
#[inline(always)]
fn head_if(v: u32, matches: impl Fn(&AclRule) -> bool) -> Option<u32> {
    let r = v.wrapping_sub(1);
    match ACL_RULES.get(r) {
        Some(rule) if v != 0 && matches(rule) => Some(r),
        _ => None,
    }
}

/// The first rule of a key's entries: none if the tuple's filter lacks the key's bit;
/// else the key's first slot, else (taken by another key) its second one. An empty first
/// slot means no such key (user space keeps a key in its first slot whenever that is free).
#[inline(always)]
fn acl_head(
    filter: &[u64; 4],
    bits: AclFilterBits,
    slots: impl FnOnce() -> AclSlots,
    matches: impl Fn(&AclRule) -> bool,
) -> Option<u32> {
    if !bits.in_filter(filter) {
        return None;
    }
    let s = slots();
    let v = acl_slot(s.first);
    if v == 0 {
        return None;
    }
    head_if(v, &matches).or_else(|| head_if(acl_slot(s.second), &matches))
}

/// The first rule of the entries whose key is the packet masked to tuple `t`.
#[inline(always)]
fn tuple_head(
    ruleset: u32,
    t: u8,
    tp: &AclTuple,
    keys: &AclTupleKeys,
    pkt: &Packet,
) -> Option<u32> {
    let fields = t as u32 | (pkt.proto_word() & tp.proto_mask) << 8;
    let ports = pkt.ports_word() & tp.ports_mask;
    if tp.family != 6 {
        // No IPv6 address in the key: five words (an IPv4 packet's, or none).
        let k = AclNarrowKey {
            ruleset,
            fields,
            ports,
            src: pkt.src[0] & tp.src_mask0,
            dst: pkt.dst[0] & tp.dst_mask0,
        };
        return acl_head(&keys.filter, k.filter_bits(), || k.slots(), |rule| {
            k.matches(&rule.key)
        });
    }
    let w = &keys.wide;
    let k = AclKey {
        ruleset,
        tuple: t,
        proto: (fields >> 8) as u8,
        icmp_type: (fields >> 16) as u8,
        icmp_code: (fields >> 24) as u8,
        sport: ports as u16,
        dport: (ports >> 16) as u16,
        src: [
            pkt.src[0] & tp.src_mask0,
            pkt.src[1] & w.src[0],
            pkt.src[2] & w.src[1],
            pkt.src[3] & w.src[2],
        ],
        dst: [
            pkt.dst[0] & tp.dst_mask0,
            pkt.dst[1] & w.dst[0],
            pkt.dst[2] & w.dst[1],
            pkt.dst[3] & w.dst[2],
        ],
    };
    acl_head(
        &keys.filter,
        k.filter_bits(true),
        || k.slots(true),
        |rule| wide_matches(rule, &k),
    )
}

/// Tuple-space search: for each tuple, the packet masked to it is looked up in the ACL
/// index; the (short, priority-sorted) chain of entries with that key is walked for
/// residual checks; the best-priority hit wins. The loop is unrolled by the verifier; a
/// tuple's probe is kept small (one test for its needs, masks applied to whole words,
/// branch-free key compares) so that 16 of them stay well inside its budget.
#[inline(always)]
fn classify(cfg: &MitigationConfig, pkt: &Packet) -> Option<u32> {
    let mut c = AclSearch {
        cfg,
        pkt,
        best: NO_RULE,
        best_prio: u32::MAX,
        carries: pkt.carries() as u32,
    };
    for t in 0..MAX_TUPLES as u32 {
        if t >= cfg.n_tuples || search_tuple(&mut c, t) {
            break;
        }
    }
    if c.best == NO_RULE {
        None
    } else {
        Some(c.best)
    }
}

/// The ACL search's state.
struct AclSearch<'a> {
    cfg: &'a MitigationConfig,
    pkt: &'a Packet,
    best: u32,
    best_prio: u32,
    /// `Packet::carries`.
    carries: u32,
}

/// Probes tuple `t`; true when no later tuple can win.
#[inline(always)]
fn search_tuple(c: &mut AclSearch, t: u32) -> bool {
    let (cfg, pkt) = (c.cfg, c.pkt);
    let Some(tp) = cfg.tuples.get(t as usize) else {
        return true;
    };
    let best_prio = c.best_prio;
    if tp.min_priority >= best_prio {
        return true; // tuples are sorted by their best entry: nothing later can win
    }
    if tp.needs as u32 & !c.carries != 0 {
        return false; // another family, or a field the packet does not carry
    }
    // The bits all of the tuple's keys share: most misses end here.
    let d = ((pkt.proto_word() & tp.same_mask[0]) ^ tp.same_bits[0])
        | ((pkt.ports_word() & tp.same_mask[1]) ^ tp.same_bits[1])
        | ((pkt.src[0] & tp.same_mask[2]) ^ tp.same_bits[2])
        | ((pkt.dst[0] & tp.same_mask[3]) ^ tp.same_bits[3]);
    if d != 0 {
        return false;
    }
    let Some(keys) = cfg.tuple_keys.get(t as usize) else {
        return true;
    };
    let Some(mut r) = tuple_head(cfg.ruleset, t as u8, tp, keys, pkt) else {
        return false;
    };
    for _ in 0..MAX_CHAIN {
        let Some(rule) = ACL_RULES.get(r) else {
            break; // NO_RULE (out of range): the chain ended
        };
        if rule.priority >= best_prio {
            break; // chains are sorted by priority too
        }
        if residual_match(rule, pkt) {
            c.best = r;
            c.best_prio = rule.priority;
            break;
        }
        r = rule.next;
    }
    false
}

#[inline(always)]
fn bits_match(value: u8, bits: u8, op: u8) -> bool {
    let hit = if op & bit_op::ANY != 0 {
        value & bits != 0
    } else {
        value & bits == bits
    };
    hit != (op & bit_op::NOT != 0)
}

#[inline(always)]
fn residual_match(rule: &AclRule, pkt: &Packet) -> bool {
    let c = rule.checks;
    if c == 0 {
        return true;
    }
    if c & residual::TTL != 0 && (pkt.ttl < rule.ttl_lo || pkt.ttl > rule.ttl_hi) {
        return false;
    }
    if c & residual::LENGTH != 0 && (pkt.ip_len < rule.len_lo || pkt.ip_len > rule.len_hi) {
        return false;
    }
    if c & residual::DSCP != 0 && pkt.dscp != rule.dscp {
        return false;
    }
    if c & residual::FRAGMENT != 0 && !bits_match(pkt.frag, rule.frag_bits, rule.frag_op) {
        return false;
    }
    if c & (residual::SPORT_RANGE | residual::DPORT_RANGE | residual::TCP_FLAGS) != 0 {
        if !pkt.has_ports {
            return false;
        }
        if c & residual::SPORT_RANGE != 0
            && (pkt.sport < rule.sport_lo || pkt.sport > rule.sport_hi)
        {
            return false;
        }
        if c & residual::DPORT_RANGE != 0
            && (pkt.dport < rule.dport_lo || pkt.dport > rule.dport_hi)
        {
            return false;
        }
        if c & residual::TCP_FLAGS != 0
            && (pkt.proto != IPPROTO_TCP
                || !bits_match(pkt.tcp_flags, rule.tcp_flags, rule.tcp_flags_op))
        {
            return false;
        }
    }
    true
}

/// Counts the hit in the entry's ACL_STATS and applies its action.
#[inline(always)]
fn apply_rule(idx: u32, len: u64) -> Option<Verdict> {
    let c = ACL_STATS.get_ptr_mut(idx)?;
    // SAFETY: per-CPU value.
    let c = unsafe { &mut *c };
    count(&mut c.matched, len);
    let rule = ACL_RULES.get(idx)?;
    Some(match rule.action {
        acl_action::ACCEPT => Verdict::AclPass,
        acl_action::DROP => Verdict::AclDrop,
        _ => {
            let bucket = ACL_BUCKETS.get_ptr_mut(idx)?;
            if rate::admit(bucket, &rule.rate, len, now()) {
                Verdict::AclPass
            } else {
                count(&mut c.limited, len);
                Verdict::AclDrop
            }
        }
    })
}

#[inline(always)]
fn now() -> u64 {
    // SAFETY: helper with no arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
fn countermeasures(cfg: &MitigationConfig, slot: u32, pkt: &Packet, len: u64) -> Verdict {
    let f = cfg.flags;
    if f & flags::CM_FRAGMENTS != 0 && pkt.later_fragment {
        return Verdict::Drop(DropReason::Fragment);
    }
    if f & flags::CM_AMPLIFICATION != 0 && pkt.proto == IPPROTO_UDP && pkt.has_ports {
        if let Some(word) = AMP_PORTS.get((pkt.sport >> 6) as u32) {
            if *word & (1u64 << (pkt.sport & 63)) != 0 {
                return Verdict::Drop(DropReason::AmplificationPort);
            }
        }
    }
    if f & (flags::CM_SYN_RATE | flags::CM_SOURCE_RATE | flags::CM_SCOPE_CAP) == 0 {
        return Verdict::Pass;
    }
    let t = now();
    if f & flags::CM_SYN_RATE != 0
        && pkt.proto == IPPROTO_TCP
        && pkt.has_ports
        && pkt.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
        && !rate::admit_source(
            &SRC_RATE,
            slot,
            source_kind::SYN,
            &pkt.src,
            &cfg.syn_rate,
            len,
            t,
        )
    {
        return Verdict::Drop(DropReason::SynRate);
    }
    if f & flags::CM_SOURCE_RATE != 0
        && !rate::admit_source(
            &SRC_RATE,
            slot,
            source_kind::PACKETS,
            &pkt.src,
            &cfg.source_rate,
            len,
            t,
        )
    {
        return Verdict::Drop(DropReason::SourceRate);
    }
    if f & flags::CM_SCOPE_CAP != 0 {
        if let Some(b) = SCOPE_BUCKETS.get_ptr_mut(slot) {
            if !rate::admit(b, &cfg.scope_rate, len, t) {
                return Verdict::Drop(DropReason::ScopeCap);
            }
        }
    }
    Verdict::Pass
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
