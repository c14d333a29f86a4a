//! Top talkers: the sources of dropped traffic the program samples into `TOP_TALKERS` (one
//! drop in `TALKER_SAMPLE`, per CPU), read back, scaled and ranked per mitigation slot.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use aya::maps::{IterableMap, MapError};
use xdp_common::{Counter, TalkerKey, MAX_TALKERS, TALKER_SAMPLE};

use super::super::DatapathError;
use super::{XdpDatapath, R};

impl XdpDatapath {
    /// Top talkers of every installed mitigation, from one walk of the map (a status of
    /// many mitigations would otherwise walk it once per mitigation).
    pub fn top_talkers_all(&self, n: usize) -> R<HashMap<u64, Vec<(IpAddr, Counter)>>> {
        let slot_id: HashMap<u32, u64> = self
            .index
            .by_id
            .iter()
            .map(|(id, i)| (i.config.slot, *id))
            .collect();
        let by_slot = self.talkers_of_slots(|s| slot_id.contains_key(&s), n)?;
        Ok(by_slot
            .into_iter()
            .filter_map(|(s, v)| Some((*slot_id.get(&s)?, v)))
            .collect())
    }

    /// Ranked, scaled talkers per slot for the slots `keep` selects.
    pub(super) fn talkers_of_slots(
        &self,
        keep: impl Fn(u32) -> bool,
        n: usize,
    ) -> R<HashMap<u32, Vec<(IpAddr, Counter)>>> {
        let mut by_slot: HashMap<u32, Vec<(IpAddr, Counter)>> = HashMap::new();
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
            super::super::rank_talkers(v, n);
        }
        Ok(by_slot)
    }

    /// Keys of `TOP_TALKERS` whose slot passes `keep`, from one bounded walk: when the key
    /// in hand is evicted mid-walk the kernel restarts from the first key, so the walk stops
    /// after twice the capacity (duplicates from a restart are dropped).
    fn talker_keys(&self, keep: impl Fn(u32) -> bool) -> R<Vec<TalkerKey>> {
        let map = &self.maps.top_talkers;
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
        let mut out = Vec::with_capacity(keys.len());
        for k in keys {
            let values = match self.maps.top_talkers.get(&k, 0) {
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
    pub(super) fn clear_talkers(&mut self, dead: impl Fn(u32) -> bool) -> R<usize> {
        let keys = self.talker_keys(dead)?;
        for k in &keys {
            let _ = self.maps.top_talkers.remove(k); // already gone (evicted) is fine
        }
        Ok(keys.len())
    }
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
