//! The demo behind `scripts/demo`: a simulated VPC with two nodes, pods
//! created by the real `sluice` binary (main role, macvlan on the node's
//! ENI), one `sluice-agent` per node on the manifests in `conf/demo/`, a
//! Service called through the eBPF datapath, a NetworkPolicy drop seen as a
//! flow event and in the metrics, then DEL and a check that nothing is left.

use anyhow::{Context, Result, bail, ensure};
use sluice_integration::agent::{AgentProcess, metrics_addr, sample, scrape};
use sluice_integration::cni::Call;
use sluice_integration::netns::Netns;
use sluice_integration::probe::{EchoServer, tcp_request};
use sluice_integration::vpc::{Vpc, result_ip};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// (name, node, labels)
const PODS: [(&str, usize, &str); 4] = [
    ("web-1", 0, "{app: web}"),
    ("web-2", 1, "{app: web}"),
    ("client", 1, "{role: client}"),
    ("intruder", 0, "{role: visitor}"),
];

/// What the cluster's controllers would add to the manifests: the Pod
/// objects and the web Service's EndpointSlice, from the CNI's addresses.
fn controller_objects(ips: &BTreeMap<&str, String>) -> String {
    let mut t = String::from("# Written by the demo from the addresses the CNI gave the pods.\n");
    for (name, _, labels) in PODS {
        let ip = &ips[name];
        t.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: shop, labels: {labels}}}\n\
             spec: {{containers: [{{name: main, image: demo, ports: [{{name: http, containerPort: 8080}}]}}]}}\n\
             status: {{podIP: {ip}, podIPs: [{{ip: {ip}}}]}}\n"
        ));
    }
    t.push_str(
        "---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
         metadata: {name: web-1, namespace: shop, labels: {kubernetes.io/service-name: web}}\n\
         addressType: IPv4\nports: [{name: http, port: 8080, protocol: TCP}]\nendpoints:\n",
    );
    for web in ["web-1", "web-2"] {
        t.push_str(&format!("- addresses: [{}]\n  conditions: {{ready: true}}\n", ips[web]));
    }
    t
}

fn main() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!("the demo creates network namespaces: run it as root (sudo scripts/demo)");
    }
    let bins = std::env::current_exe()?
        .parent()
        .context("binary directory")?
        .to_path_buf();
    let conf_demo = Path::new(env!("CARGO_MANIFEST_DIR")).join("../conf/demo");
    let mut vpc = Vpc::new("demo", 2)?;
    println!("sluice demo: a simulated VPC (fabric 10.244.0.0/16), 2 nodes, eth0 = each node's ENI\n");

    let (ips, pods) = add_pods(&mut vpc, &bins)?;
    let _servers: Vec<EchoServer> = pods
        .iter()
        .filter(|p| p.name.starts_with("web"))
        .map(|p| EchoServer::start(&vpc.pods[p.netns], 8080, p.name))
        .collect::<Result<_>>()?;

    let (_work, agents) = start_agents(&vpc, &conf_demo, &ips)?;
    let pod = |name: &str| &vpc.pods[pods.iter().find(|p| p.name == name).expect("a demo pod").netns];
    show_service(pod("client"), pod("intruder"))?;
    show_drops(&bins, &agents)?;
    let netfilter = pod("client").exec("conntrack", &["-L"])?;
    println!(
        "\n  conntrack -L in client: {}  (netfilter is not in the path)",
        String::from_utf8_lossy(&netfilter.stderr).trim()
    );

    drop(agents);
    del_pods(&vpc, &bins, &pods)
}

/// A demo pod made by ADD.
struct DemoPod {
    name: &'static str,
    node: usize,
    /// Its network namespace, an index into the VPC's pods.
    netns: usize,
    /// The CNI config it was added with (DEL gets the same).
    conf: Vec<u8>,
}

/// Every demo pod through the CNI binary's ADD; their addresses by name.
fn add_pods(vpc: &mut Vpc, bins: &Path) -> Result<(BTreeMap<&'static str, String>, Vec<DemoPod>)> {
    let mut ips = BTreeMap::new();
    let mut pods = Vec::new();
    for (name, node, _) in PODS {
        let p = vpc.pod(name)?;
        let conf = serde_json::to_vec(&vpc.main_conf(node, "1.1.0"))?;
        let started = Instant::now();
        let out = Call::new(&bins.join("sluice"), Some(&vpc.node_name(node)))
            .standard("ADD", name, &vpc.pods[p].path().display().to_string(), "eth0")
            .run(&conf);
        ensure!(out.success, "ADD {name}: {}", out.stdout);
        let ip = result_ip(&out.json());
        println!(
            "  CNI ADD  {name:<8} on node-{node}  ->  {ip:<11} ({:.0} ms, eBPF programs attached)",
            started.elapsed().as_secs_f64() * 1e3
        );
        ips.insert(name, ip);
        pods.push(DemoPod {
            name,
            node,
            netns: p,
            conf,
        });
    }
    Ok((ips, pods))
}

/// One agent per node, on conf/demo plus the objects a cluster's
/// controllers would write; the directory they read is kept alive with them.
fn start_agents(
    vpc: &Vpc,
    conf_demo: &Path,
    ips: &BTreeMap<&'static str, String>,
) -> Result<(tempfile::TempDir, Vec<AgentProcess>)> {
    let work = tempfile::tempdir()?;
    let manifests = work.path().join("manifests");
    std::fs::create_dir(&manifests)?;
    for e in std::fs::read_dir(conf_demo).with_context(|| format!("reading {}", conf_demo.display()))? {
        let p = e?.path();
        if p.extension().is_some_and(|x| x == "yaml") {
            std::fs::copy(&p, manifests.join(p.file_name().context("file name")?))?;
        }
    }
    std::fs::write(manifests.join("controllers.yaml"), controller_objects(ips))?;
    let mut agents = Vec::new();
    for node in 0..2 {
        let log = work.path().join(format!("agent-{node}.log"));
        let mut a = AgentProcess::start(&manifests, &vpc.bpffs[node].root(), &vpc.node_name(node), &log)?;
        a.wait_synced(1, Duration::from_secs(20))?;
        agents.push(a);
    }
    println!(
        "\n  sluice-agent on node-0 and node-1, reading conf/demo/shop.yaml: Service shop/web 10.96.0.10:80 -> pods' port \"http\",\n  \
         NetworkPolicy shop/web-from-clients (web takes connections from role=client only)"
    );

    Ok((work, agents))
}

/// The client calls the Service; the intruder's call is dropped.
fn show_service(client: &Netns, intruder: &Netns) -> Result<()> {
    let mut hits = BTreeMap::<String, u32>::new();
    for i in 0..20 {
        let reply = tcp_request(client, "10.96.0.10:80".parse()?, &format!("req{i}"))?;
        *hits
            .entry(reply.split(':').next().unwrap_or("?").to_string())
            .or_default() += 1;
    }
    println!(
        "\n  client   -> 10.96.0.10:80 x20   answered by {hits:?}  (load-balanced at the client's own egress, no kube-proxy)"
    );
    let denied = tcp_request(intruder, "10.96.0.10:80".parse()?, "let me in");
    ensure!(denied.is_err(), "the intruder got through: {denied:?}");
    println!("  intruder -> 10.96.0.10:80       no answer: dropped by the policy at the backend's ingress");

    Ok(())
}

/// What `sluicectl observe` and the agents' metrics say of the drop.
fn show_drops(bins: &Path, agents: &[AgentProcess]) -> Result<()> {
    std::thread::sleep(Duration::from_millis(300)); // the agents read the event ring every 100 ms
    println!("\n  sluicectl observe --verdict dropped   (on each node)");
    let mut drops = 0.0;
    for (node, a) in agents.iter().enumerate() {
        let out = std::process::Command::new(bins.join("sluicectl"))
            .args(["observe", "--verdict", "dropped", "--socket"])
            .arg(&a.socket)
            .output()?;
        ensure!(
            out.status.success(),
            "sluicectl observe: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        let lines: Vec<&str> = text.lines().collect();
        if let Some(first) = lines.first() {
            println!("    node-{node}: {first}");
            if lines.len() > 1 {
                println!(
                    "    node-{node}: ... and {} more (the intruder's SYN, retransmitted)",
                    lines.len() - 1
                );
            }
        }
        let addr = metrics_addr(&a.log).context("the agent's metrics address")?;
        let series = r#"sluice_datapath_packets_total{reason="drop-policy",direction="ingress"}"#;
        let n = sample(&scrape(addr)?, series).unwrap_or(0.0);
        if n > 0.0 {
            println!("    node-{node}: metrics: {series} {n}");
        }
        drops += n;
    }
    ensure!(drops > 0.0, "no policy drop counted");
    Ok(())
}

/// DEL every pod; nothing may be left.
fn del_pods(vpc: &Vpc, bins: &Path, pods: &[DemoPod]) -> Result<()> {
    println!();
    for DemoPod {
        name,
        node,
        netns: p,
        conf,
    } in pods
    {
        let out = Call::new(&bins.join("sluice"), Some(&vpc.node_name(*node)))
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
    println!("  CNI DEL  all pods: pod links left {links}, IPAM leases left {leases}");
    ensure!(leases == 0 && links == 0, "DEL left something behind");
    println!("\n(ADD times include `ip netns exec`; a node's first ADD also loads and verifies the datapath.)");
    Ok(())
}
