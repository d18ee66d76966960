//! The per-connection tables remade at new sizes on a live node: the
//! network's `datapath.tables` changed, the agent starts and resizes them
//! (`sluice_agent::tables::resize`, what its start runs with
//! `--cni-conf`). Two pods on TCX links and one on clsact filters, each
//! with a TCP connection through a Service VIP: the tables take the new
//! sizes, the connections carry on, the filters pod's programs are the new
//! ones (its next connection's conntrack entry is in the new table), and
//! nothing of the old tables or programs stays pinned.

use serde_json::json;
use sluice_integration::probe::{Session, StreamEcho};
use sluice_integration::require_root;
use sluice_integration::services::{ServicePort, Services};
use sluice_integration::vpc::{Vpc, result_ip};
use sluice_tc_datapath::layout::{LAYOUT_VERSION, addr};
use sluice_tc_datapath::loader::{pinned_table_sizes, tables_sized_otherwise, versioned_dir_of};
use sluice_tc_datapath::maps::Maps;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

fn sa(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

/// The sizes of the per-connection tables pinned under `versioned`.
fn table_sizes(versioned: &Path) -> Vec<u32> {
    pinned_table_sizes(versioned).into_iter().map(|(_, n)| n).collect()
}

/// Conntrack entries from `ip` in the table pinned under `versioned`.
fn ct_entries_from(versioned: &Path, ip: &str) -> usize {
    let maps = Maps::open_pinned(versioned).unwrap();
    let a = addr(ip.parse::<IpAddr>().unwrap());
    maps.ct()
        .entries()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.saddr == a)
        .count()
}

#[test]
fn the_tables_are_remade_at_new_sizes_under_live_connections() {
    if !require_root("the_tables_are_remade_at_new_sizes_under_live_connections") {
        return;
    }
    let mut vpc = Vpc::new("trs", 1).unwrap();
    let mut conf = vpc.main_conf(0, "1.1.0");
    conf["datapath"]["tables"] = json!({"conntrack": 16384, "nat": 8192, "snatHolds": 4096});
    let mut filters_conf = conf.clone();
    filters_conf["datapath"]["attach"] = json!("tc");
    let mut add = |name: &str, conf: &serde_json::Value| {
        let p = vpc.pod(name).unwrap();
        let r = vpc.sluice(0, "ADD", name, p, conf).expect_ok("ADD").json();
        (p, result_ip(&r))
    };
    let (c, c_ip) = add("c", &conf);
    let (f, f_ip) = add("f", &filters_conf);
    let (b, backend) = add("b", &conf);
    let _echo = StreamEcho::start(&vpc.pods[b], 7100, "b").unwrap();
    let svcs = Services::new(&vpc).unwrap();
    svcs.put(&vpc, &ServicePort::new("10.96.0.41:80/tcp", &[sa(&backend, 7100)]))
        .unwrap();

    let root = vpc.bpffs[0].root();
    let versioned = versioned_dir_of(&root, LAYOUT_VERSION);
    assert_eq!(table_sizes(&versioned), [16384, 8192, 4096, 4096]);
    let mut from_c = Session::open(&vpc.pods[c], sa("10.96.0.41", 80)).unwrap();
    let mut from_f = Session::open(&vpc.pods[f], sa("10.96.0.41", 80)).unwrap();
    assert_eq!(from_c.ask("before").unwrap(), "b:before");
    assert_eq!(from_f.ask("before").unwrap(), "b:before");

    // The network's sizes change; the agent starts.
    let mut datapath = vpc.datapath(0);
    datapath["tables"] = json!({"conntrack": 65536, "nat": 32768, "snatHolds": 8192});
    let conflist = vpc.data_dir.join("resized.conflist");
    let list = json!({"cniVersion": "1.1.0", "name": "trs", "plugins": [{"type": "sluice", "datapath": datapath}]});
    std::fs::write(&conflist, serde_json::to_vec(&list).unwrap()).unwrap();
    let cfg = sluice_agent::cni_conf::datapath_of(&conflist).unwrap().unwrap();
    assert_eq!(tables_sized_otherwise(&versioned, &cfg).len(), 4);
    let tracked = (ct_entries_from(&versioned, &c_ip), ct_entries_from(&versioned, &f_ip));
    assert!(tracked.0 > 0 && tracked.1 > 0);
    sluice_agent::tables::resize(&conflist, &root, &vpc.data_dir.join("n0"));

    assert_eq!(
        table_sizes(&versioned),
        [65536, 32768, 16384, 8192],
        "the tables were remade at the new sizes"
    );
    assert_eq!(
        (ct_entries_from(&versioned, &c_ip), ct_entries_from(&versioned, &f_ip)),
        tracked,
        "the entries were copied into the new table"
    );
    let leftovers: Vec<String> = std::fs::read_dir(versioned.join("maps"))
        .unwrap()
        .chain(std::fs::read_dir(versioned.join("progs")).unwrap())
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with("_old") || n.ends_with("_resized") || n.ends_with("-before-resize"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "old tables or programs left pinned: {leftovers:?}"
    );
    assert_eq!(
        from_c.ask("after").unwrap(),
        "b:after",
        "the connection from the pod on TCX links carried on"
    );
    assert_eq!(
        from_f.ask("after").unwrap(),
        "b:after",
        "the connection from the pod on filters carried on"
    );
    let before = ct_entries_from(&versioned, &f_ip);
    let mut fresh = Session::open(&vpc.pods[f], sa("10.96.0.41", 80)).unwrap();
    assert_eq!(fresh.ask("new").unwrap(), "b:new");
    assert!(
        ct_entries_from(&versioned, &f_ip) > before,
        "the filters pod's new connection was tracked in the new table: its programs are the new ones"
    );
    let mut fresh_c = Session::open(&vpc.pods[c], sa("10.96.0.41", 80)).unwrap();
    assert_eq!(fresh_c.ask("new").unwrap(), "b:new");

    // Run again with the same sizes: nothing to do.
    sluice_agent::tables::resize(&conflist, &root, &vpc.data_dir.join("n0"));
    assert_eq!(table_sizes(&versioned), [65536, 32768, 16384, 8192]);
    drop(svcs);
}
