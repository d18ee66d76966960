//! `sluicectl endpoint list`: the node's pods as the datapath knows them.

use crate::render::{Row, mac};
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

impl Row for EndpointRow {
    const HEADER: &'static [&'static str] = &["ADDRESS", "IFINDEX", "MAC", "ID"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.address.to_string(),
            self.ifindex.to_string(),
            self.mac.clone(),
            self.id.to_string(),
        ]
    }
}

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
