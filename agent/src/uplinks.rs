//! The node's uplinks (`--uplink`): the interfaces traffic from outside
//! arrives on (the ENI parents, the node's main interface; `auto`: the
//! default routes' and the pods' parents, looked at again at every
//! collection pass, so that a new ENI's first pod brings it in). The agent puts
//! the uplink programs on them (TCX links pinned under the layout's
//! `uplinks/<name>`, or clsact filters on an older kernel), and writes each
//! one's addresses, which connections to a backend on another node are
//! source-NATed to. Attaching again is a no-op while the pinned links run
//! the node's programs; an uplink no longer named is detached.

use anyhow::{Context, Result};
use sluice_tc_datapath::attach::{self, Attached, Hook, Node};
use sluice_tc_datapath::loader::versioned_dir;
use sluice_tc_datapath::maps::{Maps, UplinkMaps};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::AsFd;
use std::path::Path;
use tracing::info;

/// One uplink as attached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uplink {
    pub name: String,
    pub ifindex: u32,
    pub attached: Attached,
    pub v4: Option<Ipv4Addr>,
    pub v6: Option<Ipv6Addr>,
}

/// `--uplink` names, with `auto` standing for the interfaces of this
/// namespace's default routes (IPv4 and IPv6) and the parents of the
/// node's macvlan and ipvlan pods (`parents`, by ifindex: the ENIs pods
/// hang off), in order, each once.
pub fn resolve(names: &[String], parents: &[u32]) -> Result<Vec<String>> {
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let found = if n == "auto" {
            let mut d = default_route_interfaces();
            anyhow::ensure!(!d.is_empty(), "--uplink auto: this namespace has no default route");
            for p in parents {
                if let Ok(name) = nix::net::if_::if_indextoname(*p)
                    && let Ok(name) = name.into_string()
                    && !d.contains(&name)
                {
                    d.push(name);
                }
            }
            d
        } else {
            vec![n.clone()]
        };
        for f in found {
            if !out.contains(&f) {
                out.push(f);
            }
        }
    }
    Ok(out)
}

/// The interfaces of the default routes, from /proc/net/route and
/// /proc/net/ipv6_route.
fn default_route_interfaces() -> Vec<String> {
    let mut out = Vec::new();
    // Iface Destination Gateway Flags RefCnt Use Metric Mask ...
    if let Ok(t) = std::fs::read_to_string("/proc/net/route") {
        for l in t.lines().skip(1) {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 7 && f[1] == "00000000" && f[7] == "00000000" && !out.contains(&f[0].to_string()) {
                out.push(f[0].to_string());
            }
        }
    }
    // dest prefixlen src srclen nexthop metric refcnt use flags iface
    if let Ok(t) = std::fs::read_to_string("/proc/net/ipv6_route") {
        for l in t.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() > 9 && f[0] == "00000000000000000000000000000000" && f[1] == "00" && f[9] != "lo" {
                let name = f[9].to_string();
                if !out.contains(&name) {
                    out.push(name);
                }
            }
        }
    }
    out
}

/// Attach the uplink programs to `names` (in the agent's network
/// namespace, the node's) and write their addresses; detach the uplinks
/// pinned before and not named now.
/// `known`: the uplinks attached before (logged only when new).
pub fn attach_all(bpffs: &Path, names: &[String], known: &[Uplink]) -> Result<Vec<Uplink>> {
    let versioned = versioned_dir(bpffs);
    let mut maps = Maps::open_pinned(&versioned).context("opening the maps for the uplinks")?;
    let mut parents: Vec<u32> = maps
        .endpoints()
        .entries()?
        .iter()
        .map(|e| e.parent_ifindex)
        .filter(|i| *i != 0)
        .collect();
    parents.sort();
    parents.dedup();
    let names = &resolve(names, &parents)?;
    let mut cfg = maps
        .observe()
        .loaded_config(&versioned)
        .context("the settings the node's programs were loaded with")?;
    cfg.bpffs = bpffs.to_path_buf();
    let mut node = Node::open(&cfg).context("opening the node's programs")?;
    let netns = std::fs::File::open("/proc/thread-self/ns/net").context("opening this network namespace")?;
    for stale in attach::hook_attachments(Hook::Uplink, node.dir())?
        .into_iter()
        .filter(|n| !names.contains(n))
    {
        attach::detach_hook(Hook::Uplink, node.dir(), Some(netns.as_fd()), &stale, &stale)
            .with_context(|| format!("detaching the uplink programs from {stale}"))?;
        info!(uplink = %stale, "no longer an uplink: programs detached");
    }
    let mut out = Vec::new();
    for name in names {
        let ifindex = nix::net::if_::if_nametoindex(name.as_str())
            .with_context(|| format!("uplink {name}: no such interface"))?;
        let pinned = node.dir().join(Hook::Uplink.dir()).join(name).join("ingress").exists();
        let attached = if pinned
            && node
                .check_hook(Hook::Uplink, netns.as_fd(), name, name, Attached::Tcx)
                .is_ok()
        {
            Attached::Tcx
        } else {
            node.attach_uplink(netns.as_fd(), name, cfg.attach)
                .with_context(|| format!("attaching the uplink programs to {name}"))?
        };
        let (v4, v6) = addresses_of(name);
        maps.uplink_mut()
            .set_uplink(ifindex, v4, v6)
            .with_context(|| format!("writing uplink {name}'s addresses"))?;
        if !known.iter().any(|k| &k.name == name) {
            info!(uplink = %name, ifindex, mode = attached.as_str(), ?v4, ?v6, "uplink programs attached");
        }
        out.push(Uplink {
            name: name.clone(),
            ifindex,
            attached,
            v4,
            v6,
        });
    }
    forget_others(maps.uplink_mut(), &out)?;
    Ok(out)
}

/// Rewrite the uplinks' addresses (they may change under DHCP or SLAAC).
pub fn refresh(maps: &mut Maps, uplinks: &[Uplink]) -> Result<()> {
    for u in uplinks {
        let (v4, v6) = addresses_of(&u.name);
        maps.uplink_mut()
            .set_uplink(u.ifindex, v4, v6)
            .with_context(|| format!("writing uplink {}'s addresses", u.name))?;
    }
    Ok(())
}

fn forget_others(m: &mut UplinkMaps, keep: &[Uplink]) -> Result<()> {
    for (ifindex, _) in m.uplinks()? {
        if !keep.iter().any(|u| u.ifindex == ifindex) {
            m.remove_uplink(ifindex)?;
        }
    }
    Ok(())
}

/// The first global IPv4 and IPv6 address of interface `name`.
pub fn addresses_of(name: &str) -> (Option<Ipv4Addr>, Option<Ipv6Addr>) {
    let (mut v4, mut v6) = (None, None);
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return (None, None);
    };
    for a in addrs.filter(|a| a.interface_name == name) {
        let Some(s) = a.address else { continue };
        let ip = if let Some(x) = s.as_sockaddr_in() {
            IpAddr::V4(x.ip())
        } else if let Some(x) = s.as_sockaddr_in6() {
            IpAddr::V6(x.ip())
        } else {
            continue;
        };
        match ip {
            IpAddr::V4(x) if v4.is_none() && !x.is_loopback() && !x.is_link_local() => v4 = Some(x),
            IpAddr::V6(x) if v6.is_none() && !x.is_loopback() && (x.segments()[0] & 0xffc0) != 0xfe80 => v6 = Some(x),
            _ => {}
        }
    }
    (v4, v6)
}
