//! Socket-level load balancing against its baselines, everything in one run:
//! TCP connection rate (connect, request, response, close) at 1, 10,000 and
//! 100,000 Services on a simulated node.
//!
//!     sudo target/release/bench-socket [--services 1,10000,100000] [--rounds 5]
//!
//! From the node's own namespace (a host-network client):
//! - to a ClusterIP through the socket hooks (the client in a cgroup the
//!   hooks are attached to, for the node's namespace);
//! - to the backend pod's IP, no Service (the limit);
//! - to a ClusterIP through kube-proxy's nftables ruleset for the same
//!   Services, on a node of its own (so its nf_conntrack and rules cost
//!   the others nothing), twice: as kube-proxy runs with `--cluster-cidr`
//!   (a host client's connection is masqueraded, `fully-random`), and
//!   without it (not masqueraded), each on its own node.
//!
//! From a pod:
//! - to a ClusterIP through the socket hooks (a cgroup attached for every
//!   namespace: the pod's connect is translated, its packets are not);
//! - to a ClusterIP through the tc programs' per-packet NAT;
//! - to the backend pod's IP, sluice's programs on both pods (the same
//!   path without a Service);
//! - to the backend pod's IP with no datapath on either pod (the limit).
//!
//! Each client is a process of its own (this binary with `--client`),
//! started inside its namespace and, for the socket modes, its cgroup; the
//! modes run round-robin so drift hits them alike. Figures: the median of
//! the rounds, their min-max, and each mode's ratio to its direct path.

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use sluice_integration::bench::{self, CrrServer, exec_in, exec_within, generated, pct, spec};
use sluice_integration::cgroup::{TestCgroup, cgroup2_root};
use sluice_integration::kube_proxy::{self, Service};
use sluice_integration::netns::Netns;
use sluice_integration::vpc::{VPC_ROUTER, Vpc, result_ip};
use sluice_tc_datapath::attach::sock;
use sluice_tc_datapath::loader::versioned_dir;
use sluice_tc_datapath::maps::Maps;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::Path;
use std::time::{Duration, Instant};

use bench::CrrArgs as Args;

const CLUSTER_CIDR: &str = "10.244.0.0/16";
const VIP: Ipv4Addr = bench::CRR_VIP;
const PORTS: [u16; 3] = bench::CRR_PORTS;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    HostDirect,
    HostSock,
    HostNft,
    HostNftPlain,
    PodDirect,
    PodIp,
    PodTc,
    PodSock,
}

impl Mode {
    const ALL: [Mode; 8] = [
        Mode::HostDirect,
        Mode::HostSock,
        Mode::HostNft,
        Mode::HostNftPlain,
        Mode::PodDirect,
        Mode::PodIp,
        Mode::PodTc,
        Mode::PodSock,
    ];
    fn label(self) -> &'static str {
        match self {
            Mode::HostDirect => "host -> pod IP (direct)",
            Mode::HostSock => "host -> VIP, socket hooks",
            Mode::HostNft => "host -> VIP, nftables, masquerade",
            Mode::HostNftPlain => "host -> VIP, nftables, no masq.",
            Mode::PodDirect => "pod -> pod IP, no datapath",
            Mode::PodIp => "pod -> pod IP, sluice attached",
            Mode::PodTc => "pod -> VIP, tc per-packet NAT",
            Mode::PodSock => "pod -> VIP, socket hooks",
        }
    }
    /// The direct path this mode is compared with.
    fn baseline(self) -> Mode {
        match self {
            Mode::HostDirect | Mode::HostSock | Mode::HostNft | Mode::HostNftPlain => Mode::HostDirect,
            _ => Mode::PodDirect,
        }
    }
}

/// Where one mode's client runs and what it calls.
struct Client {
    mode: Mode,
    netns: std::path::PathBuf,
    cgroup: Option<std::path::PathBuf>,
    targets: Vec<SocketAddr>,
}

fn ports_of(ip: Ipv4Addr) -> Vec<SocketAddr> {
    bench::crr_ports(ip)
}

/// Run one client process for `secs`: (connections/s, failed).
fn run_client(c: &Client, secs: f64, workers: usize) -> Result<(f64, u64)> {
    bench::client_process(c.mode.label(), &c.netns, c.cgroup.as_deref(), &c.targets, secs, workers)
}

/// The connect and release hooks' run time per connection of the host client `c`, ns
/// (the kernel's statistics, on for this run only).
fn hook_time(c: &Client, args: &Args) -> Result<[f64; 2]> {
    // Names are cut at 15 bytes: connect4 and connect6 alike.
    const NAMES: [&str; 2] = ["sl_sock_connect", "sl_sock_release"];
    let sample = || -> Result<[u64; 2]> {
        let mut t = [0; 2];
        for info in aya::programs::loaded_programs() {
            let info = info?;
            if let Some(i) = NAMES.iter().position(|n| info.name_as_str() == Some(n)) {
                t[i] += info.run_time().as_nanos() as u64;
            }
        }
        Ok(t)
    };
    let _stats = aya::sys::enable_stats(aya::sys::Stats::RunTime).context("BPF_ENABLE_STATS")?;
    let before = sample()?;
    let (rate, failed) = run_client(c, args.seconds, args.workers)?;
    let after = sample()?;
    if failed > 0 {
        eprintln!("{failed} connections failed while timing the hooks");
    }
    let connections = (rate * args.seconds).max(1.0);
    Ok([0, 1].map(|i| (after[i] - before[i]) as f64 / connections))
}

/// Attach the hooks to `cgroup` on node 0 with the node's loaded settings,
/// for the node's namespace (`all`: every namespace).
fn attach(vpc: &Vpc, cgroup: &Path, all: bool) -> Result<()> {
    let root = vpc.bpffs[0].root();
    let versioned = versioned_dir(&root);
    let maps = Maps::open_pinned(&versioned)?;
    let mut cfg = maps.observe().loaded_config(&versioned)?;
    cfg.bpffs = root;
    let netns = if all {
        0
    } else {
        vpc.nodes[0].run(sluice_tc_datapath::netns_cookie::current)??
    };
    sock::attach(&cfg, cgroup, netns).context("attaching the socket hooks")?;
    Ok(())
}

/// A pod on `node` (datapath on or off): its index and address.
fn pod(vpc: &mut Vpc, node: usize, name: &str, datapath: bool) -> Result<(usize, Ipv4Addr)> {
    let mut conf = bench::for_connection_rates(vpc.main_conf(node, "1.0.0"));
    if !datapath {
        conf["datapath"]["enabled"] = serde_json::json!(false);
    }
    let p = vpc.pod(name)?;
    let out = vpc.sluice(node, "ADD", name, p, &conf);
    ensure!(out.success, "ADD {name}: {}{}", out.stdout, out.stderr);
    Ok((p, result_ip(&out.json()).parse()?))
}

struct Row {
    services: usize,
    /// Per mode: the rounds' rates.
    rates: Vec<Vec<f64>>,
    /// Per nftables node: loaded within the budget, seconds spent.
    nft: [(bool, f64); 2],
    /// Per mode: connections that failed (a 1 s connect timeout each).
    failed: Vec<u64>,
    /// The connect and release hooks' run time per host connection, ns.
    hook_ns: [f64; 2],
}

/// Load kube-proxy's nftables ruleset for `list` into `ns`: with the
/// cluster CIDR (host sources masqueraded) or without (every source counts
/// as inside).
fn load_nft(args: &Args, ns: &Netns, list: &[Service], masquerade: bool) -> Result<(bool, f64)> {
    let started = Instant::now();
    let _ = exec_in(ns, "nft", &["delete", "table", "ip", kube_proxy::NFT_TABLE], b"");
    let budget = Duration::from_secs(args.load_budget);
    let cidr = if masquerade { CLUSTER_CIDR } else { "0.0.0.0/0" };
    for text in kube_proxy::nft_ruleset(list, cidr, 4000) {
        let left = budget.saturating_sub(started.elapsed());
        if exec_within(ns, "nft", &["-f", "-"], text.as_bytes(), Some(left))?.is_none() {
            let _ = exec_in(ns, "nft", &["delete", "table", "ip", kube_proxy::NFT_TABLE], b"");
            return Ok((false, started.elapsed().as_secs_f64()));
        }
    }
    Ok((true, started.elapsed().as_secs_f64()))
}

fn measure(args: &Args) -> Result<Vec<Row>> {
    let mut vpc = Vpc::new("bs", 3)?;
    // A node's default route (kube-proxy's host client routes the VIP by
    // it before its rules turn it into a pod address).
    for node in &vpc.nodes {
        node.ip(&["route", "add", "default", "via", VPC_ROUTER, "dev", "eth0"])?;
    }
    let (s0_pod, s0) = pod(&mut vpc, 0, "s0", true)?;
    let (ctc, _) = pod(&mut vpc, 0, "ctc", true)?;
    let (csock, _) = pod(&mut vpc, 0, "csk", true)?;
    // A client of its own per mode: one client calling a backend both
    // directly and through a VIP reuses a port on the same 4-tuple at the
    // backend, and the backend's TIME_WAIT answers the second SYN with an
    // ACK, a stall the modes should not inflict on each other.
    let (cip, _) = pod(&mut vpc, 0, "cip", true)?;
    let (cd, _) = pod(&mut vpc, 0, "cd", false)?;
    let (sd_pod, sd) = pod(&mut vpc, 0, "sd", false)?;
    let (s1_pod, s1) = pod(&mut vpc, 1, "s1", true)?;
    let (s2_pod, s2) = pod(&mut vpc, 2, "s2", true)?;
    let _servers = [s0_pod, sd_pod, s1_pod, s2_pod]
        .iter()
        .map(|p| CrrServer::start(&vpc.pods[*p], &PORTS))
        .collect::<Result<Vec<_>>>()?;
    let host_cg = TestCgroup::new(&format!("{}-host", vpc.prefix))?;
    let pod_cg = TestCgroup::new(&format!("{}-pods", vpc.prefix))?;
    attach(&vpc, &host_cg.path, false)?;
    attach(&vpc, &pod_cg.path, true)?;
    let vip = vec![SocketAddr::V4(SocketAddrV4::new(VIP, 80))];
    let clients: Vec<Client> = Mode::ALL
        .iter()
        .map(|&mode| {
            let (netns, cgroup, targets) = match mode {
                Mode::HostDirect => (vpc.nodes[0].path(), None, ports_of(s0)),
                Mode::HostSock => (vpc.nodes[0].path(), Some(host_cg.path.clone()), vip.clone()),
                Mode::HostNft => (vpc.nodes[1].path(), None, vip.clone()),
                Mode::HostNftPlain => (vpc.nodes[2].path(), None, vip.clone()),
                Mode::PodDirect => (vpc.pods[cd].path(), None, ports_of(sd)),
                Mode::PodIp => (vpc.pods[cip].path(), None, ports_of(s0)),
                Mode::PodTc => (vpc.pods[ctc].path(), None, vip.clone()),
                Mode::PodSock => (vpc.pods[csock].path(), Some(pod_cg.path.clone()), vip.clone()),
            };
            Client {
                mode,
                netns,
                cgroup,
                targets,
            }
        })
        .collect();
    let mut maps = vpc.maps(0)?;
    let mut in_maps = 0usize;
    let mut rows = Vec::new();
    for &n in &args.services {
        while in_maps < n.saturating_sub(1) {
            maps.lb_mut().upsert_service(&spec(in_maps, &generated(in_maps)))?;
            in_maps += 1;
        }
        let measured = bench::crr_services(1, s0).0;
        maps.lb_mut().upsert_service(&spec(999_999, &measured[0]))?;
        let nft = [
            load_nft(args, &vpc.nodes[1], &bench::crr_services(n, s1).0, true)?,
            load_nft(args, &vpc.nodes[2], &bench::crr_services(n, s2).0, false)?,
        ];
        for (i, (loaded, secs)) in nft.iter().enumerate() {
            eprintln!(
                "{n} services: nftables on node {} {} in {secs:.1} s",
                i + 1,
                if *loaded {
                    "loaded"
                } else {
                    "NOT loaded (over the budget)"
                }
            );
        }
        let live: Vec<&Client> = clients
            .iter()
            .filter(|c| match c.mode {
                Mode::HostNft => nft[0].0,
                Mode::HostNftPlain => nft[1].0,
                _ => true,
            })
            .collect();
        // Every mode works before it is timed (sluice's without a single
        // failure; kube-proxy's failures are its own, counted below).
        for c in &live {
            let (rate, failed) = run_client(c, 0.3, args.workers)?;
            let ours = !matches!(c.mode, Mode::HostNft | Mode::HostNftPlain);
            if rate == 0.0 || (ours && failed > 0) {
                bail!(
                    "{} at {n} services: {failed} failed connections, {rate:.0}/s",
                    c.mode.label()
                );
            }
        }
        let mut rates = vec![Vec::new(); Mode::ALL.len()];
        let mut failed = vec![0; Mode::ALL.len()];
        for round in 0..args.rounds {
            for c in &live {
                let (rate, f) = run_client(c, args.seconds, args.workers)?;
                let m = Mode::ALL.iter().position(|m| *m == c.mode).unwrap();
                rates[m].push(rate);
                failed[m] += f;
            }
            eprintln!("{n} services: round {} of {} done", round + 1, args.rounds);
        }
        let host_sock = clients
            .iter()
            .find(|c| c.mode == Mode::HostSock)
            .expect("every mode has a client");
        let hook_ns = hook_time(host_sock, args)?;
        rows.push(Row {
            services: n,
            rates,
            nft,
            failed,
            hook_ns,
        });
    }
    for node in &vpc.nodes[1..] {
        let _ = exec_in(node, "nft", &["delete", "table", "ip", kube_proxy::NFT_TABLE], b"");
    }
    // The hooks' links go with the node's bpffs, the cgroups with their
    // guards.
    Ok(rows)
}

fn report(args: &Args, rows: &[Row]) {
    bench::print_machine("socket load-balancing");
    println!(
        "TCP connect/request/response/close per second, {} client threads, median of {} rounds of {} s [min-max]; \
         x: ratio to the direct path of the same side (host: the pod IP; pod: the pod IP with no datapath)",
        args.workers, args.rounds, args.seconds
    );
    for r in rows {
        let idx = |m: Mode| Mode::ALL.iter().position(|x| *x == m).unwrap();
        let median = |m: Mode| -> f64 {
            let mut v = r.rates[idx(m)].clone();
            if v.is_empty() { f64::NAN } else { pct(&mut v, 0.5) }
        };
        println!();
        println!(
            "{} services; socket hooks per host connection: connect {:.0} ns, release {:.0} ns",
            r.services, r.hook_ns[0], r.hook_ns[1]
        );
        for m in Mode::ALL {
            let v = &r.rates[idx(m)];
            if v.is_empty() {
                let (_, secs) = r.nft[if m == Mode::HostNft { 0 } else { 1 }];
                println!(
                    "  {:<34} not measured: the ruleset did not load within {} s ({secs:.0} s spent)",
                    m.label(),
                    args.load_budget,
                );
                continue;
            }
            let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = v.iter().cloned().fold(0.0, f64::max);
            let failed = r.failed[idx(m)];
            println!(
                "  {:<34} {:>8.0}/s [{:>6.0}-{:>6.0}]  {:>5.3}x{}",
                m.label(),
                median(m),
                lo,
                hi,
                median(m) / median(m.baseline()),
                if failed > 0 {
                    format!("  ({failed} connections failed)")
                } else {
                    String::new()
                }
            );
        }
        let ratio = |a: Mode, b: Mode| median(a) / median(b);
        let best_nft = median(Mode::HostNft).max(median(Mode::HostNftPlain));
        let above = |m: Mode| {
            if best_nft.is_nan() {
                "n/a".to_string()
            } else {
                format!("{:.2}x", median(m) / best_nft)
            }
        };
        println!(
            "  host VIP / direct {:.3} (target 0.97 at 100,000); pod VIP / direct: socket {:.3}, tc {:.3} (target 0.95); \
             pod VIP / pod IP with sluice: socket {:.3}, tc {:.3}; over the better nftables: host {}, pod socket {}",
            ratio(Mode::HostSock, Mode::HostDirect),
            ratio(Mode::PodSock, Mode::PodDirect),
            ratio(Mode::PodTc, Mode::PodDirect),
            ratio(Mode::PodSock, Mode::PodIp),
            ratio(Mode::PodTc, Mode::PodIp),
            above(Mode::HostSock),
            above(Mode::PodSock),
        );
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.run_as_client() {
        return Ok(());
    }
    bench::require_root("bench-socket")?;
    ensure!(
        cgroup2_root().is_some(),
        "no cgroup v2 mount: the socket hooks need one"
    );
    let rows = measure(&args)?;
    report(&args, &rows);
    Ok(())
}
