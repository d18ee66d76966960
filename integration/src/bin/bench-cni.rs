//! ADD/DEL latency of the sluice main role (macvlan + built-in IPAM) beside
//! Debian's reference `macvlan` + `host-local`, measured in the same run, on
//! the same simulated node, sequentially and with 8 calls in parallel.
//!
//!     cargo run --release -p sluice-integration --bin bench-cni -- --pods 200
//!
//! Both plugins are exec'd directly from this process (which sits in the node
//! namespace), so neither pays for `ip netns exec`.

use anyhow::{Context, Result, bail};
use clap::Parser;
use serde_json::{Value, json};
use sluice_integration::cni::exec_timed;
use sluice_integration::netns::Netns;
use sluice_integration::vpc::Vpc;
use sluice_tc_datapath::attach::{Node, Promotion};
use sluice_tc_datapath::pin;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Parser)]
struct Args {
    /// Pods per run (each run creates and deletes this many).
    #[arg(long, default_value_t = 200)]
    pods: usize,
    /// Concurrent calls in the parallel runs.
    #[arg(long, default_value_t = 8)]
    parallel: usize,
    /// How sluice attaches its datapath: auto (the default: clsact filters
    /// at ADD, TCX links made later by the agent), tcx (links at ADD), tc
    /// (clsact), or off.
    #[arg(long, default_value = "auto")]
    attach: String,
    /// With auto: move every sluice pod onto TCX links before the DELs, as
    /// the agent does once the node is quiet (the DEL of a pod that lived).
    #[arg(long)]
    links_before_del: bool,
    /// With --links-before-del: DEL as with no agent running (it deletes
    /// the interface and its links itself). By default this process holds
    /// the reaper's lock as the agent does, so a DEL leaves them for it,
    /// and reaps them after each run's DELs (timed apart).
    #[arg(long, requires = "links_before_del")]
    no_reaper: bool,
    /// Where `sluice` and `sluice-ipam` are (default: next to this binary);
    /// `target/cni-static/release` for the static pair `scripts/build-cni`
    /// makes, as the image ships it.
    #[arg(long)]
    cni_bin_dir: Option<PathBuf>,
}

struct Plugin {
    label: &'static str,
    bin: PathBuf,
    conf: Vec<u8>,
}

fn call(p: &Plugin, cmd: &str, cid: &str, netns: &Path, cni_path: &str) -> Result<Duration> {
    let (took, _) = exec_timed(&p.bin, cmd, cid, netns, cni_path, &p.conf).with_context(|| p.label)?;
    Ok(took)
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn mean_ms(v: &[Duration]) -> f64 {
    v.iter().map(Duration::as_secs_f64).sum::<f64>() / v.len() as f64 * 1e3
}

/// The 1-ms bins holding at least a tenth of `v`, most populated first:
/// "24 ms 61%, 27 ms 22%".
fn modes(v: &[Duration]) -> String {
    let mut bins = std::collections::BTreeMap::<u128, usize>::new();
    for d in v {
        *bins.entry(d.as_millis()).or_default() += 1;
    }
    let mut top: Vec<(u128, usize)> = bins.into_iter().filter(|&(_, n)| n * 10 >= v.len()).collect();
    top.sort_by_key(|&(_, n)| std::cmp::Reverse(n));
    let parts: Vec<String> = top
        .iter()
        .map(|(ms, n)| format!("{ms} ms {}%", n * 100 / v.len()))
        .collect();
    if parts.is_empty() {
        "(spread: no bin holds 10%)".to_string()
    } else {
        parts.join(", ")
    }
}

/// What runs between the ADDs and the DELs: the pods, their container ids.
type BeforeDel<'a> = &'a dyn Fn(&[Netns], &[String]) -> Result<()>;

/// ADD every pod, then DEL every pod, `par` calls at a time; `before_del`
/// runs in between (untimed), given the pods and their container ids.
fn run(
    p: &Plugin,
    pods: &[Netns],
    par: usize,
    cni_path: &str,
    tag: &str,
    before_del: BeforeDel<'_>,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let mut adds = Vec::new();
    let mut dels = Vec::new();
    for (cmd, sink) in [("ADD", &mut adds), ("DEL", &mut dels)] {
        if cmd == "DEL" {
            let ids: Vec<String> = (0..pods.len()).map(|i| format!("{tag}{i}")).collect();
            before_del(pods, &ids)?;
        }
        let chunk = pods.len().div_ceil(par);
        let results: Vec<Result<Vec<Duration>>> = std::thread::scope(|s| {
            let hs: Vec<_> = pods
                .chunks(chunk)
                .enumerate()
                .map(|(ci, c)| {
                    s.spawn(move || {
                        c.iter()
                            .enumerate()
                            .map(|(i, ns)| call(p, cmd, &format!("{tag}{}", ci * chunk + i), &ns.path(), cni_path))
                            .collect::<Result<Vec<_>>>()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().expect("worker")).collect()
        });
        for r in results {
            sink.extend(r?);
        }
    }
    Ok((adds, dels))
}

/// sluice as configured, and the reference plugins, on the node's eth0.
fn plugins(args: &Args, vpc: &Vpc, bins: &Path) -> Result<(Plugin, Plugin)> {
    let ranges = json!([[{"subnet": "10.244.0.0/16", "rangeStart": "10.244.1.2", "rangeEnd": "10.244.4.250", "gateway": "10.244.0.1"}]]);
    let mk = |v: Value| serde_json::to_vec(&v).unwrap();
    let mut datapath = vpc.datapath(0);
    match args.attach.as_str() {
        "off" => datapath["enabled"] = json!(false),
        "auto" | "tcx" | "tc" => datapath["attach"] = json!(args.attach),
        other => anyhow::bail!("--attach {other}: expected auto, tcx, tc or off"),
    }
    let sluice = Plugin {
        label: "sluice (macvlan, sluice-ipam)",
        bin: bins.join("sluice"),
        conf: mk(json!({"cniVersion": "1.0.0", "name": "bench-sluice", "type": "sluice",
            "link": {"kind": "macvlan", "parent": "eth0"},
            "ipam": {"type": "sluice-ipam", "ranges": ranges, "routes": [{"dst": "0.0.0.0/0"}], "dataDir": vpc.data_dir.join("sluice-ipam")},
            "dataDir": vpc.data_dir.join("sluice"), "datapath": datapath})),
    };
    let reference = Plugin {
        label: "reference macvlan + host-local",
        bin: PathBuf::from("/usr/lib/cni/macvlan"),
        conf: mk(
            json!({"cniVersion": "1.0.0", "name": "bench-ref", "type": "macvlan", "master": "eth0", "mode": "bridge",
            "ipam": {"type": "host-local", "ranges": ranges, "routes": [{"dst": "0.0.0.0/0"}], "dataDir": vpc.data_dir.join("host-local")}}),
        ),
    };

    Ok((sluice, reference))
}

fn main() -> Result<()> {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        bail!("bench-cni needs root (network namespaces)");
    }
    for p in ["/usr/lib/cni/macvlan", "/usr/lib/cni/host-local"] {
        if !Path::new(p).is_file() {
            bail!("{p} missing: apt-get install containernetworking-plugins");
        }
    }
    let bins = match &args.cni_bin_dir {
        Some(dir) => std::fs::canonicalize(dir).with_context(|| format!("--cni-bin-dir {}", dir.display()))?,
        None => std::env::current_exe()?.parent().unwrap().to_path_buf(),
    };
    for b in ["sluice", "sluice-ipam"] {
        anyhow::ensure!(bins.join(b).is_file(), "{} missing", bins.join(b).display());
    }
    println!("CNI binaries: {}", bins.display());
    let cni_path = format!("{}:/usr/lib/cni", bins.display());
    let vpc = Vpc::new("bc", 1)?;
    let pods: Vec<Netns> = (0..args.pods)
        .map(|i| Netns::new(&format!("{}-p{i}", vpc.prefix)))
        .collect::<Result<_>>()?;
    let (sluice, reference) = plugins(&args, &vpc, &bins)?;

    // From here on this process lives in the node namespace, like a runtime on that node.
    let node = std::fs::File::open(vpc.nodes[0].path())?;
    nix::sched::setns(&node, nix::sched::CloneFlags::CLONE_NEWNET)?;

    // Warm caches (binaries, dentries) for both before measuring.
    let nothing = |_: &[Netns], _: &[String]| Ok(());
    for p in [&sluice, &reference] {
        run(p, &pods[..pods.len().min(4)], 1, &cni_path, "warm", &nothing)?;
    }
    let root = vpc.bpffs[0].root();
    let to_links = |pods: &[Netns], ids: &[String]| -> Result<()> {
        for (ns, id) in pods.iter().zip(ids) {
            let f = std::fs::File::open(ns.path())?;
            let mut node = Node::open_exclusive(&root)?;
            let done = node.promote(f.as_fd(), "eth0", &pin::link_key(id, "eth0"))?;
            anyhow::ensure!(done == Promotion::Promoted, "{id}: {done:?}");
        }
        Ok(())
    };
    let sluice_data = vpc.data_dir.join("sluice");
    let reaper = if args.links_before_del && !args.no_reaper {
        println!(
            "(this process holds the reaper's lock as the agent does: a DEL leaves a pod's interface on links to it)"
        );
        Some(sluice_tc_datapath::attach::retire::hold_reaper(&sluice_data)?)
    } else {
        None
    };
    let mut reaps = Vec::new();
    let sluice_before_del: BeforeDel<'_> = if args.links_before_del {
        anyhow::ensure!(args.attach == "auto", "--links-before-del goes with --attach auto");
        println!("(sluice's pods moved onto TCX links before the DELs, untimed)");
        &to_links
    } else {
        &nothing
    };
    println!("CNI ADD/DEL latency, {} pods per run, ms (lower is better)", args.pods);
    println!(
        "{:<34} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "plugin", "mode", "ADD p50", "ADD p99", "DEL p50", "DEL p99", "DEL mean"
    );
    let mut table = Vec::new();
    let mut del_modes = Vec::new();
    for (mode, par) in [("seq", 1), ("par", args.parallel)] {
        let mut row = Vec::new();
        for p in [&sluice, &reference] {
            let before_del = if std::ptr::eq(p, &sluice) {
                sluice_before_del
            } else {
                &nothing
            };
            let (mut a, mut d) = run(p, &pods, par, &cni_path, mode, before_del)?;
            if std::ptr::eq(p, &sluice) && reaper.is_some() {
                // The agent's share, once the node is quiet: untimed by
                // the DELs above, timed here.
                let pending = sluice_agent::reap::pending(&sluice_data);
                let t = std::time::Instant::now();
                for (file, r) in &pending {
                    sluice_agent::reap::reap(file, r)?;
                }
                reaps.push((mode, pending.len(), t.elapsed()));
            }
            let s = [
                pct(&mut a, 0.5),
                pct(&mut a, 0.99),
                pct(&mut d, 0.5),
                pct(&mut d, 0.99),
                mean_ms(&d),
            ];
            let m = if par == 1 {
                "seq".to_string()
            } else {
                format!("{par} par")
            };
            println!(
                "{:<34} {:>9} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
                p.label, m, s[0], s[1], s[2], s[3], s[4]
            );
            if par == 1 {
                del_modes.push((p.label, modes(&d)));
            }
            row.push(s);
        }
        table.push((mode, row));
    }
    println!();
    println!("ratio sluice/reference (below 1.0: sluice faster; target ADD p50 <= 0.50)");
    for (mode, row) in &table {
        let r: Vec<String> = (0..5).map(|i| format!("{:.2}", row[0][i] / row[1][i])).collect();
        println!(
            "{:<34} {:>9} {:>8} {:>8} {:>8} {:>8} {:>8}",
            "", mode, r[0], r[1], r[2], r[3], r[4]
        );
    }
    for (mode, n, took) in &reaps {
        println!(
            "{mode}: the agent's reap after the DELs: {n} interfaces in {:.0} ms, {:.2} ms each (off the DEL's path)",
            took.as_secs_f64() * 1e3,
            took.as_secs_f64() * 1e3 / (*n).max(1) as f64
        );
    }
    // A link's removal waits on the kernel's tick (RCU grace periods, the
    // device's last references): DEL times bunch a tick apart, and a p50
    // can land on either side of a step for either plugin.
    println!();
    println!("sequential DEL, ms: the 1-ms bins holding 10% of the calls or more");
    for (label, m) in &del_modes {
        println!("{label:<34} {m}");
    }
    for (mode, row) in &table {
        let ratio = row[0][0] / row[1][0];
        println!(
            "ADD p50 {mode}: {ratio:.2}x the reference -> {}",
            if ratio <= 0.5 { "target met" } else { "target MISSED" }
        );
    }
    for (mode, row) in &table {
        let (p50, mean) = (row[0][2] / row[1][2], row[0][4] / row[1][4]);
        println!(
            "DEL {mode}: p50 {p50:.2}x, mean {mean:.2}x the reference -> {}",
            if p50 <= 1.1 && mean <= 1.1 {
                "target (1.1) met"
            } else {
                "target (1.1) MISSED"
            }
        );
    }
    Ok(())
}
