//! Backoff for throttled and failed cloud calls: exponential with full
//! jitter (each wait uniform in [0, cap]), so the nodes of a cluster
//! throttled together do not come back together.

use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    pub first: Duration,
    pub max: Duration,
    /// Attempts in all, the first included.
    pub attempts: u32,
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff {
            first: Duration::from_millis(200),
            max: Duration::from_secs(10),
            attempts: 8,
        }
    }
}

impl Backoff {
    /// The wait before attempt `n` (1: the first retry).
    pub fn wait(&self, n: u32) -> Duration {
        let cap = self
            .first
            .saturating_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX))
            .min(self.max);
        cap.mul_f64(fastrand::f64())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_and_stay_under_the_cap() {
        let b = Backoff {
            first: Duration::from_millis(100),
            max: Duration::from_secs(2),
            attempts: 10,
        };
        for n in 1..40 {
            let cap = Duration::from_millis(100 * (1u64 << (n - 1).min(20))).min(Duration::from_secs(2));
            for _ in 0..50 {
                assert!(b.wait(n) <= cap, "retry {n}");
            }
        }
        // Jittered: not every wait is the same.
        let waits: std::collections::BTreeSet<_> = (0..20).map(|_| b.wait(5)).collect();
        assert!(waits.len() > 1);
    }
}
