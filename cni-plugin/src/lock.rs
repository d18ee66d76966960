//! Node-wide locks of the CNI binary: a file under the data dir, flocked,
//! waited for a bounded time (concurrent ADDs and DELs of one node).

use sluice_cni_spec::{CniError, ErrorCode};
use std::fs::File;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long to wait for a lock.
const LOCK_WAIT: Duration = Duration::from_secs(30);

/// Hold `<data_dir>/<name>` exclusively (released when the file drops).
pub fn lock(data_dir: &Path, name: &str) -> Result<File, CniError> {
    std::fs::create_dir_all(data_dir)
        .map_err(|e| CniError::new(ErrorCode::Io, format!("creating {}: {e}", data_dir.display())))?;
    let path = data_dir.join(name);
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| CniError::new(ErrorCode::Io, format!("opening {}: {e}", path.display())))?;
    let start = Instant::now();
    loop {
        match f.try_lock() {
            Ok(()) => return Ok(f),
            Err(std::fs::TryLockError::WouldBlock) if start.elapsed() < LOCK_WAIT => {
                std::thread::sleep(Duration::from_millis(5))
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(CniError::new(
                    ErrorCode::TryAgainLater,
                    format!("the lock {} was not free within {LOCK_WAIT:?}", path.display()),
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(CniError::new(ErrorCode::Io, format!("locking {}: {e}", path.display())));
            }
        }
    }
}
