//! `sluicectl service list` and `backend list`: the Services the agent
//! wrote (the agent is their one writer: a Service is added by giving it
//! the Kubernetes objects, never here).

use crate::render::{sock, table_row};
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

table_row!(
    ServiceRow,
    ["SERVICE", "ID", "ALGORITHM", "AFFINITY", "NO-BACKEND", "BACKENDS"],
    |r| [
        format!("{}/{}", sock(r.vip, r.port), r.proto),
        r.rev_nat_id,
        r.algorithm,
        if r.affinity_timeout > 0 {
            format!("{}s", r.affinity_timeout)
        } else {
            "-".into()
        },
        if r.reject { "reject" } else { "drop" },
        r.backends.join(",")
    ]
);

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
    /// "active" or "draining" (not ready or terminating: keeps its TCP
    /// connections, takes no new ones).
    pub state: &'static str,
}

table_row!(BackendRow, ["ID", "ADDRESS", "PROTO", "STATE"], |r| [
    r.id, r.address, r.proto, r.state
]);

pub fn backends(maps: &Maps) -> Result<Vec<BackendRow>> {
    Ok(maps
        .lb()
        .backends()?
        .into_iter()
        .map(|b| BackendRow {
            id: b.id,
            address: sock(b.addr, b.port),
            proto: proto_name(b.proto),
            state: if b.active { "active" } else { "draining" },
        })
        .collect())
}
