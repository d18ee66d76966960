//! The node-local endpoint store: one record per attachment (container id,
//! ifname) of a network, written atomically. The datapath programs its
//! endpoint map from these records; DEL and GC find what to undo in them.

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use sluice_cni_spec::{CniError, ErrorCode};
use sluice_tc_datapath::attach::Attached;
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
    pub role: Role,
    /// What sluice made in the main role; what it found in the chained role.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link_kind: Option<LinkKind>,
    /// macvlan/ipvlan: the parent's ifindex in the node's namespace, where
    /// traffic from outside is handed in to the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_ifindex: Option<u32>,
    /// eni: the host name to give the device back under.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_ifname: Option<String>,
    /// How the datapath is attached; absent when disabled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub datapath: Option<Attached>,
    /// Attached with clsact filters for a fast start, to be moved onto TCX
    /// links by the agent (`datapath.attach: auto`); once its links are
    /// pinned, they are what runs.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub promote_to_tcx: bool,
    /// The host-side child the node reaches the pod through (host_path.rs),
    /// recorded before it is made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_path: Option<String>,
    /// The Kubernetes pod the runtime named in `CNI_ARGS` (kubelet's
    /// runtimes pass `K8S_POD_NAMESPACE`, `K8S_POD_NAME`, and containerd
    /// `K8S_POD_UID`): what `sluicectl observe` names a flow's end by when
    /// the agent has no Pod object for the address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodRef>,
    /// Written before ADD makes anything (so that a DEL after a crash in
    /// between knows what to undo), ready once ADD is done.
    #[serde(default)]
    pub state: EndpointState,
    /// Seconds since the epoch.
    pub created: u64,
}

impl Endpoint {
    /// Now, as `created` counts.
    pub fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

/// A pod as the runtime names it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodRef {
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

impl PodRef {
    /// From `CNI_ARGS`: both the namespace and the name, or nothing (a
    /// runtime outside Kubernetes, podman say, sends neither).
    pub fn from_args(args: &std::collections::BTreeMap<String, String>) -> Option<PodRef> {
        let get = |k: &str| args.get(k).filter(|v| !v.is_empty()).cloned();
        Some(PodRef {
            namespace: get("K8S_POD_NAMESPACE")?,
            name: get("K8S_POD_NAME")?,
            uid: get("K8S_POD_UID"),
        })
    }
}

/// How far ADD got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointState {
    /// ADD is under way: what is recorded may exist, more may too.
    Creating,
    #[default]
    Ready,
}

/// Which role made the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// sluice made the pod interface.
    Main,
    /// The plugin before sluice in the chain made it.
    Chained,
}

/// The pod interface's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkKind {
    Macvlan,
    Ipvlan,
    /// A whole host interface moved into the pod (handed back on DEL).
    Eni,
    Veth,
    /// Any other kind a first plugin made (recorded, never acted on).
    #[serde(other)]
    Unknown,
}

impl LinkKind {
    /// The kind of a link the kernel reports (`IFLA_INFO_KIND`; none for a
    /// physical device, which is what an ENI is).
    pub fn from_netlink(kind: Option<&str>) -> LinkKind {
        match kind {
            Some("macvlan") => LinkKind::Macvlan,
            Some("ipvlan") => LinkKind::Ipvlan,
            Some("veth") => LinkKind::Veth,
            None => LinkKind::Eni,
            Some(_) => LinkKind::Unknown,
        }
    }
}

pub struct EndpointStore {
    dir: PathBuf,
}

fn corrupt(path: &Path, e: serde_json::Error) -> CniError {
    CniError::new(
        ErrorCode::Io,
        format!("endpoint store: {} is corrupt: {e}", path.display()),
    )
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
        use sluice_tc_datapath::pin::{NAME_MAX, fit_name};
        // With room for ".json.tmp": a container id has no length limit.
        let stem = fit_name(format!("{container_id}:{ifname}"), NAME_MAX - ".json.tmp".len());
        self.dir.join(format!("{stem}.json"))
    }

    /// Write a record: atomically (a temporary file put in place, see
    /// `sluice_ipam::store::replace`), never synced. A record describes
    /// what lives in the kernel only (the pod's namespace, its link, its
    /// pinned programs), all of which a node that goes down loses with it;
    /// a process that dies keeps what it wrote; one a power loss tore is
    /// taken as none by DEL (`get_for_del`). An fsync here was 0.5 ms of
    /// every ADD.
    pub fn put(&self, ep: &Endpoint) -> Result<(), CniError> {
        std::fs::create_dir_all(&self.dir).map_err(|e| io("creating", &self.dir, e))?;
        let path = self.path(&ep.container_id, &ep.ifname);
        let tmp = path.with_extension("json.tmp");
        let bytes = serde_json::to_vec_pretty(ep).expect("endpoint serializes");
        let mut f = std::fs::File::create(&tmp).map_err(|e| io("creating", &tmp, e))?;
        f.write_all(&bytes).map_err(|e| io("writing", &tmp, e))?;
        sluice_ipam::store::replace(&tmp, &path).map_err(|e| io("putting in place", &path, e))
    }

    pub fn get(&self, container_id: &str, ifname: &str) -> Result<Option<Endpoint>, CniError> {
        let path = self.path(container_id, ifname);
        self.read(&path)?.transpose().map_err(|e| corrupt(&path, e))
    }

    /// The record as DEL sees it, and whether one was there but could not
    /// be parsed (a node that lost power before the kernel wrote it out, a
    /// hand edit). Such a record is logged and taken as none, so that DEL
    /// still releases the addresses, unpins by container id, touches no
    /// link, and succeeds: failing, it would fail at every retry, and the
    /// runtime retries DEL until it succeeds.
    pub fn get_for_del(&self, container_id: &str, ifname: &str) -> Result<(Option<Endpoint>, bool), CniError> {
        let path = self.path(container_id, ifname);
        Ok(match self.read(&path)? {
            Some(Ok(ep)) => (Some(ep), false),
            Some(Err(e)) => {
                tracing::warn!(error = %corrupt(&path, e).msg, "DEL goes on without the endpoint record");
                (None, true)
            }
            None => (None, false),
        })
    }

    fn read(&self, path: &Path) -> Result<Option<Result<Endpoint, serde_json::Error>>, CniError> {
        match std::fs::read(path) {
            Ok(b) => Ok(Some(serde_json::from_slice(&b))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io("reading", path, e)),
        }
    }

    /// Idempotent.
    pub fn remove(&self, container_id: &str, ifname: &str) -> Result<(), CniError> {
        let path = self.path(container_id, ifname);
        // A write that died half-way may have left its temporary file.
        let _ = std::fs::remove_file(path.with_extension("json.tmp"));
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
            role: Role::Main,
            link_kind: Some(LinkKind::Macvlan),
            parent_ifindex: None,
            host_ifname: None,
            datapath: Some(Attached::Tcx),
            promote_to_tcx: false,
            host_path: None,
            pod: Some(PodRef {
                namespace: "shop".into(),
                name: "web-0".into(),
                uid: None,
            }),
            state: EndpointState::Ready,
            created: 1,
        };
        assert_eq!(s.get("abc", "eth0").unwrap(), None);
        s.put(&ep).unwrap();
        assert_eq!(s.get("abc", "eth0").unwrap(), Some(ep.clone()));
        // Replaced (exchanged with the new one, the old unlinked).
        let mut ep = ep;
        ep.ifindex = 3;
        s.put(&ep).unwrap();
        assert_eq!(s.get("abc", "eth0").unwrap(), Some(ep.clone()));
        assert_eq!(std::fs::read_dir(s.dir()).unwrap().count(), 1, "only the record");
        assert_eq!(s.list().unwrap(), vec![ep]);
        // What a write that died between exchange and unlink leaves goes too.
        std::fs::write(s.dir().join("abc:eth0.json.tmp"), b"{}").unwrap();
        s.remove("abc", "eth0").unwrap();
        s.remove("abc", "eth0").unwrap();
        assert!(s.list().unwrap().is_empty());
        assert!(
            std::fs::read_dir(s.dir()).unwrap().next().is_none(),
            "no temp files left"
        );
    }

    #[test]
    fn the_pod_comes_from_both_kubernetes_args_or_not_at_all() {
        let args = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let full = PodRef::from_args(&args(&[
            ("IgnoreUnknown", "1"),
            ("K8S_POD_NAMESPACE", "shop"),
            ("K8S_POD_NAME", "web-0"),
            ("K8S_POD_UID", "u-1"),
        ]))
        .unwrap();
        assert_eq!((full.namespace.as_str(), full.name.as_str()), ("shop", "web-0"));
        assert_eq!(full.uid.as_deref(), Some("u-1"));
        assert_eq!(PodRef::from_args(&args(&[("K8S_POD_NAME", "web-0")])), None);
        assert_eq!(
            PodRef::from_args(&args(&[("K8S_POD_NAMESPACE", ""), ("K8S_POD_NAME", "web-0")])),
            None
        );
    }

    #[test]
    fn records_spell_their_kinds_in_lowercase() {
        let ep = serde_json::json!({"network": "n", "containerId": "c", "ifname": "eth0", "netns": "/x",
            "ifindex": 2, "mac": "", "ips": [], "role": "chained", "linkKind": "vlan", "datapath": "tc", "created": 1});
        let ep: Endpoint = serde_json::from_value(ep).unwrap();
        assert_eq!(
            (ep.role, ep.link_kind, ep.datapath),
            (Role::Chained, Some(LinkKind::Unknown), Some(Attached::Tc))
        );
        let back = serde_json::to_value(Endpoint {
            link_kind: Some(LinkKind::Eni),
            ..ep
        })
        .unwrap();
        assert_eq!(
            (back["role"].as_str(), back["linkKind"].as_str()),
            (Some("chained"), Some("eni"))
        );
    }
}
