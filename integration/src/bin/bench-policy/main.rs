//! The network-policy benchmark: one report, everything measured in the
//! same run.
//!
//!     target/release/bench-policy
//!
//! 1. Per-packet cost of `sl_ingress` / `sl_egress` (BPF_PROG_TEST_RUN, the
//!    kernel's timing of each run) at a pod isolated in both directions by
//!    N allow rules per direction, beside the same pod with no policy (the
//!    "0 rules" row: no rule can be looked up, the baseline). Every new
//!    flow comes from a peer and port drawn at random among the rules, so a
//!    bigger trie shows its cache misses; denied SYNs are timed too.
//! 2. TCP connection rate (connect, request, response, close) between two
//!    pods in the simulated VPC, the server isolated for ingress and the
//!    client for egress by a policy allowing the connection among 10,000
//!    other rules each, beside the same two pods with no policy; the modes
//!    alternate round by round.
//! 3. Time to apply one policy change that touches 1,000 endpoints of a
//!    node (translation of the whole cluster's objects, then the map writes
//!    of the difference), beside the full sync of the same state.

mod apply;
mod connections;
mod packets;
mod report;

use apply::*;
use connections::*;
use packets::*;

use anyhow::{Context, Result, ensure};
use aya::maps::RingBuf;
use aya::programs::SchedClassifier;
use clap::Parser;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use serde_json::json;
use sluice_integration::bench::{
    self, ACK, CrrServer, ProgramTime, Rng, SYN, SYN_ACK, TC_ACT_OK, TC_ACT_SHOT, connection_rate, pct, run,
    tcp_frame as frame,
};
use sluice_integration::vpc::{Vpc, result_ip};
use sluice_policy::{NodeApplier, Translator};
use sluice_tc_datapath::config::DatapathConfig;
use sluice_tc_datapath::layout::{
    Direction, EpPolicyValue, ID_FIRST_ALLOCATED, POLICY_F_EGRESS, POLICY_F_INGRESS, PROTO_TCP, Reason,
};
use sluice_tc_datapath::loader::{self, EGRESS, INGRESS};
use sluice_tc_datapath::maps::endpoints::Endpoint;
use sluice_tc_datapath::maps::policy::{PortRange, Rule};
use sluice_tc_datapath::maps::{Maps, Source};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Allow rules per direction on the measured endpoint (0 = no policy).
    #[arg(long, value_delimiter = ',', default_value = "0,100,10000")]
    rules: Vec<usize>,
    /// Program runs per per-packet cell.
    #[arg(long, default_value_t = 20_000)]
    samples: usize,
    /// Rounds the per-packet runs are split into, every rule count in
    /// turn within a round.
    #[arg(long, default_value_t = 5)]
    packet_rounds: usize,
    /// Only the per-packet cost (part 1): seconds instead of minutes, for
    /// working on the programs.
    #[arg(long)]
    packets_only: bool,
    /// Rules per direction on each pod in the connection-rate policy mode.
    #[arg(long, default_value_t = 10_000)]
    conn_rules: usize,
    /// Seconds per connection-rate measurement.
    #[arg(long, default_value_t = 2.0)]
    seconds: f64,
    /// Rounds of each connection-rate mode (the median is reported).
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Client threads for the connection rate.
    #[arg(long, default_value_t = 4)]
    workers: usize,
    /// Pods of the node a policy change touches.
    #[arg(long, default_value_t = 1000)]
    endpoints: usize,
    /// Pods on other nodes (the rest of the cluster the translation reads).
    #[arg(long, default_value_t = 4000)]
    remote_pods: usize,
    /// Policy changes timed.
    #[arg(long, default_value_t = 20)]
    changes: usize,
}

/// Peers of the per-packet runs: one address and identity each.
const PEERS: usize = 1000;
/// A peer no rule names: its SYNs are the denied ones.
const STRANGER: Ipv4Addr = Ipv4Addr::new(10, 251, 0, 1);
const POLICY_ID: u32 = 7;

fn peer(k: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 250, (k / 256) as u8, (k % 256) as u8)
}

fn peer_identity(k: usize) -> u32 {
    ID_FIRST_ALLOCATED + k as u32
}

/// Rule `j` of a set: peers first, then ports, so that 100 rules are 100
/// peers on one port and 10,000 are 1,000 peers on 10 ports.
fn rule_flow(j: usize) -> (usize, u16) {
    (j % PEERS, 1000 + (j / PEERS) as u16)
}

/// Mostly one port each, as policies mostly are; one in a hundred is every
/// port of its peer and one a two-port range, so that the endpoint has
/// every kind of lookup (a flow such a rule allows tries the exact port
/// and the other kinds first).
fn rule(dir: Direction, j: usize) -> Rule {
    let (k, port) = rule_flow(j);
    Rule {
        dir,
        identity: peer_identity(k),
        proto: PROTO_TCP,
        ports: match j % 100 {
            98 => None,
            99 => Some(PortRange {
                first: port,
                last: port + 1,
            }),
            _ => Some(PortRange::one(port)),
        },
        policy: POLICY_ID,
    }
}

/// The endpoint entry isolating for `flags` with the kinds `rules` need.
fn isolated(identity: u32, flags: u8, rules: &[Rule]) -> EpPolicyValue {
    let mut kinds = [0u8; 2];
    for r in rules {
        kinds[r.dir as usize] |= r.kinds();
    }
    EpPolicyValue {
        identity,
        ingress_policy: POLICY_ID,
        egress_policy: POLICY_ID,
        flags,
        kinds,
        pad0: 0,
    }
}

/// p50 ns per cell; `denied` is None without a policy.
struct PacketRow {
    rules: usize,
    /// New flows in (SYN in) and out (SYN out), all to one rule among
    /// those loaded, then each to a rule drawn at random; then a reply
    /// (SYN-ACK out) and established packets in (ACK in) and out.
    cells: [f64; 7],
    denied: Option<f64>,
}

const CELLS: [&str; 7] = [
    "in new",
    "out new",
    "in new",
    "out new",
    "out reply",
    "in estab",
    "out estab",
];

const PORTS: [u16; 3] = [8080, 8081, 8082];

struct ConnResult {
    /// Median connections/s: no policy, policy.
    rate: [f64; 2],
    failed: u64,
    /// Rule-trie entries on the node in the policy mode.
    entries: usize,
    programs: [ProgramTime; 2],
}

/// The cluster of part 3: `endpoints` pods of this node in namespace
/// "shop" (20 apps), `remote` client pods elsewhere in 10 namespaces.
struct Cluster {
    namespaces: Vec<Namespace>,
    pods: Vec<Pod>,
    policies: Vec<NetworkPolicy>,
}

/// (translate µs, apply µs, written, removed) of one step.
type Step = (f64, f64, usize, usize);

struct ApplyResult {
    full: Step,
    /// Every change timed.
    changes: Vec<Step>,
    endpoints: usize,
    pods: usize,
    policies: usize,
}

fn main() -> Result<()> {
    let args = Args::parse();
    bench::require_root("bench-policy")?;
    ensure!(args.rules.contains(&0), "--rules must include 0 (the baseline)");
    ensure!(
        args.endpoints > 0 && args.endpoints <= 16_000,
        "--endpoints: between 1 and 16000 (the endpoint map's size)"
    );
    ensure!(
        args.changes > 0 && args.rounds > 0,
        "--changes and --rounds must be positive"
    );
    let packets = per_packet(&args)?;
    if args.packets_only {
        report::report_packets(&args, &packets);
        return Ok(());
    }
    let conns = connection_rate_bench(&args)?;
    let apply = apply_bench(&args)?;
    report::report(&args, &packets, &conns, &apply);
    Ok(())
}
