//! The per-connection tables remade at new sizes on a live node: the
//! network's `datapath.tables` changed, the agent starts and resizes them
//! (`sluice_agent::tables::resize`, what its start runs with
//! `--cni-conf`). Two pods on TCX links and one on clsact filters, each
//! with a TCP connection through a Service VIP: the tables take the new
//! sizes, the connections carry on, the filters pod's programs are the new
//! ones (its next connection's conntrack entry is in the new table), and
//! nothing of the old tables or programs stays pinned.

use aya::maps::{HashMap as BpfHash, MapData};
use serde_json::json;
use sluice_integration::bpffs::Bpffs;
use sluice_integration::probe::{Session, StreamEcho};
use sluice_integration::require_root;
use sluice_integration::services::{ServicePort, Services};
use sluice_integration::vpc::{Vpc, result_ip};
use sluice_tc_datapath::attach::Node;
use sluice_tc_datapath::config::{DatapathConfig, TableSizes};
use sluice_tc_datapath::layout::{CT_SERVICE, CtKey, CtValue, LAYOUT_VERSION, PROTO_TCP, addr};
use sluice_tc_datapath::loader::{pinned_table_sizes, tables_sized_otherwise, versioned_dir, versioned_dir_of};
use sluice_tc_datapath::maps::Maps;
use sluice_tc_datapath::migrate::{self, Syscalls};
use sluice_tc_datapath::raw_map;
use std::collections::HashMap;
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

/// The conntrack table pinned at `pin`, every entry.
fn ct_table(pin: &Path) -> HashMap<CtKey, CtValue> {
    let data = MapData::from_pin(pin).unwrap();
    let map: BpfHash<MapData, CtKey, CtValue> = BpfHash::try_from(aya::maps::Map::LruHashMap(data)).unwrap();
    map.iter().map(|e| e.unwrap()).collect()
}

/// Entry `i` of the copy test: a flow of its own, its value marked by `mark`.
fn ct_entry(i: u32, mark: u32) -> (CtKey, CtValue) {
    let key = CtKey {
        saddr: addr(IpAddr::from([10, 244, (i >> 8) as u8, i as u8])),
        daddr: addr(IpAddr::from([10, 96, 0, 1])),
        sport: (i as u16).to_be(),
        dport: 80u16.to_be(),
        proto: PROTO_TCP,
        kind: CT_SERVICE,
        pad0: 0,
    };
    let value = CtValue {
        expires_ns: u64::MAX / 2,
        backend_id: i,
        rev_nat_id: mark,
        ..Default::default()
    };
    (key, value)
}

/// Whole-table reads and the copies under the resize, by both kinds of
/// syscalls (the batch commands and the one-entry-at-a-time fallback of
/// kernels without them): the conntrack table read at once holds what
/// aya's iterator finds (more than one batch's worth); a remade table holds
/// exactly the old one's entries; the late carry writes only the keys the
/// new table lacks, leaving the ones there as they are.
#[test]
fn a_table_is_copied_whole_by_batches_and_entry_by_entry() {
    if !require_root("a_table_is_copied_whole_by_batches_and_entry_by_entry") {
        return;
    }
    let fs = Bpffs::new("tcp").unwrap();
    let cfg = DatapathConfig {
        bpffs: fs.root(),
        tables: TableSizes {
            conntrack: 16384,
            ..Default::default()
        },
        ..Default::default()
    };
    Node::open(&cfg).unwrap();
    let versioned = versioned_dir(&fs.root());
    let pin = versioned.join("maps").join("sl_ct");
    let mut maps = Maps::open_pinned(&versioned).unwrap();
    const N: u32 = 10_000;
    for i in 0..N {
        let (k, v) = ct_entry(i, 1);
        maps.ct_mut().insert(k, v).unwrap();
    }
    let old = ct_table(&pin);
    assert_eq!(old.len(), N as usize, "the table was filled");
    let read: HashMap<CtKey, CtValue> = maps.ct().entries().unwrap().into_iter().collect();
    assert_eq!(
        read, old,
        "a whole-table read (by batches) sees what aya's iterator sees"
    );
    // An LPM trie is read whole too: by the kernel's generic batch walk
    // where it has one (6.18 does), else entry by entry after its refusal.
    for (net, prefix) in [([10, 0, 0, 0], 8), ([192, 168, 0, 0], 16)] {
        maps.uplink_mut().add_source(7, IpAddr::from(net), prefix).unwrap();
    }
    let trie = raw_map::Map::open(&versioned.join("maps").join("sl_lb_sources"), "sl_lb_sources").unwrap();
    let mut listed = 0;
    trie.read(|chunk| {
        listed += chunk.len();
        Ok(())
    })
    .unwrap();
    assert_eq!(listed, 2, "the trie's entries");
    // The buffers hold one value per entry: a per-CPU map (one per CPU) is
    // refused, not overrun.
    let per_cpu = versioned.join("maps").join("sl_metrics");
    assert!(per_cpu.exists());
    let refused = raw_map::Map::open(&per_cpu, "sl_metrics").err();
    assert!(
        refused.is_some_and(|e| e.to_string().contains("per-CPU")),
        "a per-CPU map is refused"
    );
    for how in [Syscalls::Batched, Syscalls::PerEntry] {
        let copy = fs.path().join(format!("copy-{how:?}"));
        let copied = migrate::remake_with(&pin, "sl_ct", 32768, &copy, how).unwrap();
        assert_eq!(copied, N as usize, "{how:?}: entries copied");
        assert_eq!(
            ct_table(&copy),
            old,
            "{how:?}: the remade table holds the old one's entries"
        );
        assert_eq!(max_entries(&copy), 32768, "{how:?}: the remade table's size");

        // What the old table took after the copy goes over; what the new
        // one has (here, other values under the same keys) stays.
        let mut new =
            BpfHash::<MapData, CtKey, CtValue>::try_from(aya::maps::Map::LruHashMap(MapData::from_pin(&copy).unwrap()))
                .unwrap();
        for i in 0..100 {
            let (k, v) = ct_entry(i, 2);
            new.insert(k, v, 0).unwrap();
        }
        for i in N..N + 50 {
            let (k, v) = ct_entry(i, 1);
            maps.ct_mut().insert(k, v).unwrap();
        }
        let late = migrate::carry_new_with(&pin, &copy, "sl_ct", how).unwrap();
        assert_eq!(late, 50, "{how:?}: only the keys the new table lacked were carried");
        let after = ct_table(&copy);
        assert_eq!(after.len(), N as usize + 50, "{how:?}");
        assert!(
            (0..100).all(|i| after[&ct_entry(i, 0).0].rev_nat_id == 2),
            "{how:?}: an entry the new table had was overwritten"
        );
        assert!((N..N + 50).all(|i| after.contains_key(&ct_entry(i, 0).0)), "{how:?}");
        for i in N..N + 50 {
            maps.ct_mut().remove(&ct_entry(i, 0).0).unwrap();
        }
        std::fs::remove_file(&copy).unwrap();
    }
}

fn max_entries(pin: &Path) -> u32 {
    MapData::from_pin(pin).unwrap().info().unwrap().max_entries()
}
