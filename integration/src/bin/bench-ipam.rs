//! Allocate + release through the `sluice-ipam` binary beside Debian's
//! reference `host-local`, in the same run, with 10, 1,000 and 10,000
//! addresses already leased in the pool.
//!
//!     cargo run --release -p sluice-integration --bin bench-ipam
//!
//! Both binaries are exec'd exactly as a runtime would (env + stdin), one
//! ADD then one DEL per iteration, the two plugins interleaved so that any
//! drift of the machine hits both alike. Existing leases are written in each
//! plugin's own on-disk format before the run, and one ADD per plugin checks
//! that it honoured them. No namespaces are touched; root is not needed.

use anyhow::{Context, Result, ensure};
use clap::Parser;
use serde_json::{Value, json};
use sluice_integration::cni::exec_timed;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// Allocate+release pairs measured per plugin and pool size.
    #[arg(long, default_value_t = 300)]
    iterations: usize,
    /// Pool sizes (existing leases) to measure.
    #[arg(long, value_delimiter = ',', default_values_t = [10usize, 1_000, 10_000])]
    leases: Vec<usize>,
}

const SUBNET: &str = "10.64.0.0/16";
const NETWORK: &str = "bench";

struct Plugin {
    label: &'static str,
    bin: PathBuf,
    conf: Vec<u8>,
}

fn call(p: &Plugin, cmd: &str, cid: &str) -> Result<(Duration, Value)> {
    let (took, out) = exec_timed(
        &p.bin,
        cmd,
        cid,
        Path::new("/proc/self/ns/net"),
        "/usr/lib/cni",
        &p.conf,
    )
    .with_context(|| p.label)?;
    Ok((took, serde_json::from_slice(&out).unwrap_or(Value::Null)))
}

/// The n-th address handed out from the subnet (host-local and sluice both start at .0.2).
fn nth(n: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 64, 0, 2)) + n as u32)
}

/// host-local's disk store: one file per address holding "id\r\nifname",
/// and the last reserved address per range set.
fn seed_host_local(dir: &Path, n: usize) -> Result<()> {
    let d = dir.join(NETWORK);
    std::fs::create_dir_all(&d)?;
    for i in 0..n {
        std::fs::write(d.join(nth(i).to_string()), format!("seed{i}\r\neth0"))?;
    }
    if n > 0 {
        std::fs::write(d.join("last_reserved_ip.0"), nth(n - 1).to_string())?;
    }
    Ok(())
}

/// sluice-ipam's store: one leases.json.
fn seed_sluice(dir: &Path, n: usize) -> Result<()> {
    let d = dir.join(NETWORK);
    std::fs::create_dir_all(&d)?;
    let leases: serde_json::Map<String, Value> = (0..n)
        .map(|i| {
            (
                nth(i).to_string(),
                json!({"containerId": format!("seed{i}"), "ifname": "eth0", "since": 0}),
            )
        })
        .collect();
    let mut state = json!({"version": 1, "leases": leases, "lastReserved": {}});
    if n > 0 {
        state["lastReserved"]["0"] = json!(nth(n - 1).to_string());
    }
    std::fs::write(d.join("leases.json"), serde_json::to_vec(&state)?)?;
    Ok(())
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

struct Stats {
    p50: f64,
    p99: f64,
    per_sec: f64,
}

/// The network config of one plugin, its leases under `dir`.
fn conf(ty: &str, dir: &Path) -> Vec<u8> {
    serde_json::to_vec(&json!({"cniVersion": "1.0.0", "name": NETWORK, "type": "bench",
        "ipam": {"type": ty, "ranges": [[{"subnet": SUBNET}]], "dataDir": dir}}))
    .expect("JSON")
}

/// Both plugins with `n` leases seeded: ADD+DEL pairs timed alternately.
fn cell(args: &Args, n: usize, work: &Path, bins: &Path, host_local: &Path) -> Result<Vec<Stats>> {
    let sd = work.join(format!("sluice-{n}"));
    let hd = work.join(format!("host-local-{n}"));
    seed_sluice(&sd, n)?;
    seed_host_local(&hd, n)?;
    let plugins = [
        Plugin {
            label: "sluice-ipam",
            bin: bins.join("sluice-ipam"),
            conf: conf("sluice-ipam", &sd),
        },
        Plugin {
            label: "host-local",
            bin: host_local.to_path_buf(),
            conf: conf("host-local", &hd),
        },
    ];
    // Both must see the seeded leases: the next address is the (n+1)-th.
    for p in &plugins {
        let (_, r) = call(p, "ADD", "probe")?;
        let got = r["ips"][0]["address"].as_str().unwrap_or("").to_string();
        ensure!(
            got == format!("{}/16", nth(n)),
            "{} did not honour the {n} seeded leases: got {got}",
            p.label
        );
        call(p, "DEL", "probe")?;
    }
    let mut samples = [Vec::new(), Vec::new()];
    let mut busy = [Duration::ZERO; 2];
    for i in 0..args.iterations {
        for (k, p) in plugins.iter().enumerate() {
            let id = format!("b{i}");
            let (a, _) = call(p, "ADD", &id)?;
            let (d, _) = call(p, "DEL", &id)?;
            samples[k].push(a + d);
            busy[k] += a + d;
        }
    }
    let mut stats = Vec::new();
    for (k, p) in plugins.iter().enumerate() {
        let s = Stats {
            p50: pct(&mut samples[k], 0.5),
            p99: pct(&mut samples[k], 0.99),
            per_sec: args.iterations as f64 / busy[k].as_secs_f64(),
        };
        println!(
            "{:>8}  {:<12} {:>9.2} {:>9.2} {:>10.0}",
            n, p.label, s.p50, s.p99, s.per_sec
        );
        stats.push(s);
    }
    Ok(stats)
}

fn main() -> Result<()> {
    let args = Args::parse();
    let host_local = PathBuf::from("/usr/lib/cni/host-local");
    ensure!(
        host_local.is_file(),
        "{} missing: apt-get install containernetworking-plugins",
        host_local.display()
    );
    let bins = std::env::current_exe()?.parent().unwrap().to_path_buf();
    let work = tempfile::tempdir()?;

    println!(
        "IPAM allocate+release (one ADD and one DEL exec), {} pairs per cell",
        args.iterations
    );
    println!(
        "{:>8}  {:<12} {:>9} {:>9} {:>10}",
        "leases", "plugin", "p50 ms", "p99 ms", "pairs/s"
    );
    let mut rows = Vec::new();
    for &n in &args.leases {
        ensure!(n + args.iterations < 65_000, "{n} leases do not fit the /16");
        let stats = cell(&args, n, work.path(), &bins, &host_local)?;
        rows.push((n, stats));
    }
    println!();
    println!("ratio sluice-ipam/host-local (latency below 1.0 and throughput above 1.0: sluice better)");
    println!("{:>8}  {:>9} {:>9} {:>10}", "leases", "p50", "p99", "pairs/s");
    for (n, s) in &rows {
        println!(
            "{:>8}  {:>9.2} {:>9.2} {:>10.2}",
            n,
            s[0].p50 / s[1].p50,
            s[0].p99 / s[1].p99,
            s[0].per_sec / s[1].per_sec
        );
    }
    if let Some((_, s)) = rows.iter().find(|(n, _)| *n == 1_000) {
        let r = s[0].p50 / s[1].p50;
        println!(
            "p50 at 1,000 leases: {r:.2}x host-local -> {}",
            if r <= 0.5 {
                "target met (<= 0.50)"
            } else {
                "target MISSED (<= 0.50)"
            }
        );
    }
    Ok(())
}
