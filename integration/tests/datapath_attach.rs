//! The datapath on real pod interfaces through the CNI binary: ADD attaches
//! the pinned programs (TCX, or clsact when asked), CHECK catches missing
//! or foreign programs, DEL leaves nothing pinned, and a new program
//! version takes over every pod without breaking its connections.

use serde_json::json;
use sluice_integration::datapath::{RawPeer, programs_on, tc_filters};
use sluice_integration::probe::{EchoServer, Session, StreamEcho, index_and_mac, udp_request, udp_request_from};
use sluice_integration::require_root;
use sluice_integration::vpc::{Vpc, result_ip};
use sluice_tc_datapath::attach::ProgramRef;
use sluice_tc_datapath::layout::{Direction, Reason};
use sluice_tc_datapath::maps::lb::{Algorithm, Backend, ServiceSpec};
use std::net::{IpAddr, SocketAddr};
use std::os::fd::AsFd;

fn sa(ip: &str, port: u16) -> SocketAddr {
    format!("{ip}:{port}").parse().unwrap()
}

fn names(l: &[ProgramRef]) -> Vec<&str> {
    l.iter().map(|p| p.name.as_str()).collect()
}

#[test]
fn add_attaches_check_verifies_del_removes() {
    if !require_root("add_attaches_check_verifies_del_removes") {
        return;
    }
    let mut vpc = Vpc::new("dpa", 1).unwrap();
    let conf = vpc.main_conf(0, "1.1.0");
    let (a, b) = (vpc.pod("a").unwrap(), vpc.pod("b").unwrap());
    let ip_a = result_ip(&vpc.sluice(0, "ADD", "ca", a, &conf).expect_ok("ADD a").json());
    let ip_b = result_ip(&vpc.sluice(0, "ADD", "cb", b, &conf).expect_ok("ADD b").json());

    // One program version loaded for both pods; each pod has its own links.
    assert_eq!(vpc.program_versions(0).len(), 1);
    assert_eq!(vpc.pinned_links(0), vec!["ca:eth0".to_string(), "cb:eth0".to_string()]);
    let on = programs_on(&vpc.pods[a], "eth0").unwrap();
    assert_eq!(
        (names(&on.egress), names(&on.ingress)),
        (vec!["sl_egress"], vec!["sl_ingress"])
    );
    let on_b = programs_on(&vpc.pods[b], "eth0").unwrap();
    assert_eq!(
        on.egress[0].id, on_b.egress[0].id,
        "both pods run the same loaded program (no verifier run per pod)"
    );

    // The endpoint map knows each pod by address, interface and MAC.
    let maps = vpc.maps(0).unwrap();
    let ep = maps.endpoints().get(ip_a.parse().unwrap()).unwrap().unwrap();
    let index_a: u32 = vpc.pods[a]
        .ip(&["-o", "link", "show", "eth0"])
        .unwrap()
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(ep.ifindex, index_a);

    // Traffic goes through the programs.
    let before = maps.observe().count(Reason::Forwarded, Direction::Egress).unwrap();
    let _srv = EchoServer::start(&vpc.pods[b], 7000, "b").unwrap();
    assert_eq!(udp_request(&vpc.pods[a], sa(&ip_b, 7000), "hi").unwrap(), "b:hi");
    let after = maps.observe().count(Reason::Forwarded, Direction::Egress).unwrap();
    assert!(after > before, "egress forwarded counter moved: {before} -> {after}");

    // Source check: an address the pod was not given is dropped at its egress.
    vpc.pods[a]
        .ip(&["addr", "add", "10.244.1.251/32", "dev", "eth0"])
        .unwrap();
    let spoofed = udp_request_from(&vpc.pods[a], "10.244.1.251".parse().unwrap(), sa(&ip_b, 7000), "x");
    assert!(spoofed.is_err(), "a spoofed source got through: {spoofed:?}");
    assert!(
        maps.observe()
            .count(Reason::DropSourceAddress, Direction::Egress)
            .unwrap()
            >= 3
    );
    vpc.pods[a]
        .ip(&["addr", "del", "10.244.1.251/32", "dev", "eth0"])
        .unwrap();

    // CHECK passes, then catches a foreign program put in front of ours
    // (as a pod with CAP_NET_ADMIN + CAP_BPF could).
    vpc.sluice(0, "CHECK", "ca", a, &conf).expect_ok("CHECK a");
    // CHECK changes nothing: under other settings it reports, it does not upgrade.
    let versions = vpc.program_versions(0);
    let mut other = conf.clone();
    other["datapath"]["sourceCheck"] = json!(false);
    let out = vpc.sluice(0, "CHECK", "ca", a, &other);
    assert_eq!(out.error_code(), 103, "{}", out.stdout);
    assert!(
        out.stdout.contains("does not run this configuration's programs"),
        "{}",
        out.stdout
    );
    assert_eq!(vpc.program_versions(0), versions, "CHECK loaded nothing");
    {
        let mut foreign = sluice_tc_datapath::loader::load(&Default::default(), None).unwrap();
        let prog: &mut aya::programs::SchedClassifier = foreign.program_mut("sl_egress").unwrap().try_into().unwrap();
        let ns = std::fs::File::open(vpc.pods[a].path()).unwrap();
        let _link = std::thread::scope(|s| {
            s.spawn(|| {
                nix::sched::setns(ns.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
                prog.attach_with_options(
                    "eth0",
                    aya::programs::TcAttachType::Egress,
                    aya::programs::tc::TcAttachOptions::TcxOrder(aya::programs::LinkOrder::first()),
                )
                .unwrap()
            })
            .join()
            .unwrap()
        });
        let out = vpc.sluice(0, "CHECK", "ca", a, &conf);
        assert_eq!(out.error_code(), 103, "{}", out.stdout);
        assert!(
            out.stdout.contains("expected only sluice's sl_egress"),
            "{}",
            out.stdout
        );
        // `foreign` drops here, detaching its program.
    }
    vpc.sluice(0, "CHECK", "ca", a, &conf)
        .expect_ok("CHECK a after the foreign program left");
    // A lost pin (our link gone) is caught too.
    std::fs::remove_file(vpc.datapath_dir(0).join("links/ca:eth0/ingress")).unwrap();
    let out = vpc.sluice(0, "CHECK", "ca", a, &conf);
    assert_eq!(out.error_code(), 103, "{}", out.stdout);
    assert!(
        out.stdout.contains("ingress link of eth0 is not pinned"),
        "{}",
        out.stdout
    );

    // DEL: links unpinned, the endpoint entry gone; DEL again is fine.
    vpc.sluice(0, "DEL", "ca", a, &conf).expect_ok("DEL a");
    vpc.sluice(0, "DEL", "ca", a, &conf).expect_ok("DEL a again");
    assert_eq!(vpc.pinned_links(0), vec!["cb:eth0".to_string()]);
    assert!(
        maps.endpoints().get(ip_a.parse().unwrap()).unwrap().is_none(),
        "endpoint entry removed"
    );
    vpc.sluice(0, "DEL", "cb", b, &conf).expect_ok("DEL b");
    assert!(vpc.pinned_links(0).is_empty());
    assert_eq!(
        maps.endpoints().entries().unwrap().len(),
        0,
        "no endpoint left in the map"
    );
}

/// A VIP served by pod `b`: 10.96.0.10:80/tcp -> b:7100, and the same port over UDP to 7000.
fn service_to(vpc: &Vpc, ip_b: &str) {
    let mut maps = vpc.maps(0).unwrap();
    let b: IpAddr = ip_b.parse().unwrap();
    for (proto, port, target, id) in [(6u8, 80u16, 7100u16, 1u32), (17, 53, 7000, 2)] {
        maps.lb_mut()
            .upsert_service(&ServiceSpec {
                vip: "10.96.0.10".parse().unwrap(),
                port,
                proto,
                rev_nat_id: id,
                algorithm: Algorithm::Random,
                affinity_timeout_secs: 0,
                reject: false,
                node_address: false,
                scope: 0,
                source_ranges: false,
                node_denied: false,
                draining: Vec::new(),
                backends: vec![Backend {
                    id,
                    addr: b,
                    port: target,
                    active: true,
                }],
            })
            .unwrap();
    }
}

/// A pod with `CAP_NET_RAW` (in the runtime's default set) can write any
/// frame on its interface: another pod's MAC and address together. The
/// source check tells pods apart by the interface a frame leaves on, so
/// no two pods of a node may have one index; made inside each pod's fresh
/// namespace, every pod's first interface would be number 2.
#[test]
fn a_pod_cannot_send_as_another_with_its_mac_and_address() {
    if !require_root("a_pod_cannot_send_as_another_with_its_mac_and_address") {
        return;
    }
    let mut vpc = Vpc::new("dps", 1).unwrap();
    let conf = vpc.main_conf(0, "1.1.0");
    let pods = ["a", "b", "c"].map(|n| vpc.pod(n).unwrap());
    let ips: Vec<std::net::Ipv4Addr> = pods
        .iter()
        .zip(["ca", "cb", "cc"])
        .map(|(&p, cid)| {
            result_ip(&vpc.sluice(0, "ADD", cid, p, &conf).expect_ok("ADD").json())
                .parse()
                .unwrap()
        })
        .collect();
    let [(index_a, mac_a), (index_b, mac_b), (_, mac_c)] = pods.map(|p| index_and_mac(&vpc.pods[p], "eth0").unwrap());
    assert_ne!(index_a, index_b, "two pods of one node share an interface index");
    let maps = vpc.maps(0).unwrap();
    for (&p, ip) in pods.iter().zip(&ips) {
        let ep = maps.endpoints().get(IpAddr::V4(*ip)).unwrap().unwrap();
        assert_eq!(
            ep.ifindex,
            index_and_mac(&vpc.pods[p], "eth0").unwrap().0,
            "the endpoint entry names the pod's interface"
        );
        // The index tells the pods apart: no namespace comparison paid for.
        assert_eq!(ep.netns_cookie, 0);
    }

    let [a, b, c] = [0, 1, 2].map(|i| RawPeer {
        pod: pods[i],
        ip: ips[i],
        mac: [mac_a, mac_b, mac_c][i],
    });
    vpc.only_own_frames_leave(0, &b, &a, &c).unwrap();
}

#[test]
fn a_new_program_version_takes_over_every_link_keeping_connections() {
    if !require_root("a_new_program_version_takes_over_every_link_keeping_connections") {
        return;
    }
    let mut vpc = Vpc::new("dpu", 1).unwrap();
    let conf = vpc.main_conf(0, "1.1.0");
    let (a, b, c) = (vpc.pod("a").unwrap(), vpc.pod("b").unwrap(), vpc.pod("c").unwrap());
    vpc.sluice(0, "ADD", "ca", a, &conf).expect_ok("ADD a");
    let ip_b = result_ip(&vpc.sluice(0, "ADD", "cb", b, &conf).expect_ok("ADD b").json());
    service_to(&vpc, &ip_b);
    let _echo = EchoServer::start(&vpc.pods[b], 7000, "b").unwrap();
    let _stream = StreamEcho::start(&vpc.pods[b], 7100, "b").unwrap();

    // An established connection through the VIP (DNAT + conntrack).
    let mut session = Session::open(&vpc.pods[a], sa("10.96.0.10", 80)).unwrap();
    assert_eq!(session.ask("one").unwrap(), "b:one");
    let old = vpc.program_versions(0);
    let old_on = programs_on(&vpc.pods[a], "eth0").unwrap();
    vpc.pods[a]
        .ip(&["addr", "add", "10.244.1.251/32", "dev", "eth0"])
        .unwrap();
    assert!(udp_request_from(&vpc.pods[a], "10.244.1.251".parse().unwrap(), sa(&ip_b, 7000), "x").is_err());

    // Another configuration (no source check) is another program version:
    // the next ADD loads it and moves every existing link onto it.
    let mut conf2 = conf.clone();
    conf2["datapath"]["sourceCheck"] = json!(false);
    vpc.sluice(0, "ADD", "cc", c, &conf2)
        .expect_ok("ADD c with the new version");
    let new = vpc.program_versions(0);
    assert_eq!(new.len(), 1, "the old version is unpinned: {new:?}");
    assert_ne!(new, old);
    for p in [a, b, c] {
        let on = programs_on(&vpc.pods[p], "eth0").unwrap();
        assert_eq!(
            (names(&on.egress), names(&on.ingress)),
            (vec!["sl_egress"], vec!["sl_ingress"])
        );
        assert_ne!(
            on.egress[0].id, old_on.egress[0].id,
            "pod {p} egress runs the new program"
        );
        assert_ne!(
            on.ingress[0].id, old_on.ingress[0].id,
            "pod {p} ingress runs the new program"
        );
    }
    // The connection made under the old programs carries on, through the
    // same conntrack entry, under the new ones.
    assert_eq!(session.ask("two").unwrap(), "b:two");
    assert_eq!(session.ask("three").unwrap(), "b:three");
    // And the new behaviour is in force on the old pods.
    assert_eq!(
        udp_request_from(&vpc.pods[a], "10.244.1.251".parse().unwrap(), sa(&ip_b, 7000), "x").unwrap(),
        "b:x"
    );
    // UDP through the VIP too.
    assert_eq!(udp_request(&vpc.pods[a], sa("10.96.0.10", 53), "q").unwrap(), "b:q");
    vpc.sluice(0, "CHECK", "ca", a, &conf2)
        .expect_ok("CHECK a on the new version");
    drop(session);
    for (cid, p) in [("ca", a), ("cb", b), ("cc", c)] {
        vpc.sluice(0, "DEL", cid, p, &conf2).expect_ok("DEL");
    }
    assert!(vpc.pinned_links(0).is_empty());
}

#[test]
fn clsact_fallback_attaches_checks_and_detaches() {
    if !require_root("clsact_fallback_attaches_checks_and_detaches") {
        return;
    }
    let mut vpc = Vpc::new("dpt", 1).unwrap();
    let mut conf = vpc.main_conf(0, "1.1.0");
    conf["datapath"]["attach"] = json!("tc");
    let (a, b) = (vpc.pod("a").unwrap(), vpc.pod("b").unwrap());
    vpc.sluice(0, "ADD", "ca", a, &conf).expect_ok("ADD a");
    let ip_b = result_ip(&vpc.sluice(0, "ADD", "cb", b, &conf).expect_ok("ADD b").json());
    assert!(vpc.pinned_links(0).is_empty(), "tc mode pins no links");
    let on = programs_on(&vpc.pods[a], "eth0").unwrap();
    assert!(
        on.egress.is_empty() && on.ingress.is_empty(),
        "no TCX programs in tc mode"
    );
    for side in ["egress", "ingress"] {
        let f = tc_filters(&vpc.pods[a], "eth0", side).unwrap();
        assert!(
            f.contains(&format!("sl_{side}")) && f.contains("direct-action"),
            "{side}: {f}"
        );
    }
    service_to(&vpc, &ip_b);
    let _echo = EchoServer::start(&vpc.pods[b], 7000, "b").unwrap();
    assert_eq!(udp_request(&vpc.pods[a], sa("10.96.0.10", 53), "q").unwrap(), "b:q");
    vpc.sluice(0, "CHECK", "ca", a, &conf).expect_ok("CHECK a");

    // A removed filter is caught by CHECK; a repeated ADD-style attach is not needed to see it.
    vpc.pods[a]
        .exec("tc", &["filter", "del", "dev", "eth0", "ingress"])
        .unwrap();
    let out = vpc.sluice(0, "CHECK", "ca", a, &conf);
    assert_eq!(out.error_code(), 103, "{}", out.stdout);
    assert!(out.stdout.contains("ingress filters of eth0"), "{}", out.stdout);

    // A new version moves tc-mode pods too.
    let before = tc_filters(&vpc.pods[b], "eth0", "egress").unwrap();
    let mut conf2 = conf.clone();
    conf2["datapath"]["ctTimeouts"] = json!({"udp": 30});
    let c = vpc.pod("c").unwrap();
    vpc.sluice(0, "ADD", "cc", c, &conf2).expect_ok("ADD c");
    let after = tc_filters(&vpc.pods[b], "eth0", "egress").unwrap();
    assert_ne!(before, after, "b's filter now names the new program");
    vpc.sluice(0, "CHECK", "cb", b, &conf2)
        .expect_ok("CHECK b on the new version");

    for (cid, p) in [("ca", a), ("cb", b), ("cc", c)] {
        vpc.sluice(0, "DEL", cid, p, &conf2).expect_ok("DEL");
    }
}
