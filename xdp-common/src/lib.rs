//! The contract between the XDP program (`xdp-filter`) and user space (`dots-agent`).
//!
//! Every map name, key and value layout lives here once; both sides compile against it.
//! Changing a layout means bumping [`LAYOUT_VERSION`]: pinned maps live under a directory
//! named after it, so an agent never re-adopts maps of another layout.
//!
//! Addresses are kept as raw network-order bytes packed into `[u32; 4]` words (an IPv4
//! address uses the first word, the rest are zero) so the kernel side can mask and compare
//! them without byte swapping.
#![no_std]

pub const LAYOUT_VERSION: u32 = 4;

// ---------------------------------------------------------------------------------------
// Capacities (the defaults the program is built with; see the README for the memory cost).
// ---------------------------------------------------------------------------------------

/// Mitigation slots (one per active mitigation on this box).
pub const MAX_MITIGATIONS: u32 = 4096;
/// Destination (target) prefixes per address family.
pub const MAX_TARGETS_PER_FAMILY: u32 = 65_536;
/// Source accept/drop-list prefixes live at once (all lists, both families).
pub const MAX_SRC_PREFIXES: u32 = 262_144;
/// Mitigation configurations: two generations per slot.
pub const CONFIG_SLOTS: u32 = 2 * MAX_MITIGATIONS;
/// ACL entries live at once across all mitigations.
pub const MAX_ACL_ENTRIES: u32 = 16_384;
/// Rule slots: twice the entries, so a full rule set can be rebuilt beside the live one.
pub const ACL_RULE_SLOTS: u32 = 2 * MAX_ACL_ENTRIES;
/// Sources tracked by the per-source rate limits (LRU: the least recent are forgotten).
pub const MAX_TRACKED_SOURCES: u32 = 1_048_576;
/// Distinct ACL tuples (field/prefix-length shapes) per mitigation.
pub const MAX_TUPLES: usize = 16;
/// ACL entries that may share one exact-match key and differ only in residual fields.
pub const MAX_CHAIN: u32 = 8;
/// Distinct prefix lengths probed per lookup: per source list, and per summary slot (the
/// target lengths that share a /20 of IPv4 or a hashed /48 of IPv6). User space refuses
/// rule sets that need more, so the kernel's probe loops stay short and verifiable.
pub const MAX_PREFIX_LENGTHS: u32 = 16;
/// Destination port ranges narrowing a mitigation's scope.
pub const MAX_SCOPE_PORT_RANGES: usize = 8;
/// Per-interface counters are indexed by ifindex; larger ifindexes share slot 0.
pub const IF_STATS_SLOTS: u32 = 4096;
/// 65,536 ports as a bitmap of u64 words.
pub const AMP_PORT_WORDS: u32 = 1024;
/// (mitigation, source) pairs whose drops are sampled at once (LRU: the least recently
/// sampled sources are forgotten, so a heavy hitter stays while spoofed one-offs churn).
pub const MAX_TALKERS: u32 = 8192;
/// One drop in `TALKER_SAMPLE` is recorded in `TOP_TALKERS`, with weight 1: user space
/// multiplies by this. A power of two (the kernel masks a random number with it). An LRU
/// hash update costs about 150 ns; one in 64 keeps that near 2 ns per drop, and the
/// estimate of a source with N drops within about 8 x sqrt(N) (one standard deviation).
pub const TALKER_SAMPLE: u32 = 64;

/// IPv4 destinations are found in a direct array with one entry per /24 ([`dst_v4`]).
pub const DST_V4_SLOTS: u32 = 1 << 24;
/// The array holds the `u32` entries two to a `u64` value (entry `i` is the low half of
/// value `i / 2` when `i` is even): the kernel spaces array values 8 bytes apart, so a map
/// of `u32` values would take twice the memory, and its shared mapping would not be a
/// plain `u32` array.
pub const DST_V4_VALUES: u32 = DST_V4_SLOTS / 2;
/// The fast-reject summary of IPv6 target prefixes has `1 << SUMMARY_BITS` slots.
pub const SUMMARY_BITS: u32 = 20;
pub const SUMMARY_SLOTS: u32 = 1 << SUMMARY_BITS;
/// IPv6 summary slots are keyed by a hash of the first 48 bits of the destination.
pub const SUMMARY_V6_PREFIX_BITS: u32 = 48;
/// The ACL index ([`AclKey::slots`]) has `1 << ACL_INDEX_BITS` slots of a `u32` each, two
/// to a `u64` value (as in `DST_V4`): 2 MiB, small enough to stay in cache, and at most
/// 6% full (two generations of 16,384 entries), far below what two-choice placement needs.
pub const ACL_INDEX_BITS: u32 = 19;
pub const ACL_INDEX_SLOTS: u32 = 1 << ACL_INDEX_BITS;
pub const ACL_INDEX_VALUES: u32 = ACL_INDEX_SLOTS / 2;
/// `BPF_F_MMAPABLE`: user space writes these arrays through a shared mapping (one store
/// per entry) instead of one bpf(2) call per entry.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;

// ---------------------------------------------------------------------------------------
// Map names (at most 15 characters: the kernel's object-name limit).
// ---------------------------------------------------------------------------------------
pub mod map_names {
    pub const TARGETS_V4: &str = "TARGETS_V4";
    pub const TARGETS_V6: &str = "TARGETS_V6";
    pub const DST_V4: &str = "DST_V4";
    pub const SUMMARY_V6: &str = "TGT_SUM_V6";
    pub const MITIGATIONS: &str = "MITIGATIONS";
    pub const MITIGATION_STATS: &str = "MIT_STATS";
    pub const ACL_INDEX: &str = "ACL_INDEX";
    pub const ACL_RULES: &str = "ACL_RULES";
    pub const ACL_STATS: &str = "ACL_STATS";
    pub const ACL_BASE: &str = "ACL_BASE";
    pub const MIT_BASE: &str = "MIT_BASE";
    pub const ACL_BUCKETS: &str = "ACL_BUCKETS";
    pub const SOURCES_V4: &str = "SOURCES_V4";
    pub const SOURCES_V6: &str = "SOURCES_V6";
    pub const SRC_RATE: &str = "SRC_RATE";
    pub const SCOPE_BUCKETS: &str = "SCOPE_BUCKETS";
    pub const AMP_PORTS: &str = "AMP_PORTS";
    pub const IF_STATS: &str = "IF_STATS";
    pub const TOP_TALKERS: &str = "TOP_TALKERS";

    pub const ALL: [&str; 19] = [
        TARGETS_V4,
        TARGETS_V6,
        DST_V4,
        SUMMARY_V6,
        MITIGATIONS,
        MITIGATION_STATS,
        ACL_INDEX,
        ACL_RULES,
        ACL_STATS,
        ACL_BASE,
        MIT_BASE,
        ACL_BUCKETS,
        SOURCES_V4,
        SOURCES_V6,
        SRC_RATE,
        SCOPE_BUCKETS,
        AMP_PORTS,
        IF_STATS,
        TOP_TALKERS,
    ];
}

/// The program's name in the object file.
pub const PROGRAM_NAME: &str = "xdp_filter";

// ---------------------------------------------------------------------------------------
// Counters
// ---------------------------------------------------------------------------------------

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counter {
    pub packets: u64,
    pub bytes: u64,
}

impl Counter {
    /// What was counted since `earlier` (counters only grow).
    #[inline(always)]
    pub fn since(&self, earlier: &Counter) -> Counter {
        Counter {
            packets: self.packets.wrapping_sub(earlier.packets),
            bytes: self.bytes.wrapping_sub(earlier.bytes),
        }
    }

    #[inline(always)]
    pub fn add(&mut self, other: &Counter) {
        self.packets = self.packets.wrapping_add(other.packets);
        self.bytes = self.bytes.wrapping_add(other.bytes);
    }
}

/// Why a packet in a mitigation's scope was dropped. Index into [`MitigationStats::dropped`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DropReason {
    /// IP header fine but the transport header is cut short.
    Malformed = 0,
    /// Source in the mitigation's drop-list.
    DropList = 1,
    /// An ACL entry with action drop.
    AclDrop = 2,
    /// An ACL entry with action rate-limit, over its rate.
    AclRateLimit = 3,
    /// UDP from a well-known amplification source port.
    AmplificationPort = 4,
    /// Non-first IP fragment.
    Fragment = 5,
    /// Per-source packet rate over the limit.
    SourceRate = 6,
    /// Per-source TCP SYN rate over the limit.
    SynRate = 7,
    /// Scope-wide byte-rate cap exceeded.
    ScopeCap = 8,
}

pub const DROP_REASONS: usize = 9;

impl DropReason {
    pub const ALL: [DropReason; DROP_REASONS] = [
        DropReason::Malformed,
        DropReason::DropList,
        DropReason::AclDrop,
        DropReason::AclRateLimit,
        DropReason::AmplificationPort,
        DropReason::Fragment,
        DropReason::SourceRate,
        DropReason::SynRate,
        DropReason::ScopeCap,
    ];

    /// Stable snake_case label (used in CLI output and metrics).
    pub const fn label(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::DropList => "drop_list",
            DropReason::AclDrop => "acl_drop",
            DropReason::AclRateLimit => "acl_rate_limit",
            DropReason::AmplificationPort => "amplification_port",
            DropReason::Fragment => "fragment",
            DropReason::SourceRate => "source_rate",
            DropReason::SynRate => "syn_rate",
            DropReason::ScopeCap => "scope_cap",
        }
    }

    /// Drops caused by a rate limit rather than a match.
    pub const fn is_rate_limit(self) -> bool {
        matches!(
            self,
            DropReason::AclRateLimit
                | DropReason::SourceRate
                | DropReason::SynRate
                | DropReason::ScopeCap
        )
    }
}

/// Per mitigation slot, per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MitigationStats {
    /// In scope (a target of the mitigation, matching its protocol/port scope) and let
    /// through; includes `accepted`. In scope = passed + every dropped, so it is not
    /// counted separately on the hot path.
    pub passed: Counter,
    /// Let through by the accept-list or an ACL accept (a subset of `passed`).
    pub accepted: Counter,
    pub dropped: [Counter; DROP_REASONS],
}

/// Per ACL rule: per CPU in `ACL_STATS`, and what earlier generations of the entry counted
/// in `ACL_BASE` (written by user space only). A packet an ACL entry decides is counted
/// here only, not in its mitigation's [`MitigationStats`] (one counter update per drop):
/// user space adds matches of drop entries to the mitigation's `AclDrop` drops, `limited`
/// to its `AclRateLimit` drops, and the rest to its passed and accepted traffic.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AclStats {
    pub matched: Counter,
    /// Rate-limit entries: the matches beyond the rate (dropped).
    pub limited: Counter,
}

impl AclStats {
    #[inline(always)]
    pub fn add(&mut self, o: &AclStats) {
        self.matched.add(&o.matched);
        self.limited.add(&o.limited);
    }

    /// What has been counted since `earlier` (counters only grow).
    pub fn since(&self, earlier: &AclStats) -> AclStats {
        AclStats {
            matched: self.matched.since(&earlier.matched),
            limited: self.limited.since(&earlier.limited),
        }
    }
}

/// Bytes of the program's working state kept beside each interface's counters in
/// [`InterfaceSlot`] (opaque to user space).
pub const SCRATCH_WORDS: usize = 10;

/// `IF_STATS`, per interface slot (ifindex), per CPU: the counters user space reads, and
/// the program's working state for the packet in hand, so one per-CPU lookup gives both,
/// on adjacent cache lines.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterfaceSlot {
    pub stats: InterfaceStats,
    pub scratch: [u64; SCRATCH_WORDS],
}

/// Per interface slot (ifindex), per CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterfaceStats {
    /// Every packet the program saw.
    pub rx: Counter,
    /// Packets whose link or IP header could not be parsed (passed on).
    pub parse_errors: u64,
    /// Packets that are not IPv4/IPv6 (ARP, LLDP, ...; passed on).
    pub non_ip: u64,
    /// Packets to a mitigated destination (any scope).
    pub to_target: u64,
    /// Packets dropped for any reason.
    pub dropped: u64,
}

// ---------------------------------------------------------------------------------------
// Destination lookup
// ---------------------------------------------------------------------------------------

/// A prefix as a hash key: `tag` says whose prefix it is and how long, `addr` is the
/// address masked to that length. Targets and source lists are hash tables of these, probed
/// once per prefix length present (longest first): a hash lookup per length instead of an
/// LPM-trie walk that grows with the table. Keys are per family and kept short because the
/// kernel hashes every byte of a key on every lookup.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PrefixV4 {
    pub tag: u32,
    pub addr: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PrefixV6 {
    pub tag: u32,
    pub addr: [u32; 4],
}

/// `ruleset << 10 | list << 8 | len`. Targets use ruleset 0 and list 0; source lists use
/// their generation's ruleset, so every generation has lists of its own.
#[inline(always)]
pub const fn prefix_tag(ruleset: u32, list: u8, len: u8) -> u32 {
    (ruleset << 10) | ((list as u32 & 3) << 8) | len as u32
}

/// (ruleset, list, len) of a tag.
pub const fn split_tag(tag: u32) -> (u32, u8, u8) {
    (tag >> 10, ((tag >> 8) & 3) as u8, tag as u8)
}

/// Source lists, in [`prefix_tag`] and [`MitigationConfig::source_lengths`].
pub mod list {
    pub const ACCEPT_V4: u8 = 0;
    pub const DROP_V4: u8 = 1;
    pub const ACCEPT_V6: u8 = 2;
    pub const DROP_V6: u8 = 3;
}

/// Value of the target tables: the live configuration of the mitigation covering the prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TargetValue {
    /// Index into `MITIGATIONS`: the live generation of the mitigation.
    pub ruleset: u32,
}

/// Which prefix lengths are present: bit `len - 1` of the 128. Summary slots hold one per
/// slot (the lengths of targets that cover any address mapping to the slot); a zero mask
/// is the fast "not mitigated" answer.
pub type LengthMask = [u64; 2];

#[inline(always)]
pub fn length_bit(len: u8) -> (usize, u64) {
    let b = len as u32 - 1;
    ((b >> 6) as usize, 1u64 << (b & 63))
}

/// The network-order mask of the first `len` bits of word `word` (0..4) of an address.
#[inline(always)]
pub const fn word_mask(len: u32, word: u32) -> u32 {
    let start = word * 32;
    if len <= start {
        0
    } else if len >= start + 32 {
        u32::MAX
    } else {
        (u32::MAX << (32 - (len - start))).to_be()
    }
}

/// IPv4 destinations: `DST_V4` holds one `u32` per /24 of the address space, so finding
/// the mitigation of an IPv4 destination is one array read (the DIR-24-8 idea of routing
/// tables, with the rare longer prefixes in the `TARGETS_V4` hash). User space keeps every
/// entry equal to what the targets say, writing through a shared mapping.
pub mod dst_v4 {
    /// Bits 0..14: `ruleset + 1` of the longest target of length <= 24 that covers the /24
    /// (0: none).
    pub const RULESET_MASK: u32 = 0x3fff;
    /// Bits 16..24: bit `len - 25` is set while a target of length `len` (25..=32) lies in
    /// the /24; the kernel then probes `TARGETS_V4` for those lengths, longest first.
    pub const LONGER_SHIFT: u32 = 16;
    pub const LONGER_MASK: u32 = 0xff << LONGER_SHIFT;
    /// Bits 24..29: the cover's prefix length (user space's bookkeeping: the kernel ignores
    /// it), so the array itself says which cover a shorter or longer target may replace.
    pub const COVER_LEN_SHIFT: u32 = 24;

    /// The entry of a /24: its cover (`ruleset` and length of the longest target <= /24,
    /// if any) and the lengths of longer targets inside it.
    pub const fn entry(cover: Option<(u32, u8)>, longer: u8) -> u32 {
        let c = match cover {
            Some((r, len)) => ((r + 1) & RULESET_MASK) | ((len as u32 & 0x1f) << COVER_LEN_SHIFT),
            None => 0,
        };
        c | ((longer as u32) << LONGER_SHIFT)
    }

    /// The cover of an entry: (ruleset, length).
    pub const fn cover(entry: u32) -> Option<(u32, u8)> {
        let r = entry & RULESET_MASK;
        if r == 0 {
            None
        } else {
            Some((r - 1, ((entry >> COVER_LEN_SHIFT) & 0x1f) as u8))
        }
    }

    /// The lengths (bit `len - 25`) of longer targets inside the entry's /24.
    pub const fn longer(entry: u32) -> u8 {
        (entry >> LONGER_SHIFT) as u8
    }
}

/// Index into `DST_V4` of an IPv4 address given as its raw network-order word.
#[inline(always)]
pub fn dst_v4_index(addr_ne: u32) -> u32 {
    u32::from_be(addr_ne) >> 8
}

/// Summary slot for an IPv6 destination: a multiplicative hash of its first 48 bits.
#[inline(always)]
pub fn summary_index_v6(top48: u64) -> u32 {
    (top48.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> (64 - SUMMARY_BITS)) as u32
}

/// The first 48 bits of an IPv6 address as an integer (input of [`summary_index_v6`]).
#[inline(always)]
pub fn ipv6_top48(addr: &[u8; 16]) -> u64 {
    ((addr[0] as u64) << 40)
        | ((addr[1] as u64) << 32)
        | ((addr[2] as u64) << 24)
        | ((addr[3] as u64) << 16)
        | ((addr[4] as u64) << 8)
        | (addr[5] as u64)
}

// ---------------------------------------------------------------------------------------
// Mitigation configuration
// ---------------------------------------------------------------------------------------

/// Built-in countermeasures and scope options, in [`MitigationConfig::flags`].
pub mod flags {
    pub const CM_AMPLIFICATION: u32 = 1 << 0;
    pub const CM_FRAGMENTS: u32 = 1 << 1;
    pub const CM_SOURCE_RATE: u32 = 1 << 2;
    pub const CM_SYN_RATE: u32 = 1 << 3;
    pub const CM_SCOPE_CAP: u32 = 1 << 4;
    /// The scope lists protocols (otherwise any protocol is in scope).
    pub const SCOPE_PROTOCOLS: u32 = 1 << 12;
    /// Bit `LISTS + list` is set while that source list ([`super::list`]) is not empty, so
    /// a packet reads no list state of a mitigation without lists.
    pub const LISTS: u32 = 16;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PortRange {
    pub lo: u16,
    pub hi: u16,
}

/// What a token bucket counts.
pub mod rate_unit {
    pub const PACKETS: u32 = 0;
    pub const BYTES: u32 = 1;
}

/// A rate limit as a GCRA (virtual scheduling) bucket: each unit (packet or byte) advances
/// the bucket's theoretical arrival time by `interval_fp >> 16` ns; a packet is admitted
/// while that time runs at most `tolerance_ns` ahead of now.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateSpec {
    /// Nanoseconds per unit in 48.16 fixed point; `u64::MAX` admits nothing (rate 0).
    pub interval_fp: u64,
    /// How far ahead of now the bucket may run: burst x interval.
    pub tolerance_ns: u64,
    /// [`rate_unit`].
    pub unit: u32,
    pub _pad: u32,
}

pub const RATE_FP_SHIFT: u32 = 16;

impl RateSpec {
    /// `rate` units per second with a burst of `burst` units (at least one packet's worth).
    pub fn new(rate: u64, burst: u64, unit: u32) -> RateSpec {
        if rate == 0 {
            return RateSpec {
                interval_fp: u64::MAX,
                tolerance_ns: 0,
                unit,
                _pad: 0,
            };
        }
        let interval_fp = ((1_000_000_000u128 << RATE_FP_SHIFT) / rate as u128).max(1) as u64;
        let burst = burst.max(1) as u128;
        let tolerance = (burst * interval_fp as u128) >> RATE_FP_SHIFT;
        RateSpec {
            interval_fp,
            tolerance_ns: tolerance.min(u64::MAX as u128) as u64,
            unit,
            _pad: 0,
        }
    }
}

/// State of one bucket: the theoretical arrival time in ns (bpf_ktime_get_ns clock).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Bucket {
    pub tat: u64,
}

/// One shape of ACL entry: which fields are matched exactly, with which masks. Entries of
/// one tuple are found through the ACL index by the packet's fields masked to the tuple
/// (tuple-space search), so lookup cost grows with the number of tuples, never with the
/// number of entries. One cache line: what deciding whether to probe the tuple reads for
/// an IPv4 packet; the key filter and IPv6 masks are in [`AclTupleKeys`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AclTuple {
    /// Lowest (best) priority of any entry in this tuple: tuples are sorted by it, so the
    /// probe loop stops once no later tuple can beat the match in hand.
    pub min_priority: u32,
    /// Which bits of the packet's ports word (`sport | dport << 16`) the key holds.
    pub ports_mask: u32,
    /// Which bits of the packet's protocol word (`proto | icmp_type << 8 | icmp_code <<
    /// 16`) the key holds.
    pub proto_mask: u32,
    /// Word 0 of the source and destination masks (all of an IPv4 mask); the other words
    /// of an IPv6 tuple's are in [`AclTupleKeys::wide`].
    pub src_mask0: u32,
    pub dst_mask0: u32,
    /// [`tuple_fields`].
    pub fields: u8,
    /// 4 or 6; 0: no address in the key (either family).
    pub family: u8,
    /// [`tuple_needs`]: what a packet must carry for the tuple to apply to it.
    pub needs: u8,
    pub _pad: u8,
    /// The bits every key of the tuple agrees on, in the words protocol, ports, source
    /// word 0, destination word 0 ([`tuple_words`]): a packet that differs in one of them
    /// (`word & same_mask != same_bits`) has no entry in the tuple. A bounding box that
    /// rejects most misses (another protocol, a source outside the entries' common
    /// prefix) with a few ALU operations on this line instead of a hash and the filter's.
    pub same_mask: [u32; 4],
    pub same_bits: [u32; 4],
    pub _pad2: u64,
}

/// Indexes of [`AclTuple::same_mask`] and `same_bits`.
pub mod tuple_words {
    pub const PROTO: usize = 0;
    pub const PORTS: usize = 1;
    pub const SRC0: usize = 2;
    pub const DST0: usize = 3;
}

/// The rest of a tuple: read only when its [`AclTuple`] line says the packet may match.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AclTupleKeys {
    /// The [`AclFilterBits`] of each of the tuple's keys (256 bits): a clear one means no
    /// entry of the tuple has the packet's key.
    pub filter: [u64; 4],
    /// Address mask words 1 to 3 of an IPv6 tuple (word 0 is in [`AclTuple`]).
    pub wide: AclWideMasks,
    pub _pad: u64,
}

/// Address mask words 1 to 3 of an IPv6 tuple.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AclWideMasks {
    pub src: [u32; 3],
    pub dst: [u32; 3],
}

pub mod tuple_fields {
    pub const PROTO: u8 = 1 << 0;
    pub const ICMP_TYPE: u8 = 1 << 1;
    pub const ICMP_CODE: u8 = 1 << 2;
    /// Ports are part of the key: the packet must carry a transport header.
    pub const PORTS: u8 = 1 << 3;
}

/// What a packet carries, and what a tuple needs ([`AclTuple::needs`]): a tuple applies to a
/// packet when `needs & !carries == 0` (one test instead of one per field).
pub mod tuple_needs {
    pub const IPV4: u8 = 1 << 0;
    pub const IPV6: u8 = 1 << 1;
    pub const PORTS: u8 = 1 << 2;
    pub const ICMP: u8 = 1 << 3;
}

/// One generation of a mitigation, as the kernel reads it (`MITIGATIONS[ruleset]`). Laid
/// out in cache lines (the array is mmapable, so values start page-aligned, and the size is
/// a multiple of 64): the first holds what every packet of the mitigation reads; each
/// tuple is a line of its own; the rest is read only when a flag says it is in use, or by
/// user space.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MitigationConfig {
    /// This generation's index in `MITIGATIONS` and the prefix of its ACL and source-list
    /// keys, so a new generation is built beside the live one and switched to by
    /// repointing the targets.
    pub ruleset: u32,
    /// [`flags`].
    pub flags: u32,
    pub n_tuples: u32,
    /// The mitigation's slot: its index in `MIT_STATS`, `SCOPE_BUCKETS` and talker keys,
    /// stable across generations (each generation has a `ruleset` of its own).
    pub slot: u32,
    /// 0: any destination port.
    pub n_port_ranges: u32,
    /// Counts up with every replacement (tells the newer of two generations apart when an
    /// agent re-adopts state it left mid-update).
    pub generation: u32,
    /// Rule slots `[rule_base, rule_base + rule_count)` in `ACL_RULES` used by this
    /// generation (bookkeeping for user space; the kernel follows `ACL_INDEX`).
    pub rule_base: u32,
    pub rule_count: u32,
    /// The owner's identifier for this mitigation (opaque to the kernel).
    pub id: u64,
    /// What the generation was compiled from (user space: re-installing an unchanged spec,
    /// e.g. at a restart, is then a no-op).
    pub spec_digest: u64,
    pub _pad: [u64; 2],
    pub port_ranges: [PortRange; MAX_SCOPE_PORT_RANGES],
    /// Bitmap of in-scope IP protocols when `SCOPE_PROTOCOLS` is set.
    pub proto_mask: [u64; 4],
    pub source_rate: RateSpec,
    pub syn_rate: RateSpec,
    pub scope_rate: RateSpec,
    /// Prefix lengths present in each source list ([`list`]); zero: the list is empty.
    pub source_lengths: [LengthMask; 4],
    pub _pad3: [u64; 7],
    pub tuples: [AclTuple; MAX_TUPLES],
    pub tuple_keys: [AclTupleKeys; MAX_TUPLES],
}

impl Default for MitigationConfig {
    fn default() -> Self {
        MitigationConfig {
            ruleset: 0,
            flags: 0,
            n_tuples: 0,
            slot: 0,
            n_port_ranges: 0,
            generation: 0,
            rule_base: 0,
            rule_count: 0,
            id: 0,
            spec_digest: 0,
            _pad: [0; 2],
            port_ranges: [PortRange::default(); MAX_SCOPE_PORT_RANGES],
            proto_mask: [0; 4],
            source_rate: RateSpec::default(),
            syn_rate: RateSpec::default(),
            scope_rate: RateSpec::default(),
            source_lengths: [[0; 2]; 4],
            _pad3: [0; 7],
            tuples: [AclTuple::default(); MAX_TUPLES],
            tuple_keys: [AclTupleKeys::default(); MAX_TUPLES],
        }
    }
}

/// What an ACL entry matches exactly: a packet's fields masked to the entry's tuple must
/// equal these (IPv4 addresses in word 0, the rest zero). The entry's rule carries it, so
/// the kernel confirms a candidate from the index by comparing words.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AclKey {
    pub ruleset: u32,
    pub tuple: u8,
    pub proto: u8,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub sport: u16,
    pub dport: u16,
    pub src: [u32; 4],
    pub dst: [u32; 4],
}

/// The ACL index: `ACL_INDEX` maps a key's hash to the first rule (best priority) of the
/// entries with that key, `rule + 1` in a `u32` slot (0: empty). Each key has two candidate
/// slots (cuckoo hashing); user space keeps a key in its first slot whenever that slot is
/// free, so an empty first slot means "no such key" after one array read. Why not a BPF
/// hash map: its lookup hashes the whole key with jhash and compares it with a memcmp call,
/// which measured at about 35 ns of a 130 ns drop on the veth bench; this costs a
/// multiply-xor hash, one array read and a few word compares.
const ACL_HASH_MUL: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline(always)]
fn acl_mix(h: u64, w: u64) -> u64 {
    (h ^ w).wrapping_mul(ACL_HASH_MUL)
}

/// A key's two bits (0..256 each) in its tuple's [`AclTupleKeys::filter`], both set for every
/// key of the tuple (two bits per key: about 4% false positives at 28 keys, where one bit
/// per key gives 10%). From a hash of its own, cheaper than the index's (two multiplies,
/// and neither the ruleset nor the tuple, which the filter's place already says): a miss,
/// the common case, costs no more than this.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclFilterBits(pub [u32; 2]);

const ACL_FILTER_MUL: [u64; 5] = [
    0xff51_afd7_ed55_8ccd,
    0xc4ce_b9fe_1a85_ec53,
    0x9E37_79B9_7F4A_7C15,
    0xd6e8_feb8_6659_fd93,
    0xa076_1d64_78bd_642f,
];

impl AclFilterBits {
    #[inline(always)]
    fn of(proto_ports: u64, addrs: u64) -> AclFilterBits {
        let h =
            (proto_ports ^ addrs.wrapping_mul(ACL_FILTER_MUL[0])).wrapping_mul(ACL_FILTER_MUL[1]);
        AclFilterBits([(h >> 56) as u32, (h >> 48) as u32 & 255])
    }

    /// Sets the key's bits in a tuple filter.
    pub fn mark(&self, filter: &mut [u64; 4]) {
        for b in self.0 {
            filter[(b >> 6) as usize] |= 1 << (b & 63);
        }
    }

    /// Are the key's bits set in a tuple filter? (false: the tuple has no such key)
    #[inline(always)]
    pub fn in_filter(&self, filter: &[u64; 4]) -> bool {
        let [a, b] = self.0;
        let w0 = filter[(a >> 6) as usize & 3];
        let w1 = filter[(b >> 6) as usize & 3];
        (w0 >> (a & 63)) & (w1 >> (b & 63)) & 1 != 0
    }
}

impl AclKey {
    /// The word holding tuple, protocol and ICMP type and code.
    #[inline(always)]
    pub fn fields_word(&self) -> u32 {
        self.tuple as u32
            | (self.proto as u32) << 8
            | (self.icmp_type as u32) << 16
            | (self.icmp_code as u32) << 24
    }

    fn narrow(&self) -> AclNarrowKey {
        AclNarrowKey {
            ruleset: self.ruleset,
            fields: self.fields_word(),
            ports: self.sport as u32 | (self.dport as u32) << 16,
            src: self.src[0],
            dst: self.dst[0],
        }
    }

    /// The key's bits in its tuple's filter. `wide`: the tuple matches IPv6 addresses,
    /// whose other words then count too.
    #[inline(always)]
    pub fn filter_bits(&self, wide: bool) -> AclFilterBits {
        let n = self.narrow();
        if !wide {
            return n.filter_bits();
        }
        let w = |a: u32, b: u32, m: u64| (a as u64 | (b as u64) << 32).wrapping_mul(m);
        let addrs = ((n.src as u64) << 32 | n.dst as u64)
            ^ w(self.src[1], self.src[2], ACL_FILTER_MUL[2])
            ^ w(self.src[3], self.dst[1], ACL_FILTER_MUL[3])
            ^ w(self.dst[2], self.dst[3], ACL_FILTER_MUL[4]);
        AclFilterBits::of(n.proto_ports(), addrs)
    }

    /// Where the key goes: its two candidate slots in `ACL_INDEX`. `wide`: as above.
    #[inline(always)]
    pub fn slots(&self, wide: bool) -> AclSlots {
        let narrow = self.narrow();
        if wide {
            let mut h = narrow.hash();
            h = acl_mix(h, self.src[1] as u64 | (self.src[2] as u64) << 32);
            h = acl_mix(h, self.src[3] as u64 | (self.dst[1] as u64) << 32);
            h = acl_mix(h, self.dst[2] as u64 | (self.dst[3] as u64) << 32);
            acl_slots_of(h)
        } else {
            acl_slots_of(narrow.hash())
        }
    }
}

/// The words of a key whose tuple matches no IPv6 address (its other address words are
/// zero): what the kernel builds, hashes and compares for such tuples.
#[derive(Clone, Copy)]
pub struct AclNarrowKey {
    pub ruleset: u32,
    /// [`AclKey::fields_word`].
    pub fields: u32,
    /// `sport | dport << 16`.
    pub ports: u32,
    pub src: u32,
    pub dst: u32,
}

impl AclNarrowKey {
    #[inline(always)]
    fn hash(&self) -> u64 {
        let mut h = acl_mix(0, self.ruleset as u64 | (self.fields as u64) << 32);
        h = acl_mix(h, self.ports as u64 | (self.src as u64) << 32);
        acl_mix(h, self.dst as u64)
    }

    #[inline(always)]
    pub fn slots(&self) -> AclSlots {
        acl_slots_of(self.hash())
    }

    /// `proto | icmp_type << 8 | icmp_code << 16` (the fields word without the tuple) and
    /// the ports, in one word.
    #[inline(always)]
    fn proto_ports(&self) -> u64 {
        (self.fields >> 8) as u64 | (self.ports as u64) << 32
    }

    /// The key's bits in its tuple's filter.
    #[inline(always)]
    pub fn filter_bits(&self) -> AclFilterBits {
        AclFilterBits::of(
            self.proto_ports(),
            (self.src as u64) << 32 | self.dst as u64,
        )
    }

    /// Does `key` (a rule's) equal this one? Branch-free (see the kernel's probe loop).
    /// The other address words need no check: ruleset and tuple equal, the rule's tuple
    /// is narrow too, so they are zero.
    #[inline(always)]
    pub fn matches(&self, key: &AclKey) -> bool {
        let d = (key.ruleset ^ self.ruleset)
            | (key.fields_word() ^ self.fields)
            | ((key.sport as u32 | (key.dport as u32) << 16) ^ self.ports)
            | (key.src[0] ^ self.src)
            | (key.dst[0] ^ self.dst);
        d == 0
    }
}

/// A key's two candidate slots in `ACL_INDEX`: [`AclKey::slots`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AclSlots {
    pub first: u32,
    pub second: u32,
}

#[inline(always)]
fn acl_slots_of(h: u64) -> AclSlots {
    let h = acl_mix(h, h >> 29);
    AclSlots {
        first: (h >> (64 - ACL_INDEX_BITS)) as u32,
        second: (h >> 8) as u32 & (ACL_INDEX_SLOTS - 1),
    }
}

pub const NO_RULE: u32 = u32::MAX;

pub mod acl_action {
    pub const ACCEPT: u8 = 0;
    pub const DROP: u8 = 1;
    /// Accept up to `AclRule::rate`, drop beyond.
    pub const RATE_LIMIT: u8 = 2;
}

/// Checks made on a candidate rule after its key matched.
pub mod residual {
    pub const TTL: u16 = 1 << 0;
    pub const LENGTH: u16 = 1 << 1;
    pub const DSCP: u16 = 1 << 2;
    pub const FRAGMENT: u16 = 1 << 3;
    pub const SPORT_RANGE: u16 = 1 << 4;
    pub const DPORT_RANGE: u16 = 1 << 5;
    pub const TCP_FLAGS: u16 = 1 << 6;
}

/// Fragment facts about a packet, matched by the ACL fragment field.
pub mod frag_bits {
    /// IPv4 don't-fragment.
    pub const DF: u8 = 1 << 0;
    /// Is a fragment.
    pub const ISF: u8 = 1 << 1;
    /// First fragment.
    pub const FF: u8 = 1 << 2;
    /// Last fragment.
    pub const LF: u8 = 1 << 3;
}

/// Bit operators of DOTS ACLs (fragment and TCP flags).
pub mod bit_op {
    /// (value & bits) == bits
    pub const MATCH: u8 = 0;
    /// (value & bits) != 0
    pub const ANY: u8 = 1;
    /// Negate the result.
    pub const NOT: u8 = 2;
}

/// One ACL entry of one generation. What a packet's classification reads comes first (the
/// key confirming an index hit, the chain, the checks, the action).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AclRule {
    pub key: AclKey,
    /// Position in the mitigation's ordered entries: lower wins.
    pub priority: u32,
    /// Next rule with the same key, or [`NO_RULE`].
    pub next: u32,
    /// [`residual`].
    pub checks: u16,
    /// [`acl_action`].
    pub action: u8,
    pub dscp: u8,
    pub ttl_lo: u8,
    pub ttl_hi: u8,
    pub frag_bits: u8,
    pub frag_op: u8,
    pub tcp_flags: u8,
    pub tcp_flags_op: u8,
    pub len_lo: u16,
    pub len_hi: u16,
    pub sport_lo: u16,
    pub sport_hi: u16,
    pub dport_lo: u16,
    pub dport_hi: u16,
    pub _pad: [u16; 3],
    /// Hash of the entry's name, so counters carry over when a rule set is rebuilt.
    pub name_hash: u64,
    pub rate: RateSpec,
    /// To 128 bytes: `ACL_RULES` is mmapable (page-aligned values), so every rule starts a
    /// cache line and what a probe reads first (key, chain, checks, action) is one line.
    pub _pad2: [u64; 2],
}

// ---------------------------------------------------------------------------------------
// Per-source state
// ---------------------------------------------------------------------------------------

pub mod source_kind {
    pub const PACKETS: u32 = 0;
    pub const SYN: u32 = 1;
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct RateKey {
    pub slot: u32,
    /// [`source_kind`].
    pub kind: u32,
    pub addr: [u32; 4],
}

// ---------------------------------------------------------------------------------------
// Top talkers (sampled sources of dropped traffic)
// ---------------------------------------------------------------------------------------

/// Key of `TOP_TALKERS` (an LRU per-CPU hash of sampled [`Counter`]s): one source of dropped
/// traffic of one mitigation. `addr` is the packed network-order address like everywhere
/// else (IPv4 in the first 4 bytes, the rest zero).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct TalkerKey {
    /// The mitigation's slot ([`MitigationConfig::slot`]): stable across replacements.
    pub slot: u32,
    /// 4 or 6.
    pub family: u8,
    pub _pad: [u8; 3],
    pub addr: [u32; 4],
}

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are #[repr(C)] plain integers and arrays with no padding holes
    // that the kernel would reject, and every bit pattern is valid.
    unsafe impl aya::Pod for Counter {}
    unsafe impl aya::Pod for AclStats {}
    unsafe impl aya::Pod for MitigationStats {}
    unsafe impl aya::Pod for InterfaceStats {}
    unsafe impl aya::Pod for InterfaceSlot {}
    unsafe impl aya::Pod for TargetValue {}
    unsafe impl aya::Pod for MitigationConfig {}
    unsafe impl aya::Pod for AclKey {}
    unsafe impl aya::Pod for AclWideMasks {}
    unsafe impl aya::Pod for AclRule {}
    unsafe impl aya::Pod for Bucket {}
    unsafe impl aya::Pod for RateKey {}
    unsafe impl aya::Pod for PrefixV4 {}
    unsafe impl aya::Pod for PrefixV6 {}
    unsafe impl aya::Pod for TalkerKey {}
}

#[cfg(test)]
mod tests {
    extern crate std;
    use super::*;
    use core::mem::size_of;

    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<AclKey>(), 44);
        assert_eq!(size_of::<InterfaceSlot>(), 128);
        assert_eq!(size_of::<MitigationConfig>() % 64, 0);
        assert_eq!(core::mem::offset_of!(MitigationConfig, tuples) % 64, 0);
        assert_eq!(size_of::<AclTuple>(), 64);
        assert_eq!(size_of::<AclTupleKeys>(), 64);
        assert_eq!(size_of::<AclRule>(), 128);
        assert!(core::mem::offset_of!(AclRule, action) < 64);
        assert_eq!(size_of::<RateKey>(), 24);
        assert_eq!(size_of::<PrefixV4>(), 8);
        assert_eq!(size_of::<PrefixV6>(), 20);
        assert_eq!(size_of::<TalkerKey>(), 24);
        assert!(TALKER_SAMPLE.is_power_of_two());
        assert_eq!(split_tag(prefix_tag(8191, 3, 128)), (8191, 3, 128));
        assert_eq!(size_of::<MitigationStats>(), 16 * (2 + DROP_REASONS));
    }

    #[test]
    fn rate_spec_admits_burst_units() {
        let r = RateSpec::new(1000, 10, rate_unit::PACKETS);
        assert_eq!(r.interval_fp >> RATE_FP_SHIFT, 1_000_000);
        assert_eq!(r.tolerance_ns, 10_000_000);
        assert_eq!(
            RateSpec::new(0, 10, rate_unit::PACKETS).interval_fp,
            u64::MAX
        );
    }

    #[test]
    fn word_masks_cover_the_prefix() {
        assert_eq!(word_mask(24, 0), u32::from_ne_bytes([255, 255, 255, 0]));
        assert_eq!(word_mask(24, 1), 0);
        assert_eq!(word_mask(32, 0), u32::MAX);
        assert_eq!(word_mask(48, 1), u32::from_ne_bytes([255, 255, 0, 0]));
        assert_eq!(word_mask(128, 3), u32::MAX);
        assert_eq!(length_bit(1), (0, 1));
        assert_eq!(length_bit(64), (0, 1 << 63));
        assert_eq!(length_bit(128), (1, 1 << 63));
    }

    #[test]
    fn dst_v4_entries_and_index() {
        assert_eq!(
            dst_v4_index(u32::from_ne_bytes([198, 51, 100, 7])),
            u32::from_be_bytes([0, 198, 51, 100])
        );
        assert_eq!(dst_v4::entry(None, 0), 0);
        assert_eq!(dst_v4::entry(Some((0, 24)), 0) & dst_v4::RULESET_MASK, 1);
        let e = dst_v4::entry(Some((8191, 8)), 0b1000_0001);
        assert_eq!(e & dst_v4::RULESET_MASK, 8192);
        assert_eq!(dst_v4::cover(e), Some((8191, 8)));
        assert_eq!(dst_v4::longer(e), 0b1000_0001);
        assert_eq!(dst_v4::cover(dst_v4::entry(None, 3)), None);
    }

    #[test]
    fn acl_slots_spread() {
        // Keys differing in any one field land on different slots (nearly always), and all
        // slots stay inside the index.
        let base = AclKey {
            ruleset: 7,
            tuple: 1,
            proto: 17,
            dport: 9999,
            ..Default::default()
        };
        let variants = [
            base,
            AclKey { ruleset: 6, ..base },
            AclKey { tuple: 2, ..base },
            AclKey {
                dport: 9998,
                ..base
            },
            AclKey {
                src: [1, 0, 0, 0],
                ..base
            },
            AclKey {
                dst: [1 << 31, 0, 0, 0],
                ..base
            },
        ];
        let slots: std::vec::Vec<AclSlots> = variants.iter().map(|k| k.slots(false)).collect();
        for (i, s) in slots.iter().enumerate() {
            assert!(s.first < ACL_INDEX_SLOTS && s.second < ACL_INDEX_SLOTS);
            assert_ne!(s.first, s.second, "two different candidates");
            for o in &slots[i + 1..] {
                assert_ne!(s.first, o.first);
            }
        }
        let v6 = AclKey {
            src: [0, 0, 0, 1],
            ..base
        };
        assert_eq!(
            v6.slots(false),
            base.slots(false),
            "narrow: IPv4 words only"
        );
        assert_ne!(v6.slots(true), base.slots(true));
        // 20,000 distinct keys: few share a first slot among 512K (2% for an ideal hash).
        let mut seen = std::collections::HashSet::new();
        for i in 0..20_000u32 {
            seen.insert(
                AclKey {
                    src: [i.to_be(), 0, 0, 0],
                    ..base
                }
                .slots(false)
                .first,
            );
        }
        assert!(seen.len() > 19_200, "{}", seen.len());
    }

    #[test]
    fn acl_filter_bits_mark_and_test() {
        let k = AclKey {
            ruleset: 3,
            tuple: 2,
            proto: 17,
            dport: 9999,
            ..Default::default()
        };
        let mut f = [0u64; 4];
        k.filter_bits(false).mark(&mut f);
        assert!(k.filter_bits(false).in_filter(&f));
        assert!(f.iter().map(|w| w.count_ones()).sum::<u32>() <= 2);
        // The tuple and ruleset do not count: the filter belongs to one tuple of one
        // generation.
        let same = AclKey {
            ruleset: 9,
            tuple: 0,
            ..k
        };
        assert_eq!(same.filter_bits(false), k.filter_bits(false));
        let other = AclKey { dport: 9998, ..k };
        assert_ne!(other.filter_bits(false), k.filter_bits(false));
        let v6 = AclKey {
            src: [1, 2, 3, 4],
            ..k
        };
        assert_ne!(v6.filter_bits(true), k.filter_bits(true));
        // 28 keys set at most 56 of 256 bits; a random other key passes rarely.
        let mut f = [0u64; 4];
        for i in 0..28u16 {
            AclKey { dport: i, ..k }.filter_bits(false).mark(&mut f);
        }
        let passes = (1000..11_000u16)
            .filter(|p| AclKey { dport: *p, ..k }.filter_bits(false).in_filter(&f))
            .count();
        assert!(passes < 800, "{passes} of 10,000 passed");
    }

    #[test]
    fn ipv6_summary_index() {
        let a = [
            0x20, 0x01, 0x0d, 0xb8, 0x64, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1,
        ];
        assert_eq!(ipv6_top48(&a), 0x2001_0db8_6401);
        assert!(summary_index_v6(ipv6_top48(&a)) < SUMMARY_SLOTS);
    }
}
