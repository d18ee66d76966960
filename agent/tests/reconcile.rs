//! `ServiceSync` against a loaded datapath's real maps, after any sequence
//! of translations: the maps hold exactly the wanted frontends, each with
//! its active backends, and exactly the backends some frontend uses (none
//! left behind, none taken from a frontend that still needs it), whether
//! the backends in use were counted from scratch or kept up to date; a
//! backend two frontends share says active only when both give it new
//! connections; a restarted `ServiceSync` over the same maps writes nothing.

mod common;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use sluice_agent::services::{BackendAddr, Backends, Frontend, ServiceSync};
use sluice_tc_datapath::config::DatapathConfig;
use sluice_tc_datapath::layout::{PROTO_TCP, PROTO_UDP, SVC_SCOPE_EXTERNAL};
use sluice_tc_datapath::loader;
use sluice_tc_datapath::maps::Maps;
use sluice_tc_datapath::maps::lb::Algorithm;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

type Want = BTreeMap<Frontend, Backends>;

/// A translation over small universes, so that frontends come and go and
/// backends are shared between frontends and passes.
fn want() -> impl Strategy<Value = Want> {
    let frontend = (0..3u8, prop_oneof![Just(80u16), Just(53)], any::<bool>(), any::<bool>()).prop_map(
        |(v, port, tcp, external)| Frontend {
            vip: IpAddr::from([10, 96, 0, v]),
            port,
            proto: if tcp { PROTO_TCP } else { PROTO_UDP },
            external,
        },
    );
    let backends =
        proptest::collection::btree_map((0..5u8, prop_oneof![Just(8080u16), Just(8081)]), any::<bool>(), 0..4);
    proptest::collection::btree_map(frontend, backends, 0..6).prop_map(|m| {
        m.into_iter()
            .map(|(f, bs)| {
                let backends = bs
                    .into_iter()
                    .map(|((a, port), active)| BackendAddr {
                        addr: IpAddr::from([10, 244, 1, a]),
                        port,
                        active,
                    })
                    .collect();
                let b = Backends {
                    service: format!("ns/s:{}", f.port),
                    algorithm: Algorithm::Random,
                    affinity_timeout_secs: 0,
                    reject: true,
                    node_address: false,
                    source_ranges: Vec::new(),
                    node_denied: false,
                    backends,
                };
                (f, b)
            })
            .collect()
    })
}

/// The maps say exactly what `want` says.
fn check(maps: &Maps, want: &Want) -> Result<(), String> {
    let raw = maps.lb().backends().map_err(|e| e.to_string())?;
    let backends: BTreeMap<u32, (IpAddr, u16, u8)> = raw.iter().map(|b| (b.id, (b.addr, b.port, b.proto))).collect();
    // A shared entry says active only when every frontend using it does.
    for b in &raw {
        let key = backends[&b.id];
        let everywhere_active = want
            .iter()
            .flat_map(|(f, w)| w.backends.iter().map(move |x| ((x.addr, x.port, f.proto), x.active)))
            .filter(|(k, _)| *k == key)
            .all(|(_, active)| active);
        if b.active != everywhere_active {
            return Err(format!("backend {key:?} is active: {}", b.active));
        }
    }
    let in_use: BTreeSet<(IpAddr, u16, u8)> = want
        .iter()
        .flat_map(|(f, b)| b.backends.iter().map(|x| (x.addr, x.port, f.proto)))
        .collect();
    let held: BTreeSet<(IpAddr, u16, u8)> = backends.values().copied().collect();
    if held != in_use || held.len() != backends.len() {
        return Err(format!("backends held {held:?}, in use {in_use:?}"));
    }
    let services = maps.lb().services().map_err(|e| e.to_string())?;
    let got: BTreeSet<Frontend> = services
        .iter()
        .map(|s| Frontend {
            vip: s.vip,
            port: s.port,
            proto: s.proto,
            external: s.scope == SVC_SCOPE_EXTERNAL,
        })
        .collect();
    let wanted: BTreeSet<Frontend> = want.keys().copied().collect();
    if got != wanted {
        return Err(format!("frontends {got:?}, wanted {wanted:?}"));
    }
    for s in services {
        let f = Frontend {
            vip: s.vip,
            port: s.port,
            proto: s.proto,
            external: s.scope == SVC_SCOPE_EXTERNAL,
        };
        let active: BTreeSet<(IpAddr, u16)> = s.active.iter().map(|id| (backends[id].0, backends[id].1)).collect();
        let wanted: BTreeSet<(IpAddr, u16)> = want[&f]
            .backends
            .iter()
            .filter(|b| b.active)
            .map(|b| (b.addr, b.port))
            .collect();
        if active != wanted {
            return Err(format!("{f}: active {active:?}, wanted {wanted:?}"));
        }
    }
    Ok(())
}

#[test]
fn the_maps_hold_exactly_each_translation() {
    if !common::is_root("the_maps_hold_exactly_each_translation") {
        return;
    }
    let cfg = DatapathConfig::default();
    let (_ebpf, maps) = loader::load_unpinned(&cfg).unwrap();
    // The runner takes an `Fn`: the maps are borrowed mutably inside.
    let maps = std::cell::RefCell::new(maps);
    let mut runner = TestRunner::new(Config {
        cases: 64,
        ..Config::default()
    });
    let result = runner.run(&proptest::collection::vec(want(), 1..8), |seq| {
        let mut maps = maps.borrow_mut();
        let maps = &mut *maps;
        // What the previous case left goes first (counted from scratch).
        ServiceSync::from_maps(maps).unwrap().apply(maps, &Want::new()).unwrap();
        prop_assert_eq!(check(maps, &Want::new()), Ok(()));
        let mut sync = ServiceSync::from_maps(maps).unwrap();
        for (i, w) in seq.iter().enumerate() {
            sync.apply(maps, w).unwrap();
            prop_assert_eq!(check(maps, w), Ok(()), "after pass {} of {:?}", i, seq);
        }
        let last = seq.last().unwrap();
        let again = ServiceSync::from_maps(maps).unwrap().apply(maps, last).unwrap();
        prop_assert_eq!(again.writes, 0, "a restarted sync rewrote {:?}", again);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// A shared backend turns active again when the frontend that held it as
/// terminating goes, though the frontend that keeps it did not change.
#[test]
fn a_shared_backend_turns_back_when_the_other_frontend_goes() {
    if !common::is_root("a_shared_backend_turns_back_when_the_other_frontend_goes") {
        return;
    }
    let cfg = DatapathConfig::default();
    let (_ebpf, mut maps) = loader::load_unpinned(&cfg).unwrap();
    let fe = |v: u8| Frontend::cluster(IpAddr::from([10, 96, 0, v]), 80, PROTO_TCP);
    let backends = |active: bool| Backends {
        service: "ns/s:80".into(),
        algorithm: Algorithm::Random,
        affinity_timeout_secs: 0,
        reject: true,
        node_address: false,
        source_ranges: Vec::new(),
        node_denied: false,
        backends: vec![BackendAddr {
            addr: IpAddr::from([10, 244, 1, 1]),
            port: 8080,
            active,
        }],
    };
    let both: Want = [(fe(1), backends(true)), (fe(2), backends(false))]
        .into_iter()
        .collect();
    let one: Want = [(fe(1), backends(true))].into_iter().collect();
    let mut sync = ServiceSync::from_maps(&maps).unwrap();
    for w in [&both, &one, &both] {
        sync.apply(&mut maps, w).unwrap();
        assert_eq!(check(&maps, w), Ok(()));
    }
}
