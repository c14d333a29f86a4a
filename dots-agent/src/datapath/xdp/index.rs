//! What user space knows about the maps, without touching them: which mitigation holds
//! which slot, generation, rule slots and targets, and how the kernel's lookup arrays
//! (`DST_V4`, the IPv6 summary, the ACL key filter) must change when a target or an ACL key
//! comes or goes. Pure, so it is tested without BPF; the arrays are reached through the
//! small [`Words`] trait (a shared mapping of the BPF array in production, a `Vec` in tests).

use std::collections::HashMap;

use ipnet::{IpNet, Ipv4Net, Ipv6Net};
use xdp_common::{
    dst_v4, ipv6_top48, length_bit, summary_index_v6, AclKey, LengthMask, MitigationConfig,
    DST_V4_SLOTS, MAX_PREFIX_LENGTHS, SUMMARY_BITS, SUMMARY_SLOTS, SUMMARY_V6_PREFIX_BITS,
};

use super::super::compile::{IndexEntry, PrefixEntry};
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
    pub acl_keys: Vec<IndexEntry>,
    pub sources: Vec<PrefixEntry>,
    pub rule_names: Vec<u64>,
    /// Each rule's `acl_action` (how its counts add to the mitigation's).
    pub rule_actions: Vec<u8>,
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
    pub acl: AclIndex,
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
            acl: AclIndex::default(),
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
            self.short.insert((len, u32::from(net.network())), ruleset);
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
    pub fn rebuild(&mut self, arr: &mut impl Words<u32>, targets: &[(Ipv4Net, u32)]) -> usize {
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

/// The ACL index's placement (cuckoo hashing, see `xdp_common::AclKey::slots`): each key
/// sits in its first slot, or in its second when the first holds another key. Invariant
/// kept on every change: a key is in its second slot only while its first slot is taken,
/// so the kernel takes an empty first slot as a miss. Every move writes the destination
/// before clearing the source, so a reader always finds a present key in one of them.
#[derive(Default)]
pub struct AclIndex {
    /// Slot -> the entry whose head it holds.
    at: HashMap<u32, IndexEntry>,
    /// Key -> its slot.
    home: HashMap<AclKey, u32>,
    /// First slot -> slots of the keys with that first slot that sit in their second one
    /// (they move in when it frees up).
    waiting: HashMap<u32, Vec<u32>>,
}

/// The index is full around a key (both slots taken, and neither occupant can move).
#[derive(Debug)]
pub struct IndexFull;

impl AclIndex {
    fn slots(e: &IndexEntry) -> (u32, u32) {
        let s = e.key.slots(e.wide);
        (s.first, s.second)
    }

    /// Writes `e` into `slot` and records it there (the caller frees any old place).
    fn put(&mut self, arr: &mut impl Words<u32>, slot: u32, e: IndexEntry) {
        arr.set(slot as usize, e.head + 1);
        self.forget(slot);
        self.at.insert(slot, e);
        self.home.insert(e.key, slot);
        let (first, _) = Self::slots(&e);
        if first != slot {
            self.waiting.entry(first).or_default().push(slot);
        }
    }

    /// Drops the bookkeeping of whatever `slot` holds (not the array).
    fn forget(&mut self, slot: u32) {
        let Some(old) = self.at.remove(&slot) else {
            return;
        };
        if self.home.get(&old.key) == Some(&slot) {
            self.home.remove(&old.key);
        }
        let (first, _) = Self::slots(&old);
        if let Some(w) = self.waiting.get_mut(&first) {
            w.retain(|s| *s != slot);
            if w.is_empty() {
                self.waiting.remove(&first);
            }
        }
    }

    /// Enters a key (with its chain head). A key already present is repointed in place.
    pub fn insert(&mut self, arr: &mut impl Words<u32>, e: IndexEntry) -> Result<(), IndexFull> {
        if let Some(slot) = self.home.get(&e.key).copied() {
            self.put(arr, slot, e);
            return Ok(());
        }
        let (first, second) = Self::slots(&e);
        if !self.at.contains_key(&first) {
            self.put(arr, first, e);
            return Ok(());
        }
        if !self.at.contains_key(&second) {
            self.put(arr, second, e);
            return Ok(());
        }
        // Both taken: move an occupant that sits in its own first slot to its free second
        // slot (its first slot stays taken, by us, so its invariant holds).
        for slot in [first, second] {
            let other = self.at[&slot];
            let (o_first, o_second) = Self::slots(&other);
            if o_first == slot && o_second != slot && !self.at.contains_key(&o_second) {
                self.put(arr, o_second, other); // present twice for a moment
                self.put(arr, slot, e);
                return Ok(());
            }
        }
        Err(IndexFull)
    }

    /// Removes a key; a key waiting in its second slot for this one moves into it.
    pub fn remove(&mut self, arr: &mut impl Words<u32>, key: &AclKey) {
        let Some(slot) = self.home.get(key).copied() else {
            return;
        };
        let mut freed = slot;
        loop {
            let next = self.waiting.get(&freed).and_then(|w| w.first().copied());
            match next {
                // A key whose first slot is `freed` moves in (written there before its
                // second slot is cleared).
                Some(from) => {
                    let e = self.at[&from];
                    self.put(arr, freed, e);
                    self.forget(from);
                    freed = from;
                }
                None => {
                    self.forget(freed);
                    arr.set(freed as usize, 0);
                    return;
                }
            }
        }
    }

    /// Adopts what the kernel's index holds for the live keys (so nothing moves under
    /// running traffic), clears slots that name no live key's head, enters missing keys
    /// and restores the invariant. Returns how many slots changed.
    pub fn rebuild(
        &mut self,
        arr: &mut impl Words<u32>,
        slots: usize,
        live: &[IndexEntry],
    ) -> usize {
        *self = AclIndex::default();
        let by_head: HashMap<u32, IndexEntry> = live.iter().map(|e| (e.head, *e)).collect();
        let mut changed = 0;
        for s in 0..slots as u32 {
            let v = arr.get(s as usize);
            if v == 0 {
                continue;
            }
            let keep = by_head.get(&(v - 1)).copied().filter(|e| {
                let (f, sec) = Self::slots(e);
                (s == f || s == sec) && !self.home.contains_key(&e.key)
            });
            match keep {
                Some(e) => self.put(arr, s, e),
                None => {
                    arr.set(s as usize, 0);
                    changed += 1;
                }
            }
        }
        for e in live {
            if !self.home.contains_key(&e.key) && self.insert(arr, *e).is_ok() {
                changed += 1;
            }
        }
        // Keys in their second slot although the first is free: move them home.
        let misplaced: Vec<u32> = self
            .waiting
            .iter()
            .filter(|(first, _)| !self.at.contains_key(first))
            .flat_map(|(_, w)| w.first().copied())
            .collect();
        for from in misplaced {
            let e = self.at[&from];
            let (first, _) = Self::slots(&e);
            self.put(arr, first, e);
            self.forget(from);
            arr.set(from as usize, 0);
            changed += 1;
        }
        changed
    }

    /// Is every key findable the way the kernel looks (test and debug aid)?
    #[cfg(test)]
    fn check(&self, arr: &impl Words<u32>) {
        for (key, slot) in &self.home {
            let e = self.at[slot];
            assert_eq!(e.key, *key);
            assert_eq!(arr.get(*slot as usize), e.head + 1);
            let (f, sec) = Self::slots(&e);
            assert!(*slot == f || (*slot == sec && self.at.contains_key(&f)));
        }
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
        assert!(
            arr.iter().all(|e| *e == 0),
            "everything removed leaves zeros"
        );
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
        let targets = vec![
            (v4("192.0.2.0/24"), 8),
            (v4("192.0.0.0/16"), 9),
            (v4("192.0.2.64/26"), 10),
        ];
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

    fn entry(i: u32) -> IndexEntry {
        IndexEntry {
            key: AclKey {
                ruleset: 1,
                dport: i as u16,
                sport: (i >> 16) as u16,
                ..Default::default()
            },
            wide: false,
            head: i,
        }
    }

    /// What the kernel finds for a key in `arr`.
    fn find(arr: &[u32], rules: &HashMap<u32, AclKey>, key: &AclKey) -> Option<u32> {
        let s = key.slots(false);
        for slot in [s.first, s.second] {
            let v = arr[slot as usize];
            if v == 0 {
                return None;
            }
            if rules.get(&(v - 1)) == Some(key) {
                return Some(v - 1);
            }
        }
        None
    }

    #[test]
    fn acl_index_finds_every_key_through_inserts_and_removals() {
        let mut arr = vec![0u32; xdp_common::ACL_INDEX_SLOTS as usize];
        let mut idx = AclIndex::default();
        let mut rules = HashMap::new();
        for i in 1..=2000 {
            idx.insert(&mut arr, entry(i)).unwrap();
            rules.insert(i, entry(i).key);
        }
        idx.check(&arr);
        for i in (1..=2000).step_by(3) {
            idx.remove(&mut arr, &entry(i).key);
            rules.remove(&i);
        }
        idx.check(&arr);
        for i in 1..=2000u32 {
            let want = rules.contains_key(&i).then_some(i);
            assert_eq!(find(&arr, &rules, &entry(i).key), want, "key {i}");
        }
        let mut rebuilt = AclIndex::default();
        let live: Vec<IndexEntry> = rules.keys().map(|i| entry(*i)).collect();
        assert_eq!(
            rebuilt.rebuild(&mut arr, xdp_common::ACL_INDEX_SLOTS as usize, &live),
            0
        );
        rebuilt.check(&arr);
    }

    #[test]
    fn acl_index_keeps_its_invariant_under_collisions() {
        // Three keys with the same first slot: the second goes to its second slot, the
        // third moves... or is refused; removing the first brings a waiting key home.
        let mut by_first: HashMap<u32, Vec<u32>> = HashMap::new();
        let triple = (1..400_000u32)
            .find_map(|i| {
                let v = by_first.entry(entry(i).key.slots(false).first).or_default();
                v.push(i);
                (v.len() == 3).then(|| v.clone())
            })
            .expect("a shared first slot among 400,000 keys");
        let mut arr = vec![0u32; xdp_common::ACL_INDEX_SLOTS as usize];
        let mut idx = AclIndex::default();
        let mut rules = HashMap::new();
        for i in &triple {
            if idx.insert(&mut arr, entry(*i)).is_ok() {
                rules.insert(*i, entry(*i).key);
            }
        }
        assert!(rules.len() >= 2);
        idx.check(&arr);
        idx.remove(&mut arr, &entry(triple[0]).key);
        rules.remove(&triple[0]);
        idx.check(&arr);
        for i in &triple {
            let want = rules.contains_key(i).then_some(*i);
            assert_eq!(find(&arr, &rules, &entry(*i).key), want);
        }
        let first = entry(triple[0]).key.slots(false).first as usize;
        assert_ne!(
            arr[first], 0,
            "a waiting key moved into the freed first slot"
        );
    }

    #[test]
    fn acl_index_rebuild_clears_garbage_and_restores_homes() {
        let mut arr = vec![0u32; xdp_common::ACL_INDEX_SLOTS as usize];
        let e = entry(5);
        let xdp_common::AclSlots { first, second, .. } = e.key.slots(false);
        arr[second as usize] = e.head + 1; // misplaced: first slot free
        arr[12345] = 77; // left by a crash
        let mut idx = AclIndex::default();
        let n = arr.len();
        assert_eq!(idx.rebuild(&mut arr, n, &[e]), 2);
        assert_eq!(arr[first as usize], e.head + 1);
        assert_eq!(arr[second as usize], 0);
        assert_eq!(arr[12345], 0);
        idx.check(&arr);
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
