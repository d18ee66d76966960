//! `sluice-install`: put sluice on a node (the DaemonSet's init container
//! runs it with the host's directories mounted).
//!
//!     sluice-install --cni-bin-dir /host/opt/cni/bin --cni-conf-dir /host/etc/cni/net.d
//!
//! Copies `sluice` and `sluice-ipam` next to this binary into the CNI bin
//! directory, then writes `00-sluice.conflist`: the node's current network
//! with sluice chained last (default), or sluice's own conflist
//! (`--conflist FILE`). `--uninstall` removes that file, the host-path
//! links the CNI binary made (`slh<index>`) and the agent's socket hooks.

use anyhow::{Context, Result};
use clap::Parser;
use sluice_agent::install::{self, Installed};
use std::path::PathBuf;

#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[arg(long, default_value = "/opt/cni/bin")]
    cni_bin_dir: PathBuf,
    #[arg(long, default_value = "/etc/cni/net.d")]
    cni_conf_dir: PathBuf,
    /// Where the binaries to install are (default: next to this one).
    #[arg(long)]
    from: Option<PathBuf>,
    /// sluice's own conflist (main role) instead of chaining behind the
    /// node's current network.
    #[arg(long)]
    conflist: Option<PathBuf>,
    /// The chained sluice plugin's entry, as JSON.
    #[arg(long, default_value = r#"{"type": "sluice", "logFile": "/var/log/sluice-cni.log"}"#)]
    plugin: String,
    /// Remove sluice's configuration, the node's host-path links and the
    /// socket hooks.
    #[arg(long)]
    uninstall: bool,
    /// sluice's bpffs root (where `--uninstall` finds the socket hooks and
    /// the uplinks' programs).
    #[arg(long, default_value = sluice_tc_datapath::config::DEFAULT_BPFFS)]
    bpffs: PathBuf,
}

fn main() -> Result<()> {
    let args = Args::parse();
    if args.uninstall {
        let removed = install::uninstall_conf(&args.cni_conf_dir)?;
        eprintln!(
            "{} {}",
            if removed { "removed" } else { "nothing to remove:" },
            args.cni_conf_dir.join(install::CONFLIST).display()
        );
        // The node's way to its pods goes too (with host networking, the
        // node's namespace is this one).
        for name in install::remove_host_paths()? {
            eprintln!("removed host path {name}");
        }
        let hooks = sluice_tc_datapath::attach::sock::detach_everywhere(&args.bpffs)
            .with_context(|| format!("detaching the socket hooks under {}", args.bpffs.display()))?;
        for dir in hooks {
            eprintln!("detached the socket hooks pinned at {}", dir.display());
        }
        let netns = std::fs::File::open("/proc/thread-self/ns/net").context("opening this network namespace")?;
        let uplinks =
            sluice_tc_datapath::attach::detach_uplinks_everywhere(&args.bpffs, std::os::fd::AsFd::as_fd(&netns))
                .with_context(|| format!("detaching the uplink programs under {}", args.bpffs.display()))?;
        for name in uplinks {
            eprintln!("detached the uplink programs from {name}");
        }
        return Ok(());
    }
    let from = match args.from {
        Some(f) => f,
        None => std::env::current_exe()?
            .parent()
            .context("the directory of this binary")?
            .to_path_buf(),
    };
    let plugin: serde_json::Value = serde_json::from_str(&args.plugin).context("--plugin is not JSON")?;
    let conflist = match &args.conflist {
        Some(p) => Some(
            serde_json::from_str(&std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?)
                .with_context(|| format!("{} is not JSON", p.display()))?,
        ),
        None => None,
    };
    install::install_binaries(&from, &args.cni_bin_dir)?;
    eprintln!("installed {:?} into {}", install::BINARIES, args.cni_bin_dir.display());
    match install::install_conf(&args.cni_conf_dir, conflist.as_ref(), &plugin)? {
        Installed::ChainedBehind(p) => eprintln!(
            "wrote {}: {} with sluice chained last (that file is unchanged)",
            args.cni_conf_dir.join(install::CONFLIST).display(),
            p.display()
        ),
        Installed::Main => eprintln!("wrote {}", args.cni_conf_dir.join(install::CONFLIST).display()),
    }
    Ok(())
}
