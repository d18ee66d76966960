//! Load once, attach many: the node's programs are verified and pinned the
//! first time a pod needs them ([`node`]); every later ADD only opens the
//! pins and puts the two programs on the new pod interface ([`iface`]).
//!
//! A program version is the object plus the settings it was loaded with,
//! named by a hash. When a CNI binary with a different version opens the
//! node, it loads and pins its programs, moves every pinned link onto them
//! with `bpf_link_update` (atomic per link: a packet sees the old program
//! or the new one, and the maps, conntrack included, are shared), and then
//! unpins the old version.

mod clsact;
mod iface;
mod node;
pub mod retire;
pub mod sock;

pub use iface::{CheckError, ClsactPrograms, Promotion};
pub use node::{Node, Resized, warn_tables_sized_otherwise};

use crate::loader::LoadError;
use crate::maps::MapsError;
use crate::pin::PinError;
use aya::programs::links::LinkError;
use aya::programs::tc::{SchedClassifierLink, TcError, TcHandle};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use crate::config::AttachMode;

/// What an interface actually got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attached {
    Tcx,
    Tc,
}

impl Attached {
    pub fn as_str(self) -> &'static str {
        match self {
            Attached::Tcx => "tcx",
            Attached::Tc => "tc",
        }
    }
}

/// Where a pair of programs runs: on a pod's interface, or on one of the
/// node's uplinks (traffic from outside). Each has its programs and its
/// own directory of pinned links under the layout's directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Pod,
    Uplink,
}

impl Hook {
    pub const ALL: [Hook; 2] = [Hook::Pod, Hook::Uplink];

    /// The directory its links are pinned in, under `<root>/v<N>`.
    pub fn dir(self) -> &'static str {
        match self {
            Hook::Pod => "links",
            Hook::Uplink => "uplinks",
        }
    }

    /// The program it runs on `side`.
    pub fn program(self, side: Side) -> &'static str {
        use crate::loader::{EGRESS, INGRESS, UPLINK_IN, UPLINK_OUT};
        match (self, side) {
            (Hook::Pod, Side::Egress) => EGRESS,
            (Hook::Pod, Side::Ingress) => INGRESS,
            (Hook::Uplink, Side::Egress) => UPLINK_OUT,
            (Hook::Uplink, Side::Ingress) => UPLINK_IN,
        }
    }
}

/// Which side of an interface a program runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Egress,
    Ingress,
}

impl Side {
    pub const BOTH: [Side; 2] = [Side::Egress, Side::Ingress];

    /// The pin name of its link, and how errors name it.
    pub fn name(self) -> &'static str {
        match self {
            Side::Egress => "egress",
            Side::Ingress => "ingress",
        }
    }

    fn tc_type(self) -> TcAttachType {
        match self {
            Side::Egress => TcAttachType::Egress,
            Side::Ingress => TcAttachType::Ingress,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error(transparent)]
    Pin(#[from] PinError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("another sluice process has held the datapath lock on {0} for {1:?}")]
    LockTimeout(PathBuf, Duration),
    #[error("{what} {path}: {source}")]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{what}: {source}")]
    Program {
        what: String,
        #[source]
        source: ProgramError,
    },
    #[error("{what}: {source}")]
    Link {
        what: String,
        #[source]
        source: LinkError,
    },
    #[error("{what}: {source}")]
    Pinning {
        what: String,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("{what}: {source}")]
    Tc {
        what: String,
        #[source]
        source: TcError,
    },
    #[error("{what} {ifname}: {source}")]
    Clsact {
        what: String,
        ifname: String,
        #[source]
        source: io::Error,
    },
    #[error("setns into the target network namespace: {0}")]
    Setns(nix::Error),
    #[error("the datapath worker thread panicked")]
    WorkerPanicked,
    #[error("carrying the maps of {} over: {source}", .from.display())]
    Migrate {
        from: PathBuf,
        #[source]
        source: crate::migrate::MigrateError,
    },
    #[error("no sluice datapath under {}", .0.display())]
    NoDatapath(PathBuf),
    #[error("the node does not run this configuration's programs (version {version:016x} is not pinned under {})", .dir.display())]
    VersionNotPinned { version: u64, dir: PathBuf },
}

fn io_err(what: impl Into<String>, path: &Path) -> impl FnOnce(io::Error) -> AttachError + '_ {
    let what = what.into();
    move |source| AttachError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

fn prog_err(what: impl Into<String>) -> impl FnOnce(ProgramError) -> AttachError {
    let what = what.into();
    move |source| AttachError::Program { what, source }
}

fn link_err(what: impl Into<String>) -> impl FnOnce(LinkError) -> AttachError {
    let what = what.into();
    move |source| AttachError::Link { what, source }
}

/// cls_bpf filter priority and handle of the tc fallback: fixed, so that a
/// later call finds, replaces and removes exactly our filter.
const TC_PRIORITY: u16 = 1;
const TC_HANDLE: TcHandle = TcHandle::new(0, 0x5c1);
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Run `f` on a thread inside the network namespace `ns`: interface names,
/// `bpf_link_create` and netlink all resolve in the calling thread's netns.
fn in_netns<T: Send>(ns: BorrowedFd<'_>, f: impl FnOnce() -> T + Send) -> Result<T, AttachError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).map_err(AttachError::Setns)?;
            Ok(f())
        })
        .join()
        .map_err(|_| AttachError::WorkerPanicked)?
    })
}

fn remove_link_pins(link_dir: &Path) -> Result<(), AttachError> {
    for side in Side::BOTH {
        match std::fs::remove_file(link_dir.join(side.name())) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("unpinning", link_dir)(e)),
            _ => {}
        }
    }
    match std::fs::remove_dir(link_dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", link_dir)(e)),
        _ => Ok(()),
    }
}

/// Remove one attachment: unpin its TCX links (the last reference, so the
/// kernel detaches them) and, with the namespace still there, remove tc
/// filters. Idempotent; needs no loaded program.
pub fn detach(versioned: &Path, netns: Option<BorrowedFd<'_>>, ifname: &str, key: &str) -> Result<(), AttachError> {
    detach_hook(Hook::Pod, versioned, netns, ifname, key)
}

/// The same for either hook.
pub fn detach_hook(
    hook: Hook,
    versioned: &Path,
    netns: Option<BorrowedFd<'_>>,
    ifname: &str,
    key: &str,
) -> Result<(), AttachError> {
    remove_link_pins(&versioned.join(hook.dir()).join(key))?;
    if let Some(ns) = netns {
        in_netns(ns, || {
            for side in Side::BOTH {
                // Dropping the handle deletes the filter; a missing device or
                // filter is already what we want.
                if let Ok(l) = SchedClassifierLink::attached(ifname, side.tc_type(), TC_PRIORITY, TC_HANDLE, None) {
                    drop(l);
                }
            }
        })?;
    }
    Ok(())
}

/// A program on an interface, as the kernel lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProgramRef {
    pub id: u32,
    pub name: String,
}

/// The TCX programs on `ifname` in `netns`, by side.
pub fn tcx_programs(netns: BorrowedFd<'_>, ifname: &str, side: Side) -> Result<Vec<ProgramRef>, AttachError> {
    in_netns(netns, || {
        let (_, progs) =
            SchedClassifier::query_tcx(ifname, side.tc_type()).map_err(prog_err(format!("querying {ifname}")))?;
        Ok(progs
            .iter()
            .map(|p| ProgramRef {
                id: p.id(),
                name: p.name_as_str().unwrap_or("?").to_string(),
            })
            .collect())
    })?
}

/// Take the uplink programs off every uplink pinned under any layout's
/// directory in `bpffs` (an uninstall): their TCX links unpinned, and
/// clsact filters removed in `netns` (the node's). Returns the uplinks.
pub fn detach_uplinks_everywhere(bpffs: &Path, netns: BorrowedFd<'_>) -> Result<Vec<String>, AttachError> {
    let mut gone = Vec::new();
    let Ok(layouts) = std::fs::read_dir(bpffs) else {
        return Ok(gone);
    };
    for layout in layouts.flatten().map(|e| e.path()) {
        for name in hook_attachments(Hook::Uplink, &layout)? {
            detach_hook(Hook::Uplink, &layout, Some(netns), &name, &name)?;
            gone.push(name);
        }
    }
    Ok(gone)
}

/// The keys of every pinned pod attachment (for GC).
pub fn attachments(versioned: &Path) -> Result<Vec<String>, AttachError> {
    hook_attachments(Hook::Pod, versioned)
}

/// The keys of every pinned attachment of a hook (an uplink's is its name).
pub fn hook_attachments(hook: Hook, versioned: &Path) -> Result<Vec<String>, AttachError> {
    let links = versioned.join(hook.dir());
    match std::fs::read_dir(&links) {
        Ok(rd) => Ok(rd
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("listing", &links)(e)),
    }
}

/// The pod attachment `key` has its TCX links pinned (both sides) under
/// the versioned directory.
pub fn has_links(versioned: &Path, key: &str) -> bool {
    let dir = versioned.join(Hook::Pod.dir()).join(key);
    Side::BOTH.iter().all(|s| dir.join(s.name()).exists())
}

/// Hold the node lock shared, as an attach does, until the file drops: a
/// DEL taking a pod's programs off waits for a move onto TCX links
/// (`Node::promote`, under the lock held exclusively) to finish, so that
/// none pins a link for a pod whose DEL already unpinned it.
pub fn hold_shared(versioned: &Path) -> Result<File, AttachError> {
    lock_dir(versioned, true)
}

/// Take the node lock, shared or exclusive: the directory itself, flocked.
/// bpffs holds no regular files, but flock works on any inode. Each call
/// opens its own file, so a shared and an exclusive hold of one process are
/// two locks (the shared one is dropped before the exclusive is awaited).
fn lock_dir(dir: &Path, shared: bool) -> Result<File, AttachError> {
    let f = File::open(dir).map_err(io_err("opening", dir))?;
    let start = Instant::now();
    loop {
        let r = if shared { f.try_lock_shared() } else { f.try_lock() };
        match r {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(AttachError::LockTimeout(dir.to_path_buf(), LOCK_WAIT));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io_err("locking", dir)(e)),
        }
    }
}
