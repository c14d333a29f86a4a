//! The XDP datapath: the embedded xdp-filter program, its maps, and the translation of
//! [`MitigationSpec`]s into map entries.
//!
//! Atomic updates: a mitigation has a slot (its counters, rate buckets and talkers) and a
//! live *generation* (a configuration in `MITIGATIONS`, indexed by its `ruleset`, which
//! also prefixes its ACL keys and source lists). A replacement writes a complete new
//! generation beside the live one, then repoints the targets at it (a `DST_V4` entry or a
//! `TARGETS` hash value each, swapped whole): a packet finds either the old or the new
//! generation, complete. The old generation is deleted only after a grace period, later,
//! without blocking the caller ([`XdpDatapath::maintain`]).
//!
//! - `lifecycle`: load, attach, detach, purge, adopt pinned state after a restart;
//! - `index`: the bookkeeping and the lookup arrays' logic (pure, unit-tested);
//! - `maps`: typed map handles and the shared mappings of the arrays;
//! - `talkers`: the sampled sources of dropped traffic;
//! - `counters`: per-CPU sums, the bases that keep totals across replacements, interfaces.

mod counters;
use counters::fold_acl;
pub use counters::InterfaceCounters;
mod index;
mod lifecycle;
mod maps;
mod talkers;

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aya::programs::Xdp;
use aya::Ebpf;
use ipnet::IpNet;
use xdp_common::{
    AclStats, Bucket, Counter, InterfaceStats, MitigationConfig, MitigationStats, TargetValue,
    ACL_RULE_SLOTS, AMP_PORT_WORDS, CONFIG_SLOTS, MAX_ACL_ENTRIES, MAX_MITIGATIONS,
    MAX_SRC_PREFIXES, MAX_TARGETS_PER_FAMILY, PROGRAM_NAME,
};

use super::compile::{self, Compiled, IndexEntry, PrefixEntry};
use super::{AclCounter, DatapathError, MitigationCounters, MitigationSpec, Mitigator};
use index::{Index, Installed};
use maps::{Maps, U32Words, U64Words};

pub use lifecycle::{check_interfaces, interface_index};

/// The XDP object built from ../xdp-filter by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("DOTS_XDP_OBJECT"));

pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/dots-agent";

/// UDP source ports of common reflection/amplification vectors: QOTD, chargen, DNS, TFTP,
/// portmap, NTP, NetBIOS, SNMP, CLDAP, RIP, MS-SQL browser, SSDP, ARD, WS-Discovery, mDNS,
/// memcached, DVR/IP-camera discovery.
pub const DEFAULT_AMPLIFICATION_PORTS: &[u16] = &[
    17, 19, 53, 69, 111, 123, 137, 161, 389, 520, 1434, 1900, 3283, 3702, 5353, 11211, 37810,
];

/// How long a replaced or removed generation stays intact after no target points at it
/// any more: far longer than one XDP run (microseconds), with room for a stalled vCPU.
/// Nobody waits for it: the generation is deleted by a later call once the time is up.
const GRACE: Duration = Duration::from_millis(50);

type R<T> = Result<T, DatapathError>;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AttachMode {
    /// Native (driver) mode, falling back to generic (skb) mode with a message.
    Auto,
    Native,
    Skb,
}

#[derive(Debug)]
pub struct AttachOutcome {
    pub interface: String,
    pub mode: &'static str,
    /// Why native mode was not used in `auto`.
    pub fallback: Option<String>,
    /// The interface already had our link: its program was swapped atomically.
    pub replaced: bool,
    /// The link was an older dots-agent's (that datapath layout); it now runs this one.
    pub migrated_from_layout: Option<u32>,
}

#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// bpffs directory; maps and links are pinned under `<pin_root>/v<LAYOUT_VERSION>/`.
    pub pin_root: PathBuf,
    /// Map sizes to override (by map name), e.g. a smaller source table in tests.
    pub max_entries: Vec<(&'static str, u32)>,
    /// Sample the sources of dropped packets into `TOP_TALKERS` (default on; off is for
    /// measuring what sampling costs).
    pub talker_sampling: bool,
}

impl LoadOptions {
    pub fn new(pin_root: impl Into<PathBuf>) -> Self {
        LoadOptions {
            pin_root: pin_root.into(),
            max_entries: Vec::new(),
            talker_sampling: true,
        }
    }
}

/// A generation no target points at any more, deleted once `due`.
struct Retiring {
    due: Instant,
    generation: Installed,
    /// Set when the whole mitigation was removed: its slot is freed with it.
    frees_slot: bool,
    /// For a replaced generation: where each old rule's counts went at the flip.
    carried: Vec<Carried>,
}

/// An old rule's counts at a replacement: what it had counted at the flip went to the new
/// rule of the same entry name (its base), or, for an entry the new spec dropped, to the
/// mitigation's base. What it counts during the grace period follows when it is deleted
/// (and is added in `counters` until then).
struct Carried {
    old_rule: u32,
    action: u8,
    /// The new rule of the same name, or None: the mitigation's base (`MIT_BASE`).
    new_rule: Option<u32>,
    at_flip: AclStats,
}

pub struct XdpDatapath {
    pin_dir: PathBuf,
    maps: Maps,
    index: Index,
    nr_cpus: usize,
    /// Present when this process loaded the program (needed to attach and for test runs).
    ebpf: Option<Ebpf>,
    retiring: VecDeque<Retiring>,
    /// The writer's lock on the pin root (None: opened to read, see
    /// [`XdpDatapath::open_pinned`]).
    lock: Option<super::lock::WriterLock>,
}

impl XdpDatapath {
    fn new(
        pin_dir: PathBuf,
        maps: Maps,
        ebpf: Option<Ebpf>,
        lock: Option<super::lock::WriterLock>,
    ) -> R<Self> {
        Ok(XdpDatapath {
            pin_dir,
            maps,
            index: Index::new(MAX_MITIGATIONS, CONFIG_SLOTS, ACL_RULE_SLOTS),
            nr_cpus: lifecycle::cpus()?,
            ebpf,
            retiring: VecDeque::new(),
            lock,
        })
    }

    /// The loaded program, for BPF_PROG_TEST_RUN in tests and benchmarks.
    pub fn program(&self) -> Option<&Xdp> {
        self.ebpf.as_ref()?.program(PROGRAM_NAME)?.try_into().ok()
    }

    /// The loaded program's fd (for [`super::testrun`]).
    pub fn program_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        use std::os::fd::AsFd;
        Some(self.program()?.fd().ok()?.as_fd())
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Sets the UDP source ports dropped by the amplification countermeasure.
    pub fn set_amplification_ports(&mut self, ports: &[u16]) -> R<()> {
        self.writable()?;
        let mut words = vec![0u64; AMP_PORT_WORDS as usize];
        for &p in ports {
            words[(p >> 6) as usize] |= 1u64 << (p & 63);
        }
        for (i, w) in words.into_iter().enumerate() {
            self.maps
                .amp_ports
                .set(i as u32, w, 0)
                .map_err(|e| DatapathError::bpf("AMP_PORTS", e))?;
        }
        Ok(())
    }

    pub fn amplification_ports(&self) -> R<Vec<u16>> {
        let mut out = Vec::new();
        for i in 0..AMP_PORT_WORDS {
            let w = self
                .maps
                .amp_ports
                .get(&i, 0)
                .map_err(|e| DatapathError::bpf("AMP_PORTS", e))?;
            for b in 0..64 {
                if w & (1u64 << b) != 0 {
                    out.push((i * 64 + b) as u16);
                }
            }
        }
        Ok(out)
    }

    /// Waits out and deletes every retiring generation (a process about to exit leaves
    /// nothing behind for the next one to clean).
    pub fn settle(&mut self) {
        if let Some(last) = self.retiring.back() {
            let wait = last.due.saturating_duration_since(Instant::now());
            std::thread::sleep(wait);
        }
        self.reap(Instant::now() + GRACE);
    }

    fn reap(&mut self, now: Instant) {
        while self.retiring.front().is_some_and(|r| r.due <= now) {
            let r = self.retiring.pop_front().expect("checked");
            if let Err(e) = self.release(r) {
                tracing::warn!("deleting a retired generation: {e}");
            }
        }
    }

    /// Deletes a retired generation (and frees its slot if the mitigation is gone).
    fn release(&mut self, r: Retiring) -> R<()> {
        for c in &r.carried {
            // What the old rule counted during the grace period still belongs to the entry.
            let late = self.acl_total(c.old_rule)?.since(&c.at_flip);
            if late.matched.packets == 0 {
                continue;
            }
            match c.new_rule {
                Some(new_rule) => self.add_acl_base(new_rule, &late)?,
                None => self.add_mit_base(r.generation.config.slot, c.action, &late)?,
            }
        }
        let g = &r.generation;
        self.delete_generation(&g.acl_keys, &g.sources);
        let _ = self
            .maps
            .mitigations
            .set(g.config.ruleset, MitigationConfig::default(), 0);
        self.index.rulesets.mark(g.config.ruleset, 1, false);
        self.index
            .rules
            .mark(g.config.rule_base, g.config.rule_count, false);
        if r.frees_slot {
            // No target leads to the slot any more: its talkers are final and would
            // otherwise show up under the next mitigation given this slot.
            let slot = g.config.slot;
            if let Err(e) = self.clear_talkers(|s| s == slot) {
                tracing::warn!("mitigation slot {slot} freed, but its top talkers were not: {e}");
            }
            self.index.slots.mark(slot, 1, false);
        }
        Ok(())
    }

    /// A free generation index; when all are taken by retiring generations, waits for the
    /// oldest (only a burst of thousands of replacements within one grace period does).
    fn alloc_ruleset(&mut self) -> R<u32> {
        loop {
            if let Some(r) = self.index.rulesets.alloc() {
                return Ok(r);
            }
            let Some(first) = self.retiring.front() else {
                return Err(DatapathError::Capacity(format!(
                    "all {CONFIG_SLOTS} mitigation generations are in use"
                )));
            };
            std::thread::sleep(first.due.saturating_duration_since(Instant::now()));
            self.reap(Instant::now());
        }
    }

    fn alloc_rules(&mut self, n: u32) -> R<u32> {
        loop {
            if let Some(base) = self.index.rules.alloc_run(n) {
                return Ok(base);
            }
            let Some(first) = self.retiring.front() else {
                return Err(DatapathError::Capacity(format!(
                    "no run of {n} free ACL rule slots (of {ACL_RULE_SLOTS})"
                )));
            };
            std::thread::sleep(first.due.saturating_duration_since(Instant::now()));
            self.reap(Instant::now());
        }
    }

    /// Points a target at a generation: the lookup arrays first (they name the ruleset
    /// for IPv4 targets up to /24), then the target hash (the authority on which targets
    /// exist, and the lookup of longer IPv4 and all IPv6 targets).
    fn point_target(&mut self, net: &IpNet, ruleset: u32, is_new: bool) -> R<()> {
        if is_new {
            if let IpNet::V6(n) = net {
                self.index
                    .summary_v6
                    .count(&mut U64Words(&self.maps.sum_v6), n, 1);
            }
            self.index.targets_per_family[usize::from(net.addr().is_ipv6())] += 1;
        }
        // Longer IPv4 targets are found through the hash: it must hold them before the
        // array says to probe it.
        self.maps
            .insert_target(compile::prefix_entry(0, 0, net), TargetValue { ruleset })?;
        if let IpNet::V4(n) = net {
            self.index
                .dst_v4
                .point(&mut U32Words(&self.maps.dst_v4), n, ruleset, is_new);
        }
        Ok(())
    }

    /// Removes a target from the lookup arrays and the target hash.
    fn remove_target(&mut self, net: &IpNet) {
        match net {
            IpNet::V4(n) => self
                .index
                .dst_v4
                .remove(&mut U32Words(&self.maps.dst_v4), n),
            IpNet::V6(n) => self
                .index
                .summary_v6
                .count(&mut U64Words(&self.maps.sum_v6), n, -1),
        }
        self.maps.remove_target(compile::prefix_entry(0, 0, net));
        self.index.targets_per_family[usize::from(net.addr().is_ipv6())] -= 1;
    }

    /// Writes one generation's configuration, rules, index entries and source lists. None
    /// of it is live until targets point at `c.config.ruleset` (the index leads only to
    /// rules of this generation's ruleset, which no packet has yet).
    fn write_generation(&mut self, c: &Compiled) -> R<()> {
        let base = c.config.rule_base;
        for (i, rule) in c.rules.iter().enumerate() {
            let idx = base + i as u32;
            self.maps
                .acl_rules
                .set(idx, rule, 0)
                .map_err(|e| DatapathError::bpf("ACL_RULES", e))?;
            self.maps
                .acl_base
                .set(idx, AclStats::default(), 0)
                .map_err(|e| DatapathError::bpf("ACL_BASE", e))?;
            self.maps
                .acl_buckets
                .set(idx, Bucket::default(), 0)
                .map_err(|e| DatapathError::bpf("ACL_BUCKETS", e))?;
            Self::zero_percpu(self.nr_cpus, &mut self.maps.acl_stats, idx, "ACL_STATS")?;
        }
        for e in &c.keys {
            // On failure the caller deletes the generation, keys entered so far included.
            let placed = self
                .index
                .acl
                .insert(&mut U32Words(&self.maps.acl_index), *e);
            if placed.is_err() {
                return Err(DatapathError::Capacity(
                    "the ACL index has no free slot for one of the entries' keys (both \
                     candidate slots taken): retry, or remove other ACL entries"
                        .into(),
                ));
            }
        }
        for k in &c.sources {
            self.maps.insert_source(k)?;
        }
        self.maps
            .mitigations
            .set(c.config.ruleset, c.config, 0)
            .map_err(|e| DatapathError::bpf("MITIGATIONS", e))
    }

    /// Deletes a generation's index entries and source lists.
    fn delete_generation(&mut self, acl_keys: &[IndexEntry], sources: &[PrefixEntry]) {
        for e in acl_keys {
            self.index
                .acl
                .remove(&mut U32Words(&self.maps.acl_index), &e.key);
        }
        for k in sources {
            self.maps.remove_source(k);
        }
        self.index.sources_live -= sources.len();
    }

    /// The live generation of a mitigation: 0 when installed, one more per replacement.
    pub fn generation(&self, id: u64) -> Option<u32> {
        self.index.by_id.get(&id).map(|i| i.config.generation)
    }

    /// Targets of an installed mitigation.
    pub fn targets(&self, id: u64) -> Option<Vec<IpNet>> {
        self.index.by_id.get(&id).map(|i| i.targets.clone())
    }

    /// Map occupancy: (what, used, capacity).
    pub fn occupancy(&self) -> Vec<(&'static str, usize, usize)> {
        vec![
            (
                "mitigations",
                self.index.by_id.len(),
                MAX_MITIGATIONS as usize,
            ),
            (
                "targets_v4",
                self.index.targets_per_family[0],
                MAX_TARGETS_PER_FAMILY as usize,
            ),
            (
                "targets_v6",
                self.index.targets_per_family[1],
                MAX_TARGETS_PER_FAMILY as usize,
            ),
            (
                "acl_entries",
                self.index.live_acl_entries(),
                MAX_ACL_ENTRIES as usize,
            ),
            (
                "source_prefixes",
                self.index.sources_live,
                MAX_SRC_PREFIXES as usize,
            ),
        ]
    }

    fn check_capacity(&self, spec: &MitigationSpec, old: Option<&Installed>) -> R<()> {
        // `old` is already out of the index: its entries do not count.
        let acl = self.index.live_acl_entries() + spec.acl.len();
        if acl > MAX_ACL_ENTRIES as usize {
            return Err(DatapathError::Capacity(format!(
                "{acl} ACL entries would be live; the datapath holds {MAX_ACL_ENTRIES}"
            )));
        }
        let is_new = |t: &&IpNet| !old.is_some_and(|o| o.targets.contains(t));
        let mut new_targets = [0usize; 2];
        for t in spec.targets.iter().filter(is_new) {
            new_targets[usize::from(t.addr().is_ipv6())] += 1;
        }
        for (fam, added) in new_targets.iter().enumerate() {
            if self.index.targets_per_family[fam] + added > MAX_TARGETS_PER_FAMILY as usize {
                return Err(DatapathError::Capacity(format!(
                    "more than {MAX_TARGETS_PER_FAMILY} IPv{} target prefixes",
                    if fam == 0 { 4 } else { 6 }
                )));
            }
        }
        let new_v6: Vec<ipnet::Ipv6Net> = spec
            .targets
            .iter()
            .filter(is_new)
            .filter_map(|t| match t {
                IpNet::V6(n) => Some(*n),
                IpNet::V4(_) => None,
            })
            .collect();
        self.index.summary_v6.check(&new_v6)?;
        // The map has room for two generations; the limit is on the steady state (a
        // replaced generation's lists still count in `sources_live` until it is deleted).
        let old_sources = old.map_or(0, |o| o.sources.len());
        let sources =
            self.index.sources_live - old_sources + spec.accept_list.len() + spec.drop_list.len();
        if sources > MAX_SRC_PREFIXES as usize {
            return Err(DatapathError::Capacity(format!(
                "{sources} accept/drop-list prefixes would be live; the datapath holds {MAX_SRC_PREFIXES}"
            )));
        }
        Ok(())
    }

    /// Writes a complete new generation of `spec` in `slot` and points the targets at it;
    /// returns its bookkeeping and the ACL counters carried over from `old` (see
    /// [`Retiring::carried`]). On failure nothing of the new generation is live (and
    /// everything it wrote is deleted).
    fn install_generation(
        &mut self,
        spec: &MitigationSpec,
        slot: u32,
        generation: u32,
        old: Option<&Installed>,
    ) -> R<(Installed, Vec<Carried>)> {
        let n_rules = spec.acl.len() as u32;
        let ruleset = self.alloc_ruleset()?;
        let rule_base = match self.alloc_rules(n_rules) {
            Ok(b) => b,
            Err(e) => {
                self.index.rulesets.mark(ruleset, 1, false);
                return Err(e);
            }
        };
        let unwind = |dp: &mut Self| {
            dp.index.rulesets.mark(ruleset, 1, false);
            dp.index.rules.mark(rule_base, n_rules, false);
        };
        let mut compiled = match compile::compile(spec, ruleset, rule_base) {
            Ok(c) => c,
            Err(e) => {
                unwind(self);
                return Err(e.into());
            }
        };
        compiled.config.generation = generation;
        compiled.config.slot = slot;
        let acl_keys = compiled.keys.clone();
        let sources = compiled.sources.clone();
        self.index.sources_live += sources.len();
        let mut written = self.write_generation(&compiled);
        if written.is_ok() && old.is_none() {
            written = Self::zero_percpu(self.nr_cpus, &mut self.maps.mit_stats, slot, "MIT_STATS")
                .and_then(|()| {
                    self.maps
                        .mit_base
                        .set(slot, xdp_common::MitigationStats::default(), 0)
                        .map_err(|e| DatapathError::bpf("MIT_BASE", e))
                })
                .and_then(|()| {
                    self.maps
                        .scope_buckets
                        .set(slot, Bucket::default(), 0)
                        .map_err(|e| DatapathError::bpf("SCOPE_BUCKETS", e))
                });
        }
        // ACL counters follow entry names: a new rule starts from what the old rule of the
        // same name has counted so far (the new rules' bases are written, not yet live).
        let mut carried = Vec::new();
        if let (Ok(()), Some(o)) = (&written, old) {
            let new_by_name: HashMap<u64, u32> = spec
                .acl
                .iter()
                .enumerate()
                .map(|(i, e)| (compile::name_hash(&e.name), rule_base + i as u32))
                .collect();
            for (i, (name, action)) in o.rule_names.iter().zip(&o.rule_actions).enumerate() {
                let old_rule = o.config.rule_base + i as u32;
                let step = self.acl_total(old_rule).and_then(|at_flip| {
                    if let Some(new_rule) = new_by_name.get(name) {
                        self.maps
                            .acl_base
                            .set(*new_rule, at_flip, 0)
                            .map_err(|e| DatapathError::bpf("ACL_BASE", e))?;
                    }
                    Ok(at_flip)
                });
                match step {
                    Ok(at_flip) => carried.push(Carried {
                        old_rule,
                        action: *action,
                        new_rule: new_by_name.get(name).copied(),
                        at_flip,
                    }),
                    Err(e) => {
                        written = Err(e);
                        break;
                    }
                }
            }
        }
        if let Err(e) = written {
            self.delete_generation(&acl_keys, &sources);
            unwind(self);
            return Err(e);
        }
        // The switch: each target now leads to the new generation.
        let mut pointed = Vec::new();
        for t in &spec.targets {
            let is_new = !old.is_some_and(|o| o.targets.contains(t));
            if let Err(e) = self.point_target(t, ruleset, is_new) {
                // Put back what was switched; the new generation never becomes live.
                for (t, was_new) in pointed {
                    match (was_new, old) {
                        (true, _) | (false, None) => self.remove_target(&t),
                        (false, Some(o)) => {
                            let _ = self.point_target(&t, o.config.ruleset, false);
                        }
                    }
                }
                self.delete_generation(&acl_keys, &sources);
                unwind(self);
                return Err(e);
            }
            pointed.push((*t, is_new));
        }
        let mut installed = Installed {
            config: compiled.config,
            targets: spec.targets.clone(),
            acl_keys,
            sources,
            rule_names: spec
                .acl
                .iter()
                .map(|e| compile::name_hash(&e.name))
                .collect(),
            rule_actions: compiled.rules.iter().map(|r| r.action).collect(),
        };
        installed.config.rule_count = n_rules;
        Ok((installed, carried))
    }
}

impl Mitigator for XdpDatapath {
    fn install(&mut self, spec: &MitigationSpec) -> R<()> {
        self.writable()?;
        self.reap(Instant::now());
        compile::validate(spec)?;
        for t in &spec.targets {
            if let Some(owner) = self.index.target_owner.get(t) {
                if *owner != spec.id {
                    return Err(DatapathError::TargetInUse {
                        prefix: *t,
                        owner: *owner,
                    });
                }
            }
        }
        let digest = compile::spec_digest(spec);
        if self
            .index
            .by_id
            .get(&spec.id)
            .is_some_and(|i| i.config.spec_digest == digest)
        {
            return Ok(()); // the live generation is this spec already
        }
        let old = self.index.by_id.remove(&spec.id);
        let prepared = self
            .check_capacity(spec, old.as_ref())
            .and_then(|()| match &old {
                Some(o) => Ok((o.config.slot, o.config.generation.wrapping_add(1))),
                None => self.index.slots.alloc().map(|s| (s, 0)).ok_or_else(|| {
                    DatapathError::Capacity(format!(
                        "all {MAX_MITIGATIONS} mitigation slots are in use"
                    ))
                }),
            });
        let (slot, generation) = match prepared {
            Ok(p) => p,
            Err(e) => {
                if let Some(o) = old {
                    self.index.by_id.insert(spec.id, o);
                }
                return Err(e);
            }
        };
        match self.install_generation(spec, slot, generation, old.as_ref()) {
            Ok((installed, carried)) => {
                for t in &installed.targets {
                    self.index.target_owner.insert(*t, spec.id);
                }
                if let Some(o) = old {
                    // Entries the new spec dropped: their counts so far stay the mitigation's.
                    for c in carried.iter().filter(|c| c.new_rule.is_none()) {
                        if let Err(e) = self.add_mit_base(slot, c.action, &c.at_flip) {
                            tracing::warn!(
                                "mitigation {}: counts of a removed ACL entry lost: {e}",
                                spec.id
                            );
                        }
                    }
                    for t in o.targets.iter().filter(|t| !installed.targets.contains(t)) {
                        self.index.target_owner.remove(t);
                        self.remove_target(t);
                    }
                    self.retiring.push_back(Retiring {
                        due: Instant::now() + GRACE,
                        generation: o,
                        frees_slot: false,
                        carried,
                    });
                }
                self.index.by_id.insert(spec.id, installed);
                Ok(())
            }
            Err(e) => {
                match old {
                    Some(o) => {
                        self.index.by_id.insert(spec.id, o);
                    }
                    None => self.index.slots.mark(slot, 1, false),
                }
                Err(e)
            }
        }
    }

    /// Removes the targets at once; the generation and the slot follow after the grace
    /// period. The counters returned are read when the targets are gone, so a packet that
    /// found the mitigation just before (on another CPU, microseconds ago) may be missing.
    fn remove(&mut self, id: u64) -> R<Option<MitigationCounters>> {
        self.writable()?;
        self.reap(Instant::now());
        let Some(targets) = self.index.by_id.get(&id).map(|i| i.targets.clone()) else {
            return Ok(None);
        };
        for t in &targets {
            self.remove_target(t);
            self.index.target_owner.remove(t);
        }
        let counters = self.counters(id)?;
        let inst = self.index.by_id.remove(&id).expect("checked above");
        self.retiring.push_back(Retiring {
            due: Instant::now() + GRACE,
            generation: inst,
            frees_slot: true,
            carried: Vec::new(),
        });
        Ok(counters)
    }

    fn counters(&self, id: u64) -> R<Option<MitigationCounters>> {
        let Some(inst) = self.index.by_id.get(&id) else {
            return Ok(None);
        };
        let slot = inst.config.slot;
        let mut m = self
            .maps
            .mit_base
            .get(&slot, 0)
            .map_err(|e| DatapathError::bpf("MIT_BASE", e))?;
        Self::sum_percpu(
            &self.maps.mit_stats,
            slot,
            "MIT_STATS",
            |s: &MitigationStats| {
                m.passed.add(&s.passed);
                m.accepted.add(&s.accepted);
                for (o, d) in m.dropped.iter_mut().zip(s.dropped.iter()) {
                    o.add(d);
                }
            },
        )?;
        // What replaced generations still in their grace period counted since the flip:
        // their entries' (added to the new rules or the base when they are deleted).
        let mut late_rule: HashMap<u32, AclStats> = HashMap::new();
        for c in self
            .retiring
            .iter()
            .filter(|r| !r.frees_slot && r.generation.config.slot == slot)
            .flat_map(|r| r.carried.iter())
        {
            let late = self.acl_total(c.old_rule)?.since(&c.at_flip);
            match c.new_rule {
                Some(r) => late_rule.entry(r).or_default().add(&late),
                None => fold_acl(&mut m, c.action, &late),
            }
        }
        let mut acl = Vec::with_capacity(inst.rule_names.len());
        for (i, (name_hash, action)) in inst.rule_names.iter().zip(&inst.rule_actions).enumerate() {
            let rule = inst.config.rule_base + i as u32;
            let mut total = self.acl_total(rule)?;
            if let Some(l) = late_rule.get(&rule) {
                total.add(l);
            }
            fold_acl(&mut m, *action, &total);
            acl.push(AclCounter {
                name_hash: *name_hash,
                matched: total.matched,
            });
        }
        let mut out = MitigationCounters {
            passed: m.passed,
            accepted: m.accepted,
            dropped: m.dropped,
            acl,
            ..Default::default()
        };
        out.in_scope = out.passed;
        out.dropped.iter().for_each(|d| out.in_scope.add(d));
        Ok(Some(out))
    }

    fn installed(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.index.by_id.keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Deletes the generations whose grace period is over. Every install and remove does
    /// this first; an owner that goes quiet calls it to release resources sooner.
    fn maintain(&mut self) {
        if self.lock.is_some() {
            self.reap(Instant::now());
        }
    }

    fn occupancy(&self) -> Vec<(&'static str, usize, usize)> {
        XdpDatapath::occupancy(self)
    }

    fn top_talkers(&self, id: u64, n: usize) -> Vec<(IpAddr, Counter)> {
        let Some(inst) = self.index.by_id.get(&id) else {
            return Vec::new();
        };
        let slot = inst.config.slot;
        match self.talkers_of_slots(|s| s == slot, n) {
            Ok(mut by_slot) => by_slot.remove(&slot).unwrap_or_default(),
            Err(e) => {
                tracing::warn!("reading the top talkers of mitigation {id}: {e}");
                Vec::new()
            }
        }
    }

    fn interfaces(&self) -> Vec<(String, InterfaceStats)> {
        let pin_root = self.pin_root();
        XdpDatapath::attached(&pin_root)
            .into_iter()
            .filter_map(|name| {
                let ifindex = interface_index(&name)?;
                let c = self.interface_counters(ifindex).ok()?;
                Some((name, c.stats))
            })
            .collect()
    }
}

impl Drop for XdpDatapath {
    fn drop(&mut self) {
        self.settle();
    }
}
