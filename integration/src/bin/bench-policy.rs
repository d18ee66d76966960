//! The network-policy benchmark: one report, everything measured in the
//! same run.
//!
//!     target/release/bench-policy
//!
//! 1. Per-packet cost of `sl_ingress` / `sl_egress` (BPF_PROG_TEST_RUN, the
//!    kernel's timing of each run) at a pod isolated in both directions by
//!    N allow rules per direction, beside the same pod with no policy (the
//!    "0 rules" row: no rule can be looked up, the baseline). Every new
//!    flow comes from a peer and port drawn at random among the rules, so a
//!    bigger trie shows its cache misses; denied SYNs are timed too.
//! 2. TCP connection rate (connect, request, response, close) between two
//!    pods in the simulated VPC, the server isolated for ingress and the
//!    client for egress by a policy allowing the connection among 10,000
//!    other rules each, beside the same two pods with no policy; the modes
//!    alternate round by round.
//! 3. Time to apply one policy change that touches 1,000 endpoints of a
//!    node (translation of the whole cluster's objects, then the map writes
//!    of the difference), beside the full sync of the same state.

use anyhow::{Context, Result, ensure};
use aya::maps::RingBuf;
use aya::programs::SchedClassifier;
use clap::Parser;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use sluice_integration::bench::{
    self, ACK, CrrServer, ProgramTime, Rng, SYN, SYN_ACK, TC_ACT_OK, TC_ACT_SHOT, connection_rate, pct, run,
    tcp_frame as frame,
};
use sluice_integration::vpc::{Vpc, result_ip};
use sluice_policy::{NodeApplier, Translator};
use sluice_tc_datapath::layout::{
    Direction, EpPolicyValue, ID_FIRST_ALLOCATED, POLICY_F_EGRESS, POLICY_F_INGRESS, PROTO_TCP, Reason,
};
use sluice_tc_datapath::loader::{self, DatapathConfig, EGRESS, INGRESS};
use sluice_tc_datapath::maps::{Maps, Rule};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Allow rules per direction on the measured endpoint (0 = no policy).
    #[arg(long, value_delimiter = ',', default_value = "0,100,10000")]
    rules: Vec<usize>,
    /// Program runs per per-packet cell.
    #[arg(long, default_value_t = 20_000)]
    samples: usize,
    /// Rules per direction on each pod in the connection-rate policy mode.
    #[arg(long, default_value_t = 10_000)]
    conn_rules: usize,
    /// Seconds per connection-rate measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds of each connection-rate mode (the median is reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Client threads for the connection rate.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Pods of the node a policy change touches.
    #[arg(long, default_value_t = 1000)]
    endpoints: usize,
    /// Pods on other nodes (the rest of the cluster the translation reads).
    #[arg(long, default_value_t = 4000)]
    remote_pods: usize,
    /// Policy changes timed.
    #[arg(long, default_value_t = 20)]
    changes: usize,
}

/// Peers of the per-packet runs: one address and identity each.
const PEERS: usize = 1000;
/// A peer no rule names: its SYNs are the denied ones.
const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
const POLICY_ID: u32 = 7;

fn peer(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, (k / 256) as u8, (k % 256) as u8)
}

fn peer_identity(k: usize) -> u32 {
    ID_FIRST_ALLOCATED + k as u32
}

/// Rule `j` of a set: peers first, then ports, so that 100 rules are 100
/// peers on one port and 10,000 are 1,000 peers on 10 ports.
fn rule_flow(j: usize) -> (usize, u16) {
    (j % PEERS, 1000 + (j / PEERS) as u16)
}

/// Mostly one port each, as policies mostly are; one in a hundred is every
/// port of its peer and one a two-port range, so that the endpoint has
/// every kind of lookup (a flow such a rule allows tries the exact port
/// and the other kinds first).
fn rule(dir: Direction, j: usize) -> Rule {
    let (k, port) = rule_flow(j);
    Rule {
        dir,
        identity: peer_identity(k),
        proto: PROTO_TCP,
        ports: match j % 100 {
            98 => None,
            99 => Some((port, port + 1)),
            _ => Some((port, port)),
        },
        policy: POLICY_ID,
    }
}

/// The endpoint entry isolating for `flags` with the kinds `rules` need.
fn isolated(identity: u32, flags: u8, rules: &[Rule]) -> EpPolicyValue {
    let mut kinds = [0u8; 2];
    for r in rules {
        kinds[r.dir as usize] |= r.kinds();
    }
    EpPolicyValue {
        identity,
        ingress_policy: POLICY_ID,
        egress_policy: POLICY_ID,
        flags,
        kinds,
        pad0: 0,
    }
}

/// p50 ns per cell; `denied` is None without a policy.
struct PacketRow {
    rules: usize,
    /// New flows in (SYN in) and out (SYN out), all to one rule among
    /// those loaded, then each to a rule drawn at random; then a reply
    /// (SYN-ACK out) and established packets in (ACK in) and out.
    cells: [f64; 7],
    denied: Option<f64>,
}

const CELLS: [&str; 7] = [
    "in new",
    "out new",
    "in new",
    "out new",
    "out reply",
    "in estab",
    "out estab",
];

fn per_packet(args: &Args) -> Result<Vec<PacketRow>> {
    ensure!(
        args.samples > 0 && args.samples <= 20_000,
        "--samples: between 1 and 20000"
    );
    args.rules.iter().map(|&n| per_packet_with(args, n)).collect()
}

/// One row, on a freshly loaded datapath (no cell inherits another's
/// conntrack history).
fn per_packet_with(args: &Args, n: usize) -> Result<PacketRow> {
    let cfg = DatapathConfig::default();
    let mut ebpf = loader::load(&cfg, None).context("loading the datapath")?;
    let mut maps = Maps::take(&mut ebpf, cfg.maglev_table_size)?;
    let mut events = RingBuf::try_from(ebpf.take_map("sl_events").context("sl_events")?)?;
    let egress: &SchedClassifier = ebpf.program(EGRESS).context("egress")?.try_into()?;
    let ingress: &SchedClassifier = ebpf.program(INGRESS).context("ingress")?.try_into()?;
    let pod = Ipv4Addr::new(10, 244, 1, 10);
    let ep = 1;
    // The test-run device is loopback: ifindex 1.
    maps.add_endpoint(IpAddr::V4(pod), 1, [0x02, 0, 0, 0, 0, 0x05], ep)?;
    // The same ipcache in every row: only the rules differ.
    for k in 0..PEERS {
        maps.set_identity(IpAddr::V4(peer(k)), peer_identity(k))?;
    }
    let own = peer_identity(PEERS);
    maps.set_identity(IpAddr::V4(pod), own)?;
    maps.set_identity(IpAddr::V4(STRANGER), peer_identity(PEERS + 1))?;
    let rules: Vec<Rule> = (0..n)
        .flat_map(|j| [rule(Direction::Ingress, j), rule(Direction::Egress, j)])
        .collect();
    for r in &rules {
        maps.insert_rule(ep, r)?;
    }
    if n > 0 {
        maps.set_endpoint_policy(ep, isolated(own, POLICY_F_INGRESS | POLICY_F_EGRESS, &rules))?;
    }
    let dropped0 = maps.count(Reason::DropPolicy, Direction::Ingress)?;
    // Without rules the flows are drawn as for the biggest set: the
    // packets differ only in addresses and ports, which cost alike.
    let draw = if n > 0 {
        n
    } else {
        args.rules.iter().copied().max().unwrap_or(1).max(1)
    };
    let mut rng = Rng(0x5eed_0f90_11c7);
    let mut cells: [Vec<f64>; 7] = Default::default();
    let timed = |p: &SchedClassifier, f: &[u8], want: u32, what: &str| -> Result<f64> {
        let (v, ns) = run(p, f, None)?;
        ensure!(v == want, "{n} rules, {what}: verdict {v}, expected {want}");
        Ok(ns)
    };
    // New flows each way, a fresh port on the pod's side every time: to
    // the middle rule (what the lookups cost when their entries are hot),
    // then to random rules (and their peers' ipcache entries: the cache
    // misses a big set adds).
    let one = draw / 2;
    for (c, base) in [(0, 30_000u16), (2, 10_000)] {
        for s in 0..args.samples {
            let sport = base + s as u16;
            let (k, port) = rule_flow(if c == 0 { one } else { rng.below(draw) });
            let f = frame(peer(k), pod, sport, port, SYN);
            cells[c].push(timed(ingress, &f, TC_ACT_OK, "in new")?);
            let (k, port) = rule_flow(if c == 0 { one } else { rng.below(draw) });
            let f = frame(pod, peer(k), sport, port, SYN);
            cells[c + 1].push(timed(egress, &f, TC_ACT_OK, "out new")?);
        }
    }
    // Established flows: a pool opened each way, then their next packets.
    const POOL: usize = 4096;
    let mut pool = Vec::with_capacity(POOL);
    for f in 0..POOL {
        let (k, port) = rule_flow(rng.below(draw));
        let sport = 60_000 + f as u16;
        timed(ingress, &frame(peer(k), pod, sport, port, SYN), TC_ACT_OK, "pool in")?;
        cells[4].push(timed(
            egress,
            &frame(pod, peer(k), port, sport, SYN_ACK),
            TC_ACT_OK,
            "out reply",
        )?);
        pool.push((peer(k), sport, port));
    }
    for s in 0..args.samples {
        let (p, sport, port) = pool[s % POOL];
        cells[5].push(timed(ingress, &frame(p, pod, sport, port, ACK), TC_ACT_OK, "in estab")?);
        cells[6].push(timed(egress, &frame(pod, p, port, sport, ACK), TC_ACT_OK, "out estab")?);
    }
    // Denied SYNs: the three lookups all miss, the drop is counted and
    // reported; the ring buffer is drained outside the timing, as the
    // agent would keep it.
    let denied = if n > 0 {
        let mut d = Vec::with_capacity(args.samples);
        for s in 0..args.samples {
            let (_, port) = rule_flow(rng.below(draw));
            let f = frame(STRANGER, pod, 10_000 + s as u16, port, SYN);
            d.push(timed(ingress, &f, TC_ACT_SHOT, "in denied")?);
            while events.next().is_some() {}
        }
        let dropped = maps.count(Reason::DropPolicy, Direction::Ingress)? - dropped0;
        ensure!(
            dropped == args.samples as u64,
            "{n} rules: {dropped} policy drops counted, expected {}",
            args.samples
        );
        Some(pct(&mut d, 0.5))
    } else {
        None
    };
    ensure!(
        maps.count(Reason::DropPolicy, Direction::Egress)? == 0,
        "{n} rules: an allowed egress packet was dropped"
    );
    eprintln!("per-packet: {n} rules done");
    Ok(PacketRow {
        rules: n,
        cells: cells.each_mut().map(|c| pct(c, 0.5)),
        denied,
    })
}

const PORTS: [u16; 3] = [8080, 8081, 8082];

struct ConnResult {
    /// Median connections/s: no policy, policy.
    rate: [f64; 2],
    failed: u64,
    /// Rule-trie entries on the node in the policy mode.
    entries: usize,
    programs: [ProgramTime; 2],
}

/// Two pods on one node through the real CNI binary.
fn connection_rate_bench(args: &Args) -> Result<ConnResult> {
    let mut vpc = Vpc::new("bp", 1)?;
    let conf = vpc.main_conf(0, "1.0.0");
    let mut added = Vec::new();
    let mut ips = Vec::new();
    for role in ["c", "s"] {
        let pod = vpc.pod(role)?;
        let cid = format!("bp-{role}");
        let out = vpc.sluice(0, "ADD", &cid, pod, &conf);
        ensure!(out.success, "ADD {cid}: {}{}", out.stdout, out.stderr);
        ips.push(result_ip(&out.json()).parse::<Ipv4Addr>()?);
        added.push((cid, pod));
    }
    let result = (|| {
        let server = CrrServer::start(&vpc.pods[added[1].1], &PORTS)?;
        let r = measure_connections(args, &vpc, added[0].1, ips[0], ips[1]);
        drop(server);
        r
    })();
    for (cid, pod) in added {
        let out = vpc.sluice(0, "DEL", &cid, pod, &conf);
        if !out.success {
            eprintln!("DEL {cid} failed: {}{}", out.stdout, out.stderr);
        }
    }
    result
}

fn measure_connections(args: &Args, vpc: &Vpc, client: usize, c_ip: Ipv4Addr, s_ip: Ipv4Addr) -> Result<ConnResult> {
    let mut maps = vpc.maps(0)?;
    let id_of = |ip: Ipv4Addr| -> Result<u32> {
        maps.endpoint_entries()?
            .into_iter()
            .find(|(a, _)| *a == IpAddr::V4(ip))
            .map(|(_, v)| v.endpoint_id)
            .with_context(|| format!("no endpoint entry for {ip}"))
    };
    let (c_ep, s_ep) = (id_of(c_ip)?, id_of(s_ip)?);
    let (c_id, s_id) = (peer_identity(PEERS + 10), peer_identity(PEERS + 11));
    maps.set_identity(IpAddr::V4(c_ip), c_id)?;
    maps.set_identity(IpAddr::V4(s_ip), s_id)?;
    for k in 0..PEERS {
        maps.set_identity(IpAddr::V4(peer(k)), peer_identity(k))?;
    }
    // The allowing rule last, after the others: the trie holds them all.
    let allow = |dir, identity| Rule {
        dir,
        identity,
        proto: PROTO_TCP,
        ports: Some((PORTS[0], PORTS[2])),
        policy: POLICY_ID,
    };
    let mut rules = [Vec::new(), Vec::new()]; // the client's, the server's
    for j in 0..args.conn_rules.saturating_sub(1) {
        rules[0].push(rule(Direction::Egress, j));
        rules[1].push(rule(Direction::Ingress, j));
    }
    rules[0].push(allow(Direction::Egress, s_id));
    rules[1].push(allow(Direction::Ingress, c_id));
    for (ep, rs) in [c_ep, s_ep].into_iter().zip(&rules) {
        for r in rs {
            maps.insert_rule(ep, r)?;
        }
    }
    let entries = maps.rule_entries(None)?.len();
    let entry = [
        isolated(c_id, POLICY_F_EGRESS, &rules[0]),
        isolated(s_id, POLICY_F_INGRESS, &rules[1]),
    ];
    let isolate = |maps: &mut Maps, on: bool| -> Result<()> {
        for (ep, v) in [c_ep, s_ep].into_iter().zip(entry) {
            if on {
                maps.set_endpoint_policy(ep, v)?;
            } else {
                maps.remove_endpoint_policy(ep)?;
            }
        }
        Ok(())
    };
    let to: Vec<SocketAddr> = PORTS
        .iter()
        .map(|p| SocketAddr::V4(SocketAddrV4::new(s_ip, *p)))
        .collect();
    let ns = &vpc.pods[client];
    // The policy must be what lets the traffic through: a stranger's port
    // is refused while isolated.
    isolate(&mut maps, true)?;
    let dropped0 = maps.count(Reason::DropPolicy, Direction::Ingress)?;
    let refused =
        ns.run(|| std::net::TcpStream::connect_timeout(&SocketAddr::new(s_ip.into(), 9), Duration::from_millis(300)))?;
    ensure!(refused.is_err(), "a port the policy does not allow was reachable");
    ensure!(
        maps.count(Reason::DropPolicy, Direction::Egress)? + maps.count(Reason::DropPolicy, Direction::Ingress)?
            > dropped0,
        "the refused connection was not a policy drop"
    );
    let mut samples: [Vec<f64>; 2] = Default::default();
    let mut failed = 0;
    for round in 0..=args.rounds {
        for (m, on) in [false, true].into_iter().enumerate() {
            isolate(&mut maps, on)?;
            // Round 0 warms both modes up and is not counted.
            let secs = if round == 0 { 0.3 } else { args.seconds };
            let (rate, f) = connection_rate(ns, &to, secs, args.workers)?;
            ensure!(rate > 0.0, "no connection made");
            if round > 0 {
                samples[m].push(rate);
                failed += f;
            }
        }
    }
    let mut programs = Vec::new();
    for on in [false, true] {
        isolate(&mut maps, on)?;
        programs.push(bench::program_time(vpc, 0, ns, &to, args.seconds, args.workers)?);
    }
    isolate(&mut maps, false)?;
    let [a, b]: [ProgramTime; 2] = programs.try_into().ok().context("two passes")?;
    Ok(ConnResult {
        rate: samples.each_mut().map(|s| pct(s, 0.5)),
        failed,
        entries,
        programs: [a, b],
    })
}

/// The cluster of part 3: `endpoints` pods of this node in namespace
/// "shop" (20 apps), `remote` client pods elsewhere in 10 namespaces.
struct Cluster {
    namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
    policies: Vec<NetworkPolicy>,
}

fn local_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, (i / 250) as u8, (i % 250 + 2) as u8)
}

fn cluster(args: &Args) -> Result<Cluster> {
    let ns = |name: &str, labels: serde_json::Value| -> Result<Namespace> {
        let mut l = labels;
        l["kubernetes.io/metadata.name"] = json!(name);
        Ok(serde_json::from_value(
            json!({"metadata": {"name": name, "labels": l}}),
        )?)
    };
    let mut namespaces = vec![
        ns("shop", json!({"team": "shop"}))?,
        ns("monitoring", json!({"purpose": "monitoring"}))?,
    ];
    for k in 0..10 {
        namespaces.push(ns(&format!("clients-{k}"), json!({"role": "clients"}))?);
    }
    let pod = |ns: &str, name: String, labels: serde_json::Value, ip: Ipv4Addr| -> Result<Pod> {
        Ok(serde_json::from_value(json!({
            "metadata": {"namespace": ns, "name": name, "labels": labels},
            "spec": {"containers": [{"name": "c", "ports": [{"name": "http", "containerPort": 8080}]}]},
            "status": {"podIP": ip.to_string(), "podIPs": [{"ip": ip.to_string()}]},
        }))?)
    };
    let mut pods = Vec::new();
    for i in 0..args.endpoints {
        pods.push(pod(
            "shop",
            format!("web-{i}"),
            json!({"app": format!("web-{}", i % 20), "tier": "backend"}),
            local_ip(i),
        )?);
    }
    for i in 0..args.remote_pods {
        let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 245, 0, 2)) + i as u32);
        pods.push(pod(
            &format!("clients-{}", i % 10),
            format!("client-{i}"),
            json!({"app": format!("client-{}", i % 20)}),
            ip,
        )?);
    }
    pods.push(pod(
        "monitoring",
        "prometheus".into(),
        json!({"app": "prometheus"}),
        Ipv4Addr::new(10, 246, 0, 2),
    )?);
    let mut policies = Vec::new();
    for a in 0..20 {
        policies.push(serde_json::from_value(json!({
            "metadata": {"namespace": "shop", "name": format!("web-{a}")},
            "spec": {
                "podSelector": {"matchLabels": {"app": format!("web-{a}")}},
                "policyTypes": ["Ingress", "Egress"],
                "ingress": [{
                    "from": [{"namespaceSelector": {"matchLabels": {"role": "clients"}},
                              "podSelector": {"matchLabels": {"app": format!("client-{a}")}}}],
                    "ports": [{"port": "http"}],
                }],
                "egress": [{
                    "to": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.244.0.0/16"]}}],
                    "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 5432}],
                }],
            },
        }))?);
    }
    policies.push(monitoring_policy(9090)?);
    Ok(Cluster {
        namespaces,
        pods,
        policies,
    })
}

/// The namespace-wide policy the change edits: every pod of "shop" lets
/// the monitoring namespace scrape `port`.
fn monitoring_policy(port: u16) -> Result<NetworkPolicy> {
    Ok(serde_json::from_value(json!({
        "metadata": {"namespace": "shop", "name": "allow-monitoring"},
        "spec": {
            "podSelector": {},
            "ingress": [{
                "from": [{"namespaceSelector": {"matchLabels": {"purpose": "monitoring"}}}],
                "ports": [{"port": port}],
            }],
        },
    }))?)
}

/// (translate µs, apply µs, written, removed) of one step.
type Step = (f64, f64, usize, usize);

struct ApplyResult {
    full: Step,
    /// Every change timed.
    changes: Vec<Step>,
    endpoints: usize,
    pods: usize,
    policies: usize,
}

fn apply_bench(args: &Args) -> Result<ApplyResult> {
    let cfg = DatapathConfig::default();
    let mut ebpf = loader::load(&cfg, None).context("loading the datapath")?;
    let mut maps = Maps::take(&mut ebpf, cfg.maglev_table_size)?;
    for i in 0..args.endpoints {
        maps.add_endpoint(IpAddr::V4(local_ip(i)), 1, [0x02, 0, 0, 0, 0, 0x05], i as u32 + 1)?;
    }
    let mut c = cluster(args)?;
    let mut translator = Translator::new();
    let mut applier = NodeApplier::from_maps(&maps)?;
    let mut step = |c: &Cluster, maps: &mut Maps| -> Result<(Step, usize)> {
        let t0 = Instant::now();
        let d = translator.translate(&c.namespaces, &c.pods, &c.policies);
        let t1 = Instant::now();
        let st = applier.apply(maps, &d, &[])?;
        let t2 = Instant::now();
        ensure!(d.warnings.is_empty(), "translation warnings: {:?}", d.warnings);
        Ok((
            (
                (t1 - t0).as_secs_f64() * 1e6,
                (t2 - t1).as_secs_f64() * 1e6,
                st.written,
                st.removed,
            ),
            st.endpoints,
        ))
    };
    let (full, endpoints) = step(&c, &mut maps)?;
    ensure!(
        endpoints == args.endpoints,
        "{endpoints} endpoints selected, expected {}",
        args.endpoints
    );
    let mut changes = Vec::new();
    for k in 0..args.changes {
        let port = if k % 2 == 0 { 9091 } else { 9090 };
        *c.policies.last_mut().context("policies")? = monitoring_policy(port)?;
        let (s, _) = step(&c, &mut maps)?;
        // Each endpoint: the old port's rule goes, the new one comes.
        ensure!(
            s.2 == args.endpoints && s.3 == args.endpoints,
            "change {k}: {} written, {} removed, expected {} each",
            s.2,
            s.3,
            args.endpoints
        );
        changes.push(s);
    }
    // What the maps hold now is what the last change asked for.
    let probe = maps.rule_entries(Some(1))?;
    let last = if args.changes % 2 == 1 { 9091u16 } else { 9090 };
    ensure!(
        probe.iter().any(|(_, m, _)| u16::from_be(m.port) == last),
        "endpoint 1 has no rule for port {last}"
    );
    eprintln!("apply: done");
    Ok(ApplyResult {
        full,
        changes,
        endpoints,
        pods: c.pods.len(),
        policies: c.policies.len(),
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    bench::require_root("bench-policy")?;
    ensure!(args.rules.contains(&0), "--rules must include 0 (the baseline)");
    ensure!(
        args.endpoints > 0 && args.endpoints <= 16_000,
        "--endpoints: between 1 and 16000 (the endpoint map's size)"
    );
    ensure!(
        args.changes > 0 && args.rounds > 0,
        "--changes and --rounds must be positive"
    );
    let packets = per_packet(&args)?;
    let conns = connection_rate_bench(&args)?;
    let apply = apply_bench(&args)?;
    report(&args, &packets, &conns, &apply);
    Ok(())
}

fn report(args: &Args, packets: &[PacketRow], conns: &ConnResult, apply: &ApplyResult) {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("sluice network-policy benchmark: Linux {}, {cpus} CPUs", kernel.trim());
    println!();
    println!(
        "1. per-packet cost at an isolated pod, ns: p50 of {} BPF_PROG_TEST_RUN runs per cell, timed by the kernel",
        args.samples
    );
    println!("   rules are per direction; 0 = the pod has no policy (the baseline)");
    println!(
        "{:>9} | {:^19} | {:^19} | {:^29} |",
        "", "new, one rule", "new, random rules", "established"
    );
    print!("{:>9}", "rules");
    for (i, c) in CELLS.iter().enumerate() {
        print!("{}{c:>9}", if i % 2 == 0 && i < 5 { " | " } else { " " });
    }
    println!(" | {:>9}", "in denied");
    let row = |label: String, v: &[f64; 7], denied: Option<f64>, prec: usize| {
        print!("{label:>9}");
        for (i, x) in v.iter().enumerate() {
            print!("{}{x:>9.prec$}", if i % 2 == 0 && i < 5 { " | " } else { " " });
        }
        match denied {
            Some(d) => println!(" | {d:>9.prec$}"),
            None => println!(" | {:>9}", "-"),
        }
    };
    for r in packets {
        row(r.rules.to_string(), &r.cells, r.denied, 0);
    }
    let base = packets.iter().find(|r| r.rules == 0);
    let mid = packets.iter().find(|r| r.rules > 0);
    let top = packets.iter().max_by_key(|r| r.rules);
    if let (Some(base), Some(top)) = (base, top)
        && top.rules > 0
    {
        let ratio: [f64; 7] = std::array::from_fn(|i| top.cells[i] / base.cells[i]);
        row(format!("{}/0", top.rules), &ratio, None, 2);
        if let Some(mid) = mid.filter(|m| m.rules < top.rules) {
            let growth: [f64; 7] = std::array::from_fn(|i| top.cells[i] / mid.cells[i]);
            let denied = top.denied.zip(mid.denied).map(|(a, b)| a / b);
            row(format!("{}/{}", top.rules, mid.rules), &growth, denied, 2);
        }
        let worst = |r: &[f64]| r.iter().cloned().fold(0.0, f64::max);
        let verdict = |w: f64| if w <= 1.10 { "met" } else { "MISSED" };
        let (one, spread, rest) = (worst(&ratio[..2]), worst(&ratio[2..4]), worst(&ratio[4..]));
        println!(
            "   target {}/0 <= 1.10: new flows to one rule {} (worst {one:.2}); to random rules {} (worst {spread:.2}); established {} (worst {rest:.2})",
            top.rules,
            verdict(one),
            verdict(spread),
            verdict(rest)
        );
    }
    println!();
    println!(
        "2. TCP connection rate between two pods, connections/s (median of {} x {} s, {} client threads, modes alternating)",
        args.rounds, args.seconds, args.workers
    );
    println!(
        "   policy: the server isolated for ingress, the client for egress, each allowed among {} rules ({} rule entries on the node)",
        args.conn_rules, conns.entries
    );
    println!("{:>12} {:>12} {:>8}", "no policy", "policy", "ratio");
    let ratio = conns.rate[1] / conns.rate[0];
    println!("{:>12.0} {:>12.0} {:>8.3}", conns.rate[0], conns.rate[1], ratio);
    println!(
        "   target >= 0.95: {}; failed connections: {}",
        if ratio >= 0.95 { "met" } else { "MISSED" },
        conns.failed
    );
    for (label, t) in ["no policy", "policy"].iter().zip(&conns.programs) {
        println!(
            "   {label:<10} egress {:.1} runs x {:.0} ns, ingress {:.1} runs x {:.0} ns = {:.2} µs of program time per connection ({} connections, statistics on)",
            t.egress.0,
            t.egress.1,
            t.ingress.0,
            t.ingress.1,
            t.micros(),
            t.connections
        );
    }
    println!();
    println!(
        "3. applying a policy change to {} endpoints of a node ({} pods in the cluster, {} policies), µs",
        apply.endpoints, apply.pods, apply.policies
    );
    println!(
        "{:>28} | {:>10} {:>10} {:>10} | {:>8} {:>8}",
        "", "translate", "map writes", "total", "written", "removed"
    );
    let (t, a, w, r) = apply.full;
    println!(
        "{:>28} | {t:>10.0} {a:>10.0} {:>10.0} | {w:>8} {r:>8}",
        "full sync (baseline)",
        t + a
    );
    let col = |f: fn(&Step) -> f64, p: f64| -> f64 {
        let mut v: Vec<f64> = apply.changes.iter().map(f).collect();
        pct(&mut v, p)
    };
    for (label, p) in [("one change, p50", 0.5), ("one change, p99", 0.99)] {
        let (t, a, total) = (col(|s| s.0, p), col(|s| s.1, p), col(|s| s.0 + s.1, p));
        let (w, r) = (apply.changes[0].2, apply.changes[0].3);
        println!("{label:>28} | {t:>10.0} {a:>10.0} {total:>10.0} | {w:>8} {r:>8}");
    }
    let change = col(|s| s.0 + s.1, 0.5);
    println!(
        "   a change costs {:.2} of a full sync ({} changes timed); writes are per changed rule, never a rewrite",
        change / (apply.full.0 + apply.full.1),
        apply.changes.len()
    );
}
