//! The one table every figure goes into.

use super::*;

pub(crate) fn report(args: &Args, packets: &[PacketRow], conns: &ConnResult, apply: &ApplyResult) {
    bench::print_machine("network-policy");
    packet_table(args, packets);
    println!();
    connection_table(args, conns);
    println!();
    apply_table(apply);
}

pub(crate) fn report_packets(args: &Args, packets: &[PacketRow]) {
    bench::print_machine("network-policy");
    packet_table(args, packets);
}

fn packet_table(args: &Args, packets: &[PacketRow]) {
    println!(
        "1. per-packet cost at an isolated pod, ns: p50 of {} BPF_PROG_TEST_RUN runs per cell in {} rounds (every count in turn), timed by the kernel",
        args.samples, args.packet_rounds
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
}

fn connection_table(args: &Args, conns: &ConnResult) {
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
}

fn apply_table(apply: &ApplyResult) {
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
