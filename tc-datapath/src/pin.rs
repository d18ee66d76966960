//! Where the node's datapath lives on bpffs, and making sure it is bpffs.
//!
//! ```text
//! <root>/v<layout>/maps/sl_*              every map, shared by all program versions
//! <root>/v<layout>/progs/<hash>/sl_*      the programs of one build and configuration
//! <root>/v<layout>/links/<key>/{egress,ingress}   one pod interface's TCX links
//! ```
//!
//! Pins outlive every process: the CNI binary exits after each call, and the
//! links must keep the programs attached. Deleting a netns does not free a
//! pinned link, so DEL and GC unpin.

use std::io;
use std::path::{Path, PathBuf};

/// BPF_FS_MAGIC from linux/magic.h.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where systemd (and Cilium, and everyone else) mounts bpffs.
pub const SYSTEM_BPFFS: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("{path} is not on a bpf filesystem (mount one with `mount -t bpf bpf <dir>`)")]
    NotBpffs { path: PathBuf },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> PinError + 'a {
    move |source| PinError::Io {
        what,
        path: path.to_path_buf(),
        source,
    }
}

pub fn is_bpffs(path: &Path) -> io::Result<bool> {
    let fs = nix::sys::statfs::statfs(path).map_err(io::Error::from)?;
    Ok(fs.filesystem_type().0 == BPF_FS_MAGIC)
}

/// The nearest existing ancestor of `path` (the path itself when it exists).
fn existing_ancestor(path: &Path) -> &Path {
    path.ancestors().find(|p| p.exists()).unwrap_or(Path::new("/"))
}

/// Make `root` a directory on bpffs. Under /sys/fs/bpf a missing bpffs is
/// mounted, as systemd does at boot; any other root must already be on one,
/// so a typo never pins into tmpfs (where pins are refused) or mounts
/// somewhere unexpected.
///
/// `ip netns exec` gives its command a fresh /sys, hiding the host's
/// /sys/fs/bpf: a bpffs mounted there dies with that command. Tools run that
/// way must use a root outside /sys.
pub fn ensure_bpffs(root: &Path) -> Result<(), PinError> {
    // `..` would let a root "under" /sys/fs/bpf name another place (and
    // mount a bpffs over the node's pins); the config refuses it too.
    if root
        .components()
        .any(|c| !matches!(c, std::path::Component::RootDir | std::path::Component::Normal(_)))
    {
        return Err(PinError::NotBpffs {
            path: root.to_path_buf(),
        });
    }
    let base = existing_ancestor(root);
    let on_bpffs = is_bpffs(base).map_err(io_err("statfs", base))?;
    if !on_bpffs {
        let sys = Path::new(SYSTEM_BPFFS);
        if !root.starts_with(sys) || !sys.is_dir() {
            return Err(PinError::NotBpffs {
                path: root.to_path_buf(),
            });
        }
        nix::mount::mount(
            Some("bpf"),
            sys,
            Some("bpf"),
            nix::mount::MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| io_err("mounting bpffs on", sys)(e.into()))?;
    }
    std::fs::create_dir_all(root).map_err(io_err("creating", root))
}

/// The pin directory name of one attachment. bpffs refuses `.` in names,
/// and interface names may hold one (`eth0.100`): it is escaped, as is the
/// escape character, so distinct attachments never share a name.
pub fn link_key(container_id: &str, ifname: &str) -> String {
    let esc = |s: &str| s.replace('%', "%25").replace('.', "%2e").replace('/', "%2f");
    fit_name(format!("{}:{}", esc(container_id), esc(ifname)), NAME_MAX)
}

/// The longest file name Linux takes (NAME_MAX).
pub const NAME_MAX: usize = 255;

/// `name` cut to at most `max` bytes (at least 64): itself when it fits,
/// else its start and a hash of the whole (container ids have no length
/// limit, and a DEL must find what the ADD of a long one made).
pub fn fit_name(name: String, max: usize) -> String {
    if name.len() <= max {
        return name;
    }
    let mut cut = max - 17;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}~{:016x}", &name[..cut], crate::hash::fnv1a(0xf1, name.as_bytes()))
}

/// The endpoint map's owner tag of one attachment, so that a DEL never
/// removes an address a newer pod already holds. Never 0 ("no owner").
pub fn attachment_id(container_id: &str, ifname: &str) -> u32 {
    let h = crate::hash::fnv1a(0xe9, format!("{container_id}\0{ifname}").as_bytes());
    ((h >> 32) as u32 ^ h as u32).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_keys_have_no_dots_and_do_not_collide() {
        assert_eq!(link_key("abc", "eth0"), "abc:eth0");
        assert_eq!(link_key("abc", "eth0.100"), "abc:eth0%2e100");
        assert_ne!(link_key("a", "b%2ec"), link_key("a", "b.c"));
        assert!(!link_key("x.y", "e.0").contains('.'));
    }

    #[test]
    fn long_names_fit_and_stay_distinct() {
        let a = link_key(&"a".repeat(300), "eth0");
        let b = link_key(&"a".repeat(301), "eth0");
        assert!(a.len() <= NAME_MAX && b.len() <= NAME_MAX);
        assert_ne!(a, b);
        assert_eq!(link_key("short", "eth0"), "short:eth0");
    }

    #[test]
    fn a_root_outside_sys_must_already_be_bpffs() {
        let d = tempfile_dir();
        let e = ensure_bpffs(&d.join("sluice")).unwrap_err();
        assert!(matches!(e, PinError::NotBpffs { .. }), "{e}");
        assert!(!d.join("sluice").exists(), "nothing created on the wrong filesystem");
        std::fs::remove_dir_all(d).unwrap();
    }

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("sluice-pin-test-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    }
}
