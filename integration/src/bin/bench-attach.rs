//! What the hook costs a packet: the same programs on clsact filters and on
//! TCX links, side by side on one node, with pods that have no datapath as
//! the baseline.
//!
//!     sudo target/release/bench-attach
//!
//! Three pairs of pods on one simulated node: one pair on clsact filters
//! (what `datapath.attach: auto` leaves a pod the agent does not move),
//! one moved onto TCX links (as the agent moves a pod with `NET_ADMIN`),
//! one with the datapath off. A single thread pinned to one CPU plays
//! both ends of a UDP request/response between the two pods of a pair:
//! every packet's way (the sender's egress program, the macvlan, the
//! receiver's ingress program, its socket) runs on that CPU, in that
//! thread's time, so the time per round trip is the CPU it costs. A round
//! trip passes the programs four times. The pairs take turns, every 500
//! round trips, so the machine's drift falls on all three.

use anyhow::{Context, Result, bail, ensure};
use clap::Parser;
use serde_json::json;
use sluice_integration::netns::Netns;
use sluice_integration::vpc::{Vpc, result_ip};
use sluice_tc_datapath::attach::{Node, Promotion};
use sluice_tc_datapath::pin;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

/// Round trips a pair makes before the next takes its turn.
const BLOCK: usize = 500;

#[derive(Parser)]
struct Args {
    /// Round trips per pair and round (in turns of 500).
    #[arg(long, default_value_t = 50_000)]
    trips: usize,
    /// Rounds (each pair measured once per round; the median is reported).
    #[arg(long, default_value_t = 9)]
    rounds: usize,
    /// The CPU the measuring thread is pinned to.
    #[arg(long, default_value_t = 0)]
    cpu: usize,
}

/// A pair's two sockets, each bound in its pod's namespace.
struct Pair {
    label: &'static str,
    client: UdpSocket,
    server: UdpSocket,
    to_server: SocketAddr,
    to_client: SocketAddr,
}

fn socket_in(ns: &Netns, ip: &str, port: u16) -> Result<(UdpSocket, SocketAddr)> {
    let addr: SocketAddr = format!("{ip}:{port}").parse()?;
    let s = ns.run(|| UdpSocket::bind(addr))??;
    s.set_read_timeout(Some(Duration::from_secs(2)))?;
    Ok((s, addr))
}

impl Pair {
    fn new(label: &'static str, (a, ip_a): (&Netns, String), (b, ip_b): (&Netns, String)) -> Result<Pair> {
        let (client, to_client) = socket_in(a, &ip_a, 40000)?;
        let (server, to_server) = socket_in(b, &ip_b, 7000)?;
        Ok(Pair {
            label,
            client,
            server,
            to_server,
            to_client,
        })
    }

    /// `n` round trips; the time they took.
    fn trips(&self, n: usize) -> Result<Duration> {
        let mut buf = [0u8; 64];
        let started = Instant::now();
        for _ in 0..n {
            self.client.send_to(b"ping", self.to_server)?;
            let (len, _) = self.server.recv_from(&mut buf).context("request lost")?;
            self.server.send_to(&buf[..len], self.to_client)?;
            self.client.recv_from(&mut buf).context("response lost")?;
        }
        Ok(started.elapsed())
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        bail!("bench-attach needs root (network namespaces, bpffs)");
    }
    ensure!(
        args.rounds > 0 && args.trips > 0,
        "--rounds and --trips must be above 0"
    );
    let mut vpc = Vpc::new("ba", 1)?;
    let mut on = vpc.main_conf(0, "1.1.0");
    on["datapath"].as_object_mut().unwrap().remove("attach");
    let mut off = on.clone();
    off["datapath"] = json!({"enabled": false});
    let mut ips = Vec::new();
    let mut pods = Vec::new();
    for (i, conf) in [&on, &on, &on, &on, &off, &off].into_iter().enumerate() {
        let p = vpc.pod(&format!("p{i}"))?;
        let out = vpc.sluice(0, "ADD", &format!("c{i}"), p, conf).expect_ok("ADD");
        ips.push(result_ip(&out.json()));
        pods.push(p);
    }
    // Pods 2 and 3 onto TCX links, as the agent moves them.
    let root = vpc.bpffs[0].root();
    for i in [2, 3] {
        let ns = std::fs::File::open(vpc.pods[pods[i]].path())?;
        let mut node = Node::open_exclusive(&root)?;
        let moved = node.promote(ns.as_fd(), "eth0", &pin::link_key(&format!("c{i}"), "eth0"))?;
        ensure!(moved == Promotion::Promoted, "pod {i}: {moved:?}");
    }
    let ns = |i: usize| (&vpc.pods[pods[i]], ips[i].clone());
    let pairs = [
        Pair::new("clsact filters", ns(0), ns(1))?,
        Pair::new("TCX links", ns(2), ns(3))?,
        Pair::new("no datapath", ns(4), ns(5))?,
    ];

    let mut cpus = nix::sched::CpuSet::new();
    cpus.set(args.cpu)?;
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &cpus).context("pinning to --cpu")?;
    // Warm up every path (conntrack entries, neighbours, caches).
    for p in &pairs {
        p.trips(2_000)?;
    }
    let mut us: Vec<Vec<f64>> = vec![Vec::new(); pairs.len()];
    let blocks = args.trips.div_ceil(BLOCK);
    for r in 0..args.rounds {
        // The pairs take turns every BLOCK round trips (a few ms), each
        // turn in another order: what the machine does meanwhile falls on
        // all three alike.
        let mut took = vec![Duration::ZERO; pairs.len()];
        for b in 0..blocks {
            for k in 0..pairs.len() {
                let i = (k + r + b) % pairs.len();
                took[i] += pairs[i].trips(BLOCK)?;
            }
        }
        for (i, t) in took.iter().enumerate() {
            us[i].push(t.as_secs_f64() * 1e6 / (blocks * BLOCK) as f64);
        }
    }

    // How far apart the two hooks are in each round (the same round's
    // measurements, a few ms apart), not only in the medians.
    let per_pass = |a: f64, b: f64| (a - b) * 1e3 / 4.0;
    let mut diffs: Vec<f64> = us[0].iter().zip(&us[1]).map(|(f, l)| per_pass(*f, *l)).collect();

    println!(
        "UDP request/response between two pods on one node, one thread pinned to CPU {}: µs per round trip (4 program passes), {} rounds of {} round trips",
        args.cpu, args.rounds, args.trips
    );
    println!("{:<16} {:>9} {:>9} {:>9}", "pods", "median", "min", "max");
    let mut med = Vec::new();
    for (p, v) in pairs.iter().zip(us.iter_mut()) {
        let m = median(v);
        println!("{:<16} {:>9.3} {:>9.3} {:>9.3}", p.label, m, v[0], v[v.len() - 1]);
        med.push(m);
    }
    println!(
        "per program pass, ns: filters {:.0}, links {:.0} over no datapath; filters - links {:.0} ({:.3}x per round trip)",
        per_pass(med[0], med[2]),
        per_pass(med[1], med[2]),
        per_pass(med[0], med[1]),
        med[0] / med[1]
    );
    let m = median(&mut diffs);
    println!(
        "filters - links per pass, round by round, ns: median {:.0}, min {:.0}, max {:.0}",
        m,
        diffs[0],
        diffs[diffs.len() - 1]
    );
    Ok(())
}
