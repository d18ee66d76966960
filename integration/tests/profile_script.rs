//! `scripts/profile-datapath` reads bench-datapath's pass lines and perf's
//! call chains: fed a kept run (the bench's lines as the bench formats
//! them, a few stacks in perf's format), it must cut the samples by pass,
//! find those with a program on the stack, and turn them into µs per
//! connection. No root and no perf needed.

use sluice_integration::bench::cpu_pass_line;
use std::process::Command;

/// One sample as `perf script -F time,ip,sym` prints it: the time, then
/// one frame a line, the innermost first.
fn sample(t: f64, frames: &[(&str, &str)]) -> String {
    let mut s = format!("{t:.6}: \n");
    for (addr, sym) in frames {
        s.push_str(&format!("\t{addr} {sym}\n"));
    }
    s.push('\n');
    s
}

#[test]
fn the_profile_is_cut_by_pass_and_counted_under_the_programs() {
    let dir = tempfile::tempdir().unwrap();
    let passes = [
        cpu_pass_line("direct (no datapath)", 1, 100.0, 10.0, 11.0),
        cpu_pass_line("sluice attached, pod IP", 1, 200.0, 11.0, 12.0),
        // A second round of the same mode: its µs are averaged.
        cpu_pass_line("sluice attached, pod IP", 1, 220.0, 13.0, 14.0),
    ];
    std::fs::write(
        dir.path().join("bench.err"),
        format!("some other line\n{}\n", passes.join("\n")),
    )
    .unwrap();
    let program = ("ffffffffc0037874", "[unknown]");
    let stack = [("ffffffff81eaef27", "__netif_receive_skb_core")];
    let mut perf = String::new();
    // The direct pass: the stack alone.
    perf += &sample(10.5, &[("ffffffff81533911", "tcp_v4_rcv"), stack[0]]);
    // The pod-IP passes: the program's own code, a lookup it called
    // (twice), and the stack on its own.
    perf += &sample(11.2, &[program, stack[0]]);
    perf += &sample(
        11.3,
        &[("ffffffff81533911", "lookup_nulls_elem_raw"), program, stack[0]],
    );
    perf += &sample(
        13.5,
        &[("ffffffff81533911", "lookup_nulls_elem_raw"), program, stack[0]],
    );
    perf += &sample(13.6, &[("ffffffff8224215b", "tcp_ack"), stack[0]]);
    // The program's code where perf names it, and another BPF program
    // (not ours) in the same area.
    perf += &sample(
        13.7,
        &[("ffffffffc0037990", "bpf_prog_6deef7357e7b4530_sl_egress"), stack[0]],
    );
    perf += &sample(
        13.8,
        &[("ffffffffc0041000", "bpf_prog_0123456789abcdef_other"), stack[0]],
    );
    // Between passes: counted nowhere.
    perf += &sample(12.5, &[program]);
    std::fs::write(dir.path().join("perf.script"), perf).unwrap();

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/profile-datapath");
    let out = Command::new(script)
        .env("SLUICE_PROFILE_REPLAY", dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    // 210 µs per connection (the two rounds), 4 of 6 samples under the
    // programs: 140 µs; the lookup 2 of 6, the JITed code 2 of 6.
    for want in [
        "direct (no datapath): 100.0 µs of CPU per connection; under the programs 0.0% of the samples = 0.00 µs per connection",
        "sluice attached, pod IP: 210.0 µs of CPU per connection; under the programs 66.7% of the samples = 140.00 µs per connection",
        "70.00 µs       2 samples  lookup_nulls_elem_raw",
        "70.00 µs       2 samples  (the programs' JITed code)",
    ] {
        assert!(stdout.contains(want), "missing {want:?} in:\n{stdout}");
    }
    for foreign in ["tcp_ack", "_other"] {
        assert!(
            !stdout.contains(foreign),
            "a sample with no program of ours counted:\n{stdout}"
        );
    }
}

#[test]
fn a_run_without_pass_lines_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("bench.err"), "Error: the bench stopped early\n").unwrap();
    std::fs::write(dir.path().join("perf.script"), "").unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/profile-datapath");
    let out = Command::new(script)
        .env("SLUICE_PROFILE_REPLAY", dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no pinned pass"));
}
