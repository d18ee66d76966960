//! A node's pinned programs: opened under the node lock, loaded and pinned
//! when this version is not there yet, and every existing link moved onto
//! them when another version ran before. Another layout version's maps are
//! carried over first (see `migrate`), then its links move here.

use super::{AttachError, Hook, Side, io_err, link_err, lock_dir, prog_err};
use crate::config::DatapathConfig;
use crate::layout::DpInfo;
use crate::loader::{self, INGRESS, TC_PROGRAMS, versioned_dir_of};
use crate::maps::{ObserveMaps, Source};
use crate::migrate::{self, Build};
use crate::pin;
use aya::programs::links::{FdLink, PinnedLink};
use aya::programs::tc::SchedClassifierLink;
use aya::programs::{ProgramError, SchedClassifier};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tracing::{info, warn};

/// The node's datapath, opened under its lock (released on drop).
pub struct Node {
    dir: PathBuf,
    _lock: File,
    /// Where this version's programs are pinned.
    pdir: PathBuf,
    /// The programs, opened from their pins when first needed: ADD with
    /// clsact needs only their pins (see `clsact`), and opening one makes
    /// aya probe the kernel's features.
    progs: [Option<SchedClassifier>; 4],
    observe: ObserveMaps,
    prog_hash: u64,
    /// Opening replaced another program version.
    pub upgraded: bool,
    /// Links moved onto this version while opening.
    pub relinked: usize,
    /// Links whose interface is gone (left for DEL/GC to unpin).
    pub defunct: Vec<PathBuf>,
}

impl Node {
    /// Open the node's datapath under `cfg.bpffs`, loading and pinning this
    /// version's programs if they are not pinned yet and moving every
    /// existing link onto them.
    pub fn open(cfg: &DatapathConfig) -> Result<Node, AttachError> {
        Node::open_build(cfg, &Build::current())
    }

    /// The same with another build (the layout-change test).
    pub fn open_build(cfg: &DatapathConfig, build: &Build) -> Result<Node, AttachError> {
        Node::open_with(cfg, true, build)
    }

    /// Open what is already there, changing nothing (for CHECK): fails when
    /// this version's programs are not the node's.
    pub fn open_existing(cfg: &DatapathConfig) -> Result<Node, AttachError> {
        Node::open_with(cfg, false, &Build::current())
    }

    fn open_with(cfg: &DatapathConfig, load: bool, build: &Build) -> Result<Node, AttachError> {
        let root = cfg.bpffs.as_path();
        let dir = versioned_dir_of(root, build.layout.version);
        if load {
            pin::ensure_bpffs(root)?;
            for sub in ["maps", "progs", Hook::Pod.dir(), Hook::Uplink.dir()] {
                std::fs::create_dir_all(dir.join(sub)).map_err(io_err("creating", &dir.join(sub)))?;
            }
        } else if !dir.is_dir() {
            return Err(AttachError::NoDatapath(dir));
        }
        let want = DpInfo::of(cfg);
        let pdir = version_dir(&dir, want.prog_hash);
        // Attaching to pods runs side by side under a shared lock; loading a
        // version and moving links onto it takes the lock exclusively.
        let shared = lock_dir(&dir, true)?;
        if pdir.join(INGRESS).exists() {
            let node = Node::opened(&dir, &pdir, want.prog_hash, shared)?;
            if !load
                || (node.other_versions()?.is_empty()
                    && older_layouts(root, build.layout.version)?.is_empty()
                    && node.observe.info()? == want)
            {
                return Ok(node);
            }
            // Dropping `node` here releases the shared lock.
        } else if !load {
            return Err(AttachError::VersionNotPinned {
                version: want.prog_hash,
                dir: dir.join("progs"),
            });
        } else {
            drop(shared);
        }
        let exclusive = lock_dir(&dir, false)?;
        if !pdir.join(INGRESS).exists() {
            load_and_pin(cfg, &pdir, build)?;
        }
        let mut node = Node::opened(&dir, &pdir, want.prog_hash, exclusive)?;
        for old in older_layouts(root, build.layout.version)? {
            node.adopt(&old, &build.layout)?;
        }
        let others = node.other_versions()?;
        if !others.is_empty() {
            node.upgraded = true;
            node.relink_all()?;
            for old in others {
                std::fs::remove_dir_all(&old).map_err(io_err("unpinning old programs", &old))?;
            }
        }
        node.retire_resized()?;
        if node.observe.info()? != want {
            node.observe.set_info(want)?;
        }
        Ok(node)
    }

    /// The node's current programs, with the lock held exclusively: no
    /// ADD, DEL or upgrade runs until the `Node` drops (moving a pod onto
    /// TCX links, `promote`).
    pub fn open_exclusive(bpffs: &Path) -> Result<Node, AttachError> {
        let dir = loader::versioned_dir(bpffs);
        if !dir.is_dir() {
            return Err(AttachError::NoDatapath(dir));
        }
        let lock = lock_dir(&dir, false)?;
        let hash = ObserveMaps::open(&mut Source::pinned(&dir))?.info()?.prog_hash;
        let pdir = version_dir(&dir, hash);
        if !pdir.join(INGRESS).exists() {
            return Err(AttachError::VersionNotPinned {
                version: hash,
                dir: dir.join("progs"),
            });
        }
        Node::opened(&dir, &pdir, hash, lock)
    }

    /// The handle on pinned programs and maps, under `lock`.
    fn opened(dir: &Path, pdir: &Path, hash: u64, lock: File) -> Result<Node, AttachError> {
        Ok(Node {
            pdir: pdir.to_path_buf(),
            progs: [None, None, None, None],
            observe: ObserveMaps::open(&mut Source::pinned(dir))?,
            dir: dir.to_path_buf(),
            _lock: lock,
            prog_hash: hash,
            upgraded: false,
            relinked: 0,
            defunct: Vec::new(),
        })
    }

    /// The versioned directory (`<root>/v<N>`): its maps are the node's.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The version these programs are.
    pub fn prog_hash(&self) -> u64 {
        self.prog_hash
    }

    /// Where the program of `hook`'s `side` is pinned.
    pub(super) fn program_pin(&self, hook: Hook, side: Side) -> PathBuf {
        self.pdir.join(hook.program(side))
    }

    fn slot(hook: Hook, side: Side) -> usize {
        match (hook, side) {
            (Hook::Pod, Side::Egress) => 0,
            (Hook::Pod, Side::Ingress) => 1,
            (Hook::Uplink, Side::Egress) => 2,
            (Hook::Uplink, Side::Ingress) => 3,
        }
    }

    pub(super) fn program(&mut self, hook: Hook, side: Side) -> Result<&mut SchedClassifier, AttachError> {
        let path = self.program_pin(hook, side);
        let slot = &mut self.progs[Node::slot(hook, side)];
        if slot.is_none() {
            let name = hook.program(side);
            *slot = Some(SchedClassifier::from_pin(&path).map_err(prog_err(format!("opening pinned {name}")))?);
        }
        Ok(slot.as_mut().expect("just opened"))
    }

    /// A hook's (egress, ingress) programs.
    pub(super) fn programs(&mut self, hook: Hook) -> Result<(&mut SchedClassifier, &mut SchedClassifier), AttachError> {
        self.program(hook, Side::Egress)?;
        self.program(hook, Side::Ingress)?;
        let i = Node::slot(hook, Side::Egress);
        let (egress, ingress) = self.progs[i..i + 2].split_at_mut(1);
        Ok((
            egress[0].as_mut().expect("opened"),
            ingress[0].as_mut().expect("opened"),
        ))
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

    /// Remake the node's per-connection tables whose size is not the one
    /// `cfg.tables` gives (see `TableSizes`), keeping their entries and the
    /// connections they carry: each new table is made beside the old one
    /// and the entries copied, the pins are swapped, and the programs are
    /// loaded again on the new tables with every TCX link moved onto them
    /// (as an upgrade moves them); then what the old programs wrote
    /// meanwhile is carried over and the old tables go. Pods on clsact
    /// filters are the caller's to attach again (`reattach_tc`), as after
    /// any upgrade. None when every table has its size already (or the
    /// node has no datapath). The agent runs it at its start, before it
    /// opens the maps: another process holding a table open keeps the old
    /// one.
    pub fn resize_tables(cfg: &DatapathConfig) -> Result<Option<Resized>, AttachError> {
        let dir = loader::versioned_dir(&cfg.bpffs);
        if !dir.is_dir() || loader::tables_sized_otherwise(&dir, cfg).is_empty() {
            return Ok(None);
        }
        let maps = dir.join("maps");
        let mut copied = 0;
        let tables = {
            let _lock = lock_dir(&dir, false)?;
            let tables = loader::tables_sized_otherwise(&dir, cfg);
            if tables.is_empty() {
                return Ok(None);
            }
            let migrate_err = |source| AttachError::Migrate {
                from: maps.clone(),
                source,
            };
            let mut staged = Vec::new();
            for (name, _, want) in &tables {
                let (pin, new) = (maps.join(name), resized_pin(&maps, name));
                let _ = std::fs::remove_file(&new);
                match migrate::remake(&pin, name, *want, &new) {
                    Ok(n) => copied += n,
                    Err(e) => {
                        staged.push(new);
                        staged.iter().for_each(|p| drop(std::fs::remove_file(p)));
                        return Err(migrate_err(e));
                    }
                }
                staged.push(new);
            }
            // From here the pins name the new tables; the programs are set
            // aside whatever happens, so that the next opener loads them
            // again on what the pins name and moves the links (a failure
            // converges there).
            let swapped = swap_pins(&maps, &tables);
            let aside = set_programs_aside(&dir.join("progs"));
            swapped?;
            aside?;
            tables
        };
        let node = Node::open(cfg)?;
        info!(
            ?tables,
            copied,
            relinked = node.relinked,
            "per-connection tables resized"
        );
        Ok(Some(Resized { tables, copied, node }))
    }

    /// The tables a resize set aside (`<map>_old`): what the programs that
    /// still had them wrote since the copy goes over (keys the new tables
    /// lack), then they are unpinned. Runs once every link is on programs
    /// that have the new ones.
    fn retire_resized(&mut self) -> Result<usize, AttachError> {
        let maps = self.dir.join("maps");
        let mut late = 0;
        for (name, _) in crate::config::TableSizes::default().maps() {
            let old = retired_pin(&maps, name);
            if !old.exists() {
                continue;
            }
            late += migrate::carry_new(&old, &maps.join(name), name).map_err(|source| AttachError::Migrate {
                from: old.clone(),
                source,
            })?;
            std::fs::remove_file(&old).map_err(io_err("unpinning", &old))?;
        }
        if late > 0 {
            info!(late, "entries the old tables took during the resize carried over");
        }
        Ok(late)
    }

    /// Take over the node from another layout version's directory: its
    /// maps' entries carried into ours before the programs switch, its
    /// links moved here onto our programs, what its programs made in
    /// between carried too, then the directory removed. Under its lock.
    fn adopt(&mut self, old: &Path, to: &migrate::Layout) -> Result<(), AttachError> {
        let _lock = lock_dir(old, false)?;
        let from = migrate::layout_of(old);
        let dir = self.dir.clone();
        let carry = |flowing_only| -> Result<usize, AttachError> {
            let Some(from) = &from else { return Ok(0) };
            migrate::carry(old, from, &dir, to, flowing_only)
                .map(|c| {
                    if !c.skipped.is_empty() {
                        warn!(from = %old.display(), skipped = ?c.skipped, "entries the new layout cannot hold were left behind");
                    }
                    c.total()
                })
                .map_err(|source| AttachError::Migrate {
                    from: old.to_path_buf(),
                    source,
                })
        };
        if from.is_none() {
            warn!(from = %old.display(), "its layout is unknown: its maps are not carried over");
        }
        let carried = carry(false)?;
        let mut moved = 0;
        for hook in Hook::ALL {
            moved += self.move_links(hook, &old.join(hook.dir()))?;
        }
        let late = carry(true)?;
        std::fs::remove_dir_all(old).map_err(io_err("removing the old layout", old))?;
        self.upgraded = true;
        info!(from = %old.display(), to = %self.dir.display(), carried, moved, late, "layout upgraded: maps carried over, links moved");
        Ok(())
    }

    /// Move the TCX links of `hook` pinned under `links` (another layout's)
    /// onto these programs, and pin them here.
    fn move_links(&mut self, hook: Hook, links: &Path) -> Result<usize, AttachError> {
        let Ok(rd) = std::fs::read_dir(links) else { return Ok(0) };
        let mut moved = 0;
        for e in rd {
            let link_dir = e.map_err(io_err("listing", links))?.path();
            let key = link_dir.file_name().expect("a directory entry has a name").to_owned();
            let here = self.dir.join(hook.dir()).join(&key);
            std::fs::create_dir_all(&here).map_err(io_err("creating", &here))?;
            for side in Side::BOTH {
                let path = link_dir.join(side.name());
                let Some(link) = pinned_tcx_link(&path)? else { continue };
                let prog = self.program(hook, side)?;
                let id = match prog.attach_to_link(link) {
                    Ok(id) => id,
                    Err(ProgramError::SyscallError(s)) if s.io_error.raw_os_error() == Some(libc::ENOLINK) => {
                        warn!(link = %path.display(), "link's interface is gone; not moved");
                        continue;
                    }
                    Err(e) => return Err(prog_err(format!("updating link {}", path.display()))(e)),
                };
                let link = prog
                    .take_link(id)
                    .map_err(prog_err(format!("taking link {}", path.display())))?;
                let fd: FdLink = link
                    .try_into()
                    .map_err(link_err(format!("link {} as an fd link", path.display())))?;
                let to = here.join(side.name());
                fd.pin(&to).map_err(|source| AttachError::Pinning {
                    what: format!("pinning {}", to.display()),
                    source,
                })?;
                std::fs::remove_file(&path).map_err(io_err("unpinning", &path))?;
                moved += 1;
            }
        }
        self.relinked += moved;
        Ok(moved)
    }

    /// Move every pinned TCX link onto this version's programs.
    fn relink_all(&mut self) -> Result<(), AttachError> {
        for hook in Hook::ALL {
            self.relink(hook)?;
        }
        info!(
            relinked = self.relinked,
            defunct = self.defunct.len(),
            "links moved to the new programs"
        );
        Ok(())
    }

    fn relink(&mut self, hook: Hook) -> Result<(), AttachError> {
        let links = self.dir.join(hook.dir());
        let rd = match std::fs::read_dir(&links) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("listing", &links)(e)),
        };
        for e in rd {
            let link_dir = e.map_err(io_err("listing", &links))?.path();
            for side in Side::BOTH {
                let path = link_dir.join(side.name());
                let Some(link) = pinned_tcx_link(&path)? else { continue };
                let prog = self.program(hook, side)?;
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
        Ok(())
    }

    /// The pod programs' kernel ids (egress, ingress).
    pub fn program_ids(&mut self) -> Result<(u32, u32), AttachError> {
        self.hook_program_ids(Hook::Pod)
    }

    /// A hook's programs' kernel ids (egress, ingress).
    pub fn hook_program_ids(&mut self, hook: Hook) -> Result<(u32, u32), AttachError> {
        let (egress, ingress) = self.programs(hook)?;
        let id = |p: &SchedClassifier| p.info().map(|i| i.id()).map_err(prog_err("program info"));
        Ok((id(egress)?, id(ingress)?))
    }
}

/// What `Node::resize_tables` did.
pub struct Resized {
    /// Each table remade: its name, its size before, its size now.
    pub tables: Vec<(&'static str, u32, u32)>,
    /// Entries copied into the new tables.
    pub copied: usize,
    /// The node, on its programs loaded again.
    pub node: Node,
}

/// Pin each resized table under its name, the old one set aside as
/// `<map>_old`. On a failure the table at hand keeps its old one (no opener
/// may find the name empty and make a third), and those not reached yet
/// drop their copies.
fn swap_pins(maps: &Path, tables: &[(&'static str, u32, u32)]) -> Result<(), AttachError> {
    for (i, (name, _, _)) in tables.iter().enumerate() {
        let (pin, old, new) = (maps.join(name), retired_pin(maps, name), resized_pin(maps, name));
        let r = std::fs::rename(&pin, &old)
            .map_err(io_err("setting aside", &pin))
            .and_then(|()| {
                std::fs::rename(&new, &pin).map_err(|e| {
                    let _ = std::fs::rename(&old, &pin);
                    io_err("pinning the resized table at", &pin)(e)
                })
            });
        if let Err(e) = r {
            for (rest, _, _) in &tables[i..] {
                let _ = std::fs::remove_file(resized_pin(maps, rest));
            }
            return Err(e);
        }
    }
    Ok(())
}

/// Rename every program version under `progs` so that it is another
/// version to `other_versions`: the next open loads this one again and
/// moves every link onto it.
fn set_programs_aside(progs: &Path) -> Result<(), AttachError> {
    let rd = std::fs::read_dir(progs).map_err(io_err("listing", progs))?;
    for e in rd {
        let e = e.map_err(io_err("listing", progs))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.ends_with(SET_ASIDE) {
            let aside = progs.join(format!("{name}{SET_ASIDE}"));
            std::fs::rename(e.path(), &aside).map_err(io_err("setting aside", &e.path()))?;
        }
    }
    Ok(())
}

/// Where a resized table is pinned while its entries are copied in (bpffs
/// takes no dot in a name).
fn resized_pin(maps: &Path, name: &str) -> PathBuf {
    maps.join(format!("{name}_resized"))
}

/// Where the table it replaces waits for the links to move.
fn retired_pin(maps: &Path, name: &str) -> PathBuf {
    maps.join(format!("{name}_old"))
}

/// The suffix of a program version set aside by a resize, to be loaded
/// again (another version to `other_versions`: its links move, it goes).
const SET_ASIDE: &str = "-before-resize";

/// Where a program version is pinned under the versioned directory.
fn version_dir(dir: &Path, hash: u64) -> PathBuf {
    dir.join("progs").join(format!("{hash:016x}"))
}

/// The directories of the other layout versions under `root` (older
/// ones, in practice), by version.
fn older_layouts(root: &Path, mine: u32) -> Result<Vec<PathBuf>, AttachError> {
    let Ok(rd) = std::fs::read_dir(root) else {
        return Ok(Vec::new());
    };
    let mut out: Vec<(u32, PathBuf)> = Vec::new();
    for e in rd {
        let e = e.map_err(io_err("listing", root))?;
        let name = e.file_name();
        let version = name
            .to_str()
            .and_then(|n| n.strip_prefix('v'))
            .and_then(|v| v.parse::<u32>().ok());
        if let Some(v) = version
            && v != mine
            && e.path().is_dir()
        {
            out.push((v, e.path()));
        }
    }
    out.sort();
    Ok(out.into_iter().map(|(_, p)| p).collect())
}

/// Load this version (pinning the maps as they are, or creating them) and
/// pin its programs; the pod ingress one last, its pin marks the version
/// complete.
fn load_and_pin(cfg: &DatapathConfig, pdir: &Path, build: &Build) -> Result<(), AttachError> {
    let t = Instant::now();
    let mut ebpf = loader::load_build(cfg, Some(&cfg.bpffs), build)?;
    std::fs::create_dir_all(pdir).map_err(io_err("creating", pdir))?;
    // TC_PROGRAMS ends with the uplink ones: pin INGRESS after them.
    for name in TC_PROGRAMS.iter().copied().filter(|n| *n != INGRESS).chain([INGRESS]) {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .expect("loaded")
            .try_into()
            .expect("a classifier");
        prog.pin(pdir.join(name)).map_err(|source| AttachError::Pinning {
            what: format!("pinning {name} in {}", pdir.display()),
            source,
        })?;
    }
    info!(version = %pdir.display(), elapsed = ?t.elapsed(), "datapath programs loaded and pinned");
    warn_tables_sized_otherwise(&versioned_dir_of(&cfg.bpffs, build.layout.version), cfg);
    Ok(())
}

/// Say so when the node's tables were made at other sizes than `cfg` asks
/// for: they keep them (see `TableSizes`).
pub fn warn_tables_sized_otherwise(versioned: &Path, cfg: &DatapathConfig) {
    for (map, have, want) in loader::tables_sized_otherwise(versioned, cfg) {
        warn!(
            map,
            entries = have,
            configured = want,
            "the node's table was made at another size and keeps it until the agent's next start remakes it (given --cni-conf), a reboot or a layout change"
        );
    }
}

/// The TCX link pinned at `path`, if one is.
fn pinned_tcx_link(path: &Path) -> Result<Option<SchedClassifierLink>, AttachError> {
    let pinned = match PinnedLink::from_pin(path) {
        Ok(p) => p,
        Err(_) if !path.exists() => return Ok(None),
        Err(e) => return Err(link_err(format!("opening link {}", path.display()))(e)),
    };
    SchedClassifierLink::try_from(FdLink::from(pinned))
        .map(Some)
        .map_err(link_err(format!("link {} as a TCX link", path.display())))
}
