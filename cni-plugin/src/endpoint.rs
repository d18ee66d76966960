//! The node-local endpoint store: one record per attachment (container id,
//! ifname) of a network, written atomically. The datapath programs its
//! endpoint map from these records; DEL and GC find what to undo in them.

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use sluice_cni_spec::{CniError, ErrorCode};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    pub network: String,
    pub container_id: String,
    pub ifname: String,
    pub netns: String,
    pub ifindex: u32,
    pub mac: String,
    pub ips: Vec<IpNetwork>,
    /// "main" or "chained".
    pub role: String,
    /// macvlan, ipvlan or eni in the main role; the link kind found in the chained role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_kind: Option<String>,
    /// eni: the host name to give the device back under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ifname: Option<String>,
    /// How the datapath is attached: "tcx" or "tc"; absent when disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath: Option<String>,
    pub created: u64,
}

pub struct EndpointStore {
    dir: PathBuf,
}

fn io(what: impl std::fmt::Display, path: &Path, e: std::io::Error) -> CniError {
    CniError::new(ErrorCode::Io, format!("endpoint store: {what} {}: {e}", path.display()))
}

impl EndpointStore {
    /// `<data_dir>/endpoints/<network>/`.
    pub fn new(data_dir: &Path, network: &str) -> EndpointStore {
        EndpointStore {
            dir: data_dir.join("endpoints").join(network),
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `:` cannot appear in a container id or an interface name, so the pair
    /// maps to one file name without escaping.
    fn path(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.dir.join(format!("{container_id}:{ifname}.json"))
    }

    pub fn put(&self, ep: &Endpoint) -> Result<(), CniError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io("creating", &self.dir, e))?;
        let path = self.path(&ep.container_id, &ep.ifname);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(ep).expect("endpoint serializes");
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("creating", &tmp, e))?;
        f.write_all(&bytes).map_err(|e| io("writing", &tmp, e))?;
        f.sync_data().map_err(|e| io("syncing", &tmp, e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io("renaming", &path, e))
    }

    pub fn get(&self, container_id: &str, ifname: &str) -> Result<Option<Endpoint>, CniError> {
        let path = self.path(container_id, ifname);
        match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|e| {
                CniError::new(
                    ErrorCode::Io,
                    format!("endpoint store: {} is corrupt: {e}", path.display()),
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading", &path, e)),
        }
    }

    /// Idempotent.
    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<(), CniError> {
        let path = self.path(container_id, ifname);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("removing", &path, e)),
        }
    }

    pub fn list(&self) -> Result<Vec<Endpoint>, CniError> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io("listing", &self.dir, e)),
        };
        let mut out = Vec::new();
        for entry in rd {
            let path = entry.map_err(|e| io("listing", &self.dir, e))?.path();
            if path.extension().is_some_and(|x| x == "json")
                && let Ok(b) = std::fs::read(&path)
                && let Ok(ep) = serde_json::from_slice::<Endpoint>(&b)
            {
                out.push(ep);
            }
        }
        out.sort_by(|a, b| (&a.container_id, &a.ifname).cmp(&(&b.container_id, &b.ifname)));
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_list_remove() {
        let d = tempfile::tempdir().unwrap();
        let s = EndpointStore::new(d.path(), "net1");
        let ep = Endpoint {
            network: "net1".into(),
            container_id: "abc".into(),
            ifname: "eth0".into(),
            netns: "/var/run/netns/p".into(),
            ifindex: 2,
            mac: "02:00:00:00:00:01".into(),
            ips: vec!["10.0.0.2/24".parse().unwrap()],
            role: "main".into(),
            link_kind: Some("macvlan".into()),
            host_ifname: None,
            datapath: Some("tcx".into()),
            created: 1,
        };
        assert_eq!(s.get("abc", "eth0").unwrap(), None);
        s.put(&ep).unwrap();
        assert_eq!(s.get("abc", "eth0").unwrap(), Some(ep.clone()));
        assert_eq!(s.list().unwrap(), vec![ep]);
        s.remove("abc", "eth0").unwrap();
        s.remove("abc", "eth0").unwrap();
        assert!(s.list().unwrap().is_empty());
        assert!(
            std::fs::read_dir(s.dir()).unwrap().next().is_none(),
            "no temp files left"
        );
    }
}
