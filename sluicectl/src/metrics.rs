//! `sluicectl metrics`: packets and bytes by reason and direction, summed
//! over CPUs (the reasons that counted something).

use crate::render::Row;
use anyhow::Result;
use serde::Serialize;
use sluice_tc_datapath::maps::Maps;

#[derive(Serialize)]
pub struct MetricRow {
    pub reason: &'static str,
    pub direction: &'static str,
    pub drop: bool,
    pub packets: u64,
    pub bytes: u64,
}

impl Row for MetricRow {
    const HEADER: &'static [&'static str] = &["REASON", "DIRECTION", "PACKETS", "BYTES"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.reason.into(),
            self.direction.into(),
            self.packets.to_string(),
            self.bytes.to_string(),
        ]
    }
}

pub fn list(maps: &Maps) -> Result<Vec<MetricRow>> {
    Ok(maps
        .observe()
        .metrics()?
        .into_iter()
        .filter(|m| m.packets > 0)
        .map(|m| MetricRow {
            reason: m.reason.name(),
            direction: m.dir.name(),
            drop: m.reason.is_drop(),
            packets: m.packets,
            bytes: m.bytes,
        })
        .collect())
}
