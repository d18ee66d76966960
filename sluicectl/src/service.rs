//! `sluicectl service list` and `backend list`: the Services the agent
//! wrote (the agent is their one writer: a Service is added by giving it
//! the Kubernetes objects, never here).

use crate::render::{Row, sock};
use anyhow::Result;
use serde::Serialize;
use sluice_tc_datapath::layout::proto_name;
use sluice_tc_datapath::maps::Maps;
use std::collections::BTreeMap;
use std::net::IpAddr;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRow {
    pub vip: IpAddr,
    pub port: u16,
    pub proto: String,
    pub rev_nat_id: u32,
    pub algorithm: &'static str,
    /// Seconds; 0 = none.
    pub affinity_timeout: u32,
    pub reject: bool,
    /// The backends taking new connections, "address:port".
    pub backends: Vec<String>,
}

impl Row for ServiceRow {
    const HEADER: &'static [&'static str] = &["SERVICE", "ID", "ALGORITHM", "AFFINITY", "NO-BACKEND", "BACKENDS"];

    fn cells(&self) -> Vec<String> {
        vec![
            format!("{}/{}", sock(self.vip, self.port), self.proto),
            self.rev_nat_id.to_string(),
            self.algorithm.into(),
            if self.affinity_timeout > 0 {
                format!("{}s", self.affinity_timeout)
            } else {
                "-".into()
            },
            if self.reject { "reject" } else { "drop" }.into(),
            self.backends.join(","),
        ]
    }
}

pub fn services(maps: &Maps) -> Result<Vec<ServiceRow>> {
    let lb = maps.lb();
    let backends: BTreeMap<u32, String> = lb
        .backends()?
        .into_iter()
        .map(|b| (b.id, sock(b.addr, b.port)))
        .collect();
    let show = |id: &u32| backends.get(id).cloned().unwrap_or_else(|| format!("#{id}?"));
    Ok(lb
        .services()?
        .into_iter()
        .map(|s| ServiceRow {
            vip: s.vip,
            port: s.port,
            proto: proto_name(s.proto),
            rev_nat_id: s.rev_nat_id,
            algorithm: s.algorithm.name(),
            affinity_timeout: s.affinity_timeout_secs,
            reject: s.reject,
            backends: s.active.iter().map(show).collect(),
        })
        .collect())
}

#[derive(Serialize)]
pub struct BackendRow {
    pub id: u32,
    /// "address:port".
    pub address: String,
    pub proto: String,
    /// "active" or "terminating".
    pub state: &'static str,
}

impl Row for BackendRow {
    const HEADER: &'static [&'static str] = &["ID", "ADDRESS", "PROTO", "STATE"];

    fn cells(&self) -> Vec<String> {
        vec![
            self.id.to_string(),
            self.address.clone(),
            self.proto.clone(),
            self.state.into(),
        ]
    }
}

pub fn backends(maps: &Maps) -> Result<Vec<BackendRow>> {
    Ok(maps
        .lb()
        .backends()?
        .into_iter()
        .map(|b| BackendRow {
            id: b.id,
            address: sock(b.addr, b.port),
            proto: proto_name(b.proto),
            state: if b.active { "active" } else { "terminating" },
        })
        .collect())
}
