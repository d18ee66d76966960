//! Fault injection on ADD and DEL: the debug build's hook
//! (`SLUICE_FAULT_AT=<step>[:kill]`, see cni-plugin/src/fault.rs) makes
//! the plugin fail at each boundary between what it makes and records (the
//! host path included), or
//! kill itself there with SIGKILL, in both roles. After every cycle the
//! node is as before it: a failed ADD has rolled itself back; a killed one
//! is cleaned up by the DEL the runtime sends after it; a DEL that failed
//! or was killed is finished by the next. 0 leaked links, addresses,
//! leases, pins, endpoint-map entries or records.
//!
//! `SLUICE_FAULT_CYCLES` cycles (1,000 by default), spread over every step
//! and both ways of failing.

use serde_json::Value;
use sluice_integration::cni::Call;
use sluice_integration::vpc::Vpc;
use sluice_integration::{cni_bin_dir, cni_path, require_root};
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::time::Instant;

/// Where the hook can fail, per role and verb.
const MAIN_ADD: &[&str] = &[
    "add:ipam",
    "add:record",
    "add:link-created",
    "add:link",
    "add:link-recorded",
    "add:programs",
    "add:attached",
    "add:configured",
    "add:host-path",
    "add:ready",
];
const MAIN_DEL: &[&str] = &["del:detached", "del:link-removed", "del:released"];
const CHAINED_ADD: &[&str] = &["add:record", "add:programs", "add:ready"];
const CHAINED_DEL: &[&str] = &["del:detached"];

#[derive(Debug)]
enum Outcome {
    Ok,
    /// A CNI error object, its message.
    Failed(String),
    Killed,
}

struct Node<'a> {
    vpc: &'a Vpc,
    pod: usize,
    bin: std::path::PathBuf,
}

impl Node<'_> {
    fn call(&self, verb: &str, conf: &Value, ifname: &str, fault: Option<&str>) -> Outcome {
        let mut call = Call::new(&self.bin, Some(&self.vpc.nodes[0].name))
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", "faulty")
            .env("CNI_NETNS", &self.vpc.pods[self.pod].path().display().to_string())
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", &cni_path());
        if let Some(f) = fault {
            call = call.env("SLUICE_FAULT_AT", f);
        }
        let mut child = call.spawn();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(&serde_json::to_vec(conf).unwrap())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        // `ip netns exec` runs the plugin as its child and reports its death
        // by signal as exit status 128 + 9.
        if out.status.signal() == Some(9) || out.status.code() == Some(137) {
            return Outcome::Killed;
        }
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Outcome::Ok;
        }
        let v: Value =
            serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{verb}: not an error object ({e}): {stdout:?}"));
        Outcome::Failed(v["msg"].as_str().unwrap_or_default().to_string())
    }
}

#[test]
fn faults_at_every_step_leave_nothing_behind() {
    if !require_root("faults_at_every_step_leave_nothing_behind") {
        return;
    }
    let mut vpc = Vpc::new("flt", 1).unwrap();
    // The chained role follows an interface the plugin before it made.
    let pod = vpc.pod_with_eth0("p").unwrap();
    let main = vpc.main_conf(0, "1.1.0");
    let mut chained = vpc.chained_conflist(0, "1.1.0")["plugins"][1].clone();
    chained["cniVersion"] = "1.1.0".into();
    chained["name"] = main["name"].clone();
    chained["prevResult"] = serde_json::json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "sandbox": vpc.pods[pod].path()}],
        "ips": [{"address": "10.244.1.40/24", "gateway": "10.244.0.1", "interface": 0}]
    });
    let node = Node {
        vpc: &vpc,
        pod,
        bin: cni_bin_dir().join("sluice"),
    };
    // The node's datapath is the node's: loaded by the first ADD, it stays.
    assert!(matches!(node.call("ADD", &main, "net1", None), Outcome::Ok));
    assert!(matches!(node.call("DEL", &main, "net1", None), Outcome::Ok));
    let baseline = vpc.snapshot(0);

    let cycles: usize = std::env::var("SLUICE_FAULT_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    // Every (role, verb, step, kill) in turn.
    let mut plan: Vec<(bool, bool, &str, bool)> = Vec::new();
    for kill in [false, true] {
        for (main_role, adds, dels) in [(true, MAIN_ADD, MAIN_DEL), (false, CHAINED_ADD, CHAINED_DEL)] {
            plan.extend(adds.iter().map(|s| (main_role, true, *s, kill)));
            plan.extend(dels.iter().map(|s| (main_role, false, *s, kill)));
        }
    }
    let started = Instant::now();
    let (mut injected, mut killed) = (0, 0);
    for i in 0..cycles {
        let (main_role, on_add, step, kill) = plan[i % plan.len()];
        let (conf, ifname) = if main_role { (&main, "net1") } else { (&chained, "eth0") };
        let fault = if kill { format!("{step}:kill") } else { step.to_string() };
        let what = format!("cycle {i}: {} {fault}", if main_role { "main" } else { "chained" });
        let expect_fault = |o: Outcome| match o {
            Outcome::Killed if kill => {}
            Outcome::Failed(m) if !kill && m.contains(&format!("fault injected at {step}")) => {}
            o => panic!("{what}: the fault did not happen as asked: {o:?}"),
        };
        if on_add {
            expect_fault(node.call("ADD", conf, ifname, Some(&fault)));
            if !kill {
                // A failed ADD rolled itself back.
                assert_eq!(vpc.snapshot(0), baseline, "{what}: after the failed ADD");
            }
        } else {
            assert!(
                matches!(node.call("ADD", conf, ifname, None), Outcome::Ok),
                "{what}: ADD"
            );
            expect_fault(node.call("DEL", conf, ifname, Some(&fault)));
        }
        injected += 1;
        killed += usize::from(kill);
        // The runtime's DEL after a failed ADD, or its retry of a DEL.
        match node.call("DEL", conf, ifname, None) {
            Outcome::Ok => {}
            o => panic!("{what}: the DEL after it: {o:?}"),
        }
        let now = vpc.snapshot(0);
        assert_eq!(now, baseline, "{what}: something was left behind");
    }
    eprintln!(
        "faults: {cycles} cycles, {injected} faults injected ({killed} by SIGKILL) at {} steps, in {:?}: 0 leaks",
        MAIN_ADD.len() + MAIN_DEL.len() + CHAINED_ADD.len() + CHAINED_DEL.len(),
        started.elapsed()
    );
}
