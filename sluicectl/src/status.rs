//! `sluicectl status`: the attached program version, every setting it was
//! loaded with (as the CNI config spells them), the per-connection tables'
//! sizes, and what the maps hold.

use anyhow::Result;
use serde::Serialize;
use sluice_tc_datapath::config::DatapathConfig;
use sluice_tc_datapath::maps::Maps;
use std::path::{Path, PathBuf};

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    pub bpffs: PathBuf,
    pub program_version: String,
    /// The settings compiled into the attached programs.
    pub settings: serde_json::Value,
    /// The per-connection tables' sizes, as the maps were made
    /// (`datapath.tables`).
    pub tables: std::collections::BTreeMap<&'static str, u32>,
    pub pinned_attachments: usize,
    pub services: usize,
    pub backends: usize,
    pub endpoints: usize,
}

pub fn status(maps: &Maps, versioned: &Path) -> Result<Status> {
    let info = maps.observe().info()?;
    let loaded: DatapathConfig = maps.observe().loaded_config(versioned)?;
    Ok(Status {
        bpffs: versioned.to_path_buf(),
        program_version: format!("{:016x}", info.prog_hash),
        settings: loaded.program_settings(),
        tables: sluice_tc_datapath::loader::pinned_table_sizes(versioned)
            .into_iter()
            .collect(),
        pinned_attachments: sluice_tc_datapath::attach::attachments(versioned)?.len(),
        services: maps.lb().services()?.len(),
        backends: maps.lb().backends()?.len(),
        endpoints: maps.endpoints().entries()?.len(),
    })
}
