//! What user space knows about the maps, without touching them: which mitigation holds
//! which slot, generation, rule slots and targets, and how the kernel's lookup arrays
//! (`DST_V4`, the IPv6 summary, the ACL key filter) must change when a target or an ACL key
//! comes or goes. Pure, so it is tested without BPF; the arrays are reached through the
//! small [`Words`] trait (a shared mapping of the BPF array in production, a `Vec` in tests).

use std::collections::HashMap;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use xdp_common::{
    dst_v4, ipv6_top48, length_bit, summary_index_v6, LengthMask, MitigationConfig,
    DST_V4_SLOTS, MAX_PREFIX_LENGTHS, SUMMARY_BITS, SUMMARY_SLOTS, SUMMARY_V6_PREFIX_BITS,
};

use super::super::compile::{AclKey, PrefixEntry};
use super::super::DatapathError;

/// Word-addressed array the kernel reads (see module docs).
pub trait Words<W: Copy> {
    fn get(&self, i: usize) -> W;
    fn set(&mut self, i: usize, w: W);
}

impl<W: Copy> Words<W> for Vec<W> {
    fn get(&self, i: usize) -> W {
        self[i]
    }
    fn set(&mut self, i: usize, w: W) {
        self[i] = w;
    }
}

/// What user space remembers of an installed mitigation (rebuilt from the maps on adopt).
pub struct Installed {
    /// The live generation's configuration.
    pub config: MitigationConfig,
    pub targets: Vec<IpNet>,
    /// Keys of the live generation, so it can be deleted without scanning the maps.
    pub acl_keys: Vec<AclKey>,
    pub sources: Vec<PrefixEntry>,
    pub rule_names: Vec<u64>,
}

/// A first-fit allocator over a fixed number of indexes.
pub struct Slots {
    used: Vec<bool>,
}

impl Slots {
    pub fn new(n: u32) -> Self {
        Slots {
            used: vec![false; n as usize],
        }
    }

    pub fn alloc(&mut self) -> Option<u32> {
        let i = self.used.iter().position(|u| !u)?;
        self.used[i] = true;
        Some(i as u32)
    }

    /// First fit of `n` contiguous indexes (0 for `n == 0`).
    pub fn alloc_run(&mut self, n: u32) -> Option<u32> {
        if n == 0 {
            return Some(0);
        }
        let mut run = 0u32;
        for i in 0..self.used.len() as u32 {
            if self.used[i as usize] {
                run = 0;
                continue;
            }
            run += 1;
            if run == n {
                let base = i + 1 - n;
                self.mark(base, n, true);
                return Some(base);
            }
        }
        None
    }

    pub fn mark(&mut self, base: u32, n: u32, used: bool) {
        for i in base..base + n {
            if let Some(u) = self.used[..].get_mut(i as usize) {
                *u = used;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.used.len()
    }
}

/// The bookkeeping of the whole datapath.
pub struct Index {
    pub by_id: HashMap<u64, Installed>,
    pub target_owner: HashMap<IpNet, u64>,
    /// Mitigation slots (`MIT_STATS`, `SCOPE_BUCKETS`, talkers).
    pub slots: Slots,
    /// Generation configurations (`MITIGATIONS`): live ones and those retiring.
    pub rulesets: Slots,
    /// `ACL_RULES` slots.
    pub rules: Slots,
    pub sources_live: usize,
    pub targets_per_family: [usize; 2],
    pub dst_v4: DstV4,
    pub summary_v6: SummaryV6,
    pub filter: FilterBits,
}

impl Index {
    pub fn new(slots: u32, rulesets: u32, rules: u32) -> Self {
        Index {
            by_id: HashMap::new(),
            target_owner: HashMap::new(),
            slots: Slots::new(slots),
            rulesets: Slots::new(rulesets),
            rules: Slots::new(rules),
            sources_live: 0,
            targets_per_family: [0; 2],
            dst_v4: DstV4::default(),
            summary_v6: SummaryV6::default(),
            filter: FilterBits::default(),
        }
    }

    pub fn live_acl_entries(&self) -> usize {
        self.by_id
            .values()
            .map(|i| i.config.rule_count as usize)
            .sum()
    }
}

/// The IPv4 destination array's logic. An entry per /24 holds the longest target of length
/// <= 24 covering it (its ruleset and length) and a bit per length 25..=32 of targets inside
/// it; those longer targets are found in the `TARGETS_V4` hash.
#[derive(Default)]
pub struct DstV4 {
    /// Targets of length <= 24: (length, network in host order) -> ruleset.
    short: HashMap<(u8, u32), u32>,
    /// Targets longer than /24 per (entry, length): how many.
    longer: HashMap<(u32, u8), u32>,
}

fn v4_range(net: &Ipv4Net) -> std::ops::Range<u32> {
    let first = u32::from(net.network()) >> 8;
    let n = 1u32 << (24 - net.prefix_len().min(24) as u32);
    first..first + n
}

impl DstV4 {
    /// Points a target at `ruleset` (a new target, or a new generation of its mitigation).
    pub fn point(&mut self, arr: &mut impl Words<u32>, net: &Ipv4Net, ruleset: u32, is_new: bool) {
        let len = net.prefix_len();
        if len <= 24 {
            self.short
                .insert((len, u32::from(net.network())), ruleset);
            for i in v4_range(net) {
                let e = arr.get(i as usize);
                let replaces = dst_v4::cover(e).is_none_or(|(_, l)| l <= len);
                if replaces {
                    let v = dst_v4::entry(Some((ruleset, len)), dst_v4::longer(e));
                    arr.set(i as usize, v);
                }
            }
        } else if is_new {
            let i = u32::from(net.network()) >> 8;
            let n = self.longer.entry((i, len)).or_insert(0);
            *n += 1;
            if *n == 1 {
                let e = arr.get(i as usize);
                let v = dst_v4::entry(dst_v4::cover(e), dst_v4::longer(e) | 1 << (len - 25));
                arr.set(i as usize, v);
            }
        }
    }

    /// Removes a target: its /24s fall back to the next shorter target covering them.
    pub fn remove(&mut self, arr: &mut impl Words<u32>, net: &Ipv4Net) {
        let len = net.prefix_len();
        let addr = u32::from(net.network());
        if len <= 24 {
            if self.short.remove(&(len, addr)).is_none() {
                return;
            }
            let fallback = (1..len).rev().find_map(|l| {
                let m = addr & (u32::MAX << (32 - l));
                self.short.get(&(l, m)).map(|r| (*r, l))
            });
            for i in v4_range(net) {
                let e = arr.get(i as usize);
                if dst_v4::cover(e).is_some_and(|(_, l)| l == len) {
                    arr.set(i as usize, dst_v4::entry(fallback, dst_v4::longer(e)));
                }
            }
        } else {
            let i = addr >> 8;
            let Some(n) = self.longer.get_mut(&(i, len)) else {
                return;
            };
            *n -= 1;
            if *n == 0 {
                self.longer.remove(&(i, len));
                let e = arr.get(i as usize);
                let v = dst_v4::entry(dst_v4::cover(e), dst_v4::longer(e) & !(1 << (len - 25)));
                arr.set(i as usize, v);
            }
        }
    }

    /// Rebuilds the bookkeeping from the targets and makes every entry of `arr` what they
    /// say (repairing what a crash mid-update left). Returns how many entries changed.
    pub fn rebuild(
        &mut self,
        arr: &mut impl Words<u32>,
        targets: &[(Ipv4Net, u32)],
    ) -> usize {
        *self = DstV4::default();
        let mut want: Vec<u32> = vec![0; DST_V4_SLOTS as usize];
        let mut sorted: Vec<&(Ipv4Net, u32)> = targets.iter().collect();
        sorted.sort_by_key(|(n, _)| n.prefix_len()); // shorter first: longer covers win
        for (net, ruleset) in sorted {
            self.point(&mut want, net, *ruleset, true);
        }
        let mut changed = 0;
        for (i, w) in want.iter().enumerate() {
            if arr.get(i) != *w {
                arr.set(i, *w);
                changed += 1;
            }
        }
        changed
    }
}

/// The IPv6 fast-reject summary: per slot (a hashed /48), a mask of the target lengths
/// covering anything there. Each length's bit lives in one of the slot's two words, so
/// every change is one word store (the kernel never sees a torn mask).
#[derive(Default)]
pub struct SummaryV6 {
    refs: HashMap<(u32, u8), u32>,
    masks: HashMap<u32, LengthMask>,
}

/// Summary slots an IPv6 target touches.
pub fn summary_slots_v6(n: &Ipv6Net) -> Vec<u32> {
    let len = n.prefix_len() as u32;
    let top = ipv6_top48(&n.network().octets());
    if len >= SUMMARY_V6_PREFIX_BITS {
        return vec![summary_index_v6(top)];
    }
    let spread = SUMMARY_V6_PREFIX_BITS - len;
    if spread >= SUMMARY_BITS + 2 {
        return (0..SUMMARY_SLOTS).collect(); // covers (nearly) every slot anyway
    }
    let mut v: Vec<u32> = (0..1u64 << spread)
        .map(|k| summary_index_v6(top + k))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

impl SummaryV6 {
    /// The mask a slot would have with `extra` targets added (capacity checks).
    pub fn mask(&self, slot: u32) -> LengthMask {
        self.masks.get(&slot).copied().unwrap_or([0; 2])
    }

    /// Adds (`delta` 1) or removes (-1) a target, writing the words that change.
    pub fn count(&mut self, arr: &mut impl Words<u64>, net: &Ipv6Net, delta: i32) {
        let len = net.prefix_len();
        let (word, bit) = length_bit(len);
        for s in summary_slots_v6(net) {
            let refs = self.refs.entry((s, len)).or_insert(0);
            let before = *refs;
            *refs = (*refs as i64 + delta as i64).max(0) as u32;
            let now = *refs;
            if now == 0 {
                self.refs.remove(&(s, len));
            }
            if (before == 0) == (now == 0) {
                continue;
            }
            let mask = self.masks.entry(s).or_insert([0; 2]);
            if now > 0 {
                mask[word] |= bit;
            } else {
                mask[word] &= !bit;
            }
            arr.set(2 * s as usize + word, mask[word]);
            if mask[0] | mask[1] == 0 {
                self.masks.remove(&s);
            }
        }
    }

    /// Rebuilds from the targets and repairs the array; returns how many words changed.
    pub fn rebuild(&mut self, arr: &mut impl Words<u64>, targets: &[Ipv6Net]) -> usize {
        *self = SummaryV6::default();
        let mut want: Vec<u64> = vec![0; 2 * SUMMARY_SLOTS as usize];
        for t in targets {
            self.count(&mut want, t, 1);
        }
        let mut changed = 0;
        for (i, w) in want.iter().enumerate() {
            if arr.get(i) != *w {
                arr.set(i, *w);
                changed += 1;
            }
        }
        changed
    }

    /// Refuses targets that would put more than `MAX_PREFIX_LENGTHS` lengths in a slot
    /// (the kernel probes at most that many).
    pub fn check(&self, new: &[Ipv6Net]) -> Result<(), DatapathError> {
        let mut added: HashMap<u32, LengthMask> = HashMap::new();
        for t in new {
            let (word, bit) = length_bit(t.prefix_len());
            for s in summary_slots_v6(t) {
                let m = added.entry(s).or_insert_with(|| self.mask(s));
                m[word] |= bit;
                let n = m[0].count_ones() + m[1].count_ones();
                if n > MAX_PREFIX_LENGTHS {
                    return Err(DatapathError::Capacity(format!(
                        "target {t}: more than {MAX_PREFIX_LENGTHS} distinct IPv6 target prefix \
                         lengths would share one lookup slot (a hashed /{SUMMARY_V6_PREFIX_BITS}); \
                         use fewer distinct prefix lengths there"
                    )));
                }
            }
        }
        Ok(())
    }
}

/// The ACL key filter: a bit per live key, counted, since keys of two generations (or two
/// keys that hash alike) share bits.
#[derive(Default)]
pub struct FilterBits {
    refs: HashMap<u32, u32>,
}

impl FilterBits {
    pub fn add(&mut self, arr: &mut impl Words<u64>, bit: u32) {
        let n = self.refs.entry(bit).or_insert(0);
        *n += 1;
        if *n == 1 {
            let i = (bit >> 6) as usize;
            arr.set(i, arr.get(i) | 1 << (bit & 63));
        }
    }

    pub fn remove(&mut self, arr: &mut impl Words<u64>, bit: u32) {
        let Some(n) = self.refs.get_mut(&bit) else {
            return;
        };
        *n -= 1;
        if *n == 0 {
            self.refs.remove(&bit);
            let i = (bit >> 6) as usize;
            arr.set(i, arr.get(i) & !(1 << (bit & 63)));
        }
    }

    /// Rebuilds from the live keys' bits and repairs the array.
    pub fn rebuild(&mut self, arr: &mut impl Words<u64>, words: usize, bits: &[u32]) -> usize {
        *self = FilterBits::default();
        let mut want: Vec<u64> = vec![0; words];
        for b in bits {
            self.add(&mut want, *b);
        }
        let mut changed = 0;
        for (i, w) in want.iter().enumerate() {
            if arr.get(i) != *w {
                arr.set(i, *w);
                changed += 1;
            }
        }
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    fn entry_of(arr: &[u32], addr: &str) -> u32 {
        let a: std::net::Ipv4Addr = addr.parse().unwrap();
        arr[(u32::from(a) >> 8) as usize]
    }

    /// What the kernel would find for `addr`: the ruleset of the longest target.
    fn lookup(arr: &[u32], longer_targets: &HashMap<Ipv4Net, u32>, addr: &str) -> Option<u32> {
        let a: std::net::Ipv4Addr = addr.parse().unwrap();
        let e = entry_of(arr, addr);
        for len in (25..=32u8).rev() {
            if dst_v4::longer(e) & 1 << (len - 25) != 0 {
                let net = Ipv4Net::new(a, len).unwrap().trunc();
                if let Some(r) = longer_targets.get(&net) {
                    return Some(*r);
                }
            }
        }
        dst_v4::cover(e).map(|(r, _)| r)
    }

    #[test]
    fn nested_targets_resolve_to_the_longest() {
        let mut arr = vec![0u32; DST_V4_SLOTS as usize];
        let mut d = DstV4::default();
        let mut longer = HashMap::new();
        d.point(&mut arr, &v4("198.51.0.0/16"), 1, true);
        d.point(&mut arr, &v4("198.51.100.0/24"), 2, true);
        d.point(&mut arr, &v4("198.51.100.128/25"), 3, true);
        longer.insert(v4("198.51.100.128/25"), 3);
        d.point(&mut arr, &v4("198.51.100.7/32"), 4, true);
        longer.insert(v4("198.51.100.7/32"), 4);
        assert_eq!(lookup(&arr, &longer, "198.51.7.1"), Some(1));
        assert_eq!(lookup(&arr, &longer, "198.51.100.1"), Some(2));
        assert_eq!(lookup(&arr, &longer, "198.51.100.7"), Some(4));
        assert_eq!(lookup(&arr, &longer, "198.51.100.200"), Some(3));
        assert_eq!(lookup(&arr, &longer, "198.52.0.1"), None);

        // A new generation of the /16 repoints only the /24s it covers itself.
        d.point(&mut arr, &v4("198.51.0.0/16"), 11, false);
        assert_eq!(lookup(&arr, &longer, "198.51.7.1"), Some(11));
        assert_eq!(lookup(&arr, &longer, "198.51.100.1"), Some(2));

        // Removing the /24 falls back to the /16; longer targets stay.
        d.remove(&mut arr, &v4("198.51.100.0/24"));
        assert_eq!(lookup(&arr, &longer, "198.51.100.1"), Some(11));
        assert_eq!(lookup(&arr, &longer, "198.51.100.7"), Some(4));
        d.remove(&mut arr, &v4("198.51.100.7/32"));
        longer.remove(&v4("198.51.100.7/32"));
        assert_eq!(dst_v4::longer(entry_of(&arr, "198.51.100.7")), 1); // the /25's bit
        d.remove(&mut arr, &v4("198.51.100.128/25"));
        d.remove(&mut arr, &v4("198.51.0.0/16"));
        assert!(arr.iter().all(|e| *e == 0), "everything removed leaves zeros");
    }

    #[test]
    fn a_shorter_target_added_later_does_not_hide_a_longer_one() {
        let mut arr = vec![0u32; DST_V4_SLOTS as usize];
        let mut d = DstV4::default();
        d.point(&mut arr, &v4("203.0.113.0/24"), 5, true);
        d.point(&mut arr, &v4("203.0.0.0/16"), 6, true);
        let none = HashMap::new();
        assert_eq!(lookup(&arr, &none, "203.0.113.9"), Some(5));
        assert_eq!(lookup(&arr, &none, "203.0.112.9"), Some(6));
    }

    #[test]
    fn rebuild_repairs_a_torn_array() {
        let targets = vec![(v4("192.0.2.0/24"), 8), (v4("192.0.0.0/16"), 9), (v4("192.0.2.64/26"), 10)];
        let mut clean = vec![0u32; DST_V4_SLOTS as usize];
        let mut d = DstV4::default();
        d.rebuild(&mut clean, &targets);
        let mut torn = clean.clone();
        torn[5] = dst_v4::entry(Some((77, 24)), 0); // left by a crash
        torn[(u32::from_be_bytes([192, 0, 2, 0]) >> 8) as usize] = 0;
        let mut d2 = DstV4::default();
        assert_eq!(d2.rebuild(&mut torn, &targets), 2);
        assert!(torn == clean);
        // The rebuilt bookkeeping removes correctly.
        d2.remove(&mut torn, &v4("192.0.2.64/26"));
        assert_eq!(dst_v4::longer(entry_of(&torn, "192.0.2.1")), 0);
    }

    #[test]
    fn summary_v6_words_follow_the_targets() {
        let mut arr = vec![0u64; 2 * SUMMARY_SLOTS as usize];
        let mut s = SummaryV6::default();
        let a: Ipv6Net = "2001:db8:6401::/48".parse().unwrap();
        let b: Ipv6Net = "2001:db8:6401::1/128".parse().unwrap();
        s.count(&mut arr, &a, 1);
        s.count(&mut arr, &b, 1);
        let slot = summary_index_v6(ipv6_top48(&a.network().octets())) as usize;
        assert_eq!(arr[2 * slot], 1 << 47);
        assert_eq!(arr[2 * slot + 1], 1 << 63);
        s.count(&mut arr, &a, -1);
        assert_eq!(arr[2 * slot], 0);
        let mut rebuilt = vec![0u64; 2 * SUMMARY_SLOTS as usize];
        assert_eq!(SummaryV6::default().rebuild(&mut rebuilt, &[b]), 1);
        assert!(rebuilt == arr);
        let many: Vec<Ipv6Net> = (48..=64)
            .map(|l| Ipv6Net::new("2001:db8:6401::".parse().unwrap(), l).unwrap())
            .collect();
        assert!(s.check(&many).is_err());
        assert!(s.check(&many[..15]).is_ok());
    }

    #[test]
    fn filter_bits_are_counted() {
        let mut arr = vec![0u64; 4];
        let mut f = FilterBits::default();
        f.add(&mut arr, 65);
        f.add(&mut arr, 65);
        f.add(&mut arr, 3);
        assert_eq!(arr, vec![1 << 3, 1 << 1, 0, 0]);
        f.remove(&mut arr, 65);
        assert_eq!(arr[1], 1 << 1, "still held by the other key");
        f.remove(&mut arr, 65);
        f.remove(&mut arr, 3);
        assert_eq!(arr, vec![0; 4]);
        let mut torn = vec![7u64, 0, 0, 1];
        assert_eq!(FilterBits::default().rebuild(&mut torn, 4, &[130]), 3);
        assert_eq!(torn, vec![0, 0, 1 << 2, 0]);
    }

    #[test]
    fn slots_allocate_first_fit_runs() {
        let mut s = Slots::new(8);
        assert_eq!(s.alloc_run(3), Some(0));
        assert_eq!(s.alloc_run(3), Some(3));
        s.mark(0, 3, false);
        assert_eq!(s.alloc_run(4), None);
        assert_eq!(s.alloc_run(2), Some(0));
        assert_eq!(s.alloc(), Some(2));
        assert_eq!(s.alloc(), Some(6));
        assert_eq!(s.alloc_run(0), Some(0));
    }
}
