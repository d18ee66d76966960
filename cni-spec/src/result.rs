//! The ADD result, in the 1.x shape, with conversion to and from 0.3.x/0.4.0.
//!
//! Unknown fields at every level are kept in `extra` and written back, so a
//! chained plugin passes on what the plugins before it said, even fields this
//! version of sluice has never heard of.

use crate::error::{CniError, ErrorCode};
use crate::version::{Version, check_supported};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::net::IpAddr;

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CniResult {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<Interface>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ips: Vec<IpConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub routes: Vec<Route>,
    #[serde(default, skip_serializing_if = "Dns::is_empty")]
    pub dns: Dns,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// The netns path for interfaces inside the container; empty for host-side ones.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with its prefix length, e.g. `10.244.1.5/16`.
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty() && self.domain.is_empty() && self.search.is_empty() && self.options.is_empty()
    }
}

impl CniResult {
    /// Parse a result of any supported version (a `prevResult`, or the output
    /// of a delegated IPAM plugin) into the 1.x shape.
    pub fn from_value(v: Value) -> Result<CniResult, CniError> {
        let mut r: CniResult = serde_json::from_value(v)
            .map_err(|e| CniError::new(ErrorCode::Decode, format!("cannot decode CNI result: {e}")))?;
        if !r.cni_version.is_empty() {
            check_supported(&r.cni_version)?;
        }
        // 0.3.x/0.4.0 tag each IP with its family; 1.x derives it from the address.
        for ip in &mut r.ips {
            ip.extra.remove("version");
        }
        Ok(r)
    }

    /// Render for the version the runtime asked for.
    pub fn to_value(&self, version: &str) -> Result<Value, CniError> {
        let ver = check_supported(version)?;
        let mut out = self.clone();
        out.cni_version = version.to_string();
        let mut v = serde_json::to_value(&out).expect("result serializes");
        if !ver.is_v1() {
            downgrade_ips(&mut v, ver);
        }
        if ver < Version(1, 1, 0) {
            drop_v110_fields(&mut v);
        }
        Ok(v)
    }

    /// Index of the interface named `name` inside `sandbox` (any sandbox if empty).
    pub fn interface_index(&self, name: &str) -> Option<usize> {
        self.interfaces
            .iter()
            .position(|i| i.name == name && !i.sandbox.is_empty())
    }
}

/// A result carries only its version's fields: an interface's `mtu` and a
/// route's `mtu`, `advmss`, `priority`, `table` and `scope` came with
/// 1.1.0. (`pciID` and `socketPath` stay: device plugins set them before
/// the spec named them.)
fn drop_v110_fields(v: &mut Value) {
    let strip = |list: Option<&mut Value>, fields: &[&str]| {
        for item in list.and_then(Value::as_array_mut).into_iter().flatten() {
            if let Some(o) = item.as_object_mut() {
                for f in fields {
                    o.remove(*f);
                }
            }
        }
    };
    strip(v.get_mut("interfaces"), &["mtu"]);
    strip(v.get_mut("routes"), &["mtu", "advmss", "priority", "table", "scope"]);
}

fn downgrade_ips(v: &mut Value, _ver: Version) {
    if let Some(ips) = v.get_mut("ips").and_then(Value::as_array_mut) {
        for ip in ips {
            let family = match ip.get("address").and_then(Value::as_str) {
                Some(a) if a.contains(':') => "6",
                _ => "4",
            };
            ip["version"] = family.into();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn v040_result_converts_up_and_back() {
        let v = json!({
            "cniVersion": "0.4.0",
            "interfaces": [{"name": "eth0", "mac": "aa:bb:cc:dd:ee:ff", "sandbox": "/var/run/netns/x"}],
            "ips": [{"version": "4", "address": "10.244.1.5/16", "gateway": "10.244.0.1", "interface": 0},
                    {"version": "6", "address": "fd00::5/64", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {"nameservers": ["10.96.0.10"]}
        });
        let r = CniResult::from_value(v).unwrap();
        assert_eq!(r.ips[0].address.to_string(), "10.244.1.5/16");
        assert!(r.ips[0].extra.is_empty(), "version tag dropped in 1.x shape");
        let v1 = r.to_value("1.1.0").unwrap();
        assert!(v1["ips"][0].get("version").is_none());
        assert_eq!(v1["cniVersion"], "1.1.0");
        let v04 = r.to_value("0.4.0").unwrap();
        assert_eq!(v04["ips"][0]["version"], "4");
        assert_eq!(v04["ips"][1]["version"], "6");
    }

    #[test]
    fn unknown_fields_survive() {
        let v = json!({
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": "/x", "pciID": "0000:00:01.0", "vendorThing": 1}],
            "ips": [{"address": "10.0.0.2/24", "note": "kept"}],
            "topLevelExtension": {"a": [1, 2]}
        });
        let r = CniResult::from_value(v).unwrap();
        let out = r.to_value("1.0.0").unwrap();
        assert_eq!(out["interfaces"][0]["pciID"], "0000:00:01.0");
        assert_eq!(out["interfaces"][0]["vendorThing"], 1);
        assert_eq!(out["ips"][0]["note"], "kept");
        assert_eq!(out["topLevelExtension"]["a"][1], 2);
    }

    #[test]
    fn fields_of_a_later_version_are_left_out() {
        let r = CniResult::from_value(json!({
            "cniVersion": "1.1.0",
            "interfaces": [{"name": "eth0", "sandbox": "/x", "mtu": 1500}],
            "ips": [{"address": "10.0.0.2/24"}],
            "routes": [{"dst": "0.0.0.0/0", "mtu": 1400, "priority": 5}]
        }))
        .unwrap();
        for old in ["0.3.1", "0.4.0", "1.0.0"] {
            let v = r.to_value(old).unwrap();
            assert!(v["interfaces"][0].get("mtu").is_none(), "{old}: {v}");
            assert!(
                v["routes"][0].get("mtu").is_none() && v["routes"][0].get("priority").is_none(),
                "{old}"
            );
        }
        let v = r.to_value("1.1.0").unwrap();
        assert_eq!(
            (v["interfaces"][0]["mtu"].as_u64(), v["routes"][0]["priority"].as_u64()),
            (Some(1500), Some(5))
        );
    }

    #[test]
    fn bad_results_are_decode_errors() {
        assert_eq!(
            CniResult::from_value(json!({"ips": [{"address": "nope"}]}))
                .unwrap_err()
                .code,
            6
        );
        assert_eq!(
            CniResult::from_value(json!({"cniVersion": "0.1.0"})).unwrap_err().code,
            1
        );
    }
}
