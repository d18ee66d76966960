//! Looking at a simulated node's datapath from a test: its pinned maps and
//! what runs on a pod's interface.

use crate::netns::Netns;
use crate::vpc::Vpc;
use anyhow::{Context, Result};
use sluice_tc_datapath::attach::{ProgramRef, Side, tcx_programs};
use sluice_tc_datapath::loader::versioned_dir;
use sluice_tc_datapath::maps::Maps;
use std::os::fd::AsFd;
use std::path::PathBuf;

impl Vpc {
    /// `<bpffs>/sluice/v<N>` of node `i`.
    pub fn datapath_dir(&self, node: usize) -> PathBuf {
        versioned_dir(&self.bpffs[node].root())
    }

    /// Node `i`'s pinned maps.
    pub fn maps(&self, node: usize) -> Result<Maps> {
        Maps::open_pinned(&self.datapath_dir(node)).context("opening the node's pinned maps")
    }

    /// The pod addresses node `i`'s endpoint map holds, sorted.
    pub fn endpoint_addrs(&self, node: usize) -> Result<Vec<std::net::IpAddr>> {
        Ok(self
            .maps(node)?
            .endpoints()
            .entries()?
            .into_iter()
            .map(|e| e.addr)
            .collect())
    }

    /// The pinned program versions of node `i` (directory names under progs/).
    pub fn program_versions(&self, node: usize) -> Vec<String> {
        crate::dir_names(&self.datapath_dir(node).join("progs"))
    }

    /// The pinned attachments (link directories) of node `i`.
    pub fn pinned_links(&self, node: usize) -> Vec<String> {
        crate::dir_names(&self.datapath_dir(node).join("links"))
    }

    /// Everything a CNI call on node `node` could leave behind: every
    /// namespace's links and address count, the leases, the endpoint
    /// records, the pinned attachments and the endpoint map's size.
    pub fn snapshot(&self, node: usize) -> Vec<String> {
        let mut s = Vec::new();
        for ns in self.nodes.iter().chain(&self.pods).chain(std::iter::once(&self.fabric)) {
            s.push(format!("{}: {:?}", ns.name, ns.link_names().unwrap_or_default()));
            s.push(format!(
                "{} addrs: {}",
                ns.name,
                ns.ip(&["-o", "addr"]).unwrap_or_default().lines().count()
            ));
        }
        s.push(format!("leases: {:?}", self.leases(node)));
        s.push(format!("endpoints: {:?}", self.endpoints(node)));
        s.push(format!("pinned links: {:?}", self.pinned_links(node)));
        s.push(format!(
            "endpoint map: {:?}",
            self.maps(node)
                .ok()
                .map(|m| m.endpoints().entries().map(|e| e.len()).ok())
        ));
        s
    }
}

/// The TCX programs on `ifname` in `ns`, by side.
pub struct ProgramsOn {
    pub egress: Vec<ProgramRef>,
    pub ingress: Vec<ProgramRef>,
}

/// The TCX programs on `ifname` in `ns`.
pub fn programs_on(ns: &Netns, ifname: &str) -> Result<ProgramsOn> {
    let f = std::fs::File::open(ns.path()).with_context(|| format!("open {}", ns.path().display()))?;
    Ok(ProgramsOn {
        egress: tcx_programs(f.as_fd(), ifname, Side::Egress)?,
        ingress: tcx_programs(f.as_fd(), ifname, Side::Ingress)?,
    })
}

/// `tc filter show` for one side of `ifname` in `ns`.
pub fn tc_filters(ns: &Netns, ifname: &str, side: &str) -> Result<String> {
    let out = ns.exec("tc", &["filter", "show", "dev", ifname, side])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}
