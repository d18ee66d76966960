//! ENI address pools end to end: the main role asks the pool for an address,
//! and the pod interface goes on the ENI that address belongs to.
//!
//! The simulated VPC gives each ENI its own vSwitch (a bridge in the fabric
//! that answers ARP only on its own port and routes between vSwitches), so a
//! pod placed on the wrong ENI gets no traffic back. The test shows that with
//! a deliberately misplaced control pod first.

use serde_json::{Value, json};
use sluice_integration::probe::{EchoServer, tcp_request};
use sluice_integration::require_root;
use sluice_integration::vpc::{Vpc, result_ip};
use std::net::SocketAddr;

fn sa(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

/// The kernel's `eth0@ifN` in the pod: N is the parent's ifindex in the node.
fn parent_ifindex(out: &str) -> u32 {
    let name = out.split_whitespace().nth(1).expect("ip -o link output");
    name.trim_end_matches(':')
        .split("@if")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no parent in {out:?}"))
}

fn ifindex(out: &str) -> u32 {
    out.split(':').next().unwrap().trim().parse().unwrap()
}

#[test]
fn pods_land_on_the_eni_their_address_belongs_to() {
    if !require_root("pods_land_on_the_eni_their_address_belongs_to") {
        return;
    }
    let mut vpc = Vpc::new("enp", 1).unwrap();
    vpc.add_vswitch("vsa", "10.250.1.1/24").unwrap();
    vpc.add_vswitch("vsb", "10.250.2.1/24").unwrap();
    vpc.add_eni_on(0, "eth1", "vsa").unwrap();
    let mac_b = vpc.add_eni_on(0, "eth2", "vsb").unwrap();
    let node = &vpc.nodes[0];
    let idx = |dev: &str| ifindex(&node.ip(&["-o", "link", "show", dev]).unwrap());
    let (eth1, eth2) = (idx("eth1"), idx("eth2"));

    // eth1 is known by name, eth2 by MAC only (as a cloud metadata file would say).
    std::fs::create_dir_all(&vpc.data_dir).unwrap();
    let node_file = vpc.data_dir.join("eni-pool.json");
    std::fs::write(
        &node_file,
        json!({"enis": [
            {"name": "eth1", "subnet": "10.250.1.0/24", "ips": ["10.250.1.10", "10.250.1.11"]},
            {"mac": mac_b, "subnet": "10.250.2.0/24", "ips": ["10.250.2.10", "10.250.2.11"]}
        ]})
        .to_string(),
    )
    .unwrap();
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": format!("{}-net", vpc.prefix),
        "type": "sluice",
        "link": {"kind": "macvlan", "mode": "bridge"},
        "ipam": {
            "type": "sluice-ipam",
            "eniPool": {"backend": "file", "path": node_file},
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": vpc.data_dir.join("ipam-n0")
        },
        "dataDir": vpc.data_dir.join("n0"),
        "logFile": vpc.data_dir.join("sluice.log"),
        "datapath": vpc.datapath(0)
    });

    // Control: an address of vSwitch B used on ENI eth1 is unreachable.
    let stray = vpc.pod("stray").unwrap();
    let target = vpc.pod("target").unwrap();
    let stray_conf = {
        let mut c = conf.clone();
        c["link"]["parent"] = json!("eth1");
        c["ipam"] = json!({"type": "sluice-ipam", "ranges": [[{"subnet": "10.250.2.0/24", "rangeStart": "10.250.2.200",
            "rangeEnd": "10.250.2.201"}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": vpc.data_dir.join("stray")});
        c
    };
    let target_ip = result_ip(
        &vpc.sluice(0, "ADD", "target", target, &conf)
            .expect_ok("ADD target")
            .json(),
    );
    let _target_srv = EchoServer::start(&vpc.pods[target], 7000, "target").unwrap();
    vpc.sluice(0, "ADD", "stray", stray, &stray_conf)
        .expect_ok("ADD misplaced control pod");
    let misplaced = vpc.pods[stray].addrs("eth0").unwrap();
    assert!(misplaced[0].starts_with("10.250.2."), "{misplaced:?}");
    assert!(
        tcp_request(&vpc.pods[stray], sa(&target_ip, 7000), "x").is_err(),
        "the fabric must not deliver a vSwitch B address on ENI eth1, or this test proves nothing"
    );
    vpc.sluice(0, "DEL", "stray", stray, &stray_conf)
        .expect_ok("DEL control");

    // Three more pods from the pool: with target, two per ENI (least loaded first).
    let mut pods: Vec<(usize, String, Value)> = Vec::new();
    vpc.sluice(0, "CHECK", "target", target, &conf)
        .expect_ok("CHECK target");
    pods.push((target, target_ip, Value::Null));
    for name in ["p1", "p2", "p3"] {
        let p = vpc.pod(name).unwrap();
        let out = vpc.sluice(0, "ADD", name, p, &conf).expect_ok("ADD").json();
        pods.push((p, result_ip(&out), out));
    }
    let mut on_a = 0;
    for (p, ip, out) in &pods {
        let link = vpc.pods[*p].ip(&["-o", "link", "show", "eth0"]).unwrap();
        let (want_parent, gw) = if ip.starts_with("10.250.1.") {
            on_a += 1;
            (eth1, "10.250.1.1")
        } else {
            assert!(ip.starts_with("10.250.2."), "{ip} not from the pool");
            (eth2, "10.250.2.1")
        };
        assert_eq!(parent_ifindex(&link), want_parent, "{ip} must sit on its ENI: {link}");
        assert_eq!(vpc.pods[*p].addrs("eth0").unwrap()[0], format!("{ip}/24"));
        let routes = vpc.pods[*p].ip(&["route", "show", "default"]).unwrap();
        assert!(routes.contains(&format!("via {gw}")), "{ip}: {routes}");
        if !out.is_null() {
            assert_eq!(out["ips"][0]["gateway"], gw);
            assert!(out["sluice.dev/eni"].is_object(), "result names the ENI: {out}");
        }
    }
    assert_eq!(on_a, 2, "two pods per ENI");
    assert_eq!(vpc.leases(0).len(), 4);

    // Everyone reaches everyone: same ENI directly, across ENIs through the VPC router.
    let _servers: Vec<EchoServer> = pods[1..]
        .iter()
        .map(|(p, ip, _)| EchoServer::start(&vpc.pods[*p], 7000, ip).unwrap())
        .collect();
    for (pf, from, _) in &pods {
        for (_, to, _) in &pods {
            if from != to {
                let reply =
                    tcp_request(&vpc.pods[*pf], sa(to, 7000), "hi").unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
                assert!(reply.ends_with(":hi"), "{reply}");
            }
        }
    }

    // The pool is full now; the fifth pod gets a clear "exhausted" and nothing is left.
    let p5 = vpc.pod("p5").unwrap();
    let out = vpc.sluice(0, "ADD", "p5", p5, &conf);
    assert_eq!(out.error_code(), 101, "{}", out.stdout);
    assert!(out.stdout.contains("eni-pool.json"), "{}", out.stdout);
    assert_eq!(vpc.pods[p5].link_names().unwrap(), vec!["lo"]);

    for (i, (p, _, _)) in pods.iter().enumerate() {
        let cid = if i == 0 { "target".to_string() } else { format!("p{i}") };
        vpc.sluice(0, "DEL", &cid, *p, &conf).expect_ok("DEL");
        assert_eq!(vpc.pods[*p].link_names().unwrap(), vec!["lo"]);
    }
    assert!(vpc.leases(0).is_empty());
    assert!(vpc.endpoints(0).is_empty());
}
