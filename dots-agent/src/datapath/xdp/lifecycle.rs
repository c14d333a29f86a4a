//! The datapath's life: loading the program and its maps (re-using pinned ones), attaching
//! to interfaces with pinned links, detaching, purging, and adopting pinned state after a
//! restart (rebuilding the index and repairing what a crash mid-update left).

use std::collections::{HashMap, HashSet};
use std::fs;
use std::path::{Path, PathBuf};

use aya::maps::{Map, MapData};
use aya::programs::{links::FdLink, links::PinnedLink, Xdp, XdpMode};
use aya::EbpfLoader;
use ipnet::IpNet;
use xdp_common::{
    map_names as names, split_tag, MitigationConfig, TargetValue, ACL_INDEX_SLOTS, LAYOUT_VERSION,
    PROGRAM_NAME,
};

use super::super::compile::{IndexEntry, PrefixEntry};
use super::super::lock::WriterLock;
use super::super::DatapathError;
use super::index::{Index, Installed, Words};
use super::maps::{Maps, U32Words, U64Words};
use super::{AttachMode, AttachOutcome, LoadOptions, XdpDatapath, OBJECT, R};

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

impl XdpDatapath {
    /// Loads the program and its maps, re-using maps already pinned under `pin_root`
    /// (so installed mitigations survive an agent restart), and adopts their contents. The
    /// caller becomes the datapath's one writer: it holds the pin root's lock until dropped,
    /// and another process's `load` or [`XdpDatapath::adopt_pinned`] is refused meanwhile
    /// (naming this one).
    pub fn load(opts: &LoadOptions) -> R<Self> {
        let pin_dir = prepare_pin_dir(&opts.pin_root)?;
        let lock = WriterLock::acquire(&opts.pin_root, "the pinned XDP datapath")?;
        Self::load_locked(opts, pin_dir, lock)
    }

    fn load_locked(opts: &LoadOptions, pin_dir: PathBuf, lock: WriterLock) -> R<Self> {
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
        let mut dp = XdpDatapath::new(pin_dir, maps, Some(ebpf), Some(lock))?;
        dp.adopt()?;
        Ok(dp)
    }

    /// Opens the maps an attached datapath pinned, to read (counters, status): no lock is
    /// taken and nothing is changed, not even what an interrupted update left to repair.
    pub fn open_pinned(pin_root: &Path) -> R<Self> {
        Self::open_pins(pin_root, None)
    }

    /// Opens the pinned maps as their writer (for the CLI's changes): takes the pin root's
    /// lock (refused, naming the holder, while a server or another command holds it) and
    /// repairs what an interrupted update left.
    pub fn adopt_pinned(pin_root: &Path) -> R<Self> {
        let lock = match pin_root.exists() {
            true => Some(WriterLock::acquire(pin_root, "the pinned XDP datapath")?),
            false => None, // nothing pinned: open_pins says so
        };
        Self::open_pins(pin_root, lock)
    }

    fn open_pins(pin_root: &Path, lock: Option<WriterLock>) -> R<Self> {
        let pin_dir = pin_root.join(format!("v{LAYOUT_VERSION}"));
        let map_dir = pin_dir.join("maps");
        if !map_dir.join(names::MITIGATIONS).exists() {
            let hint = match old_layouts(pin_root).first() {
                Some(v) => format!(
                    " (pins of an older dots-agent, layout {v}, are there: `dots-agent xdp attach` \
                     moves its interfaces to this version)"
                ),
                None => String::new(),
            };
            return Err(DatapathError::Setup(format!(
                "no datapath is pinned at {}: attach one first with `dots-agent xdp attach --interface IFACE`{hint}",
                pin_dir.display()
            )));
        }
        let maps = Maps::from_source(|name| {
            let data = MapData::from_pin(map_dir.join(name))
                .map_err(|e| DatapathError::bpf(format!("opening pinned map {name}"), e))?;
            Map::from_map_data(data)
                .map_err(|e| DatapathError::bpf(format!("pinned map {name}"), e))
        })?;
        let mut dp = XdpDatapath::new(pin_dir, maps, None, lock)?;
        dp.adopt()?;
        Ok(dp)
    }

    /// Attaches the program to an interface and pins the link (so it outlives this process).
    /// If a link of ours is already pinned for it (of this version, or of an older one whose
    /// maps cannot be read by this program), the program is swapped in atomically instead.
    pub fn attach(&mut self, iface: &str, mode: AttachMode) -> R<AttachOutcome> {
        if iface.is_empty() || iface.len() >= libc::IFNAMSIZ || iface.contains('/') {
            return Err(DatapathError::Setup(format!(
                "{iface:?} is not a valid interface name"
            )));
        }
        let ifindex = if_index(iface)?;
        self.writable()?;
        if self.ebpf.is_none() {
            // Opened from pins: load the program now, re-using the pinned maps (under the
            // lock this process already holds).
            let opts = LoadOptions::new(self.pin_root());
            let lock = self.lock.take().expect("writable");
            let mut fresh = XdpDatapath::load_locked(&opts, self.pin_dir.clone(), lock)?;
            self.ebpf = fresh.ebpf.take();
            self.lock = fresh.lock.take();
        }
        let links = self.pin_dir.join("links");
        fs::create_dir_all(&links)
            .map_err(|e| DatapathError::Setup(format!("creating {}: {e}", links.display())))?;
        let link_path = links.join(iface);
        let pin_root = self.pin_root();
        let ebpf = self.ebpf.as_mut().expect("loaded above");
        let program: &mut Xdp = ebpf
            .program_mut(PROGRAM_NAME)
            .expect("checked at load")
            .try_into()
            .map_err(|e| DatapathError::bpf("program type", e))?;

        let existing = if link_path.exists() {
            Some((link_path.clone(), None))
        } else {
            old_layouts(&pin_root).into_iter().find_map(|v| {
                let p = pin_root.join(format!("v{v}")).join("links").join(iface);
                p.exists().then_some((p, Some(v)))
            })
        };
        if let Some((path, old_layout)) = existing {
            if old_layout.is_some() {
                // Pin the link under this layout before the old pin goes, so it never
                // loses its last reference.
                let old = PinnedLink::from_pin(&path).map_err(|e| {
                    DatapathError::bpf(format!("opening pinned link {}", path.display()), e)
                })?;
                FdLink::from(old).pin(&link_path).map_err(|e| {
                    DatapathError::bpf(format!("pinning the link at {}", link_path.display()), e)
                })?;
            }
            let pinned = PinnedLink::from_pin(&link_path).map_err(|e| {
                DatapathError::bpf(format!("opening pinned link {}", link_path.display()), e)
            })?;
            let fd_link = FdLink::from(pinned);
            let link = aya::programs::xdp::XdpLink::try_from(fd_link)
                .map_err(|e| DatapathError::bpf("pinned link is not an XDP link", e))?;
            let id = program
                .attach_to_link(link)
                .map_err(|e| DatapathError::bpf(format!("replacing the program on {iface}"), e))?;
            drop(program.take_link(id)); // the pin keeps the link alive
            if let Some(v) = old_layout {
                let _ = fs::remove_file(&path);
                purge_layout_if_unused(&pin_root, v);
            }
            return Ok(AttachOutcome {
                interface: iface.into(),
                mode: "existing",
                fallback: None,
                replaced: true,
                migrated_from_layout: old_layout,
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
            migrated_from_layout: None,
        })
    }

    /// Attaches to every interface in `ifaces` or to none: all are checked first (valid
    /// names that exist here, no repeats), and if an attach still fails, the interfaces this
    /// call attached are detached again before the error is returned. An interface that had
    /// our link already keeps it (with this program).
    pub fn attach_all(&mut self, ifaces: &[String], mode: AttachMode) -> R<Vec<AttachOutcome>> {
        check_interfaces(ifaces)?;
        let mut done: Vec<AttachOutcome> = Vec::new();
        for iface in ifaces {
            match self.attach(iface, mode) {
                Ok(o) => done.push(o),
                Err(e) => {
                    let pin_root = self.pin_root();
                    let undone: Vec<String> = done
                        .iter()
                        .filter(|o| !o.replaced)
                        .filter(|o| Self::detach(&pin_root, &o.interface).unwrap_or(false))
                        .map(|o| o.interface.clone())
                        .collect();
                    let note = match undone.is_empty() {
                        true => String::new(),
                        false => format!(
                            "; detached again from {} (all or nothing)",
                            undone.join(", ")
                        ),
                    };
                    return Err(DatapathError::Setup(format!("{e}{note}")));
                }
            }
        }
        Ok(done)
    }

    /// Gives up the writer's role (and its lock) while the program stays loaded: another
    /// loader may then become the writer, as a restarted agent does.
    pub fn relinquish_writer(&mut self) {
        self.lock = None;
    }

    /// Refuses a change through a datapath opened only to read.
    pub(super) fn writable(&self) -> R<()> {
        match self.lock {
            Some(_) => Ok(()),
            None => Err(DatapathError::Setup(
                "this datapath was opened read-only (another process may be its writer)".into(),
            )),
        }
    }

    /// Whether a datapath's maps are pinned under `pin_root` (this layout).
    pub fn is_pinned(pin_root: &Path) -> bool {
        pin_root
            .join(format!("v{LAYOUT_VERSION}"))
            .join("maps")
            .join(names::MITIGATIONS)
            .exists()
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

    /// Rebuilds the user-space index from the maps, and repairs what a crash mid-update
    /// left behind: targets split between two generations, lookup arrays that disagree
    /// with the targets, keys, lists and talkers of generations no target points at.
    /// Only the writer repairs; a reader builds its index and leaves the maps alone.
    pub(super) fn adopt(&mut self) -> R<()> {
        let repair = self.lock.is_some();
        let mut index = Index::new(
            self.index.slots.len() as u32,
            self.index.rulesets.len() as u32,
            self.index.rules.len() as u32,
        );
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
        // leave a mitigation's targets split between two).
        let mut configs: HashMap<u32, MitigationConfig> = HashMap::new();
        let mut slot_of: HashMap<u32, u32> = HashMap::new();
        for (_, v) in &targets {
            let c = self
                .maps
                .mitigations
                .get(&v.ruleset, 0)
                .map_err(|e| DatapathError::bpf("MITIGATIONS", e))?;
            slot_of.insert(v.ruleset, c.slot);
            let newer = configs
                .get(&c.slot)
                .is_none_or(|o| c.generation > o.generation);
            if newer {
                configs.insert(c.slot, c);
            }
        }
        for config in configs.values() {
            index.slots.mark(config.slot, 1, true);
            index.rulesets.mark(config.ruleset, 1, true);
            index.rules.mark(config.rule_base, config.rule_count, true);
            let mut rule_names = Vec::with_capacity(config.rule_count as usize);
            let mut rule_actions = Vec::with_capacity(config.rule_count as usize);
            // Rules are stored in priority order: a key's first rule heads its chain.
            let mut acl_keys: Vec<IndexEntry> = Vec::new();
            for i in 0..config.rule_count {
                let r = self
                    .maps
                    .acl_rules
                    .get(&(config.rule_base + i), 0)
                    .map_err(|e| DatapathError::bpf("ACL_RULES", e))?;
                rule_names.push(r.name_hash);
                rule_actions.push(r.action);
                if !acl_keys.iter().any(|e| e.key == r.key) {
                    let wide = config
                        .tuples
                        .get(r.key.tuple as usize)
                        .is_some_and(|t| t.family == 6);
                    acl_keys.push(IndexEntry {
                        key: r.key,
                        wide,
                        head: config.rule_base + i,
                    });
                }
            }
            index.by_id.insert(
                config.id,
                Installed {
                    config: *config,
                    targets: Vec::new(),
                    acl_keys,
                    sources: Vec::new(),
                    rule_names,
                    rule_actions,
                },
            );
        }
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for (key, v) in targets {
            let Some(net) = key_prefix(&key) else {
                continue;
            };
            let Some(config) = slot_of.get(&v.ruleset).and_then(|s| configs.get(s)) else {
                continue;
            };
            if v.ruleset != config.ruleset && repair {
                // Finish the interrupted flip.
                let value = TargetValue {
                    ruleset: config.ruleset,
                };
                self.maps.insert_target(key, value)?;
            }
            match net {
                IpNet::V4(n) => v4.push((n, config.ruleset)),
                IpNet::V6(n) => v6.push(n),
            }
            index.targets_per_family[usize::from(net.addr().is_ipv6())] += 1;
            index.target_owner.insert(net, config.id);
            index
                .by_id
                .get_mut(&config.id)
                .expect("from configs")
                .targets
                .push(net);
        }
        let fixed_v4 = index
            .dst_v4
            .rebuild(&mut Repair(U32Words(&self.maps.dst_v4), repair), &v4);
        let fixed_v6 = index
            .summary_v6
            .rebuild(&mut Repair(U64Words(&self.maps.sum_v6), repair), &v6);

        let ruleset_id: HashMap<u32, u64> = configs.values().map(|c| (c.ruleset, c.id)).collect();
        let live_keys: Vec<IndexEntry> = index
            .by_id
            .values()
            .flat_map(|i| i.acl_keys.iter().copied())
            .collect();
        let fixed_acl = index.acl.rebuild(
            &mut Repair(U32Words(&self.maps.acl_index), repair),
            ACL_INDEX_SLOTS as usize,
            &live_keys,
        );

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
            match ruleset_id.get(&ruleset) {
                Some(id) => {
                    index.by_id.get_mut(id).expect("live").sources.push(k);
                    index.sources_live += 1;
                }
                None if repair => self.maps.remove_source(&k),
                None => {}
            }
        }
        if fixed_v4 + fixed_v6 + fixed_acl > 0 && repair {
            tracing::info!(
                dst_v4 = fixed_v4,
                summary_v6 = fixed_v6,
                acl_index = fixed_acl,
                "repaired lookup entries left by an interrupted update"
            );
        }
        // Talkers of slots no mitigation holds (a crash between removing a mitigation's
        // targets and clearing its talkers) would be credited to the slot's next owner.
        let live_slots: HashSet<u32> = configs.keys().copied().collect();
        self.index = index;
        if !repair {
            return Ok(());
        }
        if let Err(e) = self.clear_talkers(|s| !live_slots.contains(&s)) {
            tracing::warn!("clearing top talkers of unused slots: {e}");
        }
        Ok(())
    }

    /// The bpffs directory the datapath's layout directory lives in.
    pub(super) fn pin_root(&self) -> PathBuf {
        self.pin_dir
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("/"))
    }
}

/// The lookup arrays as `adopt` sees them: written only when it may repair.
struct Repair<A>(A, bool);

impl<W: Copy, A: Words<W>> Words<W> for Repair<A> {
    fn get(&self, i: usize) -> W {
        self.0.get(i)
    }
    fn set(&mut self, i: usize, w: W) {
        if self.1 {
            self.0.set(i, w);
        }
    }
}

/// Layout versions older than ours with pins under `pin_root`, newest first.
fn old_layouts(pin_root: &Path) -> Vec<u32> {
    let mut v: Vec<u32> = fs::read_dir(pin_root)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()?
                        .strip_prefix('v')?
                        .parse::<u32>()
                        .ok()
                })
                .filter(|v| *v < LAYOUT_VERSION)
                .collect()
        })
        .unwrap_or_default();
    v.sort_unstable_by(|a, b| b.cmp(a));
    v
}

/// Removes an older layout's maps once none of its links is left.
fn purge_layout_if_unused(pin_root: &Path, layout: u32) {
    let dir = pin_root.join(format!("v{layout}"));
    let links_left = fs::read_dir(dir.join("links"))
        .map(|rd| rd.count())
        .unwrap_or(0);
    if links_left == 0 && fs::remove_dir_all(&dir).is_ok() {
        tracing::info!(
            "removed the pins of datapath layout {layout}: no interface uses them any more"
        );
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

pub(super) fn cpus() -> R<usize> {
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

/// Checks interface names before anything is attached: each valid, existing in this
/// network namespace, and named once.
pub fn check_interfaces(ifaces: &[String]) -> R<()> {
    let mut seen = HashSet::new();
    for iface in ifaces {
        if iface.is_empty() || iface.len() >= libc::IFNAMSIZ || iface.contains('/') {
            return Err(DatapathError::Setup(format!(
                "{iface:?} is not a valid interface name"
            )));
        }
        if !seen.insert(iface) {
            return Err(DatapathError::Setup(format!(
                "interface {iface} is named twice"
            )));
        }
        if_index(iface)?;
    }
    Ok(())
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
        if private_mount_namespace() {
            // `ip netns exec` runs commands in a mount namespace of their own with a fresh
            // /sys: a bpffs mounted there, and every pin in it, vanishes when the command
            // exits (and the XDP program with its last link).
            return Err(DatapathError::Setup(
                "/sys/fs/bpf is not mounted in this process's private mount namespace (as \
                 `ip netns exec` makes): pins made here would vanish when the command exits, \
                 and the filter with them. Enter only the network namespace instead: \
                 `nsenter --net=/run/netns/NS dots-agent ...`"
                    .into(),
            ));
        }
        // SAFETY: constant NUL-terminated strings; mount(2) reads them only.
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

/// Whether this process runs in a mount namespace of its own, as `ip netns exec` makes
/// one per command: other than its parent's or init's (whichever can be read; false if
/// neither can). A bpffs mounted there goes when the command's processes have exited.
fn private_mount_namespace() -> bool {
    let ns = |pid: &str| fs::read_link(format!("/proc/{pid}/ns/mnt")).ok();
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() }.to_string();
    match ns("self") {
        Some(mine) => [ns(&parent), ns("1")]
            .into_iter()
            .flatten()
            .any(|other| other != mine),
        None => false,
    }
}

fn is_bpffs(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(p.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: an all-zero statfs is a valid out-buffer.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid path and out-pointer.
    unsafe { libc::statfs(c.as_ptr(), &mut st) == 0 && st.f_type as i64 == BPF_FS_MAGIC }
}
