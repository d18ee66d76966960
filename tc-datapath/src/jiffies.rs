//! The programs' clock as jiffies: `bpf_jiffies64()` is one load where
//! `bpf_ktime_get_coarse_ns()` reads the timekeeper under its seqcount and
//! normalises a timespec (11% of an established packet's program time in
//! a profile of `bench-attach`). Deadlines stay CLOCK_MONOTONIC
//! nanoseconds, which the agent's collection compares with its own clock:
//! the programs take `jiffies * tick_ns + base_ns`, the two constants
//! found here at load.
//!
//! The kernel moves jiffies on by whole ticks of the monotonic clock
//! (`tick_do_update_jiffies64`: `TICK_NSEC` apiece), so the two keep a
//! constant distance. `/proc/timer_list` prints the monotonic time and
//! jiffies in one read: two reads 50 ms apart give HZ (the one of the
//! kernel's choices whose ticks match the jiffies counted), and the
//! distance to within a tick, the coarse clock's own resolution. Like the
//! coarse clock, the programs' time is never ahead of CLOCK_MONOTONIC (at
//! most two ticks behind, the coarse clock one): a reading falls anywhere
//! in its jiffy, so the base is taken a tick before the best reading's.
//! So a deadline is never later than the fine clock's time at the packet
//! plus its timeout, as the agent's collection and the SNAT port holds
//! were written for (a clock ahead by 1 ms made a 65 s hold read 65.001
//! s). Where the file cannot be read (no `CONFIG_PROC_FS` timer list, no
//! root) the programs keep the coarse clock.

use std::io::BufRead;
use std::time::Duration;

/// What the programs need to read the monotonic clock from jiffies.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JiffiesClock {
    /// Nanoseconds a jiffy (the kernel's `TICK_NSEC`); 0: no such clock.
    pub tick_ns: u64,
    /// Monotonic nanoseconds at jiffy 0, modulo 2^64 (jiffies start near
    /// 2^32 at boot, so `jiffies * tick_ns` runs ahead of the clock and
    /// this wraps; the programs' u64 arithmetic wraps back).
    pub base_ns: u64,
}

/// The kernel's HZ choices (Kconfig `HZ_100` ... `HZ_1000`).
const HZ: [u64; 4] = [100, 250, 300, 1000];

/// How far apart the two readings are.
const SPAN: Duration = Duration::from_millis(50);

/// This node's jiffies clock, found once per process; None where it cannot
/// be (the programs then read the coarse clock).
pub fn clock() -> Option<JiffiesClock> {
    static CLOCK: std::sync::OnceLock<Option<JiffiesClock>> = std::sync::OnceLock::new();
    *CLOCK.get_or_init(|| {
        let found = read_timer_list().and_then(|first| {
            std::thread::sleep(SPAN);
            from_readings(first, read_timer_list()?)
        });
        match found {
            Some(c) => tracing::info!(tick_ns = c.tick_ns, "the programs read the clock from jiffies"),
            None => tracing::info!(
                "no timer list readable ({}): the programs read the coarse clock",
                TIMER_LISTS.join(", ")
            ),
        }
        found
    })
}

/// Where the timer list is read: the process's own `/proc`, then the
/// host's as the agent's DaemonSet mounts it (a container runtime masks
/// the container's own with an empty file).
const TIMER_LISTS: [&str; 2] = ["/proc/timer_list", "/host/proc/timer_list"];

/// (monotonic ns, jiffies) from one read of the timer list: its header's
/// "now at N nsecs" and the first "jiffies: N" (the first CPU's section).
/// Only the first lines are generated and read.
fn read_timer_list() -> Option<(u64, u64)> {
    TIMER_LISTS.iter().find_map(|path| {
        let f = std::fs::File::open(path).ok()?;
        parse_timer_list(std::io::BufReader::new(f))
    })
}

fn parse_timer_list(r: impl BufRead) -> Option<(u64, u64)> {
    let mut now = None;
    for line in r.lines().take(10_000) {
        let line = line.ok()?;
        if let Some(rest) = line.strip_prefix("now at ") {
            now = rest.strip_suffix(" nsecs")?.trim().parse().ok();
        } else if let Some(rest) = line.strip_prefix("jiffies: ") {
            return Some((now?, rest.trim().parse().ok()?));
        }
    }
    None
}

/// The clock two readings give: the one HZ whose ticks in the time between
/// them are the jiffies counted, to within one (a reading falls anywhere
/// between two ticks; 50 ms tell 250 from 300), and the base of the
/// reading whose jiffy lagged its time least, a tick earlier: that reading
/// was up to a tick past its jiffy's start, so the programs' time is never
/// after the clock's.
fn from_readings((t0, j0): (u64, u64), (t1, j1): (u64, u64)) -> Option<JiffiesClock> {
    let dt = t1.checked_sub(t0).filter(|d| *d > 0)?;
    let dj = j1.checked_sub(j0)?;
    let fits = |hz: &&u64| (dj as f64 - **hz as f64 * dt as f64 / 1e9).abs() <= 1.05;
    let mut fitting = HZ.iter().filter(fits);
    let hz = *fitting.next()?;
    if fitting.next().is_some() {
        return None;
    }
    let tick_ns = (1_000_000_000 + hz / 2) / hz;
    let base = |t: u64, j: u64| t.wrapping_sub(j.wrapping_mul(tick_ns));
    // A reading's time is at or after its jiffy's tick: the smaller base
    // (as a distance from the other, wrapping) lagged less.
    let (b0, b1) = (base(t0, j0), base(t1, j1));
    let least = if b1.wrapping_sub(b0) as i64 >= 0 { b0 } else { b1 };
    let base_ns = least.wrapping_sub(tick_ns);
    Some(JiffiesClock { tick_ns, base_ns })
}

impl JiffiesClock {
    /// The monotonic time at jiffy `j`, as the programs compute it.
    pub fn at(&self, j: u64) -> u64 {
        j.wrapping_mul(self.tick_ns).wrapping_add(self.base_ns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "Timer List Version: v0.10
HRTIMER_MAX_CLOCK_BASES: 8
now at 14157401762692 nsecs

cpu: 0
 clock 0:
  .base:       0000000026017fac
  .idle_jiffies   : 4298431552
jiffies: 4298431569
";

    #[test]
    fn the_header_time_and_the_first_jiffies_are_read() {
        assert_eq!(
            parse_timer_list(SAMPLE.as_bytes()),
            Some((14_157_401_762_692, 4_298_431_569))
        );
        assert_eq!(parse_timer_list("jiffies: 5\n".as_bytes()), None, "no time before it");
        assert_eq!(parse_timer_list("now at x nsecs\njiffies: 5\n".as_bytes()), None);
    }

    /// Readings at each HZ, the first at every phase of its tick and the
    /// second 50 to 57 ms later (a sleep overshoots): HZ is always found,
    /// the jiffies counted being one more or less than the time says.
    #[test]
    fn hz_is_found_at_any_phase_and_span() {
        for hz in HZ {
            let tick = (1_000_000_000 + hz / 2) / hz;
            let base: u64 = 123_456_789;
            for phase in 0..10 {
                for span in [50_000_000, 50_000_001, 53_000_000, 57_000_000] {
                    let t0 = base + 1_000 * tick + phase * tick / 10;
                    let t1 = t0 + span;
                    let j = |t: u64| (t - base) / tick;
                    let c = from_readings((t0, j(t0)), (t1, j(t1)));
                    assert_eq!(
                        c.map(|c| c.tick_ns),
                        Some(tick),
                        "HZ {hz}, phase {phase}/10, span {span}"
                    );
                }
            }
        }
    }

    /// Readings of a kernel at each HZ, each time a fraction of a tick past
    /// its jiffy: HZ is found, and the clock gives any time of a jiffy to
    /// within a tick, never after it.
    #[test]
    fn hz_and_base_come_from_two_readings() {
        for hz in HZ {
            let tick = (1_000_000_000 + hz / 2) / hz;
            let j0: u64 = (1 << 32) - 300 * hz + 12_345;
            let origin: u64 = 5_000_000_000; // monotonic ns at jiffy j0
            let at = |j: u64, past: u64| (origin + (j - j0) * tick + past, j);
            let r0 = at(j0, tick / 3);
            let dj = 50_000_000 / tick;
            let r1 = at(j0 + dj, tick / 7);
            let c = from_readings(r0, r1).unwrap_or_else(|| panic!("HZ {hz}"));
            assert_eq!(c.tick_ns, tick, "HZ {hz}");
            for j in [j0, j0 + dj, j0 + 1_000_000] {
                let (start, _) = at(j, 0);
                let est = c.at(j);
                // From its jiffy's first nanosecond to its last.
                assert!(est <= start && start - est < tick, "HZ {hz}: {est} for {start}");
            }
            assert_eq!(
                c.at(j0),
                origin + tick / 7 - tick,
                "a tick before the reading that lagged least"
            );
        }
    }

    #[test]
    fn readings_that_fit_no_hz_give_no_clock() {
        // 50 ms, 20 jiffies: 400 Hz, no kernel's.
        assert_eq!(from_readings((0, 100), (50_000_000, 120)), None);
        // 4 ms, 1 jiffy: 250 or 300 (or 100) would all count that.
        assert_eq!(from_readings((0, 100), (4_000_000, 101)), None);
        assert_eq!(from_readings((10, 100), (10, 100)), None, "no time passed");
        assert_eq!(from_readings((10, 100), (5, 101)), None, "time went back");
    }

    /// On this machine: the clock found is behind CLOCK_MONOTONIC by at
    /// most two ticks, three allowed (a jiffy may be read a moment stale),
    /// and not ahead of it. Only a timer list that cannot be read (not
    /// root) skips it; one that can must give a clock.
    #[test]
    fn the_clock_found_here_follows_the_monotonic_clock() {
        if read_timer_list().is_none() {
            eprintln!("SKIP: no timer list readable here (not root?): the programs keep the coarse clock");
            return;
        }
        let c = clock().expect("a readable timer list gives a clock");
        let (t, j) = read_timer_list().expect("read a moment ago");
        let est = c.at(j);
        assert!(
            est <= t && t - est <= 3 * c.tick_ns,
            "{est} against {t} (tick {})",
            c.tick_ns
        );
    }
}
