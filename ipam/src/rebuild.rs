//! Rebuilding a pool's lease store that was put aside as corrupt, from
//! what the sluice plugin recorded of each pod it set up: every address of
//! every endpoint record of the network is leased again to its owner.
//! Until then the pool allocates nothing (an empty store would hand out
//! addresses that pods hold).

use crate::error::IpamError;
use crate::store::{Lease, LockedStore, PoolState, STORE_VERSION};
use ipnetwork::IpNetwork;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The fields of the plugin's endpoint record a lease needs.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    container_id: String,
    ifname: String,
    ips: Vec<IpNetwork>,
    #[serde(default)]
    created: u64,
}

/// What a rebuild did.
#[derive(Debug)]
pub struct Rebuilt {
    pub leases: usize,
    /// Records that could not be read (left out, named).
    pub skipped: Vec<PathBuf>,
    /// Where the corrupt store went.
    pub kept_as: Option<PathBuf>,
}

/// Rebuild `<ipam_dir>/<network>` from `<plugin_dir>/endpoints/<network>`.
pub fn rebuild(ipam_dir: &Path, network: &str, plugin_dir: &Path) -> Result<Rebuilt, IpamError> {
    let records = plugin_dir.join("endpoints").join(network);
    let store = LockedStore::lock(&ipam_dir.join(network), network, Duration::from_secs(10), true)?;
    let mut state = PoolState {
        version: STORE_VERSION,
        ..Default::default()
    };
    let mut skipped = Vec::new();
    let entries = std::fs::read_dir(&records).map_err(|source| IpamError::Store {
        path: records.clone(),
        what: "listing endpoint records",
        source,
    })?;
    for e in entries.flatten() {
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let Some(r) = std::fs::read(&p)
            .ok()
            .and_then(|b| serde_json::from_slice::<Record>(&b).ok())
        else {
            skipped.push(p);
            continue;
        };
        for ip in r.ips {
            state.leases.insert(
                ip.ip(),
                Lease {
                    container_id: r.container_id.clone(),
                    ifname: r.ifname.clone(),
                    since: r.created,
                    eni: None,
                },
            );
        }
    }
    store.save(&state)?;
    let aside = store.aside_path();
    let kept_as = if aside.exists() {
        let kept = aside.with_extension(format!("corrupt-{}", crate::store::now_secs()));
        std::fs::rename(&aside, &kept).map_err(|source| IpamError::Store {
            path: aside.clone(),
            what: "keeping the corrupt store",
            source,
        })?;
        Some(kept)
    } else {
        None
    };
    Ok(Rebuilt {
        leases: state.leases.len(),
        skipped,
        kept_as,
    })
}
