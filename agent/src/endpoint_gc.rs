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
pub(crate) struct Record {
    pub(crate) container_id: String,
    pub(crate) ifname: String,
    pub(crate) netns: String,
    ips: Vec<ipnetwork::IpNetwork>,
    #[serde(default)]
    pub(crate) pod: Option<PodRef>,
    /// "creating" while ADD is under way, "ready" (or absent) after.
    #[serde(default)]
    pub(crate) state: Option<String>,
    /// Attached with clsact filters, to be moved onto TCX links (promote.rs).
    #[serde(default)]
    pub(crate) promote_to_tcx: bool,
    /// How the datapath was attached at ADD ("tc", "tcx"); absent when
    /// the network runs without it.
    #[serde(default)]
    pub(crate) datapath: Option<String>,
}

/// The pod a record names (the plugin's `PodRef`).
#[derive(Debug, Deserialize)]
pub(crate) struct PodRef {
    namespace: String,
    name: String,
}

impl PodRef {
    /// "namespace/name", as the agent's store keys Pods.
    pub(crate) fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
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
pub(crate) fn records(data_dir: &Path) -> Vec<(PathBuf, Record)> {
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

/// Pod addresses -> "namespace/name" from the plugin's records: the names
/// the runtime gave in `CNI_ARGS`, for flows of pods whose Pod object the
/// agent has not seen (manifests without Pods, a pod just started). Read
/// again only when a network's record directory changed.
#[derive(Debug, Default)]
pub struct RecordNames {
    seen: Vec<(PathBuf, std::time::SystemTime)>,
    names: std::collections::BTreeMap<IpAddr, String>,
}

impl RecordNames {
    pub fn get(&mut self, data_dir: &Path) -> &std::collections::BTreeMap<IpAddr, String> {
        let mut stamps: Vec<(PathBuf, std::time::SystemTime)> = std::fs::read_dir(data_dir.join("endpoints"))
            .map(|rd| {
                rd.flatten()
                    .filter_map(|n| Some((n.path(), n.metadata().ok()?.modified().ok()?)))
                    .collect()
            })
            .unwrap_or_default();
        stamps.sort();
        if stamps != self.seen {
            self.names = pod_records(data_dir)
                .into_iter()
                .flat_map(|r| r.ips.into_iter().map(move |ip| (ip, r.pod.clone())))
                .collect();
            self.seen = stamps;
        }
        &self.names
    }
}

/// A pod this node's CNI plugin recorded with the name the runtime gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRecord {
    /// Its endpoint id (the datapath's, from container id and ifname).
    pub endpoint_id: u32,
    /// "namespace/name".
    pub pod: String,
    pub ips: Vec<IpAddr>,
}

/// The live pods of this node's records (their netns is not known to be
/// gone, their ADD is done: addresses, endpoint entries and any hold are
/// in place) that carry the pod's name: a pod just started is known by
/// them before the kubelet reports its address, and by name rather than by
/// an address another pod's stale object may still claim.
pub fn pod_records(data_dir: &Path) -> Vec<PodRecord> {
    records(data_dir)
        .into_iter()
        .filter(|(_, r)| !netns_gone(&r.netns) && r.state.as_deref().is_none_or(|s| s == "ready"))
        .filter(|(_, r)| !r.ips.is_empty())
        .filter_map(|(_, r)| {
            let p = r.pod?;
            Some(PodRecord {
                endpoint_id: pin::attachment_id(&r.container_id, &r.ifname),
                pod: p.key(),
                ips: r.ips.iter().map(|n| n.ip()).collect(),
            })
        })
        .collect()
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
    use super::{RecordNames, netns_gone};

    #[test]
    fn record_names_follow_the_records() {
        let dir = tempfile::tempdir().unwrap();
        let net = dir.path().join("endpoints/net1");
        std::fs::create_dir_all(&net).unwrap();
        // A live netns: a file that exists (the records of gone pods name nothing).
        let netns = dir.path().join("ns");
        std::fs::write(&netns, "").unwrap();
        let netns = netns.display().to_string();
        let rec = |cid: &str, ip: &str, pod: &str| {
            format!(r#"{{"containerId":"{cid}","ifname":"eth0","netns":"{netns}","ips":["{ip}/24"]{pod}}}"#)
        };
        std::fs::write(
            net.join("a.json"),
            rec("a", "10.0.0.2", r#","pod":{"namespace":"shop","name":"web-0"}"#),
        )
        .unwrap();
        std::fs::write(net.join("b.json"), rec("b", "10.0.0.3", "")).unwrap();
        let mut names = RecordNames::default();
        let got = names.get(dir.path()).clone();
        assert_eq!(got.len(), 1, "a record without a pod names nothing");
        assert_eq!(got[&"10.0.0.2".parse().unwrap()], "shop/web-0");
        std::fs::remove_file(net.join("a.json")).unwrap();
        // The directory's time moves on removal (allow coarse clocks).
        let t = std::fs::metadata(&net).unwrap().modified().unwrap();
        filetime_bump(&net, t);
        assert!(names.get(dir.path()).is_empty(), "the pod's record went");
    }

    /// Make sure the directory's mtime differs from `t` (a file system
    /// with coarse timestamps may have kept it).
    fn filetime_bump(dir: &std::path::Path, t: std::time::SystemTime) {
        let f = std::fs::File::open(dir).unwrap();
        if std::fs::metadata(dir).unwrap().modified().unwrap() == t {
            f.set_modified(t + std::time::Duration::from_secs(1)).unwrap();
        }
    }

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
