//! The chained role: the plugin before us made the pod interface. We trust
//! the namespace, not the result: real first plugins send thin results
//! (Terway's has no MAC and puts the container id where the netns path
//! belongs), so we look the interface up in CNI_NETNS, check it carries the
//! addresses the result claims, fill in what is missing, and record the
//! endpoint.

use crate::config::PluginConfig;
use crate::endpoint::{Endpoint, EndpointStore};
use crate::netlink::{Link, Netlink};
use crate::netns::NetNs;
use crate::pod_setup;
use sluice_cni_spec::skel::Request;
use sluice_cni_spec::{CniError, CniResult, ErrorCode, Interface};
use sluice_ipam::store::now_secs;
use tracing::info;

fn prev_result(cfg: &PluginConfig) -> Result<CniResult, CniError> {
    let v = cfg.prev_result.clone().ok_or_else(|| {
        CniError::new(
            ErrorCode::InvalidConfig,
            "chained role (no \"link\" in config) needs a prevResult from the plugin before sluice",
        )
    })?;
    CniResult::from_value(v).map_err(|e| e.context("prevResult"))
}

/// The addresses of the result that belong to our interface. An IP without
/// an interface index is taken as ours when there is one interface only.
fn our_ips(r: &CniResult, idx: Option<usize>) -> Vec<ipnetwork::IpNetwork> {
    r.ips
        .iter()
        .filter(|ip| match (ip.interface, idx) {
            (Some(i), Some(ours)) => i == ours,
            (None, _) => true,
            (Some(_), None) => false,
        })
        .map(|ip| ip.address)
        .collect()
}

async fn find_link(pod: &Netlink, ifname: &str, ns: &NetNs) -> Result<Link, CniError> {
    pod.link_by_name(ifname).await?.ok_or_else(|| {
        CniError::new(
            ErrorCode::MissingResource,
            format!(
                "interface {ifname} not found in netns {} (the previous plugin should have made it)",
                ns.path().display()
            ),
        )
    })
}

pub async fn add(req: &Request<'_>, cfg: &PluginConfig) -> Result<CniResult, CniError> {
    let mut result = prev_result(cfg)?;
    let ifname = &req.inv.ifname;
    let ns = NetNs::open(req.inv.netns.as_deref().expect("ADD has a netns"))?;
    let pod = Netlink::in_netns(&ns)?;
    let link = find_link(&pod, ifname, &ns).await?;
    let sandbox = ns.path().display().to_string();

    // Find our interface in the result by name, whatever its sandbox says,
    // and correct what the first plugin left out or got wrong.
    let idx = match result.interfaces.iter().position(|i| i.name == *ifname) {
        Some(i) => i,
        None => {
            result.interfaces.push(Interface {
                name: ifname.clone(),
                ..Default::default()
            });
            result.interfaces.len() - 1
        }
    };
    let iface = &mut result.interfaces[idx];
    if iface.mac.is_empty() {
        iface.mac = link.mac_string();
    }
    iface.sandbox = sandbox.clone();
    if iface.mtu.is_none() {
        iface.mtu = Some(link.mtu);
    }
    let had_index = result.ips.iter().any(|ip| ip.interface.is_some());
    let ips = our_ips(&result, had_index.then_some(idx));
    if ips.is_empty() {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            format!("prevResult assigns no address to {ifname}"),
        ));
    }
    pod_setup::verify_addresses(&pod, &link, &ips)
        .await
        .map_err(|e| e.context("prevResult"))?;
    if !had_index {
        for ip in &mut result.ips {
            ip.interface = Some(idx);
        }
    }

    let store = EndpointStore::new(&cfg.data_dir(), &cfg.name);
    store.put(&Endpoint {
        network: cfg.name.clone(),
        container_id: req.inv.container_id.clone(),
        ifname: ifname.clone(),
        netns: sandbox,
        ifindex: link.index,
        mac: link.mac_string(),
        ips: ips.clone(),
        role: "chained".into(),
        link_kind: link.kind.clone(),
        host_ifname: None,
        created: now_secs(),
    })?;
    info!(container = %req.inv.container_id, ifname = %ifname, ips = ?ips, "endpoint recorded (chained)");
    Ok(result)
}

/// DEL: forget the endpoint. The interface belongs to the plugin before us.
pub async fn del(req: &Request<'_>, cfg: &PluginConfig) -> Result<(), CniError> {
    EndpointStore::new(&cfg.data_dir(), &cfg.name).remove(&req.inv.container_id, &req.inv.ifname)
}

pub async fn check(req: &Request<'_>, cfg: &PluginConfig) -> Result<(), CniError> {
    let result = prev_result(cfg)?;
    let store = EndpointStore::new(&cfg.data_dir(), &cfg.name);
    let ep = store.get(&req.inv.container_id, &req.inv.ifname)?.ok_or_else(|| {
        CniError::new(
            ErrorCode::CheckFailed,
            format!("no endpoint record for {}/{}", req.inv.container_id, req.inv.ifname),
        )
    })?;
    let ns = NetNs::open(req.inv.netns.as_deref().expect("CHECK has a netns"))?;
    let pod = Netlink::in_netns(&ns)?;
    let link = find_link(&pod, &req.inv.ifname, &ns)
        .await
        .map_err(|e| CniError::new(ErrorCode::CheckFailed, e.msg))?;
    if link.mac_string() != ep.mac {
        return Err(CniError::new(
            ErrorCode::CheckFailed,
            format!(
                "interface {} has MAC {}, recorded {}",
                req.inv.ifname,
                link.mac_string(),
                ep.mac
            ),
        ));
    }
    let idx = result.interfaces.iter().position(|i| i.name == req.inv.ifname);
    let had_index = result.ips.iter().any(|ip| ip.interface.is_some());
    pod_setup::verify_addresses(&pod, &link, &our_ips(&result, if had_index { idx } else { None })).await
}
