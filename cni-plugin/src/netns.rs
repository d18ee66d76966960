//! Network namespaces: open one by path, run work inside it on a throwaway
//! thread. The calling thread never changes namespace, so an async runtime
//! on it keeps working in the host namespace.

use nix::sched::{CloneFlags, setns};
use sluice_cni_spec::{CniError, ErrorCode};
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, RawFd};
use std::path::{Path, PathBuf};

/// NSFS_MAGIC from linux/magic.h: what statfs reports for a netns file.
const NSFS_MAGIC: i64 = 0x6e73_6673;

pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    /// Open a netns file (e.g. `/var/run/netns/x` or `/proc/PID/ns/net`).
    /// A missing path is "unknown container" (code 3): the runtime has no
    /// namespace for us to work in.
    pub fn open(path: &Path) -> Result<NetNs, CniError> {
        use std::os::unix::fs::OpenOptionsExt;
        // Non-blocking: a FIFO (or another special file) named as a netns
        // must not hang the plugin before the check below refuses it.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(|e| {
                let code = if e.kind() == std::io::ErrorKind::NotFound {
                    ErrorCode::UnknownContainer
                } else {
                    ErrorCode::Io
                };
                CniError::new(code, format!("cannot open netns {}: {e}", path.display()))
            })?;
        let fs = nix::sys::statfs::fstatfs(&file)
            .map_err(|e| CniError::new(ErrorCode::Io, format!("statfs netns {}: {e}", path.display())))?;
        // procfs links (/proc/PID/ns/net) report PROC_SUPER_MAGIC; bind mounts report nsfs.
        let magic = fs.filesystem_type().0;
        if magic != NSFS_MAGIC && magic != nix::sys::statfs::PROC_SUPER_MAGIC.0 {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!("{} is not a network namespace", path.display()),
            ));
        }
        Ok(NetNs {
            file,
            path: path.to_path_buf(),
        })
    }

    /// The namespace the calling thread is in.
    pub fn current() -> Result<NetNs, CniError> {
        NetNs::open(Path::new("/proc/thread-self/ns/net"))
    }

    /// Whether this is the namespace the plugin itself runs in (the node's,
    /// when a runtime calls it): never a pod's to configure.
    pub fn is_ours(&self) -> Result<bool, CniError> {
        let stat = |f: &File, what: &str| {
            nix::sys::stat::fstat(f).map_err(|e| CniError::new(ErrorCode::Io, format!("fstat {what}: {e}")))
        };
        let ours = File::open("/proc/self/ns/net")
            .map_err(|e| CniError::new(ErrorCode::Io, format!("opening /proc/self/ns/net: {e}")))?;
        let (a, b) = (
            stat(&self.file, &self.path.display().to_string())?,
            stat(&ours, "our netns")?,
        );
        Ok(a.st_dev == b.st_dev && a.st_ino == b.st_ino)
    }

    /// The namespace a DEL works in, if there is one to work in: none when
    /// the runtime gave none, when it is gone, or when it is the plugin's
    /// own (then nothing in it is touched: DEL must still succeed).
    pub fn for_del(path: Option<&Path>) -> Result<Option<NetNs>, CniError> {
        let Some(path) = path else { return Ok(None) };
        let ns = match NetNs::open(path) {
            Ok(ns) => ns,
            Err(e) if e.is(ErrorCode::UnknownContainer) => return Ok(None),
            Err(e) => return Err(e),
        };
        if ns.is_ours()? {
            tracing::warn!(netns = %path.display(), "DEL names the plugin's own network namespace: nothing in it is touched");
            return Ok(None);
        }
        Ok(Some(ns))
    }

    /// A pod's namespace: refused (code 4) when it is the plugin's own,
    /// where a pod interface, its programs or a deletion would hit the node.
    pub fn open_pod(path: &Path) -> Result<NetNs, CniError> {
        let ns = NetNs::open(path)?;
        if ns.is_ours()? {
            return Err(CniError::new(
                ErrorCode::InvalidEnvironment,
                format!(
                    "CNI_NETNS {} is the plugin's own network namespace (the node's), not a pod's",
                    path.display()
                ),
            ));
        }
        Ok(ns)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Run `f` on a new thread that has entered this namespace. The thread
    /// ends with `f`, so its namespace never leaks into other work.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, CniError> {
        std::thread::scope(|s| {
            s.spawn(|| {
                setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
                    .map_err(|e| CniError::new(ErrorCode::Io, format!("setns into {}: {e}", self.path.display())))?;
                Ok(f())
            })
            .join()
            .map_err(|_| {
                CniError::new(
                    ErrorCode::Io,
                    format!("worker in netns {} panicked", self.path.display()),
                )
            })?
        })
    }
}
