//! Looking at a simulated node's datapath from a test: its pinned maps and
//! what runs on a pod's interface.

use crate::netns::Netns;
use crate::vpc::Vpc;
use anyhow::{Context, Result, ensure};
use sluice_tc_datapath::attach::{Node, ProgramRef, Side, tcx_programs};
use sluice_tc_datapath::layout::{SVC_SCOPE_CLUSTER, SVC_SCOPE_EXTERNAL};
use sluice_tc_datapath::loader::versioned_dir;
use sluice_tc_datapath::maps::Maps;
use sluice_tc_datapath::maps::lb::{Algorithm, Backend, ServiceSpec};
use std::net::IpAddr;
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

    /// `sluicectl -o json ARGS...` on node `node` (in its namespace, on
    /// its bpffs): the JSON it prints. Fails the test on an error.
    pub fn sluicectl(&self, node: usize, args: &[&str]) -> serde_json::Value {
        let out = std::process::Command::new("nsenter")
            .arg(format!("--net={}", self.nodes[node].path().display()))
            .arg("--")
            .arg(crate::bin_dir().join("sluicectl"))
            .arg("--bpffs")
            .arg(self.bpffs[node].root())
            .args(["-o", "json"])
            .args(args)
            .output()
            .expect("running sluicectl");
        assert!(
            out.status.success(),
            "sluicectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("sluicectl {args:?} printed no JSON: {e}"))
    }

    /// The pinned program versions of node `i` (directory names under progs/).
    pub fn program_versions(&self, node: usize) -> Vec<String> {
        crate::dir_names(&self.datapath_dir(node).join("progs"))
    }

    /// The uplink programs on node `node`'s eth0, with its IPv4 address
    /// for SNAT, as the agent's `--uplink eth0` puts them (for checks and
    /// benchmarks that write the maps themselves).
    pub fn attach_uplink(&self, node: usize) -> Result<()> {
        let root = self.bpffs[node].root();
        let versioned = versioned_dir(&root);
        let mut maps = Maps::open_pinned(&versioned)?;
        let mut cfg = maps.observe().loaded_config(&versioned)?;
        cfg.bpffs = root;
        let mut n = Node::open(&cfg)?;
        let ns = std::fs::File::open(self.nodes[node].path())?;
        n.attach_uplink(ns.as_fd(), "eth0", cfg.attach)
            .context("attaching the uplink programs")?;
        let ifindex = self.nodes[node].run(|| nix::net::if_::if_nametoindex("eth0"))??;
        maps.uplink_mut()
            .set_uplink(ifindex, Some(crate::vpc::node_ip(node).parse()?), None)?;
        Ok(())
    }

    /// Packets node `node`'s programs counted under `reason` (as `sluicectl
    /// metrics` names it), both directions.
    pub fn counted(&self, node: usize, reason: &str) -> Result<u64> {
        Ok(self
            .maps(node)?
            .observe()
            .metrics()?
            .into_iter()
            .filter(|m| m.reason.name() == reason)
            .map(|m| m.packets)
            .sum())
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

/// NodePort `port`/`proto` on node address `node_addr` over `backends`,
/// written as the agent writes one: the external frontend the uplink
/// program reads, and the cluster one (pods calling it) whose marker puts
/// the address in the VIP filter. Reverse-NAT ids `first_id` and the
/// next; backend ids from `first_id` on.
pub fn put_node_port(
    maps: &mut Maps,
    node_addr: IpAddr,
    port: u16,
    proto: u8,
    backends: &[(IpAddr, u16)],
    first_id: u32,
) -> Result<()> {
    for (scope, rev) in [(SVC_SCOPE_CLUSTER, first_id), (SVC_SCOPE_EXTERNAL, first_id + 1)] {
        maps.lb_mut().upsert_service(&ServiceSpec {
            vip: node_addr,
            port,
            proto,
            rev_nat_id: rev,
            algorithm: Algorithm::Random,
            affinity_timeout_secs: 0,
            reject: false,
            node_address: true,
            scope,
            source_ranges: false,
            node_denied: false,
            draining: Vec::new(),
            backends: backends
                .iter()
                .enumerate()
                .map(|(j, (addr, p))| Backend {
                    id: first_id + j as u32,
                    addr: *addr,
                    port: *p,
                    active: true,
                })
                .collect(),
        })?;
    }
    Ok(())
}

/// A pod as the source check knows it: its namespace (an index into
/// `Vpc::pods`), its address and its interface's MAC.
#[derive(Debug, Clone, Copy)]
pub struct RawPeer {
    pub pod: usize,
    pub ip: std::net::Ipv4Addr,
    pub mac: [u8; 6],
}

impl Vpc {
    /// `from` writes on its `eth0` through a packet socket (what a process
    /// with `CAP_NET_RAW` can do) to UDP port 7100 of `to`: a frame as
    /// itself, which must arrive, then three with `victim`'s MAC and
    /// address, each of which must be dropped at `from`'s egress and
    /// counted as a spoofed source on node `node`, none arriving.
    pub fn only_own_frames_leave(&self, node: usize, from: &RawPeer, victim: &RawPeer, to: &RawPeer) -> Result<()> {
        use crate::probe::{send_frame, udp4_frame};
        use sluice_tc_datapath::layout::{Direction, Reason};
        let sink = self.pods[to.pod].run(|| std::net::UdpSocket::bind(("0.0.0.0", 7100)))??;
        sink.set_read_timeout(Some(std::time::Duration::from_millis(500)))?;
        let mut buf = [0u8; 64];
        let sender = &self.pods[from.pod];
        let own = udp4_frame((from.mac, to.mac), (from.ip, to.ip), (5000, 7100), b"own");
        ensure!(send_frame(sender, "eth0", &own)?, "the sender's own frame was dropped");
        let (n, src) = sink
            .recv_from(&mut buf)
            .context("the sender's own raw frame did not arrive")?;
        ensure!(
            &buf[..n] == b"own" && src.ip() == IpAddr::V4(from.ip),
            "got {:?} from {src}",
            &buf[..n]
        );
        let maps = self.maps(node)?;
        let spoofed = || maps.observe().count(Reason::DropSourceAddress, Direction::Egress);
        let before = spoofed()?;
        let forged = udp4_frame((victim.mac, to.mac), (victim.ip, to.ip), (5000, 7100), b"forged");
        for _ in 0..3 {
            ensure!(
                !send_frame(sender, "eth0", &forged)?,
                "a frame as {} left {}",
                victim.ip,
                from.ip
            );
        }
        let got = sink.recv_from(&mut buf);
        ensure!(got.is_err(), "a frame as {} got through: {got:?}", victim.ip);
        let counted = spoofed()? - before;
        ensure!(
            counted == 3,
            "{counted} of the 3 forged frames counted as spoofed sources"
        );
        Ok(())
    }
}
