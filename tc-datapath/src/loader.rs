//! Loading the object: the settings as load-time constants, optional
//! pinning of every map under a layout-versioned bpffs directory, and the
//! verifier run of both programs (once per node, never per pod).

use crate::config::{ConfigError, DatapathConfig};
use crate::layout::LAYOUT_VERSION;
use crate::maps;
use crate::migrate::Build;
use aya::programs::SchedClassifier;
use aya::{Ebpf, EbpfLoader};
use std::path::{Path, PathBuf};

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
    Config(#[from] ConfigError),
    #[error(transparent)]
    Maps(#[from] maps::MapsError),
}

pub const EGRESS: &str = "sl_egress";
pub const INGRESS: &str = "sl_ingress";
/// The node uplinks' programs: traffic from outside (NodePort, LB IPs).
pub const UPLINK_OUT: &str = "sl_uplink_out";
pub const UPLINK_IN: &str = "sl_uplink_in";
/// Every tc program of the object.
pub const TC_PROGRAMS: [&str; 4] = [EGRESS, INGRESS, UPLINK_OUT, UPLINK_IN];

/// The versioned directory under the bpffs root (e.g. /sys/fs/bpf/sluice):
/// a layout change gets fresh maps instead of misreading old ones.
pub fn versioned_dir(root: &Path) -> PathBuf {
    versioned_dir_of(root, LAYOUT_VERSION)
}

/// The same for layout `version`.
pub fn versioned_dir_of(root: &Path, version: u32) -> PathBuf {
    root.join(format!("v{version}"))
}

/// Load and verify both programs. With `pin_root`, every map is pinned
/// (or, when already pinned, reused) under `versioned_dir(pin_root)/maps`.
pub fn load(cfg: &DatapathConfig, pin_root: Option<&Path>) -> Result<Ebpf, LoadError> {
    load_build(cfg, pin_root, &Build::current())
}

/// Load `build` (its maps pinned under its own layout version's directory
/// of `pin_root`).
pub fn load_build(cfg: &DatapathConfig, pin_root: Option<&Path>, build: &Build) -> Result<Ebpf, LoadError> {
    let mut ebpf = object(cfg, pin_root, build, 0)?;
    for name in TC_PROGRAMS {
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .expect("the object defines every tc program")
            .try_into()
            .map_err(|source| LoadError::Program { name, source })?;
        prog.load().map_err(|source| LoadError::Program { name, source })?;
    }
    Ok(ebpf)
}

/// The object with its settings and maps (pinned under `pin_root`, when
/// given), no program loaded yet. `sock_netns` is the network namespace
/// the socket hooks serve (0: every one). Maps made here take the sizes of
/// `cfg.tables`; pinned ones that exist keep theirs.
pub fn object(
    cfg: &DatapathConfig,
    pin_root: Option<&Path>,
    build: &Build,
    sock_netns: u64,
) -> Result<Ebpf, LoadError> {
    cfg.validate()?;
    let t = &cfg.ct_timeouts;
    let ns = |d: std::time::Duration| d.as_nanos() as u64;
    let (syn, est, closing, udp) = (
        ns(t.tcp_syn()),
        ns(t.tcp_established()),
        ns(t.tcp_closing()),
        ns(t.udp()),
    );
    let source_check = u32::from(cfg.source_check);
    let socket_netns_check = u32::from(socket_netns_cookie_readable());
    let verdict_cache = u32::from(VERDICT_CACHE);
    let ct_pod_limit = cfg.ct_pod_limit();
    let clock = crate::jiffies::clock().unwrap_or_default();
    let mut loader = EbpfLoader::new();
    loader
        .override_global("cfg_ct_tcp_syn_ns", &syn, true)
        .override_global("cfg_ct_tcp_established_ns", &est, true)
        .override_global("cfg_ct_tcp_closing_ns", &closing, true)
        .override_global("cfg_ct_udp_ns", &udp, true)
        .override_global("cfg_maglev_m", &cfg.maglev_table_size, true)
        .override_global("cfg_source_check", &source_check, true)
        .override_global("cfg_socket_netns_check", &socket_netns_check, true)
        .override_global("cfg_verdict_cache", &verdict_cache, true)
        .override_global("cfg_flow_sample", &cfg.flow_sample, true)
        .override_global("cfg_ct_pod_limit", &ct_pod_limit, true)
        .override_global("cfg_tick_ns", &clock.tick_ns, true)
        .override_global("cfg_jiffies_base_ns", &clock.base_ns, true)
        .override_global("cfg_sock_netns_cookie", &sock_netns, true);
    for (name, entries) in cfg.tables.maps() {
        loader.map_max_entries(name, entries);
    }
    if let Some(root) = pin_root {
        let versioned = versioned_dir_of(root, build.layout.version);
        for def in maps::ALL {
            loader.map_pin_path(def.name, maps::pin_path(&versioned, def));
        }
    }
    Ok(loader.load(&build.object)?)
}

/// A per-connection table pinned under `versioned` at another size than
/// `cfg.tables` asks for: its name, the size it has, the size asked.
/// Pinned maps keep the size they were made with (see
/// [`crate::config::TableSizes`]); a map not pinned yet is not listed.
pub fn tables_sized_otherwise(versioned: &Path, cfg: &DatapathConfig) -> Vec<(&'static str, u32, u32)> {
    let have = pinned_table_sizes(versioned);
    cfg.tables
        .maps()
        .into_iter()
        .filter_map(|(name, want)| {
            let (_, have) = have.iter().find(|(n, _)| *n == name)?;
            (*have != want).then_some((name, *have, want))
        })
        .collect()
}

/// The per-connection tables pinned under `versioned`, with their sizes,
/// in the order of `TableSizes::maps`.
pub fn pinned_table_sizes(versioned: &Path) -> Vec<(&'static str, u32)> {
    crate::config::TableSizes::default()
        .maps()
        .into_iter()
        .filter_map(|(name, _)| {
            let map = aya::maps::MapData::from_pin(versioned.join("maps").join(name)).ok()?;
            Some((name, map.info().ok()?.max_entries()))
        })
        .collect()
}

/// Whether the programs cache allowed verdicts (`cfg_verdict_cache` in
/// bpf/lib/config.h): where loads are kept in order with loads (x86), a
/// cached verdict read under a policy generation saw the maps as of that
/// generation. Elsewhere the cache would need a load-acquire in the
/// programs, which the kernels of the matrix cannot verify; it is off.
pub const VERDICT_CACHE: bool = cfg!(target_arch = "x86_64");

/// Whether this kernel lets tc programs read a packet's socket's network
/// namespace (`bpf_get_netns_cookie`, kernels from 2025 on). Probed once per process;
/// a kernel that refuses the call gets a program without it (the setting
/// is a constant the verifier prunes the call by).
pub fn socket_netns_cookie_readable() -> bool {
    static READABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *READABLE.get_or_init(|| {
        aya::sys::is_helper_supported(
            aya::programs::ProgramType::SchedClassifier,
            aya::sys::BpfHelper::BPF_FUNC_get_netns_cookie,
        )
        .unwrap_or(false)
    })
}

/// A datapath of its own, nothing pinned: the loaded object (its programs,
/// for `BPF_PROG_TEST_RUN`) and its maps. What tests and benchmarks run.
pub fn load_unpinned(cfg: &DatapathConfig) -> Result<(Ebpf, maps::Maps), LoadError> {
    let mut ebpf = load_build(cfg, None, &Build::current())?;
    let maps = maps::Maps::take(&mut ebpf, cfg.maglev_table_size)?;
    Ok((ebpf, maps))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_config_is_not_loaded() {
        let cfg = DatapathConfig {
            maglev_table_size: 1000,
            ..Default::default()
        };
        assert!(matches!(load(&cfg, None), Err(LoadError::Config(_))));
    }
}
