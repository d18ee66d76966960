//! The demo behind `scripts/demo`: a simulated VPC with two nodes, pods
//! created by the real `sluice` binary (main role, macvlan on the node's
//! ENI), real TCP between them, a Service through the eBPF datapath
//! (programmed with `sluicectl`), then DEL and a check that nothing is left.

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
    // A Service "web" (10.96.0.10:80 -> web-1, web-2 on :8080), programmed
    // into each node's pinned maps, called from api-1 on the other node.
    let ctl = std::env::current_exe()?.parent().unwrap().join("sluicectl");
    let web: Vec<String> = pods
        .iter()
        .filter(|p| p.0.starts_with("web"))
        .flat_map(|p| ["--backend".to_string(), format!("{}:8080", p.3)])
        .collect();
    for node in 0..2 {
        let out = std::process::Command::new(&ctl)
            .arg("--bpffs")
            .arg(vpc.bpffs[node].root())
            .args(["service", "add", "10.96.0.10:80/tcp"])
            .args(&web)
            .output()?;
        ensure!(
            out.status.success(),
            "sluicectl: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    println!(
        "
  sluicectl service add 10.96.0.10:80/tcp {}  (on both nodes)",
        web.join(" ")
    );
    let api = pods.iter().find(|p| p.0 == "api-1").expect("api-1").2;
    let mut hits = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..20 {
        let reply = tcp_request(&vpc.pods[api], "10.96.0.10:80".parse()?, &format!("req{i}"))?;
        *hits
            .entry(reply.split(':').next().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    println!("  TCP  api-1  -> 10.96.0.10:80 x20 (DNAT at api-1's own egress, no kube-proxy): {hits:?}");
    let ct = std::process::Command::new(&ctl)
        .arg("--bpffs")
        .arg(vpc.bpffs[1].root())
        .args(["ct", "list"])
        .output()?;
    let ct = String::from_utf8_lossy(&ct.stdout);
    println!(
        "  sluicectl ct list (node-1): {} entries, e.g.",
        ct.lines().count().saturating_sub(1)
    );
    for l in ct.lines().take(3) {
        println!("    {l}");
    }
    let netfilter = vpc.pods[api].exec("conntrack", &["-L"])?;
    println!(
        "  conntrack -L in api-1: {}",
        String::from_utf8_lossy(&netfilter.stderr).trim()
    );
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
    println!(
        "\n(ADD times include `ip netns exec`; a node's first ADD also loads and verifies the datapath. \
         Network policy and the agent come next.)"
    );
    Ok(())
}
