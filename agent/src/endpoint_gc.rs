//! Endpoints whose pod is gone without a CNI DEL (a runtime that crashed,
//! a node that rebooted its runtime): the CNI plugin's endpoint records
//! name each pod's network namespace; when that namespace no longer
//! exists, the pod's datapath state goes: its endpoint map entries, its
//! policy entry, its pinned links. The record itself and the address lease
//! stay for the plugin (its DEL, or the runtime's CNI GC, releases them);
//! a later DEL finds the datapath side already clean.

use serde::Deserialize;
use sluice_tc_datapath::maps::{Maps, MapsError};
use sluice_tc_datapath::{attach, pin};
use std::collections::BTreeSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

/// The CNI plugin's default `dataDir`, where its endpoint records are (the
/// plugin and the agent never import each other: they meet on disk).
pub const CNI_DATA_DIR: &str = "/var/lib/sluice";

/// The fields of the plugin's endpoint record this needs (the plugin's
/// `Endpoint`, camelCase JSON).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Record {
    container_id: String,
    ifname: String,
    netns: String,
    ips: Vec<ipnetwork::IpNetwork>,
}

/// A pod cleaned up.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Collected {
    pub container_id: String,
    pub ifname: String,
    pub ips: Vec<IpAddr>,
}

#[derive(Debug, thiserror::Error)]
pub enum EndpointGcError {
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error("unpinning the links of {0}: {1}")]
    Links(String, Box<attach::AttachError>),
}

/// Every record under `<data_dir>/endpoints/<network>/`.
fn records(data_dir: &Path) -> Vec<(PathBuf, Record)> {
    let mut out = Vec::new();
    let Ok(networks) = std::fs::read_dir(data_dir.join("endpoints")) else {
        return out;
    };
    for net in networks.flatten() {
        let Ok(files) = std::fs::read_dir(net.path()) else {
            continue;
        };
        for f in files.flatten() {
            let p = f.path();
            if p.extension().is_some_and(|e| e == "json")
                && let Some(r) = std::fs::read(&p).ok().and_then(|b| serde_json::from_slice(&b).ok())
            {
                out.push((p, r));
            }
        }
    }
    out
}

/// Whether the netns a record names is known to be gone: its directory is
/// visible (an agent in a container without the host's `/run/netns`, or a
/// `/proc/<pid>/ns/net` of another PID namespace, cannot judge, and must
/// not take every pod for gone) and the file is not in it.
fn netns_gone(netns: &str) -> bool {
    let p = Path::new(netns);
    !netns.is_empty() && p.parent().is_some_and(Path::is_dir) && !p.exists()
}

/// Clean the datapath state of pods whose netns is gone; `done` remembers
/// the records already handled, so each is cleaned (and reported) once.
pub fn collect(
    data_dir: &Path,
    versioned: &Path,
    maps: &mut Maps,
    done: &mut BTreeSet<PathBuf>,
) -> Result<Vec<Collected>, EndpointGcError> {
    let mut out = Vec::new();
    let all = records(data_dir);
    done.retain(|p| all.iter().any(|(q, _)| q == p));
    for (path, r) in all {
        if done.contains(&path) || !netns_gone(&r.netns) {
            continue;
        }
        let id = pin::attachment_id(&r.container_id, &r.ifname);
        for ip in &r.ips {
            maps.endpoints_mut().remove(ip.ip(), id)?;
        }
        maps.policy_mut().remove_endpoint_policy(id)?;
        let key = pin::link_key(&r.container_id, &r.ifname);
        attach::detach(versioned, None, &r.ifname, &key)
            .map_err(|e| EndpointGcError::Links(key.clone(), Box::new(e)))?;
        done.insert(path);
        out.push(Collected {
            container_id: r.container_id,
            ifname: r.ifname,
            ips: r.ips.iter().map(|n| n.ip()).collect(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::netns_gone;

    #[test]
    fn only_a_missing_file_in_a_visible_directory_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let live = dir.path().join("cni-live");
        std::fs::write(&live, "").unwrap();
        assert!(!netns_gone(live.to_str().unwrap()), "present");
        assert!(netns_gone(dir.path().join("cni-gone").to_str().unwrap()), "gone");
        let unseen = dir.path().join("not-mounted/cni-x");
        assert!(
            !netns_gone(unseen.to_str().unwrap()),
            "directory not visible: no judgement"
        );
        assert!(!netns_gone(""), "no netns recorded");
    }
}
