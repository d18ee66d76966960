//! The node's per-connection tables (conntrack, NAT, SNAT holds) at the
//! sizes the network configuration gives (`datapath.tables`).
//!
//! The maps take their sizes when they are made. On a node whose tables
//! were made at other sizes (the configuration changed since), the agent
//! remakes them at its start, before it opens them: entries and
//! connections carry over, every TCX link moves onto the programs loaded
//! again on the new tables, and the pods on clsact filters are attached
//! again here (under the node's lock held exclusively, each pod's record
//! read again, as `promote` does: a pod whose DEL ran meanwhile is left).

use crate::endpoint_gc::records;
use sluice_tc_datapath::attach::{self, Node};
use sluice_tc_datapath::config::DatapathConfig;
use sluice_tc_datapath::loader::versioned_dir;
use sluice_tc_datapath::maps::Maps;
use sluice_tc_datapath::pin;
use std::os::fd::AsFd;
use std::path::Path;
use tracing::{info, warn};

/// Resize the node's tables to `conf`'s sizes where they differ, then say
/// so for any that still do. The programs' other settings stay those the
/// node runs.
pub fn resize(conf: &Path, bpffs: &Path, cni_data_dir: &Path) {
    let tables = match crate::cni_conf::datapath_of(conf) {
        Ok(Some(cfg)) if cfg.bpffs == bpffs => cfg.tables,
        _ => return,
    };
    let versioned = versioned_dir(bpffs);
    let Some(mut cfg) = running_config(&versioned) else {
        return;
    };
    cfg.bpffs = bpffs.to_path_buf();
    cfg.tables = tables;
    match Node::resize_tables(&cfg) {
        Ok(None) => {}
        Ok(Some(r)) => {
            drop(r.node);
            let filters = reattach_filters(cni_data_dir, bpffs);
            info!(tables = ?r.tables, copied = r.copied, filters, "the node's tables were remade at the configured sizes");
        }
        Err(e) => warn!(error = %e, "the node's tables could not be remade at the configured sizes"),
    }
    attach::warn_tables_sized_otherwise(&versioned, &cfg);
}

/// The settings the node's programs run with (None before any load).
fn running_config(versioned: &Path) -> Option<DatapathConfig> {
    let maps = Maps::open_pinned(versioned).ok()?;
    maps.observe().loaded_config(versioned).ok()
}

/// Attach the pods on clsact filters to the programs loaded again;
/// returns how many.
fn reattach_filters(cni_data_dir: &Path, bpffs: &Path) -> usize {
    let mut node = match Node::open_exclusive(bpffs) {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, "pods on clsact filters not attached to the resized tables' programs");
            return 0;
        }
    };
    let mut n = 0;
    for (_, r) in records(cni_data_dir) {
        let key = pin::link_key(&r.container_id, &r.ifname);
        if r.datapath.is_none() || r.netns.is_empty() || node.has_links(&key) {
            continue;
        }
        let Ok(ns) = std::fs::File::open(&r.netns) else {
            continue;
        };
        match node.reattach_tc(ns.as_fd(), &r.ifname) {
            Ok(()) => n += 1,
            Err(e) => {
                warn!(container = %r.container_id, error = %e, "pod on clsact filters not attached to the resized tables' programs")
            }
        }
    }
    n
}
