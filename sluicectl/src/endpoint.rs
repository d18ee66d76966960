//! `sluicectl endpoint list`: the node's pods as the datapath knows them.

use crate::render::{mac, table_row};
use anyhow::Result;
use serde::Serialize;
use sluice_tc_datapath::maps::Maps;
use std::net::IpAddr;

#[derive(Serialize)]
pub struct EndpointRow {
    pub address: IpAddr,
    pub ifindex: u32,
    pub mac: String,
    pub id: u32,
}

table_row!(EndpointRow, ["ADDRESS", "IFINDEX", "MAC", "ID"], |r| [
    r.address, r.ifindex, r.mac, r.id
]);

pub fn list(maps: &Maps) -> Result<Vec<EndpointRow>> {
    Ok(maps
        .endpoints()
        .entries()?
        .into_iter()
        .map(|e| EndpointRow {
            address: e.addr,
            ifindex: e.ifindex,
            mac: mac(&e.mac),
            id: e.endpoint_id,
        })
        .collect())
}
