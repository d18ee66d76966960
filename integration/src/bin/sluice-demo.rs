//! The demo behind `scripts/demo`: a simulated VPC with two nodes, pods
//! created by the real `sluice` binary (main role, macvlan on the node's
//! ENI), real TCP between them, then DEL and a check that nothing is left.

use anyhow::{Result, bail, ensure};
use sluice_integration::cni::Call;
use sluice_integration::probe::{EchoServer, tcp_request};
use sluice_integration::vpc::{Vpc, result_ip};
use std::time::Instant;

fn main() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo creates network namespaces: run it as root (sudo scripts/demo)");
    }
    let bin = std::env::current_exe()?.parent().unwrap().join("sluice");
    let mut vpc = Vpc::new("demo", 2)?;
    println!(
        "sluice demo: a simulated VPC, fabric 10.244.0.0/16 (gateway 10.244.0.1), 2 nodes, eth0 = each node's ENI\n"
    );
    let placement = [("web-1", 0usize), ("web-2", 0), ("api-1", 1)];
    let mut pods = Vec::new();
    for (name, node) in placement {
        let p = vpc.pod(name)?;
        let conf = serde_json::to_vec(&vpc.main_conf(node, "1.1.0"))?;
        let started = Instant::now();
        let out = Call::new(&bin, Some(&vpc.node_name(node)))
            .standard("ADD", name, &vpc.pods[p].path().display().to_string(), "eth0")
            .run(&conf);
        let took = started.elapsed();
        ensure!(out.success, "ADD {name}: {}", out.stdout);
        let r = out.json();
        let ip = result_ip(&r);
        println!(
            "  ADD  {name:<6} on node-{node}  ->  {ip:<11} mac {}  ({:.1} ms)",
            r["interfaces"][0]["mac"].as_str().unwrap_or("?"),
            took.as_secs_f64() * 1e3
        );
        pods.push((name, node, p, ip, conf));
    }
    println!();
    let servers: Vec<EchoServer> = pods
        .iter()
        .map(|(name, _, p, _, _)| EchoServer::start(&vpc.pods[*p], 8080, name))
        .collect::<Result<_>>()?;
    for (from, fnode, fp, _, _) in &pods {
        for (to, tnode, _, ip, _) in &pods {
            if from == to {
                continue;
            }
            let reply = tcp_request(&vpc.pods[*fp], format!("{ip}:8080").parse()?, "hello")?;
            let path = if fnode == tnode { "same node " } else { "cross node" };
            println!("  TCP  {from:<6} -> {to:<6} {ip}:8080  [{path}]  answer: {reply:?}");
        }
    }
    drop(servers);
    println!();
    for (name, node, p, _, conf) in &pods {
        let out = Call::new(&bin, Some(&vpc.node_name(*node)))
            .standard("DEL", name, &vpc.pods[*p].path().display().to_string(), "eth0")
            .run(conf);
        ensure!(out.success, "DEL {name}: {}", out.stdout);
    }
    let leases: usize = (0..2).map(|n| vpc.leases(n).len()).sum();
    let links: usize = vpc
        .pods
        .iter()
        .map(|p| p.link_names().map(|l| l.len() - 1).unwrap_or(0))
        .sum();
    println!("  DEL  all pods: pod links left {links}, IPAM leases left {leases}");
    ensure!(leases == 0 && links == 0, "DEL left something behind");
    println!("\n(ADD times include `ip netns exec`. Services, conntrack and policy arrive with the eBPF datapath.)");
    Ok(())
}
