//! The eBPF datapath on a pod interface: ADD attaches the node's programs
//! and writes the pod's addresses into the endpoint map, DEL undoes both,
//! CHECK proves the pod still runs our programs and nothing else.

use crate::config::PluginConfig;
use crate::endpoint::{Endpoint, EndpointStore, Role};
use crate::netlink::{Netlink, parse_mac};
use crate::netns::NetNs;
use sluice_cni_spec::{CniError, ErrorCode};
use sluice_tc_datapath::attach::retire::{self, Retired};
use sluice_tc_datapath::attach::{self, AttachError, AttachMode, Attached, Node};
use sluice_tc_datapath::loader::versioned_dir;
use sluice_tc_datapath::maps::endpoints::Endpoint as EndpointEntry;
use sluice_tc_datapath::maps::{EndpointMaps, MapsError, PolicyMaps, Source};
use sluice_tc_datapath::pin::{self, PinError};
use std::path::Path;
use tracing::{info, warn};

fn cni_err(e: AttachError, what: &str) -> CniError {
    let code = match &e {
        AttachError::Pin(PinError::NotBpffs { .. }) => ErrorCode::InvalidEnvironment,
        AttachError::LockTimeout(..) => ErrorCode::TryAgainLater,
        _ => ErrorCode::Io,
    };
    CniError::new(code, format!("datapath: {what}: {e}"))
}

fn maps_err(what: impl std::fmt::Display) -> impl FnOnce(MapsError) -> CniError {
    move |e| CniError::new(ErrorCode::Io, format!("datapath: {what}: {e}"))
}

/// The endpoint map under a versioned directory.
fn endpoint_maps(versioned: &Path) -> Result<EndpointMaps, CniError> {
    EndpointMaps::open(&mut Source::pinned(versioned)).map_err(maps_err("opening the endpoint map"))
}

/// Attach to the endpoint's interface and publish its addresses. Returns
/// how it was attached, for the endpoint record.
pub async fn attach(cfg: &PluginConfig, ns: &NetNs, pod: &Netlink, ep: &Endpoint) -> Result<Attached, CniError> {
    let what = format!("{} in {}", ep.ifname, ns.path().display());
    let mut node = Node::open(&cfg.datapath).map_err(|e| cni_err(e, "opening the node datapath"))?;
    if node.relinked > 0 {
        info!(
            links = node.relinked,
            "datapath upgraded: existing pods moved to the new programs"
        );
    }
    reattach_tc_endpoints(cfg, &mut node);
    let key = pin::link_key(&ep.container_id, &ep.ifname);
    let mode = if promoted_later(cfg) {
        AttachMode::Tc
    } else {
        cfg.datapath.attach
    };
    let got = if mode == AttachMode::Tc {
        // Over the socket ADD has open in the pod's namespace.
        let progs = node
            .clsact_programs(&key)
            .map_err(|e| cni_err(e, &format!("attaching to {what}")))?;
        let answers = pod.send_all(progs.requests(ep.ifindex), "clsact filters").await;
        if let Err(e) = answers.and_then(|errnos| {
            progs
                .judge(&ep.ifname, &errnos)
                .map_err(|e| cni_err(e, &format!("attaching to {what}")))
        }) {
            let _ = attach::detach(node.dir(), Some(ns.as_fd()), &ep.ifname, &key);
            return Err(e);
        }
        Attached::Tc
    } else {
        node.attach(ns.as_fd(), &ep.ifname, &key, mode)
            .map_err(|e| cni_err(e, &format!("attaching to {what}")))?
    };
    // The hold first: the pod is judged by it from its first packet.
    let held = crate::policy_hold::must_hold(cfg, ep);
    let undo_hold = || {
        if held {
            crate::policy_hold::release(node.dir(), ep)
        }
    };
    if let Err(e) = crate::fault::at("add:programs")
        .and_then(|()| {
            if held {
                crate::policy_hold::hold(node.dir(), ep)
            } else {
                Ok(())
            }
        })
        .and_then(|()| publish(node.dir(), ep, socket_namespace(ep, ns)?))
    {
        undo_hold();
        let _ = attach::detach(node.dir(), Some(ns.as_fd()), &ep.ifname, &key);
        return Err(e);
    }
    if let Err(e) = crate::host_port::publish(cfg, node.dir(), ep) {
        let _ = unpublish(node.dir(), ep);
        undo_hold();
        let _ = attach::detach(node.dir(), Some(ns.as_fd()), &ep.ifname, &key);
        return Err(e);
    }
    info!(ifname = %ep.ifname, mode = got.as_str(), "datapath attached");
    Ok(got)
}

/// `auto` attaches clsact filters at ADD and leaves TCX links to the agent,
/// once no pod is starting: a TCX link costs an RCU grace period under
/// RTNL (10-18 ms here), two of them most of an ADD, and every other
/// netlink call on the node waits meanwhile.
pub fn promoted_later(cfg: &PluginConfig) -> bool {
    cfg.datapath.attach == AttachMode::Auto
}

/// How a pod's programs run now: a pod attached with filters and moved
/// onto TCX links since has its links pinned.
fn attached_now(node: &Node, ep: &Endpoint, attached: Attached) -> Attached {
    let key = pin::link_key(&ep.container_id, &ep.ifname);
    if ep.promote_to_tcx && attached == Attached::Tc && node.has_links(&key) {
        Attached::Tcx
    } else {
        attached
    }
}

/// The namespace the source check holds a pod's sockets to, or 0 for none.
/// A link sluice made has an index no other pod of the node has, which the
/// check compares already; behind another plugin every pod's interface may
/// be number 2, and only the namespace tells the pods apart. Where the
/// index suffices neither the comparison (a helper call, ~25 ns a packet
/// on the CI machine) nor reading the cookie at ADD is paid for.
fn socket_namespace(ep: &Endpoint, ns: &NetNs) -> Result<u64, CniError> {
    match ep.role {
        Role::Chained => match ns.run(sluice_tc_datapath::netns_cookie::current)? {
            Ok(cookie) => Ok(cookie),
            // A kernel older than the option (5.14) cannot let tc programs
            // read a socket's namespace either: the check has no use for it.
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => Ok(0),
            Err(e) => Err(CniError::new(
                ErrorCode::Io,
                format!("reading the network namespace cookie of {}: {e}", ns.path().display()),
            )),
        },
        Role::Main => Ok(0),
    }
}

/// A pod interface has a handful of addresses; more is a hostile or broken
/// result that would fill the node's endpoint map.
pub const MAX_ADDRESSES: usize = 16;

/// Publish every address of the endpoint, or none: a failure takes back
/// the ones already written (a map filled by one ADD fails every later one).
/// `netns_cookie` is the pod's namespace's, for the source check.
fn publish(versioned: &Path, ep: &Endpoint, netns_cookie: u64) -> Result<(), CniError> {
    if ep.ips.len() > MAX_ADDRESSES {
        return Err(CniError::new(
            ErrorCode::InvalidConfig,
            format!(
                "{} has {} addresses; a pod interface takes at most {MAX_ADDRESSES}",
                ep.ifname,
                ep.ips.len()
            ),
        ));
    }
    let mut maps = endpoint_maps(versioned)?;
    let mac = parse_mac(&ep.mac).unwrap_or_default();
    let endpoint_id = pin::attachment_id(&ep.container_id, &ep.ifname);
    for (i, ip) in ep.ips.iter().enumerate() {
        let entry = EndpointEntry {
            addr: ip.ip(),
            ifindex: ep.ifindex,
            endpoint_id,
            mac,
            parent_ifindex: ep.parent_ifindex.unwrap_or(0),
            netns_cookie,
        };
        if let Err(e) = maps.add(&entry) {
            for done in &ep.ips[..i] {
                let _ = maps.remove(done.ip(), endpoint_id);
            }
            return Err(maps_err(format!("endpoint {}", ip.ip()))(e));
        }
    }
    Ok(())
}

/// Take the endpoint's addresses back out of the endpoint map.
fn unpublish(versioned: &Path, ep: &Endpoint) -> Result<(), CniError> {
    let mut maps = endpoint_maps(versioned)?;
    let id = pin::attachment_id(&ep.container_id, &ep.ifname);
    for ip in &ep.ips {
        maps.remove(ip.ip(), id)
            .map_err(maps_err(format!("endpoint {}", ip.ip())))?;
    }
    Ok(())
}

/// clsact filters name no pin that an upgrade could follow: after one, move
/// this network's tc-mode pods explicitly (best effort; CHECK reports any
/// that stay behind).
fn reattach_tc_endpoints(cfg: &PluginConfig, node: &mut Node) {
    if !node.upgraded {
        return;
    }
    let Ok(eps) = EndpointStore::new(&cfg.data_dir(), &cfg.name).list() else {
        return;
    };
    let on_filters: Vec<&Endpoint> = eps
        .iter()
        .filter(|e| e.datapath.is_some_and(|a| attached_now(node, e, a) == Attached::Tc))
        .collect();
    for ep in on_filters {
        if let Ok(ns) = NetNs::open(Path::new(&ep.netns))
            && let Err(e) = node.reattach_tc(ns.as_fd(), &ep.ifname)
        {
            warn!(container = %ep.container_id, error = %e, "could not move a tc-mode pod to the new programs");
        }
    }
}

/// The node's datapath lock, held shared (None where no datapath was ever
/// loaded), for as long as this value lives.
///
/// DEL holds it from before it reads the pod's record until the record is
/// gone. The agent moves a pod from filters onto TCX links under the lock
/// held exclusively and reads the pod's record again once it holds it:
/// were the lock held only while DEL takes the programs off, a move that
/// listed the pod before could pin links between that and the record's
/// removal, onto an interface about to go (links that would outlive the
/// pod). Shared: DELs and ADDs run side by side. Every other caller of
/// [`detach`] (a failed ADD's rollback, GC) holds it the same way.
pub struct Held {
    _lock: Option<std::fs::File>,
}

pub fn hold(cfg: &PluginConfig) -> Result<Held, CniError> {
    let dir = versioned_dir(&cfg.datapath.bpffs);
    if !dir.exists() {
        return Ok(Held { _lock: None });
    }
    attach::hold_shared(&dir)
        .map(|f| Held { _lock: Some(f) })
        .map_err(|e| cni_err(e, "taking the datapath lock"))
}

/// Detach and unpublish, under the lock `_held` proves is held (never
/// half-way through the agent's move of this pod onto TCX links).
/// Idempotent; works with the namespace gone.
pub fn detach(
    cfg: &PluginConfig,
    _held: &Held,
    ns: Option<&NetNs>,
    container_id: &str,
    ifname: &str,
    ep: Option<&Endpoint>,
) -> Result<(), CniError> {
    let dir = versioned_dir(&cfg.datapath.bpffs);
    if !dir.exists() {
        return Ok(());
    }
    let key = pin::link_key(container_id, ifname);
    attach::detach(&dir, ns.map(NetNs::as_fd), ifname, &key)
        .map_err(|e| cni_err(e, &format!("detaching from {ifname}")))?;
    crate::host_port::unpublish(cfg, &dir, pin::attachment_id(container_id, ifname))?;
    if let Some(ep) = ep {
        let mut src = Source::pinned(&dir);
        let mut endpoints = EndpointMaps::open(&mut src).map_err(maps_err("opening the endpoint map"))?;
        let mut policy = PolicyMaps::open(&mut src).map_err(maps_err("opening the policy maps"))?;
        let id = pin::attachment_id(container_id, ifname);
        for ip in &ep.ips {
            endpoints
                .remove(ip.ip(), id)
                .map_err(maps_err(format!("endpoint {}", ip.ip())))?;
        }
        // The pod's isolation goes with it, so that a sandbox that comes
        // back under the same id is not judged by a stale policy before the
        // agent writes its own; the agent's next apply removes the rules.
        policy
            .remove_endpoint_policy(id)
            .map_err(maps_err(format!("policy of endpoint {id}")))?;
    }
    Ok(())
}

/// A DEL of a pod on TCX links while the agent runs hands its interface
/// and links to the agent (attach/retire.rs): its links' pins move under
/// `retired/` and its record is written, before the interface loses the
/// pod's addresses and is renamed. None when the DEL does the work itself:
/// no agent, no links, or an interface not recorded by index.
pub fn retire(
    cfg: &PluginConfig,
    container_id: &str,
    ifname: &str,
    ep: &Endpoint,
    pod_ns: &NetNs,
) -> Result<Option<Retired>, CniError> {
    let versioned = versioned_dir(&cfg.datapath.bpffs);
    let key = pin::link_key(container_id, ifname);
    if ep.ifindex == 0 || !attach::has_links(&versioned, &key) || !retire::reaper_alive(&cfg.data_dir()) {
        return Ok(None);
    }
    let io = |what: &str| {
        let what = what.to_string();
        move |e: std::io::Error| CniError::new(ErrorCode::Io, format!("datapath: {what}: {e}"))
    };
    let inode = nix::sys::stat::fstat(pod_ns.as_fd())
        .map_err(std::io::Error::from)
        .map_err(io("reading the pod netns's inode"))?
        .st_ino;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let r = Retired {
        name: format!("{inode:x}-{}-{nanos}", ep.ifindex),
        netns: pod_ns.path().to_path_buf(),
        netns_inode: inode,
        ifindex: ep.ifindex,
        ifname: retire::retired_ifname(ep.ifindex),
        versioned: versioned.clone(),
    };
    // The record first: whatever a crash leaves after it, the agent finds.
    let dir = retire::records_dir(&cfg.data_dir());
    let path = dir.join(format!("{}.json", r.name));
    let tmp = dir.join(format!(".{}.tmp", r.name));
    let body = serde_json::to_vec(&r).expect("a record serializes");
    std::fs::write(&tmp, body)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(io(&format!("writing {}", path.display())))?;
    retire::retire_links(&versioned, &key, &r.name)
        .map_err(|e| cni_err(e, &format!("retiring the links of {ifname}")))?;
    info!(container = container_id, ifname, retired = %r.ifname, "pod on TCX links: its interface and links left to the agent");
    Ok(Some(r))
}

/// DEL of a pod whose record could not be read: the endpoint entries its
/// attachment published, found by their owner tag since the record that
/// named the addresses is lost, and its policy. Only for a record that was
/// there: a DEL of an id never added here searches nothing.
pub fn forget_unrecorded(cfg: &PluginConfig, container_id: &str, ifname: &str) -> Result<(), CniError> {
    let dir = versioned_dir(&cfg.datapath.bpffs);
    if !dir.exists() {
        return Ok(());
    }
    let id = pin::attachment_id(container_id, ifname);
    let mut src = Source::pinned(&dir);
    let mut endpoints = EndpointMaps::open(&mut src).map_err(maps_err("opening the endpoint map"))?;
    let owned: Vec<EndpointEntry> = endpoints
        .entries()
        .map_err(maps_err("listing the endpoint map"))?
        .into_iter()
        .filter(|e| e.endpoint_id == id)
        .collect();
    for e in owned {
        warn!(container = container_id, ifname, addr = %e.addr, "endpoint entry of an unreadable record removed");
        endpoints
            .remove(e.addr, id)
            .map_err(maps_err(format!("endpoint {}", e.addr)))?;
    }
    PolicyMaps::open(&mut src)
        .map_err(maps_err("opening the policy maps"))?
        .remove_endpoint_policy(id)
        .map_err(maps_err(format!("policy of endpoint {id}")))
}

/// CHECK: our programs, and only ours, on both sides of the interface, and
/// every address of the pod in the endpoint map, pointing at it.
pub async fn check(cfg: &PluginConfig, ns: &NetNs, pod: &Netlink, ep: &Endpoint) -> Result<(), CniError> {
    let failed = |m: String| CniError::new(ErrorCode::CheckFailed, format!("datapath: {m}"));
    let attached = ep.datapath.ok_or_else(|| {
        failed(format!(
            "endpoint {}/{} was recorded without a datapath",
            ep.container_id, ep.ifname
        ))
    })?;
    // CHECK changes nothing: no load, no upgrade.
    let mut node = Node::open_existing(&cfg.datapath).map_err(|e| failed(e.to_string()))?;
    let attached = attached_now(&node, ep, attached);
    let key = pin::link_key(&ep.container_id, &ep.ifname);
    node.check(ns.as_fd(), &ep.ifname, &key, attached)
        .map_err(|m| failed(format!("{m} (in {})", ns.path().display())))?;
    if attached == Attached::Tc {
        let (egress_id, ingress_id) = node.program_ids().map_err(|e| cni_err(e, "program ids"))?;
        for (egress, id, side) in [(true, egress_id, "egress"), (false, ingress_id, "ingress")] {
            let ids = pod.bpf_filter_prog_ids(ep.ifindex, egress).await?;
            if ids != [id] {
                return Err(failed(format!(
                    "{side} filters of {} in {} run programs {ids:?}, expected only sluice's {id}",
                    ep.ifname,
                    ns.path().display()
                )));
            }
        }
    }
    let id = pin::attachment_id(&ep.container_id, &ep.ifname);
    let maps = endpoint_maps(node.dir())?;
    for ip in &ep.ips {
        match maps.get(ip.ip()).map_err(maps_err("reading the endpoint map"))? {
            Some(v) if v.endpoint_id == id && v.ifindex == ep.ifindex => {}
            Some(v) => {
                return Err(failed(format!(
                    "endpoint map entry for {} belongs to ifindex {} (id {}), not {}",
                    ip.ip(),
                    v.ifindex,
                    v.endpoint_id,
                    ep.ifname
                )));
            }
            None => return Err(failed(format!("{} is missing from the endpoint map", ip.ip()))),
        }
    }
    Ok(())
}
