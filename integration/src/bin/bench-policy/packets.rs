//! Per-packet cost of policy: an isolated pod with 0 to 10,000 allow rules
//! per direction, the real programs run through BPF_PROG_TEST_RUN.

use super::*;
use aya::Ebpf;
use aya::maps::MapData;

/// Every rule count loaded side by side, then their cells run in rounds,
/// each count in turn within a round: a machine whose speed drifts moves
/// every count alike, so the ratios between counts hold.
pub(crate) fn per_packet(args: &Args) -> Result<Vec<PacketRow>> {
    ensure!(
        args.samples > 0 && args.samples <= 20_000,
        "--samples: between 1 and 20000"
    );
    ensure!(
        args.packet_rounds > 0 && args.packet_rounds <= POOL,
        "--packet-rounds: between 1 and {POOL}"
    );
    let per_round = args.samples.div_ceil(args.packet_rounds);
    // The flows' source ports are laid out for 20,000 per cell.
    ensure!(
        per_round * args.packet_rounds <= 20_000,
        "--samples {} over {} rounds: more than 20000 runs per cell",
        args.samples,
        args.packet_rounds
    );
    let mut rows = Vec::new();
    for &n in &args.rules {
        rows.push(Row::load(args, n)?);
    }
    for r in 0..args.packet_rounds {
        for row in &mut rows {
            row.round(r, per_round, args.packet_rounds)?;
        }
        eprintln!("per-packet: round {} of {} done", r + 1, args.packet_rounds);
    }
    rows.into_iter().map(Row::finish).collect()
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
        netns_cookie: 0,
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

/// Flows opened each way whose next packets the established cells send.
const POOL: usize = 4096;

/// One rule count on a datapath of its own (no count inherits another's
/// conntrack history); its cells gather samples round after round.
struct Row {
    n: usize,
    ebpf: Ebpf,
    maps: Maps,
    events: RingBuf<MapData>,
    pod: Ipv4Addr,
    /// Flows are drawn among this many rules (and peers).
    draw: usize,
    rng: Rng,
    /// As in `PacketRow::cells`.
    cells: [Vec<f64>; 7],
    denied: Vec<f64>,
    dropped0: u64,
    /// The established flows opened so far: (peer, its port, the pod's).
    pool: Vec<(Ipv4Addr, u16, u16)>,
}

impl Row {
    fn load(args: &Args, n: usize) -> Result<Row> {
        // One pod opens every flow of a row (80,000 new ones at the
        // default samples), more than its default conntrack share: the
        // share would drop them. What is measured here is policy.
        let cfg = DatapathConfig {
            ct_pod_limit: Some(0),
            ..Default::default()
        };
        let (mut ebpf, mut maps) = loader::load_unpinned(&cfg).context("loading the datapath")?;
        let events: RingBuf<_> = Source::Object(&mut ebpf).map(&sluice_tc_datapath::maps::EVENTS)?;
        let pod = isolated_pod(&mut maps, n)?;
        let dropped0 = maps.observe().count(Reason::DropPolicy, Direction::Ingress)?;
        // Without rules the flows are drawn as for the biggest set: the
        // packets differ only in addresses and ports, which cost alike.
        let draw = if n > 0 {
            n
        } else {
            args.rules.iter().copied().max().unwrap_or(1).max(1)
        };
        Ok(Row {
            n,
            ebpf,
            maps,
            events,
            pod,
            draw,
            rng: Rng(0x5eed_0f90_11c7),
            cells: Default::default(),
            denied: Vec::new(),
            dropped0,
            pool: Vec::with_capacity(POOL),
        })
    }

    /// Round `r` of `rounds`, `samples` runs per cell. Every flow has a
    /// source port of its own over the rounds: a new flow stays new.
    fn round(&mut self, r: usize, samples: usize, rounds: usize) -> Result<()> {
        let n = self.n;
        let egress: &SchedClassifier = self.ebpf.program(EGRESS).context("egress")?.try_into()?;
        let ingress: &SchedClassifier = self.ebpf.program(INGRESS).context("ingress")?.try_into()?;
        let timed = |p: &SchedClassifier, f: &[u8], want: u32, what: &str| timed(n, p, f, want, what);
        let (pod, draw, rng, cells) = (self.pod, self.draw, &mut self.rng, &mut self.cells);
        // New flows each way, a fresh port on the pod's side every time:
        // to the middle rule (what the lookups cost when their entries are
        // hot), then to random rules (and their peers' ipcache entries:
        // the cache misses a big set adds).
        let one = draw / 2;
        for (c, base) in [(0, 30_000u16), (2, 10_000)] {
            for s in r * samples..(r + 1) * samples {
                let sport = base + s as u16;
                let (k, port) = rule_flow(if c == 0 { one } else { rng.below(draw) });
                let f = frame(peer(k), pod, sport, port, SYN);
                cells[c].push(timed(ingress, &f, TC_ACT_OK, "in new")?);
                let (k, port) = rule_flow(if c == 0 { one } else { rng.below(draw) });
                let f = frame(pod, peer(k), sport, port, SYN);
                cells[c + 1].push(timed(egress, &f, TC_ACT_OK, "out new")?);
            }
        }
        // Established flows: this round's share of the pool opened each
        // way (the reply that establishes one is a sample), then next
        // packets of the pool so far.
        let share = POOL / rounds;
        for f in r * share..(r + 1) * share {
            let (k, port) = rule_flow(rng.below(draw));
            let sport = 60_000 + f as u16;
            timed(ingress, &frame(peer(k), pod, sport, port, SYN), TC_ACT_OK, "pool in")?;
            let ns = timed(
                egress,
                &frame(pod, peer(k), port, sport, SYN_ACK),
                TC_ACT_OK,
                "out reply",
            )?;
            cells[4].push(ns);
            self.pool.push((peer(k), sport, port));
        }
        for s in 0..samples {
            let (p, sport, port) = self.pool[s % self.pool.len()];
            cells[5].push(timed(ingress, &frame(p, pod, sport, port, ACK), TC_ACT_OK, "in estab")?);
            cells[6].push(timed(egress, &frame(pod, p, port, sport, ACK), TC_ACT_OK, "out estab")?);
        }
        // Denied SYNs: the three lookups all miss, the drop is counted and
        // reported; the ring buffer is drained outside the timing, as the
        // agent would keep it.
        if n > 0 {
            for s in r * samples..(r + 1) * samples {
                let (_, port) = rule_flow(rng.below(draw));
                let f = frame(STRANGER, pod, 10_000 + s as u16, port, SYN);
                self.denied.push(timed(ingress, &f, TC_ACT_SHOT, "in denied")?);
                while self.events.next().is_some() {}
            }
        }
        Ok(())
    }

    /// The row's p50s, once the drops counted are checked.
    fn finish(mut self) -> Result<PacketRow> {
        let n = self.n;
        let dropped = self.maps.observe().count(Reason::DropPolicy, Direction::Ingress)? - self.dropped0;
        ensure!(
            dropped == self.denied.len() as u64,
            "{n} rules: {dropped} policy drops counted, expected {}",
            self.denied.len()
        );
        ensure!(
            self.maps.observe().count(Reason::DropPolicy, Direction::Egress)? == 0,
            "{n} rules: an allowed egress packet was dropped"
        );
        Ok(PacketRow {
            rules: n,
            cells: self.cells.each_mut().map(|c| pct(c, 0.5)),
            denied: (n > 0).then(|| pct(&mut self.denied, 0.5)),
        })
    }
}
