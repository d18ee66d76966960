//! Pod start as the kubelet sees it: RunPodSandbox (and StopPodSandbox)
//! latency through containerd's CRI plugin, with only the reference
//! plugins (macvlan + host-local), with sluice chained behind them, and
//! with sluice in the main role; three nodes, three containerds, measured
//! in the same run, the roles taking turns round by round.
//!
//!     cargo build --release --workspace --bins
//!     sudo target/release/bench-sandbox --pods 30 --rounds 3
//!
//! RunPodSandbox covers what the kubelet waits for: the sandbox container
//! (runc), its netns, and the CNI chain (loopback, then the network).
//! The difference between the rows is the network's share.

use anyhow::{Context, Result};
use clap::Parser;
use sluice_integration::bench::{pct, print_machine, require_root};
use sluice_integration::cri::{self, Containerd, PodSpec, Role};
use sluice_integration::vpc::Vpc;
use std::time::Instant;

#[derive(Parser)]
struct Args {
    /// Sandboxes per role per round.
    #[arg(long, default_value_t = 30)]
    pods: usize,
    /// Rounds (the roles take turns in each).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Concurrent RunPodSandbox calls in the parallel mode.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
}

const ROLES: [Role; 3] = [Role::Reference, Role::Chained, Role::Main];

/// Start `n` sandboxes, `par` at a time, then stop and remove them all
/// (`par` at a time); the RunPodSandbox and StopPodSandbox latencies.
fn round(
    rt: &tokio::runtime::Runtime,
    ctr: &Containerd,
    n: usize,
    par: usize,
    tag: &str,
    logs: &std::path::Path,
) -> Result<(Vec<f64>, Vec<f64>)> {
    rt.block_on(async {
        let specs: Vec<PodSpec> = (0..n).map(|i| PodSpec::new("bench", &format!("{tag}-{i}"))).collect();
        let mut runs = Vec::new();
        let mut ids = Vec::new();
        for chunk in specs.chunks(par) {
            let mut tasks = Vec::new();
            for s in chunk {
                let config = s.config(logs);
                let mut c = ctr.connect().await?;
                tasks.push(tokio::spawn(async move {
                    let t = Instant::now();
                    let id = c.run_pod(&config).await;
                    (t.elapsed(), id)
                }));
            }
            for t in tasks {
                let (took, id) = t.await?;
                ids.push(id.map_err(|e| anyhow::anyhow!("RunPodSandbox: {e}\n{}", ctr.log_errors()))?);
                runs.push(took.as_secs_f64() * 1e3);
            }
        }
        let mut stops = Vec::new();
        for chunk in ids.chunks(par) {
            let mut tasks = Vec::new();
            for id in chunk {
                let id = id.clone();
                let mut c = ctr.connect().await?;
                tasks.push(tokio::spawn(async move {
                    let t = Instant::now();
                    let r = c.stop_pod(&id).await;
                    let took = t.elapsed();
                    (took, r.and(c.remove_pod(&id).await))
                }));
            }
            for t in tasks {
                let (took, r) = t.await?;
                r.map_err(|e| anyhow::anyhow!("Stop/RemovePodSandbox: {e}"))?;
                stops.push(took.as_secs_f64() * 1e3);
            }
        }
        anyhow::Ok((runs, stops))
    })
}

fn main() -> Result<()> {
    let args = Args::parse();
    require_root("bench-sandbox")?;
    if let Some(why) = cri::missing() {
        anyhow::bail!("bench-sandbox cannot run here: {why}");
    }
    print_machine("bench-sandbox");
    let work = tempfile::tempdir()?;
    let archive = cri::build_image(work.path()).context("building the pods' image")?;
    // One node and one containerd per role, side by side.
    let mut nodes = Vec::new();
    for (i, role) in ROLES.iter().enumerate() {
        let vpc = Vpc::new(&format!("bs{i}"), 1)?;
        let ctr = Containerd::start(&work.path().join(format!("ctr{i}")), &vpc.nodes[0].path(), &archive)?;
        // sluice as shipped: the default attach (filters at ADD; no agent
        // runs here to move pods onto links afterwards).
        cri::install_network_with(&vpc, &ctr, *role, &|p| {
            if let Some(d) = p["datapath"].as_object_mut() {
                d.remove("attach");
            }
        })
        .with_context(|| role.name())?;
        nodes.push((vpc, ctr));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()?;
    let logs = work.path().join("pod-logs");
    // Warm: images unpacked, binaries and the datapath loaded.
    for (_, ctr) in &nodes {
        round(&rt, ctr, 2, 1, "warm", &logs)?;
    }
    println!(
        "RunPodSandbox / StopPodSandbox through containerd {} CRI, {} sandboxes x {} rounds per role, ms (lower is better)",
        cri::block_on(async { nodes[0].1.connect().await?.version().await }).unwrap_or_default(),
        args.pods,
        args.rounds
    );
    println!(
        "{:<44} {:>6} {:>8} {:>8} {:>9} {:>9}   Run p50 per round",
        "network", "mode", "Run p50", "Run p99", "Stop p50", "Stop p99"
    );
    for (mode, par) in [("seq", 1), ("par", args.parallel)] {
        let mut all: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = vec![Default::default(); ROLES.len()];
        for r in 0..args.rounds {
            // The roles take turns, each starting a round in turn: the
            // node's state (namespaces still being torn down by the kernel)
            // weighs on every role alike.
            for k in 0..ROLES.len() {
                let i = (r + k) % ROLES.len();
                let ctr = &nodes[i].1;
                let (mut runs, stops) = round(&rt, ctr, args.pods, par, &format!("{mode}{r}"), &logs)?;
                all[i].2.push(pct(&mut runs, 0.5));
                all[i].0.extend(runs);
                all[i].1.extend(stops);
            }
        }
        let mut p50 = Vec::new();
        for (role, (runs, stops, rounds)) in ROLES.iter().zip(all.iter_mut()) {
            let (r50, r99) = (pct(runs, 0.5), pct(runs, 0.99));
            let (s50, s99) = (pct(stops, 0.5), pct(stops, 0.99));
            let per: Vec<String> = rounds.iter().map(|v| format!("{v:.1}")).collect();
            let m = if par == 1 {
                "seq".to_string()
            } else {
                format!("{par} par")
            };
            println!(
                "{:<44} {:>6} {:>8.1} {:>8.1} {:>9.1} {:>9.1}   {}",
                role.name(),
                m,
                r50,
                r99,
                s50,
                s99,
                per.join(" / ")
            );
            p50.push((r50, r99, s50));
        }
        for (i, role) in ROLES.iter().enumerate().skip(1) {
            println!(
                "  {:<42} {:>6} {:>7.2}x {:>7.2}x {:>8.2}x   (ratio to the reference plugins)",
                role.name(),
                mode,
                p50[i].0 / p50[0].0,
                p50[i].1 / p50[0].1,
                p50[i].2 / p50[0].2
            );
        }
    }
    drop(nodes);
    Ok(())
}
