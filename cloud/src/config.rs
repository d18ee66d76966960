//! The pool's configuration file (`sluice-agent --eni-pool FILE`, JSON).
//! Targets follow the AWS VPC CNI's: `warmIpTarget` free addresses kept
//! ready, never fewer than `minimumIpTarget` in all, and with prefix
//! delegation `warmPrefixTarget` whole free /28s.

use crate::ec2::Ec2Config;
use crate::limits::Limits;
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    #[default]
    Ipv4,
    Ipv6,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CloudKind {
    Ec2,
}

/// Where the CNI plugin's lease store of the pool's network is: its
/// `ipam.dataDir` and the network's name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IpamStore {
    #[serde(default = "default_ipam_dir")]
    pub data_dir: PathBuf,
    pub network: String,
}

fn default_ipam_dir() -> PathBuf {
    PathBuf::from(sluice_ipam::config::DEFAULT_DATA_DIR)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolConfig {
    pub cloud: CloudKind,
    #[serde(default)]
    pub ec2: Ec2Config,
    /// Tagged on everything the pool creates, with the node's instance id.
    pub cluster: String,
    /// The node file the CNI plugin's `eniPool` reads.
    #[serde(default = "default_node_file")]
    pub node_file: PathBuf,
    pub ipam: IpamStore,
    #[serde(default)]
    pub family: Family,
    #[serde(default)]
    pub prefix_delegation: bool,
    pub warm_ip_target: Option<u32>,
    pub minimum_ip_target: Option<u32>,
    pub warm_prefix_target: Option<u32>,
    /// Subnets new ENIs go in, the first with room first. Default: the
    /// subnet of the instance's primary ENI.
    #[serde(default)]
    pub subnets: Vec<String>,
    /// Default: the primary ENI's.
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// Hand out the primary ENI's secondary addresses too (the AWS VPC
    /// CNI's way). Default: pods only on ENIs of their own (Terway's).
    #[serde(default)]
    pub use_primary_eni: bool,
    /// At most this many ENIs, the primary included (below the type's).
    pub max_enis: Option<u32>,
    /// For an instance type the built-in table lacks.
    pub limits: Option<Limits>,
    /// How long the pool must hold more than its target before the surplus
    /// goes back to the cloud.
    #[serde(default = "default_release_after")]
    pub release_after_seconds: f64,
    /// How often the cloud's view is read again (leaked ENIs collected).
    #[serde(default = "default_resync")]
    pub resync_seconds: f64,
    /// How often the leases are looked at.
    #[serde(default = "default_poll")]
    pub poll_seconds: f64,
}

fn default_node_file() -> PathBuf {
    PathBuf::from(sluice_ipam::eni::DEFAULT_NODE_FILE)
}
fn default_release_after() -> f64 {
    60.0
}
fn default_resync() -> f64 {
    60.0
}
fn default_poll() -> f64 {
    1.0
}

/// The default warm target without any target configured.
pub const DEFAULT_WARM_IPS: u32 = 8;

impl PoolConfig {
    pub fn load(path: &Path) -> Result<PoolConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
        let cfg: PoolConfig =
            serde_json::from_str(&text).map_err(|e| format!("ENI pool configuration {}: {e}", path.display()))?;
        cfg.validate()
            .map_err(|e| format!("ENI pool configuration {}: {e}", path.display()))?;
        Ok(cfg)
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.cluster.trim().is_empty() {
            return Err("\"cluster\" is empty: it tags what the pool creates".into());
        }
        if self.prefix_delegation && self.family == Family::Ipv6 {
            return Err("prefixDelegation is for IPv4 /28 prefixes; an IPv6 pool hands out addresses".into());
        }
        if self.warm_prefix_target.is_some() && !self.prefix_delegation {
            return Err("warmPrefixTarget needs prefixDelegation".into());
        }
        for (name, v) in [
            ("releaseAfterSeconds", self.release_after_seconds),
            ("resyncSeconds", self.resync_seconds),
            ("pollSeconds", self.poll_seconds),
        ] {
            if !(v.is_finite() && (0.0..=86_400.0).contains(&v)) {
                return Err(format!("{name} {v} is not between 0 and 86400"));
            }
        }
        if self.poll_seconds < 0.05 {
            return Err("pollSeconds below 0.05 would spin".into());
        }
        if let Some(l) = &self.limits
            && (l.enis == 0 || l.ipv4_per_eni == 0)
        {
            return Err("limits: enis and ipv4PerEni must be at least 1".into());
        }
        Ok(())
    }

    pub fn release_after(&self) -> Duration {
        Duration::from_secs_f64(self.release_after_seconds)
    }
    pub fn resync(&self) -> Duration {
        Duration::from_secs_f64(self.resync_seconds)
    }
    pub fn poll(&self) -> Duration {
        Duration::from_secs_f64(self.poll_seconds)
    }

    /// Addresses the pool should hold with `in_use` leased, and whole free
    /// prefixes with `prefixes_in_use` prefixes holding a lease.
    pub fn target(&self, in_use: u32, prefixes_in_use: u32) -> u32 {
        let minimum = self.minimum_ip_target.unwrap_or(0);
        if self.prefix_delegation {
            let by_ips = match self.warm_ip_target {
                Some(w) => (in_use + w).max(minimum).div_ceil(16),
                None => minimum.div_ceil(16),
            };
            let by_prefixes = match (self.warm_prefix_target, self.warm_ip_target) {
                (Some(w), _) => prefixes_in_use + w,
                (None, Some(_)) => 0,
                (None, None) => prefixes_in_use + 1,
            };
            return by_ips.max(by_prefixes).max(in_use.div_ceil(16)) * 16;
        }
        let warm = match (self.warm_ip_target, self.minimum_ip_target) {
            (Some(w), _) => w,
            (None, Some(_)) => 0,
            (None, None) => DEFAULT_WARM_IPS,
        };
        (in_use + warm).max(minimum)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn cfg(v: serde_json::Value) -> Result<PoolConfig, String> {
        let mut base = json!({"cloud": "ec2", "cluster": "c1", "ipam": {"network": "n"}});
        for (k, x) in v.as_object().unwrap() {
            base[k] = x.clone();
        }
        let c: PoolConfig = serde_json::from_value(base).map_err(|e| e.to_string())?;
        c.validate().map(|_| c)
    }

    #[test]
    fn targets_like_the_aws_vpc_cni() {
        let c = cfg(json!({"warmIpTarget": 5, "minimumIpTarget": 20})).unwrap();
        assert_eq!(c.target(0, 0), 20, "the minimum first");
        assert_eq!(c.target(18, 0), 23, "then warm addresses above what is used");
        let c = cfg(json!({})).unwrap();
        assert_eq!(c.target(3, 0), 3 + DEFAULT_WARM_IPS);
        let c = cfg(json!({"minimumIpTarget": 10})).unwrap();
        assert_eq!(c.target(12, 0), 12, "a minimum alone keeps no warm addresses above it");
        let c = cfg(json!({"prefixDelegation": true, "warmPrefixTarget": 1})).unwrap();
        assert_eq!(c.target(0, 0), 16);
        assert_eq!(c.target(17, 2), 48, "two prefixes in use and one free");
        let c = cfg(json!({"prefixDelegation": true, "warmIpTarget": 5})).unwrap();
        assert_eq!(c.target(14, 1), 32, "19 addresses round up to two prefixes");
    }

    #[test]
    fn bad_configurations_say_what() {
        for (v, want) in [
            (json!({"cluster": " "}), "cluster"),
            (json!({"family": "ipv6", "prefixDelegation": true}), "prefixDelegation"),
            (json!({"warmPrefixTarget": 1}), "needs prefixDelegation"),
            (json!({"pollSeconds": 0.0}), "spin"),
            (json!({"releaseAfterSeconds": -1.0}), "releaseAfterSeconds"),
            (json!({"warmIPTarget": 3}), "unknown field"),
            (json!({"cloud": "gcp"}), "unknown variant"),
        ] {
            let e = cfg(v).unwrap_err();
            assert!(e.contains(want), "{e} should say {want}");
        }
    }
}
