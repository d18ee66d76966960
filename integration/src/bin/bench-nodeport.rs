//! NodePorts from outside the cluster against their baselines, everything
//! in one run: TCP connection rate (connect, request, response, close) from
//! hosts on the VPC fabric, with 1, 10,000 and 100,000 Services in the
//! node's maps and rulesets.
//!
//!     sudo target/release/bench-nodeport [--services 1,10000,100000] [--rounds 5] [--tables JSON]
//!
//! Each mode has an outside host of its own (a client calling one backend
//! two ways would meet its own TIME_WAIT), calling:
//! - the backend pod's IP directly, on the same L2 segment (the limit; the
//!   pod runs sluice's programs, as in every mode);
//! - node 0's NodePort, served by its uplink program, the backend a pod on
//!   node 0 (handed in with the client's address kept);
//! - node 0's NodePort whose backend is on node 1 (SNAT to node 0's
//!   address, the replies back through node 0);
//! - node 2's NodePort through kube-proxy's nftables ruleset for the same
//!   Services (externalTrafficPolicy Cluster: masqueraded), its backend a
//!   pod on node 2.
//!
//! A NAT that reuses a source port toward a backend within its TIME_WAIT
//! (the server closes first here, as an HTTP/1.0 server does) meets PAWS:
//! the SYN is refused and the client retries after 1 s. The benchmark
//! prints how often that happened at the SNATed backends.
//!
//! The clients are processes of their own (this binary with `--client`),
//! run round-robin so drift hits every mode alike. Figures: the median of
//! the rounds, their min-max, each mode's ratio to the direct path, and
//! sluice's NodePort against nftables'.

use anyhow::{Result, bail, ensure};
use clap::Parser;
use sluice_integration::bench::{self, CrrServer, exec_in, exec_within, generated, pct, spec};
use sluice_integration::datapath::put_node_port;
use sluice_integration::kube_proxy;
use sluice_integration::netns::Netns;
use sluice_integration::vpc::{VPC_ROUTER, Vpc, node_ip, result_ip};
use sluice_tc_datapath::maps::Maps;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

/// NodePorts from outside against the direct path and kube-proxy's
/// nftables: TCP connections/s from hosts on the VPC fabric.
#[derive(Parser)]
struct Args {
    #[command(flatten)]
    crr: bench::CrrArgs,
    /// The nodes' per-connection tables, as the network's
    /// `datapath.tables` gives them (JSON), e.g. '{"nat": 1048576,
    /// "snatHolds": 1048576}'; the defaults when not given.
    #[arg(long, value_parser = bench::tables_arg)]
    tables: Option<sluice_tc_datapath::config::TableSizes>,
}

impl std::ops::Deref for Args {
    type Target = bench::CrrArgs;
    fn deref(&self) -> &bench::CrrArgs {
        &self.crr
    }
}

const CLUSTER_CIDR: &str = "10.244.0.0/16";
const PORTS: [u16; 3] = bench::CRR_PORTS;
const NODE_PORT: u16 = 30080;
const NODE_PORT_REMOTE: u16 = 30081;

#[derive(Clone, Copy, PartialEq, Debug)]
enum Mode {
    Direct,
    Local,
    Remote,
    Nft,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Direct, Mode::Local, Mode::Remote, Mode::Nft];
    fn label(self) -> &'static str {
        match self {
            Mode::Direct => "outside -> pod IP (direct)",
            Mode::Local => "NodePort, sluice, backend here",
            Mode::Remote => "NodePort, sluice, backend on another node (SNAT)",
            Mode::Nft => "NodePort, kube-proxy nftables",
        }
    }
}

struct Client {
    mode: Mode,
    netns: std::path::PathBuf,
    targets: Vec<SocketAddr>,
}

fn ports_of(ip: Ipv4Addr) -> Vec<SocketAddr> {
    bench::crr_ports(ip)
}

/// Run one client process for `secs`: (connections/s, failed).
fn run_client(c: &Client, secs: f64, workers: usize) -> Result<(f64, u64)> {
    bench::client_process(c.mode.label(), &c.netns, None, &c.targets, secs, workers)
}

/// A pod on `node` with sluice's programs: its index and address.
fn pod(
    vpc: &mut Vpc,
    node: usize,
    name: &str,
    tables: Option<&sluice_tc_datapath::config::TableSizes>,
) -> Result<(usize, Ipv4Addr)> {
    let mut conf = bench::for_connection_rates(vpc.main_conf(node, "1.0.0"));
    if let Some(t) = tables {
        conf["datapath"]["tables"] = serde_json::to_value(t)?;
    }
    let p = vpc.pod(name)?;
    let out = vpc.sluice(node, "ADD", name, p, &conf);
    ensure!(out.success, "ADD {name}: {}{}", out.stdout, out.stderr);
    Ok((p, result_ip(&out.json()).parse()?))
}

/// kube-proxy's nftables ruleset for `n` Services on `ns`, the measured
/// one a NodePort: loaded within the budget, seconds spent.
fn load_nft(args: &Args, ns: &Netns, n: usize, server: Ipv4Addr) -> Result<(bool, f64)> {
    let started = Instant::now();
    let _ = exec_in(ns, "nft", &["delete", "table", "ip", kube_proxy::NFT_TABLE], b"");
    let budget = Duration::from_secs(args.load_budget);
    let (list, at) = bench::crr_services(n, server);
    let mut parts = kube_proxy::nft_ruleset(&list, CLUSTER_CIDR, 4000);
    parts.push(kube_proxy::nft_node_port(at, NODE_PORT));
    for text in parts {
        let left = budget.saturating_sub(started.elapsed());
        if exec_within(ns, "nft", &["-f", "-"], text.as_bytes(), Some(left))?.is_none() {
            let _ = exec_in(ns, "nft", &["delete", "table", "ip", kube_proxy::NFT_TABLE], b"");
            return Ok((false, started.elapsed().as_secs_f64()));
        }
    }
    Ok((true, started.elapsed().as_secs_f64()))
}

struct Row {
    services: usize,
    rates: Vec<Vec<f64>>,
    nft: (bool, f64),
    failed: Vec<u64>,
    /// Drops node 0's programs counted during the rounds, by reason.
    drops: Vec<(String, u64)>,
    /// SYNs the SNAT backend (sluice) and the nftables one refused from
    /// TIME_WAIT during the rounds (PAWS: a reused 4-tuple).
    paws: [u64; 2],
}

/// The namespace's TcpExtPAWSTimewait: SYNs on a 4-tuple in TIME_WAIT
/// refused for an older timestamp (a NAT reusing the source port of a
/// connection the server closed; the client then resets and retries 1 s
/// later).
fn paws_timewait(ns: &Netns) -> Result<u64> {
    let out = ns.exec("nstat", &["-az", "TcpExtPAWSTimewait"])?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| {
            l.strip_prefix("TcpExtPAWSTimewait")?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .unwrap_or(0))
}

/// Node 0's drop counters, by reason name.
fn drops(maps: &Maps) -> Result<Vec<(String, u64)>> {
    let mut out: Vec<(String, u64)> = Vec::new();
    for m in maps.observe().metrics()? {
        if m.reason.is_drop() {
            match out.iter_mut().find(|(n, _)| n == m.reason.name()) {
                Some(e) => e.1 += m.packets,
                None => out.push((m.reason.name().to_string(), m.packets)),
            }
        }
    }
    Ok(out)
}

fn measure(args: &Args) -> Result<Vec<Row>> {
    let mut vpc = Vpc::new("bn", 3)?;
    for node in &vpc.nodes {
        node.ip(&["route", "add", "default", "via", VPC_ROUTER, "dev", "eth0"])?;
    }
    // kube-proxy's node forwards what its rules translate.
    let fwd = vpc.nodes[2].exec("sysctl", &["-qw", "net.ipv4.ip_forward=1"])?;
    ensure!(fwd.status.success(), "ip_forward on node 2");
    let (s0_pod, s0) = pod(&mut vpc, 0, "s0", args.tables.as_ref())?;
    let (s1_pod, s1) = pod(&mut vpc, 1, "s1", args.tables.as_ref())?;
    let (s2_pod, s2) = pod(&mut vpc, 2, "s2", args.tables.as_ref())?;
    let _servers = [s0_pod, s1_pod, s2_pod]
        .iter()
        .map(|p| CrrServer::start(&vpc.pods[*p], &PORTS))
        .collect::<Result<Vec<_>>>()?;
    let mut hosts = Vec::new();
    for (i, mode) in Mode::ALL.iter().enumerate() {
        hosts.push(vpc.external_host(&format!("x{i}"), &format!("172.31.1.{}/16", i + 1))?);
        if *mode == Mode::Direct {
            // On the pods' segment, as the NodePort clients are on the nodes'.
            vpc.pods[hosts[i]].ip(&["route", "add", CLUSTER_CIDR, "dev", "eth0"])?;
        }
    }
    vpc.attach_uplink(0)?;
    let node = |i: usize| -> Ipv4Addr { node_ip(i).parse().expect("a node address") };
    let clients: Vec<Client> = Mode::ALL
        .iter()
        .zip(&hosts)
        .map(|(&mode, &h)| {
            let targets = match mode {
                Mode::Direct => ports_of(s0),
                Mode::Local => vec![SocketAddr::V4(SocketAddrV4::new(node(0), NODE_PORT))],
                Mode::Remote => vec![SocketAddr::V4(SocketAddrV4::new(node(0), NODE_PORT_REMOTE))],
                Mode::Nft => vec![SocketAddr::V4(SocketAddrV4::new(node(2), NODE_PORT))],
            };
            Client {
                mode,
                netns: vpc.pods[h].path(),
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
        let on = |ip: Ipv4Addr| -> Vec<(IpAddr, u16)> { PORTS.iter().map(|p| (IpAddr::V4(ip), *p)).collect() };
        put_node_port(&mut maps, node(0).into(), NODE_PORT, 6, &on(s0), 900_001)?;
        put_node_port(&mut maps, node(0).into(), NODE_PORT_REMOTE, 6, &on(s1), 900_011)?;
        let nft = load_nft(args, &vpc.nodes[2], n, s2)?;
        eprintln!(
            "{n} services: nftables {} in {:.1} s",
            if nft.0 {
                "loaded"
            } else {
                "NOT loaded (over the budget)"
            },
            nft.1
        );
        let live: Vec<&Client> = clients.iter().filter(|c| c.mode != Mode::Nft || nft.0).collect();
        for c in &live {
            let (rate, failed) = run_client(c, 0.3, args.workers)?;
            // Every mode answers; the paths without NAT ports, without a
            // single failure (the SNATing ones' failures are counted below).
            if rate == 0.0 || (matches!(c.mode, Mode::Direct | Mode::Local) && failed > 0) {
                bail!(
                    "{} at {n} services: {failed} failed connections, {rate:.0}/s",
                    c.mode.label()
                );
            }
        }
        let mut rates = vec![Vec::new(); Mode::ALL.len()];
        let mut failed = vec![0; Mode::ALL.len()];
        let before = drops(&maps)?;
        let paws_before = [paws_timewait(&vpc.pods[s1_pod])?, paws_timewait(&vpc.pods[s2_pod])?];
        for round in 0..args.rounds {
            for c in &live {
                let (rate, f) = run_client(c, args.seconds, args.workers)?;
                let m = Mode::ALL.iter().position(|m| *m == c.mode).unwrap();
                rates[m].push(rate);
                failed[m] += f;
            }
            eprintln!("{n} services: round {} of {} done", round + 1, args.rounds);
        }
        let paws = [
            paws_timewait(&vpc.pods[s1_pod])? - paws_before[0],
            paws_timewait(&vpc.pods[s2_pod])? - paws_before[1],
        ];
        let after = drops(&maps)?;
        let drops = after
            .into_iter()
            .map(|(name, n)| {
                let was = before.iter().find(|(b, _)| *b == name).map_or(0, |b| b.1);
                (name, n - was)
            })
            .filter(|(_, n)| *n > 0)
            .collect();
        rows.push(Row {
            services: n,
            rates,
            nft,
            failed,
            drops,
            paws,
        });
    }
    let _ = exec_in(
        &vpc.nodes[2],
        "nft",
        &["delete", "table", "ip", kube_proxy::NFT_TABLE],
        b"",
    );
    Ok(rows)
}

fn report(args: &Args, rows: &[Row]) {
    bench::print_machine("NodePort from outside");
    println!(
        "TCP connect/request/response/close per second from a host outside the cluster, {} client threads, \
         median of {} rounds of {} s [min-max]; x: ratio to the direct path (the pod's IP)",
        args.workers, args.rounds, args.seconds
    );
    println!(
        "the nodes' per-connection tables (datapath.tables): {}",
        args.tables
            .as_ref()
            .map_or("the defaults".into(), |t| serde_json::to_string(t).expect("JSON"))
    );
    for r in rows {
        let idx = |m: Mode| Mode::ALL.iter().position(|x| *x == m).unwrap();
        let median = |m: Mode| -> f64 {
            let mut v = r.rates[idx(m)].clone();
            if v.is_empty() { f64::NAN } else { pct(&mut v, 0.5) }
        };
        println!();
        println!("{} services", r.services);
        for m in Mode::ALL {
            let v = &r.rates[idx(m)];
            if v.is_empty() {
                println!(
                    "  {:<50} not measured: the ruleset did not load within {} s ({:.0} s spent)",
                    m.label(),
                    args.load_budget,
                    r.nft.1
                );
                continue;
            }
            let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
            let hi = v.iter().cloned().fold(0.0, f64::max);
            let failed = r.failed[idx(m)];
            println!(
                "  {:<50} {:>8.0}/s [{:>6.0}-{:>6.0}]  {:>5.3}x{}",
                m.label(),
                median(m),
                lo,
                hi,
                median(m) / median(Mode::Direct),
                if failed > 0 {
                    format!("  ({failed} connections failed)")
                } else {
                    String::new()
                }
            );
        }
        let nft = median(Mode::Nft);
        let over = |m: Mode| {
            if nft.is_nan() {
                "n/a".to_string()
            } else {
                format!("{:.2}x", median(m) / nft)
            }
        };
        println!(
            "  SYNs refused from TIME_WAIT (PAWS) at the SNATed backends: sluice's {}, nftables' {}",
            r.paws[0], r.paws[1]
        );
        if !r.drops.is_empty() {
            let list: Vec<String> = r.drops.iter().map(|(n, c)| format!("{n} {c}")).collect();
            println!("  drops on node 0 during the rounds: {}", list.join(", "));
        }
        println!(
            "  NodePort / direct: backend here {:.3}, elsewhere {:.3} (target 0.9); over nftables: {}, {}",
            median(Mode::Local) / median(Mode::Direct),
            median(Mode::Remote) / median(Mode::Direct),
            over(Mode::Local),
            over(Mode::Remote),
        );
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.run_as_client() {
        return Ok(());
    }
    bench::require_root("bench-nodeport")?;
    let rows = measure(&args)?;
    report(&args, &rows);
    Ok(())
}
