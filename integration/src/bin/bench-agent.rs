//! The agent benchmark: one report, everything measured in the same run.
//!
//!     target/release/bench-agent
//!
//! 1. Full initial sync of N Services with 3 endpoints each (manifests in
//!    files of 100 Services with their EndpointSlices): from starting the
//!    `sluice-agent` binary to its first sync written, and its own
//!    translation-and-write time; beside `iptables-restore` of the
//!    equivalent kube-proxy ruleset (iptables-nft and iptables-legacy), in a
//!    namespace of its own.
//! 2. Time from a manifest change (one endpoint of one Service removed or
//!    added again, the file rewritten atomically) to the map entry that
//!    shows it, p50/p99, with the N Services loaded.
//! 3. Whole-table work on a full conntrack table: a collection pass's read
//!    of it (the agent's GC), and the agent's resize (`datapath.tables`):
//!    the copy into a table twice the size, then the late carry (every key
//!    already there). By the batch map syscalls against one entry at a
//!    time (aya's iterator for the read, as the agent read it before; the
//!    element commands a kernel without batches gets for the resize),
//!    alternating, per round.

use anyhow::{Context, Result, ensure};
use aya::maps::{HashMap, MapData};
use clap::Parser;
use sluice_integration::agent::{AgentProcess, log_field};
use sluice_integration::bench::{self, Rng, pct};
use sluice_integration::bpffs::Bpffs;
use sluice_integration::kube_proxy::{self, Service};
use sluice_integration::netns::Netns;
use sluice_tc_datapath::attach::Node;
use sluice_tc_datapath::config::DatapathConfig;
use sluice_tc_datapath::config::TableSizes;
use sluice_tc_datapath::layout::{CT_SERVICE, CtKey, CtValue, PROTO_TCP, addr};
use sluice_tc_datapath::loader::versioned_dir;
use sluice_tc_datapath::maps::Maps;
use sluice_tc_datapath::migrate::{self, Syscalls};
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Services in the cluster.
    #[arg(long, default_value_t = 10_000)]
    services: usize,
    /// Manifest changes timed.
    #[arg(long, default_value_t = 100)]
    changes: usize,
    /// Conntrack entries the resize copies (0: no resize timed).
    #[arg(long, default_value_t = 262_144)]
    resize_entries: u32,
    /// Rounds of the resize, each way.
    #[arg(long, default_value_t = 3)]
    resize_rounds: usize,
}

const PER_FILE: usize = 100;
const CLUSTER_CIDR: &str = "10.244.0.0/16";

/// Service `i`: VIP 10.96.0.0 + i + 1, port 80/TCP, endpoints
/// 10.128.0.0 + 3i + j + 1 on 8080 (the ruleset kube-proxy gets is the same).
fn service(i: usize) -> Service {
    let vip = Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 0)) + i as u32 + 1);
    let endpoints = (0..3)
        .map(|j| {
            (
                Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 128, 0, 0)) + 3 * i as u32 + j + 1),
                8080,
            )
        })
        .collect();
    Service {
        vip,
        port: 80,
        endpoints,
    }
}

/// The manifests of Services `first..first + PER_FILE`; `short` names one
/// whose third endpoint is left out.
fn file_text(first: usize, n: usize, short: Option<usize>) -> String {
    let mut t = String::new();
    for i in first..(first + PER_FILE).min(n) {
        let s = service(i);
        t.push_str(&format!(
            "apiVersion: v1\nkind: Service\nmetadata: {{name: s{i}, namespace: bench}}\n\
             spec:\n  clusterIP: {}\n  ports: [{{name: http, port: 80, targetPort: 8080}}]\n---\n\
             apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\n\
             metadata:\n  name: s{i}-1\n  namespace: bench\n  labels: {{kubernetes.io/service-name: s{i}}}\n\
             addressType: IPv4\nports: [{{name: http, port: 8080, protocol: TCP}}]\nendpoints:\n",
            s.vip
        ));
        let keep = if short == Some(i) { 2 } else { 3 };
        for (a, _) in s.endpoints.iter().take(keep) {
            t.push_str(&format!("- addresses: [{a}]\n"));
        }
        t.push_str("---\n");
    }
    t
}

fn write_file(dir: &Path, first: usize, n: usize, short: Option<usize>) -> Result<()> {
    let tmp = dir.join(format!(".s{first:06}.tmp"));
    let mut f = std::fs::File::create(&tmp)?;
    f.write_all(file_text(first, n, short).as_bytes())?;
    drop(f);
    std::fs::rename(&tmp, dir.join(format!("s{first:06}.yaml")))?;
    Ok(())
}

fn active(maps: &Maps, i: usize) -> u16 {
    maps.lb()
        .service(IpAddr::V4(service(i).vip), 80, PROTO_TCP)
        .ok()
        .flatten()
        .map_or(0, |v| v.count)
}

fn main() -> Result<()> {
    let args = Args::parse();
    bench::require_root("bench-agent")?;
    ensure!(
        args.services > 0 && args.changes > 0,
        "--services and --changes must be positive"
    );
    let work = tempfile::tempdir()?;
    if let Ok(keep) = std::env::var("BENCH_AGENT_LOG") {
        eprintln!(
            "agent log: {}/agent.log (copied to {keep} at the end)",
            work.path().display()
        );
    }
    let dir = work.path().join("manifests");
    std::fs::create_dir(&dir)?;
    for first in (0..args.services).step_by(PER_FILE) {
        write_file(&dir, first, args.services, None)?;
    }
    let fs = Bpffs::new("ba")?;
    let root = fs.root();
    let cfg = DatapathConfig {
        bpffs: root.clone(),
        tables: TableSizes {
            conntrack: args.resize_entries.max(TableSizes::default().conntrack),
            ..Default::default()
        },
        ..Default::default()
    };
    Node::open(&cfg).context("loading the datapath")?;
    let mut maps = Maps::open_pinned(&versioned_dir(&root))?;

    // 1. Initial sync, then kube-proxy's restore of the same Services.
    let started = Instant::now();
    let mut agent = AgentProcess::start(&dir, &root, "bench-node", &work.path().join("agent.log"))?;
    let synced = agent.wait_synced(1, Duration::from_secs(600))?;
    let initial = started.elapsed();
    let sync_ms: f64 = log_field(&synced[0], "sync_ms")
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN);
    let writes = log_field(&synced[0], "writes").unwrap_or("?").to_string();
    ensure!(
        (0..args.services).step_by(997).all(|i| active(&maps, i) == 3),
        "not every Service is in the maps after the first sync"
    );
    eprintln!("initial sync done: {initial:?}");
    let restore = restores(args.services)?;

    // 2. One endpoint of one Service, out and back in.
    let (mut lat, mut since_event) = changes(&args, &dir, &maps, &mut agent)?;
    drop(agent);
    if let Ok(keep) = std::env::var("BENCH_AGENT_LOG") {
        std::fs::copy(work.path().join("agent.log"), keep)?;
    }

    // 3. With the agent gone: nothing else writes the table.
    let resize = if args.resize_entries > 0 {
        Some(resizes(&args, &root, &mut maps)?)
    } else {
        None
    };

    report(
        &args,
        Initial {
            took: initial,
            sync_ms,
            writes,
        },
        &restore,
        &mut lat,
        &mut since_event,
    );
    if let Some(r) = resize {
        r.report(&args);
    }
    Ok(())
}

/// Seconds per round of each step, by each kind of syscalls.
struct Resizes {
    entries: usize,
    /// [step][how]: read, remake, late carry; batched, per entry.
    took: [[Vec<f64>; 2]; 3],
}

const HOWS: [Syscalls; 2] = [Syscalls::Batched, Syscalls::PerEntry];

/// Fill the node's conntrack table, then remake it at twice its size and
/// carry the late entries (none: every key is there), each way, the order
/// alternating by round.
fn resizes(args: &Args, root: &Path, maps: &mut Maps) -> Result<Resizes> {
    for i in 0..args.resize_entries {
        let key = CtKey {
            saddr: addr(IpAddr::V4(Ipv4Addr::from(0x0af4_0000 + (i >> 12)))),
            daddr: addr(IpAddr::V4(Ipv4Addr::new(10, 96, 0, 1))),
            sport: (1024 + (i & 0xfff) as u16).to_be(),
            dport: 80u16.to_be(),
            proto: PROTO_TCP,
            kind: CT_SERVICE,
            pad0: 0,
        };
        let value = CtValue {
            expires_ns: u64::MAX / 2,
            backend_id: i,
            ..Default::default()
        };
        maps.ct_mut().insert(key, value)?;
    }
    let pin = versioned_dir(root).join("maps").join("sl_ct");
    let copy = root.join("bench-resized");
    let mut out = Resizes {
        entries: maps.ct().entries()?.len(),
        took: Default::default(),
    };
    for round in 0..args.resize_rounds {
        for k in 0..2 {
            let w = (k + round) % 2;
            let how = HOWS[w];
            let t = Instant::now();
            let read = match how {
                Syscalls::Batched => maps.ct().entries()?.len(),
                Syscalls::PerEntry => {
                    let m: HashMap<MapData, CtKey, CtValue> =
                        HashMap::try_from(aya::maps::Map::LruHashMap(MapData::from_pin(&pin)?))?;
                    m.iter().filter(Result::is_ok).count()
                }
            };
            out.took[0][w].push(t.elapsed().as_secs_f64());
            ensure!(read == out.entries, "{how:?}: {read} of {} entries read", out.entries);
            let t = Instant::now();
            let copied = migrate::remake_with(&pin, "sl_ct", 2 * args.resize_entries.max(4096), &copy, how)?;
            out.took[1][w].push(t.elapsed().as_secs_f64());
            ensure!(
                copied == out.entries,
                "{how:?}: {copied} of {} entries copied",
                out.entries
            );
            let t = Instant::now();
            let late = migrate::carry_new_with(&pin, &copy, "sl_ct", how)?;
            out.took[2][w].push(t.elapsed().as_secs_f64());
            ensure!(late == 0, "{how:?}: {late} entries carried late, none were new");
            std::fs::remove_file(&copy)?;
        }
        eprintln!("resize round {} done", round + 1);
    }
    Ok(out)
}

impl Resizes {
    fn report(mut self, args: &Args) {
        println!();
        println!(
            "3. whole-table work on a conntrack table of {} entries (the resize into one of {}), s, {} rounds each way (median, min-max)",
            self.entries,
            2 * args.resize_entries.max(4096),
            args.resize_rounds
        );
        println!(
            "{:>40} | {:>18} | {:>18} | {:>10}",
            "", "batched", "entry by entry", "batched / entry by entry"
        );
        let steps = [
            "a collection pass's read of the table",
            "resize: copy into the new table",
            "resize: late carry (no key new)",
        ];
        for (step, name) in steps.iter().enumerate() {
            let mut cells = Vec::new();
            let mut medians = [0.0; 2];
            for (w, m) in medians.iter_mut().enumerate() {
                let v = &mut self.took[step][w];
                *m = pct(v, 0.5);
                let (lo, hi) = (pct(v, 0.0), pct(v, 1.0));
                cells.push(format!("{m:.3} ({lo:.3}-{hi:.3})"));
            }
            println!(
                "{name:>40} | {:>18} | {:>18} | {:>10.3}",
                cells[0],
                cells[1],
                medians[0] / medians[1]
            );
        }
    }
}

/// The first sync, as the agent logged it.
struct Initial {
    took: Duration,
    sync_ms: f64,
    writes: String,
}

/// kube-proxy's restore of the same Services, with each iptables tool.
fn restores(n: usize) -> Result<Vec<(&'static str, Duration)>> {
    let services: Vec<Service> = (0..n).map(service).collect();
    let ruleset = kube_proxy::iptables_restore(&services, CLUSTER_CIDR);
    let mut restore = Vec::new();
    for tool in ["iptables-nft-restore", "iptables-legacy-restore"] {
        let ns = Netns::new(&format!("sl{}ba", std::process::id()))?;
        let t = Instant::now();
        let mut child = ns
            .cmd(tool)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .with_context(|| format!("{tool} (scripts/install-deps installs it)"))?;
        child.stdin.take().context("stdin")?.write_all(ruleset.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(out.status.success(), "{tool}: {}", String::from_utf8_lossy(&out.stderr));
        restore.push((tool, t.elapsed()));
        eprintln!("{tool} done: {:?}", t.elapsed());
    }

    Ok(restore)
}

/// Latency of each manifest change to its map entry, and the agent's own
/// event-to-sync time, in ms.
fn changes(args: &Args, dir: &Path, maps: &Maps, agent: &mut AgentProcess) -> Result<(Vec<f64>, Vec<f64>)> {
    let mut rng = Rng(0xa6e7_5eed);
    let mut lat = Vec::with_capacity(args.changes);
    let mut since_event = Vec::with_capacity(args.changes);
    for k in 0..args.changes {
        let i = rng.below(args.services);
        let first = i / PER_FILE * PER_FILE;
        for (short, want) in [(Some(i), 2), (None, 3)] {
            let t = Instant::now();
            write_file(dir, first, args.services, short)?;
            while active(maps, i) != want {
                ensure!(
                    t.elapsed() < Duration::from_secs(10),
                    "change {k}: not in the maps after 10 s"
                );
                std::thread::sleep(Duration::from_micros(200));
            }
            lat.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let lines = agent.wait_synced(2 * (k + 1) + 1, Duration::from_secs(10))?;
        for l in &lines[lines.len() - 2..] {
            if let Some(v) = log_field(l, "since_event_ms").and_then(|v| v.parse::<f64>().ok()) {
                since_event.push(v);
            }
        }
    }
    Ok((lat, since_event))
}

fn report(args: &Args, initial: Initial, restore: &[(&str, Duration)], lat: &mut Vec<f64>, since_event: &mut Vec<f64>) {
    let Initial {
        took: initial,
        sync_ms,
        writes,
    } = initial;
    bench::print_machine("agent");
    println!(
        "1. initial sync of {} Services with 3 endpoints each ({} manifest files)",
        args.services,
        args.services.div_ceil(PER_FILE)
    );
    println!("{:>40} | {:>10}", "", "seconds");
    println!(
        "{:>40} | {:>10.2}",
        "sluice-agent: start to first sync",
        initial.as_secs_f64()
    );
    println!("{:>40} | {:>10.2}", "  of which translate + map writes", sync_ms / 1e3);
    for (tool, t) in restore {
        println!("{:>40} | {:>10.2}", format!("{tool} (same Services)"), t.as_secs_f64());
    }
    let best = restore.iter().map(|r| r.1.as_secs_f64()).fold(f64::INFINITY, f64::min);
    println!(
        "   sluice / fastest iptables-restore: {:.2} ({writes} map entries written)",
        initial.as_secs_f64() / best
    );
    println!();
    println!(
        "2. a manifest change (one endpoint out or in) to its map entry, ms, {} changes, {} Services loaded",
        lat.len(),
        args.services
    );
    println!("{:>40} | {:>8} {:>8}", "", "p50", "p99");
    let p = |v: &mut Vec<f64>| (pct(v, 0.5), pct(v, 0.99));
    let (a, b) = p(lat);
    println!("{:>40} | {a:>8.1} {b:>8.1}", "file written -> map entry");
    if !since_event.is_empty() {
        let (a, b) = p(since_event);
        println!("{:>40} | {a:>8.1} {b:>8.1}", "agent: file event -> sync done");
    }
}
