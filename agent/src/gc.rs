//! Conntrack garbage collection. The datapath treats an expired entry as
//! gone (a packet that finds one opens a new flow), and the LRU map evicts
//! under pressure; collection keeps the table's count honest for the tools
//! and the metrics, and frees room before eviction has to pick victims.
//!
//! An entry is deleted only if it is still the expired value the scan saw:
//! it is read again just before the delete, so one the datapath refreshed
//! or re-created since (a new connection on the same ports) is kept. (BPF
//! hashes have no compare-and-delete; the window left is the microseconds
//! between that read and the delete.)

use sluice_tc_datapath::layout::CtKey;
use sluice_tc_datapath::maps::{Maps, MapsError};
use std::time::Duration;

/// What one pass found.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GcStats {
    pub scanned: usize,
    pub removed: usize,
    /// Expired at the scan, alive again at the delete.
    pub refreshed: usize,
}

/// The datapath's clock: `bpf_ktime_get_ns` is CLOCK_MONOTONIC.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: a valid timespec for the kernel to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The entries expired at `now_ns`, with the expiry each had.
pub fn scan(maps: &Maps, now_ns: u64) -> Result<(usize, Vec<(CtKey, u64)>), MapsError> {
    let all = maps.conntrack()?;
    let expired = all
        .iter()
        .filter(|(_, v)| v.expires_ns <= now_ns)
        .map(|(k, v)| (*k, v.expires_ns))
        .collect();
    Ok((all.len(), expired))
}

/// Delete the scanned entries that still hold what the scan saw.
pub fn delete(maps: &mut Maps, expired: &[(CtKey, u64)], stats: &mut GcStats) -> Result<(), MapsError> {
    for (k, seen) in expired {
        match maps.ct.get(k, 0) {
            Ok(v) if v.expires_ns == *seen => {
                if maps.remove_conntrack(k)? {
                    stats.removed += 1;
                }
            }
            Ok(_) => stats.refreshed += 1,
            Err(_) => {} // gone already (evicted, or the datapath replaced it)
        }
    }
    Ok(())
}

/// One pass.
pub fn collect(maps: &mut Maps) -> Result<GcStats, MapsError> {
    let (scanned, expired) = scan(maps, monotonic_ns())?;
    let mut st = GcStats {
        scanned,
        ..Default::default()
    };
    delete(maps, &expired, &mut st)?;
    Ok(st)
}

/// The time to the next pass: shorter when a pass found much to collect,
/// longer when it found little, within [`MIN`, `MAX`].
#[derive(Debug, Clone, Copy)]
pub struct Interval(Duration);

pub const MIN: Duration = Duration::from_secs(5);
pub const MAX: Duration = Duration::from_secs(300);

impl Default for Interval {
    fn default() -> Self {
        Interval(Duration::from_secs(30))
    }
}

impl Interval {
    pub fn get(&self) -> Duration {
        self.0
    }

    pub fn adapt(&mut self, st: &GcStats) -> Duration {
        let share = st.removed as f64 / st.scanned.max(1) as f64;
        self.0 = if share > 0.25 {
            (self.0 / 2).max(MIN)
        } else if share < 0.05 {
            (self.0 * 2).min(MAX)
        } else {
            self.0
        };
        self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_follows_what_is_found() {
        let mut i = Interval::default();
        let st = |scanned, removed| GcStats {
            scanned,
            removed,
            refreshed: 0,
        };
        assert_eq!(i.adapt(&st(100, 50)), Duration::from_secs(15));
        for _ in 0..10 {
            i.adapt(&st(100, 90));
        }
        assert_eq!(i.get(), MIN);
        assert_eq!(i.adapt(&st(100, 10)), MIN, "in between: kept");
        for _ in 0..20 {
            i.adapt(&st(100, 0));
        }
        assert_eq!(i.get(), MAX);
        assert_eq!(i.adapt(&st(0, 0)), MAX, "an empty table: the longest wait");
    }
}
