//! Rate limits shared by all CPUs, as GCRA buckets (one u64 of state each).
//!
//! A bucket holds its theoretical arrival time (TAT). Admitting `units` advances the TAT by
//! `units x interval` with an atomic add; a packet is refused when that would put the TAT
//! more than the tolerance (burst x interval) ahead of now. One bucket per key, shared by
//! every CPU, so traffic that lands on a single queue still gets the whole rate.
//!
//! The only non-atomic step is resetting an idle bucket (TAT in the past) to now. Two CPUs
//! can race there, and a reset can overwrite another CPU's concurrent add, so each idle->busy
//! transition can admit at most one extra packet per other CPU. While a bucket is saturated
//! (the case that matters under attack) the TAT stays ahead of now, no reset happens, and
//! accounting is exact.

use core::intrinsics::{atomic_xadd, AtomicOrdering};

use aya_ebpf::maps::LruHashMap;
use xdp_common::{rate_unit, Bucket, RateKey, RateSpec, RATE_FP_SHIFT};

#[inline(always)]
fn cost(spec: &RateSpec, len: u64) -> u64 {
    let units = if spec.unit == rate_unit::BYTES {
        len & 0xffff
    } else {
        1
    };
    // units <= 65535 and interval_fp <= 1e9 << 16 keep this inside u64.
    units.wrapping_mul(spec.interval_fp) >> RATE_FP_SHIFT
}

#[inline(always)]
pub fn admit(bucket: *mut Bucket, spec: &RateSpec, len: u64, now: u64) -> bool {
    if spec.interval_fp == u64::MAX {
        return false;
    }
    let c = cost(spec, len);
    // SAFETY: `bucket` points into a map value that stays valid for this program run.
    let tat_ptr = unsafe { core::ptr::addr_of_mut!((*bucket).tat) };
    let mut tat = unsafe { core::ptr::read_volatile(tat_ptr) };
    if tat < now {
        unsafe { core::ptr::write_volatile(tat_ptr, now) };
        tat = now;
    }
    if tat - now + c > spec.tolerance_ns {
        return false;
    }
    // SAFETY: map values are 8-byte aligned. The result is unused, so this is a plain
    // BPF atomic add (no fetch), which every BPF CPU version supports.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(tat_ptr, c) };
    true
}

/// Per-source bucket in an LRU map: a new source starts with a full burst.
#[inline(always)]
pub fn admit_source(
    map: &LruHashMap<RateKey, Bucket>,
    slot: u32,
    kind: u32,
    src: &[u32; 4],
    spec: &RateSpec,
    len: u64,
    now: u64,
) -> bool {
    if spec.interval_fp == u64::MAX {
        return false;
    }
    let key = RateKey {
        slot,
        kind,
        addr: *src,
    };
    match map.get_ptr_mut(&key) {
        Some(b) => admit(b, spec, len, now),
        None => {
            if cost(spec, len) > spec.tolerance_ns {
                return false;
            }
            let fresh = Bucket {
                tat: now + cost(spec, len),
            };
            // BPF_NOEXIST: if another CPU created it first, keep theirs.
            let _ = map.insert(&key, &fresh, 1);
            true
        }
    }
}
