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
        let file = File::open(path).map_err(|e| {
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
