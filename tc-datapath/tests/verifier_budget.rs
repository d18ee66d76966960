//! Each program's verification against the kernel's budget of one million
//! instructions walked. sl_egress carries the Service path, policy and the
//! answers it builds, and its walk is the largest by far: every new branch
//! on that path multiplies the states the verifier keeps apart. A program
//! near the budget loads on one kernel and not on the next, so the
//! headroom is checked here, on the host's kernel, on every change.

mod common;

use common::*;
use sluice_tc_datapath::loader;

/// The kernel refuses a program whose verification walks more than this.
const KERNEL_BUDGET: u32 = 1_000_000;

/// What a program may take of it here: the rest is headroom for kernels
/// whose verifier prunes less, and for the next change.
const SHARE_PERCENT: u32 = 85;

#[test]
fn every_program_verifies_well_within_the_budget() {
    if !root("every_program_verifies_well_within_the_budget") {
        return;
    }
    let (ebpf, _maps) = loader::load_unpinned(&Default::default()).expect("load datapath");
    let mut seen = 0;
    for (name, prog) in ebpf.programs() {
        // Programs this configuration leaves unloaded have no info.
        let Ok(info) = prog.info() else { continue };
        let Some(n) = info.verified_instruction_count() else {
            // Kernels before 5.16 do not say.
            skip(
                "every_program_verifies_well_within_the_budget",
                "this kernel does not report the instructions it verified",
            );
            return;
        };
        eprintln!(
            "{name}: {n} instructions verified ({}% of the budget), {} bytes JITed",
            u64::from(n) * 100 / u64::from(KERNEL_BUDGET),
            info.size_jitted()
        );
        assert!(
            n <= KERNEL_BUDGET / 100 * SHARE_PERCENT,
            "{name}: {n} instructions verified, over {SHARE_PERCENT}% of the kernel's {KERNEL_BUDGET}"
        );
        seen += 1;
    }
    assert!(seen >= 2, "the pod programs were not loaded ({seen} programs reported)");
}
