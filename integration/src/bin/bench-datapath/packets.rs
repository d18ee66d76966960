//! Per-packet cost: the real programs run through BPF_PROG_TEST_RUN with
//! 1 to 100,000 Services loaded, and the maps' memory.

use super::*;

/// Established flows a round sets up per cell, to send their next packets
/// in turn. Every flow of a round has a source port of its own, so that
/// no two share a conntrack entry.
pub(crate) const POOL: usize = 4096;

impl Bench<'_> {
    /// New flows (a fresh client port each), then established ones (a pool
    /// set up with SYN out and SYN-ACK back, then their next packets in
    /// turn), each to the Service `pick` names, `self.samples` of each
    /// pushed onto `cells`. Checks every verdict, and that the counters saw
    /// every translation.
    fn service_cells(
        &mut self,
        maps: &Maps,
        mut pick: impl FnMut() -> usize,
        base: u16,
        cells: &mut [Vec<f64>],
    ) -> Result<()> {
        let nc = self.clients.len();
        let translated0 = maps.observe().count(Reason::ServiceTranslated, Direction::Egress)?;
        let replies0 = maps.observe().count(Reason::ReplyTranslated, Direction::Ingress)?;
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
        let translated = maps.observe().count(Reason::ServiceTranslated, Direction::Egress)? - translated0;
        let replies = maps.observe().count(Reason::ReplyTranslated, Direction::Ingress)? - replies0;
        let want = (2 * self.samples + POOL, self.samples + POOL);
        ensure!(
            (translated, replies) == (want.0 as u64, want.1 as u64),
            "translated {translated} packets and {replies} replies, expected {want:?}"
        );
        Ok(())
    }

    /// Traffic that is no Service's: the floor every packet pays.
    fn plain_cells(&mut self, cells: &mut [Vec<f64>]) -> Result<()> {
        let peer = Ipv4Addr::new(10, 244, 9, 9);
        for k in 0..self.samples {
            let c = self.clients[k % self.clients.len()];
            let (v, ns) = run(self.egress, &frame(c, peer, 50000, 5000, ACK), None)?;
            ensure!(v == TC_ACT_OK, "egress plain: verdict {v}");
            cells[0].push(ns);
            let (v, ns) = run(self.ingress, &frame(peer, c, 5000, 50000, ACK), None)?;
            ensure!(v == TC_ACT_OK, "ingress plain: verdict {v}");
            cells[1].push(ns);
        }
        Ok(())
    }
}

const CLIENTS: usize = 16;
/// The source ports of the flows to one Service (`ONE_PORTS`) and to
/// random ones (`SPREAD_PORTS`): each round takes a range of its own.
const ONE_PORTS: u16 = 1024;
const SPREAD_PORTS: u16 = 30000;
const PORTS_PER_KIND: usize = 28_000;

/// One Service count on a datapath of its own, so that no count inherits
/// another's conntrack history (an LRU map's free list, once churned,
/// scatters new entries over its whole preallocated area). Its cells
/// gather samples round after round.
struct Set {
    n: usize,
    ebpf: aya::Ebpf,
    maps: Maps,
    clients: Vec<Ipv4Addr>,
    rng: Rng,
    /// one (3), spread (3), plain (2), as in `PacketRow`.
    cells: [Vec<f64>; 8],
    memory: Memory,
}

impl Set {
    fn load(n: usize, tables: Option<TableSizes>) -> Result<Set> {
        let cfg = DatapathConfig {
            tables: tables.unwrap_or_default(),
            ..Default::default()
        };
        let (ebpf, mut maps) = loader::load_unpinned(&cfg).context("loading the datapath")?;
        let clients: Vec<Ipv4Addr> = (0..CLIENTS as u8).map(|i| Ipv4Addr::new(10, 244, 1, 10 + i)).collect();
        for (i, c) in clients.iter().enumerate() {
            // The test-run device is loopback: ifindex 1.
            maps.endpoints_mut().add(&Endpoint {
                addr: IpAddr::V4(*c),
                ifindex: 1,
                endpoint_id: i as u32 + 1,
                mac: [0x02, 0, 0, 0, 0, 0x05],
                parent_ifindex: 0,
                netns_cookie: 0,
            })?;
        }
        let mem0 = maps.lb().memory()?;
        for i in 0..n {
            maps.lb_mut().upsert_service(&spec(i, &generated(i)))?;
        }
        let mem1 = maps.lb().memory()?;
        let ct_total = maps.ct().memory()?;
        let ct_entries = u64::from(maps.ct().capacity());
        let memory = Memory {
            per_service: ((mem1.services - mem0.services) + (mem1.revnat - mem0.revnat)) as f64 / n as f64,
            per_backend: (mem1.backends - mem0.backends) as f64 / (3 * n) as f64,
            ct_entry: ct_total as f64 / ct_entries as f64,
            ct_entries,
            fixed: mem0.services + mem0.revnat + mem0.backends,
            filters: mem1.vip_filter,
        };
        Ok(Set {
            n,
            ebpf,
            maps,
            clients,
            rng: Rng(0x5eed_5eed_5eed_5eed),
            cells: Default::default(),
            memory,
        })
    }

    /// One round of every cell, `samples` runs each; `span` ports a round.
    fn round(&mut self, round: usize, samples: usize, span: usize) -> Result<()> {
        let egress: &SchedClassifier = self.ebpf.program(EGRESS).context("egress")?.try_into()?;
        let ingress: &SchedClassifier = self.ebpf.program(INGRESS).context("ingress")?.try_into()?;
        let mut bench = Bench {
            egress,
            ingress,
            clients: self.clients.clone(),
            samples,
            buf: vec![0u8; 256],
        };
        let (n, rng) = (self.n, &mut self.rng);
        let (one, rest) = self.cells.split_at_mut(3);
        let (spread, plain) = rest.split_at_mut(3);
        let off = (round * span) as u16;
        bench.service_cells(&self.maps, || n / 2, ONE_PORTS + off, one)?;
        bench.service_cells(&self.maps, || rng.below(n), SPREAD_PORTS + off, spread)?;
        bench.plain_cells(plain)
    }

    fn row(&mut self) -> PacketRow {
        let mut p50 = self.cells.each_mut().map(|c| pct(c, 0.5)).into_iter();
        let mut next = || p50.next().expect("eight cells");
        PacketRow {
            services: self.n,
            one: [next(), next(), next()],
            spread: [next(), next(), next()],
            plain: [next(), next()],
        }
    }
}

/// Every Service count loaded side by side, then their cells run in
/// rounds, each count in turn within a round: a machine whose speed drifts
/// (a neighbour on the host) moves every count alike, so the ratios
/// between counts hold. The memory is the largest count's.
pub(crate) fn per_packet(args: &Args) -> Result<(Vec<PacketRow>, Memory)> {
    ensure!(args.packet_rounds > 0, "--packet-rounds: at least 1");
    let samples = args.samples.div_ceil(args.packet_rounds);
    // A round's service cells: new flows, then the established pool.
    let span = samples / CLIENTS + 1 + POOL / CLIENTS + 1;
    ensure!(
        span * args.packet_rounds <= PORTS_PER_KIND,
        "--samples {} over {} rounds: more flows than source ports",
        args.samples,
        args.packet_rounds
    );
    let mut sets = Vec::new();
    for &n in &args.packet_services {
        ensure!(n > 0, "--packet-services: counts must be positive");
        sets.push(Set::load(n, args.tables)?);
        eprintln!("per-packet: {n} services loaded");
    }
    for r in 0..args.packet_rounds {
        for set in &mut sets {
            set.round(r, samples, span)?;
        }
        eprintln!("per-packet: round {} of {} done", r + 1, args.packet_rounds);
    }
    let rows = sets.iter_mut().map(Set::row).collect();
    let memory = sets.pop().context("--packet-services: no count given")?.memory;
    Ok((rows, memory))
}
