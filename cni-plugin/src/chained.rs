//! The chained role: the plugin before us made the pod interface. We trust
//! the namespace, not the result: real first plugins send thin results
//! (Terway's has no MAC and puts the container id where the netns path
//! belongs), so we look the interface up in CNI_NETNS, check it carries the
//! addresses the result claims, fill in what is missing, and record the
//! endpoint.

use crate::config::PluginConfig;
use crate::endpoint::{Endpoint, EndpointState, EndpointStore, LinkKind, PodRef, Role};
use crate::netlink::{Link, Netlink};
use crate::netns::NetNs;
use crate::{datapath, fault, pod_setup};
use sluice_cni_spec::skel::Request;
use sluice_cni_spec::{CniError, CniResult, ErrorCode, Interface};
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

/// Whether the result ties its IPs to interfaces at all (thin results do not).
fn ips_indexed(r: &CniResult) -> bool {
    r.ips.iter().any(|ip| ip.interface.is_some())
}

/// The addresses of the result that belong to interface `ifname`: those whose
/// index points at it, or every address when the result has no indexes.
fn our_ips(r: &CniResult, ifname: &str) -> Vec<ipnetwork::IpNetwork> {
    let idx = r.interfaces.iter().position(|i| i.name == ifname);
    let indexed = ips_indexed(r);
    r.ips
        .iter()
        .filter(|ip| !indexed || (ip.interface.is_some() && ip.interface == idx))
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
    let ns = NetNs::open_pod(req.inv.netns.as_deref().expect("ADD has a netns"))?;
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
    let ips = our_ips(&result, ifname);
    if ips.is_empty() {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            format!("prevResult assigns no address to {ifname}"),
        ));
    }
    pod_setup::verify_addresses(&pod, &link, &ips)
        .await
        .map_err(|e| e.context("prevResult"))?;
    if !ips_indexed(&result) {
        for ip in &mut result.ips {
            ip.interface = Some(idx);
        }
    }

    let store = EndpointStore::new(&cfg.data_dir(), &cfg.name);
    let mut ep = Endpoint {
        network: cfg.name.clone(),
        container_id: req.inv.container_id.clone(),
        ifname: ifname.clone(),
        netns: sandbox,
        ifindex: link.index,
        mac: link.mac_string(),
        ips: ips.clone(),
        role: Role::Chained,
        link_kind: Some(LinkKind::from_netlink(link.kind.as_deref())),
        // Traffic from outside is handed to a macvlan's or ipvlan's parent.
        parent_ifindex: link
            .parent
            .filter(|_| matches!(link.kind.as_deref(), Some("macvlan" | "ipvlan"))),
        host_ifname: None,
        datapath: None,
        promote_to_tcx: false,
        host_path: None,
        pod: PodRef::from_args(&req.inv.args),
        state: EndpointState::Creating,
        created: Endpoint::now(),
    };
    // The record first: a DEL after a crash knows which pins and endpoint
    // entries to take back.
    store.put(&ep)?;
    let attached = match fault::at("add:record") {
        Ok(()) if cfg.datapath.enabled => datapath::attach(cfg, &ns, &pod, &ep).await.map(Some),
        Ok(()) => Ok(None),
        Err(e) => Err(e),
    };
    ep.promote_to_tcx = cfg.datapath.enabled && datapath::promoted_later(cfg);
    ep.datapath = match attached {
        Ok(a) => a,
        Err(e) => {
            let _ = store.remove(&ep.container_id, ifname);
            return Err(e);
        }
    };
    ep.state = EndpointState::Ready;
    if let Err(e) = store.put(&ep).and_then(|()| fault::at("add:ready")) {
        if ep.datapath.is_some() {
            let _ = datapath::hold(cfg)
                .and_then(|held| datapath::detach(cfg, &held, Some(&ns), &ep.container_id, ifname, Some(&ep)));
        }
        let _ = store.remove(&ep.container_id, ifname);
        return Err(e);
    }
    info!(container = %req.inv.container_id, ifname = %ifname, ips = ?ips, "endpoint recorded (chained)");
    Ok(result)
}

/// DEL: detach and forget the endpoint. The interface belongs to the plugin before us.
pub async fn del(req: &Request<'_>, cfg: &PluginConfig) -> Result<(), CniError> {
    let store = EndpointStore::new(&cfg.data_dir(), &cfg.name);
    let (cid, ifname) = (&req.inv.container_id, &req.inv.ifname);
    let held = datapath::hold(cfg)?;
    let (ep, unreadable) = store.get_for_del(cid, ifname)?;
    if cfg.datapath.enabled || ep.as_ref().is_some_and(|e| e.datapath.is_some()) {
        let ns = NetNs::for_del(req.inv.netns.as_deref())?;
        datapath::detach(cfg, &held, ns.as_ref(), cid, ifname, ep.as_ref())?;
    }
    if unreadable {
        datapath::forget_unrecorded(cfg, cid, ifname)?;
    }
    fault::at("del:detached")?;
    store.remove(cid, ifname)
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
    let ns = NetNs::open_pod(req.inv.netns.as_deref().expect("CHECK has a netns"))?;
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
    pod_setup::verify_addresses(&pod, &link, &our_ips(&result, &req.inv.ifname)).await?;
    if cfg.datapath.enabled {
        datapath::check(cfg, &ns, &pod, &ep).await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn our_ips_follow_indexes_or_take_all() {
        let r = CniResult::from_value(json!({"cniVersion": "1.0.0",
            "interfaces": [{"name": "veth1"}, {"name": "eth0", "sandbox": "/x"}],
            "ips": [{"address": "10.0.0.2/24", "interface": 1}, {"address": "10.0.1.2/24", "interface": 0}]}))
        .unwrap();
        assert_eq!(our_ips(&r, "eth0"), vec!["10.0.0.2/24".parse().unwrap()]);
        assert!(our_ips(&r, "eth9").is_empty());
        let thin = CniResult::from_value(json!({"cniVersion": "1.0.0", "ips": [{"address": "10.0.0.2/24"}]})).unwrap();
        assert_eq!(our_ips(&thin, "eth0").len(), 1);
    }
}
