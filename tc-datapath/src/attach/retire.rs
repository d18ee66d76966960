//! A DEL that leaves a pod on TCX links for the agent to take down.
//!
//! Taking a TCX link off a device waits for an RCU grace period under
//! RTNL, one per side, whether its link is released or its device is
//! deleted (`tcx_entry_sync`, `dev_tcx_uninstall`): a DEL of a pod the
//! agent moved onto links took twice the reference plugins' DEL. While the
//! agent runs, such a DEL takes the pod's interface down and renames it
//! out of the pod's way instead, moves the links' pins under `retired/`
//! and leaves a [`Retired`] record. The agent deletes the interface and
//! unpins the links once the node is quiet (no ADD or DEL for a while,
//! as it moves pods onto links), or the kernel deletes the interface
//! first with the pod's namespace. A down interface carries no packet, and
//! the pod's address is the pool's again at once as before: the renamed
//! interface no longer answers for it.
//!
//! The agent holds [`hold_reaper`] for its life: a DEL that finds no
//! holder deletes the interface and unpins the links itself, as before.

use super::{AttachError, Side, io_err, remove_link_pins};
use aya::programs::links::{FdLink, PinnedLink};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::path::{Path, PathBuf};

/// The directory of retired links' pins, under the layout's.
pub const RETIRED_DIR: &str = "retired";

/// The name a retired pod interface gets: out of the way of the next ADD
/// in the same namespace, and a name the agent checks before it deletes.
pub fn retired_ifname(ifindex: u32) -> String {
    format!("sldel{ifindex:x}")
}

/// What a DEL left for the agent, one file per interface under the CNI
/// data directory's `retired/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Retired {
    /// The name of this record and of the links' directory under `retired/`.
    pub name: String,
    /// The pod's netns as the runtime gave it, and its inode (the path may
    /// name another namespace by the time the agent looks).
    pub netns: PathBuf,
    pub netns_inode: u64,
    pub ifindex: u32,
    /// `retired_ifname(ifindex)`.
    pub ifname: String,
    /// The layout directory the links were pinned under.
    pub versioned: PathBuf,
}

impl Retired {
    /// The links' directory.
    pub fn links(&self) -> PathBuf {
        self.versioned.join(RETIRED_DIR).join(&self.name)
    }
}

/// The records' directory under a CNI data directory.
pub fn records_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("retired")
}

/// Hold the reaper's lock for as long as the file lives (the agent's
/// life): an exclusive flock on the records' directory, made if missing.
/// Fails with `WouldBlock` while another process holds it.
pub fn hold_reaper(data_dir: &Path) -> Result<File, AttachError> {
    let dir = records_dir(data_dir);
    std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
    let f = File::open(&dir).map_err(io_err("opening", &dir))?;
    f.try_lock().map_err(|e| AttachError::Io {
        what: "locking the reaper's directory".into(),
        path: dir.clone(),
        source: e.into(),
    })?;
    Ok(f)
}

/// Whether a reaper (the agent) holds its lock now.
pub fn reaper_alive(data_dir: &Path) -> bool {
    let Ok(f) = File::open(records_dir(data_dir)) else {
        return false;
    };
    matches!(f.try_lock_shared(), Err(std::fs::TryLockError::WouldBlock))
}

/// Move the pod attachment `key`'s pinned links to `retired/<name>`: the
/// links stay attached (pinned again before the old pins go, so that no
/// moment leaves them without a reference). Returns whether there were
/// any.
pub fn retire_links(versioned: &Path, key: &str, name: &str) -> Result<bool, AttachError> {
    let from = versioned.join(super::Hook::Pod.dir()).join(key);
    let to = versioned.join(RETIRED_DIR).join(name);
    let mut moved = false;
    for side in Side::BOTH {
        let path = from.join(side.name());
        let pinned = match PinnedLink::from_pin(&path) {
            Ok(p) => p,
            Err(_) if !path.exists() => continue,
            Err(e) => return Err(super::link_err(format!("opening link {}", path.display()))(e)),
        };
        std::fs::create_dir_all(&to).map_err(io_err("creating", &to))?;
        let dest = to.join(side.name());
        FdLink::from(pinned).pin(&dest).map_err(|source| AttachError::Pinning {
            what: format!("pinning {}", dest.display()),
            source,
        })?;
        std::fs::remove_file(&path).map_err(io_err("unpinning", &path))?;
        moved = true;
    }
    remove_link_pins(&from)?;
    Ok(moved)
}

/// Unpin a retired interface's links: the last reference, so the kernel
/// detaches them if their device still lives. Idempotent.
pub fn unpin_retired(r: &Retired) -> Result<(), AttachError> {
    remove_link_pins(&r.links())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_retired_name_fits_an_interface_name() {
        // IFNAMSIZ less the terminating NUL.
        assert_eq!(retired_ifname(u32::MAX), "sldelffffffff");
        assert!(retired_ifname(u32::MAX).len() <= 15);
        assert_ne!(retired_ifname(1), retired_ifname(16));
    }

    #[test]
    fn a_del_sees_the_reaper_only_while_its_lock_is_held() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!reaper_alive(dir.path()), "no directory, no reaper");
        let held = hold_reaper(dir.path()).unwrap();
        assert!(reaper_alive(dir.path()));
        assert!(hold_reaper(dir.path()).is_err(), "one reaper at a time");
        drop(held);
        assert!(!reaper_alive(dir.path()), "the lock goes with its holder");
        let again = hold_reaper(dir.path()).unwrap();
        assert!(reaper_alive(dir.path()));
        drop(again);
    }
}
