//! Per-packet cost: the real programs run through BPF_PROG_TEST_RUN with
//! 1 to 100,000 Services loaded, and the maps' memory.

use super::*;

/// The flows of one set of runs use source ports from `base` up, so that
/// no two sets share a conntrack entry.
pub(crate) const POOL: usize = 4096;

impl Bench<'_> {
    /// New flows (a fresh client port each), then established ones (a pool
    /// set up with SYN out and SYN-ACK back, then their next packets in
    /// turn), each to the Service `pick` names. Checks every verdict, and
    /// that the counters saw every translation.
    fn service_cells(&mut self, maps: &Maps, mut pick: impl FnMut() -> usize, base: u16) -> Result<[f64; 3]> {
        let nc = self.clients.len();
        let translated0 = maps.observe().count(Reason::ServiceTranslated, Direction::Egress)?;
        let replies0 = maps.observe().count(Reason::ReplyTranslated, Direction::Ingress)?;
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
        let translated = maps.observe().count(Reason::ServiceTranslated, Direction::Egress)? - translated0;
        let replies = maps.observe().count(Reason::ReplyTranslated, Direction::Ingress)? - replies0;
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
pub(crate) fn per_packet(args: &Args) -> Result<(Vec<PacketRow>, Memory)> {
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

pub(crate) fn per_packet_with(args: &Args, n: usize) -> Result<(PacketRow, Memory)> {
    let cfg = DatapathConfig::default();
    let (ebpf, mut maps) = loader::load_unpinned(&cfg).context("loading the datapath")?;
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
        maps.endpoints_mut().add(&Endpoint {
            addr: IpAddr::V4(*c),
            ifindex: 1,
            endpoint_id: i as u32 + 1,
            mac: [0x02, 0, 0, 0, 0, 0x05],
            parent_ifindex: 0,
        })?;
    }
    let mem0 = maps.lb().memory()?;
    let mut rng = Rng(0x5eed_5eed_5eed_5eed);
    for i in 0..n {
        maps.lb_mut().upsert_service(&spec(i, &generated(i)))?;
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
    Ok((row, memory))
}
