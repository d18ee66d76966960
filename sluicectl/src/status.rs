//! `sluicectl status`: the attached program version, every setting it was
//! loaded with (as the CNI config spells them), and what the maps hold.

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
        pinned_attachments: sluice_tc_datapath::attach::attachments(versioned)?.len(),
        services: maps.lb().services()?.len(),
        backends: maps.lb().backends()?.len(),
        endpoints: maps.endpoints().entries()?.len(),
    })
}
