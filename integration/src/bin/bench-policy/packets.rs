//! Per-packet cost of policy: an isolated pod with 0 to 10,000 allow rules
//! per direction, the real programs run through BPF_PROG_TEST_RUN.

use super::*;

pub(crate) fn per_packet(args: &Args) -> Result<Vec<PacketRow>> {
    ensure!(
        args.samples > 0 && args.samples <= 20_000,
        "--samples: between 1 and 20000"
    );
    args.rules.iter().map(|&n| per_packet_with(args, n)).collect()
}

/// The measured pod on the test-run device (loopback, ifindex 1), every
/// peer's identity, and `n` rules each way isolating it (none: no policy).
fn isolated_pod(maps: &mut Maps, n: usize) -> Result<Ipv4Addr> {
    let pod = Ipv4Addr::new(10, 244, 1, 10);
    let ep = 1;
    maps.endpoints_mut().add(&Endpoint {
        addr: IpAddr::V4(pod),
        ifindex: 1,
        endpoint_id: ep,
        mac: [0x02, 0, 0, 0, 0, 0x05],
        parent_ifindex: 0,
    })?;
    // The same ipcache in every row: only the rules differ.
    for k in 0..PEERS {
        maps.policy_mut().set_identity(IpAddr::V4(peer(k)), peer_identity(k))?;
    }
    let own = peer_identity(PEERS);
    maps.policy_mut().set_identity(IpAddr::V4(pod), own)?;
    maps.policy_mut()
        .set_identity(IpAddr::V4(STRANGER), peer_identity(PEERS + 1))?;
    let rules: Vec<Rule> = (0..n)
        .flat_map(|j| [rule(Direction::Ingress, j), rule(Direction::Egress, j)])
        .collect();
    for r in &rules {
        maps.policy_mut().insert_rule(ep, r)?;
    }
    if n > 0 {
        maps.policy_mut()
            .set_endpoint_policy(ep, isolated(own, POLICY_F_INGRESS | POLICY_F_EGRESS, &rules))?;
    }
    Ok(pod)
}

/// One program run, its verdict checked; the kernel's time of it, in ns.
fn timed(n: usize, p: &SchedClassifier, f: &[u8], want: u32, what: &str) -> Result<f64> {
    let (v, ns) = run(p, f, None)?;
    ensure!(v == want, "{n} rules, {what}: verdict {v}, expected {want}");
    Ok(ns)
}

/// Established flows: a pool opened each way, then their next packets;
/// the samples of the reply that establishes a flow, and of an
/// established packet in and out.
fn established(
    n: usize,
    egress: &SchedClassifier,
    ingress: &SchedClassifier,
    pod: Ipv4Addr,
    rng: &mut Rng,
    draw: usize,
    samples: usize,
) -> Result<[Vec<f64>; 3]> {
    let timed = |p: &SchedClassifier, f: &[u8], want: u32, what: &str| timed(n, p, f, want, what);
    let (mut reply, mut est_in, mut est_out) = (Vec::new(), Vec::new(), Vec::new());
    const POOL: usize = 4096;
    let mut pool = Vec::with_capacity(POOL);
    for f in 0..POOL {
        let (k, port) = rule_flow(rng.below(draw));
        let sport = 60_000 + f as u16;
        timed(ingress, &frame(peer(k), pod, sport, port, SYN), TC_ACT_OK, "pool in")?;
        reply.push(timed(
            egress,
            &frame(pod, peer(k), port, sport, SYN_ACK),
            TC_ACT_OK,
            "out reply",
        )?);
        pool.push((peer(k), sport, port));
    }
    for s in 0..samples {
        let (p, sport, port) = pool[s % POOL];
        est_in.push(timed(ingress, &frame(p, pod, sport, port, ACK), TC_ACT_OK, "in estab")?);
        est_out.push(timed(egress, &frame(pod, p, port, sport, ACK), TC_ACT_OK, "out estab")?);
    }
    Ok([reply, est_in, est_out])
}

/// One row, on a freshly loaded datapath (no cell inherits another's
/// conntrack history).
pub(crate) fn per_packet_with(args: &Args, n: usize) -> Result<PacketRow> {
    let cfg = DatapathConfig::default();
    let (mut ebpf, mut maps) = loader::load_unpinned(&cfg).context("loading the datapath")?;
    let mut events: RingBuf<_> = Source::Object(&mut ebpf).map(&sluice_tc_datapath::maps::EVENTS)?;
    let egress: &SchedClassifier = ebpf.program(EGRESS).context("egress")?.try_into()?;
    let ingress: &SchedClassifier = ebpf.program(INGRESS).context("ingress")?.try_into()?;
    let pod = isolated_pod(&mut maps, n)?;
    let dropped0 = maps.observe().count(Reason::DropPolicy, Direction::Ingress)?;
    // Without rules the flows are drawn as for the biggest set: the
    // packets differ only in addresses and ports, which cost alike.
    let draw = if n > 0 {
        n
    } else {
        args.rules.iter().copied().max().unwrap_or(1).max(1)
    };
    let mut rng = Rng(0x5eed_0f90_11c7);
    let mut cells: [Vec<f64>; 7] = Default::default();
    let timed = |p: &SchedClassifier, f: &[u8], want: u32, what: &str| timed(n, p, f, want, what);
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
    let [reply, est_in, est_out] = established(n, egress, ingress, pod, &mut rng, draw, args.samples)?;
    cells[4] = reply;
    cells[5] = est_in;
    cells[6] = est_out;
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
        let dropped = maps.observe().count(Reason::DropPolicy, Direction::Ingress)? - dropped0;
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
        maps.observe().count(Reason::DropPolicy, Direction::Egress)? == 0,
        "{n} rules: an allowed egress packet was dropped"
    );
    eprintln!("per-packet: {n} rules done");
    Ok(PacketRow {
        rules: n,
        cells: cells.each_mut().map(|c| pct(c, 0.5)),
        denied,
    })
}
