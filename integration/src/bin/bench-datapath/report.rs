//! The one table every figure goes into, with the ratios the README quotes.

use super::*;

pub(crate) fn report(args: &Args, packets: &[PacketRow], memory: &Memory, conns: &[ConnRow], inserts: &Inserts) {
    bench::print_machine("datapath");
    tables_line(args);
    packet_table(args, packets);
    println!();
    connection_table(args, conns, bench::cpus());
    println!();
    insert_table(conns, inserts);
    println!();
    memory_table(memory);
}

pub(crate) fn report_packets(args: &Args, packets: &[PacketRow], memory: &Memory) {
    bench::print_machine("datapath");
    tables_line(args);
    packet_table(args, packets);
    println!();
    memory_table(memory);
}

fn tables_line(args: &Args) {
    println!(
        "per-connection tables (datapath.tables): {}",
        args.tables
            .as_ref()
            .map_or("the defaults".into(), |t| serde_json::to_string(t).expect("JSON"))
    );
}

fn packet_table(args: &Args, packets: &[PacketRow]) {
    println!(
        "1. per-packet cost, ns: p50 of {} BPF_PROG_TEST_RUN runs per cell in {} rounds (every count in turn), timed by the kernel",
        args.samples, args.packet_rounds
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
}

fn connection_table(args: &Args, conns: &[ConnRow], cpus: usize) {
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
    cpu_table(args, conns);
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
}

/// The CPU each mode costs a connection with everything on one CPU, and
/// what that adds to the direct mode's: the whole datapath, not only its
/// programs' run time.
fn cpu_table(args: &Args, conns: &[ConnRow]) {
    println!(
        "   the CPU a connection costs, everything (client, server, softirqs) pinned to CPU {}, {} rounds x {} s of every mode in turn:",
        conns.first().map_or(0, |r| r.cpu.cpu),
        args.cpu_rounds,
        args.cpu_seconds
    );
    println!(
        "   µs of that CPU's busy time per connection (median), and what the mode adds to direct (median of the rounds' differences, [lowest, highest])"
    );
    let (direct, pod_ip, vip) = (0, 1, 2);
    for r in conns {
        let mut line = format!("   {:>6} services: direct {:.1}", r.services, r.cpu.median[direct]);
        for (m, mode) in Mode::ALL.iter().enumerate().skip(1) {
            let (d, lo, hi) = r.cpu.added[m];
            if d.is_nan() {
                line += &format!("; {} not measured", mode.label());
            } else {
                line += &format!(
                    "; {} {:.1} ({d:+.1} [{lo:+.1}, {hi:+.1}])",
                    mode.label(),
                    r.cpu.median[m]
                );
            }
        }
        println!("{line}");
        let (v, p) = (r.cpu.added[vip].0, r.cpu.added[pod_ip].0);
        println!(
            "   {:>6} services: sluice adds {v:.1} µs per VIP connection (target <= 5: {}), {p:.1} µs per pod-IP connection",
            r.services,
            if v <= 5.0 { "met" } else { "MISSED" }
        );
    }
}

fn insert_table(conns: &[ConnRow], inserts: &Inserts) {
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
}

fn memory_table(memory: &Memory) {
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
