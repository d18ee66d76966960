//! Policy at cluster scale: the agent (release build, manifests source)
//! over a cluster of Pod objects (no processes) in 1,000 namespaces with
//! 1,000 NetworkPolicies, every Pod with a `pod-template-hash` of its own,
//! and 10 of the Pods this node's (endpoint entries in its loaded
//! datapath). At each size it measures:
//! - identities allocated (the names map's identity entries);
//! - agent memory per pod: resident set over a cluster of the same
//!   namespaces and policies without the Pods, divided by the Pods;
//! - the full first sync (process start to first sync written);
//! - a label change of one of this node's Pods to the maps (its ipcache
//!   entry's new identity and its new rules), p50/p99, and the agent's own
//!   sync time for it (how long its loop is busy).
//!
//! Run:
//!
//!     cargo build --release --workspace --bins
//!     sudo target/release/bench-cluster --pods 5000,50000

use anyhow::{Context, Result, ensure};
use clap::Parser;
use sluice_integration::agent::{AgentProcess, log_field};
use sluice_integration::bench::{pct, print_machine, require_root};
use sluice_integration::bpffs::Bpffs;
use sluice_tc_datapath::attach::Node;
use sluice_tc_datapath::config::DatapathConfig;
use sluice_tc_datapath::layout::{ID_FIRST_ALLOCATED, NAME_IDENTITY};
use sluice_tc_datapath::loader::versioned_dir;
use sluice_tc_datapath::maps::Maps;
use sluice_tc_datapath::maps::endpoints::Endpoint;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Cluster sizes (Pods), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "5000,50000")]
    pods: Vec<usize>,
    #[arg(long, default_value_t = 1000)]
    namespaces: usize,
    #[arg(long, default_value_t = 1000)]
    policies: usize,
    /// Label changes timed at each size.
    #[arg(long, default_value_t = 20)]
    changes: usize,
}

const LOCAL: usize = 10;
const APPS: usize = 10;

fn pod_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + i as u32 + 1)
}

fn pod_yaml(out: &mut String, i: usize, namespaces: usize, app: usize) {
    let _ = write!(
        out,
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p{i}\n  namespace: ns{}\n  labels: {{app: a{app}, tier: t{}, pod-template-hash: h{i:08x}}}\n\
         spec: {{nodeName: n{}, containers: [{{name: c, image: x, ports: [{{name: http, containerPort: 8080}}]}}]}}\n\
         status: {{phase: Running, podIP: \"{}\"}}\n---\n",
        i % namespaces,
        i % 3,
        i % 100,
        pod_ip(i)
    );
}

/// The namespaces and policies: policy k in namespace k selects app a(k%10)
/// and takes ingress from app a((k+1)%10) of namespaces of its team, on
/// port http.
fn base(dir: &Path, args: &Args) -> Result<()> {
    let mut s = String::new();
    for n in 0..args.namespaces {
        let _ = write!(
            s,
            "apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{n}, labels: {{team: team{}}}}}\n---\n",
            n % 20
        );
    }
    for k in 0..args.policies {
        let _ = write!(
            s,
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: np{k}, namespace: ns{}}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: a{}}}}}\n  ingress:\n  - from:\n    - namespaceSelector: {{matchLabels: {{team: team{}}}}}\n\
             \x20     podSelector: {{matchLabels: {{app: a{}}}}}\n    ports: [{{port: http}}]\n---\n",
            k % args.namespaces,
            k % APPS,
            k % 20,
            (k + 1) % APPS
        );
    }
    std::fs::write(dir.join("base.yaml"), s)?;
    Ok(())
}

/// The cluster's Pods, 1,000 to a file; this node's first 10 in files of
/// their own (a label change rewrites one small file).
fn pods(dir: &Path, n: usize, args: &Args) -> Result<()> {
    for first in (LOCAL..n).step_by(1000) {
        let mut s = String::new();
        for i in first..(first + 1000).min(n) {
            pod_yaml(&mut s, i, args.namespaces, i % APPS);
        }
        std::fs::write(dir.join(format!("pods-{first}.yaml")), s)?;
    }
    for i in 0..LOCAL.min(n) {
        local_pod(dir, i, i % APPS, args)?;
    }
    Ok(())
}

fn local_pod(dir: &Path, i: usize, app: usize, args: &Args) -> Result<()> {
    let mut s = String::new();
    pod_yaml(&mut s, i, args.namespaces, app);
    let tmp = dir.join(format!(".local-{i}.tmp"));
    std::fs::write(&tmp, s)?;
    std::fs::rename(&tmp, dir.join(format!("local-{i}.yaml")))?;
    Ok(())
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn identities(maps: &Maps) -> usize {
    maps.observe()
        .names()
        .map(|n| {
            n.iter()
                .filter(|n| n.kind == NAME_IDENTITY && n.id >= ID_FIRST_ALLOCATED && n.id < 1 << 24)
                .count()
        })
        .unwrap_or(0)
}

struct Run {
    pods: usize,
    identities: usize,
    rss_kib: u64,
    first_sync: Duration,
    agent_sync_ms: f64,
    change_ms: Vec<f64>,
    change_sync_ms: Vec<f64>,
}

/// One agent over `pods` Pods (0: namespaces and policies only).
fn run(args: &Args, n: usize, work: &Path) -> Result<Run> {
    let dir = work.join(format!("cluster-{n}"));
    std::fs::create_dir_all(&dir)?;
    base(&dir, args)?;
    pods(&dir, n, args)?;
    let fs = Bpffs::new("bk")?;
    let root = fs.root();
    let cfg = DatapathConfig {
        bpffs: root.clone(),
        ..Default::default()
    };
    Node::open(&cfg).context("loading the datapath")?;
    let mut maps = Maps::open_pinned(&versioned_dir(&root))?;
    for i in 0..LOCAL {
        maps.endpoints_mut().add(&Endpoint {
            addr: IpAddr::V4(pod_ip(i)),
            ifindex: 1000 + i as u32,
            endpoint_id: 5000 + i as u32,
            mac: [2, 0, 0, 0, 0, i as u8],
            parent_ifindex: 0,
            netns_cookie: 0,
        })?;
    }
    let started = Instant::now();
    let log = work.join(format!("agent-{n}.log"));
    let mut agent = AgentProcess::start(&dir, &root, "n0", &log)?;
    let synced = agent.wait_synced(1, Duration::from_secs(900))?;
    let first_sync = started.elapsed();
    let agent_sync_ms = log_field(&synced[0], "sync_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_kib(agent.pid());
    let ids = identities(&maps);

    // Label changes of this node's pod 0: app a0 <-> a5 (another
    // identity, other policies select it).
    let (mut change_ms, mut change_sync_ms) = (Vec::new(), Vec::new());
    let ip = IpAddr::V4(pod_ip(0));
    // One lookup (as a packet's): reading the whole 50,000-entry map
    // would take the CPU the agent needs, and its time would be counted.
    let identity = |maps: &Maps| maps.policy().identity(ip).ok().flatten();
    for c in 0..if n > 0 { args.changes } else { 0 } {
        let before = identity(&maps);
        let app = if c % 2 == 0 { 5 } else { 0 };
        let t = Instant::now();
        local_pod(&dir, 0, app, args)?;
        let deadline = t + Duration::from_secs(120);
        while identity(&maps) == before {
            ensure!(Instant::now() < deadline, "the label change never reached the maps");
            std::thread::sleep(Duration::from_micros(200));
        }
        change_ms.push(t.elapsed().as_secs_f64() * 1e3);
        let lines = agent.wait_synced(2 + c, Duration::from_secs(120))?;
        if let Some(ms) = lines
            .last()
            .and_then(|l| log_field(l, "sync_ms"))
            .and_then(|v| v.parse().ok())
        {
            change_sync_ms.push(ms);
        }
    }
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(Run {
        pods: n,
        identities: ids,
        rss_kib: rss,
        first_sync,
        agent_sync_ms,
        change_ms,
        change_sync_ms,
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    require_root("bench-cluster")?;
    print_machine("bench-cluster");
    let work = tempfile::tempdir()?;
    let empty = run(&args, 0, work.path())?;
    println!(
        "{} namespaces, {} NetworkPolicies, every Pod its own pod-template-hash, {LOCAL} Pods on this node; \
         baseline without Pods: {:.1} MiB resident",
        args.namespaces,
        args.policies,
        empty.rss_kib as f64 / 1024.0
    );
    println!(
        "{:>8} {:>11} {:>12} {:>13} {:>11} {:>11} {:>13} {:>13} {:>12}",
        "pods",
        "identities",
        "agent MiB",
        "KiB per pod",
        "first sync",
        "(its sync)",
        "change p50",
        "change p99",
        "busy max"
    );
    for &n in &args.pods {
        let mut r = run(&args, n, work.path())?;
        let per_pod = (r.rss_kib.saturating_sub(empty.rss_kib)) as f64 / r.pods as f64;
        let busy = r.change_sync_ms.iter().copied().fold(0.0, f64::max);
        println!(
            "{:>8} {:>11} {:>12.1} {:>13.2} {:>9.2} s {:>8.0} ms {:>10.1} ms {:>10.1} ms {:>9.1} ms",
            r.pods,
            r.identities,
            r.rss_kib as f64 / 1024.0,
            per_pod,
            r.first_sync.as_secs_f64(),
            r.agent_sync_ms,
            pct(&mut r.change_ms, 0.5),
            pct(&mut r.change_ms, 0.99),
            busy
        );
    }
    println!();
    println!("targets at 50,000 pods: first sync <= 5 s, a label change in the maps <= 100 ms p99, <= 10 KiB per pod");
    Ok(())
}
