//! Loading the object: configuration globals, optional pinning of every map
//! under a layout-versioned bpffs directory, and the verifier run of both
//! programs (once per node, never per pod).

use crate::OBJECT;
use crate::layout::LAYOUT_VERSION;
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("loading the eBPF object: {0}")]
    Object(#[from] aya::EbpfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("invalid datapath config: {0}")]
    Config(String),
}

/// Conntrack timeouts and algorithm parameters, fixed at load time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DatapathConfig {
    pub tcp_syn_timeout: Duration,
    pub tcp_established_timeout: Duration,
    pub tcp_closing_timeout: Duration,
    pub udp_timeout: Duration,
    /// Maglev table size per service: a prime (default 16381).
    pub maglev_table_size: u32,
    /// Drop pod packets whose source is not the pod's own address.
    pub source_check: bool,
    /// Report one new flow in this many on the event ring (0: none; drops
    /// are always reported).
    pub flow_sample: u32,
}

impl Default for DatapathConfig {
    fn default() -> Self {
        DatapathConfig {
            tcp_syn_timeout: Duration::from_secs(60),
            tcp_established_timeout: Duration::from_secs(6 * 3600),
            tcp_closing_timeout: Duration::from_secs(10),
            udp_timeout: Duration::from_secs(60),
            maglev_table_size: 16381,
            source_check: true,
            flow_sample: 0,
        }
    }
}

pub const EGRESS: &str = "sl_egress";
pub const INGRESS: &str = "sl_ingress";
pub const MAPS: [&str; 17] = [
    "sl_services",
    "sl_vip_filter",
    "sl_backends",
    "sl_revnat",
    "sl_maglev",
    "sl_affinity",
    "sl_ct",
    "sl_endpoints",
    "sl_ipcache",
    "sl_cidr",
    "sl_ep_policy",
    "sl_policy",
    "sl_policy_ranges",
    "sl_names",
    "sl_events",
    "sl_metrics",
    "sl_info",
];

/// The versioned directory under the bpffs root (e.g. /sys/fs/bpf/sluice):
/// a layout change gets fresh maps instead of misreading old ones.
pub fn versioned_dir(root: &Path) -> PathBuf {
    root.join(format!("v{LAYOUT_VERSION}"))
}

impl DatapathConfig {
    pub fn validate(&self) -> Result<(), LoadError> {
        if !is_prime(self.maglev_table_size) {
            return Err(LoadError::Config(format!(
                "maglev table size {} is not a prime",
                self.maglev_table_size
            )));
        }
        for (name, d) in [
            ("tcpSyn", self.tcp_syn_timeout),
            ("tcpEstablished", self.tcp_established_timeout),
            ("tcpClosing", self.tcp_closing_timeout),
            ("udp", self.udp_timeout),
        ] {
            if d.is_zero() {
                return Err(LoadError::Config(format!("conntrack timeout {name} must be positive")));
            }
        }
        Ok(())
    }
}

fn is_prime(n: u32) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

/// Load and verify both programs. With `pin_root`, every map is pinned
/// (or, when already pinned, reused) under `versioned_dir(pin_root)/maps`.
pub fn load(cfg: &DatapathConfig, pin_root: Option<&Path>) -> Result<Ebpf, LoadError> {
    cfg.validate()?;
    let ns = |d: Duration| d.as_nanos() as u64;
    let (syn, est, closing, udp) = (
        ns(cfg.tcp_syn_timeout),
        ns(cfg.tcp_established_timeout),
        ns(cfg.tcp_closing_timeout),
        ns(cfg.udp_timeout),
    );
    let source_check = u32::from(cfg.source_check);
    let mut loader = EbpfLoader::new();
    loader
        .override_global("cfg_ct_tcp_syn_ns", &syn, true)
        .override_global("cfg_ct_tcp_established_ns", &est, true)
        .override_global("cfg_ct_tcp_closing_ns", &closing, true)
        .override_global("cfg_ct_udp_ns", &udp, true)
        .override_global("cfg_maglev_m", &cfg.maglev_table_size, true)
        .override_global("cfg_source_check", &source_check, true)
        .override_global("cfg_flow_sample", &cfg.flow_sample, true);
    let map_dir = pin_root.map(|r| versioned_dir(r).join("maps"));
    if let Some(dir) = &map_dir {
        for name in MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    let mut ebpf = loader.load(OBJECT)?;
    for name in [EGRESS, INGRESS] {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .expect("the object defines both programs")
            .try_into()
            .map_err(|source| LoadError::Program { name, source })?;
        prog.load().map_err(|source| LoadError::Program { name, source })?;
    }
    Ok(ebpf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maglev_size_must_be_prime() {
        assert!(is_prime(16381) && is_prime(65537) && !is_prime(16384) && !is_prime(1));
        let cfg = DatapathConfig {
            maglev_table_size: 1000,
            ..Default::default()
        };
        assert!(matches!(load(&cfg, None), Err(LoadError::Config(_))));
    }
}
