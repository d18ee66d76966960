//! Pod interfaces a DEL left on their TCX links for the agent to delete
//! (sluice_tc_datapath::attach::retire): deleted, and their links
//! unpinned, once the node is quiet, one at a time between pod moves.
//!
//! Deleting a device with TCX links waits for two RCU grace periods under
//! RTNL; done here, no DEL waits for them, and the next pod's ADD or DEL
//! waits only when it meets one reap under way (tens of milliseconds).

use sluice_tc_datapath::attach::retire::{self, Retired};
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// Errors of one reap, with what and where.
#[derive(Debug, thiserror::Error)]
pub enum ReapError {
    #[error("{what} {}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("deleting {ifname} (#{ifindex}) in {}: {message}", netns.display())]
    Netlink {
        ifname: String,
        ifindex: u32,
        netns: PathBuf,
        message: String,
    },
    #[error(transparent)]
    Attach(#[from] sluice_tc_datapath::attach::AttachError),
}

/// The records a DEL left (with their files), in name order.
pub fn pending(cni_data_dir: &Path) -> Vec<(PathBuf, Retired)> {
    let Ok(rd) = std::fs::read_dir(retire::records_dir(cni_data_dir)) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, Retired)> = rd
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "json"))
        .filter_map(|p| {
            let r = std::fs::read(&p).ok().and_then(|b| serde_json::from_slice(&b).ok())?;
            Some((p, r))
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// What a reap did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reaped {
    /// The interface deleted, then its links unpinned.
    Deleted,
    /// The interface was gone (its namespace went, the kernel took it):
    /// its links unpinned.
    AlreadyGone,
}

/// Delete one retired interface, if it is still the one the record names
/// (its namespace by inode, its index and its retired name), then unpin
/// its links and remove the record.
pub fn reap(file: &Path, r: &Retired) -> Result<Reaped, ReapError> {
    let done = match File::open(&r.netns) {
        Ok(ns) if ns.metadata().is_ok_and(|m| m.ino() == r.netns_inode) => delete_in(&ns, r)?,
        // The path is gone or names another namespace: the pod's went,
        // and its interfaces with it.
        _ => Reaped::AlreadyGone,
    };
    retire::unpin_retired(r)?;
    match std::fs::remove_file(file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(ReapError::Io {
            what: "removing",
            path: file.to_path_buf(),
            source: e,
        }),
        _ => Ok(done),
    }
}

/// In `ns`, delete the link `r.ifindex` if it is named `r.ifname`.
fn delete_in(ns: &File, r: &Retired) -> Result<Reaped, ReapError> {
    let fail = |message: String| ReapError::Netlink {
        ifname: r.ifname.clone(),
        ifindex: r.ifindex,
        netns: r.netns.clone(),
        message,
    };
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| fail(format!("entering: {e}")))?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| fail(e.to_string()))?;
            rt.block_on(async {
                use futures::TryStreamExt;
                use netlink_packet_route::link::LinkAttribute;
                let (conn, handle, _) = rtnetlink::new_connection().map_err(|e| fail(e.to_string()))?;
                tokio::spawn(conn);
                let found = match handle.link().get().match_index(r.ifindex).execute().try_next().await {
                    Ok(l) => l,
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => None,
                    Err(e) => return Err(fail(format!("looking it up: {e}"))),
                };
                let named = found.is_some_and(|l| {
                    l.attributes
                        .iter()
                        .any(|a| matches!(a, LinkAttribute::IfName(n) if *n == r.ifname))
                });
                if !named {
                    return Ok(Reaped::AlreadyGone);
                }
                match handle.link().del(r.ifindex).execute().await {
                    Ok(()) => Ok(Reaped::Deleted),
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(Reaped::AlreadyGone),
                    Err(e) => Err(fail(e.to_string())),
                }
            })
        })
        .join()
        .unwrap_or_else(|_| Err(fail("the worker panicked".into())))
    })
}
