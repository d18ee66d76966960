//! The datapath benchmark: one table, everything measured in the same run.
//!
//!     sudo target/release/bench-datapath
//!
//! 1. Per-packet cost of `sl_egress` / `sl_ingress` through BPF_PROG_TEST_RUN
//!    (the kernel's own timing of one run), with 1 to 100,000 Services
//!    loaded. Every sample goes to a Service drawn at random among those
//!    loaded, so a bigger table shows its cache misses. The counts run in
//!    rounds, one after the other in each, so drift hits them alike.
//! 2. TCP connection rate (connect, request, response, close) from a pod to
//!    a VIP in the simulated VPC, with 1 to 100,000 Services, beside the
//!    same client calling the backend pod directly with no datapath (the
//!    limit) and through kube-proxy-shaped rulesets for the same Services:
//!    iptables mode (iptables-nft and iptables-legacy) and nftables mode.
//!    The modes run round-robin, so drift hits them alike. Then the CPU
//!    a connection costs with everything pinned to one CPU, and what each
//!    mode adds to the direct one: the datapath's whole share, not only
//!    its programs' run time (printed after it, from the kernel's
//!    statistics).
//! 3. Time to add one Service with 3 backends to 100,000 existing ones:
//!    sluice's map writes beside `iptables-restore --noflush` and `nft -f`.
//! 4. Memory per Service, backend and conntrack entry (the kernel's own
//!    accounting of each map, before and after).

mod connections;
mod inserts;
mod packets;
mod report;

use connections::*;
use inserts::*;
use packets::*;

use anyhow::{Context, Result, ensure};
use aya::programs::SchedClassifier;
use clap::Parser;
use serde_json::json;
use sluice_integration::bench::{
    self, ACK, CrrServer, ProgramTime, Rng, SYN, SYN_ACK, TC_ACT_OK, TC_ACT_REDIRECT, connection_rate, exec_in,
    exec_within, generated, pct, run, spec, tcp_frame as frame,
};
use sluice_integration::kube_proxy::{self, Service};
use sluice_integration::vpc::{Vpc, result_ip};
use sluice_tc_datapath::config::{DatapathConfig, TableSizes};
use sluice_tc_datapath::layout::{Direction, Reason};
use sluice_tc_datapath::loader::{self, EGRESS, INGRESS};
use sluice_tc_datapath::maps::Maps;
use sluice_tc_datapath::maps::endpoints::Endpoint;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Service counts for the per-packet cost.
    #[arg(long, value_delimiter = ',', default_value = "1,1000,10000,100000")]
    packet_services: Vec<usize>,
    /// Service counts for the connection rate.
    #[arg(long, value_delimiter = ',', default_value = "1,10000,100000")]
    conn_services: Vec<usize>,
    /// Program runs per per-packet cell.
    #[arg(long, default_value_t = 20_000)]
    samples: usize,
    /// Rounds the per-packet runs are split into, every Service count in
    /// turn within a round.
    #[arg(long, default_value_t = 5)]
    packet_rounds: usize,
    /// Seconds per connection-rate measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds of the connection-rate modes (the median is reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Rounds of the pass with everything on one CPU, every mode in turn
    /// in each (the medians and the per-round differences are reported).
    #[arg(long, default_value_t = 9)]
    cpu_rounds: usize,
    /// Seconds per mode and round of that pass.
    #[arg(long, default_value_t = 1.0)]
    cpu_seconds: f64,
    /// Client threads for the connection rate.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Seconds a kube-proxy ruleset may take to load; a mode that takes
    /// longer is reported as not measured at that size.
    #[arg(long, default_value_t = 300)]
    load_budget: u64,
    /// Service insertions timed for sluice (iptables and nft: a tenth).
    #[arg(long, default_value_t = 200)]
    inserts: usize,
    /// Only the per-packet cost and the memory (part 1 and 4): a minute
    /// instead of twelve, for working on the programs.
    #[arg(long)]
    packets_only: bool,
    /// The per-connection tables' sizes, as the network's
    /// `datapath.tables` gives them (JSON), e.g. '{"conntrack": 65536}';
    /// the defaults when not given.
    #[arg(long, value_parser = bench::tables_arg)]
    tables: Option<sluice_tc_datapath::config::TableSizes>,
}

const CLUSTER_CIDR: &str = "10.244.0.0/16";

struct PacketRow {
    services: usize,
    /// p50 ns of egress new, egress established, ingress reply: every
    /// packet to one Service (the middle one) among those loaded.
    one: [f64; 3],
    /// The same, every packet to a Service drawn at random.
    spread: [f64; 3],
    /// p50 ns of egress and ingress traffic that is no Service's.
    plain: [f64; 2],
}

struct Memory {
    per_service: f64,
    per_backend: f64,
    ct_entry: f64,
    ct_entries: u64,
    fixed: u64,
    /// The VIP address filter (an array, always whole).
    filters: u64,
}

struct Bench<'a> {
    egress: &'a SchedClassifier,
    ingress: &'a SchedClassifier,
    clients: Vec<Ipv4Addr>,
    samples: usize,
    buf: Vec<u8>,
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Direct,
    SluicePodIp,
    Sluice,
    IptablesNft,
    IptablesLegacy,
    Nftables,
}

/// A client pod and its server pod for one mode.
struct Pair {
    mode: Mode,
    client: usize,
    server_ip: Ipv4Addr,
    _server: CrrServer,
}

const MEASURED_VIP: Ipv4Addr = Ipv4Addr::new(10, 95, 0, 1);
const PORTS: [u16; 3] = [8080, 8081, 8082];

struct ConnRow {
    services: usize,
    /// Median connections/s per mode, in `Mode::ALL` order.
    rate: Vec<f64>,
    failed: u64,
    load_secs: Vec<f64>,
    /// The sluice modes' program time per connection.
    programs: Vec<(Mode, ProgramTime)>,
    /// One CPU's time per connection per mode, everything pinned to that
    /// CPU (NaN: not measured).
    cpu: CpuCost,
}

/// µs of one CPU per connection, per mode in `Mode::ALL` order.
struct CpuCost {
    /// The CPU everything ran on.
    cpu: usize,
    /// The median over the rounds.
    median: Vec<f64>,
    /// The median, over the rounds, of the mode's figure less the direct
    /// mode's in the same round; its lowest and highest.
    added: Vec<(f64, f64, f64)>,
}

struct Inserts {
    /// (label, p50 µs, p99 µs, count)
    rows: Vec<(&'static str, f64, f64, usize)>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    ensure!(
        args.rounds >= 1 && args.cpu_rounds >= 1,
        "--rounds and --cpu-rounds: at least 1"
    );
    sluice_integration::bench::require_root("bench-datapath")?;
    for tool in ["iptables-nft-restore", "iptables-legacy-restore", "nft"] {
        ensure!(
            std::process::Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .output()?
                .status
                .success(),
            "{tool} missing: run scripts/install-deps"
        );
    }
    let (packet_rows, memory) = per_packet(&args)?;
    if args.packets_only {
        report::report_packets(&args, &packet_rows, &memory);
        return Ok(());
    }
    let (conn_rows, inserts) = connection_benchmark(&args)?;
    report::report(&args, &packet_rows, &memory, &conn_rows, &inserts);
    Ok(())
}
