//! Socket-level load balancing (bpf/lib/sock.h): the object's cgroup hooks
//! on connect, sendmsg, recvmsg and getpeername, IPv4 and IPv6, and the
//! one on a socket's release that forgets what they gave it, loaded
//! with the node's pinned maps and attached to a cgroup through bpf links
//! pinned under `<versioned>/sock/<cgroup inode>/`. The links outlive the
//! process that made them (an agent restart changes nothing for a socket),
//! and attaching again replaces them without a gap: the new links are made
//! before the old ones go, and a socket the first hook already sent to a
//! backend is no Service address to the second.

use super::{AttachError, io_err, link_err, prog_err};
use crate::config::DatapathConfig;
use crate::loader::{self, versioned_dir};
use crate::migrate::Build;
use crate::pin;
use aya::Ebpf;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, Link};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use tracing::info;

/// The hooks, by program name.
pub const PROGRAMS: [&str; 8] = [
    "sl_sock_connect4",
    "sl_sock_connect6",
    "sl_sock_sendmsg4",
    "sl_sock_sendmsg6",
    "sl_sock_recvmsg4",
    "sl_sock_recvmsg6",
    "sl_sock_getpeername4",
    "sl_sock_getpeername6",
];

/// The hook that forgets a socket's entry when it is released.
pub const RELEASE: &str = "sl_sock_release";

/// Where a cgroup's links are pinned.
fn dir_for(cfg: &DatapathConfig, cgroup: &Path) -> Result<PathBuf, AttachError> {
    let ino = std::fs::metadata(cgroup)
        .map_err(io_err("reading the cgroup", cgroup))?
        .ino();
    Ok(versioned_dir(&cfg.bpffs).join("sock").join(ino.to_string()))
}

/// Attach the hooks to `cgroup` for the sockets of the network namespace
/// `netns` (its cookie; 0: every namespace, pods' included). The node's
/// maps must be pinned already (a CNI ADD or the agent loaded the node's
/// programs). Returns how many hooks are attached.
pub fn attach(cfg: &DatapathConfig, cgroup: &Path, netns: u64) -> Result<usize, AttachError> {
    let dir = dir_for(cfg, cgroup)?;
    pin::ensure_bpffs(&cfg.bpffs)?;
    std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
    let cg = std::fs::File::open(cgroup).map_err(io_err("opening the cgroup", cgroup))?;
    let mut ebpf = loader::object(cfg, Some(&cfg.bpffs), &Build::current(), netns)?;
    load_hooks(&mut ebpf)?;
    let attaching = |name: &str| prog_err(format!("attaching {name} to {}", cgroup.display()));
    // The release hook first: no entry is made that nothing would remove.
    let release = release_hook(&mut ebpf)?;
    let id = release
        .attach(&cg, CgroupAttachMode::Single)
        .map_err(attaching(RELEASE))?;
    let link = release.take_link(id).map_err(prog_err(format!("{RELEASE}'s link")))?;
    pin_replacing(&dir, RELEASE, link)?;
    for name in PROGRAMS {
        let prog = addr_hook(&mut ebpf, name)?;
        let id = prog.attach(&cg, CgroupAttachMode::Single).map_err(attaching(name))?;
        let link = prog.take_link(id).map_err(prog_err(format!("{name}'s link")))?;
        pin_replacing(&dir, name, link)?;
    }
    info!(cgroup = %cgroup.display(), netns, "socket load balancing attached");
    Ok(PROGRAMS.len() + 1)
}

fn addr_hook<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut CgroupSockAddr, AttachError> {
    ebpf.program_mut(name)
        .expect("the object defines the socket hooks")
        .try_into()
        .map_err(prog_err(format!("{name} as a cgroup hook")))
}

fn release_hook(ebpf: &mut Ebpf) -> Result<&mut CgroupSock, AttachError> {
    ebpf.program_mut(RELEASE)
        .expect("the object defines the release hook")
        .try_into()
        .map_err(prog_err(format!("{RELEASE} as a cgroup hook")))
}

/// Load every hook into the kernel (the verifier's say).
fn load_hooks(ebpf: &mut Ebpf) -> Result<(), AttachError> {
    release_hook(ebpf)?
        .load()
        .map_err(prog_err(format!("loading {RELEASE}")))?;
    for name in PROGRAMS {
        addr_hook(ebpf, name)?
            .load()
            .map_err(prog_err(format!("loading {name}")))?;
    }
    Ok(())
}

/// Pin `link` as `dir/name`, the new link before the old one goes: no gap.
fn pin_replacing<L>(dir: &Path, name: &str, link: L) -> Result<(), AttachError>
where
    L: Link + TryInto<FdLink>,
    <L as TryInto<FdLink>>::Error: Into<aya::programs::links::LinkError>,
{
    let fd: FdLink = link
        .try_into()
        .map_err(|e| link_err(format!("{name}'s link as an fd link"))(e.into()))?;
    let path = dir.join(name);
    // bpffs refuses dots in names.
    let next = dir.join(format!("{name}_next"));
    let _ = std::fs::remove_file(&next);
    fd.pin(&next).map_err(|source| AttachError::Pinning {
        what: format!("pinning {}", next.display()),
        source,
    })?;
    if let Ok(old) = PinnedLink::from_pin(&path) {
        old.unpin().map_err(io_err("unpinning", &path))?;
    }
    std::fs::rename(&next, &path).map_err(io_err("renaming the pin", &next))
}

/// Load the hooks into the kernel without attaching them (nothing pinned):
/// whether this kernel's verifier takes them. Returns how many.
pub fn verify(cfg: &DatapathConfig) -> Result<usize, AttachError> {
    let mut ebpf = loader::object(cfg, None, &Build::current(), 0)?;
    load_hooks(&mut ebpf)?;
    Ok(PROGRAMS.len() + 1)
}

/// Detach every hook from `cgroup` (its pinned links go). Returns how many
/// there were.
pub fn detach(cfg: &DatapathConfig, cgroup: &Path) -> Result<usize, AttachError> {
    let dir = dir_for(cfg, cgroup)?;
    let mut n = 0;
    for name in PROGRAMS.iter().chain([&RELEASE]) {
        let path = dir.join(name);
        if let Ok(l) = PinnedLink::from_pin(&path) {
            l.unpin().map_err(io_err("unpinning", &path))?;
            n += 1;
        }
    }
    let _ = std::fs::remove_dir(&dir);
    Ok(n)
}

/// Detach the hooks from every cgroup they were attached to, under every
/// layout's directory in `bpffs` (an uninstall). Returns the directories
/// emptied.
pub fn detach_everywhere(bpffs: &Path) -> Result<Vec<PathBuf>, AttachError> {
    let mut gone = Vec::new();
    let Ok(layouts) = std::fs::read_dir(bpffs) else {
        return Ok(gone);
    };
    for layout in layouts.flatten() {
        let Ok(cgroups) = std::fs::read_dir(layout.path().join("sock")) else {
            continue;
        };
        for dir in cgroups.flatten().map(|e| e.path()) {
            for pin in std::fs::read_dir(&dir).map_err(io_err("listing", &dir))?.flatten() {
                let path = pin.path();
                if let Ok(l) = PinnedLink::from_pin(&path) {
                    l.unpin().map_err(io_err("unpinning", &path))?;
                }
            }
            let _ = std::fs::remove_dir(&dir);
            gone.push(dir);
        }
    }
    Ok(gone)
}
