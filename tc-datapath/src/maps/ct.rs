//! Connection tracking: the entries, and their collection.
//!
//! The datapath treats an expired entry as gone (a packet that finds one
//! opens a new flow), and the LRU map evicts under pressure; collection
//! keeps the table's count honest for the tools and the metrics, and frees
//! room before eviction has to pick victims.
//!
//! An entry is deleted only if it is still the expired value the scan saw:
//! it is read again just before the delete, so one the datapath refreshed
//! or re-created since (a new connection on the same ports) is kept. (BPF
//! hashes have no compare-and-delete; the window left is the microseconds
//! between that read and the delete.)

use super::{CT, CT_PODS, MapsError, Source, capacity, err, lookup, removed};
use crate::layout::{Addr, CT_SERVICE, CtKey, CtPodValue, CtValue, PROTO_TCP};
use aya::maps::{HashMap, MapData};
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

/// Now on the datapath's clock, CLOCK_MONOTONIC (the programs read it at
/// the last tick, `bpf_ktime_get_coarse_ns`: at most a tick behind this).
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec for the kernel to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// What one collection pass found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcStats {
    pub scanned: usize,
    pub removed: usize,
    /// Expired at the scan, alive again at the delete.
    pub refreshed: usize,
    /// The largest share one pod holds, and how many pods hold their limit
    /// (only with the shares counted: [`CtMaps::collect_with_shares`]).
    pub largest_share: u32,
    pub pods_at_limit: usize,
}

/// What forgetting removed backends did to the table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Forgotten {
    /// TCP connections marked as having lost their backend: the next
    /// segment the client sends is answered with a reset.
    pub marked: usize,
    /// Entries removed: the other protocols' (the next datagram picks a
    /// live backend) and the backend side of every flow.
    pub removed: usize,
}

/// An entry the scan found expired, with the deadline it had then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expired {
    pub key: CtKey,
    pub seen_expiry: u64,
}

pub struct CtMaps {
    ct: HashMap<MapData, CtKey, CtValue>,
    /// Each pod's share; absent where programs older than it are pinned.
    pods: Option<HashMap<MapData, u32, CtPodValue>>,
}

impl CtMaps {
    pub fn open(src: &mut Source<'_>) -> Result<CtMaps, MapsError> {
        Ok(CtMaps {
            ct: src.map(&CT)?,
            pods: src.map(&CT_PODS).ok(),
        })
    }

    /// Each pod's share as the programs count it (endpoint id -> entries).
    pub fn pod_shares(&self) -> Result<BTreeMap<u32, u32>, MapsError> {
        let Some(m) = &self.pods else {
            return Ok(BTreeMap::new());
        };
        m.iter()
            .map(|r| r.map(|(k, v)| (k, v.entries)))
            .collect::<Result<_, _>>()
            .map_err(err(CT_PODS.name))
    }

    /// Every entry (a read of the whole table at once: the batch
    /// syscalls, `raw_map`).
    pub fn entries(&self) -> Result<Vec<(CtKey, CtValue)>, MapsError> {
        use aya::maps::IterableMap;
        Ok(crate::raw_map::entries(self.ct.map(), CT.name)?)
    }

    /// Every entry handed to `each` as the read goes (a chunk held at a
    /// time, not the table: 88 bytes an entry, 1.5 GB at 2^24).
    pub fn for_each(&self, each: impl FnMut(CtKey, CtValue)) -> Result<(), MapsError> {
        use aya::maps::IterableMap;
        Ok(crate::raw_map::for_each(self.ct.map(), CT.name, each)?)
    }

    pub fn get(&self, k: &CtKey) -> Result<Option<CtValue>, MapsError> {
        lookup(&self.ct, &CT, k)
    }

    /// Write one entry (state carried over, tests).
    pub fn insert(&mut self, k: CtKey, v: CtValue) -> Result<(), MapsError> {
        self.ct.insert(k, v, 0).map_err(err(CT.name))
    }

    /// The table's size (entries it holds at most).
    pub fn capacity(&self) -> u32 {
        capacity(&self.ct)
    }

    /// The memory the kernel accounts to the table, in bytes.
    pub fn memory(&self) -> Result<u64, MapsError> {
        use aya::maps::IterableMap;
        super::memlock(self.ct.map(), &CT)
    }

    /// Remove one entry; false when it was not there.
    pub fn remove(&mut self, k: &CtKey) -> Result<bool, MapsError> {
        removed(self.ct.remove(k), &CT)
    }

    /// Remove every entry; returns how many.
    pub fn flush(&mut self) -> Result<usize, MapsError> {
        let mut keys = Vec::new();
        self.for_each(|k, _| keys.push(k))?;
        let mut n = 0;
        for k in &keys {
            n += usize::from(self.remove(k)?);
        }
        Ok(n)
    }

    /// Remove every entry with one of `addrs` at either end (a pod's
    /// flows); returns how many.
    pub fn remove_involving(&mut self, addrs: &[IpAddr]) -> Result<usize, MapsError> {
        let want: Vec<Addr> = addrs.iter().map(|a| crate::layout::addr(*a)).collect();
        let mut keys = Vec::new();
        self.for_each(|k, _| {
            if want.contains(&k.saddr) || want.contains(&k.daddr) {
                keys.push(k)
            }
        })?;
        let mut n = 0;
        for k in &keys {
            n += usize::from(self.remove(k)?);
        }
        Ok(n)
    }

    /// How many entries there are, and those expired at `now_ns`.
    pub fn scan(&self, now_ns: u64) -> Result<(usize, Vec<Expired>), MapsError> {
        self.scan_with(now_ns, |_| {})
    }

    /// [`CtMaps::scan`], handing every live entry's key to `live`.
    fn scan_with(&self, now_ns: u64, mut live: impl FnMut(&CtKey)) -> Result<(usize, Vec<Expired>), MapsError> {
        let (mut scanned, mut expired) = (0, Vec::new());
        self.for_each(|key, v| {
            scanned += 1;
            if v.expires_ns <= now_ns {
                expired.push(Expired {
                    key,
                    seen_expiry: v.expires_ns,
                });
            } else {
                live(&key);
            }
        })?;
        Ok((scanned, expired))
    }

    /// Delete the scanned entries that still hold what the scan saw.
    pub fn delete_expired(&mut self, expired: &[Expired], stats: &mut GcStats) -> Result<(), MapsError> {
        for e in expired {
            match self.get(&e.key)? {
                Some(v) if v.expires_ns == e.seen_expiry => stats.removed += usize::from(self.remove(&e.key)?),
                Some(_) => stats.refreshed += 1,
                None => {} // gone already (evicted, or the datapath replaced it)
            }
        }
        Ok(())
    }

    /// Forget the backends `gone` (removed from the Service maps): a TCP
    /// connection's entry keeps its place with backend 0, which the
    /// datapath reads as "its backend is gone" (it resets the connection at
    /// its next segment instead of sending it to a backend that does not
    /// know it); every other entry naming them goes. After this no entry
    /// names their ids, so an id given out again cannot inherit a flow.
    pub fn forget_backends(&mut self, gone: &BTreeSet<u32>) -> Result<Forgotten, MapsError> {
        if gone.is_empty() {
            return Ok(Forgotten::default());
        }
        self.forget_backends_where(|id| gone.contains(&id))
    }

    /// The same for every backend id but 0 and those in `live` (after a
    /// start, when what was removed before is not known).
    pub fn forget_backends_except(&mut self, live: &BTreeSet<u32>) -> Result<Forgotten, MapsError> {
        self.forget_backends_where(|id| id != 0 && !live.contains(&id))
    }

    fn forget_backends_where(&mut self, gone: impl Fn(u32) -> bool) -> Result<Forgotten, MapsError> {
        let mut out = Forgotten::default();
        let mut naming = Vec::new();
        self.for_each(|k, v| {
            if gone(v.backend_id) {
                naming.push((k, v))
            }
        })?;
        for (k, mut v) in naming {
            if k.kind == CT_SERVICE && k.proto == PROTO_TCP {
                v.backend_id = 0;
                v.nh_ifindex = 0;
                v.nh_mac = [0; 6];
                self.insert(k, v)?;
                out.marked += 1;
            } else {
                out.removed += usize::from(self.remove(&k)?);
            }
        }
        Ok(out)
    }

    /// One collection pass.
    pub fn collect(&mut self) -> Result<GcStats, MapsError> {
        let (scanned, expired) = self.scan(now_ns())?;
        let mut st = GcStats {
            scanned,
            ..Default::default()
        };
        self.delete_expired(&expired, &mut st)?;
        Ok(st)
    }

    /// One collection pass that also sets every pod's true share: the
    /// live entries whose local side (the key's source, see layout.h) is
    /// one of `pods` (address -> endpoint id). The programs only add to a
    /// share; evictions and expiries come off here. `limit` is the
    /// programs' `ct_pod_limit`, for the report.
    pub fn collect_with_shares(&mut self, pods: &BTreeMap<Addr, u32>, limit: u32) -> Result<GcStats, MapsError> {
        let mut shares: BTreeMap<u32, u32> = BTreeMap::new();
        let (scanned, expired) = self.scan_with(now_ns(), |key| {
            if let Some(id) = pods.get(&key.saddr) {
                *shares.entry(*id).or_default() += 1;
            }
        })?;
        let mut st = GcStats {
            scanned,
            largest_share: shares.values().copied().max().unwrap_or(0),
            pods_at_limit: shares.values().filter(|n| limit > 0 && **n >= limit).count(),
            ..Default::default()
        };
        self.delete_expired(&expired, &mut st)?;
        self.set_pod_shares(&shares)?;
        Ok(st)
    }

    /// Make the programs' shares `shares`: counted pods set, the rest gone.
    pub fn set_pod_shares(&mut self, shares: &BTreeMap<u32, u32>) -> Result<(), MapsError> {
        let Some(m) = &mut self.pods else { return Ok(()) };
        let held: Vec<u32> = m.keys().collect::<Result<_, _>>().map_err(err(CT_PODS.name))?;
        for id in held.iter().filter(|id| !shares.contains_key(id)) {
            removed(m.remove(id), &CT_PODS)?;
        }
        for (id, n) in shares {
            m.insert(id, CtPodValue { entries: *n, pad0: 0 }, 0)
                .map_err(err(CT_PODS.name))?;
        }
        Ok(())
    }
}
