//! `sluicectl`: look at what this node's datapath holds: Services and
//! backends, conntrack, endpoints, policy, traffic from outside (NAT
//! entries, hostPorts, uplinks), drop counters, the attached
//! program and its settings, and flow events from the agent. The agent is
//! the one writer of Services and policy; the only write here is a
//! conntrack flush.

mod ct;
mod endpoint;
mod metrics;
mod observe;
mod outside;
mod policy;
mod render;
mod service;
mod status;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use render::Output;
use sluice_tc_datapath::config::DEFAULT_BPFFS;
use sluice_tc_datapath::loader::versioned_dir;
use sluice_tc_datapath::maps::Maps;
use std::net::IpAddr;
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "sluicectl", version, about = "Inspect the sluice eBPF datapath of this node")]
struct Cli {
    /// The datapath's bpffs root (the CNI config's datapath.bpffs).
    #[arg(long, global = true, default_value = DEFAULT_BPFFS)]
    bpffs: PathBuf,
    #[arg(short, long, global = true, value_enum, default_value_t = Output::Table)]
    output: Output,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Service ports (VIP:port/proto), as the agent wrote them.
    #[command(subcommand)]
    Service(ListCmd),
    /// Backends.
    #[command(subcommand)]
    Backend(ListCmd),
    /// Connection tracking.
    #[command(subcommand)]
    Ct(CtCmd),
    /// Local pod endpoints.
    #[command(subcommand)]
    Endpoint(ListCmd),
    /// Network policy as enforced on this node's pods.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Connections from outside (NodePorts, load-balancer and external IPs,
    /// hostPorts): both directions' NAT entries at the uplinks.
    #[command(subcommand)]
    Nat(ListCmd),
    /// Pods' hostPorts on this node's addresses.
    #[command(subcommand)]
    Hostport(ListCmd),
    /// The node's uplinks and the addresses they SNAT to.
    #[command(subcommand)]
    Uplink(ListCmd),
    /// Packets and bytes by reason and direction, summed over CPUs.
    Metrics,
    /// The attached program version and its settings.
    Status,
    /// Flow events (new flows, drops with their reason, policy verdicts)
    /// from the node agent, like `hubble observe`.
    Observe(observe::Observe),
}

#[derive(Subcommand)]
enum ListCmd {
    List,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Every pod some policy isolates: its identity, the directions it is
    /// isolated in (by which policy), and how many rule entries it has.
    List,
    /// The rules enforced on one pod, by one of its addresses.
    Get { address: IpAddr },
}

#[derive(Subcommand)]
enum CtCmd {
    /// Every entry: a Service connection's as the client sent it (KIND
    /// service), every flow from its pod's side (SOURCE is the pod; KIND out
    /// when the pod opened it, in when the peer did).
    List,
    /// Remove every entry (established connections re-select a backend).
    Flush,
}

fn main() {
    let cli = Cli::parse();
    if let Err(e) = run(&cli) {
        eprintln!("sluicectl: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: &Cli) -> Result<()> {
    if let Cmd::Observe(o) = &cli.cmd {
        return observe::run(o, cli.output == Output::Json);
    }
    let dir = versioned_dir(&cli.bpffs);
    let mut maps = Maps::open_pinned(&dir).with_context(|| {
        format!(
            "no sluice datapath under {} (is a pod attached on this node, and is --bpffs right?)",
            cli.bpffs.display()
        )
    })?;
    let out = cli.output;
    match &cli.cmd {
        Cmd::Service(ListCmd::List) => render::rows(&service::services(&maps)?, out),
        Cmd::Backend(ListCmd::List) => render::rows(&service::backends(&maps)?, out),
        Cmd::Ct(CtCmd::List) => render::rows(&ct::list(&maps)?, out),
        Cmd::Ct(CtCmd::Flush) => render::record(
            &ct::Flushed {
                flushed: maps.ct_mut().flush()?,
            },
            out,
        ),
        Cmd::Endpoint(ListCmd::List) => render::rows(&endpoint::list(&maps)?, out),
        Cmd::Policy(PolicyCmd::List) => render::rows(&policy::list(&maps)?, out),
        Cmd::Policy(PolicyCmd::Get { address }) => policy::get(&maps, *address)?.print(out),
        Cmd::Nat(ListCmd::List) => render::rows(&outside::nat(&maps)?, out),
        Cmd::Hostport(ListCmd::List) => render::rows(&outside::hostports(&maps)?, out),
        Cmd::Uplink(ListCmd::List) => render::rows(&outside::uplinks(&maps)?, out),
        Cmd::Metrics => render::rows(&metrics::list(&maps)?, out),
        Cmd::Status => render::record(&status::status(&maps, &dir)?, out),
        Cmd::Observe(_) => unreachable!("handled before the maps are opened"),
    }
}
