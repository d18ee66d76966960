//! Input fuzzing of the CNI binary: its network config (main and chained
//! role, `prevResult` included) and its environment, mutated at random
//! from valid ones, run as the runtime runs it. Whatever comes in, the
//! plugin answers with a result or a CNI error object (a code, a message)
//! and a non-zero exit, never panics, never takes longer than 10 s, and
//! leaves nothing: after a failed call, or a successful ADD and its DEL,
//! every namespace's links and addresses, the leases, the endpoint records,
//! the pins and the endpoint map are as before.
//!
//! Mutations stay inside the test: a path the fuzzer writes names a place
//! under the test's own directory (or the plugin's own network namespace,
//! which it must refuse), never the machine's.
//!
//! The seed is fixed (`SLUICE_FUZZ_SEED` changes it); CI runs
//! `SLUICE_INPUT_FUZZ_CASES` cases (300 by default).

use proptest::prelude::RngExt;
use proptest::test_runner::TestRng;
use serde_json::{Value, json};
use sluice_integration::cni::Call;
use sluice_integration::fuzz::{Strings, cases, mutate, pick, rng};
use sluice_integration::vpc::Vpc;
use sluice_integration::{cni_bin_dir, cni_path, require_root};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What one call gave.
struct Ran {
    success: bool,
    stdout: String,
    stderr: String,
    took: Duration,
}

/// Run the plugin with a deadline: a call that outlives it is killed and
/// reported.
fn run(call: &Call, stdin: &[u8]) -> Result<Ran, String> {
    let started = Instant::now();
    let mut child = call.spawn();
    let mut input = child.stdin.take().unwrap();
    // A plugin that exits before reading everything closes the pipe.
    let _ = input.write_all(stdin);
    drop(input);
    let deadline = started + Duration::from_secs(10);
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(2)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("still running after {:?}: killed", started.elapsed()));
            }
        }
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    Ok(Ran {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        took: started.elapsed(),
    })
}

/// The answer must be one JSON object: a result on success, a CNI error
/// object (integer code, message, version) with a non-zero exit otherwise.
fn check_answer(r: &Ran, command: &str) -> Result<(), String> {
    if r.stderr.contains("panicked") {
        return Err(format!("panicked: {}", r.stderr));
    }
    // DEL, CHECK, GC and STATUS say nothing when they succeed.
    if r.success && r.stdout.is_empty() && ["DEL", "CHECK", "GC", "STATUS"].contains(&command) {
        return Ok(());
    }
    let v: Value =
        serde_json::from_str(&r.stdout).map_err(|e| format!("stdout is not one JSON value ({e}): {:?}", r.stdout))?;
    if r.success {
        return if v.is_object() {
            Ok(())
        } else {
            Err(format!("success, not an object: {v}"))
        };
    }
    if !v["code"].is_u64() || v["msg"].as_str().is_none_or(str::is_empty) || !v["cniVersion"].is_string() {
        return Err(format!("not a CNI error object: {v}"));
    }
    Ok(())
}

struct Env<'a> {
    vpc: &'a Vpc,
    pod: usize,
    strings: Strings,
}

impl Env<'_> {
    /// The runtime's variables, some changed or removed.
    fn vars(&self, rng: &mut TestRng, ifname: &str) -> Vec<(&'static str, String)> {
        let netns = self.vpc.pods[self.pod].path().display().to_string();
        let mut vars = vec![
            ("CNI_COMMAND", "ADD".to_string()),
            ("CNI_CONTAINERID", format!("fuzz{}", rng.random::<u16>())),
            ("CNI_NETNS", netns),
            ("CNI_IFNAME", ifname.to_string()),
            ("CNI_PATH", cni_path()),
        ];
        if rng.random_bool(0.3) {
            vars.push((
                "CNI_ARGS",
                pick(
                    rng,
                    &[
                        "IgnoreUnknown=1;K8S_POD_NAMESPACE=a;K8S_POD_NAME=b",
                        "IP=10.244.1.77",
                        "IP=10.244.1.77/24x",
                        "IP=999.1.1.1",
                        ";;;=",
                        "K8S_POD_NAME",
                    ],
                )
                .to_string(),
            ));
        }
        if rng.random_bool(0.4) {
            let i = rng.random_range(0..vars.len());
            match rng.random_range(0..3) {
                0 => {
                    vars.remove(i);
                }
                1 => vars[i].1 = self.strings.any(rng),
                _ => {
                    vars[i].1 = match vars[i].0 {
                        "CNI_COMMAND" => {
                            pick(rng, &["DEL", "CHECK", "GC", "STATUS", "VERSION", "add", "ADD "]).to_string()
                        }
                        "CNI_NETNS" => {
                            // The plugin's own namespace (it runs in the node's), or a non-namespace.
                            let own = self.vpc.nodes[0].path().display().to_string();
                            let elsewhere = pick(rng, &self.strings.paths).clone();
                            pick(rng, &[own, "/proc/self/ns/net".to_string(), elsewhere]).clone()
                        }
                        "CNI_IFNAME" => pick(rng, &["eth%d", "", "a/b", "0123456789abcdefg", "lo", "eth0"]).to_string(),
                        _ => self.strings.any(rng),
                    }
                }
            }
        }
        vars
    }
}

fn call<'a>(bin: &'a Path, node: &'a str, vars: &[(&'static str, String)]) -> Call<'a> {
    vars.iter().fold(Call::new(bin, Some(node)), |c, (k, v)| c.env(k, v))
}

#[test]
fn fuzzed_cni_input_gets_an_answer_and_leaves_nothing() {
    if !require_root("fuzzed_cni_input_gets_an_answer_and_leaves_nothing") {
        return;
    }
    let mut vpc = Vpc::new("ifz", 1).unwrap();
    // The chained role follows an interface the plugin before it made.
    let pod = vpc.pod_with_eth0("p").unwrap();
    let root: PathBuf = vpc.data_dir.join("fuzz");
    std::fs::create_dir_all(root.join("dir")).unwrap();
    std::fs::write(root.join("file"), b"not a namespace").unwrap();
    let fifo = root.join("fifo");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::S_IRWXU).unwrap();
    let paths = ["dir", "file", "fifo", "missing", "missing/deeper"]
        .iter()
        .map(|p| root.join(p).display().to_string())
        .collect();
    let env = Env {
        vpc: &vpc,
        pod,
        strings: Strings { paths },
    };
    let main = vpc.main_conf(0, "1.1.0");
    let mut chained = vpc.chained_conflist(0, "1.1.0")["plugins"][1].clone();
    chained["cniVersion"] = json!("1.1.0");
    chained["name"] = json!("ifz-net");
    chained["prevResult"] = json!({
        "cniVersion": "1.1.0",
        "interfaces": [{"name": "eth0", "sandbox": vpc.pods[pod].path()}],
        "ips": [{"address": "10.244.1.40/24", "gateway": "10.244.0.1", "interface": 0}],
        "routes": [{"dst": "0.0.0.0/0"}]
    });
    let bin = cni_bin_dir().join("sluice");
    let node = vpc.nodes[0].name.clone();
    let mut rng = rng(0xcf);
    let (mut failures, mut answered, mut succeeded) = (Vec::new(), 0usize, 0usize);
    let mut codes = std::collections::BTreeMap::<u64, usize>::new();
    let mut slowest = Duration::ZERO;
    // The node's datapath is loaded by its first ADD and stays (maps and
    // programs are the node's, not a pod's): load it before the baseline.
    let warm = [
        ("CNI_CONTAINERID", "warmup".to_string()),
        ("CNI_NETNS", vpc.pods[pod].path().display().to_string()),
        ("CNI_IFNAME", "net1".to_string()),
        ("CNI_PATH", cni_path()),
    ];
    for verb in ["ADD", "DEL"] {
        let mut vars = warm.to_vec();
        vars.push(("CNI_COMMAND", verb.to_string()));
        let r = run(&call(&bin, &node, &vars), &serde_json::to_vec(&main).unwrap()).unwrap();
        assert!(r.success, "warm-up {verb}: {}", r.stdout);
    }
    let before = vpc.snapshot(0);
    for i in 0..cases("SLUICE_INPUT_FUZZ_CASES", 300) {
        // The main role makes net1; the chained one follows eth0.
        let is_main = rng.random_bool(0.5);
        let mut conf = if is_main { main.clone() } else { chained.clone() };
        // Some configs stay valid, so that what a successful ADD made is
        // seen to go with its DEL.
        if rng.random_bool(0.85) {
            mutate(&mut rng, &env.strings, &mut conf);
        }
        let mut stdin = serde_json::to_vec(&conf).unwrap();
        if rng.random_bool(0.1) {
            // Not JSON any more: cut short or bytes changed.
            if rng.random_bool(0.5) {
                let n = rng.random_range(0..stdin.len());
                stdin.truncate(n);
            } else {
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..stdin.len());
                    stdin[at] = rng.random();
                }
            }
        }
        let vars = env.vars(&mut rng, if is_main { "net1" } else { "eth0" });
        let shown: String = String::from_utf8_lossy(&stdin).chars().take(600).collect();
        let what = format!("case {i}: env {vars:?} stdin {shown}");
        let command = vars
            .iter()
            .find(|(k, _)| *k == "CNI_COMMAND")
            .map_or("", |(_, v)| v.as_str());
        let ran = match run(&call(&bin, &node, &vars), &stdin) {
            Ok(r) => r,
            Err(e) => {
                failures.push(format!("{what}: {e}"));
                continue;
            }
        };
        slowest = slowest.max(ran.took);
        if let Err(e) = check_answer(&ran, command) {
            failures.push(format!("{e}\n  in {what}"));
            continue;
        }
        answered += 1;
        if ran.success && command == "ADD" {
            succeeded += 1;
            // Undo it as the runtime would: DEL with the same input.
            let mut del = vars.clone();
            del.retain(|(k, _)| *k != "CNI_COMMAND");
            del.push(("CNI_COMMAND", "DEL".into()));
            match run(&call(&bin, &node, &del), &stdin) {
                Ok(r) if r.success => {}
                Ok(r) => failures.push(format!("{what}: DEL after a successful call failed: {}", r.stdout)),
                Err(e) => failures.push(format!("{what}: DEL: {e}")),
            }
        } else if !ran.success {
            let v: Value = serde_json::from_str(&ran.stdout).unwrap();
            *codes.entry(v["code"].as_u64().unwrap()).or_default() += 1;
            if std::env::var("SLUICE_FUZZ_VERBOSE").is_ok() {
                eprintln!("{} {}", v["code"], v["msg"]);
            }
        }
        let after = vpc.snapshot(0);
        if after != before {
            failures.push(format!(
                "{what}: left something behind:\n  before {before:?}\n  after  {after:?}"
            ));
            break;
        }
    }
    eprintln!(
        "input fuzz: {} cases, {answered} answered ({succeeded} succeeded and were deleted), error codes {codes:?}, slowest {slowest:?}",
        cases("SLUICE_INPUT_FUZZ_CASES", 300)
    );
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    assert!(codes.len() >= 4, "the fuzzer reached several kinds of error: {codes:?}");
}
