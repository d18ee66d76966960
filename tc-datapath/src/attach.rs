//! Load once, attach many: the node's programs are verified and pinned the
//! first time a pod needs them; every later ADD only opens the pins and
//! creates two links on the new pod interface.
//!
//! A program version is the object plus the configuration it was loaded
//! with, named by a hash. When a CNI binary with a different version opens
//! the node, it loads and pins its programs, moves every pinned link onto
//! them with `bpf_link_update` (atomic per link: a packet sees the old
//! program or the new one, and the maps, conntrack included, are shared), and
//! then unpins the old version.

use crate::layout::DpInfo;
use crate::loader::{self, DatapathConfig, EGRESS, INGRESS, LoadError, versioned_dir};
use crate::maps::{Maps, MapsError};
use crate::pin::{self, PinError};
use aya::programs::links::{FdLink, LinkOrder, PinnedLink};
use aya::programs::tc::{self, NlOptions, SchedClassifierLink, TcAttachOptions, TcError, TcHandle};
use aya::programs::{ProgramError, SchedClassifier, TcAttachType};
use std::fs::File;
use std::io;
use std::os::fd::BorrowedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tracing::{info, warn};

/// How pod interfaces get their programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachMode {
    /// TCX links where the kernel has them (6.6+), clsact filters otherwise.
    #[default]
    Auto,
    Tcx,
    /// Legacy clsact qdisc with direct-action cls_bpf filters.
    Tc,
}

/// What an interface actually got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    pub fn parse(s: &str) -> Option<Attached> {
        match s {
            "tcx" => Some(Attached::Tcx),
            "tc" => Some(Attached::Tc),
            _ => None,
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
    #[error("{0}")]
    Other(String),
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

/// cls_bpf filter priority and handle of the tc fallback: fixed, so that a
/// later call finds, replaces and removes exactly our filter.
const TC_PRIORITY: u16 = 1;
const TC_HANDLE: TcHandle = TcHandle::new(0, 0x5c1);
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// The version name of this build with this configuration.
pub fn prog_hash(cfg: &DatapathConfig) -> u64 {
    let mut bytes = Vec::new();
    for ns in [
        cfg.tcp_syn_timeout,
        cfg.tcp_established_timeout,
        cfg.tcp_closing_timeout,
        cfg.udp_timeout,
    ] {
        bytes.extend_from_slice(&ns.as_nanos().to_le_bytes());
    }
    bytes.extend_from_slice(&cfg.maglev_table_size.to_le_bytes());
    bytes.push(u8::from(cfg.source_check));
    bytes.extend_from_slice(&cfg.flow_sample.to_le_bytes());
    crate::maglev::fnv1a(crate::maglev::fnv1a(0x51, crate::OBJECT), &bytes)
}

/// Run `f` on a thread inside the network namespace `ns`: interface names,
/// `bpf_link_create` and netlink all resolve in the calling thread's netns.
fn in_netns<T: Send>(ns: BorrowedFd<'_>, f: impl FnOnce() -> T + Send) -> Result<T, AttachError> {
    std::thread::scope(|s| {
        s.spawn(|| {
            nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET)
                .map_err(|e| AttachError::Other(format!("setns into the pod's network namespace: {e}")))?;
            Ok(f())
        })
        .join()
        .map_err(|_| AttachError::Other("datapath worker thread panicked".into()))?
    })
}

fn tc_type(dir: &str) -> TcAttachType {
    if dir == "egress" {
        TcAttachType::Egress
    } else {
        TcAttachType::Ingress
    }
}

/// Errors that mean "this kernel has no TCX": the link type is unknown to it.
fn tcx_unsupported(e: &ProgramError) -> bool {
    if let ProgramError::SyscallError(s) = e {
        matches!(s.io_error.raw_os_error(), Some(libc::EINVAL | libc::EOPNOTSUPP | 524))
    } else {
        false
    }
}

fn remove_link_pins(link_dir: &Path) -> Result<(), AttachError> {
    for dir in ["egress", "ingress"] {
        match std::fs::remove_file(link_dir.join(dir)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(io_err("unpinning", link_dir)(e)),
            _ => {}
        }
    }
    match std::fs::remove_dir(link_dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err("removing", link_dir)(e)),
        _ => Ok(()),
    }
}

/// The node's datapath, opened under its lock (released on drop).
pub struct Node {
    dir: PathBuf,
    _lock: File,
    egress: SchedClassifier,
    ingress: SchedClassifier,
    /// The pinned maps, opened once per call.
    pub maps: Maps,
    pub prog_hash: u64,
    /// Opening replaced another program version.
    pub upgraded: bool,
    /// Links moved onto this version while opening.
    pub relinked: usize,
    /// Links whose interface is gone (left for DEL/GC to unpin).
    pub defunct: Vec<PathBuf>,
}

impl Node {
    /// Open the node's datapath under `root` (a bpffs directory), loading
    /// and pinning this version's programs if they are not pinned yet and
    /// moving every existing link onto them.
    pub fn open(cfg: &DatapathConfig, root: &Path) -> Result<Node, AttachError> {
        Node::open_with(cfg, root, true)
    }

    /// Open what is already there, changing nothing (for CHECK): fails when
    /// this version's programs are not the node's.
    pub fn open_existing(cfg: &DatapathConfig, root: &Path) -> Result<Node, AttachError> {
        Node::open_with(cfg, root, false)
    }

    fn open_with(cfg: &DatapathConfig, root: &Path, load: bool) -> Result<Node, AttachError> {
        let dir = versioned_dir(root);
        if load {
            pin::ensure_bpffs(root)?;
            for sub in ["maps", "progs", "links"] {
                std::fs::create_dir_all(dir.join(sub)).map_err(io_err("creating", &dir.join(sub)))?;
            }
        } else if !dir.is_dir() {
            return Err(AttachError::Other(format!(
                "no sluice datapath under {}",
                dir.display()
            )));
        }
        let hash = prog_hash(cfg);
        let pdir = dir.join("progs").join(format!("{hash:016x}"));
        let want = DpInfo {
            prog_hash: hash,
            ct_tcp_syn_ns: cfg.tcp_syn_timeout.as_nanos() as u64,
            ct_tcp_established_ns: cfg.tcp_established_timeout.as_nanos() as u64,
            ct_tcp_closing_ns: cfg.tcp_closing_timeout.as_nanos() as u64,
            ct_udp_ns: cfg.udp_timeout.as_nanos() as u64,
            maglev_m: cfg.maglev_table_size,
            source_check: u32::from(cfg.source_check),
        };
        // Attaching to pods runs side by side under a shared lock; loading a
        // version and moving links onto it takes the lock exclusively.
        let shared = lock_dir(&dir, true)?;
        if pdir.join(INGRESS).exists() {
            let node = Node::opened(&dir, &pdir, cfg, hash, shared)?;
            if !load || (node.other_versions()?.is_empty() && node.maps.info()? == want) {
                return Ok(node);
            }
            // Dropping `node` here releases the shared lock.
        } else if !load {
            return Err(AttachError::Other(format!(
                "the node does not run this configuration's programs (version {hash:016x} is not pinned under {})",
                dir.join("progs").display()
            )));
        } else {
            drop(shared);
        }
        let exclusive = lock_dir(&dir, false)?;
        if !pdir.join(INGRESS).exists() {
            let t = Instant::now();
            let mut ebpf = loader::load(cfg, Some(root))?;
            std::fs::create_dir_all(&pdir).map_err(io_err("creating", &pdir))?;
            // Ingress last: its pin is what marks the version complete.
            for name in [EGRESS, INGRESS] {
                let prog: &mut SchedClassifier = ebpf
                    .program_mut(name)
                    .expect("loaded")
                    .try_into()
                    .expect("a classifier");
                prog.pin(pdir.join(name))
                    .map_err(|e| AttachError::Other(format!("pinning {name} in {}: {e}", pdir.display())))?;
            }
            info!(version = %format!("{hash:016x}"), elapsed = ?t.elapsed(), "datapath programs loaded and pinned");
        }
        let mut node = Node::opened(&dir, &pdir, cfg, hash, exclusive)?;
        let others = node.other_versions()?;
        if !others.is_empty() {
            node.upgraded = true;
            node.relink_all()?;
            for old in others {
                std::fs::remove_dir_all(&old).map_err(io_err("unpinning old programs", &old))?;
            }
        }
        if node.maps.info()? != want {
            node.maps.set_info(want)?;
        }
        Ok(node)
    }

    /// The handle on pinned programs and maps, under `lock`.
    fn opened(dir: &Path, pdir: &Path, cfg: &DatapathConfig, hash: u64, lock: File) -> Result<Node, AttachError> {
        let open =
            |name: &str| SchedClassifier::from_pin(pdir.join(name)).map_err(prog_err(format!("opening pinned {name}")));
        Ok(Node {
            egress: open(EGRESS)?,
            ingress: open(INGRESS)?,
            maps: Maps::open_pinned_with(dir, Some(cfg.maglev_table_size))?,
            dir: dir.to_path_buf(),
            _lock: lock,
            prog_hash: hash,
            upgraded: false,
            relinked: 0,
            defunct: Vec::new(),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn other_versions(&self) -> Result<Vec<PathBuf>, AttachError> {
        let progs = self.dir.join("progs");
        let mine = format!("{:016x}", self.prog_hash);
        let rd = std::fs::read_dir(&progs).map_err(io_err("listing", &progs))?;
        let mut out = Vec::new();
        for e in rd {
            let e = e.map_err(io_err("listing", &progs))?;
            if e.file_name().to_string_lossy() != mine {
                out.push(e.path());
            }
        }
        Ok(out)
    }

    /// Move every pinned TCX link onto this version's programs.
    fn relink_all(&mut self) -> Result<(), AttachError> {
        let links = self.dir.join("links");
        let rd = std::fs::read_dir(&links).map_err(io_err("listing", &links))?;
        for e in rd {
            let link_dir = e.map_err(io_err("listing", &links))?.path();
            for d in ["egress", "ingress"] {
                let path = link_dir.join(d);
                let pinned = match PinnedLink::from_pin(&path) {
                    Ok(p) => p,
                    Err(_) if !path.exists() => continue,
                    Err(e) => return Err(AttachError::Other(format!("opening link {}: {e}", path.display()))),
                };
                let link = SchedClassifierLink::try_from(FdLink::from(pinned))
                    .map_err(|e| AttachError::Other(format!("link {} is not a TCX link: {e}", path.display())))?;
                let prog = if d == "egress" {
                    &mut self.egress
                } else {
                    &mut self.ingress
                };
                match prog.attach_to_link(link) {
                    Ok(id) => {
                        // Dropping our handle closes an fd; the pin keeps the link.
                        drop(prog.take_link(id));
                        self.relinked += 1;
                    }
                    Err(ProgramError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOLINK) => {
                        warn!(link = %path.display(), "link's interface is gone; left for DEL/GC");
                        self.defunct.push(path);
                    }
                    Err(e) => return Err(prog_err(format!("updating link {}", path.display()))(e)),
                }
            }
        }
        info!(
            relinked = self.relinked,
            defunct = self.defunct.len(),
            "links moved to the new programs"
        );
        Ok(())
    }

    /// Attach both programs to `ifname` in the namespace `netns`. A TCX
    /// link is pinned under `links/<key>`; a tc filter lives on the device.
    /// On failure nothing of this attachment is left.
    pub fn attach(
        &mut self,
        netns: BorrowedFd<'_>,
        ifname: &str,
        key: &str,
        mode: AttachMode,
    ) -> Result<Attached, AttachError> {
        let link_dir = self.dir.join("links").join(key);
        // A repeated ADD replaces what an earlier one left.
        remove_link_pins(&link_dir)?;
        let r = self.attach_both(netns, ifname, &link_dir, mode);
        if r.is_err() {
            let _ = detach(&self.dir, Some(netns), ifname, key);
        }
        r
    }

    fn attach_both(
        &mut self,
        netns: BorrowedFd<'_>,
        ifname: &str,
        link_dir: &Path,
        mode: AttachMode,
    ) -> Result<Attached, AttachError> {
        let (egress, ingress) = (&mut self.egress, &mut self.ingress);
        in_netns(netns, move || {
            let mut got = None;
            for (prog, d) in [(egress, "egress"), (ingress, "ingress")] {
                let ty = tc_type(d);
                let use_tcx = mode != AttachMode::Tc && got != Some(Attached::Tc);
                if use_tcx {
                    match prog.attach_with_options(ifname, ty, TcAttachOptions::TcxOrder(LinkOrder::default())) {
                        Ok(id) => {
                            std::fs::create_dir_all(link_dir).map_err(io_err("creating", link_dir))?;
                            let link = prog.take_link(id).map_err(prog_err("taking the TCX link"))?;
                            let fd = FdLink::try_from(link)
                                .map_err(|e| AttachError::Other(format!("TCX link on {ifname}: {e}")))?;
                            fd.pin(link_dir.join(d)).map_err(|e| {
                                AttachError::Other(format!("pinning {} link in {}: {e}", d, link_dir.display()))
                            })?;
                            got = Some(Attached::Tcx);
                            continue;
                        }
                        Err(e) if mode == AttachMode::Auto && got.is_none() && tcx_unsupported(&e) => {
                            info!(ifname, error = %e, "no TCX on this kernel; attaching with clsact");
                        }
                        Err(e) => return Err(prog_err(format!("attaching {d} TCX link to {ifname}"))(e)),
                    }
                }
                attach_tc(prog, ifname, ty, d)?;
                got = Some(Attached::Tc);
            }
            Ok(got.expect("two programs attached"))
        })?
    }

    /// CHECK: `ifname` in `netns` runs exactly this node's programs, on both
    /// sides. A pod with NET_ADMIN can detach them or put its own first.
    pub fn check(&self, netns: BorrowedFd<'_>, ifname: &str, key: &str, attached: Attached) -> Result<(), String> {
        let (egress_id, ingress_id) = self.program_ids().map_err(|e| e.to_string())?;
        if attached == Attached::Tc {
            // cls_bpf filters are checked by the caller, which speaks rtnetlink.
            return Ok(());
        }
        for (d, id) in [("egress", egress_id), ("ingress", ingress_id)] {
            let path = self.dir.join("links").join(key).join(d);
            let pinned = PinnedLink::from_pin(&path)
                .map_err(|e| format!("the {d} link of {ifname} is not pinned at {}: {e}", path.display()))?;
            let info = FdLink::from(pinned).info().map_err(|e| format!("link info: {e}"))?;
            if info.program_id() != id {
                return Err(format!(
                    "the pinned {d} link of {ifname} runs program {} instead of sluice's {id}",
                    info.program_id()
                ));
            }
        }
        in_netns(netns, || {
            for (d, id, name) in [("egress", egress_id, EGRESS), ("ingress", ingress_id, INGRESS)] {
                let (_, progs) = SchedClassifier::query_tcx(ifname, tc_type(d))
                    .map_err(|e| format!("querying {d} programs of {ifname}: {e}"))?;
                let ids: Vec<String> = progs
                    .iter()
                    .map(|p| format!("{} ({})", p.id(), p.name_as_str().unwrap_or("?")))
                    .collect();
                if progs.len() != 1 || progs[0].id() != id {
                    return Err(format!(
                        "{d} of {ifname} runs [{}], expected only sluice's {name} ({id})",
                        ids.join(", ")
                    ));
                }
            }
            Ok(())
        })
        .map_err(|e| e.to_string())?
    }

    /// The programs' kernel ids (egress, ingress).
    pub fn program_ids(&self) -> Result<(u32, u32), AttachError> {
        let id = |p: &SchedClassifier| p.info().map(|i| i.id()).map_err(prog_err("program info"));
        Ok((id(&self.egress)?, id(&self.ingress)?))
    }

    /// Re-attach a tc-mode interface onto this version (TCX links move by
    /// themselves in `open`; filters live on devices the pins do not name).
    pub fn reattach_tc(&mut self, netns: BorrowedFd<'_>, ifname: &str) -> Result<(), AttachError> {
        let (egress, ingress) = (&mut self.egress, &mut self.ingress);
        in_netns(netns, move || {
            for (prog, d) in [(egress, "egress"), (ingress, "ingress")] {
                attach_tc(prog, ifname, tc_type(d), d)?;
            }
            Ok(())
        })?
    }
}

/// Attach (or replace) our cls_bpf filter under clsact. The filter belongs
/// to the device: our handle on it is forgotten, not dropped, because
/// dropping it would remove the filter.
fn attach_tc(prog: &mut SchedClassifier, ifname: &str, ty: TcAttachType, d: &str) -> Result<(), AttachError> {
    match tc::qdisc_add_clsact(ifname) {
        Ok(()) => {}
        Err(TcError::NetlinkError(e)) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(AttachError::Other(format!("adding clsact to {ifname}: {e}"))),
    }
    let opts = NlOptions {
        priority: TC_PRIORITY,
        handle: TC_HANDLE,
        classid: None,
    };
    let id = match prog.attach_with_options(ifname, ty, TcAttachOptions::Netlink(opts)) {
        Ok(id) => id,
        Err(ProgramError::TcError(TcError::NetlinkError(e))) if e.raw_os_error() == Some(libc::EEXIST) => {
            let existing = SchedClassifierLink::attached(ifname, ty, TC_PRIORITY, TC_HANDLE, None)
                .map_err(io_err(format!("finding the {d} filter of"), Path::new(ifname)))?;
            prog.attach_to_link(existing)
                .map_err(prog_err(format!("replacing the {d} filter on {ifname}")))?
        }
        Err(e) => return Err(prog_err(format!("attaching the {d} filter to {ifname}"))(e)),
    };
    let link = prog.take_link(id).map_err(prog_err("taking the tc link"))?;
    std::mem::forget(link);
    Ok(())
}

/// Remove one attachment: unpin its TCX links (the last reference, so the
/// kernel detaches them) and, with the namespace still there, remove tc
/// filters. Idempotent; needs no loaded program.
pub fn detach(versioned: &Path, netns: Option<BorrowedFd<'_>>, ifname: &str, key: &str) -> Result<(), AttachError> {
    remove_link_pins(&versioned.join("links").join(key))?;
    if let Some(ns) = netns {
        in_netns(ns, || {
            for ty in [TcAttachType::Egress, TcAttachType::Ingress] {
                // Dropping the handle deletes the filter; a missing device or
                // filter is already what we want.
                if let Ok(l) = SchedClassifierLink::attached(ifname, ty, TC_PRIORITY, TC_HANDLE, None) {
                    drop(l);
                }
            }
        })?;
    }
    Ok(())
}

/// The TCX programs on `ifname` in `netns`, egress then ingress, as (id, name).
pub type ProgramList = Vec<(u32, String)>;

pub fn tcx_programs(netns: BorrowedFd<'_>, ifname: &str) -> Result<(ProgramList, ProgramList), AttachError> {
    in_netns(netns, || {
        let list = |ty| -> Result<ProgramList, AttachError> {
            let (_, progs) = SchedClassifier::query_tcx(ifname, ty).map_err(prog_err(format!("querying {ifname}")))?;
            Ok(progs
                .iter()
                .map(|p| (p.id(), p.name_as_str().unwrap_or("?").to_string()))
                .collect())
        };
        Ok((list(TcAttachType::Egress)?, list(TcAttachType::Ingress)?))
    })?
}

/// The keys of every pinned attachment (for GC).
pub fn attachments(versioned: &Path) -> Result<Vec<String>, AttachError> {
    let links = versioned.join("links");
    match std::fs::read_dir(&links) {
        Ok(rd) => Ok(rd
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(io_err("listing", &links)(e)),
    }
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
