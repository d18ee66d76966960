//! `sluicectl metrics`: packets and bytes by reason and direction, summed
//! over CPUs (the reasons that counted something).

use crate::render::table_row;
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

table_row!(MetricRow, ["REASON", "DIRECTION", "PACKETS", "BYTES"], |r| [
    r.reason,
    r.direction,
    r.packets,
    r.bytes
]);

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
