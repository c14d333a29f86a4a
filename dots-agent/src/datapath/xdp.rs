//! The XDP datapath: loads the embedded xdp-filter object, attaches it, pins its maps and
//! links under bpffs (so filtering goes on while the agent restarts), re-adopts pinned state,
//! and turns [`MitigationSpec`]s into map entries.
//!
//! Atomic updates: each mitigation has a slot and two generations (the parity bit of its
//! `ruleset`, which indexes `MITIGATIONS` and prefixes its ACL and source-list keys). A
//! replacement writes the new generation's configuration, rules, keys and lists beside the
//! live ones, then repoints each target's `TARGETS` entry at it (hash updates, which the
//! kernel swaps in whole under RCU): a packet finds either the old or the new generation,
//! complete. Only after a grace period are the old generation's entries deleted.

use std::{
    collections::{HashMap as StdHashMap, HashSet},
    fs,
    net::IpAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use aya::{
    maps::{
        Array, HashMap, IterableMap, Map, MapData, MapError, PerCpuArray, PerCpuHashMap,
        PerCpuValues,
    },
    programs::{links::FdLink, links::PinnedLink, Xdp, XdpMode},
    Ebpf, EbpfLoader, Pod,
};
use ipnet::IpNet;
use xdp_common::{
    ipv6_top48, length_bit, map_names as names, split_tag, summary_index_v4, summary_index_v6,
    AclKey, AclRule, AclValue, Bucket, Counter, InterfaceStats, LengthMask, MitigationConfig,
    MitigationStats, PrefixV4, PrefixV6, TalkerKey, TargetValue, ACL_RULE_SLOTS, AMP_PORT_WORDS,
    IF_STATS_SLOTS, LAYOUT_VERSION, MAX_ACL_ENTRIES, MAX_MITIGATIONS, MAX_PREFIX_LENGTHS,
    MAX_SRC_PREFIXES, MAX_TALKERS, MAX_TARGETS_PER_FAMILY, PROGRAM_NAME, SUMMARY_BITS,
    SUMMARY_SLOTS, SUMMARY_V6_PREFIX_BITS, TALKER_SAMPLE,
};

use super::{
    compile::{self, Compiled, PrefixEntry},
    AclCounter, DatapathError, MitigationCounters, MitigationSpec, Mitigator,
};

/// The XDP object built from ../xdp-filter by build.rs.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("DOTS_XDP_OBJECT"));

pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/dots-agent";

/// UDP source ports of common reflection/amplification vectors: QOTD, chargen, DNS, TFTP,
/// portmap, NTP, NetBIOS, SNMP, CLDAP, RIP, MS-SQL browser, SSDP, ARD, WS-Discovery, mDNS,
/// memcached, DVR/IP-camera discovery.
pub const DEFAULT_AMPLIFICATION_PORTS: &[u16] = &[
    17, 19, 53, 69, 111, 123, 137, 161, 389, 520, 1434, 1900, 3283, 3702, 5353, 11211, 37810,
];

/// How long after a flip the old generation stays intact: far longer than one XDP run.
const GRACE: Duration = Duration::from_millis(2);

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

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

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InterfaceCounters {
    pub ifindex: u32,
    pub stats: InterfaceStats,
}

struct Maps {
    targets_v4: HashMap<MapData, PrefixV4, TargetValue>,
    targets_v6: HashMap<MapData, PrefixV6, TargetValue>,
    sum_v4: Array<MapData, LengthMask>,
    sum_v6: Array<MapData, LengthMask>,
    mitigations: Array<MapData, MitigationConfig>,
    mit_stats: PerCpuArray<MapData, MitigationStats>,
    acl_keys: HashMap<MapData, AclKey, AclValue>,
    acl_rules: Array<MapData, AclRule>,
    acl_stats: PerCpuArray<MapData, Counter>,
    acl_base: Array<MapData, Counter>,
    acl_buckets: Array<MapData, Bucket>,
    sources_v4: HashMap<MapData, PrefixV4, u8>,
    sources_v6: HashMap<MapData, PrefixV6, u8>,
    scope_buckets: Array<MapData, Bucket>,
    amp_ports: Array<MapData, u64>,
    if_stats: PerCpuArray<MapData, InterfaceStats>,
    /// None when opened from pins of a program that predates talker sampling.
    top_talkers: Option<PerCpuHashMap<MapData, TalkerKey, Counter>>,
}

fn typed<M: TryFrom<Map, Error = aya::maps::MapError>>(name: &str, map: Map) -> R<M> {
    M::try_from(map)
        .map_err(|e| DatapathError::bpf(format!("map {name} has an unexpected type"), e))
}

impl Maps {
    fn insert_target(&mut self, k: PrefixEntry, v: TargetValue) -> Result<(), aya::maps::MapError> {
        match k {
            PrefixEntry::V4(k) => self.targets_v4.insert(k, v, 0),
            PrefixEntry::V6(k) => self.targets_v6.insert(k, v, 0),
        }
    }

    fn remove_target(&mut self, k: PrefixEntry) {
        let _ = match k {
            PrefixEntry::V4(k) => self.targets_v4.remove(&k),
            PrefixEntry::V6(k) => self.targets_v6.remove(&k),
        };
    }

    fn insert_source(&mut self, k: &PrefixEntry) -> Result<(), aya::maps::MapError> {
        match k {
            PrefixEntry::V4(k) => self.sources_v4.insert(k, 1, 0),
            PrefixEntry::V6(k) => self.sources_v6.insert(k, 1, 0),
        }
    }

    fn remove_source(&mut self, k: &PrefixEntry) {
        let _ = match k {
            PrefixEntry::V4(k) => self.sources_v4.remove(k),
            PrefixEntry::V6(k) => self.sources_v6.remove(k),
        };
    }

    fn from_source(mut take: impl FnMut(&'static str) -> R<Map>) -> R<Maps> {
        macro_rules! m {
            ($n:expr) => {
                typed($n, take($n)?)?
            };
        }
        Ok(Maps {
            targets_v4: m!(names::TARGETS_V4),
            targets_v6: m!(names::TARGETS_V6),
            sum_v4: m!(names::SUMMARY_V4),
            sum_v6: m!(names::SUMMARY_V6),
            mitigations: m!(names::MITIGATIONS),
            mit_stats: m!(names::MITIGATION_STATS),
            acl_keys: m!(names::ACL_KEYS),
            acl_rules: m!(names::ACL_RULES),
            acl_stats: m!(names::ACL_STATS),
            acl_base: m!(names::ACL_BASE),
            acl_buckets: m!(names::ACL_BUCKETS),
            sources_v4: m!(names::SOURCES_V4),
            sources_v6: m!(names::SOURCES_V6),
            scope_buckets: m!(names::SCOPE_BUCKETS),
            amp_ports: m!(names::AMP_PORTS),
            if_stats: m!(names::IF_STATS),
            top_talkers: match take(names::TOP_TALKERS) {
                Ok(m) => Some(typed(names::TOP_TALKERS, m)?),
                Err(_) => None,
            },
        })
    }
}

/// What user space remembers of an installed mitigation (rebuilt from the maps on adopt).
struct Installed {
    config: MitigationConfig,
    targets: Vec<IpNet>,
    /// Keys of this generation, so it can be deleted without scanning the maps.
    acl_keys: Vec<AclKey>,
    sources: Vec<PrefixEntry>,
    rule_names: Vec<u64>,
}

#[derive(Default)]
struct Index {
    by_id: StdHashMap<u64, Installed>,
    target_owner: StdHashMap<IpNet, u64>,
    slot_used: Vec<bool>,
    rule_used: Vec<bool>,
    /// Targets per (family index, summary slot, prefix length): a length's bit is set in a
    /// slot's mask while its count is positive.
    summary_refs: StdHashMap<(usize, u32, u8), u32>,
    summary_masks: [StdHashMap<u32, LengthMask>; 2],
    sources_live: usize,
    targets_per_family: [usize; 2],
}

impl Index {
    fn new() -> Self {
        Index {
            slot_used: vec![false; MAX_MITIGATIONS as usize],
            rule_used: vec![false; ACL_RULE_SLOTS as usize],
            ..Default::default()
        }
    }

    fn live_acl_entries(&self) -> usize {
        self.by_id
            .values()
            .map(|i| i.config.rule_count as usize)
            .sum()
    }

    fn alloc_slot(&mut self) -> R<u32> {
        let slot = self.slot_used.iter().position(|u| !u).ok_or_else(|| {
            DatapathError::Capacity(format!("all {MAX_MITIGATIONS} mitigation slots are in use"))
        })?;
        self.slot_used[slot] = true;
        Ok(slot as u32)
    }

    /// First fit of `n` contiguous rule slots.
    fn alloc_rules(&mut self, n: u32) -> R<u32> {
        if n == 0 {
            return Ok(0);
        }
        let mut run = 0u32;
        for i in 0..ACL_RULE_SLOTS {
            if self.rule_used[i as usize] {
                run = 0;
                continue;
            }
            run += 1;
            if run == n {
                let base = i + 1 - n;
                self.mark_rules(base, n, true);
                return Ok(base);
            }
        }
        Err(DatapathError::Capacity(format!(
            "no run of {n} free ACL rule slots (of {ACL_RULE_SLOTS})"
        )))
    }

    fn mark_rules(&mut self, base: u32, n: u32, used: bool) {
        for i in base..base + n {
            self.rule_used[i as usize] = used;
        }
    }
}

/// Summary slots touched by a target prefix (the kernel's fast-reject filter).
fn summary_slots(p: &IpNet) -> Vec<u32> {
    match p {
        IpNet::V4(n) => {
            let len = n.prefix_len() as u32;
            let first = summary_index_v4(n.network().octets());
            if len >= SUMMARY_BITS {
                vec![first]
            } else {
                (first..first + (1u32 << (SUMMARY_BITS - len))).collect()
            }
        }
        IpNet::V6(n) => {
            let len = n.prefix_len() as u32;
            let top = ipv6_top48(&n.network().octets());
            if len >= SUMMARY_V6_PREFIX_BITS {
                return vec![summary_index_v6(top)];
            }
            let spread = SUMMARY_V6_PREFIX_BITS - len;
            if spread >= SUMMARY_BITS + 2 {
                return (0..SUMMARY_SLOTS).collect(); // covers (nearly) every slot anyway
            }
            let mut set: HashSet<u32> = (0..1u64 << spread)
                .map(|k| summary_index_v6(top + k))
                .collect();
            let mut v: Vec<u32> = set.drain().collect();
            v.sort_unstable();
            v
        }
    }
}

fn family_index(p: &IpNet) -> usize {
    match p {
        IpNet::V4(_) => 0,
        IpNet::V6(_) => 1,
    }
}

pub struct XdpDatapath {
    pin_dir: PathBuf,
    maps: Maps,
    index: Index,
    nr_cpus: usize,
    /// Present when this process loaded the program (needed to attach and for test runs).
    ebpf: Option<Ebpf>,
}

impl XdpDatapath {
    /// Loads the program and its maps, re-using maps already pinned under `pin_root`
    /// (so installed mitigations survive an agent restart), and adopts their contents.
    pub fn load(opts: &LoadOptions) -> R<Self> {
        let pin_dir = prepare_pin_dir(&opts.pin_root)?;
        let map_dir = pin_dir.join("maps");
        fs::create_dir_all(&map_dir)
            .map_err(|e| DatapathError::Setup(format!("creating {}: {e}", map_dir.display())))?;
        let mut loader = EbpfLoader::new();
        loader.default_map_pin_directory(&map_dir);
        for (name, n) in &opts.max_entries {
            loader.map_max_entries(name, *n);
        }
        let sampling = u32::from(opts.talker_sampling);
        loader.override_global("TALKER_SAMPLING", &sampling, true);
        let mut ebpf = loader
            .load(OBJECT)
            .map_err(|e| DatapathError::bpf("loading the XDP object (are you root?)", e))?;
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or_else(|| {
                DatapathError::Setup(format!("program {PROGRAM_NAME} missing from object"))
            })?
            .try_into()
            .map_err(|e| DatapathError::bpf("program type", e))?;
        program
            .load()
            .map_err(|e| DatapathError::bpf("verifying the XDP program", e))?;
        let maps = Maps::from_source(|name| {
            ebpf.take_map(name)
                .ok_or_else(|| DatapathError::Setup(format!("map {name} missing from object")))
        })?;
        let mut dp = XdpDatapath {
            pin_dir,
            maps,
            index: Index::new(),
            nr_cpus: cpus()?,
            ebpf: Some(ebpf),
        };
        dp.adopt()?;
        Ok(dp)
    }

    /// Opens the maps an attached datapath pinned, without loading a program (for the CLI
    /// and for an agent that restarts while the program keeps filtering).
    pub fn open_pinned(pin_root: &Path) -> R<Self> {
        let pin_dir = pin_root.join(format!("v{LAYOUT_VERSION}"));
        let map_dir = pin_dir.join("maps");
        if !map_dir.join(names::MITIGATIONS).exists() {
            return Err(DatapathError::Setup(format!(
                "no datapath is pinned at {}: attach one first with `dots-agent xdp attach --interface IFACE`",
                pin_dir.display()
            )));
        }
        let maps = Maps::from_source(|name| {
            let data = MapData::from_pin(map_dir.join(name))
                .map_err(|e| DatapathError::bpf(format!("opening pinned map {name}"), e))?;
            Map::from_map_data(data)
                .map_err(|e| DatapathError::bpf(format!("pinned map {name}"), e))
        })?;
        let mut dp = XdpDatapath {
            pin_dir,
            maps,
            index: Index::new(),
            nr_cpus: cpus()?,
            ebpf: None,
        };
        dp.adopt()?;
        Ok(dp)
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

    /// Attaches the program to an interface and pins the link (so it outlives this process).
    /// If our link is already pinned for it, the program is swapped in atomically instead.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> R<AttachOutcome> {
        if iface.is_empty() || iface.len() >= libc::IFNAMSIZ || iface.contains('/') {
            return Err(DatapathError::Setup(format!(
                "{iface:?} is not a valid interface name"
            )));
        }
        let ifindex = if_index(iface)?;
        if self.ebpf.is_none() {
            // Opened from pins: load the program now, re-using the pinned maps.
            let fresh = XdpDatapath::load(&LoadOptions::new(
                self.pin_dir.parent().unwrap_or(Path::new("/")),
            ))?;
            self.ebpf = fresh.ebpf;
            if self.maps.top_talkers.is_none() {
                self.maps.top_talkers = fresh.maps.top_talkers; // created by this load
            }
        }
        let links = self.pin_dir.join("links");
        fs::create_dir_all(&links)
            .map_err(|e| DatapathError::Setup(format!("creating {}: {e}", links.display())))?;
        let link_path = links.join(iface);
        let ebpf = self.ebpf.as_mut().expect("loaded above");
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .expect("checked at load")
            .try_into()
            .map_err(|e| DatapathError::bpf("program type", e))?;

        if link_path.exists() {
            let pinned = PinnedLink::from_pin(&link_path).map_err(|e| {
                DatapathError::bpf(format!("opening pinned link {}", link_path.display()), e)
            })?;
            let link = aya::programs::xdp::XdpLink::try_from(FdLink::from(pinned))
                .map_err(|e| DatapathError::bpf("pinned link is not an XDP link", e))?;
            let id = program
                .attach_to_link(link)
                .map_err(|e| DatapathError::bpf(format!("replacing the program on {iface}"), e))?;
            drop(program.take_link(id)); // the pin keeps the link alive
            return Ok(AttachOutcome {
                interface: iface.into(),
                mode: "existing",
                fallback: None,
                replaced: true,
            });
        }

        let try_mode = |program: &mut Xdp, m: XdpMode| program.attach_to_if_index(ifindex, m);
        let (id, used, fallback) = match mode {
            AttachMode::Native => (
                try_mode(program, XdpMode::Driver).map_err(|e| attach_error(iface, "native", e))?,
                "native",
                None,
            ),
            AttachMode::Skb => (
                try_mode(program, XdpMode::Skb).map_err(|e| attach_error(iface, "skb", e))?,
                "skb",
                None,
            ),
            AttachMode::Auto => match try_mode(program, XdpMode::Driver) {
                Ok(id) => (id, "native", None),
                Err(native_err) => {
                    let why =
                        format!("native mode failed ({native_err}); using generic (skb) mode");
                    let id = try_mode(program, XdpMode::Skb)
                        .map_err(|e| attach_error(iface, "skb", e))?;
                    (id, "skb", Some(why))
                }
            },
        };
        let link = program
            .take_link(id)
            .map_err(|e| DatapathError::bpf("taking the link", e))?;
        let fd_link = FdLink::try_from(link).map_err(|e| {
            DatapathError::bpf(
                "the kernel attached without a bpf_link, which cannot be pinned",
                e,
            )
        })?;
        fd_link.pin(&link_path).map_err(|e| {
            DatapathError::bpf(format!("pinning the link at {}", link_path.display()), e)
        })?;
        Ok(AttachOutcome {
            interface: iface.into(),
            mode: used,
            fallback,
            replaced: false,
        })
    }

    /// Interfaces with a pinned link of ours.
    pub fn attached(pin_root: &Path) -> Vec<String> {
        let dir = pin_root.join(format!("v{LAYOUT_VERSION}")).join("links");
        let mut v: Vec<String> = fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    /// Detaches from one interface (unpins its link). Returns false if it was not attached.
    pub fn detach(pin_root: &Path, iface: &str) -> R<bool> {
        let path = pin_root
            .join(format!("v{LAYOUT_VERSION}"))
            .join("links")
            .join(iface);
        if !path.exists() {
            return Ok(false);
        }
        let link = PinnedLink::from_pin(&path)
            .map_err(|e| DatapathError::bpf(format!("opening {}", path.display()), e))?;
        let fd = link
            .unpin()
            .map_err(|e| DatapathError::bpf(format!("unpinning {}", path.display()), e))?;
        drop(fd); // last reference: the kernel detaches the program
        Ok(true)
    }

    /// Removes the pinned maps (all mitigations) once no interface is attached.
    pub fn purge(pin_root: &Path) -> R<()> {
        let attached = Self::attached(pin_root);
        if !attached.is_empty() {
            return Err(DatapathError::Setup(format!(
                "still attached to {}: detach those first",
                attached.join(", ")
            )));
        }
        let dir = pin_root.join(format!("v{LAYOUT_VERSION}"));
        if dir.exists() {
            fs::remove_dir_all(&dir)
                .map_err(|e| DatapathError::Setup(format!("removing {}: {e}", dir.display())))?;
        }
        let _ = fs::remove_dir(pin_root);
        Ok(())
    }

    /// Rebuilds the user-space index from the maps, and removes what a crash mid-update
    /// left behind (entries of a generation no target points at).
    fn adopt(&mut self) -> R<()> {
        let mut index = Index::new();
        let mut targets: Vec<(PrefixEntry, TargetValue)> = Vec::new();
        for kv in self.maps.targets_v4.iter() {
            let (k, v) = kv.map_err(|e| DatapathError::bpf("reading TARGETS_V4", e))?;
            targets.push((PrefixEntry::V4(k), v));
        }
        for kv in self.maps.targets_v6.iter() {
            let (k, v) = kv.map_err(|e| DatapathError::bpf("reading TARGETS_V6", e))?;
            targets.push((PrefixEntry::V6(k), v));
        }
        // Generations targets point at, newest per slot (an update interrupted half-way can
        // leave a slot's targets split between two).
        let mut configs: StdHashMap<u32, MitigationConfig> = StdHashMap::new();
        for (_, v) in &targets {
            let c = self
                .maps
                .mitigations
                .get(&v.ruleset, 0)
                .map_err(|e| DatapathError::bpf("MITIGATIONS", e))?;
            let slot = v.ruleset >> 1;
            let newer = configs
                .get(&slot)
                .is_none_or(|o| c.generation > o.generation);
            if newer {
                configs.insert(slot, c);
            }
        }
        for (slot, config) in &configs {
            index.slot_used[*slot as usize] = true;
            index.mark_rules(config.rule_base, config.rule_count, true);
            let mut rule_names = Vec::with_capacity(config.rule_count as usize);
            for i in 0..config.rule_count {
                let r = self
                    .maps
                    .acl_rules
                    .get(&(config.rule_base + i), 0)
                    .map_err(|e| DatapathError::bpf("ACL_RULES", e))?;
                rule_names.push(r.name_hash);
            }
            index.by_id.insert(
                config.id,
                Installed {
                    config: *config,
                    targets: Vec::new(),
                    acl_keys: Vec::new(),
                    sources: Vec::new(),
                    rule_names,
                },
            );
        }
        let live: HashSet<u32> = configs.values().map(|c| c.ruleset).collect();
        for (key, v) in targets {
            let Some(net) = key_prefix(&key) else {
                continue;
            };
            let config = &configs[&(v.ruleset >> 1)];
            if v.ruleset != config.ruleset {
                // Finish the interrupted flip.
                let value = TargetValue {
                    ruleset: config.ruleset,
                };
                self.maps
                    .insert_target(key, value)
                    .map_err(|e| DatapathError::bpf("targets", e))?;
            }
            count_target(&mut index, &net, 1);
            index.target_owner.insert(net, config.id);
            index
                .by_id
                .get_mut(&config.id)
                .expect("from configs")
                .targets
                .push(net);
        }
        // Summaries must hold at least what the targets need (repairs a torn update). A bit
        // left over by a crash costs unmitigated traffic to that slot one wasted probe and
        // never changes a verdict; scanning 2 x 1M slots on every start would cost seconds.
        for fam in 0..2 {
            let arr = if fam == 0 {
                &mut self.maps.sum_v4
            } else {
                &mut self.maps.sum_v6
            };
            for (s, m) in &index.summary_masks[fam] {
                arr.set(*s, *m, 0)
                    .map_err(|e| DatapathError::bpf("summary", e))?;
            }
        }
        let slot_id: StdHashMap<u32, u64> = configs.values().map(|c| (c.ruleset, c.id)).collect();
        let keys: Vec<AclKey> = self
            .maps
            .acl_keys
            .keys()
            .collect::<Result<_, _>>()
            .map_err(|e| DatapathError::bpf("reading ACL_KEYS", e))?;
        for k in keys {
            match slot_id
                .get(&k.ruleset)
                .filter(|_| live.contains(&k.ruleset))
            {
                Some(id) => index.by_id.get_mut(id).expect("live").acl_keys.push(k),
                None => {
                    let _ = self.maps.acl_keys.remove(&k);
                }
            }
        }
        let mut sources: Vec<PrefixEntry> = Vec::new();
        for k in self.maps.sources_v4.keys() {
            sources.push(PrefixEntry::V4(
                k.map_err(|e| DatapathError::bpf("reading SOURCES_V4", e))?,
            ));
        }
        for k in self.maps.sources_v6.keys() {
            sources.push(PrefixEntry::V6(
                k.map_err(|e| DatapathError::bpf("reading SOURCES_V6", e))?,
            ));
        }
        for k in sources {
            let ruleset = match k {
                PrefixEntry::V4(p) => split_tag(p.tag).0,
                PrefixEntry::V6(p) => split_tag(p.tag).0,
            };
            match slot_id.get(&ruleset).filter(|_| live.contains(&ruleset)) {
                Some(id) => {
                    index.by_id.get_mut(id).expect("live").sources.push(k);
                    index.sources_live += 1;
                }
                None => self.maps.remove_source(&k),
            }
        }
        // Talkers of slots no mitigation holds (a crash between removing a mitigation's
        // targets and clearing its talkers) would be credited to the slot's next owner.
        let live_slots: HashSet<u32> = configs.keys().copied().collect();
        if let Err(e) = self.clear_talkers(|s| !live_slots.contains(&s)) {
            tracing::warn!("clearing top talkers of unused slots: {e}");
        }
        self.index = index;
        Ok(())
    }

    /// Top talkers of every installed mitigation, from one walk of the map (a status of
    /// many mitigations would otherwise walk it once per mitigation).
    pub fn top_talkers_all(&self, n: usize) -> R<StdHashMap<u64, Vec<(IpAddr, Counter)>>> {
        let slot_id: StdHashMap<u32, u64> = self
            .index
            .by_id
            .iter()
            .map(|(id, i)| (i.config.slot(), *id))
            .collect();
        let by_slot = self.talkers_of_slots(|s| slot_id.contains_key(&s), n)?;
        Ok(by_slot
            .into_iter()
            .filter_map(|(s, v)| Some((*slot_id.get(&s)?, v)))
            .collect())
    }

    /// Ranked, scaled talkers per slot for the slots `keep` selects.
    fn talkers_of_slots(
        &self,
        keep: impl Fn(u32) -> bool,
        n: usize,
    ) -> R<StdHashMap<u32, Vec<(IpAddr, Counter)>>> {
        let mut by_slot: StdHashMap<u32, Vec<(IpAddr, Counter)>> = StdHashMap::new();
        for (k, c) in self.talker_entries(keep)? {
            let Some(ip) = talker_addr(&k) else {
                continue;
            };
            let scaled = Counter {
                packets: c.packets.saturating_mul(TALKER_SAMPLE as u64),
                bytes: c.bytes.saturating_mul(TALKER_SAMPLE as u64),
            };
            by_slot.entry(k.slot).or_default().push((ip, scaled));
        }
        for v in by_slot.values_mut() {
            super::rank_talkers(v, n);
        }
        Ok(by_slot)
    }

    /// Keys of `TOP_TALKERS` whose slot passes `keep`, from one bounded walk: when the key
    /// in hand is evicted mid-walk the kernel restarts from the first key, so the walk stops
    /// after twice the capacity (duplicates from a restart are dropped).
    fn talker_keys(&self, keep: impl Fn(u32) -> bool) -> R<Vec<TalkerKey>> {
        let Some(map) = &self.maps.top_talkers else {
            return Ok(Vec::new());
        };
        let cap = map
            .map()
            .info()
            .map(|i| i.max_entries())
            .unwrap_or(MAX_TALKERS) as usize;
        let mut seen = HashSet::new();
        for key in map.keys().take(2 * cap) {
            let key = key.map_err(|e| DatapathError::bpf("reading TOP_TALKERS", e))?;
            if keep(key.slot) {
                seen.insert(key);
            }
        }
        Ok(seen.into_iter().collect())
    }

    /// Sampled (unscaled) counts per key, summed across CPUs.
    fn talker_entries(&self, keep: impl Fn(u32) -> bool) -> R<Vec<(TalkerKey, Counter)>> {
        let keys = self.talker_keys(keep)?;
        let Some(map) = &self.maps.top_talkers else {
            return Ok(Vec::new());
        };
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let values = match map.get(&k, 0) {
                Ok(v) => v,
                Err(MapError::KeyNotFound) => continue, // evicted since the walk
                Err(e) => return Err(DatapathError::bpf("reading TOP_TALKERS", e)),
            };
            let mut sum = Counter::default();
            values.iter().for_each(|c| sum.add(c));
            out.push((k, sum));
        }
        Ok(out)
    }

    /// Deletes the talker entries of the slots `dead` names; returns how many.
    fn clear_talkers(&mut self, dead: impl Fn(u32) -> bool) -> R<usize> {
        let keys = self.talker_keys(dead)?;
        let Some(map) = &mut self.maps.top_talkers else {
            return Ok(0);
        };
        for k in &keys {
            let _ = map.remove(k); // already gone (evicted) is fine
        }
        Ok(keys.len())
    }

    fn zero_percpu<T: Pod + Default>(
        nr: usize,
        map: &mut PerCpuArray<MapData, T>,
        idx: u32,
        what: &str,
    ) -> R<()> {
        let v = PerCpuValues::try_from(vec![T::default(); nr])
            .map_err(|e| DatapathError::bpf(what.to_string(), e))?;
        map.set(idx, v, 0)
            .map_err(|e| DatapathError::bpf(what.to_string(), e))
    }

    fn sum_percpu<T: Pod>(
        map: &PerCpuArray<MapData, T>,
        idx: u32,
        what: &str,
        mut add: impl FnMut(&T),
    ) -> R<()> {
        let values = map
            .get(&idx, 0)
            .map_err(|e| DatapathError::bpf(what.to_string(), e))?;
        values.iter().for_each(&mut add);
        Ok(())
    }

    /// Points a target at a generation (adding it to the summaries first if it is new).
    fn point_target(&mut self, net: &IpNet, ruleset: u32, is_new: bool) -> R<()> {
        if is_new {
            let changed = count_target(&mut self.index, net, 1);
            self.write_summaries(family_index(net), &changed)?;
        }
        self.maps
            .insert_target(compile::prefix_entry(0, 0, net), TargetValue { ruleset })
            .map_err(|e| DatapathError::bpf(format!("inserting target {net}"), e))
    }

    /// Removes a target, then releases its summary bits.
    fn remove_target(&mut self, net: &IpNet) -> R<()> {
        self.maps.remove_target(compile::prefix_entry(0, 0, net));
        let changed = count_target(&mut self.index, net, -1);
        self.write_summaries(family_index(net), &changed)
    }

    fn write_summaries(&mut self, fam: usize, slots: &[u32]) -> R<()> {
        let arr = if fam == 0 {
            &mut self.maps.sum_v4
        } else {
            &mut self.maps.sum_v6
        };
        for s in slots {
            let m = self.index.summary_masks[fam]
                .get(s)
                .copied()
                .unwrap_or([0; 2]);
            arr.set(*s, m, 0)
                .map_err(|e| DatapathError::bpf("summary", e))?;
        }
        Ok(())
    }

    /// Writes one generation's configuration, rules, keys and source lists. None of it is
    /// live until targets point at `c.config.ruleset`.
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
                .set(idx, Counter::default(), 0)
                .map_err(|e| DatapathError::bpf("ACL_BASE", e))?;
            self.maps
                .acl_buckets
                .set(idx, Bucket::default(), 0)
                .map_err(|e| DatapathError::bpf("ACL_BUCKETS", e))?;
            Self::zero_percpu(self.nr_cpus, &mut self.maps.acl_stats, idx, "ACL_STATS")?;
        }
        for (k, v) in &c.keys {
            self.maps
                .acl_keys
                .insert(k, v, 0)
                .map_err(|e| DatapathError::bpf("ACL_KEYS", e))?;
        }
        for k in &c.sources {
            self.maps
                .insert_source(k)
                .map_err(|e| DatapathError::bpf("source lists", e))?;
        }
        self.maps
            .mitigations
            .set(c.config.ruleset, c.config, 0)
            .map_err(|e| DatapathError::bpf("MITIGATIONS", e))
    }

    /// Deletes a generation's keys and source lists (rule slots are freed by the caller).
    fn delete_generation(&mut self, acl_keys: &[AclKey], sources: &[PrefixEntry]) {
        for k in acl_keys {
            let _ = self.maps.acl_keys.remove(k);
        }
        for k in sources {
            self.maps.remove_source(k);
        }
    }

    fn acl_total(&self, idx: u32) -> R<Counter> {
        let mut total = self
            .maps
            .acl_base
            .get(&idx, 0)
            .map_err(|e| DatapathError::bpf("ACL_BASE", e))?;
        Self::sum_percpu(&self.maps.acl_stats, idx, "ACL_STATS", |c| total.add(c))?;
        Ok(total)
    }

    /// Per-interface counters for the given ifindex (summed across CPUs).
    pub fn interface_counters(&self, ifindex: u32) -> R<InterfaceCounters> {
        let slot = if ifindex < IF_STATS_SLOTS { ifindex } else { 0 };
        let mut s = InterfaceStats::default();
        Self::sum_percpu(&self.maps.if_stats, slot, "IF_STATS", |v| {
            s.rx.add(&v.rx);
            s.parse_errors += v.parse_errors;
            s.non_ip += v.non_ip;
            s.to_target += v.to_target;
            s.dropped += v.dropped;
        })?;
        Ok(InterfaceCounters { ifindex, stats: s })
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
        let mut new_targets = [0usize; 2];
        for t in &spec.targets {
            if !old.is_some_and(|o| o.targets.contains(t)) {
                new_targets[family_index(t)] += 1;
            }
        }
        for (fam, added) in new_targets.iter().enumerate() {
            if self.index.targets_per_family[fam] + added > MAX_TARGETS_PER_FAMILY as usize {
                return Err(DatapathError::Capacity(format!(
                    "more than {MAX_TARGETS_PER_FAMILY} IPv{} target prefixes",
                    if fam == 0 { 4 } else { 6 }
                )));
            }
        }
        // The kernel probes at most MAX_PREFIX_LENGTHS target lengths per summary slot.
        let mut added: StdHashMap<(usize, u32), LengthMask> = StdHashMap::new();
        for t in spec
            .targets
            .iter()
            .filter(|t| !old.is_some_and(|o| o.targets.contains(t)))
        {
            let fam = family_index(t);
            let (word, bit) = length_bit(t.prefix_len());
            for s in summary_slots(t) {
                let m = added.entry((fam, s)).or_insert_with(|| {
                    self.index.summary_masks[fam]
                        .get(&s)
                        .copied()
                        .unwrap_or([0; 2])
                });
                m[word] |= bit;
                let n = m[0].count_ones() + m[1].count_ones();
                if n > MAX_PREFIX_LENGTHS {
                    return Err(DatapathError::Capacity(format!(
                        "target {t}: more than {MAX_PREFIX_LENGTHS} distinct target prefix lengths would share one \
                         lookup slot (IPv4 addresses share a slot per /{SUMMARY_BITS}, IPv6 per hashed /{SUMMARY_V6_PREFIX_BITS}); \
                         use fewer distinct prefix lengths there"
                    )));
                }
            }
        }
        // The map has room for two generations; the limit is on the steady state.
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
}

impl Mitigator for XdpDatapath {
    fn install(&mut self, spec: &MitigationSpec) -> R<()> {
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
        let old = self.index.by_id.remove(&spec.id);
        let prepared = self
            .check_capacity(spec, old.as_ref())
            .and_then(|()| match &old {
                Some(o) => Ok((
                    o.config.slot(),
                    (o.config.ruleset & 1) ^ 1,
                    o.config.generation.wrapping_add(1),
                )),
                None => self.index.alloc_slot().map(|s| (s, 0, 0)),
            });
        let (slot, parity, generation) = match prepared {
            Ok(p) => p,
            Err(e) => {
                if let Some(o) = old {
                    self.index.by_id.insert(spec.id, o);
                }
                return Err(e);
            }
        };
        match self.install_generation(spec, slot, parity, generation, old.as_ref()) {
            Ok(installed) => {
                for t in &installed.targets {
                    self.index.target_owner.insert(*t, spec.id);
                }
                let retired = match old {
                    Some(o) => self.retire(o, &installed),
                    None => Ok(()),
                };
                self.index.by_id.insert(spec.id, installed);
                retired
            }
            Err(e) => {
                match old {
                    Some(o) => {
                        self.index.by_id.insert(spec.id, o);
                    }
                    None => self.index.slot_used[slot as usize] = false,
                }
                Err(e)
            }
        }
    }

    fn remove(&mut self, id: u64) -> R<Option<MitigationCounters>> {
        let Some(targets) = self.index.by_id.get(&id).map(|i| i.targets.clone()) else {
            return Ok(None);
        };
        for t in &targets {
            self.remove_target(t)?;
            self.index.target_owner.remove(t);
        }
        std::thread::sleep(GRACE); // packets that found a target before its removal finish
        let counters = self.counters(id)?;
        let inst = self.index.by_id.remove(&id).expect("checked above");
        self.release_generation(&inst);
        // No target leads to the slot any more: its talkers are final and would otherwise
        // show up under the next mitigation given this slot.
        let slot = inst.config.slot();
        if let Err(e) = self.clear_talkers(|s| s == slot) {
            tracing::warn!("mitigation {id} removed, but its top talkers were not: {e}");
        }
        self.index.slot_used[slot as usize] = false;
        Ok(counters)
    }

    fn counters(&self, id: u64) -> R<Option<MitigationCounters>> {
        let Some(inst) = self.index.by_id.get(&id) else {
            return Ok(None);
        };
        let mut out = MitigationCounters::default();
        Self::sum_percpu(&self.maps.mit_stats, inst.config.slot(), "MIT_STATS", |s| {
            out.passed.add(&s.passed);
            out.accepted.add(&s.accepted);
            for (o, d) in out.dropped.iter_mut().zip(s.dropped.iter()) {
                o.add(d);
            }
        })?;
        out.in_scope = out.passed;
        out.dropped.iter().for_each(|d| out.in_scope.add(d));
        for (i, name_hash) in inst.rule_names.iter().enumerate() {
            let matched = self.acl_total(inst.config.rule_base + i as u32)?;
            out.acl.push(AclCounter {
                name_hash: *name_hash,
                matched,
            });
        }
        Ok(Some(out))
    }

    fn installed(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.index.by_id.keys().copied().collect();
        v.sort_unstable();
        v
    }

    fn occupancy(&self) -> Vec<(&'static str, usize, usize)> {
        XdpDatapath::occupancy(self)
    }

    fn top_talkers(&self, id: u64, n: usize) -> Vec<(IpAddr, Counter)> {
        let Some(inst) = self.index.by_id.get(&id) else {
            return Vec::new();
        };
        let slot = inst.config.slot();
        match self.talkers_of_slots(|s| s == slot, n) {
            Ok(mut by_slot) => by_slot.remove(&slot).unwrap_or_default(),
            Err(e) => {
                tracing::warn!("reading the top talkers of mitigation {id}: {e}");
                Vec::new()
            }
        }
    }

    fn interfaces(&self) -> Vec<(String, xdp_common::InterfaceStats)> {
        let Some(pin_root) = self.pin_dir.parent() else {
            return Vec::new();
        };
        XdpDatapath::attached(pin_root)
            .into_iter()
            .filter_map(|name| {
                let ifindex = interface_index(&name)?;
                let c = self.interface_counters(ifindex).ok()?;
                Some((name, c.stats))
            })
            .collect()
    }
}

impl XdpDatapath {
    /// Writes a complete new generation and points the targets at it; returns its
    /// bookkeeping. On failure nothing of the new generation is live.
    fn install_generation(
        &mut self,
        spec: &MitigationSpec,
        slot: u32,
        parity: u32,
        generation: u32,
        old: Option<&Installed>,
    ) -> R<Installed> {
        let ruleset = (slot << 1) | parity;
        let n_rules = spec.acl.len() as u32;
        let rule_base = self.index.alloc_rules(n_rules)?;
        let mut compiled = match compile::compile(spec, ruleset, rule_base) {
            Ok(c) => c,
            Err(e) => {
                self.index.mark_rules(rule_base, n_rules, false);
                return Err(e.into());
            }
        };
        compiled.config.generation = generation;
        let sources = std::mem::take(&mut compiled.sources);
        let acl_keys: Vec<AclKey> = compiled.keys.iter().map(|(k, _)| *k).collect();
        let mut written = self.write_generation(&Compiled {
            sources: sources.clone(),
            ..compiled
        });
        if written.is_ok() && old.is_none() {
            written = Self::zero_percpu(self.nr_cpus, &mut self.maps.mit_stats, slot, "MIT_STATS")
                .and_then(|()| {
                    self.maps
                        .scope_buckets
                        .set(slot, Bucket::default(), 0)
                        .map_err(|e| DatapathError::bpf("SCOPE_BUCKETS", e))
                });
        }
        if let Err(e) = written {
            self.delete_generation(&acl_keys, &sources);
            self.index.mark_rules(rule_base, n_rules, false);
            return Err(e);
        }
        // The switch: each target now leads to the new generation.
        let config = self
            .maps
            .mitigations
            .get(&ruleset, 0)
            .map_err(|e| DatapathError::bpf("MITIGATIONS", e))?;
        for t in &spec.targets {
            let is_new = !old.is_some_and(|o| o.targets.contains(t));
            self.point_target(t, ruleset, is_new)?;
        }
        self.index.sources_live += sources.len();
        Ok(Installed {
            config,
            targets: spec.targets.clone(),
            acl_keys,
            sources,
            rule_names: spec
                .acl
                .iter()
                .map(|e| compile::name_hash(&e.name))
                .collect(),
        })
    }

    /// After the switch: drop targets the new spec no longer has, wait out packets still
    /// using the old generation, carry ACL counters over by entry name, delete the old
    /// generation.
    fn retire(&mut self, old: Installed, new: &Installed) -> R<()> {
        for t in old.targets.iter().filter(|t| !new.targets.contains(t)) {
            self.index.target_owner.remove(t);
            self.remove_target(t)?;
        }
        std::thread::sleep(GRACE);
        let mut carried: StdHashMap<u64, Counter> = StdHashMap::new();
        for (i, h) in old.rule_names.iter().enumerate() {
            carried.insert(*h, self.acl_total(old.config.rule_base + i as u32)?);
        }
        for (i, h) in new.rule_names.iter().enumerate() {
            if let Some(c) = carried.get(h) {
                self.maps
                    .acl_base
                    .set(new.config.rule_base + i as u32, c, 0)
                    .map_err(|e| DatapathError::bpf("ACL_BASE", e))?;
            }
        }
        self.release_generation(&old);
        Ok(())
    }

    /// Deletes everything of a generation that no target points at any more, and frees
    /// its rule slots.
    fn release_generation(&mut self, gen: &Installed) {
        self.delete_generation(&gen.acl_keys, &gen.sources);
        let _ = self
            .maps
            .mitigations
            .set(gen.config.ruleset, MitigationConfig::default(), 0);
        self.index.sources_live -= gen.sources.len();
        self.index
            .mark_rules(gen.config.rule_base, gen.config.rule_count, false);
    }
}

/// Adds `delta` to the summary counts of a target; returns the slots whose mask changed.
fn count_target(index: &mut Index, net: &IpNet, delta: i32) -> Vec<u32> {
    let fam = family_index(net);
    let len = net.prefix_len();
    let (word, bit) = length_bit(len);
    if delta > 0 {
        index.targets_per_family[fam] += 1;
    } else {
        index.targets_per_family[fam] -= 1;
    }
    let mut changed = Vec::new();
    for s in summary_slots(net) {
        let refs = index.summary_refs.entry((fam, s, len)).or_insert(0);
        let before = *refs;
        *refs = (*refs as i64 + delta as i64).max(0) as u32;
        let now = *refs;
        if now == 0 {
            index.summary_refs.remove(&(fam, s, len));
        }
        if (before == 0) != (now == 0) {
            let mask = index.summary_masks[fam].entry(s).or_insert([0; 2]);
            if now > 0 {
                mask[word] |= bit;
            } else {
                mask[word] &= !bit;
                if mask[0] | mask[1] == 0 {
                    index.summary_masks[fam].remove(&s);
                }
            }
            changed.push(s);
        }
    }
    changed
}

/// The source address of a talker key (None for a family the kernel never writes).
fn talker_addr(k: &TalkerKey) -> Option<IpAddr> {
    match k.family {
        4 => Some(IpAddr::from(k.addr[0].to_ne_bytes())),
        6 => {
            let mut o = [0u8; 16];
            for (i, w) in k.addr.iter().enumerate() {
                o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
            }
            Some(IpAddr::from(o))
        }
        _ => None,
    }
}

/// The prefix a target key stands for.
fn key_prefix(k: &PrefixEntry) -> Option<IpNet> {
    match k {
        PrefixEntry::V4(p) => {
            let len = split_tag(p.tag).2;
            ipnet::Ipv4Net::new(p.addr.to_ne_bytes().into(), len)
                .ok()
                .map(IpNet::V4)
        }
        PrefixEntry::V6(p) => {
            let mut o = [0u8; 16];
            for (i, w) in p.addr.iter().enumerate() {
                o[4 * i..4 * i + 4].copy_from_slice(&w.to_ne_bytes());
            }
            ipnet::Ipv6Net::new(o.into(), split_tag(p.tag).2)
                .ok()
                .map(IpNet::V6)
        }
    }
}

fn cpus() -> R<usize> {
    aya::util::nr_cpus()
        .map_err(|(what, e)| DatapathError::bpf(format!("counting CPUs ({what})"), e))
}

/// The ifindex of an interface in this network namespace, if it exists.
pub fn interface_index(iface: &str) -> Option<u32> {
    if_index(iface).ok()
}

fn if_index(iface: &str) -> R<u32> {
    let c = std::ffi::CString::new(iface)
        .map_err(|_| DatapathError::Setup(format!("{iface:?} is not a valid interface name")))?;
    // SAFETY: c is a valid NUL-terminated string.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        return Err(DatapathError::Setup(format!(
            "no interface named {iface:?} (see `ip link`)"
        )));
    }
    Ok(idx)
}

fn attach_error(iface: &str, mode: &str, e: aya::programs::ProgramError) -> DatapathError {
    let text = e.to_string();
    let hint = if text.contains("Device or resource busy") || text.contains("EBUSY") {
        format!("; {iface} already runs another XDP program: remove it first (ip link set dev {iface} xdp off)")
    } else {
        String::new()
    };
    DatapathError::Bpf {
        context: format!("attaching to {iface} in {mode} mode{hint}"),
        source: Box::new(e),
    }
}

/// Makes sure `pin_root` is on a bpffs (mounting /sys/fs/bpf if that is where it points and
/// nothing is mounted there) and returns the layout-versioned directory under it.
fn prepare_pin_dir(pin_root: &Path) -> R<PathBuf> {
    let bpffs = Path::new("/sys/fs/bpf");
    if pin_root.starts_with(bpffs) && !is_bpffs(bpffs) {
        let ok = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c"/sys/fs/bpf".as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        } == 0;
        if !ok {
            return Err(DatapathError::Setup(format!(
                "bpffs is not mounted at /sys/fs/bpf and mounting it failed ({}); run `mount -t bpf bpf /sys/fs/bpf` as root",
                std::io::Error::last_os_error()
            )));
        }
        tracing::info!("mounted bpffs at /sys/fs/bpf (it was not mounted)");
    }
    let dir = pin_root.join(format!("v{LAYOUT_VERSION}"));
    fs::create_dir_all(&dir)
        .map_err(|e| DatapathError::Setup(format!("creating {}: {e}", dir.display())))?;
    if !is_bpffs(&dir) {
        return Err(DatapathError::Setup(format!(
            "{} is not on a bpffs: pins need one (mount -t bpf bpf DIR)",
            dir.display()
        )));
    }
    Ok(dir)
}

fn is_bpffs(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}
