//! The lease store of one pool: a JSON file replaced atomically (written
//! aside, then put in place) under an exclusive file lock.
//!
//! One file rather than host-local's file per address: a lookup by owner is a
//! scan of memory instead of a read of every lease file, and a process that
//! dies can only leave the old or the new state, never half of a change.
//!
//! Not synced. A lease names a pod's sandbox, and no sandbox outlives the
//! node: what a power loss can tear (a file the kernel had not written out
//! yet) lists only pods that died with it. So a store that does not parse
//! and was last written before this boot is set aside and counts as empty
//! (the runtime's DELs of the dead sandboxes find nothing to release);
//! one that does not parse and was written since (a bug, a hand edit) is
//! quarantined until `sluice-ipam rebuild`. An fsync was ~0.5 ms of every
//! ADD and DEL here, more on a cloud disk.

use crate::eni::EniId;
use crate::error::IpamError;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub const STORE_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    #[serde(rename = "containerId")]
    pub container_id: String,
    pub ifname: String,
    /// Seconds since the epoch when the lease was made.
    pub since: u64,
    /// ENI pools: the ENI the address belongs to, with what the pod needs,
    /// kept here because the node file may drop the address while it is leased.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eni: Option<LeasedEni>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeasedEni {
    #[serde(flatten)]
    pub id: EniId,
    pub subnet: IpNetwork,
    pub gateway: IpAddr,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolState {
    pub version: u32,
    pub leases: BTreeMap<IpAddr, Lease>,
    /// The last address handed out per range set (key: the set's index) or
    /// per ENI (key: `eni:` and its MAC or name): allocation continues after
    /// it, so a just-released address is not reused at once.
    #[serde(rename = "lastReserved", default)]
    pub last_reserved: BTreeMap<String, IpAddr>,
}

pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A locked pool directory. The lock is released when this is dropped.
pub struct LockedStore {
    dir: PathBuf,
    _lock: File,
}

fn store_err<'a>(path: &'a Path, what: &'static str) -> impl FnOnce(std::io::Error) -> IpamError + 'a {
    move |source| IpamError::Store {
        path: path.to_path_buf(),
        what,
        source,
    }
}

/// Whether `path` was last modified before the node booted.
fn written_before_boot(path: &Path) -> bool {
    let Ok(modified) = std::fs::metadata(path).and_then(|m| m.modified()) else {
        return false;
    };
    let Ok(up) = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME) else {
        return false;
    };
    let up = Duration::new(up.tv_sec() as u64, up.tv_nsec() as u32);
    SystemTime::now().checked_sub(up).is_some_and(|boot| modified < boot)
}

/// Put `tmp` in `path`'s place atomically. Over an existing file the two
/// are exchanged and the old one, now at `tmp`, unlinked: a plain rename
/// over an existing file makes ext4 write the new one out at once
/// (`auto_da_alloc`, its guard for files replaced without an fsync), ~0.2
/// ms measured here, where an exchange does not (~0.04 ms). A reader sees
/// the old file or the new one either way; a process that dies between the
/// two steps leaves `tmp`, which the next write truncates.
pub fn replace(tmp: &Path, path: &Path) -> std::io::Result<()> {
    use nix::fcntl::{AT_FDCWD, RenameFlags, renameat2};
    match renameat2(AT_FDCWD, tmp, AT_FDCWD, path, RenameFlags::RENAME_EXCHANGE) {
        Ok(()) => match std::fs::remove_file(tmp) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
        // Nothing there yet (nothing to flush either), or a filesystem
        // that cannot exchange: a plain rename.
        Err(_) => std::fs::rename(tmp, path),
    }
}

impl LockedStore {
    /// Lock `dir` (created if needed), waiting at most `timeout`.
    pub fn lock(dir: &Path, pool: &str, timeout: Duration, exclusive: bool) -> Result<LockedStore, IpamError> {
        std::fs::create_dir_all(dir).map_err(store_err(dir, "creating pool directory"))?;
        let lock_path = dir.join("lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&lock_path)
            .map_err(store_err(&lock_path, "opening lock file"))?;
        let started = Instant::now();
        let mut pause = Duration::from_micros(50);
        loop {
            let r = if exclusive {
                file.try_lock()
            } else {
                file.try_lock_shared()
            };
            match r {
                Ok(()) => break,
                Err(std::fs::TryLockError::WouldBlock) => {
                    if started.elapsed() >= timeout {
                        return Err(IpamError::LockTimeout {
                            pool: pool.to_string(),
                            path: lock_path,
                            waited_ms: started.elapsed().as_millis(),
                        });
                    }
                    std::thread::sleep(pause);
                    // Holders keep the lock for well under a millisecond: poll at that scale.
                    pause = (pause * 2).min(Duration::from_millis(1));
                }
                Err(std::fs::TryLockError::Error(e)) => {
                    return Err(store_err(&lock_path, "locking")(e));
                }
            }
        }
        Ok(LockedStore {
            dir: dir.to_path_buf(),
            _lock: file,
        })
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("leases.json")
    }

    /// Whether a lease was ever written here (the first ADD writes the
    /// file): a reader that is not the plugin can tell "no pods" from "no
    /// such pool".
    pub fn has_state(&self) -> bool {
        self.state_path().exists()
    }

    /// Where a corrupt store is kept until it is rebuilt; while it is there
    /// nothing is allocated (an empty store would hand out leased addresses).
    pub fn aside_path(&self) -> PathBuf {
        self.dir.join("leases.json.corrupt")
    }

    /// The state, for a change that only frees (DEL, GC): a corrupt store
    /// is put aside (once, logged) and counts as holding nothing, so that
    /// DEL keeps succeeding; None while the store is aside.
    pub fn load_for_release(&self, pool: &str) -> Result<Option<PoolState>, IpamError> {
        match self.load() {
            Ok(s) => Ok(Some(s)),
            Err(IpamError::Quarantined { .. }) => Ok(None),
            Err(IpamError::Corrupt { path, msg }) => {
                let aside = self.aside_path();
                std::fs::rename(&path, &aside).map_err(store_err(&path, "putting the corrupt store aside"))?;
                tracing::error!(pool, store = %path.display(), aside = %aside.display(), error = %msg,
                    "lease store corrupt: put aside; run `sluice-ipam rebuild` to rebuild it");
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub fn load(&self) -> Result<PoolState, IpamError> {
        let path = self.state_path();
        let aside = self.aside_path();
        if aside.exists() {
            return Err(IpamError::Quarantined {
                pool: self
                    .dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                aside,
            });
        }
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(PoolState {
                    version: STORE_VERSION,
                    ..Default::default()
                });
            }
            Err(e) => return Err(store_err(&path, "reading")(e)),
        };
        let state: PoolState = match serde_json::from_slice(&bytes) {
            Ok(s) => s,
            Err(e) if written_before_boot(&path) => {
                let lost = self.dir.join("leases.json.lost-at-reboot");
                std::fs::rename(&path, &lost).map_err(store_err(&path, "putting a torn store aside"))?;
                tracing::warn!(store = %path.display(), aside = %lost.display(), error = %e,
                    "lease store torn before this boot: its pods died with the node; starting empty");
                return Ok(PoolState {
                    version: STORE_VERSION,
                    ..Default::default()
                });
            }
            Err(e) => {
                return Err(IpamError::Corrupt {
                    path: path.clone(),
                    msg: e.to_string(),
                });
            }
        };
        if state.version != STORE_VERSION {
            return Err(IpamError::Corrupt {
                path,
                msg: format!("store version {} is not {STORE_VERSION}", state.version),
            });
        }
        Ok(state)
    }

    /// Replace the state atomically: a reader, or a process that dies,
    /// sees the old or the new file, each whole (see the module's note on
    /// syncing).
    pub fn save(&self, state: &PoolState) -> Result<(), IpamError> {
        let path = self.state_path();
        let tmp = self.dir.join("leases.json.tmp");
        let bytes = serde_json::to_vec(state).expect("state serializes");
        let mut f = File::create(&tmp).map_err(store_err(&tmp, "creating"))?;
        f.write_all(&bytes).map_err(store_err(&tmp, "writing"))?;
        replace(&tmp, &path).map_err(store_err(&path, "putting in place"))
    }
}
