//! `sluicectl nat list | hostport list | uplink list`: traffic from outside
//! the node, as the uplink programs keep it.

use crate::render::{sock, state_name, table_row};
use anyhow::Result;
use serde::Serialize;
use sluice_tc_datapath::layout::{Addr, NAT_F_LOCAL, NAT_F_REMAP, NAT_F_REPLY, NAT_F_SNAT, NatValue, ip, proto_name};
use sluice_tc_datapath::maps::Maps;
use sluice_tc_datapath::maps::ct::now_ns;

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NatRow {
    /// "client" (the client's packets, to the backend) or "reply" (the
    /// backend's, back to the client).
    pub direction: &'static str,
    pub proto: String,
    /// The packet as it arrives.
    pub source: String,
    pub destination: String,
    /// What it becomes.
    pub new_source: String,
    pub new_destination: String,
    /// "local" (a pod of this node, handed in through its parent),
    /// "local-remapped" (the same, from another port of the client's: its
    /// own was taken at the backend) or "snat" (a backend elsewhere, from
    /// this node's address).
    pub path: &'static str,
    /// The connection's state; `expired` once its deadline passed (the
    /// next collection takes it).
    pub state: &'static str,
    /// Whether the client has answered the backend's first reply (the
    /// connection moved to the established table, where a flood of
    /// unanswered ones cannot evict it).
    pub answered: bool,
    pub backend: u32,
    pub expires_in_seconds: u64,
}

table_row!(
    NatRow,
    [
        "DIRECTION",
        "PROTO",
        "SOURCE",
        "DESTINATION",
        "NEW-SOURCE",
        "NEW-DESTINATION",
        "PATH",
        "STATE",
        "ANSWERED",
        "BACKEND",
        "EXPIRES(S)"
    ],
    |r| [
        r.direction,
        r.proto,
        r.source,
        r.destination,
        r.new_source,
        r.new_destination,
        r.path,
        r.state,
        if r.answered { "yes" } else { "no" },
        r.backend,
        r.expires_in_seconds
    ]
);

/// An entry's state as listed.
fn nat_state(v: &NatValue, now: u64) -> &'static str {
    if v.expires_ns > now {
        state_name(v.state)
    } else {
        "expired"
    }
}

pub fn nat(maps: &Maps) -> Result<Vec<NatRow>> {
    let now = now_ns();
    let uplink = maps.uplink();
    let mut entries: Vec<_> = uplink
        .answered_entries()?
        .into_iter()
        .map(|e| (true, e))
        .chain(uplink.unanswered_entries()?.into_iter().map(|e| (false, e)))
        .collect();
    entries.sort_by_key(|(_, (k, v))| (v.flags & NAT_F_REPLY, k.saddr, k.sport, k.daddr, k.dport));
    Ok(entries
        .iter()
        .map(|&(answered, (k, v))| NatRow {
            direction: if v.flags & NAT_F_REPLY != 0 { "reply" } else { "client" },
            proto: proto_name(k.proto),
            source: sock(ip(&k.saddr), u16::from_be(k.sport)),
            destination: sock(ip(&k.daddr), u16::from_be(k.dport)),
            new_source: sock(ip(&v.saddr), u16::from_be(v.sport)),
            new_destination: sock(ip(&v.daddr), u16::from_be(v.dport)),
            path: if v.flags & NAT_F_LOCAL != 0 && v.flags & NAT_F_REMAP != 0 {
                "local-remapped"
            } else if v.flags & NAT_F_LOCAL != 0 {
                "local"
            } else if v.flags & NAT_F_SNAT != 0 {
                "snat"
            } else {
                "-"
            },
            state: nat_state(&v, now),
            answered,
            backend: v.backend_id,
            expires_in_seconds: v.expires_ns.saturating_sub(now) / 1_000_000_000,
        })
        .collect())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HostPortRow {
    pub host: String,
    pub proto: String,
    pub pod: String,
    pub endpoint: String,
}

table_row!(HostPortRow, ["HOST", "PROTO", "POD", "ENDPOINT"], |r| [
    r.host, r.proto, r.pod, r.endpoint
]);

pub fn hostports(maps: &Maps) -> Result<Vec<HostPortRow>> {
    Ok(maps
        .hostports()
        .entries()?
        .into_iter()
        .map(|h| HostPortRow {
            host: h.host.to_string(),
            proto: proto_name(h.proto),
            pod: h.pod.to_string(),
            endpoint: format!("{:#010x}", h.endpoint_id),
        })
        .collect())
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UplinkRow {
    pub ifindex: u32,
    pub name: String,
    /// The addresses a connection to a backend elsewhere is SNATed to.
    pub snat_ipv4: String,
    pub snat_ipv6: String,
}

table_row!(UplinkRow, ["IFINDEX", "NAME", "SNAT-IPV4", "SNAT-IPV6"], |r| [
    r.ifindex,
    r.name,
    r.snat_ipv4,
    r.snat_ipv6
]);

fn addr_or_dash(a: &Addr) -> String {
    if a.iter().all(|b| *b == 0) {
        "-".into()
    } else {
        ip(a).to_string()
    }
}

pub fn uplinks(maps: &Maps) -> Result<Vec<UplinkRow>> {
    Ok(maps
        .uplink()
        .uplinks()?
        .into_iter()
        .map(|(ifindex, v)| UplinkRow {
            ifindex,
            name: nix::net::if_::if_indextoname(ifindex)
                .ok()
                .and_then(|n| n.into_string().ok())
                .unwrap_or_else(|| "?".into()),
            snat_ipv4: addr_or_dash(&v.addr4),
            snat_ipv6: addr_or_dash(&v.addr6),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_tc_datapath::layout::CT_CLOSING;

    #[test]
    fn an_entry_past_its_deadline_is_expired() {
        let now = 1_000 * 1_000_000_000;
        let v = |expires_ns| NatValue {
            expires_ns,
            state: CT_CLOSING,
            ..Default::default()
        };
        assert_eq!(nat_state(&v(now + 1), now), "closing");
        assert_eq!(nat_state(&v(now), now), "expired");
    }
}
