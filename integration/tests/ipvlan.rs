//! ipvlan on this kernel. The host kernel of our CI has no ipvlan; then the
//! traffic test prints an explicit SKIP with the reason (the test script
//! counts it as a skip, never as a pass), and what can run does: sluice must
//! fail cleanly with "not available" and leave nothing behind. The netlink
//! requests themselves are unit-tested in cni-plugin/src/link/ipvlan.rs, and
//! the VM suite runs ipvlan on a kernel that has it.

use serde_json::json;
use sluice_integration::netns::Netns;
use sluice_integration::probe::{EchoServer, tcp_request};
use sluice_integration::vpc::{Vpc, result_ip};
use sluice_integration::{require_root, unique_prefix};

/// None when ipvlan works here; Some(reason) when it does not.
fn ipvlan_unsupported() -> Option<String> {
    let ns = Netns::new(&unique_prefix("ipv")).ok()?;
    ns.ip(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"])
        .ok()?;
    match ns.ip(&[
        "link", "add", "link", "p0", "name", "iv0", "type", "ipvlan", "mode", "l2",
    ]) {
        Ok(_) => None,
        Err(e) => Some(format!("kernel has no ipvlan support ({})", e.to_string().trim())),
    }
}

fn ipvlan_conf(vpc: &Vpc, mode: &str) -> serde_json::Value {
    let mut c = vpc.main_conf(0, "1.1.0");
    c["link"] = json!({"kind": "ipvlan", "parent": "eth0", "mode": mode});
    c
}

#[test]
fn ipvlan_without_kernel_support_fails_clean() {
    if !require_root("ipvlan_without_kernel_support_fails_clean") {
        return;
    }
    let Some(reason) = ipvlan_unsupported() else {
        sluice_integration::skip(
            "ipvlan_without_kernel_support_fails_clean",
            "this kernel has ipvlan (the traffic test covers it)",
        );
        return;
    };
    eprintln!("note: {reason}");
    let mut vpc = Vpc::new("ivx", 1).unwrap();
    let p = vpc.pod("p").unwrap();
    let out = vpc.sluice(0, "ADD", "p", p, &ipvlan_conf(&vpc, "l2"));
    assert_eq!(out.error_code(), 50, "{}", out.stdout);
    assert!(out.stdout.contains("ipvlan"), "{}", out.stdout);
    assert!(vpc.leases(0).is_empty(), "lease released on failure");
    assert!(vpc.endpoints(0).is_empty());
    assert_eq!(vpc.pods[p].link_names().unwrap(), vec!["lo"]);
}

#[test]
fn ipvlan_l2_pods_reach_each_other() {
    if !require_root("ipvlan_l2_pods_reach_each_other") {
        return;
    }
    if let Some(reason) = ipvlan_unsupported() {
        sluice_integration::skip(
            "ipvlan_l2_pods_reach_each_other",
            &format!("{reason}; ipvlan L2/L3 traffic runs in the kernel-matrix VM instead (integration/vm/run)"),
        );
        return;
    }
    let mut vpc = Vpc::new("iv", 1).unwrap();
    let a = vpc.pod("a").unwrap();
    let b = vpc.pod("b").unwrap();
    let conf = ipvlan_conf(&vpc, "l2");
    let ra = vpc.sluice(0, "ADD", "a", a, &conf).expect_ok("ADD a").json();
    let rb = vpc.sluice(0, "ADD", "b", b, &conf).expect_ok("ADD b").json();
    assert_eq!(
        ra["interfaces"][0]["mac"], rb["interfaces"][0]["mac"],
        "ipvlan slaves share the parent's MAC"
    );
    let _s = EchoServer::start(&vpc.pods[b], 7200, "b").unwrap();
    assert_eq!(
        tcp_request(&vpc.pods[a], format!("{}:7200", result_ip(&rb)).parse().unwrap(), "x").unwrap(),
        "b:x"
    );
    for (p, cid) in [(a, "a"), (b, "b")] {
        vpc.sluice(0, "DEL", cid, p, &conf).expect_ok("DEL");
    }
    assert!(vpc.leases(0).is_empty());
}
