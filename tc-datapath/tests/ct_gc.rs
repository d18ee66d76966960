//! Conntrack collection against a loaded datapath's real map: expired
//! entries go, live ones stay, and one the datapath refreshed between the
//! scan and the delete stays too.

mod common;

use sluice_tc_datapath::config::DatapathConfig;
use sluice_tc_datapath::layout::{CT_FLOW, CtKey, CtValue, PROTO_TCP, addr};
use sluice_tc_datapath::loader;
use sluice_tc_datapath::maps::ct::{GcStats, now_ns};

fn key(sport: u16) -> CtKey {
    CtKey {
        saddr: addr("10.244.1.5".parse().unwrap()),
        daddr: addr("10.244.2.7".parse().unwrap()),
        sport: sport.to_be(),
        dport: 80u16.to_be(),
        proto: PROTO_TCP,
        kind: CT_FLOW,
        pad0: 0,
    }
}

fn entry(expires_ns: u64) -> CtValue {
    CtValue {
        expires_ns,
        ..Default::default()
    }
}

#[test]
fn expired_entries_go_refreshed_ones_stay() {
    if !common::root("expired_entries_go_refreshed_ones_stay") {
        return;
    }
    let cfg = DatapathConfig::default();
    let (_ebpf, mut maps) = loader::load_unpinned(&cfg).unwrap();
    let ct = maps.ct_mut();
    let now = now_ns();
    let hour = 3_600_000_000_000;
    ct.insert(key(1000), entry(now - 1)).unwrap(); // expired
    ct.insert(key(1001), entry(now + hour)).unwrap(); // alive
    // Saturating: the monotonic clock starts at boot, and a machine up for
    // less than an hour is no reason to fail.
    ct.insert(key(1002), entry(now.saturating_sub(hour))).unwrap(); // expired, refreshed below
    let (scanned, expired) = ct.scan(now_ns()).unwrap();
    assert_eq!(scanned, 3);
    let mut found: Vec<u16> = expired.iter().map(|e| u16::from_be(e.key.sport)).collect();
    found.sort();
    assert_eq!(found, [1000, 1002]);
    // A packet of 1002's flow comes between the scan and the delete.
    ct.insert(key(1002), entry(now + hour)).unwrap();
    let mut st = GcStats::default();
    ct.delete_expired(&expired, &mut st).unwrap();
    assert_eq!((st.removed, st.refreshed), (1, 1));
    let mut left: Vec<u16> = ct
        .entries()
        .unwrap()
        .iter()
        .map(|(k, _)| u16::from_be(k.sport))
        .collect();
    left.sort();
    assert_eq!(left, [1001, 1002], "the live and the refreshed entry stay");
    // A full pass now finds nothing to take.
    let st = ct.collect().unwrap();
    assert_eq!((st.scanned, st.removed), (2, 0));
}
