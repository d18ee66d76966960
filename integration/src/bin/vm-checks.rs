//! The checks that run inside the kernel-matrix VM (`integration/vm/run`):
//! one process, many checks (a process start costs ~30 ms under TCG), each
//! reported on the serial console as `CHECK <name> PASS|FAIL <detail>`,
//! then `SUMMARY <n> passed, <m> failed`. The harness turns those lines
//! into the run's result.

use anyhow::{Context, Result, bail, ensure};
use sluice_integration::netns::Netns;
use sluice_tc_datapath::attach::{AttachMode, Attached, Node};
use sluice_tc_datapath::loader::{self, DatapathConfig};
use std::os::fd::AsFd;
use std::path::Path;

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// ipvlan exists here (the host kernel has none): a link in L2 and L3 mode
/// on a parent in a namespace of its own.
fn ipvlan_module() -> Result<String> {
    let ns = Netns::new("vmipv")?;
    ns.ip(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"])?;
    for mode in ["l2", "l3"] {
        let name = format!("iv-{mode}");
        ns.ip(&[
            "link", "add", "link", "p0", "name", &name, "type", "ipvlan", "mode", mode,
        ])?;
        let shown = ns.ip(&["-d", "link", "show", &name])?;
        ensure!(shown.contains(&format!("ipvlan  mode {mode}")), "{shown}");
    }
    Ok("ipvlan l2 and l3 links made".into())
}

/// The programs pass this kernel's verifier.
fn datapath_loads() -> Result<String> {
    loader::load(&DatapathConfig::default(), None).context("loading the datapath")?;
    Ok(format!("both programs verified on {}", kernel()))
}

/// `auto` finds no tcx here and attaches clsact filters, by probing.
fn clsact_fallback() -> Result<String> {
    let ns = Netns::new("vmtc")?;
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"])?;
    ns.ip(&["link", "set", "v0", "up"])?;
    std::fs::create_dir_all("/sys/fs/bpf/vmcheck").context("bpffs")?;
    let root = Path::new("/sys/fs/bpf/vmcheck");
    let mut node = Node::open(&DatapathConfig::default(), root).context("loading and pinning")?;
    let f = std::fs::File::open(ns.path())?;
    let how = node.attach(f.as_fd(), "v0", "vm:v0", AttachMode::Auto)?;
    if how != Attached::Tc {
        bail!("auto chose {} on {}", how.as_str(), kernel());
    }
    let filters = ns.exec("tc", &["filter", "show", "dev", "v0", "ingress"])?;
    let text = String::from_utf8_lossy(&filters.stdout);
    ensure!(text.contains("sl_ingress"), "no sluice filter on v0 ingress: {text}");
    Ok("auto attached clsact filters (no tcx on this kernel)".into())
}

/// Pods through the real CNI binary in the given link mode on one node of
/// the simulated VPC: two servers and a client; TCP pod to pod, then a
/// Service over the two servers called from the client (DNAT at its egress,
/// reverse NAT at its ingress), then an ingress policy on one server
/// isolating it with no rule: the client's call to it is dropped and
/// counted; DEL leaves no lease.
fn pods(kind: &str, mode: &str) -> Result<String> {
    use sluice_integration::probe::{EchoServer, tcp_request};
    use sluice_integration::vpc::{Vpc, result_ip};
    use sluice_tc_datapath::layout::{Direction, EpPolicyValue, POLICY_F_INGRESS, PROTO_TCP, Reason, SVC_ALG_RANDOM};
    use sluice_tc_datapath::maps::ServiceSpec;
    use std::net::{IpAddr, SocketAddr};

    let mut vpc = Vpc::new("vm", 1)?;
    let mut conf = vpc.main_conf(0, "1.1.0");
    conf["link"] = serde_json::json!({"kind": kind, "parent": "eth0", "mode": mode});
    let mut pods = Vec::new();
    for name in ["s1", "s2", "c"] {
        let p = vpc.pod(name)?;
        let out = vpc.sluice(0, "ADD", name, p, &conf);
        ensure!(out.success, "ADD {name}: {}", out.stdout);
        pods.push((name, p, result_ip(&out.json()).parse::<IpAddr>()?));
    }
    let _servers: Vec<EchoServer> = pods[..2]
        .iter()
        .map(|(name, p, _)| EchoServer::start(&vpc.pods[*p], 8080, name))
        .collect::<Result<_>>()?;
    let client = &vpc.pods[pods[2].1];
    let direct = tcp_request(client, SocketAddr::new(pods[0].2, 8080), "hi")?;
    ensure!(direct == "s1:hi", "pod to pod: {direct:?}");
    let mut maps = vpc.maps(0)?;
    let vip: IpAddr = "10.96.0.10".parse()?;
    maps.upsert_service(&ServiceSpec {
        vip,
        port: 80,
        proto: PROTO_TCP,
        rev_nat_id: 1,
        algorithm: SVC_ALG_RANDOM,
        affinity_timeout_secs: 0,
        reject: false,
        backends: vec![(1, pods[0].2, 8080, true), (2, pods[1].2, 8080, true)],
    })?;
    let mut seen = std::collections::BTreeSet::new();
    for i in 0..16 {
        let r = tcp_request(client, SocketAddr::new(vip, 80), &format!("r{i}"))?;
        seen.insert(r.split(':').next().unwrap_or("").to_string());
    }
    ensure!(seen.len() == 2, "the Service reached {seen:?}");
    let ep = maps
        .endpoint_entries()?
        .into_iter()
        .find(|(ip, _)| *ip == pods[1].2)
        .map(|(_, v)| v.endpoint_id)
        .context("s2's endpoint entry")?;
    maps.set_endpoint_policy(
        ep,
        EpPolicyValue {
            identity: 300,
            flags: POLICY_F_INGRESS,
            ..Default::default()
        },
    )?;
    let dropped0 = maps.count(Reason::DropPolicy, Direction::Ingress)?;
    let denied = tcp_request(client, SocketAddr::new(pods[1].2, 8080), "no");
    ensure!(denied.is_err(), "an isolated pod answered: {denied:?}");
    ensure!(
        maps.count(Reason::DropPolicy, Direction::Ingress)? > dropped0,
        "the drop was not counted as drop-policy"
    );
    for (name, p, _) in &pods {
        let out = vpc.sluice(0, "DEL", name, *p, &conf);
        ensure!(out.success, "DEL {name}: {}", out.stdout);
    }
    ensure!(vpc.leases(0).is_empty(), "leases left: {:?}", vpc.leases(0));
    Ok(format!(
        "{kind} {mode}: pod to pod, a Service over 2 backends (both answered), a policy drop counted, DEL clean"
    ))
}

/// netfilter is not in the path: its conntrack was never even loaded.
fn netfilter_untouched() -> Result<String> {
    let modules = std::fs::read_to_string("/proc/modules")?;
    ensure!(!modules.contains("nf_conntrack"), "nf_conntrack is loaded");
    ensure!(
        !Path::new("/proc/net/nf_conntrack").exists(),
        "/proc/net/nf_conntrack exists"
    );
    Ok("nf_conntrack not loaded after all of the above".into())
}

/// A check: what it showed, or why it failed.
type Check = fn() -> Result<String>;

fn main() {
    let checks: [(&str, Check); 7] = [
        ("ipvlan-module", ipvlan_module),
        ("datapath-verifies", datapath_loads),
        ("attach-auto-is-clsact", clsact_fallback),
        ("ipvlan-l2-pods-service-policy", || pods("ipvlan", "l2")),
        ("ipvlan-l3-pods-service-policy", || pods("ipvlan", "l3")),
        ("macvlan-pods-service-policy", || pods("macvlan", "bridge")),
        ("netfilter-untouched", netfilter_untouched),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, check) in checks {
        match check() {
            Ok(detail) => {
                passed += 1;
                println!("CHECK {name} PASS {detail}");
            }
            Err(e) => {
                failed += 1;
                println!("CHECK {name} FAIL {e:#}");
            }
        }
    }
    println!("SUMMARY {passed} passed, {failed} failed");
}
