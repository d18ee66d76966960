//! A map layout change under live traffic. The test build of the datapath
//! (layout 1007, whose conntrack value has every field at another offset;
//! `SLUICE_LAYOUT_TEST_BUMP` in bpf/layout.h) takes over a node that runs
//! the real one: its maps' entries are carried over, converted field by
//! field, before the pods' links move onto the new programs. A TCP
//! connection through a Service VIP and a direct one carry on across it,
//! and new connections to the VIP find the Service. Without the carrying
//! (an old layout the new build does not know), the VIP connection breaks:
//! what kept it was the migration.
//!
//! The per-connection tables take the sizes the configuration gives them
//! when their maps are made: at the first ADD, and again at a layout
//! change, whose new maps are made at the sizes configured then.

use serde_json::{Value, json};
use sluice_integration::probe::{Session, StreamEcho};
use sluice_integration::require_root;
use sluice_integration::services::{ServicePort, Services};
use sluice_integration::vpc::{Vpc, result_ip};
use sluice_tc_datapath::attach::Node;
use sluice_tc_datapath::config::DatapathConfig;
use sluice_tc_datapath::layout::LAYOUT_VERSION;
use sluice_tc_datapath::loader::{pinned_table_sizes, tables_sized_otherwise, versioned_dir_of};
use sluice_tc_datapath::migrate::Build;
use std::net::SocketAddr;

fn sa(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

struct Live {
    vpc: Vpc,
    c: usize,
    backend: String,
    _echo: StreamEcho,
    _svcs: Services,
}

/// A client and a backend pod on one node, a Service to the backend.
fn live(tag: &str) -> Live {
    live_with(tag, None)
}

/// The same, the network's `datapath.tables` set to `tables` if given.
fn live_with(tag: &str, tables: Option<Value>) -> Live {
    let mut vpc = Vpc::new(tag, 1).unwrap();
    let mut conf = vpc.main_conf(0, "1.1.0");
    if let Some(t) = tables {
        conf["datapath"]["tables"] = t;
    }
    let mut add = |name: &str| {
        let p = vpc.pod(name).unwrap();
        let r = vpc.sluice(0, "ADD", name, p, &conf).expect_ok("ADD").json();
        (p, result_ip(&r))
    };
    let (c, _) = add("c");
    let (b, backend) = add("b");
    let echo = StreamEcho::start(&vpc.pods[b], 7100, "b").unwrap();
    let svcs = Services::new(&vpc).unwrap();
    svcs.put(&vpc, &ServicePort::new("10.96.0.40:80/tcp", &[sa(&backend, 7100)]))
        .unwrap();
    Live {
        vpc,
        c,
        backend,
        _echo: echo,
        _svcs: svcs,
    }
}

fn upgrade(vpc: &Vpc) -> Node {
    upgrade_with(&serde_json::from_value(vpc.datapath(0)).unwrap())
}

fn upgrade_with(cfg: &DatapathConfig) -> Node {
    let build = Build::test_bump().expect("the test build is in the build directory");
    Node::open_build(cfg, &build).expect("the test build takes over the node")
}

#[test]
fn connections_survive_a_map_layout_change() {
    if !require_root("connections_survive_a_map_layout_change") {
        return;
    }
    let l = live("upl");
    let root = l.vpc.bpffs[0].root();
    let mut via_vip = Session::open(&l.vpc.pods[l.c], sa("10.96.0.40", 80)).unwrap();
    let mut direct = Session::open(&l.vpc.pods[l.c], sa(&l.backend, 7100)).unwrap();
    assert_eq!(via_vip.ask("before").unwrap(), "b:before");
    assert_eq!(direct.ask("before").unwrap(), "b:before");

    let node = upgrade(&l.vpc);
    assert!(node.upgraded);
    assert_eq!(node.relinked, 4, "both pods' links, both sides, moved");
    assert!(
        !versioned_dir_of(&root, LAYOUT_VERSION).exists(),
        "the old layout is gone"
    );
    assert!(versioned_dir_of(&root, 1007).join("links").is_dir());
    drop(node);

    assert_eq!(
        via_vip.ask("after").unwrap(),
        "b:after",
        "the connection through the VIP carried on"
    );
    assert_eq!(direct.ask("after").unwrap(), "b:after", "the direct one too");
    let mut fresh = Session::open(&l.vpc.pods[l.c], sa("10.96.0.40", 80)).unwrap();
    assert_eq!(fresh.ask("new").unwrap(), "b:new", "a new connection finds the Service");
}

#[test]
fn without_carrying_the_maps_the_vip_connection_breaks() {
    if !require_root("without_carrying_the_maps_the_vip_connection_breaks") {
        return;
    }
    let l = live("upn");
    let root = l.vpc.bpffs[0].root();
    let mut via_vip = Session::open(&l.vpc.pods[l.c], sa("10.96.0.40", 80)).unwrap();
    assert_eq!(via_vip.ask("before").unwrap(), "b:before");
    // An old layout the new build cannot read: its maps stay behind.
    let old = versioned_dir_of(&root, LAYOUT_VERSION);
    let unknown = versioned_dir_of(&root, 999);
    std::fs::rename(&old, &unknown).unwrap();
    let node = upgrade(&l.vpc);
    assert_eq!(node.relinked, 4);
    drop(node);
    assert!(
        via_vip.ask("after").is_err(),
        "with empty maps the VIP connection has no backend and no reverse NAT"
    );
}

#[test]
fn the_tables_take_their_configured_sizes_when_their_maps_are_made() {
    if !require_root("the_tables_take_their_configured_sizes_when_their_maps_are_made") {
        return;
    }
    let small = json!({"conntrack": 32768, "nat": 8192, "snatHolds": 4096});
    let l = live_with("upt", Some(small));
    let root = l.vpc.bpffs[0].root();
    let current = versioned_dir_of(&root, LAYOUT_VERSION);
    assert_eq!(
        pinned_table_sizes(&current),
        [
            ("sl_ct", 32768),
            ("sl_nat", 8192),
            ("sl_nat_new", 4096),
            ("sl_snat_held", 4096)
        ],
        "the first ADD made the maps at the network's sizes"
    );
    let mut via_vip = Session::open(&l.vpc.pods[l.c], sa("10.96.0.40", 80)).unwrap();
    assert_eq!(via_vip.ask("before").unwrap(), "b:before");

    // Other sizes configured: the maps there keep theirs, and say so.
    let mut cfg: DatapathConfig = serde_json::from_value(l.vpc.datapath(0)).unwrap();
    cfg.tables.conntrack = 65536;
    cfg.tables.nat = 16384;
    cfg.tables.snat_holds = 8192;
    assert_eq!(
        tables_sized_otherwise(&current, &cfg),
        [
            ("sl_ct", 32768, 65536),
            ("sl_nat", 8192, 16384),
            ("sl_nat_new", 4096, 8192),
            ("sl_snat_held", 4096, 8192)
        ]
    );

    // A layout change makes new maps, at the sizes configured now, and
    // carries the entries into them.
    let node = upgrade_with(&cfg);
    assert_eq!(node.relinked, 4);
    drop(node);
    let bumped = versioned_dir_of(&root, 1007);
    assert_eq!(
        pinned_table_sizes(&bumped),
        [
            ("sl_ct", 65536),
            ("sl_nat", 16384),
            ("sl_nat_new", 8192),
            ("sl_snat_held", 8192)
        ]
    );
    assert!(tables_sized_otherwise(&bumped, &cfg).is_empty());
    assert_eq!(
        via_vip.ask("after").unwrap(),
        "b:after",
        "the connection through the VIP carried on in the resized table"
    );
    let mut fresh = Session::open(&l.vpc.pods[l.c], sa("10.96.0.40", 80)).unwrap();
    assert_eq!(fresh.ask("new").unwrap(), "b:new");
}
