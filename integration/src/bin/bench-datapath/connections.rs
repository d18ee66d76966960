//! Connection rate in the simulated VPC: a pod calling a VIP through
//! sluice, the backend directly, and kube-proxy's rulesets, round-robin.

use super::*;

/// The node's program time per connection of one sluice mode (an extra
/// pass, with the kernel's run-time statistics on).
pub(crate) fn program_time(args: &Args, vpc: &Vpc, p: &Pair) -> Result<(Mode, ProgramTime)> {
    let t = bench::program_time(vpc, 0, &vpc.pods[p.client], &targets(p), args.seconds, args.workers)
        .with_context(|| p.mode.label())?;
    Ok((p.mode, t))
}

impl Mode {
    pub(crate) const ALL: [Mode; 6] = [
        Mode::Direct,
        Mode::SluicePodIp,
        Mode::Sluice,
        Mode::IptablesNft,
        Mode::IptablesLegacy,
        Mode::Nftables,
    ];
    pub(crate) fn label(self) -> &'static str {
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
    pub(crate) fn restore(self) -> &'static str {
        match self {
            Mode::IptablesNft => "iptables-nft-restore",
            Mode::IptablesLegacy => "iptables-legacy-restore",
            other => unreachable!("{} loads no iptables ruleset", other.label()),
        }
    }
}

/// The Services for a run with `n` of them: the generated ones, with the
/// measured Service (VIP 10.95.0.1 over the server's three ports) in the
/// middle, where a linear rule scan meets it on average.
pub(crate) fn service_list(n: usize, server: Ipv4Addr) -> (Vec<Service>, usize) {
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

pub(crate) fn connection_benchmark(args: &Args) -> Result<(Vec<ConnRow>, Inserts)> {
    let mut vpc = Vpc::new("bd", 1)?;
    let mut with_dp = bench::for_connection_rates(vpc.main_conf(0, "1.0.0"));
    if let Some(t) = &args.tables {
        with_dp["datapath"]["tables"] = serde_json::to_value(t)?;
    }
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

/// Load `n` Services into every mode: sluice's maps (the generated ones
/// written once, kept between sizes), kube-proxy's rulesets; the seconds
/// each took, and the modes that went over the load budget.
fn load(
    args: &Args,
    vpc: &Vpc,
    pairs: &[Pair],
    maps: &mut Maps,
    in_maps: &mut usize,
    n: usize,
) -> Result<(Vec<f64>, Vec<bool>)> {
    let mut load_secs = vec![0f64; pairs.len()];
    let mut unmeasured = vec![false; pairs.len()];
    for (m, p) in pairs.iter().enumerate() {
        let ns = &vpc.pods[p.client];
        let (list, _) = service_list(n, p.server_ip);
        let started = Instant::now();
        match p.mode {
            Mode::Direct | Mode::SluicePodIp => {}
            Mode::Sluice => {
                while *in_maps < n.saturating_sub(1) {
                    maps.lb_mut().upsert_service(&spec(*in_maps, &generated(*in_maps)))?;
                    *in_maps += 1;
                }
                let measured = &list[list.iter().position(|s| s.vip == MEASURED_VIP).unwrap()];
                maps.lb_mut().upsert_service(&spec(999_999, measured))?;
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
    Ok((load_secs, unmeasured))
}

/// The modes' connection rates (median of the rounds, modes alternating)
/// and the connections that failed.
fn rates(args: &Args, vpc: &Vpc, pairs: &[Pair], unmeasured: &[bool], n: usize) -> Result<(Vec<f64>, u64)> {
    // Every mode reaches all three backends before it is timed.
    for p in pairs.iter().zip(unmeasured).filter(|(_, u)| !**u).map(|(p, _)| p) {
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
    Ok((samples.iter_mut().map(|s| pct(s, 0.5)).collect(), failed))
}

/// The CPU a connection costs with everything on one CPU (the client's
/// threads, the server's, and the softirqs between them), each mode in
/// turn in every round. What a mode adds to the direct mode is taken
/// round by round, so that the machine's drift, which moves every mode of
/// a round alike, cancels. It is all of what the datapath (or
/// kube-proxy's rules) adds: the programs' run time and what they make
/// the kernel do around them.
fn cpu_costs(args: &Args, vpc: &Vpc, pairs: &[Pair], unmeasured: &[bool]) -> Result<CpuCost> {
    let cpu = bench::last_cpu()?;
    let mut samples: Vec<Vec<f64>> = vec![Vec::new(); pairs.len()];
    for _ in 0..args.cpu_rounds {
        for (m, p) in pairs.iter().enumerate() {
            if unmeasured[m] {
                samples[m].push(f64::NAN);
                continue;
            }
            let from = monotonic_secs();
            let (us, busy) =
                bench::cpu_per_connection(&vpc.pods[p.client], &targets(p), args.cpu_seconds, args.workers, cpu)
                    .with_context(|| format!("{} on CPU {cpu}", p.mode.label()))?;
            ensure!(
                busy > 0.8,
                "{} on CPU {cpu}: the CPU was busy {:.0}% of the pass, not the whole of it",
                p.mode.label(),
                busy * 100.0
            );
            // The pass's span on the clock `perf record -k CLOCK_MONOTONIC`
            // stamps samples with: scripts/profile-datapath (or `perf
            // report --time FROM,TO`) profiles one mode alone.
            eprintln!(
                "{}",
                bench::cpu_pass_line(p.mode.label(), cpu, us, from, monotonic_secs())
            );
            samples[m].push(us);
        }
    }
    let added = samples
        .iter()
        .map(|s| {
            let mut d: Vec<f64> = s.iter().zip(&samples[0]).map(|(x, base)| x - base).collect();
            if d.iter().any(|v| v.is_nan()) {
                return (f64::NAN, f64::NAN, f64::NAN);
            }
            (pct(&mut d, 0.5), pct(&mut d, 0.0), pct(&mut d, 1.0))
        })
        .collect();
    let median = samples.iter_mut().map(|s| pct(s, 0.5)).collect();
    Ok(CpuCost { cpu, median, added })
}

fn monotonic_secs() -> f64 {
    let t = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).expect("CLOCK_MONOTONIC");
    t.tv_sec() as f64 + t.tv_nsec() as f64 * 1e-9
}

pub(crate) fn measure(args: &Args, vpc: &Vpc, pairs: &[Pair]) -> Result<(Vec<ConnRow>, Inserts)> {
    let mut maps = vpc.maps(0)?;
    let mut in_maps = 0usize; // generated services in the node's maps
    let mut rows = Vec::new();
    let mut inserts = Inserts { rows: Vec::new() };
    let sizes = args.conn_services.clone();
    for (si, &n) in sizes.iter().enumerate() {
        let (load_secs, unmeasured) = load(args, vpc, pairs, &mut maps, &mut in_maps, n)?;
        let (rate, failed) = rates(args, vpc, pairs, &unmeasured, n)?;
        let cpu = cpu_costs(args, vpc, pairs, &unmeasured)?;
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
            cpu,
        });
        if si + 1 == sizes.len() {
            inserts = insert_benchmark(args, vpc, pairs, &unmeasured, &mut maps, n)?;
        }
    }
    Ok((rows, inserts))
}

/// Where a mode's client connects: the VIP, or (no Service) the server's
/// three ports in turn, so the server side works alike in every mode.
pub(crate) fn targets(p: &Pair) -> Vec<SocketAddr> {
    match p.mode {
        Mode::Direct | Mode::SluicePodIp => PORTS
            .iter()
            .map(|port| SocketAddr::V4(SocketAddrV4::new(p.server_ip, *port)))
            .collect(),
        _ => vec![SocketAddr::V4(SocketAddrV4::new(MEASURED_VIP, 80))],
    }
}
