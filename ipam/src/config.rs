//! The `ipam` section of a network config, in host-local's shape.

use crate::eni::EniPoolConfig;
use crate::error::IpamError;
use crate::range::{Range, RangeConfig};
use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

pub const DEFAULT_DATA_DIR: &str = "/var/lib/sluice/ipam";

#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct IpamConfig {
    #[serde(rename = "type", default)]
    pub ipam_type: String,
    /// Range sets: one address is allocated from each set (dual stack = two sets).
    #[serde(default)]
    pub ranges: Vec<Vec<RangeConfig>>,
    /// host-local's older single-range form.
    #[serde(default)]
    pub subnet: Option<IpNetwork>,
    #[serde(rename = "rangeStart", default)]
    pub range_start: Option<IpAddr>,
    #[serde(rename = "rangeEnd", default)]
    pub range_end: Option<IpAddr>,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(rename = "dataDir", default)]
    pub data_dir: Option<PathBuf>,
    /// Draw addresses from the node's ENIs instead of ranges (Terway-style).
    #[serde(rename = "eniPool", default)]
    pub eni_pool: Option<EniPoolConfig>,
    /// How long to wait for the pool lock before answering "try again later".
    #[serde(rename = "lockTimeoutMs", default)]
    pub lock_timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
pub struct RouteConfig {
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

impl IpamConfig {
    /// Validated range sets; ranges may not overlap, within or across sets.
    pub fn range_sets(&self) -> Result<Vec<Vec<Range>>, IpamError> {
        let mut raw = self.ranges.clone();
        if let Some(subnet) = self.subnet {
            raw.push(vec![RangeConfig {
                subnet,
                range_start: self.range_start,
                range_end: self.range_end,
                gateway: self.gateway,
            }]);
        }
        if raw.is_empty() || raw.iter().any(Vec::is_empty) {
            return Err(IpamError::InvalidConfig(
                "no ranges configured (need \"ranges\" or \"subnet\")".into(),
            ));
        }
        let sets: Vec<Vec<Range>> = raw
            .iter()
            .map(|set| set.iter().map(Range::new).collect::<Result<Vec<_>, _>>())
            .collect::<Result<_, _>>()?;
        let all: Vec<&Range> = sets.iter().flatten().collect();
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                if a.overlaps(b) {
                    return Err(IpamError::InvalidConfig(format!(
                        "ranges overlap: {} and {}",
                        a.describe(),
                        b.describe()
                    )));
                }
            }
        }
        Ok(sets)
    }
}

/// Addresses the runtime asked for, from the three places the conventions
/// allow: `args.cni.ips`, the `ips` capability (`runtimeConfig.ips`) and
/// `IP=` in CNI_ARGS (comma separated). Prefix lengths are ignored.
pub fn requested_ips(netconf: &Value, cni_args: &BTreeMap<String, String>) -> Result<Vec<IpAddr>, IpamError> {
    let mut out = Vec::new();
    let mut push = |s: &str, origin: &str| -> Result<(), IpamError> {
        let s = s.trim();
        // An address, or one with its prefix length (which is ignored):
        // anything else after a `/` is an error, not junk to drop.
        let ip = match s.split_once('/') {
            Some(_) => s.parse::<ipnetwork::IpNetwork>().ok().map(|n| n.ip()),
            None => s.parse::<IpAddr>().ok(),
        }
        .ok_or_else(|| {
            IpamError::InvalidConfig(format!("requested address {s:?} from {origin} is not an IP address"))
        })?;
        if !out.contains(&ip) {
            out.push(ip);
        }
        Ok(())
    };
    for (ptr, origin) in [
        ("/args/cni/ips", "args.cni.ips"),
        ("/runtimeConfig/ips", "runtimeConfig.ips"),
    ] {
        if let Some(list) = netconf.pointer(ptr) {
            let list = list
                .as_array()
                .ok_or_else(|| IpamError::InvalidConfig(format!("{origin} must be a list of addresses")))?;
            for v in list {
                let s = v
                    .as_str()
                    .ok_or_else(|| IpamError::InvalidConfig(format!("{origin} entries must be strings")))?;
                push(s, origin)?;
            }
        }
    }
    if let Some(ips) = cni_args.get("IP") {
        for s in ips.split(',').filter(|s| !s.is_empty()) {
            push(s, "CNI_ARGS IP")?;
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn legacy_and_list_forms() {
        let c: IpamConfig = serde_json::from_value(json!({
            "type": "sluice-ipam", "subnet": "10.1.0.0/24",
            "ranges": [[{"subnet": "fd00::/120"}]]
        }))
        .unwrap();
        assert_eq!(c.range_sets().unwrap().len(), 2);
    }

    #[test]
    fn overlap_is_refused() {
        let c: IpamConfig = serde_json::from_value(json!({
            "ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.0/25"}]]
        }))
        .unwrap();
        let e = c.range_sets().unwrap_err().to_string();
        assert!(e.contains("overlap"), "{e}");
        let empty: IpamConfig = serde_json::from_value(json!({"type": "x"})).unwrap();
        assert!(empty.range_sets().is_err());
    }

    #[test]
    fn requested_from_all_sources() {
        let conf = json!({"args": {"cni": {"ips": ["10.0.0.5"]}}, "runtimeConfig": {"ips": ["fd00::5/64"]}});
        let args = BTreeMap::from([("IP".to_string(), "10.0.0.6,10.0.0.5".to_string())]);
        let ips = requested_ips(&conf, &args).unwrap();
        assert_eq!(ips.len(), 3);
        assert!(requested_ips(&json!({"args": {"cni": {"ips": ["x"]}}}), &BTreeMap::new()).is_err());
        // A prefix length is taken (and ignored); anything else after `/` is not.
        let with = |v: &str| requested_ips(&json!({}), &BTreeMap::from([("IP".to_string(), v.to_string())]));
        assert_eq!(
            with("10.0.0.5/24").unwrap(),
            vec!["10.0.0.5".parse::<IpAddr>().unwrap()]
        );
        for junk in ["10.0.0.5/junk", "10.0.0.5/", "10.0.0.5/99", "fd00::1/x"] {
            assert!(with(junk).is_err(), "{junk}");
        }
    }
}
