//! Typed handles on the program's maps, and shared mappings of the arrays user space writes
//! entry by entry (`DST_V4`, the IPv6 summary, the ACL index).

use std::os::fd::{AsFd, AsRawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray, PerCpuHashMap};
use xdp_common::{
    map_names as names, AclRule, AclStats, Bucket, Counter, InterfaceSlot, MitigationConfig,
    MitigationStats, PrefixV4, PrefixV6, TalkerKey, TargetValue, ACL_INDEX_SLOTS, DST_V4_SLOTS,
    SUMMARY_SLOTS,
};

use super::super::compile::PrefixEntry;
use super::super::DatapathError;
use super::index::Words;

type R<T> = Result<T, DatapathError>;

/// A BPF array created with `BPF_F_MMAPABLE`, mapped shared into this process: a store here
/// is what the kernel's next lookup reads. Why not aya: aya 0.14 has no mmap of array maps,
/// and writing `DST_V4` (16M entries; a /8 target is 65,536 of them) one bpf(2) call per
/// entry would make installs and restarts slow.
pub struct Mmap {
    ptr: *mut libc::c_void,
    len: usize,
    /// Keeps the map alive while mapped (the mapping holds a reference too).
    _map: MapData,
}

// SAFETY: the mapping is plain shared memory; every access goes through atomics.
unsafe impl Send for Mmap {}
unsafe impl Sync for Mmap {}

impl Mmap {
    fn new(name: &str, map: Map, bytes: usize) -> R<Mmap> {
        let data = match map {
            Map::Array(d) => d,
            _ => return Err(DatapathError::Setup(format!("map {name} is not an array"))),
        };
        let info = data
            .info()
            .map_err(|e| DatapathError::bpf(format!("map {name} info"), e))?;
        let size = info.value_size() as usize * info.max_entries() as usize;
        if size != bytes {
            return Err(DatapathError::Setup(format!(
                "map {name} holds {size} bytes, expected {bytes} (pins of another build?)"
            )));
        }
        // SAFETY: mapping a BPF map fd; the kernel checks BPF_F_MMAPABLE and the size.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                bytes,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                data.fd().as_fd().as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(DatapathError::Setup(format!(
                "mapping {name} into memory: {} (the map must be created with BPF_F_MMAPABLE)",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Mmap {
            ptr,
            len: bytes,
            _map: data,
        })
    }

    fn u32s(&self) -> &[AtomicU32] {
        // SAFETY: page-aligned mapping of `len` bytes, alive as long as self.
        unsafe { std::slice::from_raw_parts(self.ptr as *const AtomicU32, self.len / 4) }
    }

    fn u64s(&self) -> &[AtomicU64] {
        // SAFETY: as above.
        unsafe { std::slice::from_raw_parts(self.ptr as *const AtomicU64, self.len / 8) }
    }
}

impl Drop for Mmap {
    fn drop(&mut self) {
        // SAFETY: unmapping what `new` mapped.
        unsafe { libc::munmap(self.ptr, self.len) };
    }
}

/// A mapped array as words. Release stores: what an entry points at (a generation, a rule)
/// was written by bpf(2) calls before the entry.
pub struct U32Words<'a>(pub &'a Mmap);
pub struct U64Words<'a>(pub &'a Mmap);

impl Words<u32> for U32Words<'_> {
    fn get(&self, i: usize) -> u32 {
        self.0.u32s()[i].load(Ordering::Acquire)
    }
    fn set(&mut self, i: usize, w: u32) {
        self.0.u32s()[i].store(w, Ordering::Release);
    }
}

impl Words<u64> for U64Words<'_> {
    fn get(&self, i: usize) -> u64 {
        self.0.u64s()[i].load(Ordering::Acquire)
    }
    fn set(&mut self, i: usize, w: u64) {
        self.0.u64s()[i].store(w, Ordering::Release);
    }
}

pub struct Maps {
    pub targets_v4: HashMap<MapData, PrefixV4, TargetValue>,
    pub targets_v6: HashMap<MapData, PrefixV6, TargetValue>,
    pub dst_v4: Mmap,
    /// Two `u64` words per summary slot (a [`xdp_common::LengthMask`]).
    pub sum_v6: Mmap,
    pub mitigations: Array<MapData, MitigationConfig>,
    pub mit_stats: PerCpuArray<MapData, MitigationStats>,
    /// `u32` slots, two per `u64` value.
    pub acl_index: Mmap,
    pub acl_rules: Array<MapData, AclRule>,
    pub acl_stats: PerCpuArray<MapData, AclStats>,
    pub acl_base: Array<MapData, AclStats>,
    pub mit_base: Array<MapData, MitigationStats>,
    pub acl_buckets: Array<MapData, Bucket>,
    pub sources_v4: HashMap<MapData, PrefixV4, u8>,
    pub sources_v6: HashMap<MapData, PrefixV6, u8>,
    pub scope_buckets: Array<MapData, Bucket>,
    pub amp_ports: Array<MapData, u64>,
    pub if_stats: PerCpuArray<MapData, InterfaceSlot>,
    pub top_talkers: PerCpuHashMap<MapData, TalkerKey, Counter>,
}

fn typed<M: TryFrom<Map, Error = aya::maps::MapError>>(name: &str, map: Map) -> R<M> {
    M::try_from(map)
        .map_err(|e| DatapathError::bpf(format!("map {name} has an unexpected type"), e))
}

impl Maps {
    /// Takes every map from `take` (a loaded object, or pins).
    pub fn from_source(mut take: impl FnMut(&'static str) -> R<Map>) -> R<Maps> {
        macro_rules! m {
            ($n:expr) => {
                typed($n, take($n)?)?
            };
        }
        Ok(Maps {
            targets_v4: m!(names::TARGETS_V4),
            targets_v6: m!(names::TARGETS_V6),
            dst_v4: Mmap::new(
                names::DST_V4,
                take(names::DST_V4)?,
                4 * DST_V4_SLOTS as usize,
            )?,
            sum_v6: Mmap::new(
                names::SUMMARY_V6,
                take(names::SUMMARY_V6)?,
                16 * SUMMARY_SLOTS as usize,
            )?,
            mitigations: m!(names::MITIGATIONS),
            mit_stats: m!(names::MITIGATION_STATS),
            acl_index: Mmap::new(
                names::ACL_INDEX,
                take(names::ACL_INDEX)?,
                4 * ACL_INDEX_SLOTS as usize,
            )?,
            acl_rules: m!(names::ACL_RULES),
            acl_stats: m!(names::ACL_STATS),
            acl_base: m!(names::ACL_BASE),
            mit_base: m!(names::MIT_BASE),
            acl_buckets: m!(names::ACL_BUCKETS),
            sources_v4: m!(names::SOURCES_V4),
            sources_v6: m!(names::SOURCES_V6),
            scope_buckets: m!(names::SCOPE_BUCKETS),
            amp_ports: m!(names::AMP_PORTS),
            if_stats: m!(names::IF_STATS),
            top_talkers: m!(names::TOP_TALKERS),
        })
    }

    pub fn insert_target(&mut self, k: PrefixEntry, v: TargetValue) -> R<()> {
        match k {
            PrefixEntry::V4(k) => self.targets_v4.insert(k, v, 0),
            PrefixEntry::V6(k) => self.targets_v6.insert(k, v, 0),
        }
        .map_err(|e| DatapathError::bpf("inserting a target", e))
    }

    pub fn remove_target(&mut self, k: PrefixEntry) {
        let _ = match k {
            PrefixEntry::V4(k) => self.targets_v4.remove(&k),
            PrefixEntry::V6(k) => self.targets_v6.remove(&k),
        };
    }

    pub fn insert_source(&mut self, k: &PrefixEntry) -> R<()> {
        match k {
            PrefixEntry::V4(k) => self.sources_v4.insert(k, 1, 0),
            PrefixEntry::V6(k) => self.sources_v6.insert(k, 1, 0),
        }
        .map_err(|e| DatapathError::bpf("source lists", e))
    }

    pub fn remove_source(&mut self, k: &PrefixEntry) {
        let _ = match k {
            PrefixEntry::V4(k) => self.sources_v4.remove(k),
            PrefixEntry::V6(k) => self.sources_v6.remove(k),
        };
    }
}
