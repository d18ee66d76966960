//! The datapath benchmark: one table, everything measured in the same run.
//!
//!     sudo target/release/bench-datapath
//!
//! 1. Per-packet cost of `sl_egress` / `sl_ingress` through BPF_PROG_TEST_RUN
//!    (the kernel's own timing of one run), with 1 to 100,000 Services
//!    loaded. Every sample goes to a Service drawn at random among those
//!    loaded, so a bigger table shows its cache misses.
//! 2. TCP connection rate (connect, request, response, close) from a pod to
//!    a VIP in the simulated VPC, with 1 to 100,000 Services, beside the
//!    same client calling the backend pod directly with no datapath (the
//!    limit) and through kube-proxy-shaped rulesets for the same Services:
//!    iptables mode (iptables-nft and iptables-legacy) and nftables mode.
//!    The modes run round-robin, so drift hits them alike.
//! 3. Time to add one Service with 3 backends to 100,000 existing ones:
//!    sluice's map writes beside `iptables-restore --noflush` and `nft -f`.
//! 4. Memory per Service, backend and conntrack entry (the kernel's own
//!    accounting of each map, before and after).

use anyhow::{Context, Result, ensure};
use aya::maps::IterableMap;
use aya::programs::SchedClassifier;
use clap::Parser;
use serde_json::json;
use sluice_integration::bench::{
    self, ACK, CrrServer, ProgramTime, Rng, SYN, SYN_ACK, TC_ACT_OK, TC_ACT_REDIRECT, connection_rate, pct, run,
    tcp_frame as frame,
};
use sluice_integration::kube_proxy::{self, Service};
use sluice_integration::netns::Netns;
use sluice_integration::vpc::{Vpc, result_ip};
use sluice_tc_datapath::layout::{Direction, PROTO_TCP, Reason, SVC_ALG_RANDOM};
use sluice_tc_datapath::loader::{self, DatapathConfig, EGRESS, INGRESS};
use sluice_tc_datapath::maps::{Maps, ServiceSpec};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsFd, AsRawFd};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Service counts for the per-packet cost.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000,100000")]
    packet_services: Vec<usize>,
    /// Service counts for the connection rate.
    #[arg(long, value_delimiter = ',', default_value = "1,10000,100000")]
    conn_services: Vec<usize>,
    /// Program runs per per-packet cell.
    #[arg(long, default_value_t = 20_000)]
    samples: usize,
    /// Seconds per connection-rate measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds of the connection-rate modes (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Client threads for the connection rate.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Seconds a kube-proxy ruleset may take to load; a mode that takes
    /// longer is reported as not measured at that size.
    #[arg(long, default_value_t = 300)]
    load_budget: u64,
    /// Service insertions timed for sluice (iptables and nft: a tenth).
    #[arg(long, default_value_t = 200)]
    inserts: usize,
}

const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// Service `i` of the generated set: VIP 10.96.0.0 + i + 1, port 80/TCP,
/// 3 backends of its own (10.128.0.0 + 3i + j + 1, port 8080).
fn generated(i: usize) -> Service {
    let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32 + 1);
    let endpoints = (0..3)
        .map(|j| {
            let a = u32::from(Ipv4Addr::new(10, 128, 0, 0)) + 3 * i as u32 + j + 1;
            (Ipv4Addr::from(a), 8080)
        })
        .collect();
    Service {
        vip,
        port: 80,
        endpoints,
    }
}

/// The datapath form of service `i` (ids derived from the index: what an
/// agent with its allocator in memory writes).
fn spec(i: usize, s: &Service) -> ServiceSpec {
    ServiceSpec {
        vip: s.vip.into(),
        port: s.port,
        proto: PROTO_TCP,
        rev_nat_id: i as u32 + 1,
        algorithm: SVC_ALG_RANDOM,
        affinity_timeout_secs: 0,
        reject: false,
        draining: Vec::new(),
        backends: s
            .endpoints
            .iter()
            .enumerate()
            .map(|(j, (a, p))| (3 * i as u32 + j as u32 + 1, IpAddr::V4(*a), *p, true))
            .collect(),
    }
}

/// The kernel's own memory accounting of a map (`memlock` in its fdinfo:
/// the bucket array plus the elements that exist, for maps that do not
/// preallocate).
fn memlock<K: aya::Pod, V: aya::Pod>(map: &impl IterableMap<K, V>) -> Result<u64> {
    let fd = map.map().fd().as_fd().as_raw_fd();
    let info = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}"))?;
    info.lines()
        .find_map(|l| l.strip_prefix("memlock:"))
        .and_then(|v| v.trim().parse().ok())
        .context("no memlock in the map's fdinfo")
}

struct PacketRow {
    services: usize,
    /// p50 ns of egress new, egress established, ingress reply: every
    /// packet to one Service (the middle one) among those loaded.
    one: [f64; 3],
    /// The same, every packet to a Service drawn at random.
    spread: [f64; 3],
    /// p50 ns of egress and ingress traffic that is no Service's.
    plain: [f64; 2],
}

struct Memory {
    per_service: f64,
    per_backend: f64,
    ct_entry: f64,
    ct_entries: u64,
    fixed: u64,
    /// The VIP address filter (an array, always whole).
    filters: u64,
}

struct Bench<'a> {
    egress: &'a SchedClassifier,
    ingress: &'a SchedClassifier,
    clients: Vec<Ipv4Addr>,
    samples: usize,
    buf: Vec<u8>,
}

/// The flows of one set of runs use source ports from `base` up, so that
/// no two sets share a conntrack entry.
const POOL: usize = 4096;

impl Bench<'_> {
    /// New flows (a fresh client port each), then established ones (a pool
    /// set up with SYN out and SYN-ACK back, then their next packets in
    /// turn), each to the Service `pick` names. Checks every verdict, and
    /// that the counters saw every translation.
    fn service_cells(&mut self, maps: &Maps, mut pick: impl FnMut() -> usize, base: u16) -> Result<[f64; 3]> {
        let nc = self.clients.len();
        let translated0 = maps.count(Reason::ServiceTranslated, Direction::Egress)?;
        let replies0 = maps.count(Reason::ReplyTranslated, Direction::Ingress)?;
        let mut cells: [Vec<f64>; 3] = Default::default();
        for k in 0..self.samples {
            let c = self.clients[k % nc];
            let sport = base + (k / nc) as u16;
            let s = generated(pick());
            let (v, ns) = run(self.egress, &frame(c, s.vip, sport, 80, SYN), None)?;
            ensure!(v == TC_ACT_REDIRECT, "egress new flow: verdict {v}");
            cells[0].push(ns);
        }
        let base = base + (self.samples / nc) as u16 + 1;
        let mut pool = Vec::with_capacity(POOL);
        for f in 0..POOL {
            let c = self.clients[f % nc];
            let sport = base + (f / nc) as u16;
            let s = generated(pick());
            run(self.egress, &frame(c, s.vip, sport, 80, SYN), Some(&mut self.buf))?;
            let b = &self.buf;
            let backend = Ipv4Addr::new(b[30], b[31], b[32], b[33]);
            let bport = u16::from_be_bytes([b[36], b[37]]);
            let (v, _) = run(self.ingress, &frame(backend, c, bport, sport, SYN_ACK), None)?;
            ensure!(v == TC_ACT_OK, "ingress reply: verdict {v}");
            pool.push((c, sport, s.vip, backend, bport));
        }
        for k in 0..self.samples {
            let (c, sport, vip, backend, bport) = pool[k % POOL];
            let (v, ns) = run(self.egress, &frame(c, vip, sport, 80, ACK), None)?;
            // The reply taught the next hop: the packet leaves as it is.
            ensure!(v == TC_ACT_OK, "egress established: verdict {v}");
            cells[1].push(ns);
            let (v, ns) = run(self.ingress, &frame(backend, c, bport, sport, ACK), None)?;
            ensure!(v == TC_ACT_OK, "ingress reply: verdict {v}");
            cells[2].push(ns);
        }
        let translated = maps.count(Reason::ServiceTranslated, Direction::Egress)? - translated0;
        let replies = maps.count(Reason::ReplyTranslated, Direction::Ingress)? - replies0;
        let want = (2 * self.samples + POOL, self.samples + POOL);
        ensure!(
            (translated, replies) == (want.0 as u64, want.1 as u64),
            "translated {translated} packets and {replies} replies, expected {want:?}"
        );
        Ok(cells.each_mut().map(|c| pct(c, 0.5)))
    }

    /// Traffic that is no Service's: the floor every packet pays.
    fn plain_cells(&mut self) -> Result<[f64; 2]> {
        let peer = Ipv4Addr::new(10, 244, 9, 9);
        let mut cells: [Vec<f64>; 2] = Default::default();
        for k in 0..self.samples {
            let c = self.clients[k % self.clients.len()];
            let (v, ns) = run(self.egress, &frame(c, peer, 50000, 5000, ACK), None)?;
            ensure!(v == TC_ACT_OK, "egress plain: verdict {v}");
            cells[0].push(ns);
            let (v, ns) = run(self.ingress, &frame(peer, c, 5000, 50000, ACK), None)?;
            ensure!(v == TC_ACT_OK, "ingress plain: verdict {v}");
            cells[1].push(ns);
        }
        Ok(cells.each_mut().map(|c| pct(c, 0.5)))
    }
}

/// Each Service count on a freshly loaded datapath, so that no cell
/// inherits another's conntrack history (an LRU map's free list, once
/// churned, scatters new entries over its whole preallocated area).
fn per_packet(args: &Args) -> Result<(Vec<PacketRow>, Memory)> {
    ensure!(args.samples <= 16 * 12_000, "--samples: at most 192000");
    let mut rows = Vec::new();
    let mut memory = None;
    for &n in &args.packet_services {
        ensure!(n > 0, "--packet-services: counts must be positive");
        let (row, mem) = per_packet_with(args, n)?;
        rows.push(row);
        memory = Some(mem);
    }
    Ok((rows, memory.context("--packet-services: no count given")?))
}

fn per_packet_with(args: &Args, n: usize) -> Result<(PacketRow, Memory)> {
    let cfg = DatapathConfig::default();
    let mut ebpf = loader::load(&cfg, None).context("loading the datapath")?;
    let mut maps = Maps::take(&mut ebpf, cfg.maglev_table_size)?;
    let egress: &SchedClassifier = ebpf.program(EGRESS).context("egress")?.try_into()?;
    let ingress: &SchedClassifier = ebpf.program(INGRESS).context("ingress")?.try_into()?;
    let mut bench = Bench {
        egress,
        ingress,
        clients: (0..16).map(|i| Ipv4Addr::new(10, 244, 1, 10 + i)).collect(),
        samples: args.samples,
        buf: vec![0u8; 256],
    };
    for (i, c) in bench.clients.iter().enumerate() {
        // The test-run device is loopback: ifindex 1.
        maps.add_endpoint(IpAddr::V4(*c), 1, [0x02, 0, 0, 0, 0, 0x05], i as u32 + 1)?;
    }
    let mem0 = [
        memlock(&maps.services)?,
        memlock(&maps.revnat)?,
        memlock(&maps.backends)?,
    ];
    let mut rng = Rng(0x5eed_5eed_5eed_5eed);
    for i in 0..n {
        maps.upsert_service(&spec(i, &generated(i)))?;
    }
    let one = bench.service_cells(&maps, || n / 2, 1024)?;
    let spread = bench.service_cells(&maps, || rng.below(n), 30000)?;
    let plain = bench.plain_cells()?;
    eprintln!("per-packet: {n} services done");
    let row = PacketRow {
        services: n,
        one,
        spread,
        plain,
    };
    let mem1 = [
        memlock(&maps.services)?,
        memlock(&maps.revnat)?,
        memlock(&maps.backends)?,
    ];
    let ct_total = memlock(&maps.ct)?;
    let ct_entries = u64::from(maps.ct.map().info()?.max_entries());
    let memory = Memory {
        per_service: ((mem1[0] - mem0[0]) + (mem1[1] - mem0[1])) as f64 / n as f64,
        per_backend: (mem1[2] - mem0[2]) as f64 / (3 * n) as f64,
        ct_entry: ct_total as f64 / ct_entries as f64,
        ct_entries,
        fixed: mem0.iter().sum(),
        filters: memlock(&maps.vip_filter)?,
    };
    Ok((row, memory))
}

/// The node's program time per connection of one sluice mode (an extra
/// pass, with the kernel's run-time statistics on).
fn program_time(args: &Args, vpc: &Vpc, p: &Pair) -> Result<(Mode, ProgramTime)> {
    let t = bench::program_time(vpc, 0, &vpc.pods[p.client], &targets(p), args.seconds, args.workers)
        .with_context(|| p.mode.label())?;
    Ok((p.mode, t))
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Direct,
    SluicePodIp,
    Sluice,
    IptablesNft,
    IptablesLegacy,
    Nftables,
}

impl Mode {
    const ALL: [Mode; 6] = [
        Mode::Direct,
        Mode::SluicePodIp,
        Mode::Sluice,
        Mode::IptablesNft,
        Mode::IptablesLegacy,
        Mode::Nftables,
    ];
    fn label(self) -> &'static str {
        match self {
            Mode::Direct => "direct (no datapath)",
            Mode::SluicePodIp => "sluice attached, pod IP",
            Mode::Sluice => "sluice VIP",
            Mode::IptablesNft => "kube-proxy iptables (nft)",
            Mode::IptablesLegacy => "kube-proxy iptables (legacy)",
            Mode::Nftables => "kube-proxy nftables",
        }
    }
    /// The restore tool of an iptables mode.
    fn restore(self) -> &'static str {
        match self {
            Mode::IptablesNft => "iptables-nft-restore",
            Mode::IptablesLegacy => "iptables-legacy-restore",
            other => unreachable!("{} loads no iptables ruleset", other.label()),
        }
    }
}

/// A client pod and its server pod for one mode.
struct Pair {
    mode: Mode,
    client: usize,
    server_ip: Ipv4Addr,
    _server: CrrServer,
}

const MEASURED_VIP: Ipv4Addr = Ipv4Addr::new(10, 95, 0, 1);
const PORTS: [u16; 3] = [8080, 8081, 8082];

/// The Services for a run with `n` of them: the generated ones, with the
/// measured Service (VIP 10.95.0.1 over the server's three ports) in the
/// middle, where a linear rule scan meets it on average.
fn service_list(n: usize, server: Ipv4Addr) -> (Vec<Service>, usize) {
    let mut v: Vec<Service> = (0..n.saturating_sub(1)).map(generated).collect();
    let at = v.len() / 2;
    v.insert(
        at,
        Service {
            vip: MEASURED_VIP,
            port: 80,
            endpoints: PORTS.iter().map(|p| (server, *p)).collect(),
        },
    );
    (v, at)
}

fn exec_in(ns: &Netns, program: &str, args: &[&str], stdin: &[u8]) -> Result<Duration> {
    exec_within(ns, program, args, stdin, None)?.context("no time limit was set")
}

/// Run `program` in `ns` with `stdin`; `None` when it ran past `limit`
/// and was killed.
fn exec_within(
    ns: &Netns,
    program: &str,
    args: &[&str],
    stdin: &[u8],
    limit: Option<Duration>,
) -> Result<Option<Duration>> {
    let started = Instant::now();
    let mut child = ns
        .cmd(program)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("spawn {program}"))?;
    child.stdin.take().expect("piped").write_all(stdin)?;
    if let Some(limit) = limit {
        while child.try_wait()?.is_none() {
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let out = child.wait_with_output()?;
    let took = started.elapsed();
    ensure!(
        out.status.success(),
        "{program} {} in {}: {}",
        args.join(" "),
        ns.name,
        String::from_utf8_lossy(&out.stderr)
            .lines()
            .take(5)
            .collect::<Vec<_>>()
            .join("; ")
    );
    Ok(Some(took))
}

struct ConnRow {
    services: usize,
    /// Median connections/s per mode, in `Mode::ALL` order.
    rate: Vec<f64>,
    failed: u64,
    load_secs: Vec<f64>,
    /// The sluice modes' program time per connection.
    programs: Vec<(Mode, ProgramTime)>,
}

struct Inserts {
    /// (label, p50 µs, p99 µs, count)
    rows: Vec<(&'static str, f64, f64, usize)>,
}

fn connection_benchmark(args: &Args) -> Result<(Vec<ConnRow>, Inserts)> {
    let mut vpc = Vpc::new("bd", 1)?;
    let with_dp = vpc.main_conf(0, "1.0.0");
    let mut without_dp = with_dp.clone();
    without_dp["datapath"]["enabled"] = json!(false);
    let mut pairs = Vec::new();
    let mut added = Vec::new();
    for (i, mode) in Mode::ALL.into_iter().enumerate() {
        let conf = if matches!(mode, Mode::Sluice | Mode::SluicePodIp) {
            &with_dp
        } else {
            &without_dp
        };
        let mut ips = Vec::new();
        let mut pods = Vec::new();
        for role in ["c", "s"] {
            let pod = vpc.pod(&format!("{role}{i}"))?;
            let cid = format!("bd-{role}{i}");
            let out = vpc.sluice(0, "ADD", &cid, pod, conf);
            ensure!(out.success, "ADD {cid}: {}{}", out.stdout, out.stderr);
            ips.push(result_ip(&out.json()).parse::<Ipv4Addr>()?);
            pods.push(pod);
            added.push((cid, pod, conf.clone()));
        }
        let server = CrrServer::start(&vpc.pods[pods[1]], &PORTS)?;
        pairs.push(Pair {
            mode,
            client: pods[0],
            server_ip: ips[1],
            _server: server,
        });
    }
    let result = measure(args, &vpc, &pairs);
    drop(pairs);
    for (cid, pod, conf) in added {
        let out = vpc.sluice(0, "DEL", &cid, pod, &conf);
        if !out.success {
            eprintln!("DEL {cid} failed: {}{}", out.stdout, out.stderr);
        }
    }
    result
}

fn measure(args: &Args, vpc: &Vpc, pairs: &[Pair]) -> Result<(Vec<ConnRow>, Inserts)> {
    let mut maps = vpc.maps(0)?;
    let mut in_maps = 0usize; // generated services in the node's maps
    let mut rows = Vec::new();
    let mut inserts = Inserts { rows: Vec::new() };
    let sizes = args.conn_services.clone();
    for (si, &n) in sizes.iter().enumerate() {
        let mut load_secs = vec![0f64; pairs.len()];
        let mut unmeasured = vec![false; pairs.len()];
        for (m, p) in pairs.iter().enumerate() {
            let ns = &vpc.pods[p.client];
            let (list, _) = service_list(n, p.server_ip);
            let started = Instant::now();
            match p.mode {
                Mode::Direct | Mode::SluicePodIp => {}
                Mode::Sluice => {
                    while in_maps < n.saturating_sub(1) {
                        maps.upsert_service(&spec(in_maps, &generated(in_maps)))?;
                        in_maps += 1;
                    }
                    let measured = &list[list.iter().position(|s| s.vip == MEASURED_VIP).unwrap()];
                    maps.upsert_service(&spec(999_999, measured))?;
                }
                Mode::IptablesNft | Mode::IptablesLegacy => {
                    let text = kube_proxy::iptables_restore(&list, CLUSTER_CIDR);
                    exec_in(ns, p.mode.restore(), &[], text.as_bytes())?;
                }
                Mode::Nftables => {
                    let _ = exec_in(ns, "nft", &["delete", "table", "ip", kube_proxy::NFT_TABLE], b"");
                    let budget = Duration::from_secs(args.load_budget);
                    // The hooks come last: a table cut short is inert.
                    for text in kube_proxy::nft_ruleset(&list, CLUSTER_CIDR, 4000) {
                        let left = budget.saturating_sub(started.elapsed());
                        if exec_within(ns, "nft", &["-f", "-"], text.as_bytes(), Some(left))?.is_none() {
                            unmeasured[m] = true;
                            break;
                        }
                    }
                }
            }
            load_secs[m] = started.elapsed().as_secs_f64();
            eprintln!(
                "connection rate: {} with {n} services {} in {:.1} s",
                p.mode.label(),
                if unmeasured[m] {
                    "NOT loaded (over the budget)"
                } else {
                    "loaded"
                },
                load_secs[m]
            );
        }
        // Every mode reaches all three backends before it is timed.
        for p in pairs.iter().zip(&unmeasured).filter(|(_, u)| !**u).map(|(p, _)| p) {
            let to = targets(p);
            let ns = &vpc.pods[p.client];
            let (rate, failed) = connection_rate(ns, &to, 0.3, args.workers)?;
            ensure!(
                failed == 0 && rate > 0.0,
                "{} with {n} services: {failed} failed connections to {to:?}",
                p.mode.label()
            );
        }
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); pairs.len()];
        let mut failed = 0;
        for _ in 0..args.rounds {
            for (m, p) in pairs.iter().enumerate() {
                if unmeasured[m] {
                    samples[m].push(f64::NAN);
                    continue;
                }
                let (rate, f) = connection_rate(&vpc.pods[p.client], &targets(p), args.seconds, args.workers)?;
                samples[m].push(rate);
                failed += f;
            }
        }
        let rate: Vec<f64> = samples.iter_mut().map(|s| pct(s, 0.5)).collect();
        let programs = pairs
            .iter()
            .filter(|p| matches!(p.mode, Mode::SluicePodIp | Mode::Sluice))
            .map(|p| program_time(args, vpc, p))
            .collect::<Result<_>>()?;
        rows.push(ConnRow {
            services: n,
            rate,
            failed,
            load_secs,
            programs,
        });
        if si + 1 == sizes.len() {
            inserts = insert_benchmark(args, vpc, pairs, &unmeasured, &mut maps, n)?;
        }
    }
    Ok((rows, inserts))
}

/// Where a mode's client connects: the VIP, or (no Service) the server's
/// three ports in turn, so the server side works alike in every mode.
fn targets(p: &Pair) -> Vec<SocketAddr> {
    match p.mode {
        Mode::Direct | Mode::SluicePodIp => PORTS
            .iter()
            .map(|port| SocketAddr::V4(SocketAddrV4::new(p.server_ip, *port)))
            .collect(),
        _ => vec![SocketAddr::V4(SocketAddrV4::new(MEASURED_VIP, 80))],
    }
}

/// Add one Service with 3 backends to the `n` loaded, one at a time.
fn insert_benchmark(
    args: &Args,
    vpc: &Vpc,
    pairs: &[Pair],
    unmeasured: &[bool],
    maps: &mut Maps,
    n: usize,
) -> Result<Inserts> {
    let mut rows = Vec::new();
    let fresh = |k: usize| 2 * n + k; // indexes no loaded Service uses
    let mut t = Vec::new();
    for k in 0..args.inserts {
        let i = fresh(k);
        let s = spec(i, &generated(i));
        let started = Instant::now();
        maps.upsert_service(&s)?;
        t.push(started.elapsed().as_secs_f64() * 1e6);
    }
    rows.push(("sluice (map writes)", pct(&mut t, 0.5), pct(&mut t, 0.99), t.len()));
    for (p, _) in pairs.iter().zip(unmeasured).filter(|(_, u)| !**u) {
        let ns = &vpc.pods[p.client];
        let (label, count) = match p.mode {
            Mode::IptablesNft => ("iptables-nft-restore --noflush", (args.inserts / 10).max(5)),
            Mode::IptablesLegacy => ("iptables-legacy-restore --noflush", (args.inserts / 10).max(5)),
            Mode::Nftables => ("nft -f", (args.inserts / 10).max(5)),
            _ => continue,
        };
        let mut t = Vec::new();
        for k in 0..count {
            let i = fresh(k);
            let s = generated(i);
            let took = match p.mode {
                Mode::Nftables => exec_in(
                    ns,
                    "nft",
                    &["-f", "-"],
                    kube_proxy::nft_add(i, &s, CLUSTER_CIDR).as_bytes(),
                )?,
                _ => exec_in(
                    ns,
                    p.mode.restore(),
                    &["--noflush"],
                    kube_proxy::iptables_add(i, &s, CLUSTER_CIDR).as_bytes(),
                )?,
            };
            t.push(took.as_secs_f64() * 1e6);
        }
        rows.push((label, pct(&mut t, 0.5), pct(&mut t, 0.99), t.len()));
        eprintln!("inserts: {label} done");
    }
    Ok(Inserts { rows })
}

fn main() -> Result<()> {
    let args = Args::parse();
    sluice_integration::bench::require_root("bench-datapath")?;
    for tool in ["iptables-nft-restore", "iptables-legacy-restore", "nft"] {
        ensure!(
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()?
                .status
                .success(),
            "{tool} missing: run scripts/install-deps"
        );
    }
    let (packet_rows, memory) = per_packet(&args)?;
    let (conn_rows, inserts) = connection_benchmark(&args)?;
    report(&args, &packet_rows, &memory, &conn_rows, &inserts);
    Ok(())
}

fn report(args: &Args, packets: &[PacketRow], memory: &Memory, conns: &[ConnRow], inserts: &Inserts) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("sluice datapath benchmark: Linux {}, {cpus} CPUs", kernel.trim());
    println!();
    println!(
        "1. per-packet cost, ns: p50 of {} BPF_PROG_TEST_RUN runs per cell, timed by the kernel",
        args.samples
    );
    println!("   one: every packet to one Service among those loaded; spread: each to a random one");
    println!(
        "{:>9} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>8} {:>8}",
        "", "egress", "egress", "ingress", "egress", "egress", "ingress", "egress", "ingress"
    );
    println!(
        "{:>9} | {:>8} {:>8} {:>8} | {:>8} {:>8} {:>8} | {:>8} {:>8}",
        "services", "new", "estab", "reply", "new", "estab", "reply", "plain", "plain"
    );
    println!("{:>9} | {:^26} | {:^26} |", "", "one Service", "spread");
    let row = |label: String, v: [f64; 8], prec: usize| {
        println!(
            "{label:>9} | {:>8.p$} {:>8.p$} {:>8.p$} | {:>8.p$} {:>8.p$} {:>8.p$} | {:>8.p$} {:>8.p$}",
            v[0],
            v[1],
            v[2],
            v[3],
            v[4],
            v[5],
            v[6],
            v[7],
            p = prec
        );
    };
    let flat = |r: &PacketRow| -> [f64; 8] {
        [
            r.one[0],
            r.one[1],
            r.one[2],
            r.spread[0],
            r.spread[1],
            r.spread[2],
            r.plain[0],
            r.plain[1],
        ]
    };
    for r in packets {
        row(r.services.to_string(), flat(r), 0);
    }
    if let (Some(first), Some(last)) = (packets.first(), packets.last()) {
        let (a, b) = (flat(first), flat(last));
        let ratio: [f64; 8] = std::array::from_fn(|i| b[i] / a[i]);
        row(format!("{}/{}", last.services, first.services), ratio, 2);
        let worst_one = ratio[..3].iter().cloned().fold(0.0, f64::max);
        let worst_spread = ratio[3..6].iter().cloned().fold(0.0, f64::max);
        println!(
            "   target {}/{} <= 1.10: one Service {} (worst {worst_one:.2}); spread {} (worst {worst_spread:.2})",
            last.services,
            first.services,
            if worst_one <= 1.10 { "met" } else { "MISSED" },
            if worst_spread <= 1.10 { "met" } else { "MISSED" },
        );
    }
    println!();
    println!(
        "2. TCP connection rate to a VIP with 3 backends, connections/s (median of {} x {} s, {} client threads)",
        args.rounds, args.seconds, args.workers
    );
    print!("{:>9} |", "services");
    for m in Mode::ALL {
        print!(" {:>28}", m.label());
    }
    println!(" | VIP/direct  VIP/best kube-proxy");
    let (direct, vip) = (0, 2);
    for r in conns {
        print!("{:>9} |", r.services);
        for v in &r.rate {
            if v.is_nan() {
                print!(" {:>28}", "not measured");
            } else {
                print!(" {v:>28.0}");
            }
        }
        let best = r.rate[3..].iter().cloned().fold(0.0, f64::max);
        println!(
            " | {:>10.2}  {:>19.2}",
            r.rate[vip] / r.rate[direct],
            r.rate[vip] / best
        );
    }
    for r in conns {
        let best = r.rate[3..].iter().cloned().fold(0.0, f64::max);
        let ratio = r.rate[vip] / r.rate[direct];
        println!(
            "   {} services: load s: sluice maps {:.1}, iptables-nft {:.1}, iptables-legacy {:.1}, nft {:.1}{}; failed connections {}; VIP/direct {ratio:.2}{}; above the best kube-proxy mode: {}",
            r.services,
            r.load_secs[vip],
            r.load_secs[3],
            r.load_secs[4],
            r.load_secs[5],
            if r.rate[5].is_nan() {
                " (over the --load-budget, stopped)"
            } else {
                ""
            },
            r.failed,
            if r.services >= 100_000 {
                if ratio >= 0.95 {
                    " (target >= 0.95: met)"
                } else {
                    " (target >= 0.95: MISSED)"
                }
            } else {
                ""
            },
            if r.rate[vip] > best { "yes" } else { "NO" }
        );
    }
    println!(
        "   where the datapath's time goes, in real traffic (one more {} s pass per sluice mode with the kernel's BPF run-time statistics on):",
        args.seconds
    );
    for r in conns {
        let cpu_per_conn_us = cpus as f64 / r.rate[direct] * 1e6;
        for (mode, t) in &r.programs {
            let us = t.micros();
            println!(
                "   {:>6} services, {:<24} egress {:.1} runs x {:.0} ns, ingress {:.1} runs x {:.0} ns per connection = {us:.1} µs ({:.1}% of a direct connection's {cpu_per_conn_us:.0} µs of CPU; {} connections)",
                r.services,
                format!("{}:", mode.label()),
                t.egress.0,
                t.egress.1,
                t.ingress.0,
                t.ingress.1,
                100.0 * us / cpu_per_conn_us,
                t.connections
            );
        }
    }
    println!();
    println!(
        "3. adding one Service with 3 backends to {} existing ones, µs",
        conns.last().map_or(0, |r| r.services)
    );
    println!("{:>34} | {:>10} {:>10} {:>6}", "how", "p50", "p99", "runs");
    for (label, p50, p99, n) in &inserts.rows {
        println!("{label:>34} | {p50:>10.1} {p99:>10.1} {n:>6}");
    }
    if let Some((_, _, p99, _)) = inserts.rows.first() {
        println!(
            "   target: sluice p99 <= 100 µs -> {}",
            if *p99 <= 100.0 { "met" } else { "MISSED" }
        );
    }
    println!();
    println!("4. memory (the kernel's accounting of each map)");
    println!(
        "   per Service port, its 3 backends apart: {:.0} B; per backend: {:.0} B",
        memory.per_service, memory.per_backend
    );
    println!(
        "   per conntrack entry: {:.0} B, preallocated ({} entries, {:.1} MiB; a connection takes 1 at each pod end, a Service connection 1 more at the client's)",
        memory.ct_entry,
        memory.ct_entries,
        memory.ct_entry * memory.ct_entries as f64 / 1048576.0
    );
    println!(
        "   fixed cost of the empty Service maps (bucket arrays): {:.1} MiB, and of the VIP address filter: {:.1} MiB",
        memory.fixed as f64 / 1048576.0,
        memory.filters as f64 / 1048576.0
    );
}
