//! ENI address pools (Terway-style): a pod's address is a secondary IP of one
//! of the node's ENIs, and the pod interface must hang off that ENI, because
//! the VPC delivers the address only there.
//!
//! Where the addresses come from is a [`EniBackend`]. The embedded default is
//! a node file written by whoever attaches ENIs to the node (an operator, a
//! cloud-init script, later the agent); a backend that asks the cloud API for
//! more addresses when the pool runs low can implement the same trait.

use crate::error::IpamError;
use crate::range::to_u128;
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

pub const DEFAULT_NODE_FILE: &str = "/etc/sluice/eni-pool.json";

/// How an ENI is recognised on the node: by interface name, MAC, or both.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EniId {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl EniId {
    /// Stable key for per-ENI bookkeeping: the MAC when known (it survives a
    /// rename), else the name.
    pub fn key(&self) -> String {
        match (&self.mac, &self.name) {
            (Some(m), _) => m.to_ascii_lowercase(),
            (None, Some(n)) => n.clone(),
            (None, None) => String::new(),
        }
    }

    /// Two descriptions name the same ENI if any identifier they share matches.
    pub fn same(&self, other: &EniId) -> bool {
        let mac = match (&self.mac, &other.mac) {
            (Some(a), Some(b)) => Some(a.eq_ignore_ascii_case(b)),
            _ => None,
        };
        let name = match (&self.name, &other.name) {
            (Some(a), Some(b)) => Some(a == b),
            _ => None,
        };
        match (mac, name) {
            (Some(m), _) => m,
            (None, Some(n)) => n,
            (None, None) => false,
        }
    }

    pub fn describe(&self) -> String {
        match (&self.name, &self.mac) {
            (Some(n), Some(m)) => format!("{n} ({m})"),
            (Some(n), None) => n.clone(),
            (None, Some(m)) => m.clone(),
            (None, None) => "?".into(),
        }
    }
}

/// One ENI of the node and the secondary addresses the pool may hand out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Eni {
    #[serde(flatten)]
    pub id: EniId,
    /// The VPC subnet (vSwitch) the ENI sits in; pods get its prefix length.
    pub subnet: IpNetwork,
    /// Default: the first address of the subnet, the VPC router by convention.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Secondary addresses assigned to the ENI by the cloud, free for pods.
    pub ips: Vec<IpAddr>,
}

impl Eni {
    pub fn gateway(&self) -> IpAddr {
        self.gateway.unwrap_or_else(|| {
            let first = to_u128(self.subnet.network()) + 1;
            match self.subnet {
                IpNetwork::V4(_) => IpAddr::V4((first as u32).into()),
                IpNetwork::V6(_) => IpAddr::V6(first.into()),
            }
        })
    }
}

/// The node file: `{"enis": [ {name|mac, subnet, gateway?, ips}, … ]}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEnis {
    pub enis: Vec<Eni>,
    /// Written by the agent's ENI pool while it is below its target and the
    /// cloud gives no more (the subnet is out of addresses, the instance
    /// out of ENI slots): why, for STATUS to say when nothing is free.
    #[serde(default, rename = "cannotGrow", skip_serializing_if = "Option::is_none")]
    pub cannot_grow: Option<String>,
}

impl NodeEnis {
    /// Every rule a cloud would enforce, checked before anything is handed out:
    /// an ENI is named, its addresses are usable hosts of its subnet, and no
    /// address or ENI appears twice.
    pub fn validate(&self, origin: &str) -> Result<(), IpamError> {
        let bad = |msg: String| IpamError::InvalidConfig(format!("ENI pool {origin}: {msg}"));
        let mut owner_of: HashMap<IpAddr, String> = HashMap::new();
        for (i, eni) in self.enis.iter().enumerate() {
            if eni.id.name.is_none() && eni.id.mac.is_none() {
                return Err(bad(format!("ENI #{i} has neither \"name\" nor \"mac\"")));
            }
            if let Some(mac) = &eni.id.mac
                && !is_mac(mac)
            {
                return Err(bad(format!("ENI #{i}: {mac:?} is not a MAC address")));
            }
            let label = eni.id.describe();
            if let Some(dup) = self.enis[..i].iter().find(|o| o.id.same(&eni.id)) {
                return Err(bad(format!(
                    "ENI {label} is listed twice (also as {})",
                    dup.id.describe()
                )));
            }
            let subnet = eni.subnet;
            let gw = eni.gateway();
            if !subnet.contains(gw) {
                return Err(bad(format!("ENI {label}: gateway {gw} is outside {subnet}")));
            }
            let net = to_u128(subnet.network());
            let host_bits = if subnet.is_ipv6() { 128 } else { 32 } - subnet.prefix() as u32;
            let broadcast = net + ((1u128 << host_bits) - 1);
            for ip in &eni.ips {
                let v = to_u128(*ip);
                if ip.is_ipv6() != subnet.is_ipv6() || !subnet.contains(*ip) {
                    return Err(bad(format!("ENI {label}: {ip} is outside its subnet {subnet}")));
                }
                if v == net || (!subnet.is_ipv6() && v == broadcast) || *ip == gw {
                    return Err(bad(format!(
                        "ENI {label}: {ip} is the network, broadcast or gateway address of {subnet}"
                    )));
                }
                if let Some(other) = owner_of.insert(*ip, label.clone()) {
                    return Err(bad(format!("{ip} is listed on ENI {other} and on ENI {label}")));
                }
            }
        }
        Ok(())
    }
}

fn is_mac(s: &str) -> bool {
    let parts: Vec<&str> = s.split(':').collect();
    parts.len() == 6 && parts.iter().all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
}

/// Where an ENI pool's addresses come from. Read under the pool lock on every
/// allocation, so a change is seen by the next ADD without a restart.
pub trait EniBackend: Send + Sync {
    /// For error messages: which file or API this is.
    fn describe(&self) -> String;
    /// The ENIs and their addresses as of now, validated.
    fn enis(&self) -> Result<NodeEnis, IpamError>;
}

/// The embedded default: a JSON node file.
pub struct FileBackend {
    path: PathBuf,
}

impl FileBackend {
    pub fn new(path: impl Into<PathBuf>) -> FileBackend {
        FileBackend { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl EniBackend for FileBackend {
    fn describe(&self) -> String {
        format!("file {}", self.path.display())
    }

    fn enis(&self) -> Result<NodeEnis, IpamError> {
        let bytes = read_node_file(&self.path).map_err(|source| IpamError::NodeFile {
            path: self.path.clone(),
            source,
        })?;
        let enis: NodeEnis = serde_json::from_slice(&bytes).map_err(|e| {
            IpamError::InvalidConfig(format!("ENI pool {}: not a valid node file: {e}", self.describe()))
        })?;
        enis.validate(&self.describe())?;
        Ok(enis)
    }
}

/// The largest node file read: thousands of ENIs and addresses fit in it.
pub const MAX_NODE_FILE: u64 = 1 << 20;

/// The node file's bytes: a regular file (opened without blocking, so a
/// FIFO in its place cannot hang an ADD) of at most `MAX_NODE_FILE` bytes.
fn read_node_file(path: &std::path::Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    f.take(MAX_NODE_FILE + 1).read_to_end(&mut bytes)?;
    if bytes.len() as u64 > MAX_NODE_FILE {
        return Err(std::io::Error::other(format!("larger than {MAX_NODE_FILE} bytes")));
    }
    Ok(bytes)
}

/// The `ipam.eniPool` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "backend", rename_all = "lowercase")]
pub enum EniPoolConfig {
    File {
        #[serde(default = "default_node_file")]
        path: PathBuf,
    },
}

fn default_node_file() -> PathBuf {
    PathBuf::from(DEFAULT_NODE_FILE)
}

impl EniPoolConfig {
    pub fn backend(&self) -> Box<dyn EniBackend> {
        match self {
            EniPoolConfig::File { path } => Box::new(FileBackend::new(path)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(v: serde_json::Value) -> Result<NodeEnis, IpamError> {
        let n: NodeEnis = serde_json::from_value(v).unwrap();
        n.validate("test").map(|_| n)
    }

    #[test]
    fn valid_file_and_default_gateway() {
        let n = node(json!({"enis": [
            {"name": "eth1", "subnet": "172.31.16.0/20", "ips": ["172.31.16.10", "172.31.16.11"]},
            {"mac": "02:00:00:00:00:02", "subnet": "172.31.32.0/20", "gateway": "172.31.32.254", "ips": ["172.31.32.10"]}
        ]}))
        .unwrap();
        assert_eq!(n.enis[0].gateway().to_string(), "172.31.16.1");
        assert_eq!(n.enis[1].gateway().to_string(), "172.31.32.254");
        assert_eq!(n.enis[1].id.key(), "02:00:00:00:00:02");
    }

    #[test]
    fn every_bad_file_names_the_eni() {
        for (v, want) in [
            (json!({"enis": [{"subnet": "10.0.0.0/24", "ips": []}]}), "neither"),
            (
                json!({"enis": [{"name": "e", "subnet": "10.0.0.0/24", "ips": ["10.0.1.5"]}]}),
                "outside its subnet",
            ),
            (
                json!({"enis": [{"name": "e", "subnet": "10.0.0.0/24", "ips": ["10.0.0.1"]}]}),
                "gateway",
            ),
            (
                json!({"enis": [{"name": "e", "subnet": "10.0.0.0/24", "ips": ["10.0.0.255"]}]}),
                "broadcast",
            ),
            (
                json!({"enis": [
                    {"name": "a", "subnet": "10.0.0.0/24", "ips": ["10.0.0.5"]},
                    {"name": "b", "subnet": "10.0.0.0/24", "ips": ["10.0.0.5"]}]}),
                "on ENI a and on ENI b",
            ),
            (
                json!({"enis": [
                    {"name": "a", "mac": "02:00:00:00:00:01", "subnet": "10.0.0.0/24", "ips": []},
                    {"mac": "02:00:00:00:00:01", "subnet": "10.0.1.0/24", "ips": []}]}),
                "listed twice",
            ),
            (
                json!({"enis": [{"mac": "nope", "subnet": "10.0.0.0/24", "ips": []}]}),
                "not a MAC",
            ),
        ] {
            let e = node(v).unwrap_err().to_string();
            assert!(e.contains(want), "{e} should say {want}");
        }
    }

    #[test]
    fn identity_by_mac_beats_name() {
        let a = EniId {
            name: Some("eth1".into()),
            mac: Some("02:AA:00:00:00:01".into()),
        };
        let renamed = EniId {
            name: Some("eth9".into()),
            mac: Some("02:aa:00:00:00:01".into()),
        };
        let by_name = EniId {
            name: Some("eth1".into()),
            mac: None,
        };
        assert!(a.same(&renamed));
        assert!(a.same(&by_name));
        assert!(!renamed.same(&by_name));
    }
}
