//! The sluice network config (one entry of a conflist).

use crate::endpoint::LinkKind;
use serde::Deserialize;
use serde_json::Value;
use sluice_cni_spec::{CniError, Dns, ErrorCode};
use sluice_tc_datapath::config::DatapathConfig;
use std::path::PathBuf;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/sluice";

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PluginConfig {
    pub cni_version: String,
    pub name: String,
    /// Present: main role, sluice creates the pod interface. Absent: chained
    /// role, the interface comes from the plugin before us (`prevResult`).
    #[serde(default)]
    pub link: Option<LinkConfig>,
    /// Kept raw: its `type` decides between the built-in allocator and a
    /// delegated plugin, and a delegated plugin gets it untouched.
    #[serde(default)]
    pub ipam: Option<Value>,
    #[serde(default)]
    pub dns: Option<Dns>,
    #[serde(default)]
    pub prev_result: Option<Value>,
    /// Endpoint records live here (default /var/lib/sluice).
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// Log destination; stderr when unset. Never stdout: stdout is the result.
    #[serde(default)]
    pub log_file: Option<PathBuf>,
    #[serde(default)]
    pub log_level: Option<String>,
    /// The eBPF datapath on the pod interface (on unless disabled): its
    /// settings are the datapath crate's own type.
    #[serde(default)]
    pub datapath: DatapathConfig,
    /// The node's way to its pods and theirs to it, through a host-side
    /// child of the parent (macvlan bridge, ipvlan L2/L3): see host_path.rs.
    /// On unless false.
    #[serde(default = "on")]
    pub host_path: bool,
    /// Addresses pods reach through their node (a node-local DNS cache at
    /// 169.254.20.10/32): routed in the pod through the host path.
    #[serde(default)]
    pub host_stack_cidrs: Vec<ipnetwork::IpNetwork>,
    /// What the runtime passes for the capabilities the conflist declares:
    /// `portMappings` become hostPorts (host_port.rs).
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    /// A pod's policy before the agent has seen it (policy_hold.rs).
    #[serde(default)]
    pub policy_at_start: PolicyAtStart,
}

/// Where the agent lists the namespaces that hold a NetworkPolicy
/// (`sluice-agent --policy-namespaces-file`).
pub const DEFAULT_POLICY_NAMESPACES_FILE: &str = "/run/sluice/policy-namespaces.json";

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct PolicyAtStart {
    pub mode: HoldMode,
    /// The namespaces the agent lists as holding a NetworkPolicy.
    pub namespaces_file: PathBuf,
}

impl Default for PolicyAtStart {
    fn default() -> Self {
        PolicyAtStart {
            mode: HoldMode::Strict,
            namespaces_file: PathBuf::from(DEFAULT_POLICY_NAMESPACES_FILE),
        }
    }
}

/// strict: a pod some policy may select is held (node only) from ADD until
/// the agent writes its policy. permissive: unrestricted until then.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldMode {
    #[default]
    Strict,
    Permissive,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
}

/// One of the runtime's `portMappings` (a container's hostPort), as the
/// portmap plugin takes it. Checked by host_port.rs, so that a bad one is
/// named in the error.
///
/// containerd 1.6 (go-cni) sends the Go field names (`HostPort`,
/// `ContainerPort`, `Protocol`, `HostIP`): its struct has no JSON tags,
/// and the reference plugins read it anyway because Go's JSON matches
/// field names without regard to case. Both spellings are taken here.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    #[serde(alias = "HostPort")]
    pub host_port: i64,
    #[serde(alias = "ContainerPort")]
    pub container_port: i64,
    #[serde(default, alias = "Protocol")]
    pub protocol: Option<String>,
    #[serde(default, rename = "hostIP", alias = "HostIP", alias = "hostIp")]
    pub host_ip: Option<String>,
}

fn on() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum LinkConfig {
    Macvlan(MacvlanConfig),
    Ipvlan(IpvlanConfig),
    /// A whole host interface (an ENI) moved into the pod.
    Eni(EniConfig),
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct MacvlanConfig {
    /// The node's uplink (ENI) the pod interface hangs off. May be left out
    /// when IPAM is an ENI pool: the pod then goes on its address's ENI.
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub mode: MacvlanMode,
    #[serde(default)]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MacvlanMode {
    #[default]
    Bridge,
    Private,
    Vepa,
    Passthru,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct IpvlanConfig {
    /// As for macvlan.
    #[serde(default)]
    pub parent: Option<String>,
    #[serde(default)]
    pub mode: IpvlanMode,
    #[serde(default)]
    pub mtu: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpvlanMode {
    #[default]
    L2,
    L3,
    L3s,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct EniConfig {
    /// The host interface, by name ...
    #[serde(default)]
    pub device: Option<String>,
    /// ... or by MAC address (stable across renames).
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
}

impl LinkConfig {
    pub fn kind(&self) -> LinkKind {
        match self {
            LinkConfig::Macvlan(_) => LinkKind::Macvlan,
            LinkConfig::Ipvlan(_) => LinkKind::Ipvlan,
            LinkConfig::Eni(_) => LinkKind::Eni,
        }
    }

    /// The configured parent of a macvlan/ipvlan pod interface.
    pub fn parent(&self) -> Option<&str> {
        match self {
            LinkConfig::Macvlan(c) => c.parent.as_deref(),
            LinkConfig::Ipvlan(c) => c.parent.as_deref(),
            LinkConfig::Eni(_) => None,
        }
    }

    pub fn mtu(&self) -> Option<u32> {
        match self {
            LinkConfig::Macvlan(c) => c.mtu,
            LinkConfig::Ipvlan(c) => c.mtu,
            LinkConfig::Eni(c) => c.mtu,
        }
    }
}

impl PluginConfig {
    pub fn parse(bytes: &[u8]) -> Result<PluginConfig, CniError> {
        let c: PluginConfig = serde_json::from_slice(bytes)
            .map_err(|e| CniError::new(ErrorCode::InvalidConfig, format!("invalid sluice config: {e}")))?;
        c.validate()?;
        Ok(c)
    }

    fn validate(&self) -> Result<(), CniError> {
        let bad = |m: String| Err(CniError::new(ErrorCode::InvalidConfig, m));
        match &self.link {
            Some(l @ (LinkConfig::Macvlan(_) | LinkConfig::Ipvlan(_))) => match l.parent() {
                Some("") => return bad("link.parent must name the node interface to attach to".into()),
                None if !self.uses_eni_pool() => {
                    return bad(
                        "link.parent must name the node interface to attach to (it may be left out only with \
                         a sluice-ipam \"eniPool\", which names the ENI per pod)"
                            .into(),
                    );
                }
                _ => {}
            },
            Some(LinkConfig::Eni(e)) => match (&e.device, &e.mac) {
                (None, None) => return bad("link.kind eni needs \"device\" or \"mac\"".into()),
                (Some(_), Some(_)) => {
                    return bad("link.kind eni takes \"device\" or \"mac\", not both".into());
                }
                (None, Some(m)) if crate::netlink::parse_mac(m).is_none() => {
                    return bad(format!("link.mac {m:?} is not a MAC address"));
                }
                _ => {}
            },
            _ => {}
        }
        if let Some(mtu) = self.link.as_ref().and_then(LinkConfig::mtu)
            && !(68..=65535).contains(&mtu)
        {
            return bad(format!("link.mtu {mtu} is outside 68..=65535"));
        }
        let host_path = self.host_path && self.link.as_ref().is_some_and(crate::host_path::wanted);
        if !self.host_stack_cidrs.is_empty() && !host_path {
            return bad(
                "hostStackCidrs are reached through the host path: they need the main role with macvlan \
                 (bridge mode) or ipvlan l2/l3, and hostPath on"
                    .into(),
            );
        }
        if self.link.is_some() && self.ipam.is_none() {
            return bad("the main role (\"link\" set) needs an \"ipam\" section".into());
        }
        if self.datapath.enabled {
            // Shown in the kernel-matrix VM: pod to pod works, a Service
            // does not (no reverse NAT on the reply).
            if let Some(LinkConfig::Ipvlan(IpvlanConfig {
                mode: IpvlanMode::L3s, ..
            })) = &self.link
            {
                return bad(
                    "link.mode l3s: ipvlan L3S hands a pod's incoming packets to it from the parent's IP \
                            layer, past the pod interface's tc ingress hook, so the datapath's reverse NAT and \
                            ingress policy would not run; use l2 or l3 (or datapath.enabled false)"
                        .into(),
                );
            }
            if let Err(e) = self.datapath.validate() {
                return bad(e.to_string());
            }
        }
        for (what, dir) in [("dataDir", &self.data_dir), ("logFile", &self.log_file)] {
            if let Some(d) = dir
                && !d.is_absolute()
            {
                return bad(format!("{what} {} must be an absolute path", d.display()));
            }
        }
        if let Some(ipam) = &self.ipam {
            let t = ipam.get("type").and_then(Value::as_str).unwrap_or("");
            if t.is_empty() {
                return bad("ipam.type is missing".into());
            }
        }
        Ok(())
    }

    /// In-process IPAM drawing from the node's ENIs: it decides the parent per pod.
    pub fn uses_eni_pool(&self) -> bool {
        self.ipam.as_ref().is_some_and(|i| {
            i.get("type").and_then(Value::as_str) == Some(crate::ipam::BUILTIN_TYPE) && i.get("eniPool").is_some()
        })
    }

    pub fn data_dir(&self) -> PathBuf {
        self.data_dir.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn parse(v: Value) -> Result<PluginConfig, CniError> {
        PluginConfig::parse(&serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn port_mappings_in_either_runtime_spelling() {
        // containerd 1.6 (go-cni, Go field names) and CRI-O / the CNI spec's
        // conventions document (camelCase).
        for m in [
            json!({"HostPort": 30088, "ContainerPort": 8080, "Protocol": "tcp", "HostIP": ""}),
            json!({"hostPort": 30088, "containerPort": 8080, "protocol": "tcp", "hostIP": ""}),
        ] {
            let c = parse(
                json!({"cniVersion": "1.0.0", "name": "n", "type": "sluice", "prevResult": {},
                "runtimeConfig": {"portMappings": [m]}}),
            )
            .unwrap();
            let got = &c.runtime_config.port_mappings[0];
            assert_eq!((got.host_port, got.container_port), (30088, 8080));
            assert_eq!(got.protocol.as_deref(), Some("tcp"));
        }
    }

    #[test]
    fn main_and_chained_forms() {
        let c = parse(json!({"cniVersion": "1.1.0", "name": "n", "type": "sluice",
            "link": {"kind": "ipvlan", "parent": "eth1", "mode": "l3"}, "ipam": {"type": "sluice-ipam"}}))
        .unwrap();
        assert_eq!(
            c.link.unwrap(),
            LinkConfig::Ipvlan(IpvlanConfig {
                parent: Some("eth1".into()),
                mode: IpvlanMode::L3,
                mtu: None
            })
        );
        let c = parse(json!({"cniVersion": "1.1.0", "name": "n", "type": "sluice",
            "link": {"kind": "macvlan"}, "ipam": {"type": "sluice-ipam", "eniPool": {"backend": "file"}}}))
        .unwrap();
        assert!(c.uses_eni_pool() && c.link.unwrap().parent().is_none());
        let c = parse(json!({"cniVersion": "1.1.0", "name": "n", "type": "sluice", "prevResult": {}})).unwrap();
        assert!(c.link.is_none());
    }

    #[test]
    fn invalid_forms_are_code_7() {
        for v in [
            json!({"cniVersion": "1.1.0", "name": "n", "link": {"kind": "bridge", "parent": "x"}, "ipam": {"type": "a"}}),
            json!({"cniVersion": "1.1.0", "name": "n", "link": {"kind": "macvlan", "parent": ""}, "ipam": {"type": "a"}}),
            json!({"cniVersion": "1.1.0", "name": "n", "link": {"kind": "macvlan", "parent": "e", "mode": "weird"}, "ipam": {"type": "a"}}),
            json!({"cniVersion": "1.1.0", "name": "n", "link": {"kind": "macvlan", "parent": "e", "mtu": 10}, "ipam": {"type": "a"}}),
            json!({"cniVersion": "1.1.0", "name": "n", "link": {"kind": "macvlan", "parent": "e"}}),
            json!({"cniVersion": "1.1.0", "name": "n", "link": {"kind": "eni"}, "ipam": {"type": "a"}}),
            json!({"cniVersion": "1.1.0", "name": "n", "link": {"kind": "eni", "mac": "nope"}, "ipam": {"type": "a"}}),
            json!({"cniVersion": "1.1.0", "name": "n", "link": {"kind": "macvlan", "parent": "e"}, "ipam": {}}),
            json!({"cniVersion": "1.1.0", "name": "n", "link": {"kind": "macvlan"}, "ipam": {"type": "sluice-ipam"}}),
            json!({"cniVersion": "1.1.0", "name": "n", "link": {"kind": "ipvlan"}, "ipam": {"type": "host-local", "eniPool": {}}}),
            json!({"cniVersion": "1.1.0", "name": "n", "link": {"kind": "ipvlan", "parent": "e", "mode": "l3s"}, "ipam": {"type": "a"}}),
            json!({"cniVersion": "1.1.0", "name": "n", "prevResult": {}, "datapath": {"maglevTableSize": 1000}}),
            json!({"cniVersion": "1.1.0", "name": "n", "prevResult": {}, "datapath": {"ctTimeouts": {"udp": 0}}}),
            json!({"cniVersion": "1.1.0", "name": "n", "prevResult": {}, "datapath": {"bpfs": "/x"}}),
            json!({"cniVersion": "1.1.0", "name": "n", "prevResult": {}, "datapath": {"bpffs": "rel/x"}}),
            json!({"cniVersion": "1.1.0", "name": "n", "prevResult": {}, "datapath": {"attach": "xdp"}}),
            json!({"cniVersion": "1.1.0", "name": "n", "prevResult": {}, "datapath": {"bpffs": "/sys/fs/bpf/x/../.."}}),
            json!({"cniVersion": "1.1.0", "name": "n", "prevResult": {}, "datapath": {"ctTimeouts": {"tcpEstablished": 99999999999u64}}}),
            json!({"cniVersion": "1.1.0", "name": "n", "prevResult": {}, "dataDir": "var/lib/sluice"}),
            json!({"cniVersion": "1.1.0", "name": "n", "prevResult": {}, "logFile": "sluice.log"}),
        ] {
            let e = parse(v.clone()).unwrap_err();
            assert_eq!(e.code, 7, "{v}");
            assert!(!e.msg.contains("  "), "a message with a run of spaces: {:?}", e.msg);
        }
    }
}
