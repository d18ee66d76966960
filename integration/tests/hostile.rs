//! What an outside audit did to the CNI binary beyond a single bad call,
//! each undone: a DEL with no record deleting an interface it never made, a
//! DEL or a chained ADD aimed at the node itself, a container id too long
//! for a file name, a corrupt lease store or endpoint record wedging every
//! DEL, and a chained result with enough addresses to fill the node's
//! endpoint map.

use serde_json::{Value, json};
use sluice_integration::cni::Call;
use sluice_integration::datapath::programs_on;
use sluice_integration::vpc::{Vpc, result_ip};
use sluice_integration::{cni_bin_dir, require_reference_plugins, require_root};

fn call(vpc: &Vpc, cmd: &str, cid: &str, netns: &str, conf: &Value) -> sluice_integration::cni::CniOutput {
    Call::new(&cni_bin_dir().join("sluice"), Some(&vpc.nodes[0].name))
        .standard(cmd, cid, netns, "eth0")
        .run(&serde_json::to_vec(conf).unwrap())
}

#[test]
fn del_removes_only_what_its_record_names() {
    if !require_root("del_removes_only_what_its_record_names") {
        return;
    }
    let mut vpc = Vpc::new("hdel", 1).unwrap();
    let conf = vpc.main_conf(0, "1.1.0");
    let node_ns = vpc.nodes[0].path().display().to_string();

    // DEL aimed at the node: its own eth0 stays.
    call(&vpc, "DEL", "x", &node_ns, &conf).expect_ok("DEL in the node's netns succeeds");
    assert!(vpc.nodes[0].link_names().unwrap().contains(&"eth0".to_string()));

    // DEL with no record in a pod whose eth0 someone else made: it stays.
    let p = vpc.pod("p").unwrap();
    vpc.pods[p]
        .ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "other0"])
        .unwrap();
    let pod_ns = vpc.pods[p].path().display().to_string();
    call(&vpc, "DEL", "never-added", &pod_ns, &conf).expect_ok("DEL without a record");
    assert!(vpc.pods[p].link_names().unwrap().contains(&"eth0".to_string()));

    // A pod sluice made, whose eth0 was then replaced: DEL leaves the
    // stranger, and still releases what sluice held.
    let q = vpc.pod("q").unwrap();
    vpc.sluice(0, "ADD", "q", q, &conf).expect_ok("ADD q");
    vpc.pods[q].ip(&["link", "del", "eth0"]).unwrap();
    vpc.pods[q]
        .ip(&["link", "add", "eth0", "type", "veth", "peer", "name", "other1"])
        .unwrap();
    vpc.sluice(0, "DEL", "q", q, &conf).expect_ok("DEL q");
    assert!(vpc.pods[q].link_names().unwrap().contains(&"eth0".to_string()));
    assert!(vpc.leases(0).is_empty() && vpc.endpoints(0).is_empty());
}

#[test]
fn a_chained_add_aimed_at_the_node_is_refused() {
    if !require_root("a_chained_add_aimed_at_the_node_is_refused") {
        return;
    }
    let vpc = Vpc::new("hchn", 1).unwrap();
    let node_ns = vpc.nodes[0].path().display().to_string();
    let eth0 = vpc.nodes[0].ip(&["-j", "addr", "show", "eth0"]).unwrap();
    let eth0: Value = serde_json::from_str(&eth0).unwrap();
    let mac = eth0[0]["address"].as_str().unwrap().to_string();
    let addr = format!(
        "{}/{}",
        eth0[0]["addr_info"][0]["local"].as_str().unwrap(),
        eth0[0]["addr_info"][0]["prefixlen"]
    );
    let conf = json!({
        "cniVersion": "1.1.0", "name": format!("{}-net", vpc.prefix), "type": "sluice",
        "dataDir": vpc.data_dir.join("n0"), "datapath": vpc.datapath(0),
        "prevResult": {"cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "mac": mac, "sandbox": node_ns}],
            "ips": [{"address": addr, "interface": 0}]}
    });
    let out = call(&vpc, "ADD", "c", &node_ns, &conf);
    assert_eq!(out.error_code(), 4, "{}", out.stdout);
    assert!(out.stdout.contains("own network namespace"), "{}", out.stdout);
    let on = programs_on(&vpc.nodes[0], "eth0").unwrap();
    assert!(
        on.egress.is_empty() && on.ingress.is_empty(),
        "nothing on the node's uplink"
    );
    assert!(vpc.endpoints(0).is_empty());
}

#[test]
fn a_container_id_too_long_for_a_file_name() {
    if !require_root("a_container_id_too_long_for_a_file_name") {
        return;
    }
    let mut vpc = Vpc::new("hlng", 1).unwrap();
    let conf = vpc.main_conf(0, "1.1.0");
    let p = vpc.pod("p").unwrap();
    let cid = "c".repeat(300);
    vpc.sluice(0, "ADD", &cid, p, &conf).expect_ok("ADD with a 300-byte id");
    assert_eq!(vpc.endpoints(0).len(), 1);
    vpc.sluice(0, "CHECK", &cid, p, &conf).expect_ok("CHECK");
    for what in ["DEL", "DEL again"] {
        vpc.sluice(0, "DEL", &cid, p, &conf).expect_ok(what);
    }
    assert!(vpc.endpoints(0).is_empty() && vpc.leases(0).is_empty() && vpc.pinned_links(0).is_empty());
}

/// Endpoint records are not synced (they describe what a node loses when
/// it goes down): one a power loss left empty, or one edited by hand,
/// must not make every DEL of that pod fail.
#[test]
fn an_unreadable_endpoint_record_does_not_wedge_del() {
    if !require_root("an_unreadable_endpoint_record_does_not_wedge_del") {
        return;
    }
    let mut vpc = Vpc::new("hrec", 1).unwrap();
    let conf = vpc.main_conf(0, "1.1.0");
    let a = vpc.pod("a").unwrap();
    vpc.sluice(0, "ADD", "a", a, &conf).expect_ok("ADD a");
    assert_eq!(vpc.leases(0).len(), 1);
    assert_eq!(vpc.endpoints(0).len(), 1);
    let entries = |vpc: &Vpc| vpc.maps(0).unwrap().endpoints().entries().unwrap().len();
    assert_eq!(entries(&vpc), 1, "the pod's address in the endpoint map");
    let record = vpc
        .data_dir
        .join("n0/endpoints")
        .join(format!("{}-net", vpc.prefix))
        .join("a:eth0.json");
    std::fs::write(&record, b"").unwrap();
    // CHECK says what is wrong; DEL goes on without the record.
    let check = vpc.sluice(0, "CHECK", "a", a, &conf);
    assert!(check.stdout.contains("corrupt"), "{}", check.stdout);
    for what in ["DEL over an empty record", "DEL again"] {
        vpc.sluice(0, "DEL", "a", a, &conf).expect_ok(what);
    }
    assert!(vpc.leases(0).is_empty(), "lease released: {:?}", vpc.leases(0));
    assert!(vpc.endpoints(0).is_empty(), "record removed: {:?}", vpc.endpoints(0));
    assert!(vpc.pinned_links(0).is_empty(), "{:?}", vpc.pinned_links(0));
    assert_eq!(entries(&vpc), 0, "found by its owner tag and removed");
    // Without a record no link is touched: the pod's goes with its namespace.
    assert_eq!(vpc.pods[a].link_names().unwrap(), ["lo", "eth0"].map(String::from));
}

#[test]
fn a_corrupt_lease_store_does_not_wedge_del() {
    if !require_root("a_corrupt_lease_store_does_not_wedge_del") {
        return;
    }
    let mut vpc = Vpc::new("hcor", 1).unwrap();
    let conf = vpc.main_conf(0, "1.1.0");
    let (a, b) = (vpc.pod("a").unwrap(), vpc.pod("b").unwrap());
    let ip_a = result_ip(&vpc.sluice(0, "ADD", "a", a, &conf).expect_ok("ADD a").json());
    let ipam_dir = vpc.data_dir.join("ipam-n0");
    let network = format!("{}-net", vpc.prefix);
    let store = ipam_dir.join(&network).join("leases.json");
    std::fs::write(&store, b"{\"version\": 1, \"leases\": ").unwrap();
    // DEL succeeds, and its link goes; the store is put aside.
    vpc.sluice(0, "DEL", "a", a, &conf)
        .expect_ok("DEL a over a corrupt store");
    assert_eq!(vpc.pods[a].link_names().unwrap(), ["lo"]);
    assert!(store.with_extension("json.corrupt").is_file());
    // Nothing is allocated meanwhile (an empty store would hand out leased
    // addresses); STATUS says not ready; the message says what to run.
    let out = vpc.sluice(0, "ADD", "b", b, &conf);
    assert_eq!(out.error_code(), 50, "{}", out.stdout);
    assert!(out.stdout.contains("sluice-ipam rebuild"), "{}", out.stdout);
    assert_eq!(vpc.sluice(0, "STATUS", "b", b, &conf).error_code(), 50);
    let rebuilt = std::process::Command::new(cni_bin_dir().join("sluice-ipam"))
        .args(["rebuild", "--network", &network, "--data-dir"])
        .arg(&ipam_dir)
        .arg("--endpoints")
        .arg(vpc.data_dir.join("n0"))
        .output()
        .unwrap();
    assert!(rebuilt.status.success(), "{}", String::from_utf8_lossy(&rebuilt.stderr));
    let ip_b = result_ip(
        &vpc.sluice(0, "ADD", "b", b, &conf)
            .expect_ok("ADD b after the rebuild")
            .json(),
    );
    assert!(!ip_b.is_empty(), "{ip_a} {ip_b}");
    vpc.sluice(0, "DEL", "b", b, &conf).expect_ok("DEL b");
    assert!(vpc.leases(0).is_empty());
}

#[test]
fn a_chained_result_cannot_fill_the_endpoint_map() {
    if !require_root("a_chained_result_cannot_fill_the_endpoint_map") {
        return;
    }
    if !require_reference_plugins("a_chained_result_cannot_fill_the_endpoint_map") {
        return;
    }
    let mut vpc = Vpc::new("hfil", 1).unwrap();
    let p = vpc.pod("p").unwrap();
    let netns = vpc.pods[p].path().display().to_string();
    // A first plugin's result with 40 addresses, all on the interface.
    let list = vpc.chained_conflist(0, "1.0.0");
    let with_header = |plugin: &Value| {
        let mut c = plugin.clone();
        c["name"] = list["name"].clone();
        c["cniVersion"] = list["cniVersion"].clone();
        c
    };
    let macvlan = with_header(&list["plugins"][0]);
    let first = Call::new(std::path::Path::new("/usr/lib/cni/macvlan"), Some(&vpc.nodes[0].name))
        .standard("ADD", "f", &netns, "eth0")
        .run(&serde_json::to_vec(&macvlan).unwrap())
        .expect_ok("the first plugin's ADD")
        .json();
    let mut ips = vec![first["ips"][0].clone()];
    for i in 0..40 {
        let a = format!("10.244.7.{}", i + 10);
        vpc.pods[p]
            .ip(&["addr", "add", &format!("{a}/32"), "dev", "eth0"])
            .unwrap();
        ips.push(json!({"address": format!("{a}/32"), "interface": 0}));
    }
    let mut sluice = with_header(&list["plugins"][1]);
    sluice["prevResult"] = first.clone();
    sluice["prevResult"]["ips"] = json!(ips);
    let out = call(&vpc, "ADD", "f", &netns, &sluice);
    assert_eq!(out.error_code(), 7, "{}", out.stdout);
    assert!(out.stdout.contains("at most 16"), "{}", out.stdout);
    let entries = vpc.maps(0).map(|m| m.endpoints().entries().unwrap().len()).unwrap_or(0);
    assert_eq!(entries, 0, "no address of the refused ADD is published");
    assert!(vpc.endpoints(0).is_empty() && vpc.pinned_links(0).is_empty());
    Call::new(std::path::Path::new("/usr/lib/cni/macvlan"), Some(&vpc.nodes[0].name))
        .standard("DEL", "f", &netns, "eth0")
        .run(&serde_json::to_vec(&macvlan).unwrap())
        .expect_ok("the first plugin's DEL");
}
