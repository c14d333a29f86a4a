//! xdp-filter: the dots-agent hot path.
//!
//! Per packet: parse; fast-reject destinations no mitigation can cover (one array read);
//! find the mitigation covering the destination (LPM trie); narrow by its protocol/port
//! scope; then accept-list, drop-list, ACL entries (tuple-space search), built-in
//! countermeasures, pass. Everything is counted per CPU. Map layouts: `xdp-common`.
#![no_std]
#![no_main]
// Atomic add on map values (core's AtomicU64 has no fetch_add on this target).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod parse;
mod rate;

use aya_ebpf::{
    bindings::xdp_action,
    helpers::bpf_ktime_get_ns,
    macros::{map, xdp},
    maps::{
        lpm_trie::Key, Array, HashMap, LpmTrie, LruHashMap, PerCpuArray,
    },
    programs::XdpContext,
};
use xdp_common::{
    acl_action, bit_op, flags, ipv6_top48, residual, source_kind, summary_index_v4,
    summary_index_v6, tuple_fields, AclKey, AclRule, AclValue, Bucket, Counter, DropReason,
    InterfaceStats, MitigationConfig, MitigationStats, SourceKey, SourceV4, SourceV6,
    TargetValue, ACL_RULE_SLOTS, AMP_PORT_WORDS, IF_STATS_SLOTS, MAX_CHAIN, MAX_MITIGATIONS,
    MAX_SCOPE_PORT_RANGES, MAX_SRC_PREFIXES, MAX_TARGETS_PER_FAMILY, MAX_TRACKED_SOURCES,
    MAX_TUPLES, NO_RULE, SUMMARY_SLOTS,
};

use parse::{Packet, ParseError, IPPROTO_TCP, IPPROTO_UDP, TCP_ACK, TCP_SYN};

#[map]
static TGT_V4: LpmTrie<[u8; 4], TargetValue> = LpmTrie::pinned(MAX_TARGETS_PER_FAMILY, 0);
#[map]
static TGT_V6: LpmTrie<[u8; 16], TargetValue> = LpmTrie::pinned(MAX_TARGETS_PER_FAMILY, 0);
#[map]
static TGT_SUM_V4: Array<u32> = Array::pinned(SUMMARY_SLOTS, 0);
#[map]
static TGT_SUM_V6: Array<u32> = Array::pinned(SUMMARY_SLOTS, 0);
#[map]
static MITIGATIONS: HashMap<u32, MitigationConfig> = HashMap::pinned(MAX_MITIGATIONS, 0);
#[map]
static MIT_STATS: PerCpuArray<MitigationStats> = PerCpuArray::pinned(MAX_MITIGATIONS, 0);
#[map]
static ACL_KEYS: HashMap<AclKey, AclValue> = HashMap::pinned(ACL_RULE_SLOTS, 0);
#[map]
static ACL_RULES: Array<AclRule> = Array::pinned(ACL_RULE_SLOTS, 0);
#[map]
static ACL_STATS: PerCpuArray<Counter> = PerCpuArray::pinned(ACL_RULE_SLOTS, 0);
/// Counts carried over from earlier generations of a rule; written by user space only.
#[map]
static ACL_BASE: Array<Counter> = Array::pinned(ACL_RULE_SLOTS, 0);
#[map]
static ACL_BUCKETS: Array<Bucket> = Array::pinned(ACL_RULE_SLOTS, 0);
#[map]
static SRC_ALLOW_V4: LpmTrie<SourceV4, u8> = LpmTrie::pinned(MAX_SRC_PREFIXES, 0);
#[map]
static SRC_DROP_V4: LpmTrie<SourceV4, u8> = LpmTrie::pinned(MAX_SRC_PREFIXES, 0);
#[map]
static SRC_ALLOW_V6: LpmTrie<SourceV6, u8> = LpmTrie::pinned(MAX_SRC_PREFIXES, 0);
#[map]
static SRC_DROP_V6: LpmTrie<SourceV6, u8> = LpmTrie::pinned(MAX_SRC_PREFIXES, 0);
#[map]
static SRC_RATE: LruHashMap<SourceKey, Bucket> = LruHashMap::pinned(MAX_TRACKED_SOURCES, 0);
#[map]
static SCOPE_BUCKETS: Array<Bucket> = Array::pinned(MAX_MITIGATIONS, 0);
#[map]
static AMP_PORTS: Array<u64> = Array::pinned(AMP_PORT_WORDS, 0);
#[map]
static IF_STATS: PerCpuArray<InterfaceStats> = PerCpuArray::pinned(IF_STATS_SLOTS, 0);
/// The parsed packet. Kept in map memory rather than on the stack on purpose: the verifier
/// does not track values stored there, so the many parse paths (VLAN, IPv4/IPv6, fragments,
/// protocols) converge into one state before the ACL classifier, instead of each being
/// verified through it separately (which exceeds the 1M-instruction budget).
#[map]
static PKT_SCRATCH: PerCpuArray<Packet> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn xdp_filter(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    // SAFETY: ctx.ctx points at the kernel's xdp_md for this packet.
    let ifindex = unsafe { (*ctx.ctx).ingress_ifindex };
    let if_slot = if ifindex < IF_STATS_SLOTS { ifindex } else { 0 };
    let Some(ifs) = IF_STATS.get_ptr_mut(if_slot) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: per-CPU value, only this CPU writes it while we run.
    let ifs = unsafe { &mut *ifs };
    ifs.rx.packets += 1;
    ifs.rx.bytes += len;

    let Some(scratch) = PKT_SCRATCH.get_ptr_mut(0) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: per-CPU scratch value, only this program run uses it.
    match parse::parse(&ctx, unsafe { &mut *scratch }) {
        Ok(()) => {}
        Err(ParseError::NotIp) => {
            ifs.non_ip += 1;
            return xdp_action::XDP_PASS;
        }
        Err(ParseError::Invalid) => {
            ifs.parse_errors += 1;
            return xdp_action::XDP_PASS;
        }
    }
    // A second lookup, so the compiler re-reads the fields instead of reusing what parse
    // left in registers (see PKT_SCRATCH).
    let Some(pkt) = PKT_SCRATCH.get(0) else {
        return xdp_action::XDP_PASS;
    };

    let Some(slot) = find_target(pkt) else {
        return xdp_action::XDP_PASS;
    };
    ifs.to_target += 1;
    // SAFETY: hash values are replaced whole (RCU), never written in place.
    let Some(cfg) = (unsafe { MITIGATIONS.get(&slot) }) else {
        return xdp_action::XDP_PASS;
    };
    let verdict = mitigate(cfg, slot, pkt, len);
    if verdict == xdp_action::XDP_DROP {
        ifs.dropped += 1;
    }
    verdict
}

/// The mitigation slot covering the destination, if any.
#[inline(always)]
fn find_target(pkt: &Packet) -> Option<u32> {
    if pkt.family == 4 {
        let dst = pkt.dst[0].to_ne_bytes();
        if *TGT_SUM_V4.get(summary_index_v4(dst))? == 0 {
            return None;
        }
        TGT_V4.get(Key::new(32, dst)).map(|v| v.slot)
    } else {
        let dst = words_to_bytes(&pkt.dst);
        if *TGT_SUM_V6.get(summary_index_v6(ipv6_top48(&dst)))? == 0 {
            return None;
        }
        TGT_V6.get(Key::new(128, dst)).map(|v| v.slot)
    }
}

#[inline(always)]
fn words_to_bytes(w: &[u32; 4]) -> [u8; 16] {
    let (a, b, c, d) = (w[0].to_ne_bytes(), w[1].to_ne_bytes(), w[2].to_ne_bytes(), w[3].to_ne_bytes());
    [a[0], a[1], a[2], a[3], b[0], b[1], b[2], b[3], c[0], c[1], c[2], c[3], d[0], d[1], d[2], d[3]]
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
fn mitigate(cfg: &MitigationConfig, slot: u32, pkt: &Packet, len: u64) -> u32 {
    if !in_scope(cfg, pkt) {
        return xdp_action::XDP_PASS;
    }
    let Some(stats) = MIT_STATS.get_ptr_mut(slot) else {
        return xdp_action::XDP_PASS;
    };
    // SAFETY: per-CPU value.
    let stats = unsafe { &mut *stats };
    count(&mut stats.in_scope, len);

    match decide(cfg, slot, pkt, len) {
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
            xdp_action::XDP_DROP
        }
    }
}

#[inline(always)]
fn count(c: &mut Counter, len: u64) {
    c.packets += 1;
    c.bytes += len;
}

enum Verdict {
    Pass,
    Accept,
    Drop(DropReason),
}

#[inline(always)]
fn decide(cfg: &MitigationConfig, slot: u32, pkt: &Packet, len: u64) -> Verdict {
    if pkt.malformed {
        return Verdict::Drop(DropReason::Malformed);
    }
    match source_lists(cfg, pkt) {
        Some(true) => return Verdict::Accept,
        Some(false) => return Verdict::Drop(DropReason::DropList),
        None => {}
    }
    if cfg.n_tuples > 0 {
        if let Some(rule_idx) = classify(cfg, pkt) {
            if let Some(v) = apply_rule(rule_idx, len) {
                return v;
            }
        }
    }
    countermeasures(cfg, slot, pkt, len)
}

/// Some(true): accept-listed; Some(false): drop-listed; None: on neither list.
#[inline(always)]
fn source_lists(cfg: &MitigationConfig, pkt: &Packet) -> Option<bool> {
    let rs = cfg.ruleset.to_be_bytes();
    if pkt.family == 4 {
        if cfg.flags & (flags::HAS_ALLOW_V4 | flags::HAS_DROP_V4) == 0 {
            return None;
        }
        let a = pkt.src[0].to_ne_bytes();
        let key = Key::new(64, [rs[0], rs[1], rs[2], rs[3], a[0], a[1], a[2], a[3]]);
        if cfg.flags & flags::HAS_ALLOW_V4 != 0 && SRC_ALLOW_V4.get(&key).is_some() {
            return Some(true);
        }
        if cfg.flags & flags::HAS_DROP_V4 != 0 && SRC_DROP_V4.get(&key).is_some() {
            return Some(false);
        }
    } else {
        if cfg.flags & (flags::HAS_ALLOW_V6 | flags::HAS_DROP_V6) == 0 {
            return None;
        }
        let a = words_to_bytes(&pkt.src);
        let mut data = [0u8; 20];
        data[..4].copy_from_slice(&rs);
        data[4..].copy_from_slice(&a);
        let key = Key::new(160, data);
        if cfg.flags & flags::HAS_ALLOW_V6 != 0 && SRC_ALLOW_V6.get(&key).is_some() {
            return Some(true);
        }
        if cfg.flags & flags::HAS_DROP_V6 != 0 && SRC_DROP_V6.get(&key).is_some() {
            return Some(false);
        }
    }
    None
}

/// Tuple-space search: probe each tuple's hash with the packet masked to that tuple, walk
/// the (short, priority-sorted) chain for residual checks, keep the best-priority hit.
#[inline(always)]
fn classify(cfg: &MitigationConfig, pkt: &Packet) -> Option<u32> {
    let mut best = NO_RULE;
    let mut best_prio = u32::MAX;
    for t in 0..MAX_TUPLES {
        if t as u32 >= cfg.n_tuples {
            break;
        }
        let tp = &cfg.tuples[t];
        if tp.min_priority >= best_prio {
            break; // tuples are sorted by their best entry: nothing later can win
        }
        if tp.family != 0 && tp.family != pkt.family {
            continue;
        }
        if tp.fields & tuple_fields::PORTS != 0 && !pkt.has_ports {
            continue;
        }
        if tp.fields & (tuple_fields::ICMP_TYPE | tuple_fields::ICMP_CODE) != 0 && !pkt.has_icmp {
            continue;
        }
        let key = AclKey {
            ruleset: cfg.ruleset,
            tuple: t as u8,
            proto: if tp.fields & tuple_fields::PROTO != 0 { pkt.proto } else { 0 },
            icmp_type: if tp.fields & tuple_fields::ICMP_TYPE != 0 { pkt.icmp_type } else { 0 },
            icmp_code: if tp.fields & tuple_fields::ICMP_CODE != 0 { pkt.icmp_code } else { 0 },
            sport: pkt.sport & tp.sport_mask,
            dport: pkt.dport & tp.dport_mask,
            src: [
                pkt.src[0] & tp.src_mask[0],
                pkt.src[1] & tp.src_mask[1],
                pkt.src[2] & tp.src_mask[2],
                pkt.src[3] & tp.src_mask[3],
            ],
            dst: [
                pkt.dst[0] & tp.dst_mask[0],
                pkt.dst[1] & tp.dst_mask[1],
                pkt.dst[2] & tp.dst_mask[2],
                pkt.dst[3] & tp.dst_mask[3],
            ],
        };
        // SAFETY: hash values are replaced whole, never written in place.
        let Some(head) = (unsafe { ACL_KEYS.get(&key) }) else {
            continue;
        };
        let mut r = head.rule;
        for _ in 0..MAX_CHAIN {
            if r == NO_RULE {
                break;
            }
            let Some(rule) = ACL_RULES.get(r) else {
                break;
            };
            if rule.priority >= best_prio {
                break; // chains are sorted by priority too
            }
            if residual_match(rule, pkt) {
                best = r;
                best_prio = rule.priority;
                break;
            }
            r = rule.next;
        }
    }
    if best == NO_RULE {
        None
    } else {
        Some(best)
    }
}

#[inline(always)]
fn bits_match(value: u8, bits: u8, op: u8) -> bool {
    let hit = if op & bit_op::ANY != 0 { value & bits != 0 } else { value & bits == bits };
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
        if c & residual::SPORT_RANGE != 0 && (pkt.sport < rule.sport_lo || pkt.sport > rule.sport_hi) {
            return false;
        }
        if c & residual::DPORT_RANGE != 0 && (pkt.dport < rule.dport_lo || pkt.dport > rule.dport_hi) {
            return false;
        }
        if c & residual::TCP_FLAGS != 0
            && (pkt.proto != IPPROTO_TCP || !bits_match(pkt.tcp_flags, rule.tcp_flags, rule.tcp_flags_op))
        {
            return false;
        }
    }
    true
}

/// Counts the hit and applies the entry's action.
#[inline(always)]
fn apply_rule(idx: u32, len: u64) -> Option<Verdict> {
    if let Some(c) = ACL_STATS.get_ptr_mut(idx) {
        // SAFETY: per-CPU value.
        count(unsafe { &mut *c }, len);
    }
    let rule = ACL_RULES.get(idx)?;
    Some(match rule.action {
        acl_action::ACCEPT => Verdict::Accept,
        acl_action::DROP => Verdict::Drop(DropReason::AclDrop),
        _ => {
            let bucket = ACL_BUCKETS.get_ptr_mut(idx)?;
            if rate::admit(bucket, &rule.rate, len, now()) {
                Verdict::Accept
            } else {
                Verdict::Drop(DropReason::AclRateLimit)
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
        && !rate::admit_source(&SRC_RATE, slot, source_kind::SYN, &pkt.src, &cfg.syn_rate, len, t)
    {
        return Verdict::Drop(DropReason::SynRate);
    }
    if f & flags::CM_SOURCE_RATE != 0
        && !rate::admit_source(&SRC_RATE, slot, source_kind::PACKETS, &pkt.src, &cfg.source_rate, len, t)
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
