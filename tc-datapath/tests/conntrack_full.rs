//! A full conntrack table, through BPF_PROG_TEST_RUN on the real programs
//! with a small table (8,192 entries): one pod floods new flows while
//! another holds established ones, plain and through a Service.
//!
//! - With each pod's share bounded (`ctPodLimit`, here a quarter of the
//!   table) the flood stops at its share: its new flows are dropped
//!   (`drop-ct-pod-limit`), and every entry of the other pod survives, its
//!   flows translated both ways as before.
//! - Without the bound, the LRU table makes room by evicting the least
//!   recently used entries, whoever holds them: the quiet pod's flows go
//!   first. The test measures how many survive and what their next packets
//!   meet, and prints it (docs/agent.md quotes it).
//!
//! The agent's recount of the shares is checked against the table.

mod common;

use common::ip;
use common::*;
use sluice_tc_datapath::config::{DatapathConfig, TableSizes};
use sluice_tc_datapath::layout::*;
use sluice_tc_datapath::loader::{self, EGRESS, INGRESS};
use std::collections::BTreeMap;

const TABLE: u32 = 8192;
const QUIET: &str = "10.244.1.5";
const FLOODER: &str = "10.244.1.6";
const PEER: &str = "10.244.3.3";
const VIP: &str = "10.96.0.10";
const BACKEND: &str = "10.244.2.7";
const FLOWS: u16 = 100;

struct Run {
    dp: Dp,
    /// The quiet pod's entries that survived the flood.
    survivors: usize,
    /// Its Service flows whose next reply was still reverse-NATed.
    replies_translated: usize,
    /// The flooder's new flows that were let in.
    flood_admitted: usize,
}

fn dp(limit: u32) -> Dp {
    let cfg = DatapathConfig {
        ct_pod_limit: Some(limit),
        tables: TableSizes {
            conntrack: TABLE,
            ..Default::default()
        },
        ..Default::default()
    };
    let (ebpf, maps) = loader::load_unpinned(&cfg).unwrap();
    let mut dp = Dp::from_parts(ebpf, maps);
    dp.pod_id(QUIET, 7);
    dp.pod_id(FLOODER, 8);
    dp.service(VIP, 80, PROTO_TCP, &[(1, BACKEND, 8080)]);
    dp
}

fn quiet_entries(dp: &Dp) -> usize {
    let q = addr(ip(QUIET));
    dp.maps
        .ct()
        .entries()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.saddr == q)
        .count()
}

fn run(limit: u32) -> Run {
    let dp = dp(limit);
    // The quiet pod: 100 plain connections and 100 through the Service,
    // each answered (established), 300 entries.
    for i in 0..FLOWS {
        let sport = 20000 + i;
        assert_eq!(
            dp.run(EGRESS, &Frame::new(QUIET, PEER, sport, 5432, PROTO_TCP, SYN, b""))
                .0,
            TC_ACT_OK
        );
        dp.run(INGRESS, &Frame::new(PEER, QUIET, 5432, sport, PROTO_TCP, SYN_ACK, b""));
        let sport = 30000 + i;
        let (_, out) = dp.run(EGRESS, &Frame::new(QUIET, VIP, sport, 80, PROTO_TCP, SYN, b""));
        assert_eq!(out.addrs().1, ip(BACKEND));
        let (_, back) = dp.run(
            INGRESS,
            &Frame::new(BACKEND, QUIET, 8080, sport, PROTO_TCP, SYN_ACK, b""),
        );
        assert_eq!(back.addrs().0, ip(VIP));
    }
    assert_eq!(quiet_entries(&dp), 3 * usize::from(FLOWS));
    // The flood: new UDP flows to nowhere, twice the table.
    let mut flood_admitted = 0;
    for i in 0..(2 * TABLE) {
        let dst = format!("10.{}.{}.{}", 100 + (i >> 16) as u8, (i >> 8) as u8, i as u8);
        let (v, _) = dp.run(EGRESS, &Frame::new(FLOODER, &dst, 40000, 53, PROTO_UDP, 0, b"x"));
        flood_admitted += usize::from(v == TC_ACT_OK);
    }
    let survivors = quiet_entries(&dp);
    let replies_translated = (0..FLOWS)
        .filter(|i| {
            let (_, back) = dp.run(
                INGRESS,
                &Frame::new(BACKEND, QUIET, 8080, 30000 + i, PROTO_TCP, TCP_ACK, b"y"),
            );
            back.addrs().0 == ip(VIP)
        })
        .count();
    Run {
        dp,
        survivors,
        replies_translated,
        flood_admitted,
    }
}

#[test]
fn a_flood_from_one_pod_keeps_to_its_share() {
    if !root("a_flood_from_one_pod_keeps_to_its_share") {
        return;
    }
    let limit = TABLE / 4;
    let mut r = run(limit);
    eprintln!(
        "ct full, limit {limit}/{TABLE}: flood admitted {}, quiet pod's entries surviving {}/{}, Service replies translated {}/{FLOWS}",
        r.flood_admitted,
        r.survivors,
        3 * FLOWS,
        r.replies_translated
    );
    assert_eq!(
        r.survivors,
        3 * usize::from(FLOWS),
        "every entry of the quiet pod survived"
    );
    assert_eq!(r.replies_translated, usize::from(FLOWS));
    assert_eq!(r.flood_admitted, limit as usize, "the flood stopped at its share");
    let dropped =
        r.dp.maps
            .observe()
            .count(Reason::DropCtPodLimit, Direction::Egress)
            .unwrap();
    assert_eq!(dropped as usize, 2 * TABLE as usize - limit as usize);
    // The agent's recount gives every pod its true share.
    let pods: BTreeMap<Addr, u32> = [(addr(ip(QUIET)), 7), (addr(ip(FLOODER)), 8)].into();
    let st = r.dp.maps.ct_mut().collect_with_shares(&pods, limit).unwrap();
    let shares = r.dp.maps.ct().pod_shares().unwrap();
    assert_eq!(shares.get(&7), Some(&(3 * u32::from(FLOWS))));
    assert_eq!(shares.get(&8), Some(&limit));
    assert_eq!((st.largest_share, st.pods_at_limit), (limit, 1));
    // A pod under its share opens new flows as ever.
    let (v, _) =
        r.dp.run(EGRESS, &Frame::new(QUIET, PEER, 29999, 5432, PROTO_TCP, SYN, b""));
    assert_eq!(v, TC_ACT_OK);
}

#[test]
fn without_a_share_a_flood_evicts_the_quiet_pods_flows() {
    if !root("without_a_share_a_flood_evicts_the_quiet_pods_flows") {
        return;
    }
    let r = run(0);
    eprintln!(
        "ct full, no limit: flood admitted {}, quiet pod's entries surviving {}/{}, Service replies translated {}/{FLOWS}",
        r.flood_admitted,
        r.survivors,
        3 * FLOWS,
        r.replies_translated
    );
    assert_eq!(r.flood_admitted, 2 * TABLE as usize, "new flows always get in");
    assert!(
        r.survivors < 3 * usize::from(FLOWS) && r.replies_translated < usize::from(FLOWS),
        "the LRU evicted the quiet pod's entries"
    );
}

/// A connection on a reused 4-tuple (a client cycling through its ports
/// faster than the closing timeout) finds the previous connection's entries
/// and rewrites them: no new entry, nothing more charged to the pod. With a
/// share of four, the pod reopens its plain and its Service connection
/// twenty times over; when each reopen was charged as a new entry, the
/// third round already met `drop-ct-pod-limit`.
#[test]
fn a_reused_port_takes_no_new_entry() {
    if !root("a_reused_port_takes_no_new_entry") {
        return;
    }
    let mut dp = dp(4);
    for round in 0..20 {
        let (v, _) = dp.run(EGRESS, &Frame::new(QUIET, PEER, 20000, 5432, PROTO_TCP, SYN, b""));
        assert_eq!(v, TC_ACT_OK, "plain SYN, round {round}");
        dp.run(INGRESS, &Frame::new(PEER, QUIET, 5432, 20000, PROTO_TCP, SYN_ACK, b""));
        let (v, _) = dp.run(EGRESS, &Frame::new(QUIET, PEER, 20000, 5432, PROTO_TCP, FIN_ACK, b""));
        assert_eq!(v, TC_ACT_OK, "plain FIN, round {round}");

        let (v, out) = dp.run(EGRESS, &Frame::new(QUIET, VIP, 30000, 80, PROTO_TCP, SYN, b""));
        assert_ne!(v, TC_ACT_SHOT, "Service SYN, round {round}");
        assert_eq!(out.addrs().1, ip(BACKEND), "round {round}");
        let (_, back) = dp.run(
            INGRESS,
            &Frame::new(BACKEND, QUIET, 8080, 30000, PROTO_TCP, SYN_ACK, b""),
        );
        assert_eq!(back.addrs().0, ip(VIP), "round {round}");
        let (_, back) = dp.run(
            INGRESS,
            &Frame::new(BACKEND, QUIET, 8080, 30000, PROTO_TCP, FIN_ACK, b""),
        );
        assert_eq!(back.addrs().0, ip(VIP), "round {round}");
    }
    assert_eq!(quiet_entries(&dp), 3, "one plain entry, two for the Service connection");
    assert_eq!(dp.maps.ct().pod_shares().unwrap().get(&7), Some(&3));
    // An expired entry (the collection may be deleting it) is replaced
    // through the map, not written in place; it is no new entry either.
    let (k, mut v) = dp
        .maps
        .ct()
        .entries()
        .unwrap()
        .into_iter()
        .find(|(k, _)| k.saddr == addr(ip(QUIET)) && k.daddr == addr(ip(PEER)))
        .expect("the plain entry");
    v.expires_ns = sluice_tc_datapath::maps::ct::now_ns() - 1;
    dp.maps.ct_mut().insert(k, v).unwrap();
    let (v, _) = dp.run(EGRESS, &Frame::new(QUIET, PEER, 20000, 5432, PROTO_TCP, SYN, b""));
    assert_eq!(v, TC_ACT_OK, "SYN over an expired entry");
    let e = dp.maps.ct().get(&k).unwrap().expect("the entry made again");
    assert!(e.expires_ns > sluice_tc_datapath::maps::ct::now_ns(), "a live entry");
    assert_eq!(quiet_entries(&dp), 3);
    assert_eq!(dp.maps.ct().pod_shares().unwrap().get(&7), Some(&3));
    let dropped = dp
        .maps
        .observe()
        .count(Reason::DropCtPodLimit, Direction::Egress)
        .unwrap();
    assert_eq!(dropped, 0);
}

/// The programs' deadlines are CLOCK_MONOTONIC, as the agent's collection
/// reads it: a new flow's entry expires its SYN timeout after the time it
/// was made, to within the clock's tick (the programs read jiffies scaled
/// by what the loader found, or the coarse clock).
#[test]
fn deadlines_are_on_the_monotonic_clock() {
    let dp = dp(0);
    let syn = DatapathConfig::default().ct_timeouts.tcp_syn().as_nanos() as u64;
    for port in [41000, 41001, 41002] {
        let before = sluice_tc_datapath::maps::ct::now_ns();
        let (v, _) = dp.run(EGRESS, &Frame::new(QUIET, PEER, port, 5432, PROTO_TCP, SYN, b""));
        let after = sluice_tc_datapath::maps::ct::now_ns();
        assert_eq!(v, TC_ACT_OK);
        let (_, e) = dp
            .maps
            .ct()
            .entries()
            .unwrap()
            .into_iter()
            .find(|(k, _)| k.sport == port.to_be() && k.daddr == addr(ip(PEER)))
            .expect("the flow's entry");
        let made = e.expires_ns - syn;
        // Neither clock is ever ahead of CLOCK_MONOTONIC. The coarse one is
        // the last tick's time (a tick is at most 10 ms); jiffies scaled
        // are up to two ticks behind (the loader's base is a tick before
        // its reading), three allowed (a jiffy a moment stale on an idle
        // CPU).
        let behind = sluice_tc_datapath::jiffies::clock().map_or(10_000_000, |c| 3 * c.tick_ns);
        assert!(
            made <= after && before.saturating_sub(made) <= behind,
            "made at {made}, between {before} and {after} (allowed: {behind} ns behind)"
        );
    }
}
