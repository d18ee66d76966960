//! Pods the CNI plugin attached with clsact filters for a fast start
//! (`datapath.attach: auto`), moved onto TCX links once no pod is starting.
//!
//! A TCX link costs an RCU grace period under RTNL when it is made (and
//! another when it goes): two per pod, 10-18 ms each here, during which
//! every netlink call of the node waits, the next pod's ADD included. The
//! plugin's ADD therefore attaches filters (about 1 ms), and this moves
//! the pod onto links when the node has been quiet for `QUIET`: pinned
//! links that a program upgrade moves with `bpf_link_update` and that a
//! pod cannot take off with NET_ADMIN alone, as filters can be. One pod at
//! a time, under the datapath lock held exclusively (no ADD or DEL of the
//! node meanwhile, so none takes the pod half-way).
//!
//! A packet costs less on a link than on a filter (the classifier's path:
//! `bench-attach`), and its DEL more (the two grace periods again). With
//! `--tcx-links net-admin` only the pods that could delete their filters
//! are moved (a container with `NET_ADMIN`, or privileged:
//! `objects::administers_network`), and those the agent knows no Pod
//! object of (a record without the pod's name, as outside Kubernetes).

use crate::endpoint_gc::records;
use sluice_tc_datapath::attach::{self, AttachError, Node, Promotion};
use sluice_tc_datapath::loader::versioned_dir;
use sluice_tc_datapath::pin;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long no record may have changed (no ADD or DEL finished) before a
/// pod is moved.
pub const QUIET: Duration = Duration::from_millis(500);

/// A pod on filters that asks for links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pending {
    pub container_id: String,
    pub ifname: String,
    pub netns: PathBuf,
    /// "namespace/name" of the pod its record names, if any.
    pub pod: Option<String>,
}

impl Pending {
    /// Its attachment's key (the name of its links' directory).
    pub fn key(&self) -> String {
        pin::link_key(&self.container_id, &self.ifname)
    }
}

/// The pods of this node's records that ask for TCX links and do not have
/// them yet (their ADD done, their netns there).
pub fn pending(cni_data_dir: &Path, bpffs: &Path) -> Vec<Pending> {
    let versioned = versioned_dir(bpffs);
    asking(cni_data_dir)
        .filter(|p| !attach::has_links(&versioned, &p.key()))
        .collect()
}

/// The pods whose records ask for TCX links, with or without them.
fn asking(cni_data_dir: &Path) -> impl Iterator<Item = Pending> {
    records(cni_data_dir)
        .into_iter()
        .map(|(_, r)| r)
        .filter(|r| r.promote_to_tcx && r.state.as_deref().is_none_or(|s| s == "ready"))
        .filter(|r| !r.netns.is_empty() && Path::new(&r.netns).exists())
        .map(|r| Pending {
            pod: r.pod.as_ref().map(|p| p.key()),
            container_id: r.container_id,
            ifname: r.ifname,
            netns: PathBuf::from(r.netns),
        })
}

/// What a move did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Moved {
    /// What the node's attach did (see `Promotion`).
    Node(Promotion),
    /// The pod's record went while the move waited for the lock: its DEL
    /// ran. Nothing done.
    Gone,
}

/// Move one pod onto TCX links. `p` came from `pending`, read without the
/// node's lock: once the lock is held (no ADD or DEL under way, as DEL
/// holds it until the pod's record is gone), the pod's record must still
/// ask, or the links would be pinned for a pod whose DEL already ran and
/// outlive it.
pub fn promote(cni_data_dir: &Path, bpffs: &Path, p: &Pending) -> Result<Moved, AttachError> {
    let ns = std::fs::File::open(&p.netns).map_err(|source| AttachError::Io {
        what: "opening the pod's netns".into(),
        path: p.netns.clone(),
        source,
    })?;
    let mut node = Node::open_exclusive(bpffs)?;
    if !asking(cni_data_dir).any(|r| r == *p) {
        return Ok(Moved::Gone);
    }
    node.promote(ns.as_fd(), &p.ifname, &p.key()).map(Moved::Node)
}
