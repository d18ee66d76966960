//! When to collect expired conntrack entries (the collection itself is the
//! conntrack family's: `sluice_tc_datapath::maps::ct`). The datapath treats
//! an expired entry as gone and the LRU map evicts under pressure, so a
//! pass only keeps the table's count honest and frees room early: it can
//! come seldom when little expires, and often when much does.

use sluice_tc_datapath::maps::ct::GcStats;
use std::time::Duration;

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
            ..Default::default()
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
