//! `sluicectl ct list | flush`: the conntrack table, as the datapath keeps
//! it (see `bpf/layout.h` for an entry's orientation).

use crate::render::{mac, sock, state_name, table_row};
use anyhow::Result;
use serde::Serialize;
use sluice_tc_datapath::layout::{self, CT_SERVICE, ip, proto_name};
use sluice_tc_datapath::maps::Maps;
use sluice_tc_datapath::maps::ct::now_ns;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CtRow {
    /// "service" (a Service connection as the client sent it), "out" (a
    /// flow the pod opened) or "in" (one its peer opened).
    pub kind: &'static str,
    pub proto: String,
    /// "address:port"; for a flow entry, the pod's end.
    pub source: String,
    pub destination: String,
    /// "new", "established" or "closing".
    pub state: &'static str,
    pub backend: u32,
    pub expires_in_seconds: u64,
    /// The learned next hop of a Service connection.
    pub next_hop: Option<String>,
}

table_row!(
    CtRow,
    [
        "KIND",
        "PROTO",
        "SOURCE",
        "DESTINATION",
        "STATE",
        "BACKEND",
        "EXPIRES(S)",
        "NEXT-HOP"
    ],
    |r| [
        r.kind,
        r.proto,
        r.source,
        r.destination,
        r.state,
        r.backend,
        r.expires_in_seconds,
        r.next_hop.as_deref().unwrap_or("-")
    ]
);

pub fn list(maps: &Maps) -> Result<Vec<CtRow>> {
    let now = now_ns();
    let mut entries = maps.ct().entries()?;
    entries.sort_by_key(|(k, _)| (k.kind, k.saddr, k.sport, k.daddr, k.dport));
    Ok(entries
        .iter()
        .map(|(k, v)| CtRow {
            kind: match (k.kind, v.flags & layout::CT_F_INBOUND != 0) {
                (CT_SERVICE, _) => "service",
                (_, false) => "out",
                (_, true) => "in",
            },
            proto: proto_name(k.proto),
            source: sock(ip(&k.saddr), u16::from_be(k.sport)),
            destination: sock(ip(&k.daddr), u16::from_be(k.dport)),
            state: state_name(v.state),
            backend: v.backend_id,
            expires_in_seconds: v.expires_ns.saturating_sub(now) / 1_000_000_000,
            next_hop: (v.nh_ifindex != 0 && k.kind == CT_SERVICE).then(|| mac(&v.nh_mac)),
        })
        .collect())
}

#[derive(Serialize)]
pub struct Flushed {
    pub flushed: usize,
}
