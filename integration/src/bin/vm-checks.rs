//! The checks that run inside the kernel-matrix VM (`integration/vm/run`):
//! one process, many checks (a process start costs ~30 ms under TCG), each
//! reported on the serial console as `CHECK <name> PASS|FAIL <detail>`,
//! then `SUMMARY <n> passed, <m> failed`. The harness turns those lines
//! into the run's result.

use anyhow::{Context, Result, bail, ensure};
use sluice_integration::netns::Netns;
use sluice_tc_datapath::attach::{AttachMode, Attached, Node};
use sluice_tc_datapath::loader::{self, DatapathConfig};
use std::os::fd::AsFd;
use std::path::Path;

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// ipvlan exists here (the host kernel has none): a link in L2 and L3 mode
/// on a parent in a namespace of its own.
fn ipvlan_module() -> Result<String> {
    let ns = Netns::new("vmipv")?;
    ns.ip(&["link", "add", "p0", "type", "veth", "peer", "name", "p1"])?;
    for mode in ["l2", "l3"] {
        let name = format!("iv-{mode}");
        ns.ip(&[
            "link", "add", "link", "p0", "name", &name, "type", "ipvlan", "mode", mode,
        ])?;
        let shown = ns.ip(&["-d", "link", "show", &name])?;
        ensure!(shown.contains(&format!("ipvlan  mode {mode}")), "{shown}");
    }
    Ok("ipvlan l2 and l3 links made".into())
}

/// The programs pass this kernel's verifier.
fn datapath_loads() -> Result<String> {
    loader::load(&DatapathConfig::default(), None).context("loading the datapath")?;
    Ok(format!("both programs verified on {}", kernel()))
}

/// `auto` finds no tcx here and attaches clsact filters, by probing.
fn clsact_fallback() -> Result<String> {
    let ns = Netns::new("vmtc")?;
    ns.ip(&["link", "add", "v0", "type", "veth", "peer", "name", "v1"])?;
    ns.ip(&["link", "set", "v0", "up"])?;
    std::fs::create_dir_all("/sys/fs/bpf/vmcheck").context("bpffs")?;
    let root = Path::new("/sys/fs/bpf/vmcheck");
    let mut node = Node::open(&DatapathConfig::default(), root).context("loading and pinning")?;
    let f = std::fs::File::open(ns.path())?;
    let how = node.attach(f.as_fd(), "v0", "vm:v0", AttachMode::Auto)?;
    if how != Attached::Tc {
        bail!("auto chose {} on {}", how.as_str(), kernel());
    }
    let filters = ns.exec("tc", &["filter", "show", "dev", "v0", "ingress"])?;
    let text = String::from_utf8_lossy(&filters.stdout);
    ensure!(text.contains("sl_ingress"), "no sluice filter on v0 ingress: {text}");
    Ok("auto attached clsact filters (no tcx on this kernel)".into())
}

/// A check: what it showed, or why it failed.
type Check = fn() -> Result<String>;

fn main() {
    let checks: [(&str, Check); 3] = [
        ("ipvlan-module", ipvlan_module),
        ("datapath-verifies", datapath_loads),
        ("attach-auto-is-clsact", clsact_fallback),
    ];
    let (mut passed, mut failed) = (0, 0);
    for (name, check) in checks {
        match check() {
            Ok(detail) => {
                passed += 1;
                println!("CHECK {name} PASS {detail}");
            }
            Err(e) => {
                failed += 1;
                println!("CHECK {name} FAIL {e:#}");
            }
        }
    }
    println!("SUMMARY {passed} passed, {failed} failed");
}
