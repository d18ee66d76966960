//! The main role in the simulated VPC: sluice creates the pod interfaces.

use serde_json::json;
use sluice_integration::probe::{EchoServer, tcp_request, udp_request};
use sluice_integration::vpc::{VPC_ROUTER, Vpc, node_ip, result_ip};
use sluice_integration::{cni_bin_dir, require_root};
use std::net::SocketAddr;

fn sa(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

#[test]
fn macvlan_pods_reach_each_other_within_and_across_nodes() {
    if !require_root("macvlan_pods_reach_each_other_within_and_across_nodes") {
        return;
    }
    let mut vpc = Vpc::new("mv", 2).unwrap();
    // Two pods on node 0, one on node 1.
    let placement = [(0usize, "a1"), (0, "a2"), (1, "b1")];
    let mut pods = Vec::new();
    for (node, name) in placement {
        let p = vpc.pod(name).unwrap();
        let conf = vpc.main_conf(node, "1.1.0");
        let out = vpc.sluice(node, "ADD", name, p, &conf).expect_ok("ADD");
        let r = out.json();
        assert_eq!(r["cniVersion"], "1.1.0");
        assert_eq!(r["interfaces"][0]["name"], "eth0");
        assert_eq!(r["interfaces"][0]["sandbox"], vpc.pods[p].path().display().to_string());
        let mac = r["interfaces"][0]["mac"].as_str().unwrap();
        assert!(
            vpc.pods[p].ip(&["link", "show", "eth0"]).unwrap().contains(mac),
            "result MAC is the real one"
        );
        assert_eq!(r["ips"][0]["interface"], 0);
        let ip = result_ip(&r);
        assert!(
            ip.starts_with(&format!("10.244.{}.", node + 1)),
            "{ip} from node {node}'s range"
        );
        assert_eq!(vpc.pods[p].addrs("eth0").unwrap()[0], format!("{ip}/16"));
        let routes = vpc.pods[p].ip(&["route", "show", "default"]).unwrap();
        assert!(
            routes.contains("via 10.244.0.1"),
            "default route via the VPC gateway: {routes}"
        );
        pods.push((node, name, p, ip));
    }
    let _servers: Vec<EchoServer> = pods
        .iter()
        .map(|(_, name, p, _)| EchoServer::start(&vpc.pods[*p], 7000, name).unwrap())
        .collect();
    for (_, from, pf, _) in &pods {
        for (_, to, _, ip) in &pods {
            if from == to {
                continue;
            }
            let reply =
                tcp_request(&vpc.pods[*pf], sa(ip, 7000), "hi").unwrap_or_else(|e| panic!("{from} -> {to}: {e}"));
            assert_eq!(reply, format!("{to}:hi"));
        }
    }
    let reply = udp_request(&vpc.pods[pods[0].2], sa(&pods[2].3, 7000), "dgram").unwrap();
    assert_eq!(reply, "b1:dgram", "UDP across nodes");

    for (node, name, p, _) in &pods {
        vpc.sluice(*node, "CHECK", name, *p, &vpc.main_conf(*node, "1.1.0"))
            .expect_ok("CHECK");
    }
    assert_eq!(vpc.leases(0).len(), 2);
    assert_eq!(vpc.endpoints(0).len(), 2);

    for (node, name, p, _) in &pods {
        let conf = vpc.main_conf(*node, "1.1.0");
        vpc.sluice(*node, "DEL", name, *p, &conf).expect_ok("DEL");
        vpc.sluice(*node, "DEL", name, *p, &conf).expect_ok("DEL twice");
        assert_eq!(
            vpc.pods[*p].link_names().unwrap(),
            vec!["lo"],
            "pod {name} has only lo after DEL"
        );
    }
    for node in 0..2 {
        assert!(
            vpc.leases(node).is_empty(),
            "node {node} leases left: {:?}",
            vpc.leases(node)
        );
        assert!(vpc.endpoints(node).is_empty(), "node {node} endpoint records left");
        assert_eq!(vpc.nodes[node].link_names().unwrap(), vec!["lo", "eth0"]);
    }
}

#[test]
fn check_detects_a_tampered_pod_interface() {
    if !require_root("check_detects_a_tampered_pod_interface") {
        return;
    }
    let mut vpc = Vpc::new("ck", 1).unwrap();
    let p = vpc.pod("p").unwrap();
    let conf = vpc.main_conf(0, "1.1.0");
    let r = vpc.sluice(0, "ADD", "p", p, &conf).expect_ok("ADD").json();
    let addr = format!("{}/16", result_ip(&r));
    vpc.pods[p].ip(&["addr", "del", &addr, "dev", "eth0"]).unwrap();
    let out = vpc.sluice(0, "CHECK", "p", p, &conf);
    assert_eq!(out.error_code(), 103, "{}", out.stdout);
    assert!(out.json()["msg"].as_str().unwrap().contains(&addr));
    vpc.pods[p].ip(&["link", "del", "eth0"]).unwrap();
    assert_eq!(vpc.sluice(0, "CHECK", "p", p, &conf).error_code(), 103);
    vpc.sluice(0, "DEL", "p", p, &conf).expect_ok("DEL with interface gone");
    assert!(vpc.leases(0).is_empty());
}

#[test]
fn del_succeeds_when_netns_is_gone_or_not_given() {
    if !require_root("del_succeeds_when_netns_is_gone_or_not_given") {
        return;
    }
    let mut vpc = Vpc::new("dg", 1).unwrap();
    let conf = vpc.main_conf(0, "1.1.0");
    let p = vpc.pod("gone").unwrap();
    vpc.sluice(0, "ADD", "gone", p, &conf).expect_ok("ADD");
    let q = vpc.pod("empty").unwrap();
    vpc.sluice(0, "ADD", "empty", q, &conf).expect_ok("ADD");
    assert_eq!(vpc.leases(0).len(), 2);

    // The runtime deleted the namespace before DEL.
    let path = vpc.pods[p].path().display().to_string();
    vpc.pods.remove(p);
    let bin = cni_bin_dir().join("sluice");
    let stdin = serde_json::to_vec(&conf).unwrap();
    sluice_integration::cni::Call::new(&bin, Some(&vpc.node_name(0)))
        .standard("DEL", "gone", &path, "eth0")
        .run(&stdin)
        .expect_ok("DEL with the netns deleted");
    // containerd: CNI_NETNS empty.
    sluice_integration::cni::Call::new(&bin, Some(&vpc.node_name(0)))
        .standard("DEL", "empty", "", "eth0")
        .run(&stdin)
        .expect_ok("DEL with empty CNI_NETNS");
    assert!(vpc.leases(0).is_empty(), "{:?}", vpc.leases(0));
    assert!(vpc.endpoints(0).is_empty());
}

#[test]
fn eni_kind_moves_the_device_in_and_hands_it_back() {
    if !require_root("eni_kind_moves_the_device_in_and_hands_it_back") {
        return;
    }
    let mut vpc = Vpc::new("en", 1).unwrap();
    let mac = vpc.add_eni(0, "eni1").unwrap();
    let mut conf = vpc.main_conf(0, "1.0.0");
    // By MAC: a device's name can change, its MAC does not.
    conf["link"] = json!({"kind": "eni", "mac": mac});
    let p = vpc.pod("p").unwrap();
    let r = vpc.sluice(0, "ADD", "p", p, &conf).expect_ok("ADD").json();
    assert_eq!(r["interfaces"][0]["mac"], mac.as_str(), "the pod has the ENI itself");
    assert!(
        !vpc.nodes[0].link_names().unwrap().contains(&"eni1".to_string()),
        "ENI left the host"
    );
    let _gw = EchoServer::start(&vpc.fabric, 7001, "vpc").unwrap();
    assert_eq!(tcp_request(&vpc.pods[p], sa("10.244.0.1", 7001), "x").unwrap(), "vpc:x");
    // A whole ENI needs no host path: the node probes its pod, and the pod
    // reaches its node, through the VPC like any other host.
    vpc.nodes[0]
        .ip(&["route", "add", "default", "via", VPC_ROUTER, "dev", "eth0"])
        .unwrap();
    let _pod_server = EchoServer::start(&vpc.pods[p], 7000, "p").unwrap();
    let _node_server = EchoServer::start(&vpc.nodes[0], 7002, "node").unwrap();
    let pod_ip = result_ip(&r);
    assert_eq!(
        tcp_request(&vpc.nodes[0], sa(&pod_ip, 7000), "probe").unwrap(),
        "p:probe"
    );
    assert_eq!(
        tcp_request(&vpc.pods[p], sa(&node_ip(0), 7002), "hi").unwrap(),
        "node:hi"
    );
    vpc.sluice(0, "CHECK", "p", p, &conf).expect_ok("CHECK");

    // A second pod cannot take the same ENI, and leaves nothing behind.
    let q = vpc.pod("q").unwrap();
    let out = vpc.sluice(0, "ADD", "q", q, &conf);
    assert_eq!(out.error_code(), 102);
    assert_eq!(vpc.leases(0).len(), 1);

    vpc.sluice(0, "DEL", "p", p, &conf).expect_ok("DEL");
    let links = vpc.nodes[0].link_names().unwrap();
    assert!(
        links.contains(&"eni1".to_string()),
        "ENI back under its own name: {links:?}"
    );
    assert!(vpc.nodes[0].ip(&["link", "show", "eni1"]).unwrap().contains(&mac));
    assert_eq!(vpc.pods[p].link_names().unwrap(), vec!["lo"]);
    assert!(vpc.leases(0).is_empty());
}

#[test]
fn add_announces_the_pod_address_to_the_vpc() {
    if !require_root("add_announces_the_pod_address_to_the_vpc") {
        return;
    }
    let mut vpc = Vpc::new("ga", 1).unwrap();
    let p = vpc.pod("p").unwrap();
    let conf = vpc.main_conf(0, "1.1.0");
    let mut result = serde_json::Value::Null;
    let seen = sluice_integration::probe::capture_gratuitous_arp(
        &vpc.fabric,
        "br0",
        std::time::Duration::from_millis(1500),
        || {
            result = vpc.sluice(0, "ADD", "p", p, &conf).expect_ok("ADD").json();
        },
    )
    .unwrap();
    let ip = result_ip(&result);
    let mac = result["interfaces"][0]["mac"].as_str().unwrap().to_string();
    assert!(
        seen.contains(&(mac.clone(), ip.clone())),
        "gratuitous ARP for {ip} at {mac} on the fabric; saw {seen:?}"
    );
    vpc.sluice(0, "DEL", "p", p, &conf).expect_ok("DEL");
}

#[test]
fn dual_stack_pods_talk_over_ipv6() {
    if !require_root("dual_stack_pods_talk_over_ipv6") {
        return;
    }
    let mut vpc = Vpc::new("v6", 2).unwrap();
    vpc.fabric
        .ip(&["addr", "add", "fd00:244::1/64", "dev", "br0", "nodad"])
        .unwrap();
    let mut pods = Vec::new();
    for (node, name) in [(0usize, "a"), (1, "b")] {
        let conf = vpc.dual_stack_conf(node);
        let p = vpc.pod(name).unwrap();
        let r = vpc.sluice(node, "ADD", name, p, &conf).expect_ok("ADD").json();
        let ips = r["ips"].as_array().unwrap();
        assert_eq!(ips.len(), 2, "one address per family: {r}");
        let v6 = ips[1]["address"]
            .as_str()
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        assert!(v6.starts_with(&format!("fd00:244::{}:", node + 1)), "{v6}");
        let route = vpc.pods[p].ip(&["-6", "route", "show", "default"]).unwrap();
        assert!(
            route.contains("via fd00:244::1"),
            "IPv6 default route via the v6 gateway: {route}"
        );
        pods.push((node, name, p, v6, conf));
    }
    let _s = EchoServer::start(&vpc.pods[pods[1].2], 7500, "b").unwrap();
    let to: SocketAddr = format!("[{}]:7500", pods[1].3).parse().unwrap();
    assert_eq!(
        tcp_request(&vpc.pods[pods[0].2], to, "six").unwrap(),
        "b:six",
        "TCP over IPv6 across nodes"
    );
    for (node, name, p, _, conf) in &pods {
        vpc.sluice(*node, "CHECK", name, *p, conf).expect_ok("CHECK");
        vpc.sluice(*node, "DEL", name, *p, conf).expect_ok("DEL");
    }
    assert!(vpc.leases(0).is_empty() && vpc.leases(1).is_empty());
}
