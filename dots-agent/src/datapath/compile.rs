//! Turns a [`MitigationSpec`] into the kernel's map entries (xdp-common layouts).
//!
//! Pure and I/O-free, so every rule of the contract is tested without BPF. The ACL becomes
//! a tuple-space classifier: entries are grouped by their *shape* (address family, prefix
//! lengths, which fields are exact, port masks); each shape is one tuple whose entries sit
//! in one hash table keyed by the masked fields. The kernel probes one hash per tuple, so
//! cost follows the number of shapes, not the number of entries. Fields that cannot be part
//! of an exact key (port ranges that are not aligned blocks, TTL, length, DSCP, fragment and
//! TCP-flag tests) are checked on the candidates that share a key, walked in priority order.
//! Each distinct key is entered in the kernel's ACL index (`xdp_common::AclKey::slots`),
//! pointing at the first of the entries sharing it; every rule carries its key, so the
//! kernel confirms a hit by comparing words.

use std::collections::{BTreeMap, HashSet};
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use ipnet::IpNet;
use thiserror::Error;
use xdp_common::{
    acl_action, bit_op, flags, frag_bits, length_bit, list, prefix_tag, rate_unit, residual,
    tuple_fields, tuple_needs, tuple_words, AclKey, AclRule, AclTuple, AclWideMasks,
    MitigationConfig, PortRange as KPortRange, PrefixV4, PrefixV6, RateSpec, MAX_ACL_ENTRIES,
    MAX_CHAIN, MAX_PREFIX_LENGTHS, MAX_SCOPE_PORT_RANGES, MAX_TUPLES, NO_RULE,
};

use super::spec::{
    AclAction, AclEntry, BitMatch, BitOperator, MitigationSpec, PortRange, Rate, RateLimit,
};

/// A mitigation spec that the datapath cannot hold, with what to change.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SpecError {
    #[error("mitigation {0} has no target prefix: give at least one destination prefix")]
    NoTargets(u64),
    #[error("prefix {0} has host bits set: use {1}")]
    HostBits(IpNet, IpNet),
    #[error("prefix {0} covers every address; list specific prefixes (or use an ACL entry without an address match)")]
    ZeroLength(IpNet),
    #[error("the {0} holds {1} distinct prefix lengths; at most {2} fit: aggregate or split prefixes to fewer lengths")]
    TooManyLengths(&'static str, u32, u32),
    #[error("target {0} is listed twice")]
    DuplicateTarget(IpNet),
    #[error("{0} port ranges in the scope; the datapath holds at most {1}: merge adjacent ranges")]
    TooManyPortRanges(usize, usize),
    #[error("port range {0}-{1} is reversed: lower must not exceed upper")]
    ReversedPortRange(u16, u16),
    #[error("{0} ACL entries; at most {1} fit")]
    TooManyAclEntries(usize, u32),
    #[error("ACL entry name {0:?} is used twice")]
    DuplicateAclName(String),
    #[error("ACL entry name must be 1 to 64 characters, got {0:?}")]
    BadAclName(String),
    #[error("ACL entry {0:?} mixes IPv4 and IPv6 prefixes")]
    MixedFamilies(String),
    #[error("ACL entry {0:?}: unknown {1} bit {2:?} (known: {3})")]
    UnknownBit(String, &'static str, String, &'static str),
    #[error("ACL entry {0:?}: range {1}..{2} is reversed")]
    ReversedRange(String, u16, u16),
    #[error("ACL entry {0:?}: ttl/dscp value {1} out of range")]
    ValueOutOfRange(String, u16),
    #[error(
        "the ACL needs {0} distinct entry shapes (prefix lengths x exact fields); at most {1} \
         fit: use fewer distinct prefix lengths or port masks"
    )]
    TooManyTuples(usize, usize),
    #[error(
        "ACL entries {0:?} share one exact-match key and differ only in ranges, TTL, length, \
         DSCP, fragment or TCP flags; at most {1} may: make their prefixes or ports distinct"
    )]
    ChainTooLong(Vec<String>, u32),
}

/// The kernel's view of one mitigation generation.
#[derive(Debug)]
pub struct Compiled {
    pub config: MitigationConfig,
    /// Rule `i` goes to ACL_RULES slot `config.rule_base + i`.
    pub rules: Vec<AclRule>,
    /// One per distinct key: what the ACL index must point at.
    pub keys: Vec<IndexEntry>,
    /// Accept- and drop-list entries of this generation.
    pub sources: Vec<PrefixEntry>,
}

/// A key of the generation and the first rule (by priority) of the entries sharing it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct IndexEntry {
    pub key: AclKey,
    /// The key's tuple matches IPv6 addresses (they count in its slots).
    pub wide: bool,
    pub head: u32,
}

/// Bumped whenever the same spec would compile to different map entries, so that
/// [`spec_digest`] never calls an old generation up to date.
const COMPILER_VERSION: u64 = 1;

/// A digest of a spec (and of the compiler), kept in the generation's configuration: an
/// install whose spec has the digest of the live generation has nothing to change.
pub fn spec_digest(spec: &MitigationSpec) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    COMPILER_VERSION.hash(&mut h);
    // serde_json of the spec is deterministic (fields in declaration order, lists in order).
    match serde_json::to_vec(spec) {
        Ok(bytes) => h.write(&bytes),
        Err(_) => return 0, // never: plain data; 0 is never taken as up to date
    }
    h.0.max(1)
}

/// Checks a spec without compiling it (the same checks `compile` makes).
pub fn validate(spec: &MitigationSpec) -> Result<(), SpecError> {
    compile(spec, 0, 0).map(|_| ())
}

pub fn compile(spec: &MitigationSpec, ruleset: u32, rule_base: u32) -> Result<Compiled, SpecError> {
    if spec.targets.is_empty() {
        return Err(SpecError::NoTargets(spec.id));
    }
    let mut seen = HashSet::new();
    for t in &spec.targets {
        check_prefix(t)?;
        if t.prefix_len() == 0 {
            return Err(SpecError::ZeroLength(*t));
        }
        if !seen.insert(*t) {
            return Err(SpecError::DuplicateTarget(*t));
        }
    }

    let mut config = MitigationConfig {
        id: spec.id,
        ruleset,
        rule_base,
        ..Default::default()
    };
    if !spec.protocols.is_empty() {
        config.flags |= flags::SCOPE_PROTOCOLS;
        for &p in &spec.protocols {
            config.proto_mask[(p >> 6) as usize] |= 1u64 << (p & 63);
        }
    }
    if spec.ports.len() > MAX_SCOPE_PORT_RANGES {
        return Err(SpecError::TooManyPortRanges(
            spec.ports.len(),
            MAX_SCOPE_PORT_RANGES,
        ));
    }
    for (i, r) in spec.ports.iter().enumerate() {
        check_port_range(r)?;
        config.port_ranges[i] = KPortRange {
            lo: r.lower,
            hi: r.upper(),
        };
    }
    config.n_port_ranges = spec.ports.len() as u32;

    let cm = &spec.countermeasures;
    if cm.amplification {
        config.flags |= flags::CM_AMPLIFICATION;
    }
    if cm.fragments {
        config.flags |= flags::CM_FRAGMENTS;
    }
    if let Some(r) = cm.source_pps {
        config.flags |= flags::CM_SOURCE_RATE;
        config.source_rate = rate_spec(r, rate_unit::PACKETS);
    }
    if let Some(r) = cm.syn_pps {
        config.flags |= flags::CM_SYN_RATE;
        config.syn_rate = rate_spec(r, rate_unit::PACKETS);
    }
    if let Some(r) = cm.scope_bps {
        config.flags |= flags::CM_SCOPE_CAP;
        config.scope_rate = rate_spec(r, rate_unit::BYTES);
    }

    let mut out = Compiled {
        config,
        rules: Vec::new(),
        keys: Vec::new(),
        sources: Vec::new(),
    };
    for (prefixes, accept) in [(&spec.accept_list, true), (&spec.drop_list, false)] {
        for p in prefixes {
            check_prefix(p)?;
            if p.prefix_len() == 0 {
                return Err(SpecError::ZeroLength(*p));
            }
            let which = match (p, accept) {
                (IpNet::V4(_), true) => list::ACCEPT_V4,
                (IpNet::V4(_), false) => list::DROP_V4,
                (IpNet::V6(_), true) => list::ACCEPT_V6,
                (IpNet::V6(_), false) => list::DROP_V6,
            };
            let (word, bit) = length_bit(p.prefix_len());
            out.config.source_lengths[which as usize][word] |= bit;
            out.config.flags |= 1 << (flags::LISTS + which as u32);
            out.sources.push(prefix_entry(ruleset, which, p));
        }
    }

    for (which, name) in [
        (list::ACCEPT_V4, "IPv4 accept-list"),
        (list::DROP_V4, "IPv4 drop-list"),
        (list::ACCEPT_V6, "IPv6 accept-list"),
        (list::DROP_V6, "IPv6 drop-list"),
    ] {
        let m = out.config.source_lengths[which as usize];
        let n = m[0].count_ones() + m[1].count_ones();
        if n > MAX_PREFIX_LENGTHS {
            return Err(SpecError::TooManyLengths(name, n, MAX_PREFIX_LENGTHS));
        }
    }
    compile_acl(&spec.acl, &mut out)?;
    out.config.spec_digest = spec_digest(spec);
    Ok(out)
}

fn rate_spec(r: Rate, unit: u32) -> RateSpec {
    let floor = if unit == rate_unit::BYTES { 1514 } else { 1 };
    let burst = r.burst.unwrap_or((r.rate / 10).max(floor));
    RateSpec::new(r.rate, burst, unit)
}

fn check_prefix(p: &IpNet) -> Result<(), SpecError> {
    if p.addr() != p.network() {
        return Err(SpecError::HostBits(*p, p.trunc()));
    }
    Ok(())
}

fn check_port_range(r: &PortRange) -> Result<(), SpecError> {
    if r.upper() < r.lower {
        return Err(SpecError::ReversedPortRange(r.lower, r.upper()));
    }
    Ok(())
}

/// A prefix as a key of the per-family tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PrefixEntry {
    V4(PrefixV4),
    V6(PrefixV6),
}

/// The table key of a prefix (targets use ruleset 0 and list 0).
pub fn prefix_entry(ruleset: u32, list: u8, p: &IpNet) -> PrefixEntry {
    let tag = prefix_tag(ruleset, list, p.prefix_len());
    let addr = addr_words(p.network());
    match p {
        IpNet::V4(_) => PrefixEntry::V4(PrefixV4 { tag, addr: addr[0] }),
        IpNet::V6(_) => PrefixEntry::V6(PrefixV6 { tag, addr }),
    }
}

/// Raw network-order words of an address, as the kernel packs them.
pub fn addr_words(a: IpAddr) -> [u32; 4] {
    match a {
        IpAddr::V4(v4) => [u32::from_ne_bytes(v4.octets()), 0, 0, 0],
        IpAddr::V6(v6) => octets_to_words(v6.octets()),
    }
}

fn octets_to_words(o: [u8; 16]) -> [u32; 4] {
    let mut w = [0u32; 4];
    for (i, word) in w.iter_mut().enumerate() {
        *word = u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]);
    }
    w
}

/// The prefix mask in the same raw packing.
pub fn mask_words(p: &IpNet) -> [u32; 4] {
    match p {
        IpNet::V4(n) => [u32::from_ne_bytes(n.netmask().octets()), 0, 0, 0],
        IpNet::V6(n) => octets_to_words(n.netmask().octets()),
    }
}

/// A port range as (value, mask) when it is an aligned power-of-two block (one exact key),
/// otherwise None (checked as a residual range).
fn port_block(r: &PortRange) -> Option<(u16, u16)> {
    let size = r.upper() as u32 - r.lower as u32 + 1;
    if size.is_power_of_two() && (r.lower as u32).is_multiple_of(size) {
        Some((r.lower, !((size - 1) as u16)))
    } else {
        None
    }
}

const TCP_BITS: [(&str, u8); 8] = [
    ("fin", 0x01),
    ("syn", 0x02),
    ("rst", 0x04),
    ("psh", 0x08),
    ("ack", 0x10),
    ("urg", 0x20),
    ("ece", 0x40),
    ("cwr", 0x80),
];
const FRAG_BITS: [(&str, u8); 4] = [
    ("df", frag_bits::DF),
    ("isf", frag_bits::ISF),
    ("ff", frag_bits::FF),
    ("lf", frag_bits::LF),
];

fn bit_match(
    entry: &str,
    m: &BitMatch,
    table: &[(&str, u8)],
    what: &'static str,
    known: &'static str,
) -> Result<(u8, u8), SpecError> {
    let mut bits = 0u8;
    for b in &m.bits {
        let lower = b.to_ascii_lowercase();
        let Some((_, v)) = table.iter().find(|(n, _)| *n == lower) else {
            return Err(SpecError::UnknownBit(
                entry.to_string(),
                what,
                b.clone(),
                known,
            ));
        };
        bits |= v;
    }
    let mut op = if m.operator == BitOperator::Any {
        bit_op::ANY
    } else {
        bit_op::MATCH
    };
    if m.not {
        op |= bit_op::NOT;
    }
    Ok((bits, op))
}

/// Stable 64-bit hash of an entry name (FNV-1a), so counters follow names across updates.
pub fn name_hash(name: &str) -> u64 {
    let mut h = Fnv(0xcbf2_9ce4_8422_2325);
    name.hash(&mut h);
    h.0
}

struct Fnv(u64);
impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= *b as u64;
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The shape of an entry (everything but the values): entries of one shape share a tuple.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
struct Shape {
    family: u8,
    src_len: u8,
    dst_len: u8,
    fields: u8,
    sport_mask: u16,
    dport_mask: u16,
}

fn compile_acl(entries: &[AclEntry], out: &mut Compiled) -> Result<(), SpecError> {
    if entries.len() > MAX_ACL_ENTRIES as usize {
        return Err(SpecError::TooManyAclEntries(entries.len(), MAX_ACL_ENTRIES));
    }
    let mut names = HashSet::new();
    // Per entry: its shape, its key (tuple index filled in later) and its rule.
    let mut shaped: Vec<(Shape, AclKey, AclRule)> = Vec::with_capacity(entries.len());
    for (prio, e) in entries.iter().enumerate() {
        if e.name.is_empty() || e.name.len() > 64 {
            return Err(SpecError::BadAclName(e.name.clone()));
        }
        if !names.insert(e.name.as_str()) {
            return Err(SpecError::DuplicateAclName(e.name.clone()));
        }
        shaped.push(compile_entry(prio as u32, e)?);
    }

    // Tuples, best (lowest) priority first: the kernel stops probing once no later tuple
    // can beat the match in hand.
    let mut first_prio: BTreeMap<Shape, u32> = BTreeMap::new();
    for (prio, (shape, _, _)) in shaped.iter().enumerate() {
        first_prio.entry(*shape).or_insert(prio as u32);
    }
    if first_prio.len() > MAX_TUPLES {
        return Err(SpecError::TooManyTuples(first_prio.len(), MAX_TUPLES));
    }
    let mut order: Vec<(Shape, u32)> = first_prio.into_iter().collect();
    order.sort_by_key(|(_, p)| *p);
    for (i, (shape, min_prio)) in order.iter().enumerate() {
        let src_mask = shape_mask(shape.family, shape.src_len);
        let dst_mask = shape_mask(shape.family, shape.dst_len);
        let f = shape.fields;
        let byte = |bit: u8, shift: u32| if f & bit != 0 { 0xffu32 << shift } else { 0 };
        let mut needs = match shape.family {
            4 => tuple_needs::IPV4,
            6 => tuple_needs::IPV6,
            _ => 0,
        };
        if f & tuple_fields::PORTS != 0 {
            needs |= tuple_needs::PORTS;
        }
        if f & (tuple_fields::ICMP_TYPE | tuple_fields::ICMP_CODE) != 0 {
            needs |= tuple_needs::ICMP;
        }
        out.config.tuples[i] = AclTuple {
            min_priority: *min_prio,
            ports_mask: shape.sport_mask as u32 | (shape.dport_mask as u32) << 16,
            proto_mask: byte(tuple_fields::PROTO, 0)
                | byte(tuple_fields::ICMP_TYPE, 8)
                | byte(tuple_fields::ICMP_CODE, 16),
            src_mask0: src_mask[0],
            dst_mask0: dst_mask[0],
            fields: f,
            family: shape.family,
            needs,
            ..Default::default()
        };
        out.config.tuple_keys[i].wide = AclWideMasks {
            src: [src_mask[1], src_mask[2], src_mask[3]],
            dst: [dst_mask[1], dst_mask[2], dst_mask[3]],
        };
    }
    out.config.n_tuples = order.len() as u32;

    // Chains: entries with the same full key, in priority order.
    let mut chains: BTreeMap<AclKey, Vec<u32>> = BTreeMap::new();
    for (prio, (shape, key, rule)) in shaped.iter_mut().enumerate() {
        key.tuple = order
            .iter()
            .position(|(s, _)| s == shape)
            .expect("shape was collected") as u8;
        key.ruleset = out.config.ruleset;
        rule.key = *key;
        chains.entry(*key).or_default().push(prio as u32);
        out.rules.push(*rule);
    }
    let mut keys_of_tuple = vec![Vec::new(); order.len()];
    for (key, members) in chains {
        if members.len() > MAX_CHAIN as usize {
            let names = members
                .iter()
                .map(|&i| entries[i as usize].name.clone())
                .collect();
            return Err(SpecError::ChainTooLong(names, MAX_CHAIN));
        }
        for w in members.windows(2) {
            out.rules[w[0] as usize].next = out.config.rule_base + w[1];
        }
        let wide = order[key.tuple as usize].0.family == 6;
        key.filter_bits(wide)
            .mark(&mut out.config.tuple_keys[key.tuple as usize].filter);
        keys_of_tuple[key.tuple as usize].push(key);
        out.keys.push(IndexEntry {
            key,
            wide,
            head: out.config.rule_base + members[0],
        });
    }
    for (tuple, keys) in out.config.tuples.iter_mut().zip(&keys_of_tuple) {
        let (mask, bits) = shared_bits(tuple, keys);
        tuple.same_mask = mask;
        tuple.same_bits = bits;
    }
    out.config.rule_count = entries.len() as u32;
    Ok(())
}

/// The bits all `keys` of `tuple` agree on in the words [`tuple_words`] names (see
/// [`AclTuple::same_mask`]), as (mask, bits).
fn shared_bits(tuple: &AclTuple, keys: &[AclKey]) -> ([u32; 4], [u32; 4]) {
    let words = |k: &AclKey| {
        let mut w = [0u32; 4];
        w[tuple_words::PROTO] =
            k.proto as u32 | (k.icmp_type as u32) << 8 | (k.icmp_code as u32) << 16;
        w[tuple_words::PORTS] = k.sport as u32 | (k.dport as u32) << 16;
        w[tuple_words::SRC0] = k.src[0];
        w[tuple_words::DST0] = k.dst[0];
        w
    };
    let mut mask = [0u32; 4];
    mask[tuple_words::PROTO] = tuple.proto_mask;
    mask[tuple_words::PORTS] = tuple.ports_mask;
    mask[tuple_words::SRC0] = tuple.src_mask0;
    mask[tuple_words::DST0] = tuple.dst_mask0;
    let Some(first) = keys.first().map(words) else {
        return ([0; 4], [0; 4]); // an empty tuple is never probed (n_tuples)
    };
    let mut bits = [0u32; 4];
    for i in 0..4 {
        let differ = keys.iter().fold(0, |d, k| d | (words(k)[i] ^ first[i]));
        mask[i] &= !differ;
        bits[i] = first[i] & mask[i];
    }
    (mask, bits)
}

fn shape_mask(family: u8, len: u8) -> [u32; 4] {
    match family {
        4 => mask_words(&IpNet::V4(
            ipnet::Ipv4Net::new(0.into(), len).expect("len <= 32"),
        )),
        6 => mask_words(&IpNet::V6(
            ipnet::Ipv6Net::new(0.into(), len).expect("len <= 128"),
        )),
        _ => [0; 4],
    }
}

fn compile_entry(prio: u32, e: &AclEntry) -> Result<(Shape, AclKey, AclRule), SpecError> {
    let m = &e.matches;
    let name = e.name.as_str();
    let family = match (m.source, m.destination) {
        (Some(IpNet::V4(_)), Some(IpNet::V6(_))) | (Some(IpNet::V6(_)), Some(IpNet::V4(_))) => {
            return Err(SpecError::MixedFamilies(name.to_string()))
        }
        (Some(IpNet::V4(_)), _) | (_, Some(IpNet::V4(_))) => 4,
        (Some(IpNet::V6(_)), _) | (_, Some(IpNet::V6(_))) => 6,
        _ => 0,
    };
    let mut shape = Shape {
        family,
        src_len: 0,
        dst_len: 0,
        fields: 0,
        sport_mask: 0,
        dport_mask: 0,
    };
    let mut key = AclKey::default();
    let mut rule = AclRule {
        name_hash: name_hash(name),
        priority: prio,
        next: NO_RULE,
        ..Default::default()
    };
    if let Some(p) = m.source {
        check_prefix(&p)?;
        shape.src_len = p.prefix_len();
        key.src = addr_words(p.network());
    }
    if let Some(p) = m.destination {
        check_prefix(&p)?;
        shape.dst_len = p.prefix_len();
        key.dst = addr_words(p.network());
    }
    if let Some(proto) = m.protocol {
        shape.fields |= tuple_fields::PROTO;
        key.proto = proto;
    }
    for (range, is_src) in [(m.source_port, true), (m.destination_port, false)] {
        let Some(r) = range else { continue };
        check_port_range(&r)?;
        shape.fields |= tuple_fields::PORTS;
        match port_block(&r) {
            Some((value, mask)) => {
                if is_src {
                    shape.sport_mask = mask;
                    key.sport = value;
                } else {
                    shape.dport_mask = mask;
                    key.dport = value;
                }
            }
            None if is_src => {
                rule.checks |= residual::SPORT_RANGE;
                (rule.sport_lo, rule.sport_hi) = (r.lower, r.upper());
            }
            None => {
                rule.checks |= residual::DPORT_RANGE;
                (rule.dport_lo, rule.dport_hi) = (r.lower, r.upper());
            }
        }
    }
    if let Some(t) = m.icmp_type {
        shape.fields |= tuple_fields::ICMP_TYPE;
        key.icmp_type = t;
    }
    if let Some(c) = m.icmp_code {
        shape.fields |= tuple_fields::ICMP_CODE;
        key.icmp_code = c;
    }
    if let Some(f) = &m.tcp_flags {
        let (bits, op) = bit_match(
            name,
            f,
            &TCP_BITS,
            "tcp flag",
            "fin syn rst psh ack urg ece cwr",
        )?;
        rule.checks |= residual::TCP_FLAGS;
        rule.tcp_flags = bits;
        rule.tcp_flags_op = op;
    }
    if let Some(f) = &m.fragment {
        let (bits, op) = bit_match(name, f, &FRAG_BITS, "fragment", "df isf ff lf")?;
        rule.checks |= residual::FRAGMENT;
        rule.frag_bits = bits;
        rule.frag_op = op;
    }
    if let Some(r) = m.length {
        if r.min > r.max {
            return Err(SpecError::ReversedRange(name.to_string(), r.min, r.max));
        }
        rule.checks |= residual::LENGTH;
        (rule.len_lo, rule.len_hi) = (r.min, r.max);
    }
    if let Some(r) = m.ttl {
        if r.min > r.max {
            return Err(SpecError::ReversedRange(name.to_string(), r.min, r.max));
        }
        if r.max > 255 {
            return Err(SpecError::ValueOutOfRange(name.to_string(), r.max));
        }
        rule.checks |= residual::TTL;
        (rule.ttl_lo, rule.ttl_hi) = (r.min as u8, r.max as u8);
    }
    if let Some(d) = m.dscp {
        if d > 63 {
            return Err(SpecError::ValueOutOfRange(name.to_string(), d as u16));
        }
        rule.checks |= residual::DSCP;
        rule.dscp = d;
    }
    match &e.action {
        AclAction::Accept => rule.action = acl_action::ACCEPT,
        AclAction::Drop => rule.action = acl_action::DROP,
        AclAction::RateLimit(RateLimit::BytesPerSecond(r)) => {
            rule.action = acl_action::RATE_LIMIT;
            rule.rate = rate_spec(*r, rate_unit::BYTES);
        }
        AclAction::RateLimit(RateLimit::PacketsPerSecond(r)) => {
            rule.action = acl_action::RATE_LIMIT;
            rule.rate = rate_spec(*r, rate_unit::PACKETS);
        }
    }
    Ok((shape, key, rule))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::spec::AclMatch;

    fn spec(acl: Vec<AclEntry>) -> MitigationSpec {
        MitigationSpec {
            acl,
            ..MitigationSpec::new(7, vec!["198.51.100.0/24".parse().unwrap()])
        }
    }

    fn drop_src(name: &str, src: &str) -> AclEntry {
        AclEntry {
            name: name.into(),
            matches: AclMatch {
                source: Some(src.parse().unwrap()),
                ..Default::default()
            },
            action: AclAction::Drop,
        }
    }

    #[test]
    fn same_shape_entries_share_one_tuple() {
        let acl = (0..1000)
            .map(|i| {
                drop_src(
                    &format!("r{i}"),
                    &format!("192.0.{}.{}/32", i / 256, i % 256),
                )
            })
            .collect();
        let c = compile(&spec(acl), 14, 100).unwrap();
        assert_eq!(c.config.n_tuples, 1);
        assert_eq!(c.keys.len(), 1000);
        assert_eq!(c.rules.len(), 1000);
        assert!(c
            .keys
            .iter()
            .all(|e| !e.wide && e.key.ruleset == 14 && e.head >= 100 && e.head < 1100));
        assert!(c
            .rules
            .iter()
            .all(|r| r.key.ruleset == 14 && r.key.src[0] != 0));
    }

    #[test]
    fn a_tuple_keeps_the_bits_its_keys_share() {
        let word = |a: &str| u32::from_ne_bytes(a.parse::<std::net::Ipv4Addr>().unwrap().octets());
        let acl = vec![drop_src("a", "10.0.1.0/24"), drop_src("b", "10.0.2.0/24")];
        let t = compile(&spec(acl), 1, 0).unwrap().config.tuples[0];
        let (mask, bits) = (
            t.same_mask[tuple_words::SRC0],
            t.same_bits[tuple_words::SRC0],
        );
        // Both entries' sources pass, as does any source in 10.0.0.0/22; others do not.
        for inside in ["10.0.1.7", "10.0.2.200", "10.0.3.1"] {
            assert_eq!(word(inside) & mask, bits, "{inside}");
        }
        for outside in ["192.0.2.1", "10.1.1.1", "10.0.4.1"] {
            assert_ne!(word(outside) & mask, bits, "{outside}");
        }
        // No protocol or port in the shape: nothing to check there.
        assert_eq!(
            t.same_mask[tuple_words::PROTO] | t.same_mask[tuple_words::PORTS],
            0
        );
    }

    #[test]
    fn keys_without_addresses_serve_both_families() {
        let e = AclEntry {
            name: "udp-9999".into(),
            matches: AclMatch {
                protocol: Some(17),
                destination_port: Some(PortRange::single(9999)),
                ..Default::default()
            },
            action: AclAction::Drop,
        };
        let c = compile(&spec(vec![e]), 3, 0).unwrap();
        assert_eq!(c.keys.len(), 1);
        let k = c.keys[0].key;
        assert!(!c.keys[0].wide);
        assert_eq!(
            (k.proto, k.dport, k.ruleset, k.src, k.dst),
            (17, 9999, 3, [0; 4], [0; 4])
        );
        assert_eq!(c.rules[0].key, k);
        assert_eq!(c.config.flags & (0xf << flags::LISTS), 0);
    }

    #[test]
    fn digest_follows_the_spec() {
        let a = spec(vec![drop_src("a", "192.0.2.0/24")]);
        let mut b = a.clone();
        assert_eq!(spec_digest(&a), spec_digest(&b));
        assert_ne!(spec_digest(&a), 0);
        b.countermeasures.fragments = true;
        assert_ne!(spec_digest(&a), spec_digest(&b));
        assert_eq!(
            compile(&a, 0, 0).unwrap().config.spec_digest,
            spec_digest(&a)
        );
    }

    #[test]
    fn tuples_are_sorted_by_first_entry() {
        let acl = vec![
            drop_src("a", "192.0.2.0/24"),
            drop_src("b", "192.0.2.1/32"),
            drop_src("c", "192.0.2.128/25"),
        ];
        let c = compile(&spec(acl), 0, 0).unwrap();
        let prios: Vec<u32> = c.config.tuples[..3]
            .iter()
            .map(|t| t.min_priority)
            .collect();
        assert_eq!(prios, vec![0, 1, 2]);
    }

    #[test]
    fn shared_key_entries_chain_in_priority_order() {
        let mk = |name: &str, lo: u16, hi: u16| AclEntry {
            name: name.into(),
            matches: AclMatch {
                protocol: Some(17),
                destination_port: Some(PortRange::new(lo, hi)),
                ..Default::default()
            },
            action: AclAction::Drop,
        };
        let c = compile(&spec(vec![mk("x", 1000, 2000), mk("y", 3000, 4001)]), 0, 10).unwrap();
        assert_eq!(c.keys.len(), 1);
        assert_eq!(c.keys[0].head, 10);
        assert_eq!(c.rules[0].next, 11);
        assert_eq!(c.rules[1].next, NO_RULE);
        assert_eq!(c.rules[0].checks, residual::DPORT_RANGE);
    }

    #[test]
    fn aligned_port_blocks_become_key_masks() {
        assert_eq!(port_block(&PortRange::single(53)), Some((53, 0xffff)));
        assert_eq!(
            port_block(&PortRange::new(1024, 2047)),
            Some((1024, 0xfc00))
        );
        assert_eq!(port_block(&PortRange::new(0, 65535)), Some((0, 0)));
        assert_eq!(port_block(&PortRange::new(1000, 2000)), None);
    }

    #[test]
    fn too_long_chain_is_refused_with_names() {
        let acl = (0..9)
            .map(|i| AclEntry {
                name: format!("t{i}"),
                matches: AclMatch {
                    ttl: Some(super::super::spec::ValueRange { min: i, max: i }),
                    ..Default::default()
                },
                action: AclAction::Drop,
            })
            .collect();
        match compile(&spec(acl), 0, 0) {
            Err(SpecError::ChainTooLong(names, 8)) => assert_eq!(names.len(), 9),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn bad_specs_are_refused_with_a_reason() {
        let mut s = spec(vec![]);
        s.targets = vec!["198.51.100.7/24".parse().unwrap()];
        assert_eq!(
            compile(&s, 0, 0).unwrap_err().to_string(),
            "prefix 198.51.100.7/24 has host bits set: use 198.51.100.0/24"
        );
        s.targets.clear();
        assert!(matches!(compile(&s, 0, 0), Err(SpecError::NoTargets(7))));
        let mixed = AclEntry {
            name: "m".into(),
            matches: AclMatch {
                source: Some("192.0.2.0/24".parse().unwrap()),
                destination: Some("2001:db8::/32".parse().unwrap()),
                ..Default::default()
            },
            action: AclAction::Drop,
        };
        assert!(matches!(
            compile(&spec(vec![mixed]), 0, 0),
            Err(SpecError::MixedFamilies(_))
        ));
        let dup = vec![drop_src("a", "192.0.2.1/32"), drop_src("a", "192.0.2.2/32")];
        assert!(matches!(
            compile(&spec(dup), 0, 0),
            Err(SpecError::DuplicateAclName(_))
        ));
        let bad_bit = AclEntry {
            name: "f".into(),
            matches: AclMatch {
                tcp_flags: Some(BitMatch {
                    bits: vec!["syn".into(), "bogus".into()],
                    operator: BitOperator::Match,
                    not: false,
                }),
                ..Default::default()
            },
            action: AclAction::Drop,
        };
        assert!(compile(&spec(vec![bad_bit]), 0, 0)
            .unwrap_err()
            .to_string()
            .contains("\"bogus\""));
    }

    #[test]
    fn too_many_shapes_is_refused() {
        let acl = (0..17)
            .map(|i| drop_src(&format!("s{i}"), &format!("192.0.0.0/{}", i + 8)))
            .collect();
        assert!(matches!(
            compile(&spec(acl), 0, 0),
            Err(SpecError::TooManyTuples(17, 16))
        ));
    }

    #[test]
    fn source_lists_are_keyed_by_ruleset_with_length_masks() {
        let mut s = spec(vec![]);
        s.accept_list = vec!["192.0.2.0/24".parse().unwrap()];
        s.drop_list = vec![
            "2001:db8:bad::/48".parse().unwrap(),
            "2001:db8::1/128".parse().unwrap(),
        ];
        let c = compile(&s, 77, 0).unwrap();
        assert_eq!(c.sources.len(), 3);
        assert_eq!(
            c.sources[0],
            PrefixEntry::V4(PrefixV4 {
                tag: prefix_tag(77, list::ACCEPT_V4, 24),
                addr: u32::from_ne_bytes([192, 0, 2, 0])
            })
        );
        assert_eq!(
            c.config.source_lengths[list::ACCEPT_V4 as usize],
            [1 << 23, 0]
        );
        assert_eq!(
            c.config.source_lengths[list::DROP_V6 as usize],
            [1 << 47, 1 << 63]
        );
        assert_eq!(c.config.source_lengths[list::DROP_V4 as usize], [0, 0]);
        let lists = (c.config.flags >> flags::LISTS) & 0xf;
        assert_eq!(lists, 1 << list::ACCEPT_V4 | 1 << list::DROP_V6);
    }

    #[test]
    fn too_many_list_lengths_are_refused() {
        let mut s = spec(vec![]);
        s.drop_list = (8..=25)
            .map(|l| format!("10.0.0.0/{l}").parse().unwrap())
            .collect();
        assert_eq!(
            compile(&s, 0, 0).unwrap_err().to_string(),
            "the IPv4 drop-list holds 18 distinct prefix lengths; at most 16 fit: aggregate or split prefixes to fewer lengths"
        );
    }

    #[test]
    fn zero_length_prefixes_are_refused() {
        let mut s = spec(vec![]);
        s.drop_list = vec!["0.0.0.0/0".parse().unwrap()];
        assert!(matches!(compile(&s, 0, 0), Err(SpecError::ZeroLength(_))));
        let mut s = spec(vec![]);
        s.targets = vec!["::/0".parse().unwrap()];
        assert!(matches!(compile(&s, 0, 0), Err(SpecError::ZeroLength(_))));
    }
}
