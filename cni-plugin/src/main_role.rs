//! The main role: sluice creates the pod interface itself.
//!
//! ADD is a sequence of steps, each of which records how to undo itself; a
//! failing step unwinds everything done before it, so a failed ADD leaves
//! no link, lease or record behind.

use crate::config::{LinkConfig, PluginConfig};
use crate::endpoint::{Endpoint, EndpointState, EndpointStore, LinkKind, PodRef, Role};
use crate::ipam::Ipam;
use crate::link::{eni, ipvlan, macvlan, pod_ifindex, with_index};
use crate::netlink::{Link, Netlink, format_mac, parse_mac};
use crate::netns::NetNs;
use crate::{datapath, fault, host_path, pod_setup};
use sluice_cni_spec::skel::Request;
use sluice_cni_spec::{CniError, CniResult, ErrorCode, Interface};
use sluice_ipam::cni::ENI_RESULT_KEY;
use sluice_ipam::eni::EniId;
use sluice_tc_datapath::attach::retire::Retired;
use tracing::{info, warn};

enum Undo {
    ReleaseAddresses,
    /// The pod link this ADD made, by index: whatever its name is by then
    /// (its creation name until renamed).
    DeleteLink {
        index: u32,
    },
    ReturnEni {
        host_name: String,
    },
    Detach {
        ep: Box<Endpoint>,
    },
    /// The pod's routes on the host child, and the child with the last.
    HostPath {
        name: String,
        ips: Vec<ipnetwork::IpNetwork>,
    },
    RemoveEndpoint,
}

struct Ctx<'a> {
    req: &'a Request<'a>,
    cfg: &'a PluginConfig,
    ipam: Ipam,
    store: EndpointStore,
}

impl Ctx<'_> {
    fn ifname(&self) -> &str {
        &self.req.inv.ifname
    }
    fn cid(&self) -> &str {
        &self.req.inv.container_id
    }
}

fn link_cfg(cfg: &PluginConfig) -> &LinkConfig {
    cfg.link.as_ref().expect("main role has a link config")
}

fn ctx<'a>(req: &'a Request<'a>, cfg: &'a PluginConfig) -> Ctx<'a> {
    Ctx {
        req,
        cfg,
        ipam: Ipam::from_section(cfg.ipam.as_ref().expect("validated: main role has ipam")),
        store: EndpointStore::new(&cfg.data_dir(), &cfg.name),
    }
}

pub async fn add(req: &Request<'_>, cfg: &PluginConfig) -> Result<CniResult, CniError> {
    let c = ctx(req, cfg);
    let pod_ns = NetNs::open_pod(req.inv.netns.as_deref().expect("ADD has a netns"))?;
    let host = Netlink::host()?;
    let pod = Netlink::in_netns(&pod_ns)?;
    let mut undo = Vec::new();
    match add_steps(&c, &host, &pod, &pod_ns, &mut undo).await {
        Ok(r) => Ok(r),
        Err(e) => {
            let failures = unwind(&c, &host, &pod, undo).await;
            if failures.is_empty() {
                Err(e)
            } else {
                Err(e.with_details(format!("rollback also failed: {}", failures.join("; "))))
            }
        }
    }
}

async fn add_steps(
    c: &Ctx<'_>,
    host: &Netlink,
    pod: &Netlink,
    pod_ns: &NetNs,
    undo: &mut Vec<Undo>,
) -> Result<CniResult, CniError> {
    let lc = link_cfg(c.cfg);
    // Find what we attach to before allocating anything, unless IPAM
    // decides it; asked together with whether the pod has the name taken.
    let (taken, configured) = futures::join!(pod.link_by_name(c.ifname()), configured_parent(c, host, lc));
    if taken?.is_some() {
        return Err(CniError::new(
            ErrorCode::InterfaceExists,
            format!(
                "interface {} already exists in netns {}",
                c.ifname(),
                pod_ns.path().display()
            ),
        ));
    }
    let configured = configured?;
    // Addresses first: a lease is its container id's, so that a DEL after
    // a crash here releases it with or without a record.
    let ipam = c.ipam.add(c.req).map_err(|e| e.context("IPAM"))?;
    undo.push(Undo::ReleaseAddresses);
    fault::at("add:ipam")?;
    let (host_link, mtu) = parent_for(host, lc, &ipam, configured).await?;
    let host_path = (c.cfg.host_path && host_path::wanted(lc)).then(|| host_path::name(host_link.index));
    // The record before any link: a DEL after a crash from here on knows
    // what this ADD may have made, and deletes nothing it did not. The
    // link by its MAC: an ENI keeps its own across the move (a DEL finds
    // it wherever it went), a macvlan gets one chosen here.
    let eni = matches!(lc, LinkConfig::Eni(_));
    let macvlan_mac = match lc {
        LinkConfig::Macvlan(_) => Some(
            macvlan::random_mac()
                .map_err(|e| CniError::new(ErrorCode::Io, format!("choosing a MAC for the macvlan: {e}")))?,
        ),
        _ => None,
    };
    let mut ep = Endpoint {
        network: c.cfg.name.clone(),
        container_id: c.cid().to_string(),
        ifname: c.ifname().to_string(),
        netns: pod_ns.path().display().to_string(),
        // An ENI keeps its own index; a macvlan or ipvlan is given one.
        ifindex: if eni { 0 } else { pod_ifindex(c.cid(), c.ifname()) },
        mac: match macvlan_mac {
            Some(m) => format_mac(&m),
            None if eni => host_link.mac_string(),
            None => String::new(),
        },
        ips: ipam.ips.iter().map(|i| i.address).collect(),
        role: Role::Main,
        link_kind: Some(lc.kind()),
        parent_ifindex: (!eni).then_some(host_link.index),
        host_ifname: eni.then(|| host_link.name.clone()),
        datapath: None,
        promote_to_tcx: false,
        host_path: host_path.clone(),
        pod: PodRef::from_args(&c.req.inv.args),
        state: EndpointState::Creating,
        created: Endpoint::now(),
    };
    c.store.put(&ep)?;
    undo.push(Undo::RemoveEndpoint);
    fault::at("add:record")?;
    let (announce, link) = create_link(c, host, pod, pod_ns, (&host_link, mtu, ep.ifindex), macvlan_mac, undo).await?;
    fault::at("add:link")?;
    // An ipvlan has its parent's MAC: only its index tells it apart, and
    // the record has it already unless the kernel chose another.
    let index_recorded = ep.ifindex == link.index;
    ep.ifindex = link.index;
    ep.mac = link.mac_string();
    if matches!(lc, LinkConfig::Ipvlan(_)) && !index_recorded {
        c.store.put(&ep)?;
    }
    fault::at("add:link-recorded")?;
    // Programs before the link comes up: no packet leaves unchecked.
    if c.cfg.datapath.enabled {
        let got = datapath::attach(c.cfg, pod_ns, pod, &ep).await?;
        ep.datapath = Some(got);
        ep.promote_to_tcx = datapath::promoted_later(c.cfg);
        undo.push(Undo::Detach {
            ep: Box::new(ep.clone()),
        });
        fault::at("add:attached")?;
    }
    pod_setup::configure(pod, pod_ns, &link, &ipam, announce).await?;
    fault::at("add:configured")?;
    let mut host_child = None;
    if let Some(name) = host_path {
        undo.push(Undo::HostPath {
            name,
            ips: ep.ips.clone(),
        });
        let made = host_path::attach(
            host,
            pod,
            lc,
            &host_link,
            &link,
            &ep.ips,
            &c.cfg.host_stack_cidrs,
            &c.cfg.data_dir(),
            pod_ns,
        )
        .await?;
        host_child = Some(made.child);
        fault::at("add:host-path")?;
    }
    ep.state = EndpointState::Ready;
    c.store.put(&ep)?;
    fault::at("add:ready")?;
    info!(container = c.cid(), ifname = c.ifname(), kind = ?lc.kind(), ips = ?ep.ips, "pod interface ready");
    let mut result = add_result(c, ipam, &link, mtu, pod_ns);
    if let Some(child) = host_child {
        // The host-side interface the node reaches the pod through.
        result.interfaces.push(Interface {
            name: child.name.clone(),
            mac: child.mac.as_ref().map(format_mac).unwrap_or_default(),
            mtu: None,
            sandbox: String::new(),
            extra: Default::default(),
        });
    }
    Ok(result)
}

/// The parent (and the pod link's MTU) the config names, found before
/// anything is allocated; None when IPAM decides it (an ENI pool).
async fn configured_parent(c: &Ctx<'_>, host: &Netlink, lc: &LinkConfig) -> Result<Option<(Link, u32)>, CniError> {
    Ok(match lc {
        LinkConfig::Eni(e) => {
            let l = eni::find(host, e).await?;
            let mtu = e.mtu.unwrap_or(l.mtu);
            Some((l, mtu))
        }
        _ if c.cfg.uses_eni_pool() => None,
        _ => match lc.parent() {
            Some(p) => {
                let l = host.link_by_name(p).await?.ok_or_else(|| missing_parent(host, p))?;
                let mtu = checked_mtu(&l, lc.mtu())?;
                Some((l, mtu))
            }
            None => None,
        },
    })
}

/// Where the pod link goes: an ENI-pool address is routed by the VPC to
/// its ENI only, so the pod goes there; otherwise the configured parent.
async fn parent_for(
    host: &Netlink,
    lc: &LinkConfig,
    ipam: &CniResult,
    configured: Option<(Link, u32)>,
) -> Result<(Link, u32), CniError> {
    match (ipam_eni(ipam)?, lc) {
        (Some(id), LinkConfig::Macvlan(_) | LinkConfig::Ipvlan(_)) => {
            let l = eni_parent(host, &id).await?;
            let mtu = checked_mtu(&l, lc.mtu())?;
            Ok((l, mtu))
        }
        (_, _) => configured.ok_or_else(|| {
            CniError::new(
                ErrorCode::InvalidConfig,
                "link.parent is unset and IPAM named no ENI for this pod",
            )
        }),
    }
}

/// Make the pod interface on `parent` with `mtu` (or move the ENI in);
/// returns whether the pod announces its address, and the link.
async fn create_link(
    c: &Ctx<'_>,
    host: &Netlink,
    pod: &Netlink,
    pod_ns: &NetNs,
    (parent, mtu, index): (&Link, u32, u32),
    macvlan_mac: Option<[u8; 6]>,
    undo: &mut Vec<Undo>,
) -> Result<(bool, Link), CniError> {
    let netns = pod_ns.raw_fd();
    match link_cfg(c.cfg) {
        LinkConfig::Macvlan(m) => {
            let mac = macvlan_mac.expect("a macvlan's MAC is chosen before it is made");
            let what = format!("macvlan {} on {}", c.ifname(), parent.name);
            let mk = |name: &str| macvlan::create_request(m, parent.index, name, mtu, mac, netns);
            Ok((true, create_named(c, host, pod, (&what, index), mk, undo).await?))
        }
        LinkConfig::Ipvlan(i) => {
            let what = format!("ipvlan {} on {}", c.ifname(), parent.name);
            let mk = |name: &str| ipvlan::create_request(i, parent.index, name, mtu, netns);
            let link = create_named(c, host, pod, (&what, index), mk, undo)
                .await
                .map_err(|e| {
                    if e.is(ErrorCode::NotAvailable) {
                        e.context("the kernel has no ipvlan support")
                    } else {
                        e
                    }
                })?;
            Ok((ipvlan::announces(i), link))
        }
        LinkConfig::Eni(_) => {
            host.move_link(
                parent.index,
                pod_ns.raw_fd(),
                c.ifname(),
                &format!("move ENI {} into the pod", parent.name),
            )
            .await?;
            undo.push(Undo::ReturnEni {
                host_name: parent.name.clone(),
            });
            let link = pod_link(pod, c.ifname()).await?;
            if link.mtu != mtu {
                pod.set_link(
                    rtnetlink::LinkUnspec::new_with_index(link.index).mtu(mtu).build(),
                    "set ENI mtu",
                )
                .await?;
            }
            Ok((true, link))
        }
    }
}

/// Make the pod's macvlan/ipvlan inside its namespace, under its final
/// name and the interface index its record holds (`pod_ifindex`). Older
/// kernels (Debian's 6.1, in the VM suite) check the new link's name in
/// its parent's namespace, where the parent is often `eth0`, and refuse
/// it: there the link is made under a name of its own and renamed once in
/// the pod.
async fn create_named(
    c: &Ctx<'_>,
    host: &Netlink,
    pod: &Netlink,
    (what, index): (&str, u32),
    request: impl Fn(&str) -> rtnetlink::packet_route::link::LinkMessage,
    undo: &mut Vec<Undo>,
) -> Result<Link, CniError> {
    let request = |name: &str| with_index(request(name), index);
    if host.add_link_unless_taken(request(c.ifname()), what).await? {
        let made = pod_link(pod, c.ifname()).await?;
        undo.push(Undo::DeleteLink { index: made.index });
        fault::at("add:link-created")?;
        return Ok(made);
    }
    let tmp = creation_name(c.cid(), c.ifname());
    host.add_link(request(&tmp), what).await?;
    let made = pod_link(pod, &tmp).await?;
    undo.push(Undo::DeleteLink { index: made.index });
    // Failing here, the link is in the pod under its creation name.
    fault::at("add:link-created")?;
    rename_in_pod(pod, made, c.ifname()).await
}

/// IPAM's result with the pod interface it now belongs to.
fn add_result(c: &Ctx<'_>, ipam: CniResult, link: &Link, mtu: u32, pod_ns: &NetNs) -> CniResult {
    let mut result = ipam;
    result.interfaces = vec![Interface {
        name: c.ifname().to_string(),
        mac: link.mac_string(),
        mtu: Some(mtu),
        sandbox: pod_ns.path().display().to_string(),
        extra: Default::default(),
    }];
    for ip in &mut result.ips {
        ip.interface = Some(0);
    }
    if let Some(dns) = &c.cfg.dns {
        result.dns = dns.clone();
    }
    result
}

/// The ENI an ENI-pool allocation belongs to, if IPAM said.
fn ipam_eni(r: &CniResult) -> Result<Option<EniId>, CniError> {
    r.extra
        .get(ENI_RESULT_KEY)
        .map(|v| {
            serde_json::from_value::<EniId>(v.clone())
                .map_err(|e| CniError::new(ErrorCode::Decode, format!("IPAM result {ENI_RESULT_KEY}: {e}")))
        })
        .transpose()
}

/// The host link of an ENI named by the pool: by MAC when the file gives one
/// (names can change), else by name.
async fn eni_parent(host: &Netlink, id: &EniId) -> Result<Link, CniError> {
    let found = eni::find_link(host, id.name.as_deref(), id.mac.as_deref()).await?;
    found.ok_or_else(|| {
        CniError::new(
            ErrorCode::MissingResource,
            format!(
                "ENI {} holding the pod's address is not in the {}",
                id.describe(),
                host.label()
            ),
        )
    })
}

fn missing_parent(host: &Netlink, parent: &str) -> CniError {
    CniError::new(
        ErrorCode::MissingResource,
        format!("parent interface {parent} not found in the {}", host.label()),
    )
}

/// The pod interface's MTU: explicit (at most the parent's) or the parent's.
fn checked_mtu(parent: &Link, mtu: Option<u32>) -> Result<u32, CniError> {
    match mtu {
        Some(m) if m > parent.mtu => Err(CniError::new(
            ErrorCode::InvalidConfig,
            format!(
                "link.mtu {m} is larger than the MTU {} of parent {}",
                parent.mtu, parent.name
            ),
        )),
        Some(m) => Ok(m),
        None => Ok(parent.mtu),
    }
}

/// Undo in reverse order; keep going after a failure and report them all.
async fn unwind(c: &Ctx<'_>, host: &Netlink, pod: &Netlink, undo: Vec<Undo>) -> Vec<String> {
    let mut failures = Vec::new();
    for step in undo.into_iter().rev() {
        let r = match step {
            Undo::RemoveEndpoint => c.store.remove(c.cid(), c.ifname()),
            Undo::DeleteLink { index } => remove_pod_link(pod, index).await,
            Undo::Detach { ep } => {
                let ns = NetNs::open(std::path::Path::new(&ep.netns)).ok();
                datapath::hold(c.cfg)
                    .and_then(|held| datapath::detach(c.cfg, &held, ns.as_ref(), c.cid(), c.ifname(), Some(&ep)))
            }
            Undo::ReturnEni { host_name } => return_eni(pod, c.ifname(), &host_name).await,
            Undo::ReleaseAddresses => c.ipam.del(c.req),
            Undo::HostPath { name, ips } => host_path::detach(host, &name, &ips, &c.cfg.data_dir()).await,
        };
        if let Err(e) = r {
            warn!(error = %e, "rollback step failed");
            failures.push(e.to_string());
        }
    }
    failures
}

async fn remove_pod_link(pod: &Netlink, index: u32) -> Result<(), CniError> {
    match pod.link_by_index(index).await? {
        Some(l) => pod.del_link(l.index, &l.name).await,
        None => Ok(()),
    }
}

async fn return_eni(pod: &Netlink, ifname: &str, host_name: &str) -> Result<(), CniError> {
    let Some(l) = pod.link_by_name(ifname).await? else {
        return Ok(());
    };
    // Leaving the namespace flushes the pod's addresses and routes; down first
    // so the host gets the device back quiet, as it gave it.
    pod.set_link(
        rtnetlink::LinkUnspec::new_with_index(l.index).down().build(),
        "set ENI down",
    )
    .await?;
    let host_ns = NetNs::current()?;
    pod.move_link(
        l.index,
        host_ns.raw_fd(),
        host_name,
        &format!("return ENI {ifname} to the host as {host_name}"),
    )
    .await
}

/// DEL: idempotent, and it succeeds with the namespace or interface gone.
pub async fn del(req: &Request<'_>, cfg: &PluginConfig) -> Result<(), CniError> {
    let c = ctx(req, cfg);
    let held = datapath::hold(cfg)?;
    let (ep, unreadable) = c.store.get_for_del(c.cid(), c.ifname())?;
    let pod_ns = NetNs::for_del(req.inv.netns.as_deref())?;
    let mut retired = None;
    if cfg.datapath.enabled || ep.as_ref().is_some_and(|e| e.datapath.is_some()) {
        // A macvlan or ipvlan this plugin made is deleted below and its
        // clsact filters go with it: they are not taken off first (an ENI
        // goes back to the node, so its are).
        let made_here = ep
            .as_ref()
            .is_some_and(|e| matches!(e.link_kind, Some(LinkKind::Macvlan | LinkKind::Ipvlan)));
        let filters_in = if made_here { None } else { pod_ns.as_ref() };
        if let (true, Some(ep), Some(ns)) = (made_here, &ep, &pod_ns) {
            retired = datapath::retire(cfg, c.cid(), c.ifname(), ep, ns)?;
        }
        datapath::detach(cfg, &held, filters_in, c.cid(), c.ifname(), ep.as_ref())?;
    }
    if unreadable {
        datapath::forget_unrecorded(cfg, c.cid(), c.ifname())?;
    }
    fault::at("del:detached")?;
    if let Some(ep) = &ep {
        remove_host_path(ep, &cfg.data_dir()).await?;
    }
    // Only what the record says this plugin made is undone: with no record,
    // no link is touched.
    match &ep {
        Some(ep) => remove_recorded_link(c.cid(), c.ifname(), ep, pod_ns.as_ref(), retired.as_ref()).await?,
        None => info!(
            container = c.cid(),
            ifname = c.ifname(),
            "no endpoint record: no link to remove"
        ),
    }
    fault::at("del:link-removed")?;
    c.ipam.del(req).map_err(|e| e.context("IPAM release"))?;
    fault::at("del:released")?;
    c.store.remove(c.cid(), c.ifname())?;
    info!(container = c.cid(), ifname = c.ifname(), "pod interface removed");
    Ok(())
}

/// Take the pod off its host path (host_path.rs), if the record says it
/// has one; the child goes with the parent's last pod.
pub(crate) async fn remove_host_path(ep: &Endpoint, data_dir: &std::path::Path) -> Result<(), CniError> {
    match &ep.host_path {
        Some(name) => host_path::detach(&Netlink::host()?, name, &ep.ips, data_dir).await,
        None => Ok(()),
    }
}

/// Remove (or, an ENI, hand back) the pod link a record names, if it is
/// still the one ADD made: its kind, and its MAC and index once recorded.
/// With the namespace gone, a macvlan/ipvlan died with it; a physical ENI
/// went back to the initial namespace under some name, found by its MAC.
/// A link `retired` names is taken down and renamed for the agent to
/// delete instead (datapath::retire).
pub(crate) async fn remove_recorded_link(
    cid: &str,
    ifname: &str,
    ep: &Endpoint,
    pod_ns: Option<&NetNs>,
    retired: Option<&Retired>,
) -> Result<(), CniError> {
    let is_eni = ep.link_kind == Some(LinkKind::Eni);
    let Some(ns) = pod_ns else {
        if is_eni
            && let (Some(name), Some(mac)) = (&ep.host_ifname, parse_mac(&ep.mac))
            && !eni::recover_by_mac(&Netlink::host()?, &mac, name).await?
        {
            warn!(container = cid, eni = %name, "ENI not found after its pod namespace was deleted");
        }
        return Ok(());
    };
    let pod = Netlink::in_netns(ns)?;
    let mut found = pod.link_by_name(ifname).await?;
    if found.is_none() && ep.state == EndpointState::Creating {
        found = pod.link_by_name(&creation_name(cid, ifname)).await?;
    }
    let Some(link) = found else { return Ok(()) };
    let kind = LinkKind::from_netlink(link.kind.as_deref());
    // An ENI is whatever device the node had (a veth in the simulated VPC):
    // its MAC says it is ours.
    let matches = (is_eni || Some(kind) == ep.link_kind)
        && (ep.mac.is_empty() || link.mac_string() == ep.mac)
        && (ep.ifindex == 0 || link.index == ep.ifindex);
    if !matches {
        warn!(
            container = cid,
            ifname,
            kind = ?kind,
            mac = %link.mac_string(),
            "the pod's link is not the one recorded: left alone"
        );
        return Ok(());
    }
    match (&ep.host_ifname, is_eni) {
        (Some(host_name), true) => return_eni(&pod, &link.name, host_name).await,
        (None, true) => {
            warn!(
                container = cid,
                ifname, "no host name recorded for the ENI: left in the pod"
            );
            Ok(())
        }
        _ => match retired {
            Some(r) if r.ifindex == link.index => {
                // Its addresses go (the pool may lease them again at once)
                // and its name (the next ADD in this namespace may want it);
                // taking it down too would cost 5-12 ms under RTNL here, a
                // third of the reference plugins' whole DEL, for a device
                // that answers for no address.
                for ip in &ep.ips {
                    pod.del_address(link.index, *ip).await?;
                }
                pod.set_link(
                    rtnetlink::LinkUnspec::new_with_index(link.index)
                        .name(r.ifname.clone())
                        .build(),
                    &format!("rename {} to {}", link.name, r.ifname),
                )
                .await
            }
            _ => pod.del_link(link.index, &link.name).await,
        },
    }
}

/// CHECK: the record, the interface (same MAC) and its addresses are as ADD left them.
pub async fn check(req: &Request<'_>, cfg: &PluginConfig) -> Result<(), CniError> {
    let c = ctx(req, cfg);
    let ep = c.store.get(c.cid(), c.ifname())?.ok_or_else(|| {
        CniError::new(
            ErrorCode::CheckFailed,
            format!("no endpoint record for {}/{}", c.cid(), c.ifname()),
        )
    })?;
    let pod_ns = NetNs::open_pod(req.inv.netns.as_deref().expect("CHECK has a netns"))?;
    let pod = Netlink::in_netns(&pod_ns)?;
    let link = pod.link_by_name(c.ifname()).await?.ok_or_else(|| {
        CniError::new(
            ErrorCode::CheckFailed,
            format!("interface {} is missing from {}", c.ifname(), pod.label()),
        )
    })?;
    if link.mac_string() != ep.mac {
        return Err(CniError::new(
            ErrorCode::CheckFailed,
            format!(
                "interface {} has MAC {} but was created with {}",
                c.ifname(),
                link.mac_string(),
                ep.mac
            ),
        ));
    }
    if !link.up {
        return Err(CniError::new(
            ErrorCode::CheckFailed,
            format!("interface {} is down", c.ifname()),
        ));
    }
    pod_setup::verify_addresses(&pod, &link, &ep.ips).await?;
    if cfg.datapath.enabled {
        datapath::check(cfg, &pod_ns, &pod, &ep).await?;
    }
    c.ipam.check(req)
}

/// STATUS: the parent (or ENI) is present and IPAM can hand out an address.
pub async fn status(req: &Request<'_>, cfg: &PluginConfig) -> Result<(), CniError> {
    let c = ctx(req, cfg);
    let host = Netlink::host()?;
    let unavailable = |m: String| CniError::new(ErrorCode::NotAvailable, m);
    match link_cfg(cfg) {
        LinkConfig::Eni(e) => eni::find(&host, e).await.map(drop).map_err(|e| unavailable(e.msg))?,
        // Without a parent the ENI pool picks one per pod; IPAM STATUS speaks for it.
        lc => {
            if let Some(p) = lc.parent() {
                host.link_by_name(p)
                    .await?
                    .map(drop)
                    .ok_or_else(|| unavailable(format!("parent {p} is missing")))?
            }
        }
    }
    c.ipam.status(req)
}

/// The name a pod's macvlan/ipvlan link is created under (15 bytes at most,
/// one per attachment, never a name a node gives its own links).
fn creation_name(container_id: &str, ifname: &str) -> String {
    format!("sl{:08x}", sluice_tc_datapath::pin::attachment_id(container_id, ifname))
}

/// The link just made or moved into the pod.
async fn pod_link(pod: &Netlink, name: &str) -> Result<Link, CniError> {
    pod.link_by_name(name).await?.ok_or_else(|| {
        CniError::new(
            ErrorCode::Netlink,
            format!("{name} vanished from {} after creation", pod.label()),
        )
    })
}

/// Give the new link in the pod its requested name (on failure the
/// rollback deletes it by index); returns it as it is now.
async fn rename_in_pod(pod: &Netlink, mut link: Link, ifname: &str) -> Result<Link, CniError> {
    let rename = rtnetlink::LinkUnspec::new_with_index(link.index).name(ifname).build();
    pod.set_link(rename, &format!("rename {} to {ifname}", link.name))
        .await?;
    link.name = ifname.to_string();
    Ok(link)
}
