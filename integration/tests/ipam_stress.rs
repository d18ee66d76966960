//! The `sluice-ipam` binary under contention and under SIGKILL: many real
//! processes on one pool, as kubelet starting a node full of pods does.
//! No namespaces are needed, so these run without root too.

use serde_json::{Value, json};
use sluice_integration::cni::{Call, CniOutput};
use sluice_integration::cni_bin_dir;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::Write;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

fn conf(dir: &Path, subnet: &str) -> Value {
    json!({"cniVersion": "1.1.0", "name": "stress", "type": "x",
        "ipam": {"type": "sluice-ipam", "ranges": [[{"subnet": subnet}]], "dataDir": dir, "lockTimeoutMs": 60000}})
}

fn spawn(cmd: &str, cid: &str) -> Child {
    Call::new(&cni_bin_dir().join("sluice-ipam"), None)
        .standard(cmd, cid, "/proc/self/ns/net", "eth0")
        .spawn()
}

/// Start every call first, then feed them all: they race for the pool together.
fn race(cmd: &str, ids: &[String], conf: &Value) -> Vec<CniOutput> {
    let bytes = serde_json::to_vec(conf).unwrap();
    let mut children: Vec<Child> = ids.iter().map(|id| spawn(cmd, id)).collect();
    for c in &mut children {
        c.stdin.take().unwrap().write_all(&bytes).unwrap();
    }
    children
        .into_iter()
        .map(|c| CniOutput::of(c.wait_with_output().unwrap()))
        .collect()
}

/// The store as written: address -> owner.
fn store(dir: &Path) -> BTreeMap<String, String> {
    let path = dir.join("stress/leases.json");
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(_) => return BTreeMap::new(),
    };
    let v: Value = serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    v["leases"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(ip, l)| (ip.clone(), l["containerId"].as_str().unwrap().to_string()))
        .collect()
}

fn ip_of(out: &CniOutput) -> String {
    out.json()["ips"][0]["address"].as_str().unwrap().to_string()
}

#[test]
fn sixty_four_processes_share_a_slash26_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = conf(tmp.path(), "10.77.0.0/26");
    let ids: Vec<String> = (0..64).map(|i| format!("pod{i:02}")).collect();

    let outs = race("ADD", &ids, &conf);
    let mut got = HashMap::new();
    let mut exhausted = 0;
    for (id, out) in ids.iter().zip(&outs) {
        if out.success {
            let ip = ip_of(out);
            assert!(ip.ends_with("/26"), "{ip}");
            if let Some(other) = got.insert(ip.clone(), id.clone()) {
                panic!("{ip} handed to {other} and {id}");
            }
        } else {
            assert_eq!(out.error_code(), 101, "{id}: {}", out.stdout);
            assert!(
                out.stdout.contains("no free address") && out.stdout.contains("10.77.0.0/26"),
                "{}",
                out.stdout
            );
            exhausted += 1;
        }
    }
    assert_eq!(got.len(), 61, "62 host addresses minus the gateway");
    assert_eq!(exhausted, 3);
    for reserved in ["10.77.0.0/26", "10.77.0.1/26", "10.77.0.63/26"] {
        assert!(!got.contains_key(reserved), "{reserved} handed out");
    }
    let on_disk = store(tmp.path());
    assert_eq!(on_disk.len(), 61);
    for (ip, owner) in &got {
        assert_eq!(
            on_disk.get(ip.trim_end_matches("/26")),
            Some(owner),
            "store agrees on {ip}"
        );
    }

    // The operator's view agrees: 61 rows with owner and age, as a table and as JSON.
    let list = |fmt: &str| {
        let out = std::process::Command::new(cni_bin_dir().join("sluice-ipam"))
            .args(["leases", "--data-dir"])
            .arg(tmp.path())
            .args(["-o", fmt])
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let table = list("table");
    assert_eq!(table.lines().count(), 62, "{table}");
    assert!(table.lines().next().unwrap().contains("CONTAINER"), "{table}");
    let rows: Value = serde_json::from_str(&list("json")).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 61);
    for r in rows {
        assert_eq!(r["pool"], "stress");
        let ip = format!("{}/26", r["address"].as_str().unwrap());
        assert_eq!(got[&ip], r["containerId"].as_str().unwrap());
        assert!(r["ageSeconds"].as_u64().unwrap() < 600);
    }

    // Everyone releases at once (the three that got nothing too: DEL is idempotent).
    for (id, out) in ids.iter().zip(race("DEL", &ids, &conf)) {
        assert!(out.success, "DEL {id}: {}", out.stdout);
    }
    assert!(store(tmp.path()).is_empty(), "pool whole again");
    // And the whole /26 is usable again.
    let again = race("ADD", &ids[..61], &conf);
    assert!(again.iter().all(|o| o.success));
    assert_eq!(again.iter().map(ip_of).collect::<HashSet<_>>().len(), 61);
}

/// xorshift64: enough randomness for kill timing, reproducible from the printed seed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn sigkill_at_random_moments_leaves_no_duplicate_and_gc_recovers_every_orphan() {
    let tmp = tempfile::tempdir().unwrap();
    let conf = conf(tmp.path(), "10.78.0.0/24");
    let bytes = serde_json::to_vec(&conf).unwrap();
    let seed = std::env::var("SLUICE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let now = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            (now.as_nanos() as u64 ^ u64::from(std::process::id())) | 1
        });
    eprintln!("seed {seed} (set SLUICE_SEED to replay)");
    let mut rng = Rng(seed);

    // Owners whose ADD completed and were not sent a DEL: they must hold a lease.
    let mut alive: BTreeMap<String, String> = BTreeMap::new();
    let mut killed = 0;
    let mut next_id = 0;
    for round in 0..30 {
        // 12 allocations and, from round 2 on, releases of a few live owners.
        let mut calls: Vec<(String, &str)> = (0..12)
            .map(|_| {
                next_id += 1;
                (format!("c{next_id}"), "ADD")
            })
            .collect();
        let leaving: Vec<String> = alive.keys().take(rng.below(4) as usize).cloned().collect();
        for id in &leaving {
            alive.remove(id);
            calls.push((id.clone(), "DEL"));
        }
        let mut children: Vec<(String, &str, Child)> = calls
            .into_iter()
            .map(|(id, cmd)| {
                let c = spawn(cmd, &id);
                (id, cmd, c)
            })
            .collect();
        for (_, _, c) in &mut children {
            c.stdin.take().unwrap().write_all(&bytes).unwrap();
        }
        // Kill a random half at random moments over the few ms the calls take.
        let started = Instant::now();
        let mut doomed: Vec<usize> = (0..children.len()).filter(|_| rng.below(2) == 0).collect();
        let mut at: Vec<u64> = doomed.iter().map(|_| rng.below(6_000)).collect();
        while !doomed.is_empty() {
            let i = (0..at.len()).min_by_key(|&k| at[k]).unwrap();
            let wait = Duration::from_micros(at[i]).saturating_sub(started.elapsed());
            std::thread::sleep(wait);
            let _ = children[doomed[i]].2.kill(); // SIGKILL, our own child by its pid
            doomed.swap_remove(i);
            at.swap_remove(i);
        }
        for (id, cmd, c) in children {
            let out = c.wait_with_output().unwrap();
            if out.status.code().is_none() {
                killed += 1; // died of the signal: its effect is unknown
                continue;
            }
            let out = CniOutput::of(out);
            assert!(out.success, "round {round} {cmd} {id}: {}", out.stdout);
            if cmd == "ADD" {
                alive.insert(id, ip_of(&out).trim_end_matches("/24").to_string());
            }
        }

        // Invariants after every round: the store parses (checked by `store`),
        // holds at most one address per owner, and every completed ADD is there.
        let on_disk = store(tmp.path());
        let owners: Vec<&String> = on_disk.values().collect();
        assert_eq!(
            owners.len(),
            owners.iter().collect::<HashSet<_>>().len(),
            "round {round}: an owner holds two addresses"
        );
        for (id, ip) in &alive {
            assert_eq!(on_disk.get(ip), Some(id), "round {round}: lease of {id} lost");
        }
    }
    assert!(killed > 0, "no process was killed mid-call; the test exercised nothing");
    eprintln!("{killed} calls killed, {} owners alive", alive.len());

    // Killed ADDs that got as far as the store left orphans behind.
    let orphans = store(tmp.path()).len() - alive.len();
    eprintln!("{orphans} orphaned leases before GC");
    assert!(orphans > 0, "no kill landed after a write; GC had nothing to recover");

    // GC with the living owners as the valid attachments: exactly they remain.
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = alive
        .keys()
        .map(|id| json!({"containerID": id, "ifname": "eth0"}))
        .collect();
    let out = Call::new(&cni_bin_dir().join("sluice-ipam"), None)
        .env("CNI_COMMAND", "GC")
        .env("CNI_PATH", &sluice_integration::cni_path())
        .run(&serde_json::to_vec(&gc).unwrap());
    assert!(out.success, "GC: {}", out.stdout);
    let after: BTreeMap<String, String> = store(tmp.path()).into_iter().map(|(ip, id)| (id, ip)).collect();
    assert_eq!(after, alive, "GC left exactly the living owners");

    // Release everyone: the pool is whole, nothing leaked.
    let ids: Vec<String> = alive.keys().cloned().collect();
    assert!(race("DEL", &ids, &conf).iter().all(|o| o.success));
    assert!(store(tmp.path()).is_empty());
    let full: Vec<String> = (0..253).map(|i| format!("full{i}")).collect();
    for chunk in full.chunks(64) {
        assert!(
            race("ADD", chunk, &conf).iter().all(|o| o.success),
            "every address usable again"
        );
    }
}
