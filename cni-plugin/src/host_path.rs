//! The node's own way to its pods, where the link kind has none: a macvlan
//! or ipvlan child cannot talk to its parent, so without more the node
//! cannot probe its pods (the kubelet's HTTP and TCP probes) and the pods
//! cannot reach their node (the kubelet, a hostNetwork server, a
//! node-local DNS cache).
//!
//! One host-side child per parent, `slh<parent index>`, of the pods' own
//! kind and mode, with no address of its own:
//! - on the node, a route per pod address out of it (with the node's
//!   address as source, so the pod sees its node: identity `host`, which
//!   policy always lets in) and a permanent neighbour entry for the pod;
//! - in the pod, a route to each node address and to each host-stack CIDR
//!   through it, and a permanent neighbour entry for each node address at
//!   the child's MAC. The child answers no ARP (arp_ignore 8): otherwise it
//!   would answer the wire's requests for the node's address too, and the
//!   other nodes would learn its MAC for it.
//!
//! Made at ADD (idempotent, under the host-path lock, so concurrent ADDs
//! and DELs agree), shared by the parent's pods, and removed with the last
//! of them: a child with no pod route left goes.

use crate::config::{IpvlanMode, LinkConfig, MacvlanMode};
use crate::link::{ipvlan, macvlan};
use crate::netlink::{Link, Netlink};
use crate::netns::NetNs;
use ipnetwork::IpNetwork;
use rtnetlink::{LinkIpVlan, LinkMacVlan};
use sluice_cni_spec::{CniError, ErrorCode};
use std::fs::File;
use std::net::IpAddr;
use std::path::Path;

use tracing::info;

/// The host child of the parent with index `parent_index`.
pub fn name(parent_index: u32) -> String {
    format!("slh{parent_index}")
}

/// Whether this link config gets a host path: macvlan in bridge mode (the
/// other modes do not switch between children) and ipvlan L2 and L3 (L3S
/// is refused with the datapath). A whole ENI reaches the node through the
/// VPC like any other host.
pub fn wanted(lc: &LinkConfig) -> bool {
    match lc {
        LinkConfig::Macvlan(m) => m.mode == MacvlanMode::Bridge,
        LinkConfig::Ipvlan(i) => i.mode != IpvlanMode::L3s,
        LinkConfig::Eni(_) => false,
    }
}

/// The host-path lock of the node (a file under the data dir): making and
/// removing a host child and its routes are serialized.
pub fn lock(data_dir: &Path) -> Result<File, CniError> {
    crate::lock::lock(data_dir, "host-path.lock")
}

/// The node's addresses a pod reaches through the host path: the parent's
/// global ones.
pub async fn node_addresses(host: &Netlink, parent: &Link) -> Result<Vec<IpNetwork>, CniError> {
    Ok(host
        .addresses(parent.index)
        .await?
        .into_iter()
        .filter(|a| match a.ip() {
            IpAddr::V4(v) => !v.is_link_local() && !v.is_loopback(),
            IpAddr::V6(v) => (v.segments()[0] & 0xffc0) != 0xfe80 && !v.is_loopback(),
        })
        .collect())
}

/// The parent's host child, made if it is not there yet.
pub async fn ensure(host: &Netlink, lc: &LinkConfig, parent: &Link) -> Result<Link, CniError> {
    let name = name(parent.index);
    if let Some(l) = host.link_by_name(&name).await? {
        return Ok(l);
    }
    let msg = match lc {
        LinkConfig::Macvlan(_) => LinkMacVlan::new(&name, parent.index, macvlan::kernel_mode(MacvlanMode::Bridge))
            .mtu(parent.mtu)
            .build(),
        LinkConfig::Ipvlan(i) => LinkIpVlan::new(&name, parent.index, ipvlan::kernel_mode(i.mode))
            .mtu(parent.mtu)
            .build(),
        LinkConfig::Eni(_) => unreachable!("an ENI has no host path (see wanted)"),
    };
    host.add_link(msg, &format!("host path {name} on {}", parent.name))
        .await?;
    let link = host.link_by_name(&name).await?.ok_or_else(|| {
        CniError::new(
            ErrorCode::Netlink,
            format!("{name} vanished from {} after creation", host.label()),
        )
    })?;
    set_sysctl(&format!("ipv4/conf/{name}/arp_ignore"), "8")?;
    // No IPv6 address of its own either: the pod's entries point at it.
    set_sysctl(&format!("ipv6/conf/{name}/addr_gen_mode"), "1")?;
    host.set_up(link.index, &name).await?;
    info!(host_path = %name, parent = %parent.name, "host path made");
    Ok(link)
}

fn set_sysctl(key: &str, value: &str) -> Result<(), CniError> {
    let path = Path::new("/proc/sys/net").join(key);
    std::fs::write(&path, value).map_err(|e| CniError::new(ErrorCode::Io, format!("writing {}: {e}", path.display())))
}

/// The node's side for one pod: a route per pod address out of the host
/// child (source: the node's address of its family) and a permanent
/// neighbour entry at the pod's MAC.
pub async fn add_pod(
    host: &Netlink,
    child: &Link,
    pod_ips: &[IpNetwork],
    pod_mac: [u8; 6],
    node: &[IpNetwork],
) -> Result<(), CniError> {
    for ip in pod_ips {
        let src = node.iter().map(IpNetwork::ip).find(|n| n.is_ipv4() == ip.is_ipv4());
        let dst = IpNetwork::new(ip.ip(), if ip.is_ipv4() { 32 } else { 128 }).expect("a host prefix");
        host.set_neighbour(child.index, ip.ip(), pod_mac).await?;
        host.set_link_route(child.index, dst, src).await?;
    }
    Ok(())
}

/// The pod's side: each node address straight out of the pod interface,
/// at the host child's MAC; each host-stack CIDR through the node's
/// address of its family.
pub async fn pod_side(
    pod: &Netlink,
    pod_link: &Link,
    child_mac: [u8; 6],
    node: &[IpNetwork],
    host_stack: &[IpNetwork],
) -> Result<(), CniError> {
    for n in node {
        let dst = IpNetwork::new(n.ip(), if n.is_ipv4() { 32 } else { 128 }).expect("a host prefix");
        pod.set_neighbour(pod_link.index, n.ip(), child_mac).await?;
        pod.set_link_route(pod_link.index, dst, None).await?;
    }
    for c in host_stack {
        let Some(via) = node.iter().map(IpNetwork::ip).find(|n| n.is_ipv4() == c.is_ipv4()) else {
            continue;
        };
        pod.set_onlink_route(pod_link.index, *c, via).await?;
    }
    Ok(())
}

/// Take one pod off the host child `name`, and remove the child when no
/// pod route is left on it. Idempotent: a child or route that is gone is
/// fine.
pub async fn remove_pod(host: &Netlink, name: &str, pod_ips: &[IpNetwork]) -> Result<(), CniError> {
    let Some(child) = host.link_by_name(name).await? else {
        return Ok(());
    };
    // Independent of each other: sent together, answered together.
    futures::future::try_join_all(pod_ips.iter().map(|ip| async {
        let dst = IpNetwork::new(ip.ip(), if ip.is_ipv4() { 32 } else { 128 }).expect("a host prefix");
        futures::try_join!(
            host.del_link_route(child.index, dst),
            host.del_neighbour(child.index, ip.ip())
        )
    }))
    .await?;
    if host.host_routes(child.index).await?.is_empty() {
        host.del_link(child.index, name).await?;
        info!(host_path = %name, "host path removed with its last pod");
    }
    Ok(())
}

/// What ADD made, for its result and its record.
pub struct Made {
    pub child: Link,
}

/// Make the host path for a pod whose link `pod_link` hangs off `parent`
/// (its addresses `pod_ips`): the child, the node's side, the pod's side.
#[allow(clippy::too_many_arguments)]
pub async fn attach(
    host: &Netlink,
    pod: &Netlink,
    lc: &LinkConfig,
    parent: &Link,
    pod_link: &Link,
    pod_ips: &[IpNetwork],
    host_stack: &[IpNetwork],
    data_dir: &Path,
    _pod_ns: &NetNs,
) -> Result<Made, CniError> {
    let _lock = lock(data_dir)?;
    let node = node_addresses(host, parent).await?;
    let child = ensure(host, lc, parent).await?;
    let pod_mac = pod_link
        .mac
        .ok_or_else(|| CniError::new(ErrorCode::Netlink, format!("{} has no MAC", pod_link.name)))?;
    let child_mac = child
        .mac
        .ok_or_else(|| CniError::new(ErrorCode::Netlink, format!("{} has no MAC", child.name)))?;
    add_pod(host, &child, pod_ips, pod_mac, &node).await?;
    pod_side(pod, pod_link, child_mac, &node, host_stack).await?;
    Ok(Made { child })
}

/// Undo `attach` for one pod (DEL, rollback, GC).
pub async fn detach(host: &Netlink, name: &str, pod_ips: &[IpNetwork], data_dir: &Path) -> Result<(), CniError> {
    let _lock = lock(data_dir)?;
    remove_pod(host, name, pod_ips).await
}
